//! Interoperability of `nbde-unlock encrypt|decrypt` with stock clevis and stock tangd,
//! in both directions, on every curve, with sss and with rotated keys.

use serde_json::{Value, json};
use testkit::*;

const CURVES: [&str; 3] = ["P-256", "P-384", "P-521"];

fn tang_config(url: &str) -> String {
    json!({ "url": url }).to_string()
}

fn header_of(jwe: &str) -> Value {
    let protected = jwe.split('.').next().unwrap();
    serde_json::from_slice(&nbde_proto::b64::decode(protected, "t").unwrap()).unwrap()
}

#[test]
fn stock_clevis_tang_decrypts_with_nbde_unlock_on_every_curve() {
    for crv in CURVES {
        let keys = tempdir();
        tang_keys(keys.path(), crv);
        let tang = start_tangd(keys.path());
        let plaintext = format!("secret on {crv}");
        let jwe = clevis_encrypt("tang", &tang_config(&tang.url()), plaintext.as_bytes());
        assert_eq!(header_of(&jwe)["epk"]["crv"], crv);
        let out = ours_decrypt(&jwe);
        assert!(
            out.status.success(),
            "{crv}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plaintext.as_bytes(), "{crv}");
    }
}

#[test]
fn nbde_unlock_tang_decrypts_with_stock_clevis_on_every_curve() {
    for crv in CURVES {
        let keys = tempdir();
        tang_keys(keys.path(), crv);
        let tang = start_tangd(keys.path());
        let plaintext = format!("bound by nbde-unlock on {crv}");
        let jwe = ours_encrypt("tang", &tang_config(&tang.url()), plaintext.as_bytes());
        let header = header_of(&jwe);
        assert_eq!(header["alg"], "ECDH-ES");
        assert_eq!(header["enc"], "A256GCM");
        assert_eq!(header["epk"]["crv"], crv);
        assert_eq!(jwe.split('.').count(), 5);
        let out = clevis_decrypt(&jwe);
        assert!(
            out.status.success(),
            "{crv}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plaintext.as_bytes(), "{crv}");
        // And our own decrypt, for completeness of the round trip.
        assert_eq!(ours_decrypt(&jwe).stdout, plaintext.as_bytes());
    }
}

#[test]
fn binary_plaintext_survives_both_directions() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let tang = start_tangd(keys.path());
    let plaintext: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let ours = ours_encrypt("tang", &tang_config(&tang.url()), &plaintext);
    assert_eq!(clevis_decrypt(&ours).stdout, plaintext);
    let theirs = clevis_encrypt("tang", &tang_config(&tang.url()), &plaintext);
    assert_eq!(ours_decrypt(&theirs).stdout, plaintext);
}

#[test]
fn sss_interoperates_and_survives_a_dead_server() {
    let (keys_a, keys_b) = (tempdir(), tempdir());
    tang_keys(keys_a.path(), "P-521");
    tang_keys(keys_b.path(), "P-256");
    let a = start_tangd(keys_a.path());
    let mut b = start_tangd(keys_b.path());
    let one_of_two =
        json!({"t": 1, "pins": {"tang": [{"url": a.url()}, {"url": b.url()}]}}).to_string();
    let two_of_two =
        json!({"t": 2, "pins": {"tang": [{"url": a.url()}, {"url": b.url()}]}}).to_string();

    let stock_1 = clevis_encrypt("sss", &one_of_two, b"stock 1-of-2");
    let stock_2 = clevis_encrypt("sss", &two_of_two, b"stock 2-of-2");
    let ours_1 = ours_encrypt("sss", &one_of_two, b"ours 1-of-2");
    let ours_2 = ours_encrypt("sss", &two_of_two, b"ours 2-of-2");
    assert_eq!(header_of(&ours_2)["clevis"]["sss"]["t"], 2);
    assert_eq!(header_of(&ours_2)["alg"], "dir");

    assert_eq!(ours_decrypt(&stock_1).stdout, b"stock 1-of-2");
    assert_eq!(ours_decrypt(&stock_2).stdout, b"stock 2-of-2");
    assert_eq!(clevis_decrypt(&ours_1).stdout, b"ours 1-of-2");
    assert_eq!(clevis_decrypt(&ours_2).stdout, b"ours 2-of-2");

    b.stop();
    // 1-of-2 still opens; 2-of-2 cannot and says why.
    assert_eq!(ours_decrypt(&stock_1).stdout, b"stock 1-of-2");
    assert_eq!(ours_decrypt(&ours_1).stdout, b"ours 1-of-2");
    let out = ours_decrypt(&stock_2);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // It stops at the first failure: two of two can no longer be reached.
    assert!(err.contains("of the 2 required pins succeeded"), "{err}");
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn nested_sss_interoperates() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-384");
    let tang = start_tangd(keys.path());
    let config = json!({"t": 2, "pins": {
        "tang": {"url": tang.url()},
        "sss": {"t": 1, "pins": {"tang": [{"url": tang.url()}]}}
    }})
    .to_string();
    let ours = ours_encrypt("sss", &config, b"nested");
    assert_eq!(clevis_decrypt(&ours).stdout, b"nested");
    let stock = clevis_encrypt("sss", &config, b"nested stock");
    assert_eq!(ours_decrypt(&stock).stdout, b"nested stock");
}

#[test]
fn jwes_made_before_a_rotation_still_decrypt_after_it() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let tang = start_tangd(keys.path());
    let config = tang_config(&tang.url());
    let stock_old = clevis_encrypt("tang", &config, b"stock before");
    let ours_old = ours_encrypt("tang", &config, b"ours before");

    run_ok(TANGD_ROTATE, &["-d", keys.path().to_str().unwrap()], b"");
    let hidden = std::fs::read_dir(keys.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(
        hidden, 2,
        "rotation hides the old signing and exchange keys"
    );

    let ours_new = ours_encrypt("tang", &config, b"ours after");
    assert_ne!(header_of(&ours_new)["kid"], header_of(&ours_old)["kid"]);
    for (jwe, plain) in [
        (&stock_old, &b"stock before"[..]),
        (&ours_old, b"ours before"),
        (&ours_new, b"ours after"),
    ] {
        assert_eq!(ours_decrypt(jwe).stdout, plain);
        assert_eq!(clevis_decrypt(jwe).stdout, plain);
    }
}

#[test]
fn general_form_advertisement_with_two_signing_keys() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    add_key(keys.path(), r#"{"alg":"ES512"}"#);
    let tang = start_tangd(keys.path());
    let adv: Value = serde_json::from_slice(&run_ok(
        "curl",
        &["-sf", &format!("{}/adv", tang.url())],
        b"",
    ))
    .unwrap();
    assert_eq!(
        adv["signatures"].as_array().map(Vec::len),
        Some(2),
        "tangd serves the general form"
    );
    let ours = ours_encrypt("tang", &tang_config(&tang.url()), b"general");
    assert_eq!(clevis_decrypt(&ours).stdout, b"general");
}

#[test]
fn thp_pins_the_signing_key_and_adv_works_offline() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let mut tang = start_tangd(keys.path());
    let adv = run_ok("curl", &["-sf", &format!("{}/adv", tang.url())], b"");
    let signing = std::fs::read_dir(keys.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains("ES512"))
        .unwrap();
    let thp = |alg: &str| {
        let out = run_ok(
            "jose",
            &["jwk", "thp", "-i", signing.to_str().unwrap(), "-a", alg],
            b"",
        );
        String::from_utf8(out).unwrap().trim().to_owned()
    };

    // No -y: the thumbprint (S256 or the older S1) is what makes it trusted.
    for hash in ["S256", "S1"] {
        let config = json!({"url": tang.url(), "thp": thp(hash)}).to_string();
        let jwe = run_ok(&nbde_unlock(), &["encrypt", "tang", &config], b"pinned");
        assert_eq!(
            clevis_decrypt(&String::from_utf8(jwe).unwrap()).stdout,
            b"pinned"
        );
    }
    let wrong = json!({"url": tang.url(), "thp": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
        .to_string();
    let out = run(&nbde_unlock(), &["encrypt", "tang", &wrong, "-y"], b"x");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 404"),
        "tangd knows no such key"
    );

    // Offline: adv from a file and as an object, with the server gone.
    let file = keys.path().join("adv.jws");
    std::fs::write(&file, &adv).unwrap();
    let url = tang.url();
    tang.stop();
    let adv_value: Value = serde_json::from_slice(&adv).unwrap();
    for adv_config in [json!(file.to_str().unwrap()), adv_value] {
        let config = json!({"url": url, "adv": adv_config}).to_string();
        let jwe = run_ok(&nbde_unlock(), &["encrypt", "tang", &config], b"offline");
        assert_eq!(
            header_of(&String::from_utf8(jwe).unwrap())["clevis"]["tang"]["url"],
            url
        );
    }
    // A given adv is checked against thp too.
    let config = json!({"url": url, "adv": file.to_str().unwrap(), "thp": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"});
    let out = run(
        &nbde_unlock(),
        &["encrypt", "tang", &config.to_string()],
        b"x",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key"));
    assert!(out.stdout.is_empty());
}

#[test]
fn without_thp_or_yes_and_no_terminal_it_refuses() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let tang = start_tangd(keys.path());
    // setsid: no controlling terminal, as under CI or a script.
    let out = run(
        "setsid",
        &[
            "-w",
            &nbde_unlock(),
            "encrypt",
            "tang",
            &tang_config(&tang.url()),
        ],
        b"x",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no terminal to confirm"));
    assert!(out.stdout.is_empty());
}

#[test]
fn foreign_and_unknown_pins_fail_naming_the_pin() {
    for pin in ["tpm1", "pkcs11", "frobnicate"] {
        let out = run(&nbde_unlock(), &["encrypt", pin, "{}"], b"x");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("pin \"{pin}")),
            "{pin}"
        );
        // A JWE naming that pin, as another tool would write it.
        let header = json!({"alg": "dir", "enc": "A256GCM", "clevis": {"pin": pin}});
        let jwe = format!(
            "{}..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA",
            nbde_proto::b64::encode(header.to_string().as_bytes())
        );
        let out = ours_decrypt(&jwe);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("pin \"{pin}")),
            "{pin}"
        );
    }
}
