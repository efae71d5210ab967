//! `nbde-unlock` in place of stock clevis 19 on LUKS2 volumes: the same command lines,
//! answers and exit codes, with stock clevis, tangd and cryptsetup on the other side.

use std::path::Path;
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use testkit::*;

/// Binds `slot` (first free if `None`) with our bind and the passphrase file.
fn bind(image: &Path, slot: Option<u32>, pin: &str, cfg: &str) {
    let pass = passphrase_file(image);
    let mut args = vec!["luks", "bind", "-y", "-d", s(image), "-k", s(&pass)];
    let slot = slot.map(|n| n.to_string());
    if let Some(slot) = &slot {
        args.extend(["-s", slot]);
    }
    args.extend([pin, cfg]);
    ok(ours_with(&args, b""));
}

/// `nbde-unlock luks bind -y -d IMAGE EXTRA… tang CFG` with `stdin`.
fn bind_cmd(image: &Path, extra: &[&str], cfg: &str, stdin: &[u8]) -> Output {
    let mut args = vec!["luks", "bind", "-y", "-d", s(image)];
    args.extend_from_slice(extra);
    args.extend(["tang", cfg]);
    ours_with(&args, stdin)
}

#[test]
fn scheme_less_tang_urls_work_both_ways() {
    let (_keys, tangd) = tang("P-256");
    let bare = format!("127.0.0.1:{}", tangd.port);
    let cfg = json!({ "url": bare }).to_string();

    let jwe = clevis_encrypt("tang", &cfg, b"stock to ours");
    assert_eq!(ok(ours_decrypt(&jwe)), "stock to ours");
    let jwe = ours_encrypt("tang", &cfg, b"ours to stock");
    assert_eq!(ok(clevis_decrypt(&jwe)), "ours to stock");

    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    ok(stock_clevis(&[
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-k",
        s(&pass),
        "tang",
        &cfg,
    ]));
    // The url is kept as given, as stock clevis keeps it.
    let list = ok(ours_with(&["luks", "list", "-d", s(&image)], b""));
    assert_eq!(list, format!("1: tang '{cfg}'\n"));
    let key = ok(ours_with(
        &["luks", "pass", "-d", s(&image), "-s", "1"],
        b"",
    ));
    assert!(key_opens(&image, Some(1), key.as_bytes()));
    assert_eq!(key.as_bytes(), stock_pass(&image, 1));

    let before = luks_json(&image);
    for (url, why) in [
        (format!("ftp://{bare}"), "is not http(s)"),
        (format!("127.0.0.1 :{}", tangd.port), "is not a URL"),
    ] {
        let cfg = json!({ "url": url }).to_string();
        let out = ours_with(&["encrypt", "tang", &cfg, "-y"], b"secret");
        fails_with(&out, 1, &format!("tang: url {url:?} {why}"));
        assert!(out.stdout.is_empty());
        let out = ours_with(
            &[
                "luks",
                "bind",
                "-y",
                "-d",
                s(&image),
                "-k",
                s(&pass),
                "tang",
                &cfg,
            ],
            b"",
        );
        fails_with(&out, 1, why);
    }
    assert_eq!(luks_json(&image), before);
}

#[test]
fn unbind_refuses_passphrase_slots_and_the_last_keyslot() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({ "url": tangd.url() }).to_string();
    bind(&image, None, "tang", &cfg);

    let out = ours_with(&["luks", "unbind", "-f", "-d", s(&image), "-s", "0"], b"");
    fails_with(
        &out,
        1,
        &format!("keyslot 0 of {} has no clevis binding", image.display()),
    );
    assert_eq!(keyslots(&image), [0, 1]);
    assert!(key_opens(&image, Some(0), PASSPHRASE.as_bytes()));

    run_ok(
        "cryptsetup",
        &[
            "luksRemoveKey",
            "--batch-mode",
            s(&image),
            s(&passphrase_file(&image)),
        ],
        b"",
    );
    assert_eq!(keyslots(&image), [1]);
    let out = ours_with(&["luks", "unbind", "-f", "-d", s(&image), "-s", "1"], b"");
    fails_with(&out, 1, "keyslot 1 is the last one that opens");
    assert_eq!(keyslots(&image), [1]);
    let key = ok(ours_with(
        &["luks", "pass", "-d", s(&image), "-s", "1"],
        b"",
    ));
    assert!(key_opens(&image, Some(1), key.as_bytes()));
    assert_eq!(
        ok(stock_clevis(&["luks", "list", "-d", s(&image)])),
        format!("1: tang '{cfg}'\n")
    );
}

#[test]
fn bind_reads_the_existing_passphrase_as_clevis_does() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({ "url": tangd.url() }).to_string();
    let bind_with = |extra: &[&str], stdin: &[u8]| bind_cmd(&image, extra, &cfg, stdin);

    // No terminal, no -k: one line of standard input; a wrong one changes nothing.
    let before = luks_json(&image);
    fails_with(&bind_with(&[], b"not it\n"), 1, "wrong key");
    fails_with(&bind_with(&["-k", "-"], b"not it\n"), 1, "wrong key");
    assert_eq!(luks_json(&image), before, "no keyslot, no token");

    let line = format!("{PASSPHRASE}\n");
    ok(bind_with(&[], line.as_bytes()));
    assert_eq!(keyslots(&image), [0, 1]);
    assert!(key_opens(&image, Some(1), &stock_pass(&image, 1)));

    ok(bind_with(&["-k", "-"], line.as_bytes()));
    ok(bind_with(&["-k-"], line.as_bytes()));
    // With a binding present a wrong passphrase is made up for by recovering it, as
    // clevis does.
    ok(bind_with(&["-k-"], b"not it\n"));
    assert_eq!(keyslots(&image), [0, 1, 2, 3, 4]);
    for slot in [2, 3, 4] {
        assert!(key_opens(&image, Some(slot), &stock_pass(&image, slot)));
    }

    // -e: the passphrase of a luks2-keyring token, from the kernel keyring.
    let description = format!("nbde-dropin-{}", std::process::id());
    run_ok(
        "cryptsetup",
        &[
            "token",
            "add",
            "--key-description",
            &description,
            "--token-id",
            "5",
            s(&image),
        ],
        b"",
    );
    let before = luks_json(&image);
    // Outside a session that holds the key, there is nothing to read.
    fails_with(
        &bind_with(&["-e", "5"], b""),
        1,
        &format!("no key {description:?} in the kernel keyring"),
    );
    assert_eq!(luks_json(&image), before);
    let mut in_session = vec![
        "session",
        "-",
        "sh",
        "-c",
        r#"keyctl add user "$1" "$2" @s >/dev/null && shift 2 && exec "$@""#,
        "sh",
        &description,
        PASSPHRASE,
    ];
    let program = nbde_unlock();
    in_session.extend([
        &program,
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-e",
        "5",
        "tang",
    ]);
    in_session.push(&cfg);
    ok(run("keyctl", &in_session, b""));
    assert_eq!(keyslots(&image), [0, 1, 2, 3, 4, 5]);
    assert!(key_opens(&image, Some(5), &stock_pass(&image, 5)));
    assert_eq!(luks_json(&image)["tokens"]["5"]["type"], "luks2-keyring");

    let pass = passphrase_file(&image);
    let before = luks_json(&image);
    fails_with(
        &bind_with(&["-e", "5", "-k", s(&pass)], b""),
        1,
        "cannot be used together",
    );
    assert_eq!(luks_json(&image), before);
}

#[test]
fn installed_as_clevis_it_takes_clevis_command_lines() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let clevis = dir.path().join("clevis");
    std::os::unix::fs::symlink(nbde_unlock(), &clevis).unwrap();
    let clevis = s(&clevis);
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({"t": 1, "pins": {"tang": [{"url": tangd.url()}]}}).to_string();
    ok(stock_clevis(&[
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-k",
        s(&passphrase_file(&image)),
        "sss",
        &cfg,
    ]));

    let list = ok(run(clevis, &["luks", "list", "-d", s(&image)], b""));
    assert_eq!(list, ok(stock_clevis(&["luks", "list", "-d", s(&image)])));
    assert!(list.starts_with("1: sss '{\"t\":1,\"pins\":{\"tang\":[{\"url\":"));
    let key = ok(run(
        clevis,
        &["luks", "pass", "-d", s(&image), "-s", "1"],
        b"",
    ));
    assert_eq!(key.as_bytes(), stock_pass(&image, 1));

    let jwe = ok(run(clevis, &["encrypt", "null", "{}"], b"through the link"));
    assert_eq!(
        ok(run(clevis, &["decrypt"], jwe.as_bytes())),
        "through the link"
    );
    assert_eq!(ok(clevis_decrypt(&jwe)), "through the link");

    let help = ok(run(clevis, &["luks", "--help"], b""));
    assert!(help.starts_with("Usage: clevis luks "), "{help}");
    // A usage error exits 2, as stock clevis's does.
    let out = run(clevis, &["luks", "bind", "-d", s(&image)], b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stock_clevis(&["luks", "bind", "-d", s(&image)])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn null_pin_and_sss_over_it_match_stock_clevis() {
    type Encrypt = fn(&str, &str, &[u8]) -> String;
    type Decrypt = fn(&str) -> Output;
    let encrypters: [(&str, Encrypt); 2] = [("ours", ours_encrypt), ("stock", clevis_encrypt)];
    let decrypters: [(&str, Decrypt); 2] = [("ours", ours_decrypt), ("stock", clevis_decrypt)];
    let sss = |t: u32| json!({"t": t, "pins": {"null": [{}, {"fail": true}]}}).to_string();
    let cases = [
        ("null", "{}".to_owned(), true),
        ("null", r#"{"fail":true}"#.to_owned(), false),
        ("sss", sss(1), true),
        ("sss", sss(2), false),
    ];
    for (pin, cfg, opens) in &cases {
        for (by, encrypt) in encrypters {
            let jwe = encrypt(pin, cfg, b"null secret");
            for (with, decrypt) in decrypters {
                let out = decrypt(&jwe);
                let case = format!("{pin} {cfg}: encrypted by {by}, decrypted by {with}");
                assert_eq!(out.status.success(), *opens, "{case}");
                let expected: &[u8] = if *opens { b"null secret" } else { b"" };
                assert_eq!(out.stdout, expected, "{case}");
            }
        }
    }
}

#[test]
fn report_regen_keeps_the_keyslot() {
    let (keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({ "url": tangd.url() }).to_string();
    ok(stock_clevis(&[
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-s",
        "3",
        "-k",
        s(&passphrase_file(&image)),
        "tang",
        &cfg,
    ]));
    let old_key = stock_pass(&image, 3);
    let report = |extra: &[&str]| {
        let mut args = vec!["luks", "report", "-q", "-d", s(&image), "-s", "3"];
        args.extend_from_slice(extra);
        ours_with(&args, b"")
    };
    assert_eq!(report(&[]).status.code(), Some(0));

    run_ok(TANGD_ROTATE, &["-d", s(keys.path())], b"");
    let mut rotated: Vec<String> = std::fs::read_dir(keys.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| Some(n.strip_prefix('.')?.strip_suffix(".jwk")?.to_owned()))
        .collect();
    rotated.sort();
    assert_eq!(rotated.len(), 2);
    let out = report(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut listed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, rotated, "{text}");

    ok(report(&["-r"]));
    assert_eq!(report(&[]).status.code(), Some(0));
    assert_eq!(
        ok(stock_clevis(&["luks", "list", "-d", s(&image)])),
        format!("3: tang '{cfg}'\n")
    );
    assert_eq!(keyslots(&image), [0, 3]);
    let tokens = luks_json(&image)["tokens"].clone();
    let tokens: Vec<_> = tokens.as_object().unwrap().values().collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["keyslots"], json!(["3"]));
    let key = stock_pass(&image, 3);
    assert!(key_opens(&image, Some(3), &key));
    assert_ne!(key, old_key);
    assert!(!key_opens(&image, None, &old_key), "the old key is gone");
}

#[test]
fn regen_falls_back_to_the_passphrase() {
    let (keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({ "url": tangd.url() }).to_string();
    bind(&image, None, "tang", &cfg);
    run_ok(TANGD_ROTATE, &["-d", s(keys.path())], b"");
    for entry in std::fs::read_dir(keys.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            std::fs::remove_file(path).unwrap();
        }
    }
    let pass = ours_with(&["luks", "pass", "-d", s(&image), "-s", "1"], b"");
    assert_eq!(
        pass.status.code(),
        Some(1),
        "the old binding cannot recover"
    );

    let regen =
        |stdin: &[u8]| ours_with(&["luks", "regen", "-q", "-d", s(&image), "-s", "1"], stdin);
    let before = luks_json(&image);
    fails_with(&regen(b"not it\n"), 1, "wrong key");
    assert_eq!(luks_json(&image), before);

    let out = regen(format!("{PASSPHRASE}\n").as_bytes());
    ok(out);
    assert_eq!(keyslots(&image), [0, 1]);
    assert_eq!(
        ok(stock_clevis(&["luks", "list", "-d", s(&image)])),
        format!("1: tang '{cfg}'\n")
    );
    assert!(key_opens(&image, Some(1), &stock_pass(&image, 1)));
}

/// Kills `luks regen` at each write-type system call. After every kill the passphrase
/// opens keyslot 0, a binding that stock clevis reads still opens its keyslot, and a regen
/// (of that binding's keyslot) then succeeds. Every kill point is tried before failing; the
/// write calls are shared among lanes, each on its own copy of the image.
#[test]
fn a_kill_at_any_write_of_a_regen_keeps_a_working_binding() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let pristine = luks_image(dir.path(), "pristine.img");
    bind(
        &pristine,
        None,
        "tang",
        &json!({ "url": tangd.url() }).to_string(),
    );
    let image = |lane: usize| dir.path().join(format!("work-{lane}.img"));
    let orphan_keyslots = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let killed_runs = kill_at_every_write_in_lanes(
        &nbde_unlock(),
        |lane| {
            ["luks", "regen", "-q", "-d", s(&image(lane)), "-s", "1"]
                .map(String::from)
                .to_vec()
        },
        b"",
        |lane| {
            std::fs::copy(&pristine, image(lane)).unwrap();
        },
        |lane, at, _killed| {
            let image = image(lane);
            assert!(
                key_opens(&image, Some(0), PASSPHRASE.as_bytes()),
                "passphrase, after a kill at {at}"
            );
            let working = working_bindings(&image);
            // A keyslot besides the passphrase's that no clevis token names: its key is lost.
            let header = luks_json(&image);
            let named: Vec<&str> = header["tokens"]
                .as_object()
                .unwrap()
                .values()
                .filter(|t| t["type"] == "clevis")
                .flat_map(|t| t["keyslots"].as_array().unwrap())
                .filter_map(|k| k.as_str())
                .collect();
            if keyslots(&image)
                .iter()
                .any(|k| *k != 0 && !named.contains(&k.to_string().as_str()))
            {
                orphan_keyslots.fetch_add(1, Ordering::Relaxed);
            }
            let slot = match working.first() {
                _ if working.contains(&1) => 1,
                Some(&slot) => slot,
                None => {
                    let list = ok(stock_clevis(&["luks", "list", "-d", s(&image)]));
                    let ours = ok(ours_with(&["luks", "list", "-d", s(&image)], b""));
                    failures.lock().unwrap().push(format!(
                        "{at}: no binding stock clevis reads opens its keyslot \
                         (keyslots {:?}; stock list {list:?}; ours {ours:?})",
                        keyslots(&image)
                    ));
                    1
                }
            };
            let out = ours_with(
                &[
                    "luks",
                    "regen",
                    "-q",
                    "-d",
                    s(&image),
                    "-s",
                    &slot.to_string(),
                ],
                b"",
            );
            let key = ours_with(
                &["luks", "pass", "-d", s(&image), "-s", &slot.to_string()],
                b"",
            );
            if !out.status.success() || !key_opens(&image, Some(slot), &key.stdout) {
                failures.lock().unwrap().push(format!(
                    "{at}: regen of keyslot {slot} then: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        },
    );
    eprintln!(
        "regen: {killed_runs} killed runs; {} left a keyslot that no clevis token names",
        orphan_keyslots.into_inner()
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(killed_runs > 5, "the regen did writes to kill");
}

#[test]
fn edit_changes_the_config_and_keeps_the_keyslot() {
    let (_a_keys, mut a) = tang("P-256");
    let (_b_keys, b) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let a_cfg = json!({ "url": a.url() }).to_string();
    let b_cfg = json!({ "url": b.url() }).to_string();
    bind(&image, None, "tang", &a_cfg);
    let edit = |slot: &str, cfg: &str| {
        ours_with(
            &["luks", "edit", "-d", s(&image), "-s", slot, "-c", cfg],
            b"",
        )
    };

    let before = luks_json(&image);
    fails_with(&edit("1", &a_cfg), 1, "no changes");
    fails_with(
        &edit("1", r#"{"url":"#),
        1,
        "invalid configuration given with -c",
    );
    assert_eq!(luks_json(&image), before);

    ok(edit("1", &b_cfg));
    assert_eq!(
        ok(stock_clevis(&["luks", "list", "-d", s(&image)])),
        format!("1: tang '{b_cfg}'\n")
    );
    assert_eq!(keyslots(&image), [0, 1]);
    // The binding is the new server's: it opens with the old one gone.
    a.stop();
    assert!(key_opens(&image, Some(1), &stock_pass(&image, 1)));

    let sss = |t: u32| json!({"t": t, "pins": {"tang": [{"url": b.url()}, {"url": b.url()}]}});
    bind(&image, Some(2), "sss", &sss(1).to_string());
    let before = luks_json(&image);
    fails_with(&edit("2", &sss(3).to_string()), 1, "invalid threshold");
    assert_eq!(luks_json(&image), before);
    assert!(key_opens(&image, Some(2), &stock_pass(&image, 2)));
}
