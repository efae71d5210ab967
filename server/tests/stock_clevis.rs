//! Stock clevis and stock tangd against nbde-server, through real sockets and processes.

use serde_json::json;
use testkit::*;

fn config(url: &str, thp: &str) -> String {
    json!({"url": url, "thp": thp}).to_string()
}

#[test]
fn device_lifecycle_with_stock_clevis_and_the_history_records_it() {
    let mut server = NbdeServer::start(&[]);
    let (url, thp) = server.add_device("acme", "web1", None);
    assert!(url.ends_with("/o/acme/d/web1"), "{url}");
    // Pinned thp: no -y needed, the org signing key is trusted.
    let jwe = String::from_utf8(run_ok(
        "clevis",
        &["encrypt", "tang", &config(&url, &thp)],
        b"disk key",
    ))
    .unwrap();
    assert_eq!(clevis_decrypt(&jwe).stdout, b"disk key");
    assert_eq!(ours_decrypt(&jwe).stdout, b"disk key");

    server.admin_ok(&["device", "disable", "acme/web1"]);
    let refused = clevis_decrypt(&jwe);
    assert!(!refused.status.success());
    let ours = ours_decrypt(&jwe);
    assert!(
        String::from_utf8_lossy(&ours.stderr).contains("HTTP 403 (disabled)"),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let history = server.history(Some("acme/web1"));
    assert_eq!(history[0]["decision"], "disabled");
    assert_eq!(history[0]["peer"], "127.0.0.1");
    assert_eq!(history[2]["decision"], "allowed");

    server.admin_ok(&["device", "enable", "acme/web1"]);
    assert_eq!(clevis_decrypt(&jwe).stdout, b"disk key");

    // A restart keeps devices, keys and history.
    let rows_before = server.history(None).len();
    server.restart();
    let moved = jwe;
    assert_eq!(clevis_decrypt(&moved).stdout, b"disk key");
    assert_eq!(server.history(None).len(), rows_before + 1);

    // Rotation: a new key is advertised, the old binding still recovers.
    let url = format!("{}/o/acme/d/web1", server.url);
    server.admin_ok(&["device", "rotate", "acme/web1"]);
    let rotated = String::from_utf8(run_ok(
        "clevis",
        &["encrypt", "tang", &config(&url, &thp)],
        b"new key",
    ))
    .unwrap();
    assert_ne!(kid_of(&rotated), kid_of(&moved));
    assert_eq!(clevis_decrypt(&moved).stdout, b"disk key");
    assert_eq!(clevis_decrypt(&rotated).stdout, b"new key");

    // Retirement: keys destroyed, nothing recovers, the history says not-found.
    server.admin_ok(&["device", "retire", "acme/web1"]);
    assert!(!clevis_decrypt(&rotated).status.success());
    assert!(String::from_utf8_lossy(&ours_decrypt(&moved).stderr).contains("HTTP 404"));
    assert_eq!(
        server.history(Some("acme/web1"))[0]["decision"],
        "not-found"
    );
    let out = server.admin(&["device", "enable", "acme/web1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"));
}

fn kid_of(jwe: &str) -> String {
    let protected = jwe.split('.').next().unwrap();
    let header = nbde_proto::b64::decode(protected, "header").unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[test]
fn every_curve_and_stock_clevis_sss_across_two_devices() {
    let server = NbdeServer::start(&[]);
    for crv in ["P-256", "P-384", "P-521"] {
        let name = format!("dev-{}", &crv[2..]);
        let (url, thp) = server.add_device("acme", &name, Some(crv));
        let jwe = String::from_utf8(run_ok(
            "clevis",
            &["encrypt", "tang", &config(&url, &thp)],
            crv.as_bytes(),
        ))
        .unwrap();
        assert_eq!(clevis_decrypt(&jwe).stdout, crv.as_bytes());
        let ours = ours_encrypt("tang", &config(&url, &thp), b"ours");
        assert_eq!(clevis_decrypt(&ours).stdout, b"ours");
    }
    let (a, thp) = server.add_device("acme", "a", None);
    let (b, _) = server.add_device("acme", "b", None);
    let sss = json!({"t": 2, "pins": {"tang": [{"url": a, "thp": thp}, {"url": b, "thp": thp}]}})
        .to_string();
    let jwe = String::from_utf8(run_ok("clevis", &["encrypt", "sss", &sss], b"both")).unwrap();
    assert_eq!(clevis_decrypt(&jwe).stdout, b"both");
    server.admin_ok(&["device", "disable", "acme/b"]);
    assert!(
        !clevis_decrypt(&jwe).status.success(),
        "2-of-2 with one refused"
    );
}

#[test]
fn tang_dir_drop_in_matches_stock_tangd_on_the_same_keys() {
    let keys = tempdir();
    run_ok(TANGD_KEYGEN, &[keys.path().to_str().unwrap()], b"");
    let server = NbdeServer::start(&["--tang-dir", keys.path().to_str().unwrap()]);
    let tangd = start_tangd(keys.path());
    let ours_cfg = json!({"url": server.url}).to_string();
    let stock_cfg = json!({"url": tangd.url()}).to_string();

    let via_us = clevis_encrypt("tang", &ours_cfg, b"bound via nbde-server");
    let via_tangd = clevis_encrypt("tang", &stock_cfg, b"bound via tangd");
    assert_eq!(
        kid_of(&via_us),
        kid_of(&via_tangd),
        "same exchange key advertised"
    );
    assert_eq!(clevis_decrypt(&via_us).stdout, b"bound via nbde-server");
    assert_eq!(clevis_decrypt(&via_tangd).stdout, b"bound via tangd");

    run_ok(TANGD_ROTATE, &["-d", keys.path().to_str().unwrap()], b"");
    let after = clevis_encrypt("tang", &ours_cfg, b"after rotation");
    assert_ne!(kid_of(&after), kid_of(&via_us));
    for (jwe, plain) in [
        (&via_us, &b"bound via nbde-server"[..]),
        (&after, b"after rotation"),
    ] {
        assert_eq!(clevis_decrypt(jwe).stdout, plain);
    }
    // The same JWE against stock tangd, then against us on the same key dir and address.
    let mut tangd = tangd;
    let to_tangd = String::from_utf8(run_ok(
        "clevis",
        &["encrypt", "tang", &stock_cfg, "-y"],
        b"either",
    ))
    .unwrap();
    assert_eq!(clevis_decrypt(&to_tangd).stdout, b"either");
    tangd.stop();
    let port: u16 = tangd.port;
    let replacement = NbdeServer::start_on(port, &["--tang-dir", keys.path().to_str().unwrap()]);
    assert_eq!(clevis_decrypt(&to_tangd).stdout, b"either");
    assert_eq!(ours_decrypt(&to_tangd).stdout, b"either");
    assert_eq!(replacement.history(None).len(), 2);
    let history = server.history(None);
    assert!(
        history
            .iter()
            .all(|r| r["decision"] == "allowed" && r["org"].is_null()),
        "{history:?}"
    );
    assert!(history.len() >= 3);
}
