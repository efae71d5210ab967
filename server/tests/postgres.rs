//! What only the PostgreSQL backend has to show: replicas sharing one database race on the
//! same rows, see each other's changes, survive the database going away, and destroyed
//! keys leave no copy in the cluster's files. Each test runs its own throwaway cluster.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nbde_proto::{Curve, b64};
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::policy::{DeviceState, Effect};
use nbde_server::store::{EscrowKeyRow, Location, NewEscrowRow, Store, StoreError};
use testkit::{NbdeServer, Postgres, bin, run};

mod store_contract;

use store_contract::{entry, seeded};

/// One KEK for every store of this process: a test opens one database several times.
static KEK: std::sync::LazyLock<Kek> = std::sync::LazyLock::new(|| Kek::generate().unwrap());

fn open(url: &str) -> Store {
    Store::open_location(&Location::database(url).unwrap())
        .unwrap()
        .with_kek(KEK.clone())
        .unwrap()
}

/// Runs `call` on `threads` threads, half of them on each store, all released together.
fn race<T: Send>(stores: [&Store; 2], threads: usize, call: impl Fn(&Store) -> T + Sync) -> Vec<T> {
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (store, start, call) = (stores[i % 2], &start, &call);
                s.spawn(move || {
                    start.wait();
                    call(store)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn one_of_many_racing_replicas_uses_an_allow_once() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let (a, b) = (open(&url), open(&url));
    let device = seeded(&a);
    for round in 0..10 {
        let once = b.allow_once("acme", "web1", "owner").unwrap();
        let wins = race([&a, &b], 12, |store| {
            store
                .apply(device, &Effect::UseAllowOnce(once), &entry("allowed"))
                .unwrap()
        });
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "round {round}");
    }
    // Only the winners' history rows were written.
    assert_eq!(a.history(None, None, 1000).unwrap().len(), 10);
}

#[test]
fn racing_polls_make_one_pending_request() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let (a, b) = (open(&url), open(&url));
    let device = seeded(&a);
    let applied = race([&a, &b], 12, |store| {
        store
            .apply(device, &Effect::CreateRequest, &entry("pending-approval"))
            .unwrap()
    });
    assert!(applied.iter().all(|a| *a), "a poll is answered either way");
    assert_eq!(b.requests(None, true).unwrap().len(), 1);
    assert_eq!(a.history(None, None, 100).unwrap().len(), 12);
}

/// Files under `dir` holding any needle, as (label, file).
fn scan(dir: &Path, needles: &[(&str, Vec<u8>)]) -> Vec<(String, PathBuf)> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let Ok(data) = std::fs::read(&path) else {
            continue; // removed while we walked (a WAL segment, a temporary file)
        };
        for (label, needle) in needles {
            if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                hits.push((label.to_string(), path.clone()));
            }
        }
    }
    hits
}

/// The private `d` of an exchange key as base64url text and as raw bytes.
/// A device's key as the database holds it (sealed): the whole text and its ciphertext's
/// start, what would open the key, with the KEK, from a copy of the cluster's files.
fn stored_key_needles(
    label: &'static str,
    store: &Store,
    device: &str,
) -> Vec<(&'static str, Vec<u8>)> {
    let row = store.device_with_keys("acme", device).unwrap().unwrap();
    let stored = row.exchange_keys[0].0.clone();
    let ciphertext = stored.rsplit('.').next().unwrap().as_bytes()[..48].to_vec();
    vec![(label, stored.into_bytes()), (label, ciphertext)]
}

/// Random base64url text: incompressible, so TOAST stores it as it is and a scan sees it.
fn random_text(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    b64::encode(&bytes)[..len].to_owned()
}

#[test]
fn retired_keys_and_blobs_leave_no_copy_in_the_cluster() {
    let cluster = Postgres::start();
    let store = open(&cluster.create_database());
    seeded(&store);
    let gone_key = keys::generate_exchange_key(Curve::P256).unwrap();
    let live_key = keys::generate_exchange_key(Curve::P256).unwrap();
    // The destroyed rows come last: the lowest on their pages, where compacting the live
    // rows (all a plain VACUUM does) would not overwrite them.
    store.add_device("acme", "live", &live_key).unwrap();
    store.add_device("acme", "gone", &gone_key).unwrap();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}).to_string();
    let key = EscrowKeyRow {
        kid: "kid".into(),
        jwk,
    };
    store.set_escrow_key("acme", &key).unwrap();
    // Over TOAST's threshold: stored in chunks of about 2 kB in the TOAST table.
    let (gone_blob, live_blob) = (random_text(6000), random_text(6000));
    for (device, blob) in [("live", &live_blob), ("gone", &gone_blob)] {
        let upload = NewEscrowRow {
            uuid: "0b9e4a7c-1f2d-4e5a-9c3b-8d7e6f5a4b3c",
            kid: "kid",
            jwe: blob,
            by: "alice",
        };
        store.put_escrow("acme", device, &upload).unwrap();
    }
    // Table files as well as the WAL hold them before the erasure.
    cluster.psql("CHECKPOINT");
    let mut gone = stored_key_needles("gone key", &store, "gone");
    gone.push(("gone blob", gone_blob.as_bytes()[..64].to_vec()));
    let mut live = stored_key_needles("live key", &store, "live");
    live.push(("live blob", live_blob.as_bytes()[..64].to_vec()));
    let found = |needles: &[(&str, Vec<u8>)]| {
        let mut labels: Vec<String> = scan(cluster.data_dir(), needles)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        labels.extend(
            scan(&cluster.log_file(), needles)
                .into_iter()
                .map(|(l, _)| l),
        );
        labels.sort();
        labels.dedup();
        labels
    };
    assert_eq!(
        found(&gone),
        ["gone blob", "gone key"],
        "the scan sees live data"
    );

    store
        .set_device_state("acme", "gone", DeviceState::Retired)
        .unwrap();
    // Deleted but not erased: the copies are still there (why the erasure exists).
    assert_eq!(found(&gone), ["gone blob", "gone key"]);
    store.erase_destroyed().unwrap();
    let table_hits = scan(cluster.data_dir(), &gone);
    assert!(
        table_hits.is_empty(),
        "destroyed data found: {table_hits:?}"
    );
    assert_eq!(found(&live), ["live blob", "live key"], "live rows stay");

    // After a restart too (nothing is written back from memory).
    cluster.stop();
    cluster.start_again();
    assert!(found(&gone).is_empty());
    assert_eq!(store.devices().unwrap().len(), 3, "the store reconnects");
}

/// Reads `device`'s snapshot until `store` keeps it (its change listener is listening).
fn cache_snapshot(store: &Store, device: i64) {
    let started = Instant::now();
    while {
        store.snapshot(device).unwrap();
        store.cached_snapshot(device).is_none()
    } {
        assert!(started.elapsed() < Duration::from_secs(5), "never cached");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_cached_snapshot_is_dropped_at_once_by_its_own_change_and_within_a_second_by_another() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let (a, b) = (open(&url), open(&url));
    let device = seeded(&a);
    // Nothing is cached without a listener: no one would say it went stale.
    a.snapshot(device).unwrap();
    assert!(a.cached_snapshot(device).is_none(), "cached while deaf");
    a.watch(Box::new(|| {})).unwrap();
    cache_snapshot(&a, device);

    // This process's own change, at once: not when its notification comes back.
    a.set_device_state("acme", "web1", DeviceState::Disabled)
        .unwrap();
    assert!(a.cached_snapshot(device).is_none(), "own change");
    assert_eq!(
        a.snapshot(device).unwrap().unwrap().state,
        DeviceState::Disabled
    );

    // Another replica's change to a table only the policy reads, once heard (after the
    // notification of the change above has come back).
    std::thread::sleep(Duration::from_millis(200));
    cache_snapshot(&a, device);
    b.allow_once("acme", "web1", "owner").unwrap();
    let changed = Instant::now();
    while a.cached_snapshot(device).is_some() {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "another replica's allow-once not heard within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(a.snapshot(device).unwrap().unwrap().allow_once.is_some());
}

#[test]
fn signing_keys_sampled_into_the_statistics_by_an_older_schema_are_dropped() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    seeded(&open(&url));
    let samples = "SELECT count(*) FROM pg_stats
                   WHERE tablename = 'signing_keys' AND attname = 'jwk'";
    // A store made before migration 4, after an ANALYZE; 6 is the schema before the fix.
    cluster.psql_in(
        &db,
        "ALTER TABLE signing_keys ALTER COLUMN jwk SET STATISTICS -1;
         ANALYZE signing_keys;
         UPDATE schema_version SET version = 6",
    );
    assert_eq!(cluster.psql_in(&db, samples).trim(), "1", "nothing sampled");
    let store = open(&url);
    assert_eq!(cluster.psql_in(&db, samples).trim(), "0", "samples kept");
    cluster.psql_in(&db, "ANALYZE signing_keys");
    assert_eq!(cluster.psql_in(&db, samples).trim(), "0", "sampled again");
    assert!(
        !store.devices().unwrap().is_empty(),
        "the store's devices stay"
    );
}

#[test]
fn an_erasure_that_cannot_be_confirmed_stays_pending() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let store = open(&url);
    seeded(&store);
    // An old snapshot could still see the rows: VACUUM FULL would keep them.
    let mut reader = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut old = reader
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    old.query("SELECT count(*) FROM devices", &[]).unwrap();
    store
        .set_device_state("acme", "web1", DeviceState::Retired)
        .unwrap();
    let started = Instant::now();
    let refused = store.erase_destroyed();
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("not confirmed")),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    old.commit().unwrap();
    store.erase_destroyed().unwrap();
    let pending: i64 = reader
        .query_one("SELECT count(*) FROM erasure_pending", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "cleared once confirmed");
}

#[test]
fn watch_tells_of_changes_made_through_another_store() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let (a, b) = (open(&url), open(&url));
    let (told, changes) = mpsc::channel();
    a.watch(Box::new(move || {
        let _ = told.send(Instant::now());
    }))
    .unwrap();
    // Once on connecting: what changed while nobody listened is unknown.
    changes.recv_timeout(Duration::from_secs(5)).unwrap();
    // Rows the key ring does not read are not a change to it.
    b.audit("owner", "noise", "x").unwrap();
    assert!(changes.recv_timeout(Duration::from_millis(1500)).is_err());
    let changed = Instant::now();
    seeded(&b);
    let seen = changes.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(seen - changed < Duration::from_secs(1));
    while changes.try_recv().is_ok() {}
    b.rotate_device(
        "acme",
        "web1",
        &keys::generate_exchange_key(Curve::P256).unwrap(),
    )
    .unwrap();
    changes.recv_timeout(Duration::from_secs(1)).unwrap();

    // A restart of the database: the listener reconnects and tells again.
    cluster.stop();
    cluster.start_again();
    while changes.try_recv().is_ok() {}
    b.set_device_state("acme", "web1", DeviceState::Disabled)
        .unwrap();
    changes.recv_timeout(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_stopped_database_is_unavailable_and_recovery_needs_no_reopen() {
    let cluster = Postgres::start();
    let store = open(&cluster.create_database());
    let device = seeded(&store);
    let mut sink = store.history_sink().unwrap();
    let row = entry("allowed");
    cluster.stop();
    let started = Instant::now();
    assert!(matches!(store.devices(), Err(StoreError::Unavailable(_))));
    assert!(matches!(
        store.snapshot(device),
        Err(StoreError::Unavailable(_))
    ));
    assert!(!store.healthy());
    assert!(matches!(
        sink.write(&[&row]),
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "calls must fail, not hang: {:?}",
        started.elapsed()
    );
    cluster.start_again();
    assert!(store.healthy());
    assert_eq!(store.devices().unwrap().len(), 1);
    sink.write(&[&row]).unwrap();
    assert_eq!(store.history(None, None, 10).unwrap().len(), 1);
}

/// GET `path` from `base` (http://host:port); (status, body).
fn get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

#[test]
fn a_replica_serves_a_device_added_through_another_within_a_second() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let first = NbdeServer::start_on_database(&url, &[]);
    let second = first.replica(&[]);
    let adv = "/o/acme/d/web1/adv";
    assert_eq!(get(&second.url, adv).0, 404);
    first.add_device("acme", "web1", Some("P-256"));
    let added = Instant::now();
    let mut answers = HashMap::new();
    while added.elapsed() < Duration::from_secs(1) {
        let (status, _) = get(&second.url, adv);
        *answers.entry(status).or_insert(0) += 1;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(&second.url, adv).0,
        200,
        "not served by the replica within 1 s: {answers:?}"
    );
    // Both serve the same advertisement.
    assert_eq!(get(&first.url, adv).1, get(&second.url, adv).1);
}

#[test]
fn a_database_outage_is_logged_once_by_the_key_reloads_and_their_return_once() {
    let cluster = Postgres::start();
    let mut server = NbdeServer::start_on_database(&cluster.create_database(), &[]);
    server.restart_logging("info,nbde_server::http=debug");
    let failed = "reloading the keys after a change failed";
    let failed_again = "reloading the keys failed again";
    let again = "reloading the keys works again";
    let wait_for = |text: &str, within: Duration| {
        let start = Instant::now();
        while server.log_lines(text).is_empty() && start.elapsed() < within {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    cluster.stop();
    // The listener loses its connection; its fallback reloads 2 s after that and 2 s
    // after each reload ends, and each one fails (after the pool's own wait) while the
    // database is down.
    wait_for(failed_again, Duration::from_secs(30));
    assert_eq!(
        server
            .log_lines("the key ring is reloaded without it")
            .len(),
        1,
        "the listener did not go deaf"
    );
    let said = server.log_lines(failed);
    assert_eq!(said.len(), 1, "said at every failed reload: {said:#?}");
    assert!(!server.log_lines(failed_again).is_empty());
    assert!(server.log_lines(again).is_empty());
    cluster.start_again();
    wait_for(again, Duration::from_secs(20));
    assert_eq!(
        server.log_lines(again).len(),
        1,
        "no word when reloads worked again"
    );
    assert_eq!(server.log_lines(failed).len(), 1);
}

#[test]
fn the_database_password_is_never_shown() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let server = bin("nbde-server");
    let kek_dir = testkit::tempdir();
    let kek = kek_dir.path().join("kek");
    let kek = kek.to_str().unwrap();
    let first = run(
        &server,
        &["init", "--database", &url, "--kek-file", kek],
        b"",
    );
    assert!(first.status.success());
    let again = run(
        &server,
        &["init", "--database", &url, "--kek-file", kek],
        b"",
    );
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(refused.contains("already initialised"), "{refused}");
    let wrong = url.replace(cluster.password(), "wrong-password");
    let unreachable = run(
        &server,
        &["init", "--database", &wrong, "--kek-file", kek],
        b"",
    );
    assert!(!unreachable.status.success());
    let both = run(
        &server,
        &["init", "--data", "/nonexistent", "--database", &url],
        b"",
    );
    assert!(!both.status.success());
    for out in [&first, &again, &unreachable, &both] {
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            assert!(!text.contains(cluster.password()), "{text}");
            assert!(!text.contains("wrong-password"), "{text}");
        }
    }
}
