//! What the replica tests run beside `testkit::NbdeServer` replicas: Debian's haproxy
//! in front of them, a relay to PostgreSQL that can go silent, and a recovery client that
//! checks every answer against the device's advertised key. Every process is ended by its
//! PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbde_proto::adv::KeySet;
use nbde_proto::{EcPoint, Jwk, Jws, ThumbprintHash};
use serde_json::Value;
use testkit::{Listener, tempdir};

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Debian's haproxy in HTTP mode, round robin over the replicas, with health checks on
/// `/healthz`. Connection failures are redispatched; a request cut mid-flight is the
/// client's to retry, as clevis and nbde-unlock do.
pub struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(servers: &[&str]) -> Haproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Haproxy::start_on(port, servers)
    }

    /// In front of `servers` on `port` (an address clients already have in their bindings).
    pub fn start_on(port: u16, servers: &[&str]) -> Haproxy {
        let dir = tempdir();
        let mut config = format!(
            "global\n  maxconn 1024\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n  retries 3\n  option redispatch\n\
             frontend unlock\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n  default-server inter 200ms fall 2 rise 2\n"
        );
        for (i, server) in servers.iter().enumerate() {
            config.push_str(&format!("  server r{i} {server} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy package; tests/run.sh installs it)");
        let haproxy = Haproxy {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if get(&haproxy.addr(), "/healthz").is_ok_and(|(s, _)| s == 200) {
                return haproxy;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("haproxy did not come up");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child, "-TERM");
    }
}

pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// One request on a fresh connection, as clevis makes them; the reply read by its
/// Content-Length. A connection cut before a full reply is an error.
fn exchange(addr: &str, head: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::other("empty reply"));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let (mut length, mut retry_after) = (0usize, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("reply cut in the headers"));
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = lower.strip_prefix("retry-after:") {
            retry_after = Some(v.trim().to_owned());
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, &head, b"").map(|r| (r.status, r.body))
}

pub fn post(addr: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/jwk+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, &head, body)
}

/// Recoveries of one device of org acme, each checked: the answer must be the client's
/// point times the device's private key, which the advertised public key lets us verify
/// (x·(s·G) = s·(x·G)).
pub struct Recovery {
    pub device: String,
    server_key: EcPoint,
    path: String,
}

impl Recovery {
    /// Reads the device's advertisement from `addr`, verifying its signatures.
    pub fn new(addr: &str, device: &str) -> Recovery {
        let (status, adv) = get(addr, &format!("/o/acme/d/{device}/adv")).unwrap();
        assert_eq!(status, 200, "adv of {device}");
        let jws = Jws::parse(std::str::from_utf8(&adv).unwrap()).unwrap();
        let keys = KeySet::from_verified_adv(&jws).unwrap();
        let exchange = keys.exchange_key().unwrap();
        let kid = exchange.thumbprint(ThumbprintHash::S256).unwrap();
        Recovery {
            device: device.to_owned(),
            server_key: exchange.point().unwrap(),
            path: format!("/o/acme/d/{device}/rec/{kid}"),
        }
    }

    /// One recovery through `addr`; its status once the answer checked out.
    pub fn attempt(&self, addr: &str) -> std::io::Result<u16> {
        self.attempt_with_retry_after(addr).map(|(s, _)| s)
    }

    pub fn attempt_with_retry_after(&self, addr: &str) -> std::io::Result<(u16, Option<String>)> {
        let curve = self.server_key.curve();
        let x = curve.random_scalar().unwrap();
        let mut request = Jwk::from_point(&x.public_point());
        request.set("alg", "ECMR".into());
        let reply = post(addr, &self.path, request.to_value().to_string().as_bytes())?;
        if reply.status == 200 {
            let value: Value = serde_json::from_slice(&reply.body).unwrap();
            let answer = Jwk::from_value(value).unwrap().point().unwrap();
            let expected = self.server_key.mul(&x).unwrap();
            assert!(
                answer.x() == expected.x() && answer.y() == expected.y(),
                "{}: a wrong answer",
                self.device
            );
        }
        Ok((reply.status, reply.retry_after))
    }
}

/// A TCP relay to PostgreSQL that can go silent on the connections that sent `LISTEN`, as
/// a hung proxy or a NAT entry dropped without a word does: no bytes pass either way and
/// no socket closes, so TCP never tells either end.
pub struct SilencingRelay {
    pub port: u16,
    listeners: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// New connections of a change listener go silent from their first byte.
    hang_new_listeners: Arc<AtomicBool>,
    /// How many have.
    hung: Arc<AtomicUsize>,
    _relay: Listener,
}

impl SilencingRelay {
    /// A relay to PostgreSQL on 127.0.0.1:`to`.
    pub fn start(to: u16) -> SilencingRelay {
        let listeners: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let seen = listeners.clone();
        let hang_new_listeners = Arc::new(AtomicBool::new(false));
        let hang = hang_new_listeners.clone();
        let hung = Arc::new(AtomicUsize::new(0));
        let counted = hung.clone();
        let relay = Listener::start(move |client| {
            let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
            let silent = Arc::new(AtomicBool::new(false));
            let (back_from, back_to, back_silent) = (
                server.try_clone().unwrap(),
                client.try_clone().unwrap(),
                silent.clone(),
            );
            std::thread::spawn(move || relay(back_from, back_to, &back_silent));
            let mut registered = false;
            let mut first = true;
            let listener_name = b"nbde-server change listener";
            let mut onward = |bytes: &[u8]| {
                // The startup message names the application: a change listener's is held.
                if std::mem::take(&mut first)
                    && hang.load(Ordering::SeqCst)
                    && bytes
                        .windows(listener_name.len())
                        .any(|w| w == listener_name)
                {
                    silent.store(true, Ordering::SeqCst);
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                if !registered && bytes.windows(7).any(|w| w == b"LISTEN ") {
                    registered = true;
                    seen.lock().unwrap().push(silent.clone());
                }
            };
            relay_watching(client, server, &silent, &mut onward);
        });
        SilencingRelay {
            port: relay.port,
            listeners,
            hang_new_listeners,
            hung,
            _relay: relay,
        }
    }

    /// `url` (a `postgres://` URL of the cluster) through this relay.
    pub fn url(&self, url: &str, cluster_port: u16) -> String {
        url.replace(
            &format!("@127.0.0.1:{cluster_port}/"),
            &format!("@127.0.0.1:{}/", self.port),
        )
    }

    /// From now on a change listener's new connection gets no answer, not even to its
    /// startup message: a proxy that takes connections and never answers.
    pub fn hang_new_listeners(&self) {
        self.hang_new_listeners.store(true, Ordering::SeqCst);
    }

    /// How many new connections of a change listener were held since `hang_new_listeners`.
    pub fn hung_listeners(&self) -> usize {
        self.hung.load(Ordering::SeqCst)
    }

    /// Silences every connection that has sent `LISTEN` so far; how many.
    pub fn silence_listeners(&self) -> usize {
        let listeners = self.listeners.lock().unwrap();
        for silent in listeners.iter() {
            silent.store(true, Ordering::SeqCst);
        }
        listeners.len()
    }
}

fn relay(from: TcpStream, to: TcpStream, silent: &AtomicBool) {
    relay_watching(from, to, silent, &mut |_| {});
}

/// Copies `from` to `to`, showing each chunk to `watch` first; once `silent`, holds both
/// sockets open and passes nothing, until the test process ends.
fn relay_watching(
    mut from: TcpStream,
    mut to: TcpStream,
    silent: &AtomicBool,
    watch: &mut dyn FnMut(&[u8]),
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        watch(&buf[..n]);
        while silent.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(1));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
