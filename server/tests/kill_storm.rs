//! Kill storms: during an unlock storm on the per-device route, the server is killed with
//! SIGKILL 20 times at random moments and started again on its store, embedded SQLite and
//! PostgreSQL. Every recovery a client got an answer for has its history row, the store
//! opens each time, and an allow-once is used at most once however the kills fall.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::*;

/// One POST on a new connection, the client address given through the trusted proxy;
/// the status, or None when the connection broke (the server was killed).
fn post(addr: &str, path: &str, body: &[u8], source: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nX-Forwarded-For: {source}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

/// A source address no other request of the run uses, so that its history row names it.
fn source(n: u32) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// The storm is one device from a few thousand addresses: buckets lifted.
const CONFIG: &str = "trusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nsource_per_second = 1000000\n\
                      source_burst = 1000000\ndevice_per_minute = 60000000\ndevice_burst = 1000000\n";

/// What the clients were answered: (source address, status, sent to the allow-once device).
type Answers = Vec<(String, u16, bool)>;

/// Runs the storm against `server` (devices `acme/storm` and `acme/once`, the second
/// disabled with one allow-once), killing and restarting it 20 times; the answers.
fn storm_with_kills(server: &mut NbdeServer) -> Answers {
    server.add_device("acme", "storm", Some("P-256"));
    server.add_device("acme", "once", Some("P-256"));
    server.admin_ok(&["device", "disable", "acme/once"]);
    server.admin_ok(&["allow-once", "acme/once"]);
    let storm = server.rec_request("acme", "storm");
    let once = server.rec_request("acme", "once");
    let addr = server.addr();

    let running = Arc::new(AtomicBool::new(true));
    let next = Arc::new(AtomicU32::new(1));
    let answered: Arc<Mutex<Answers>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (running, next, answered) = (running.clone(), next.clone(), answered.clone());
            let (addr, storm, once) = (addr.clone(), storm.clone(), once.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let to_once = n % 10 == 0;
                    let (path, body) = if to_once { &once } else { &storm };
                    let from = source(n);
                    match post(&addr, path, body, &from) {
                        Some(status) => answered.lock().unwrap().push((from, status, to_once)),
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 400));
        server.kill9();
        // The store opens each time: restart waits until the server listens again.
        server.restart();
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    server.stop();
    Arc::try_unwrap(answered).unwrap().into_inner().unwrap()
}

/// Checks the answers against the allowed history rows, read from the store itself as
/// (device, peer): the history API returns at most 10,000 rows, and a fast run makes more.
fn check(backend: &str, answered: &Answers, rows: &[(String, String)]) {
    let allowed_answers: Vec<&(String, u16, bool)> = answered
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .collect();
    assert!(
        allowed_answers.len() > 100,
        "{backend}: only {} answers",
        allowed_answers.len()
    );
    let allowed_rows: HashSet<&str> = rows.iter().map(|(_, peer)| peer.as_str()).collect();
    for (from, _, _) in &allowed_answers {
        assert!(
            allowed_rows.contains(from.as_str()),
            "{backend}: an answer to {from} left without its history row"
        );
    }
    let once_answers = allowed_answers
        .iter()
        .filter(|(_, _, to_once)| *to_once)
        .count();
    let once_rows = rows.iter().filter(|(device, _)| device == "once").count();
    eprintln!(
        "{backend}: {} answers ({} allowed) across 20 kills; {} allowed rows; allow-once: \
         {once_answers} answer(s), {once_rows} row(s)",
        answered.len(),
        allowed_answers.len(),
        allowed_rows.len()
    );
    assert!(
        once_answers <= 1,
        "{backend}: allow-once answered {once_answers} times"
    );
    assert!(
        once_rows <= 1,
        "{backend}: allow-once allowed {once_rows} times in the history"
    );
}

const ALLOWED_ROWS: &str = "SELECT device, peer FROM history WHERE decision = 'allowed'";

#[test]
fn twenty_kills_during_a_storm_lose_no_row_and_use_no_allow_once_twice() {
    let config = tempdir();
    let file = config.path().join("nbde.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let mut server = NbdeServer::start_on(free_port(), &["--config", file.to_str().unwrap()]);
    let answered = storm_with_kills(&mut server);
    let store = rusqlite::Connection::open(server.data.path().join("nbde.sqlite")).unwrap();
    let rows: Vec<(String, String)> = store
        .prepare(ALLOWED_ROWS)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    check("SQLite", &answered, &rows);
}

#[test]
fn twenty_kills_during_a_storm_on_postgresql_lose_no_row_and_use_no_allow_once_twice() {
    let pg = Postgres::start();
    let config = tempdir();
    let file = config.path().join("nbde.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let url = pg.create_database();
    let mut server = NbdeServer::start_on_database(&url, &["--config", file.to_str().unwrap()]);
    // A fixed port, so the clients find the server again after each restart.
    server.url = format!("http://127.0.0.1:{}", free_port());
    server.restart();
    let answered = storm_with_kills(&mut server);
    let db = url.rsplit('/').next().unwrap();
    let rows: Vec<(String, String)> = pg
        .psql_in(db, ALLOWED_ROWS)
        .lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(device, peer)| (device.to_owned(), peer.to_owned()))
        .collect();
    check("PostgreSQL", &answered, &rows);
}
