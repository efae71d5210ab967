//! The liveness checker (issue #16), on SQLite and on PostgreSQL with two replicas: a
//! device silent for longer than its max_silence is disabled (its /rec refused), the
//! history and the audit say why, once; an owner's enable makes /rec work again and
//! restarts the clock; a device that recovers, or whose own setting is longer than its
//! org's, stays enabled.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{NbdeServer, Postgres, clevis_decrypt, post_status};

fn state(server: &NbdeServer, device: &str) -> String {
    let show: Value =
        serde_json::from_str(&server.admin_ok(&["device", "show", device, "--json"])).unwrap();
    show["state"].as_str().unwrap().to_owned()
}

fn bind(server: &NbdeServer, device: &str) -> String {
    let (url, thp) = server.add_device("acme", device, Some("P-256"));
    let config = serde_json::json!({"url": url, "thp": thp}).to_string();
    testkit::clevis_encrypt("tang", &config, device.as_bytes())
}

fn recovers(jwe: &str, device: &str) -> bool {
    clevis_decrypt(jwe).stdout == device.as_bytes()
}

fn rec_status(server: &NbdeServer, device: &str) -> u16 {
    let (path, body) = server.rec_request("acme", device);
    post_status(&server.addr(), &path, &body, "")
}

/// `checkers` run the check (replicas of one database, or the one SQLite server);
/// `admin` is any of them.
fn silent_devices_are_disabled_once_and_come_back_when_enabled(
    admin: &NbdeServer,
    checkers: &[&NbdeServer],
) {
    let quiet = bind(admin, "quiet");
    let busy = bind(admin, "busy");
    bind(admin, "patient");
    admin.admin_ok(&["org", "liveness", "acme", "--max-silence", "3s"]);
    // The device's own setting wins over the org's.
    let shown = admin.admin_ok(&["device", "liveness", "acme/patient", "--max-silence", "1h"]);
    assert!(shown.contains("max_silence: 1h"), "{shown}");

    // busy asks twice a second; quiet asks nothing.
    let started = Instant::now();
    while state(admin, "acme/quiet") == "active" {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "quiet never disabled"
        );
        assert!(recovers(&busy, "busy"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let disabled_after = started.elapsed();
    assert!(
        disabled_after >= Duration::from_secs(2),
        "{disabled_after:?}"
    );
    for checker in checkers {
        assert_eq!(rec_status(checker, "quiet"), 403, "quiet's /rec is refused");
    }
    assert!(!recovers(&quiet, "quiet"));
    assert_eq!(state(admin, "acme/busy"), "active");
    assert_eq!(state(admin, "acme/patient"), "active");
    assert!(recovers(&busy, "busy"));

    // Why, once, even with several checkers.
    std::thread::sleep(Duration::from_secs(2));
    let silent: Vec<Value> = admin
        .history(Some("acme/quiet"))
        .into_iter()
        .filter(|row| row["decision"] == "silent")
        .collect();
    assert_eq!(silent.len(), 1, "{silent:?}");
    let reason = silent[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("disabled: silent for "), "{reason}");
    assert!(reason.ends_with("(max_silence 3s)"), "{reason}");
    let audit: Value = serde_json::from_str(&admin.admin_ok(&["audit", "--json"])).unwrap();
    let disables: Vec<&Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["target"] == "acme/quiet" && row["account"] == "liveness")
        .collect();
    assert_eq!(disables.len(), 1, "{audit}");
    assert!(
        disables[0]["action"]
            .as_str()
            .unwrap()
            .contains("silent for"),
        "{audit}"
    );

    // An owner enables it: the clock starts again (it was silent for longer than 3 s,
    // yet stays enabled without asking), and /rec works.
    admin.admin_ok(&["device", "enable", "acme/quiet"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(admin, "acme/quiet"), "active", "the clock restarted");
    assert!(recovers(&quiet, "quiet"));
    assert_eq!(rec_status(checkers[0], "quiet"), 200);
    // Unset everywhere: no check.
    admin.admin_ok(&["org", "liveness", "acme", "--max-silence", "none"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(state(admin, "acme/quiet"), "active");
}

#[test]
fn on_sqlite() {
    let server = NbdeServer::start(&[]);
    silent_devices_are_disabled_once_and_come_back_when_enabled(&server, &[&server]);
}

#[test]
fn on_postgresql_with_two_replicas() {
    let cluster = Postgres::start();
    let a = NbdeServer::start_on_database(&cluster.create_database(), &[]);
    let b = a.replica(&[]);
    silent_devices_are_disabled_once_and_come_back_when_enabled(&a, &[&a, &b]);
}

#[test]
fn max_silence_out_of_range_is_refused() {
    let server = NbdeServer::start(&[]);
    server.add_device("acme", "web1", Some("P-256"));
    for bad in ["0", "-1s", "forever"] {
        let out = server.admin(&["device", "liveness", "acme/web1", "--max-silence", bad]);
        assert!(!out.status.success(), "{bad}");
    }
    let out = server.admin(&["org", "liveness", "nope", "--max-silence", "1h"]);
    assert!(!out.status.success());
}

/// A server down for longer than a device's max_silence: the device could not ask, so it
/// is not disabled when the server comes back; it is once it stays silent for its
/// max_silence with the server up.
#[test]
fn an_outage_of_the_server_is_not_silence() {
    let mut server = NbdeServer::start(&[]);
    let sleeper = bind(&server, "sleeper");
    server.admin_ok(&["org", "liveness", "acme", "--max-silence", "3s"]);
    // Watched for a while (checks run every second), the device asking.
    for _ in 0..5 {
        assert!(recovers(&sleeper, "sleeper"));
        std::thread::sleep(Duration::from_millis(500));
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(8));
    server.restart();
    let back = Instant::now();
    // Two checks after the restart (one a second), 10 s after the last request.
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        state(&server, "acme/sleeper"),
        "active",
        "the outage counted"
    );
    while state(&server, "acme/sleeper") == "active" {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "never disabled after the restart"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let waited = back.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "disabled {waited:?} after the restart"
    );
}
