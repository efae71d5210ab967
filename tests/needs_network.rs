//! `nbde-unlock needs-network`: the answer image generators build on (dracut's
//! rd.neednet), by exit code only — 0 yes, 1 no, 2 no answer.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;
use testkit::*;

fn needs_network(images: &[&Path]) -> Output {
    let mut args = vec!["needs-network"];
    for image in images {
        args.extend(["-d", s(image)]);
    }
    run(&nbde_unlock(), &args, b"")
}

/// The exit code of `needs-network -d IMAGE…`, which never prints on standard output.
fn answer(images: &[&Path]) -> i32 {
    let out = needs_network(images);
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    out.status.code().unwrap()
}

fn bind(image: &Path, pin: &str, config: serde_json::Value) {
    let pass = passphrase_file(image);
    let out = run(
        &nbde_unlock(),
        &[
            "bind",
            "-y",
            "-f",
            "-d",
            s(image),
            "-k",
            s(&pass),
            pin,
            &config.to_string(),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(dir: &Path, name: &str) -> PathBuf {
    luks_image(dir, name)
}

#[test]
fn answers_by_exit_code_whether_a_binding_needs_the_network() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let d = dir.path();

    let tang = image(d, "tang.img");
    bind(&tang, "tang", json!({"url": tangd.url()}));
    let null = image(d, "null.img");
    bind(&null, "null", json!({}));
    let sss = image(d, "sss.img");
    bind(
        &sss,
        "sss",
        json!({"t": 1, "pins": {"null": {}, "tang": {"url": tangd.url()}}}),
    );
    let nested = image(d, "nested.img");
    bind(
        &nested,
        "sss",
        json!({"t": 1, "pins": {"null": [{}], "sss": {"t": 1, "pins": {"tang": [{"url": tangd.url()}]}}}}),
    );
    let unbound = image(d, "unbound.img");
    let luks1 = luks1_image(d, "luks1.img");
    bind(&luks1, "tang", json!({"url": tangd.url()}));

    assert_eq!(answer(&[&tang]), 0, "tang");
    assert_eq!(answer(&[&null]), 1, "null only");
    assert_eq!(answer(&[&sss]), 0, "sss(null, tang)");
    assert_eq!(answer(&[&nested]), 0, "sss(null, sss(tang))");
    assert_eq!(answer(&[&unbound]), 1, "no binding");
    assert_eq!(answer(&[&luks1]), 0, "LUKS1 luksmeta tang");
    assert_eq!(answer(&[&null, &unbound]), 1, "none of several");
    assert_eq!(answer(&[&null, &tang]), 0, "one of several");

    // A tang token whose keyslot was killed by hand recovers nothing: not a reason.
    run_ok(
        "cryptsetup",
        &["luksKillSlot", "--batch-mode", s(&tang), "1"],
        b"",
    );
    assert_eq!(answer(&[&tang]), 1, "tang token of a killed keyslot");
}

#[test]
fn no_answer_exits_2() {
    let dir = tempdir();
    let not_luks = dir.path().join("zeros.img");
    std::fs::write(&not_luks, vec![0u8; 1 << 20]).unwrap();
    let unbound = image(dir.path(), "unbound.img");

    assert_eq!(answer(&[]), 2, "no device");
    fails_with(&needs_network(&[]), 2, "-d");
    assert_eq!(answer(&[&not_luks]), 2, "not LUKS");
    assert_eq!(
        answer(&[&unbound, &dir.path().join("missing")]),
        2,
        "missing"
    );
    fails_with(&needs_network(&[&not_luks]), 2, "not a LUKS device");
}

/// The dracut module, sourced with dracut's helpers stubbed: in hostonly mode it writes
/// rd.neednet=1 exactly when a host LUKS device has a binding that needs the network.
#[test]
fn dracut_module_sets_rd_neednet_from_the_answer() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let tang = image(dir.path(), "tang.img");
    bind(
        &tang,
        "sss",
        json!({"t": 1, "pins": {"null": {}, "tang": {"url": tangd.url()}}}),
    );
    let null = image(dir.path(), "null.img");
    bind(&null, "null", json!({}));
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("dracut/90nbde-unlock/module-setup.sh");
    let bin_dir = Path::new(&nbde_unlock()).parent().unwrap().to_owned();

    let neednet = |devices: &[&Path]| -> Option<String> {
        let initdir = tempfile::tempdir().unwrap();
        let mut script = String::from(
            "set -e\n\
             inst_binary() { :; }; inst_libdir_file() { :; }; inst_simple() { :; }\n\
             inst_dir() { :; }; inst_multiple() { :; }; SYSTEMCTL=true\n\
             hostonly=yes; declare -A host_fs_types\n",
        );
        for device in devices {
            script.push_str(&format!("host_fs_types[{}]=crypto_LUKS\n", s(device)));
        }
        script.push_str(&format!(
            "host_fs_types[/dev/not-luks]=ext4\ninitdir={}\n. {}\ninstall\n",
            s(initdir.path()),
            s(&module)
        ));
        let path = format!("{}:{}", s(&bin_dir), std::env::var("PATH").unwrap());
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(initdir.path().join("etc/cmdline.d/90nbde-unlock.conf")).ok()
    };
    assert_eq!(neednet(&[&null, &tang]).as_deref(), Some("rd.neednet=1\n"));
    assert_eq!(neednet(&[&null]), None);
    assert_eq!(neednet(&[]), None);
}
