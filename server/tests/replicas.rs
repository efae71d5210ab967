//! Several `nbde-server` replicas on one PostgreSQL, as operators run them behind a load
//! balancer: an admin change made through one is in force on the other within a second,
//! allow-once and approvals are shared, a replica killed mid-storm behind haproxy leaves
//! no answer without its history row, and a lost database answers 503 until it returns.

mod replica;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use replica::{Haproxy, Recovery, SilencingRelay, get};
use serde_json::Value;
use testkit::{NbdeServer, Postgres};

/// Replica A and B on a fresh database of `pg`, with org acme.
fn two_replicas(pg: &Postgres) -> (NbdeServer, NbdeServer) {
    let a = NbdeServer::start_on_database(&pg.create_database(), &[]);
    let b = a.replica(&[]);
    a.admin_ok(&["org", "add", "acme"]);
    (a, b)
}

#[test]
fn an_admin_change_through_one_replica_is_in_force_on_the_other_within_a_second() {
    let pg = Postgres::start();
    let (a, b) = two_replicas(&pg);
    a.add_device("acme", "web1", Some("P-256"));
    let added = Instant::now();
    loop {
        if get(&b.addr(), "/o/acme/d/web1/adv").is_ok_and(|(s, _)| s == 200) {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "replica B did not serve the new device within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = added.elapsed();

    // B answers with the key A made: the recovery checks out against A's advertisement.
    let recovery = Recovery::new(&a.addr(), "web1");
    assert_eq!(recovery.attempt(&b.addr()).unwrap(), 200);

    // Retired through B: A takes no part from the next request on.
    b.admin_ok(&["device", "retire", "acme/web1"]);
    let status = recovery.attempt(&a.addr()).unwrap();
    assert!(matches!(status, 403 | 404), "A answered {status}");
    let gone = Instant::now();
    while get(&a.addr(), "/o/acme/d/web1/adv").is_ok_and(|(s, _)| s == 200) {
        assert!(
            gone.elapsed() < Duration::from_secs(1),
            "A still advertises"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "device seen by the other replica after {seen:?}; retirement after {:?}",
        gone.elapsed()
    );
}

/// `recovery` through `addr` until it answers `status`; how long that took, at most 1 s.
fn answers_within_a_second(recovery: &Recovery, addr: &str, status: u16, why: &str) -> Duration {
    let changed = Instant::now();
    loop {
        let got = recovery.attempt(addr).unwrap();
        if got == status {
            return changed.elapsed();
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "{why}: still {got} after 1 s"
        );
        // Not faster: a replica that never hears would then answer 429 (the device's
        // bucket), not 200.
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_policy_change_through_one_replica_is_in_force_on_the_other_that_cached_the_device() {
    let pg = Postgres::start();
    let (a, b) = two_replicas(&pg);
    a.add_device("acme", "web", Some("P-256"));
    let recovery = Recovery::new(&a.addr(), "web");
    // B has served the device, so it holds its policy snapshot.
    answers_within_a_second(&recovery, &b.addr(), 200, "B never served the new device");
    assert_eq!(recovery.attempt(&b.addr()).unwrap(), 200);

    // Source allowlists and shared lists are tables the key ring does not read.
    a.admin_ok(&["allow", "add", "acme/web", "10.9.9.0/24"]);
    let listed = answers_within_a_second(&recovery, &b.addr(), 403, "allowlist through A");
    a.admin_ok(&["netlist", "add", "acme", "lab", "127.0.0.0/8"]);
    a.admin_ok(&["netlist", "attach", "acme/web", "lab"]);
    let attached = answers_within_a_second(&recovery, &b.addr(), 200, "shared list through A");
    a.admin_ok(&["netlist", "detach", "acme/web", "lab"]);
    answers_within_a_second(&recovery, &b.addr(), 403, "detached through A");
    a.admin_ok(&["allow", "rm", "acme/web", "10.9.9.0/24"]);
    answers_within_a_second(&recovery, &b.addr(), 200, "allowlist emptied through A");
    eprintln!("allowlist in force on B after {listed:?}, shared list after {attached:?}");
}

/// Replica A on a new database, and B reaching it through a `SilencingRelay`; both serve
/// device acme/web.
struct Relayed {
    url: String,
    a: NbdeServer,
    relay: SilencingRelay,
    b: NbdeServer,
    recovery: Recovery,
}

fn relayed(pg: &Postgres) -> Relayed {
    let url = pg.create_database();
    let a = NbdeServer::start_on_database(&url, &[]);
    let relay = SilencingRelay::start(pg.port());
    let b = NbdeServer::attach(&relay.url(&url, pg.port()), a.token.clone(), &a.kek, &[]);
    a.add_device("acme", "web", Some("P-256"));
    let recovery = Recovery::new(&a.addr(), "web");
    answers_within_a_second(&recovery, &b.addr(), 200, "B never served the new device");
    Relayed {
        url,
        a,
        relay,
        b,
        recovery,
    }
}

/// How long after now `server` serves device acme/db; panics with `what` after `limit`.
fn serves_new_device(server: &NbdeServer, limit: Duration, what: &str) -> Duration {
    let since = Instant::now();
    while !get(&server.addr(), "/o/acme/d/db/adv").is_ok_and(|(s, _)| s == 200) {
        assert!(since.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    since.elapsed()
}

/// B's change listener reaches PostgreSQL through a relay that then goes silent (a hung
/// proxy, a NAT entry dropped: no RST, so TCP tells neither end). B still has a working
/// pool; its cached policy must not outlive the silence by more than a second, and it must
/// listen again by itself and end the silent session.
#[test]
fn a_replica_whose_listener_goes_silent_stops_trusting_its_cache_and_listens_again() {
    let pg = Postgres::start();
    let Relayed {
        url,
        a,
        relay,
        b,
        recovery,
    } = relayed(&pg);
    assert_eq!(recovery.attempt(&b.addr()).unwrap(), 200);

    assert_eq!(relay.silence_listeners(), 1, "B's one listener");
    a.admin_ok(&["allow", "add", "acme/web", "10.9.9.0/24"]);
    let refused = answers_within_a_second(
        &recovery,
        &b.addr(),
        403,
        "allowlist through A while B's listener is silent",
    );

    // A device added later is served by B once it listens on a new connection.
    a.add_device("acme", "db", Some("P-256"));
    let relistened = serves_new_device(&b, Duration::from_secs(10), "B did not listen again");
    // The silent session, still alive in the database behind the relay, was ended: it
    // held the serving lock and its place in the notification queue.
    let db = url.rsplit('/').next().unwrap();
    let listeners = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN nbde_changes%'";
    let ended = Instant::now();
    while pg.psql_in(db, listeners).trim() != "2" {
        assert!(
            ended.elapsed() < Duration::from_secs(2),
            "listener sessions: {} (A's, B's new one, and the silent one left)",
            pg.psql_in(db, listeners).trim()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "allowlist in force on B after {refused:?} with its listener silent; B listened again \
         and served a new device after {relistened:?}"
    );
}

/// B's change listener goes silent, and every new connection it makes then hangs in the
/// handshake (a proxy that takes connections and never answers): B must still learn of a
/// device added through A, reloading its keys without the listener.
#[test]
fn a_replica_whose_listener_cannot_connect_again_still_learns_of_new_devices() {
    let pg = Postgres::start();
    let Relayed {
        url, a, relay, b, ..
    } = relayed(&pg);

    relay.hang_new_listeners();
    assert_eq!(relay.silence_listeners(), 1, "B's one listener");
    a.add_device("acme", "db", Some("P-256"));
    let learned = serves_new_device(
        &b,
        Duration::from_secs(15),
        "B did not serve a device added while its listener could not connect",
    );
    // It was not the listener that told: its new connection hung, and none of B's
    // listener sessions listens.
    let db = url.rsplit('/').next().unwrap();
    let listening = pg.psql_in(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN nbde_changes%'",
    );
    assert_eq!(listening.trim(), "2", "A's listener and B's silent one");
    assert!(
        relay.hung_listeners() >= 1,
        "B's listener made no new connection"
    );
    eprintln!("B served a device added while its listener could not connect after {learned:?}");
}

#[test]
fn allow_once_is_answered_once_across_replicas() {
    let pg = Postgres::start();
    let (a, b) = two_replicas(&pg);
    a.add_device("acme", "race", Some("P-256"));
    let recovery = Arc::new(Recovery::new(&a.addr(), "race"));
    a.admin_ok(&["device", "disable", "acme/race"]);
    b.admin_ok(&["allow-once", "acme/race"]);
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let addr = if i % 2 == 0 { a.addr() } else { b.addr() };
            let (recovery, barrier) = (recovery.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                recovery.attempt(&addr).unwrap()
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        49,
        "{statuses:?}"
    );
    let history = b.history(Some("acme/race"));
    assert_eq!(history.len(), 50);
    assert_eq!(
        history
            .iter()
            .filter(|r| r["decision"] == "allowed")
            .count(),
        1
    );
}

#[test]
fn a_request_made_through_one_replica_is_approved_and_used_through_the_other() {
    let pg = Postgres::start();
    let (a, b) = two_replicas(&pg);
    a.add_device("acme", "db1", Some("P-256"));
    let recovery = Recovery::new(&a.addr(), "db1");
    a.admin_ok(&["device", "tag", "acme/db1", "tier=db"]);
    a.admin_ok(&[
        "group",
        "add",
        "acme",
        "dbas",
        "--tag",
        "tier=db",
        "--approver",
        "owner",
    ]);

    assert_eq!(recovery.attempt(&a.addr()).unwrap(), 403);
    assert_eq!(recovery.attempt(&b.addr()).unwrap(), 403);
    let requests: Value = serde_json::from_str(&b.admin_ok(&["requests", "--json"])).unwrap();
    let requests = requests["requests"].as_array().unwrap();
    assert_eq!(
        requests.len(),
        1,
        "one request from both replicas: {requests:?}"
    );
    let id = requests[0]["id"].to_string();
    b.admin_ok(&["approve", &id]);
    assert_eq!(recovery.attempt(&a.addr()).unwrap(), 200);
    assert_eq!(
        recovery.attempt(&b.addr()).unwrap(),
        403,
        "an approval is good for one unlock, on any replica"
    );
}

/// Every answered recovery has its history row, and a retry reaches the survivor.
#[test]
fn a_replica_killed_during_a_storm_behind_haproxy_leaves_no_answer_without_a_row() {
    const DEVICES: usize = 120;
    const CLIENTS: usize = 8;
    let pg = Postgres::start();
    let (a, b) = two_replicas(&pg);
    let mut a = Some(a);
    let recoveries: Vec<Recovery> = (0..DEVICES)
        .map(|i| {
            let name = format!("d{i}");
            b.add_device("acme", &name, Some("P-256"));
            Recovery::new(&b.addr(), &name)
        })
        .collect();
    let haproxy = Haproxy::start(&[&a.as_ref().unwrap().addr(), &b.addr()]);
    let front = haproxy.addr();

    let queue = Arc::new(Mutex::new(recoveries.into_iter().collect::<Vec<_>>()));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, answered, failures, front) = (
                queue.clone(),
                answered.clone(),
                failures.clone(),
                front.clone(),
            );
            std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let Some(recovery) = queue.lock().unwrap().pop() else {
                        return done;
                    };
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(tries < 200, "{} never got through", recovery.device);
                        match recovery.attempt(&front) {
                            Ok(200) => break,
                            Ok(status) if status >= 500 => {
                                *failures
                                    .lock()
                                    .unwrap()
                                    .entry(status.to_string())
                                    .or_default() += 1
                            }
                            Ok(status) => panic!("{}: HTTP {status}", recovery.device),
                            Err(e) => {
                                *failures.lock().unwrap().entry(e.to_string()).or_default() += 1
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    done.push(recovery.device.clone());
                }
            })
        })
        .collect();
    // Mid-storm: the first third answered, requests in flight on both replicas.
    while answered.load(Ordering::SeqCst) < DEVICES / 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = answered.load(Ordering::SeqCst);
    a.as_mut().unwrap().kill9();
    let devices: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(
        devices.len(),
        DEVICES,
        "every client got through in the end"
    );

    let history = b.history(None);
    for device in &devices {
        let org_device = device.as_str();
        assert!(
            history
                .iter()
                .any(|r| r["device"] == org_device && r["decision"] == "allowed"),
            "{device} was answered but has no allowed row"
        );
    }
    let allowed = history
        .iter()
        .filter(|r| r["decision"] == "allowed")
        .count();
    assert!(
        allowed >= DEVICES,
        "{allowed} allowed rows for {DEVICES} answers"
    );
    eprintln!(
        "killed replica A after {killed_at}/{DEVICES} answers; failed attempts the clients retried: {:?}; allowed rows {allowed}",
        failures.lock().unwrap()
    );
    drop(a);
}

#[test]
fn a_lost_database_answers_503_with_retry_after_and_recovers_by_itself() {
    let pg = Postgres::start();
    let (a, _b) = two_replicas(&pg);
    a.add_device("acme", "web1", Some("P-256"));
    let recovery = Recovery::new(&a.addr(), "web1");
    assert_eq!(recovery.attempt(&a.addr()).unwrap(), 200);
    let rows_before = a.history(Some("acme/web1")).len();

    pg.stop();
    let started = Instant::now();
    let (status, retry_after) = recovery.attempt_with_retry_after(&a.addr()).unwrap();
    assert_eq!(status, 503);
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{retry_after:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a dead database is noticed in bounded time: {:?}",
        started.elapsed()
    );
    let healthz = get(&a.addr(), "/healthz").unwrap().0;
    assert_eq!(healthz, 503, "a load balancer's health check sees it too");

    pg.start_again();
    let back = Instant::now();
    loop {
        match recovery.attempt(&a.addr()).unwrap() {
            200 => break,
            503 => assert!(back.elapsed() < Duration::from_secs(15), "no recovery"),
            other => panic!("HTTP {other}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only answered requests have rows: the 503s took no part.
    let rows = a.history(Some("acme/web1"));
    assert_eq!(
        rows.iter().filter(|r| r["decision"] == "allowed").count(),
        2,
        "{rows:?}"
    );
    assert!(rows.len() > rows_before);
    eprintln!(
        "recovered {:?} after the database came back",
        back.elapsed()
    );
}

#[test]
fn a_sqlite_store_moved_to_postgresql_keeps_unlocking_what_it_bound_through_the_replicas() {
    // Before: the embedded default, with a binding made by stock clevis and some history.
    let mut old = testkit::NbdeServer::start(&[]);
    let (url, thp) = old.add_device("acme", "web1", Some("P-384"));
    old.admin_ok(&["account", "add", "acme", "alice", "--role", "approver"]);
    old.admin_ok(&["device", "tag", "acme/web1", "tier=web"]);
    let config = serde_json::json!({"url": url, "thp": thp}).to_string();
    let jwe = testkit::run_ok("clevis", &["encrypt", "tang", &config], b"moved secret");
    let jwe = String::from_utf8(jwe).unwrap();
    assert_eq!(testkit::clevis_decrypt(&jwe).stdout, b"moved secret");
    let history_before = old.history(None).len();
    let port = old.url.rsplit(':').next().unwrap().to_owned();
    old.stop();

    let pg = Postgres::start();
    let database = pg.create_database();
    let data = old.data.path().to_str().unwrap().to_owned();
    let moved = testkit::run_ok(
        &testkit::bin("nbde-server"),
        &[
            "migrate",
            "--from",
            &data,
            "--to",
            &database,
            "--kek-file",
            old.kek.to_str().unwrap(),
        ],
        b"",
    );
    let moved = String::from_utf8(moved).unwrap();
    assert!(moved.contains("exchange_keys"), "{moved}");

    // After: two replicas behind haproxy on the old address, so the binding's URL holds.
    let a = NbdeServer::attach(&database, old.token.clone(), &old.kek, &[]);
    let b = a.replica(&[]);
    let haproxy = Haproxy::start_on(port.parse().unwrap(), &[&a.addr(), &b.addr()]);
    for _ in 0..4 {
        // Round robin: both replicas answer in turn.
        assert_eq!(testkit::clevis_decrypt(&jwe).stdout, b"moved secret");
        assert_eq!(testkit::ours_decrypt(&jwe).stdout, b"moved secret");
    }
    let history = b.history(None);
    assert_eq!(
        history.len(),
        history_before + 8,
        "old rows moved, new rows added"
    );
    let tags = a.admin_ok(&["device", "tag", "acme/web1", "--json"]);
    assert!(tags.contains("tier"), "{tags}");
    let audit = a.admin_ok(&["audit", "--json"]);
    assert!(audit.contains("alice"), "the audit trail moved: {audit}");

    // A second move into the now populated database is refused and changes nothing.
    let again = testkit::run(
        &testkit::bin("nbde-server"),
        &[
            "migrate",
            "--from",
            &data,
            "--to",
            &database,
            "--kek-file",
            old.kek.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{again:?}"
    );
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains(pg.password()),
        "no secret in errors"
    );
    assert_eq!(b.history(None).len(), history_before + 8);
    drop(haproxy);
}
