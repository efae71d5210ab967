//! A hostile or broken server must give a clear error within the timeout, never a panic
//! and never output.

use std::time::{Duration, Instant};

use nbde_proto::{Curve, Jwk, b64};
use serde_json::{Value, json};
use testkit::*;

/// A JWE bound (offline, from a real tangd's adv) to a server at `url`.
fn jwe_for(url: &str, keys: &std::path::Path) -> String {
    let tang = start_tangd(keys);
    let adv = run_ok("curl", &["-sf", &format!("{}/adv", tang.url())], b"");
    let adv: Value = serde_json::from_slice(&adv).unwrap();
    let config = json!({"url": url, "adv": adv}).to_string();
    String::from_utf8(run_ok(
        &nbde_unlock(),
        &["encrypt", "tang", &config],
        b"never printed",
    ))
    .unwrap()
}

fn assert_clean_failure(out: &std::process::Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(out.stdout.is_empty(), "no plaintext on failure");
}

fn jwk_reply(crv: &str, x: &[u8], y: &[u8]) -> Vec<u8> {
    json!({"alg": "ECMR", "crv": crv, "kty": "EC", "x": b64::encode(x), "y": b64::encode(y)})
        .to_string()
        .into_bytes()
}

#[test]
fn hostile_recovery_replies_fail_cleanly() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let valid = Curve::P521.random_scalar().unwrap().public_point();
    let mut off_curve_y = valid.y().to_vec();
    off_curve_y[65] ^= 1;
    let p256 = Curve::P256.random_scalar().unwrap().public_point();
    let cases: Vec<(u16, Vec<u8>, &str)> = vec![
        (
            200,
            jwk_reply("P-521", valid.x(), &off_curve_y),
            "not a valid point",
        ),
        (
            200,
            jwk_reply("P-521", &[0; 66], &[0; 66]),
            "not a valid point",
        ),
        (
            200,
            jwk_reply("P-256", p256.x(), p256.y()),
            "unusable reply",
        ),
        (
            200,
            jwk_reply("P-521", valid.x(), valid.y()),
            "recovered key does not decrypt",
        ),
        (200, b"garbage".to_vec(), "not a JSON JWK"),
        (200, b"[1,2,3]".to_vec(), "unusable reply"),
        (
            200,
            Jwk::from_point(&valid)
                .to_value()
                .to_string()
                .replace("EC", "RSA")
                .into_bytes(),
            "unsupported key type",
        ),
        (200, vec![b' '; 2 << 20], "unusable reply"),
        (500, b"oops".to_vec(), "HTTP 500"),
        (403, br#"{"type":"denied"}"#.to_vec(), "HTTP 403 (denied)"),
        (404, Vec::new(), "HTTP 404"),
    ];
    for (status, body, expect) in cases {
        let server = start_fixed_server(status, "application/jwk+json", body);
        let jwe = jwe_for(&server.url(), keys.path());
        assert_clean_failure(&ours_decrypt(&jwe), expect);
    }
}

#[test]
fn a_server_that_never_answers_times_out() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-256");
    let server = start_fixed_server(0, "", Vec::new());
    let jwe = jwe_for(&server.url(), keys.path());
    let start = Instant::now();
    let out = run(
        &nbde_unlock(),
        &["decrypt", "--timeout", "2"],
        jwe.as_bytes(),
    );
    // Bounded: the 2 s timeout, with generous slack for a loaded machine.
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_clean_failure(&out, "unreachable");
}

#[test]
fn a_dead_server_fails_at_once() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-256");
    let mut server = start_fixed_server(200, "", Vec::new());
    let url = server.url();
    server.stop();
    let jwe = jwe_for(&url, keys.path());
    assert_clean_failure(&ours_decrypt(&jwe), "Connection refused");
}

#[test]
fn hostile_advertisements_are_refused() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let tang = start_tangd(keys.path());
    let adv: Value = serde_json::from_slice(&run_ok(
        "curl",
        &["-sf", &format!("{}/adv", tang.url())],
        b"",
    ))
    .unwrap();

    // The payload swapped for one with an attacker's exchange key, signature kept.
    let mut payload: Value =
        serde_json::from_slice(&b64::decode(adv["payload"].as_str().unwrap(), "t").unwrap())
            .unwrap();
    let evil = Jwk::from_point(&Curve::P521.random_scalar().unwrap().public_point());
    for key in payload["keys"].as_array_mut().unwrap() {
        if key["alg"] == "ECMR" {
            key["x"] = evil.to_value()["x"].clone();
            key["y"] = evil.to_value()["y"].clone();
        }
    }
    let mut swapped = adv.clone();
    swapped["payload"] = b64::encode(payload.to_string().as_bytes()).into();

    let mut unsigned = adv.clone();
    unsigned["signature"] = b64::encode(&[0u8; 132]).into();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            swapped.to_string().into_bytes(),
            "signature does not verify",
        ),
        (
            unsigned.to_string().into_bytes(),
            "signature does not verify",
        ),
        (b"{\"payload\":\"e30\"}".to_vec(), "protected"),
        (b"not json".to_vec(), "unusable reply"),
        (vec![b'{'; 3 << 20], "unusable reply"),
    ];
    for (body, expect) in cases {
        let server = start_fixed_server(200, "application/jose+json", body);
        let config = json!({"url": server.url()}).to_string();
        let out = run(
            &nbde_unlock(),
            &["encrypt", "tang", &config, "-y", "--timeout", "5"],
            b"x",
        );
        assert_clean_failure(&out, expect);
    }
}
