//! LUKS1 volumes, whose bindings live in luksmeta as stock clevis keeps them: each side
//! reads, recovers, regenerates and removes the other's bindings; a binding that does not
//! fit is refused without a write; a kill at any write of a bind leaves the volume
//! openable.

use std::fs::File;
use std::path::Path;

use nbde_unlock::luks::luksmeta;
use serde_json::json;
use testkit::*;

const CLEVIS_UUID: &str = "cb6e8904-81ff-40da-a84a-07ab9ab5715e";

/// `luksmeta show -d IMAGE`, which must succeed.
fn luksmeta_show(image: &Path) -> String {
    ok(run("luksmeta", &["show", "-d", s(image)], b""))
}

fn luksmeta_initialized(image: &Path) -> bool {
    run("luksmeta", &["test", "-d", s(image)], b"")
        .status
        .success()
}

/// What `luksmeta show` prints: keyslot 0 holds the passphrase, `bound` hold clevis
/// bindings, the others are free.
fn expected_show(bound: &[u32]) -> String {
    (0..8)
        .map(|slot| {
            let active = slot == 0 || bound.contains(&slot);
            let status = if active { "active" } else { "inactive" };
            let uuid = if bound.contains(&slot) {
                CLEVIS_UUID
            } else {
                "empty"
            };
            format!("{slot} {status:>8} {uuid}\n")
        })
        .collect()
}

fn hole_bytes(image: &Path) -> Vec<u8> {
    let hole = luksmeta::hole_of(image).unwrap();
    luksmeta::read_hole(&File::open(image).unwrap(), &hole).unwrap()
}

#[test]
fn stock_luks1_bindings_work_with_nbde_unlock() {
    let (keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = luks1_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let tang_cfg = json!({ "url": tangd.url() }).to_string();
    let sss_cfg =
        json!({"t": 1, "pins": {"tang": [{"url": tangd.url()}, {"url": tangd.url()}]}}).to_string();
    for (pin, cfg) in [("tang", &tang_cfg), ("sss", &sss_cfg)] {
        ok(stock_clevis(&[
            "luks",
            "bind",
            "-f",
            "-y",
            "-d",
            s(&image),
            "-k",
            s(&pass),
            pin,
            cfg,
        ]));
    }
    let list = ok(stock_clevis(&["luks", "list", "-d", s(&image)]));
    assert_eq!(ok(ours_with(&["luks", "list", "-d", s(&image)], b"")), list);
    assert!(list.starts_with(&format!("1: tang '{tang_cfg}'\n2: sss '{{\"t\":1,")));
    assert_eq!(luksmeta_show(&image), expected_show(&[1, 2]));
    let report =
        |slot: &str| ours_with(&["luks", "report", "-q", "-d", s(&image), "-s", slot], b"");
    for slot in [1, 2] {
        let text = slot.to_string();
        let key = ok(ours_with(
            &["luks", "pass", "-d", s(&image), "-s", &text],
            b"",
        ));
        assert_eq!(key.as_bytes(), stock_pass(&image, slot));
        assert!(key_opens(&image, Some(slot), key.as_bytes()));
        ok(ours_with(
            &["luks", "unlock", "-d", s(&image), "-t", &text],
            b"",
        ));
        assert_eq!(report(&text).status.code(), Some(0));
    }

    run_ok(TANGD_ROTATE, &["-d", s(keys.path())], b"");
    for slot in [1, 2] {
        let text = slot.to_string();
        let old_key = stock_pass(&image, slot);
        assert_eq!(report(&text).status.code(), Some(1), "keyslot {slot}");
        ok(ours_with(
            &["luks", "regen", "-q", "-d", s(&image), "-s", &text],
            b"",
        ));
        assert_eq!(keyslots(&image), [0, 1, 2]);
        assert_eq!(report(&text).status.code(), Some(0), "keyslot {slot}");
        let key = stock_pass(&image, slot);
        assert_ne!(key, old_key);
        assert!(key_opens(&image, Some(slot), &key));
    }
    assert_eq!(ok(stock_clevis(&["luks", "list", "-d", s(&image)])), list);
    assert_eq!(luksmeta_show(&image), expected_show(&[1, 2]));

    ok(ours_with(
        &["luks", "unbind", "-f", "-d", s(&image), "-s", "1"],
        b"",
    ));
    assert_eq!(luksmeta_show(&image), expected_show(&[2]));
    assert!(luksmeta_show(&image).contains("1 inactive empty\n"));
    assert_eq!(keyslots(&image), [0, 2]);
    assert!(ok(stock_clevis(&["luks", "list", "-d", s(&image)])).starts_with("2: sss '"));
    assert!(key_opens(&image, Some(2), &stock_pass(&image, 2)));
}

#[test]
fn nbde_unlock_luks1_bindings_work_with_stock_clevis() {
    let (keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = luks1_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    // Pinned to the signing key: no question to answer, no -y.
    let cfg = json!({"url": tangd.url(), "thp": signing_thp(keys.path())}).to_string();
    let pristine = hole_bytes(&image);
    assert!(!luksmeta_initialized(&image));

    let out = ours_with(
        &[
            "luks",
            "bind",
            "-f",
            "-t",
            "3",
            "-d",
            s(&image),
            "-k",
            s(&pass),
            "tang",
            &cfg,
        ],
        b"",
    );
    fails_with(&out, 1, "is a LUKS1 device; -t is only supported in LUKS2");
    // As clevis: `-k -` does not create the luksmeta header without -f or -y.
    let line = format!("{PASSPHRASE}\n");
    let out = ours_with(
        &["luks", "bind", "-d", s(&image), "-k", "-", "tang", &cfg],
        line.as_bytes(),
    );
    fails_with(&out, 2, "Cannot use '-k-' without '-f' or '-y'");
    assert_eq!(hole_bytes(&image), pristine);
    assert_eq!(keyslots(&image), [0]);

    ok(ours_with(
        &[
            "luks",
            "bind",
            "-f",
            "-d",
            s(&image),
            "-k",
            s(&pass),
            "tang",
            &cfg,
        ],
        b"",
    ));
    let show = luksmeta_show(&image);
    assert!(
        show.contains(&format!("1   active {CLEVIS_UUID}\n")),
        "{show}"
    );
    assert_eq!(show, expected_show(&[1]));
    let listed = format!("1: tang '{}'\n", json!({ "url": tangd.url() }));
    assert_eq!(ok(stock_clevis(&["luks", "list", "-d", s(&image)])), listed);
    assert_eq!(
        ok(ours_with(&["luks", "list", "-d", s(&image)], b"")),
        listed
    );
    let key = stock_pass(&image, 1);
    assert_eq!(key.len(), 54);
    assert!(key_opens(&image, Some(1), &key));

    ok(stock_clevis(&[
        "luks",
        "unbind",
        "-f",
        "-d",
        s(&image),
        "-s",
        "1",
    ]));
    assert_eq!(keyslots(&image), [0]);
    assert_eq!(luksmeta_show(&image), expected_show(&[]));
    assert_eq!(ok(ours_with(&["luks", "list", "-d", s(&image)], b"")), "");
}

#[test]
fn a_binding_too_large_for_the_luksmeta_area_is_refused_before_any_write() {
    let (keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = luks1_image(dir.path(), "root.img");
    let pass = passphrase_file(&image);
    let cfg = json!({ "url": tangd.url() }).to_string();
    let bind = || {
        ours_with(
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
        )
    };
    ok(bind());
    // An advertisement of some 100 keys: its binding is larger than the whole area.
    for _ in 0..50 {
        run_ok(TANGD_KEYGEN, &[s(keys.path())], b"");
    }
    // The LUKS1 header, keyslots and luksmeta area: everything before the payload.
    let metadata = |image: &Path| std::fs::read(image).unwrap()[..2 << 20].to_vec();
    let before = (hole_bytes(&image), metadata(&image));
    fails_with(&bind(), 1, "does not fit in the LUKS1 metadata area");
    assert_eq!(
        hole_bytes(&image),
        before.0,
        "the luksmeta area is untouched"
    );
    assert!(
        metadata(&image) == before.1,
        "the LUKS1 header is untouched"
    );
    assert_eq!(keyslots(&image), [0, 1]);
    assert_eq!(luksmeta_show(&image), expected_show(&[1]));
    assert!(key_opens(&image, Some(1), &stock_pass(&image, 1)));
}

/// Kills a LUKS1 `luks bind` (which creates the luksmeta header) at each write-type system
/// call. After every kill the passphrase opens keyslot 0, the luksmeta header is valid or
/// absent, and a fresh bind succeeds. Every kill point is tried before failing.
#[test]
fn a_kill_at_any_write_of_a_luks1_bind_leaves_the_volume_openable() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let pristine = luks1_image(dir.path(), "pristine.img");
    let pass = passphrase_file(&pristine);
    let cfg = json!({ "url": tangd.url() }).to_string();
    let image = dir.path().join("work.img");
    let bind_args = [
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-k",
        s(&pass),
        "tang",
        &cfg,
    ];
    let mut failures = Vec::new();
    let killed_runs = kill_at_every_write(
        &nbde_unlock(),
        &bind_args,
        b"",
        || {
            std::fs::copy(&pristine, &image).unwrap();
        },
        |at, _killed| {
            assert!(
                key_opens(&image, Some(0), PASSPHRASE.as_bytes()),
                "passphrase, after a kill at {at}"
            );
            if !luksmeta_initialized(&image) && hole_bytes(&image).starts_with(b"LUKSMETA") {
                failures.push(format!("{at}: a luksmeta header `luksmeta test` refuses"));
            }
            let out = ours_with(&bind_args, b"");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let slot = stderr
                .lines()
                .find_map(|l| l.strip_prefix("bound keyslot ")?.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok());
            match slot {
                Some(slot) if out.status.success() => {
                    let key = stock_pass(&image, slot);
                    if !key_opens(&image, Some(slot), &key) || !luksmeta_initialized(&image) {
                        failures.push(format!("{at}: the bind after it does not open"));
                    }
                }
                _ => failures.push(format!("{at}: the bind after it failed: {stderr}")),
            }
        },
    );
    eprintln!("LUKS1 bind: {killed_runs} killed runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(killed_runs > 5, "the bind did writes to kill");
}
