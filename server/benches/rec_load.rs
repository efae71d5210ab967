//! Recovery load, side by side in one run: stock tangd (behind socat, one process per
//! connection, as Debian runs it) and nbde-server serving the same P-521 key directory,
//! under the same bounded client load on loopback. Also one P-521 scalar multiplication,
//! the floor of a recovery.
//!
//! `cargo bench -p nbde-server --bench rec_load [-- --seconds S --clients C]`

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nbde_proto::{Curve, Jwk, ThumbprintHash};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// Rate limits far above any load a bench can make (a microsecond per token).
const UNLIMITED: &str = "[rate_limit]\nsource_per_second = 1000000\nsource_burst = 1000000\n\
    device_per_minute = 60000000\ndevice_burst = 1000000\n";

/// One request on a fresh connection (tangd serves one per process); returns the status.
fn post(port: u16, path: &str, body: &[u8]) -> u16 {
    testkit::post_status(&format!("127.0.0.1:{port}"), path, body, "")
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
}

fn load(port: u16, path: &str, body: &[u8], clients: usize, seconds: f64) -> Figures {
    // Warm up (connection setup, first adv signing, page cache).
    for _ in 0..20 {
        assert_eq!(post(port, path, body), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            let path = path.to_owned();
            let body = body.to_vec();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    assert_eq!(post(port, &path, &body), 200);
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    all.sort();
    Figures {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
        requests: all.len(),
    }
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seconds = arg("--seconds", 5.0);
    let clients = arg("--clients", 4.0) as usize;
    let keys = tempfile::tempdir().unwrap();
    let status = Command::new("/usr/libexec/tangd-keygen")
        .arg(keys.path())
        .status()
        .unwrap();
    assert!(status.success(), "tangd-keygen (Debian package tang)");

    // The exchange key and a valid blinded client point for it.
    let exchange = std::fs::read_dir(keys.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|t| Jwk::from_value(serde_json::from_str(&t).unwrap()).unwrap())
        .find(|k| k.allows("deriveKey"))
        .unwrap();
    let kid = exchange.thumbprint(ThumbprintHash::S256).unwrap();
    let client = Curve::P521.random_scalar().unwrap().public_point();
    let mut body = Jwk::from_point(&client);
    body.set("alg", "ECMR".into());
    let body = body.to_value().to_string().into_bytes();

    let tangd_port = free_port();
    let mut tangd: Child = Command::new("socat")
        .arg(format!(
            "TCP-LISTEN:{tangd_port},bind=127.0.0.1,reuseaddr,fork"
        ))
        .arg(format!("EXEC:/usr/libexec/tangd {}", keys.path().display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (Debian package socat)");
    wait_for(tangd_port);

    let data = tempfile::tempdir().unwrap();
    // Every request comes from one address: the source bucket would measure itself.
    let config = data.path().join("bench.toml");
    std::fs::write(&config, UNLIMITED).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_nbde-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        // A store directory of its own: its key-encryption key goes beside it, in `data`.
        .arg(data.path().join("store"))
        .arg("--tang-dir")
        .arg(keys.path())
        .env("NBDE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ours_port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();

    let path = format!("/rec/{kid}");
    let stock = load(tangd_port, &path, &body, clients, seconds);
    let ours = load(ours_port, &path, &body, clients, seconds);

    // The floor: one s·x on P-521, as the server computes it.
    let secret = exchange.scalar().unwrap();
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(client.mul(&secret).unwrap());
    }
    let scalar_mul = t.elapsed() / rounds;

    println!(
        "Loopback, {clients} clients, {seconds} s each, new connection per request, same P-521 key.\n"
    );
    println!("| server | recoveries/s | p50 | p99 | requests |");
    println!("|---|---|---|---|---|");
    for (name, f) in [
        ("stock tangd (socat fork+exec)", &stock),
        ("nbde-server --tang-dir", &ours),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            f.per_second,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.requests
        );
    }
    println!(
        "\nOne P-521 scalar multiplication (s·x): {:.3} ms; {} cores: floor ≈ {:.0} recoveries/s.",
        scalar_mul.as_secs_f64() * 1e3,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64
            / scalar_mul.as_secs_f64()
    );
    // Every request above was also a history row committed with fsync (synchronous=FULL).
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = tangd.kill();
    let _ = tangd.wait();
}
