//! The tpm2 pin against a software TPM (swtpm) and the stock tools, through nbde-unlock
//! (which runs this package's nbde-tpm2 from beside itself): stock `clevis encrypt
//! tpm2` read by nbde-unlock and the reverse, alone and as an sss child beside a stock
//! tangd; a PCR-bound binding refused once its PCR moves; a missing TPM named; a LUKS2
//! volume bound to sss(tang, tpm2) opened; and how `mode` counts each binding.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use testkit::*;

fn stock_encrypt(tpm: &Swtpm, pin: &str, config: &str, plaintext: &[u8]) -> String {
    let out = tpm.run("clevis", &["encrypt", pin, config, "-y"], plaintext);
    String::from_utf8(ok(out).into_bytes()).unwrap()
}

fn ours_encrypt_on(tpm: &Swtpm, pin: &str, config: &str, plaintext: &[u8]) -> String {
    ok(tpm.run(&nbde_unlock(), &["encrypt", pin, config, "-y"], plaintext))
}

fn stock_decrypt(tpm: &Swtpm, jwe: &str) -> Output {
    tpm.run("clevis", &["decrypt"], jwe.as_bytes())
}

fn ours_decrypt_on(tpm: &Swtpm, jwe: &str) -> Output {
    tpm.run(
        &nbde_unlock(),
        &["decrypt", "--timeout", "5"],
        jwe.as_bytes(),
    )
}

fn header_of(jwe: &str) -> Value {
    let protected = jwe.split('.').next().unwrap();
    serde_json::from_slice(&nbde_proto::b64::decode(protected, "t").unwrap()).unwrap()
}

fn decrypts_to(out: Output, plaintext: &[u8]) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, plaintext);
}

#[test]
fn stock_and_nbde_read_each_others_tpm2_jwes() {
    let tpm = Swtpm::start();
    for config in [
        "{}",
        r#"{"pcr_ids":"0,7"}"#,
        r#"{"pcr_bank":"sha256","pcr_ids":[7]}"#,
        r#"{"key":"rsa","hash":"sha1"}"#,
    ] {
        let stock = stock_encrypt(&tpm, "tpm2", config, b"from stock clevis");
        decrypts_to(ours_decrypt_on(&tpm, &stock), b"from stock clevis");
        let ours = ours_encrypt_on(&tpm, "tpm2", config, b"from nbde-unlock");
        decrypts_to(stock_decrypt(&tpm, &ours), b"from nbde-unlock");
        // The same header members, in the same shape, as stock clevis writes.
        let (s, o) = (header_of(&stock), header_of(&ours));
        assert_eq!(
            (o["alg"].clone(), o["enc"].clone()),
            (json!("dir"), json!("A256GCM"))
        );
        let members = |h: &Value| {
            let mut keys: Vec<String> = h["clevis"]["tpm2"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(members(&s), members(&o), "{config}");
        for member in ["hash", "key", "pcr_bank", "pcr_ids"] {
            assert_eq!(
                s["clevis"]["tpm2"][member], o["clevis"]["tpm2"][member],
                "{config}: {member}"
            );
        }
    }
}

#[test]
fn sss_of_tang_and_tpm2_needs_both_either_way() {
    let tpm = Swtpm::start();
    let (_keys, tang) = tang("P-521");
    let config = json!({"t": 2, "pins": {"tang": [{"url": tang.url()}], "tpm2": {}}}).to_string();
    let stock = stock_encrypt(&tpm, "sss", &config, b"this TPM and this network");
    decrypts_to(ours_decrypt_on(&tpm, &stock), b"this TPM and this network");
    let ours = ours_encrypt_on(&tpm, "sss", &config, b"both, by nbde");
    decrypts_to(stock_decrypt(&tpm, &ours), b"both, by nbde");
    decrypts_to(ours_decrypt_on(&tpm, &ours), b"both, by nbde");

    // Another machine's TPM: the tpm2 share is refused, so t=2 cannot be met (whether the
    // tang share was in by then is a race, and does not matter).
    let other = Swtpm::start();
    let out = ours_decrypt_on(&other, &stock);
    fails_with(&out, 1, "of the 2 required pins succeeded");
    fails_with(&out, 1, "tpm2: cannot load the sealed key");
}

#[test]
fn a_pcr_bound_binding_is_refused_after_the_pcr_moves() {
    let tpm = Swtpm::start();
    let (_keys, tang) = tang("P-256");
    let bound = r#"{"pcr_bank":"sha256","pcr_ids":"16"}"#;
    let stock = stock_encrypt(&tpm, "tpm2", bound, b"pcr 16");
    let ours = ours_encrypt_on(&tpm, "tpm2", bound, b"pcr 16");
    let pcr: Value = serde_json::from_str(bound).unwrap();
    let either = json!({"t": 1, "pins": {"tang": [{"url": tang.url()}], "tpm2": pcr}}).to_string();
    let either = ours_encrypt_on(&tpm, "sss", &either, b"either");
    let both = json!({"t": 2, "pins": {"tang": [{"url": tang.url()}], "tpm2": pcr}}).to_string();
    let both = ours_encrypt_on(&tpm, "sss", &both, b"both");
    decrypts_to(ours_decrypt_on(&tpm, &stock), b"pcr 16");
    decrypts_to(ours_decrypt_on(&tpm, &both), b"both");

    tpm.extend(16);
    for jwe in [&stock, &ours] {
        fails_with(
            &ours_decrypt_on(&tpm, jwe),
            1,
            "tpm2: PCR policy not satisfied: PCRs sha256:16 no longer hold the values",
        );
        assert!(!stock_decrypt(&tpm, jwe).status.success());
    }
    fails_with(&ours_decrypt_on(&tpm, &both), 1, "PCRs sha256:16");
    // t=1: the tang child alone is enough.
    decrypts_to(ours_decrypt_on(&tpm, &either), b"either");
}

#[test]
fn a_missing_tpm_is_named_and_sss_goes_on_without_it() {
    let tpm = Swtpm::start();
    let jwe = ours_encrypt_on(&tpm, "tpm2", "{}", b"sealed");
    let config = json!({"t": 1, "pins": {"null": {}, "tpm2": {}}}).to_string();
    let either = ours_encrypt_on(&tpm, "sss", &config, b"either");
    let tcti = tpm.tcti();
    drop(tpm);
    let out = run_with_env(
        &nbde_unlock(),
        &["decrypt"],
        jwe.as_bytes(),
        &[("TPM2TOOLS_TCTI", &tcti)],
    );
    fails_with(
        &out,
        1,
        &format!("tpm2: no TPM: cannot reach the TPM (TPM2TOOLS_TCTI={tcti})"),
    );
    let out = run_with_env(
        &nbde_unlock(),
        &["decrypt"],
        either.as_bytes(),
        &[("TPM2TOOLS_TCTI", &tcti)],
    );
    decrypts_to(out, b"either");
    // A config member clevis would ignore is refused before the TPM is touched.
    let out = run_with_env(
        &nbde_unlock(),
        &["encrypt", "tpm2", r#"{"pcr_id":"7"}"#],
        b"x",
        &[("TPM2TOOLS_TCTI", &tcti)],
    );
    fails_with(&out, 1, "unknown configuration member \"pcr_id\"");
}

fn mode_of(tpm: &Swtpm, image: &Path) -> Value {
    let out = tpm.run(&nbde_unlock(), &["mode", "-d", s(image), "--json"], b"");
    serde_json::from_str(&ok(out)).unwrap()
}

fn kind_of(mode: &Value, slot: u32) -> Value {
    mode["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["slot"] == slot)
        .unwrap_or_else(|| panic!("no keyslot {slot} in {mode}"))["kind"]
        .clone()
}

#[test]
fn a_luks_volume_bound_to_tang_and_tpm2_opens_and_is_counted_as_managed() {
    let tpm = Swtpm::start();
    let (_keys, tang) = tang("P-521");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let both = json!({"t": 2, "pins": {"tang": [{"url": tang.url()}], "tpm2": {}}}).to_string();
    let bind = |pin: &str, config: &str| {
        let args = [
            "luks",
            "bind",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&pass),
            pin,
            config,
        ];
        ok(tpm.run("clevis", &args, b""));
    };
    bind("sss", &both);
    bind("tpm2", "{}");

    let list = ok(tpm.run(&nbde_unlock(), &["luks", "list", "-d", s(&image)], b""));
    let stock_list = ok(tpm.run("clevis", &["luks", "list", "-d", s(&image)], b""));
    assert_eq!(list, stock_list);
    assert!(
        list.contains("2: tpm2 '{\"hash\":\"sha256\",\"key\":\"ecc\"}'"),
        "{list}"
    );
    for slot in [1, 2] {
        let key = ok(tpm.run(
            &nbde_unlock(),
            &["luks", "pass", "-d", s(&image), "-s", &slot.to_string()],
            b"",
        ));
        assert!(key_opens(&image, Some(slot), key.as_bytes()), "slot {slot}");
    }

    // sss(tang, tpm2) t=2 is part of the managed path; a lone tpm2 is a local key.
    let mode = mode_of(&tpm, &image);
    assert_eq!(kind_of(&mode, 1), "network");
    assert_eq!(kind_of(&mode, 2), "local");
    assert_eq!(kind_of(&mode, 0), "user");
    assert_eq!(mode["mode"], "managed+user");
    let text = ok(tpm.run(&nbde_unlock(), &["mode", "-d", s(&image)], b""));
    assert!(
        text.contains("keyslot 2: local clevis binding (tpm2: opens without any server)"),
        "{text}"
    );
}
