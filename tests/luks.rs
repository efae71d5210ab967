//! LUKS2 bindings on image files: interchangeable with `clevis luks`, and safe when
//! anything fails (bad input, dead servers, a kill at any write).

use serde_json::json;
use testkit::*;

fn ours(args: &[&str]) -> std::process::Output {
    run(&nbde_unlock(), args, b"")
}

fn ours_ok(args: &[&str]) -> String {
    String::from_utf8(run_ok(&nbde_unlock(), args, b"")).unwrap()
}

fn clevis_luks(args: &[&str]) -> std::process::Output {
    let mut full = vec!["luks"];
    full.extend_from_slice(args);
    run("clevis", &full, b"")
}

#[test]
fn stock_clevis_bindings_read_the_same_with_nbde_unlock() {
    let (_keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let tang_cfg = json!({"url": tangd.url()}).to_string();
    let sss_cfg =
        json!({"t": 1, "pins": {"tang": [{"url": tangd.url()}, {"url": tangd.url()}]}}).to_string();
    for (pin, cfg) in [("tang", &tang_cfg), ("sss", &sss_cfg)] {
        let out = clevis_luks(&["bind", "-y", "-d", s(&image), "-k", s(&pass), pin, cfg]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stock_list = clevis_luks(&["list", "-d", s(&image)]).stdout;
    assert_eq!(ours_ok(&["list", "-d", s(&image)]).as_bytes(), stock_list);
    assert!(String::from_utf8_lossy(&stock_list).contains("2: sss '{\"t\":1,\"pins\":{\"tang\":["));
    for slot in ["1", "2"] {
        let stock = clevis_luks(&["pass", "-d", s(&image), "-s", slot]).stdout;
        assert!(!stock.is_empty());
        assert_eq!(
            ours_ok(&["pass", "-d", s(&image), "-s", slot]).as_bytes(),
            stock,
            "slot {slot}"
        );
        assert!(key_opens(&image, Some(slot.parse().unwrap()), &stock));
    }
}

#[test]
fn nbde_unlock_bindings_work_with_stock_clevis() {
    let (_keys, tangd) = tang("P-384");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let cfg = json!({"url": tangd.url()}).to_string();
    let out = ours(&["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stock_pass = clevis_luks(&["pass", "-d", s(&image), "-s", "1"]);
    assert!(
        stock_pass.status.success(),
        "{}",
        String::from_utf8_lossy(&stock_pass.stderr)
    );
    let key = stock_pass.stdout;
    assert_eq!(key.len(), 54, "base64url of 40 random bytes");
    assert!(key_opens(&image, Some(1), &key));
    // The key is never printed by bind.
    assert!(!String::from_utf8_lossy(&out.stderr).contains(std::str::from_utf8(&key).unwrap()));
    assert!(out.stdout.is_empty());
    assert_eq!(
        clevis_luks(&["list", "-d", s(&image)]).stdout,
        ours_ok(&["list", "-d", s(&image)]).as_bytes()
    );
    assert_eq!(
        ours_ok(&["list", "-d", s(&image)]),
        format!("1: tang '{cfg}'\n")
    );

    let header = luks_json(&image);
    assert_eq!(header["keyslots"]["1"]["kdf"]["type"], "pbkdf2");
    assert_eq!(header["keyslots"]["1"]["kdf"]["iterations"], 1000);
    assert_eq!(header["keyslots"]["1"]["priority"], 2, "priority prefer");
    assert_eq!(header["tokens"]["0"]["type"], "clevis");
    assert_eq!(header["tokens"]["0"]["keyslots"], json!(["1"]));
    // The passphrase slot is untouched.
    assert!(key_opens(&image, Some(0), PASSPHRASE.as_bytes()));

    // A chosen slot, and a key from standard input.
    let out = run(
        &nbde_unlock(),
        &[
            "bind",
            "-y",
            "-d",
            s(&image),
            "-s",
            "7",
            "-k",
            "-",
            "tang",
            &cfg,
        ],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key7 = clevis_luks(&["pass", "-d", s(&image), "-s", "7"]).stdout;
    assert!(key_opens(&image, Some(7), &key7));
    let out = ours(&[
        "bind",
        "-y",
        "-d",
        s(&image),
        "-s",
        "7",
        "-k",
        s(&pass),
        "tang",
        &cfg,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyslot 7 is in use"));
}

#[test]
fn sss_binding_opens_with_one_server_stopped() {
    let (_a_keys, a) = tang("P-521");
    let (_b_keys, mut b) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({"t": 1, "pins": {"tang": [{"url": a.url()}, {"url": b.url()}]}}).to_string();
    assert!(
        ours(&[
            "bind",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&passphrase_file(&image)),
            "sss",
            &cfg
        ])
        .status
        .success()
    );
    let before = ours_ok(&["pass", "-d", s(&image), "-s", "1"]);
    b.stop();
    assert_eq!(ours_ok(&["pass", "-d", s(&image), "-s", "1"]), before);
    assert_eq!(
        clevis_luks(&["pass", "-d", s(&image), "-s", "1"]).stdout,
        before.as_bytes()
    );
}

#[test]
fn report_and_regen_follow_a_rotation_and_unbind_cleans_up() {
    let (keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let cfg = json!({"url": tangd.url()}).to_string();
    assert!(
        ours(&[
            "bind",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&passphrase_file(&image)),
            "tang",
            &cfg
        ])
        .status
        .success()
    );
    let report = ours(&["report", "-d", s(&image), "-s", "1"]);
    assert_eq!(report.status.code(), Some(0));
    assert!(report.stdout.is_empty(), "nothing rotated, nothing said");

    run_ok(TANGD_ROTATE, &["-d", s(keys.path())], b"");
    let report = ours(&["report", "-q", "-d", s(&image), "-s", "1"]);
    assert_eq!(
        report.status.code(),
        Some(1),
        "rotated keys, as clevis reports them"
    );
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("not in the current advertisement and were probably rotated"),
        "{text}"
    );

    // regen needs no -y: the recorded thp fetches the rotated adv through the hidden key.
    let out = ours(&["regen", "-q", "-d", s(&image), "-s", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("trusted, as clevis regen does"));
    let slots = luks_json(&image)["keyslots"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(slots, ["0", "1"], "the binding keeps its keyslot");
    assert_eq!(luks_json(&image)["keyslots"]["1"]["priority"], 2);
    assert_eq!(luks_json(&image)["tokens"].as_object().unwrap().len(), 1);
    assert_eq!(
        ours(&["report", "-d", s(&image), "-s", "1"]).status.code(),
        Some(0)
    );
    let key = clevis_luks(&["pass", "-d", s(&image), "-s", "1"]).stdout;
    assert!(key_opens(&image, Some(1), &key));
    assert_eq!(
        ours_ok(&["list", "-d", s(&image)]),
        format!("1: tang '{cfg}'\n")
    );

    let out = ours(&["unbind", "-d", s(&image), "-s", "1", "-f"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = luks_json(&image);
    assert_eq!(header["keyslots"].as_object().unwrap().len(), 1);
    assert_eq!(header["tokens"], json!({}));
    assert!(ours_ok(&["list", "-d", s(&image)]).is_empty());

    // A keyslot no clevis binding holds (the user's passphrase) is never removed.
    let out = ours(&["unbind", "-d", s(&image), "-s", "0", "-f"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no clevis binding"));
    assert!(key_opens(&image, Some(0), PASSPHRASE.as_bytes()));
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let cfg = json!({"url": tangd.url()}).to_string();

    let plain = dir.path().join("plain.img");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    assert!(
        String::from_utf8_lossy(&ours(&["list", "-d", s(&plain)]).stderr)
            .contains("is not a LUKS device")
    );

    let image = luks_image(dir.path(), "root.img");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not it").unwrap();
    let out = ours(&["bind", "-y", "-d", s(&image), "-k", s(&wrong), "tang", &cfg]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(luks_json(&image)["keyslots"].as_object().unwrap().len(), 1);

    // A dead server: nothing is written.
    let before = luks_json(&image);
    let dead = json!({"url": "http://127.0.0.1:9"}).to_string();
    let out = ours(&[
        "bind",
        "-y",
        "-d",
        s(&image),
        "-k",
        s(&passphrase_file(&image)),
        "tang",
        &dead,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    assert_eq!(luks_json(&image), before);

    // Foreign tokens are left alone; malformed and slot-less clevis tokens are reported.
    let import = |token: serde_json::Value| {
        run_ok(
            "cryptsetup",
            &["token", "import", s(&image)],
            token.to_string().as_bytes(),
        );
    };
    // A systemd-tpm2 token that systemd's own token plugin accepts.
    import(
        json!({"type": "systemd-tpm2", "keyslots": ["0"], "tpm2-blob": "AAAA", "tpm2-pcrs": [7],
        "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc", "tpm2-policy-hash": "0".repeat(64), "tpm2-pin": false}),
    );
    import(json!({"type": "clevis", "keyslots": ["0"], "jwe": {"protected": "!!"}}));
    assert!(
        ours(&[
            "bind",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&passphrase_file(&image)),
            "tang",
            &cfg
        ])
        .status
        .success()
    );
    let list = ours_ok(&["list", "-d", s(&image)]);
    assert!(
        list.contains("0: unreadable binding (token 1: missing or mistyped member iv)"),
        "{list}"
    );
    assert!(list.contains(&format!("1: tang '{cfg}'")), "{list}");
    let out = ours(&["pass", "-d", s(&image), "-s", "0"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token 1: missing or mistyped member iv")
    );
    assert_eq!(luks_json(&image)["tokens"]["0"]["type"], "systemd-tpm2");
    assert!(
        ours(&["unbind", "-d", s(&image), "-s", "1", "-f"])
            .status
            .success()
    );
    assert_eq!(luks_json(&image)["tokens"]["0"]["type"], "systemd-tpm2");
    let out = ours(&["pass", "-d", s(&image), "-s", "5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyslot 5 of"));
}

#[test]
fn orphan_clevis_tokens_are_removed_by_the_next_bind() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let cfg = json!({"url": tangd.url()}).to_string();
    assert!(
        ours(&["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg])
            .status
            .success()
    );
    // The slot killed by hand leaves the token behind.
    run_ok(
        "cryptsetup",
        &["luksKillSlot", "--batch-mode", s(&image), "1"],
        b"",
    );
    // libcryptsetup unassigns the slot; the clevis token stays, bound to nothing.
    assert_eq!(luks_json(&image)["tokens"]["0"]["keyslots"], json!([]));
    assert!(
        ours(&["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg])
            .status
            .success()
    );
    let tokens = luks_json(&image)["tokens"].clone();
    assert_eq!(tokens.as_object().unwrap().len(), 1, "{tokens}");
}

/// Kills `nbde-unlock bind` with SIGKILL at its 1st, 2nd, … write-type system call (strace
/// fault injection) until a run completes. After every kill the volume still opens with its
/// passphrase, and a fresh bind then succeeds.
#[test]
fn a_kill_at_any_write_of_a_bind_leaves_the_volume_openable() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let pristine = luks_image(dir.path(), "pristine.img");
    let pass = passphrase_file(&pristine);
    let cfg = json!({"url": tangd.url()}).to_string();
    let image = dir.path().join("work.img");
    let calls = "write,pwrite64,pwritev,pwritev2,fsync,fdatasync,rename,unlink,ftruncate";
    for n in 1..400 {
        std::fs::copy(&pristine, &image).unwrap();
        let inject = format!("inject={calls}:signal=SIGKILL:when={n}");
        let out = run(
            "strace",
            &[
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                &format!("trace={calls}"),
                "-e",
                &inject,
                &nbde_unlock(),
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
        assert!(
            key_opens(&image, Some(0), PASSPHRASE.as_bytes()),
            "after a kill at write {n}"
        );
        if out.status.success() {
            let killed_runs = n - 1;
            eprintln!("bind completed after {killed_runs} killed runs");
            assert!(killed_runs > 3, "the bind did writes to kill");
            let key = ours_ok(&["pass", "-d", s(&image), "-s", "1"]);
            assert!(key_opens(&image, Some(1), key.as_bytes()));
            return;
        }
        // Whatever the kill left behind, binding again works.
        let again = ours(&["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg]);
        assert!(
            again.status.success(),
            "rebind after a kill at write {n}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let slot = ours_ok(&["list", "-d", s(&image)]);
        let slot: u32 = slot
            .lines()
            .last()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let key = ours_ok(&["pass", "-d", s(&image), "-s", &slot.to_string()]);
        assert!(
            key_opens(&image, Some(slot), key.as_bytes()),
            "after a kill at write {n}"
        );
    }
    panic!("bind never completed under fault injection");
}

/// A step that fails after the header was changed puts the header back from the backup,
/// which no run leaves on disk: the backup directory goes as soon as the backup is written.
#[test]
fn a_failure_mid_change_restores_the_header_and_leaves_no_backup() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let cfg = json!({"url": tangd.url()}).to_string();
    assert!(
        ours(&["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg])
            .status
            .success()
    );
    let before = luks_json(&image);
    let trace = dir.path().join("trace");
    // Token 0 is taken: the new keyslot is written first, then the token fails.
    let out = run(
        "strace",
        &[
            "-f",
            "-qq",
            "-e",
            "trace=mkdir,rmdir",
            "-o",
            s(&trace),
            &nbde_unlock(),
            "bind",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&pass),
            "-t",
            "0",
            "tang",
            &cfg,
        ],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token 0 is in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(luks_json(&image), before, "header restored");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let dirs = |call: &str| -> Vec<String> {
        trace
            .lines()
            .filter(|l| {
                l.contains(&format!("{call}(\""))
                    && l.contains("nbde-unlock-")
                    && l.ends_with("= 0")
            })
            .map(|l| l.split('"').nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(dirs("mkdir").len(), 1, "{trace}");
    assert_eq!(
        dirs("mkdir"),
        dirs("rmdir"),
        "the backup directory is gone: {trace}"
    );
}

/// No room left where the header's backup goes (a full /run): the change is refused before
/// anything is written, with the reason, and the volume is as it was.
#[test]
fn a_full_run_refuses_a_bind_before_it_writes() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let cfg = json!({"url": tangd.url()}).to_string();
    let before = luks_json(&image);
    // A tmpfs of its own on /run, filled, in a mount namespace that ends with the process.
    let fill_run = "mount -t tmpfs -o size=64k tmpfs /run && \
                    (head -c 1M /dev/zero > /run/filler) 2>/dev/null; exec \"$0\" \"$@\"";
    let out = run(
        "unshare",
        &[
            "--mount",
            "sh",
            "-c",
            fill_run,
            &nbde_unlock(),
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
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("No space left on device"), "{said}");
    assert_eq!(luks_json(&image), before, "the header changed");
    assert!(key_opens(&image, Some(0), &std::fs::read(&pass).unwrap()));
}
