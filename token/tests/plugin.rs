//! The token plugin inside real libcryptsetup: `cryptsetup` run in a private mount
//! namespace where libcryptsetup's token directory holds the systemd plugins and ours
//! (cryptsetup 2.6 has no option to point it elsewhere), on LUKS2 image files bound by
//! stock clevis and by nbde-unlock, against stock tangd and nbde-server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::{NbdeServer, bin, luks_image, ok, ours_with, passphrase_file, run, s, tang, tempdir};

const TOKEN_DIR: &str = "/usr/lib/x86_64-linux-gnu/cryptsetup";

/// A token directory like the system's, plus `libcryptsetup-token-clevis.so`.
fn plugin_dir(root: &Path) -> PathBuf {
    let dir = root.join("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(TOKEN_DIR).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::copy(plugin(), dir.join("libcryptsetup-token-clevis.so")).unwrap();
    dir
}

/// The plugin cargo built for these tests: beside the test executable (`deps/`, where
/// `cargo test` leaves the library's cdylib), else where `cargo build` puts it.
fn plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let beside = exe.with_file_name("libcryptsetup_token_clevis.so");
    if beside.exists() {
        return beside;
    }
    PathBuf::from(bin("libcryptsetup_token_clevis.so"))
}

/// `program args…` with the plugin installed (in its own mount namespace), timed.
fn with_plugin(
    tokens: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$1" && shift && exec "$@""#)
        .arg(tokens)
        .arg(TOKEN_DIR)
        .arg(program)
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let started = Instant::now();
    let out = command.output().unwrap();
    (out, started.elapsed())
}

fn token_open(tokens: &Path, image: &Path, env: &[(&str, &str)]) -> (Output, Duration) {
    with_plugin(
        tokens,
        "cryptsetup",
        &["open", "--test-passphrase", "--token-only", s(image)],
        env,
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stock_bind(tokens: &Path, image: &Path, pin: &str, config: &str) {
    let (out, _) = with_plugin(
        tokens,
        "clevis",
        &[
            "luks",
            "bind",
            "-y",
            "-d",
            s(image),
            "-k",
            s(&passphrase_file(image)),
            pin,
            config,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "stock clevis luks bind: {}",
        text(&out)
    );
}

fn ours_bind(image: &Path, pin: &str, config: &str) {
    ok(ours_with(
        &[
            "bind",
            "-y",
            "-d",
            s(image),
            "-k",
            s(&passphrase_file(image)),
            pin,
            config,
        ],
        b"",
    ));
}

#[test]
fn cryptsetup_opens_a_stock_clevis_token_through_stock_tangd() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let (_keys, tangd) = tang("P-521");
    let image = luks_image(dir.path(), "disk.img");
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": tangd.url()}).to_string(),
    );

    let (out, _) = token_open(&tokens, &image, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The same command without the plugin has no handler for the token: what it replaces.
    let without = run(
        "cryptsetup",
        &["open", "--test-passphrase", "--token-only", s(&image)],
        b"",
    );
    assert!(!without.status.success(), "opened without the plugin");
}

#[test]
fn cryptsetup_opens_through_nbde_server_and_the_server_records_it() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let server = NbdeServer::start(&[]);
    let (url, _) = server.add_device("acme", "db1", None);
    let image = luks_image(dir.path(), "disk.img");
    ours_bind(&image, "tang", &json!({ "url": url }).to_string());

    let (out, _) = token_open(&tokens, &image, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let history = server.history(Some("acme/db1"));
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["decision"], "allowed", "{history:?}");
}

#[test]
fn sss_over_two_servers_opens_with_one_of_them_down() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let (_keys_a, alive) = tang("P-256");
    let (_keys_b, mut doomed) = tang("P-384");
    let image = luks_image(dir.path(), "disk.img");
    let config = json!({"t": 1, "pins": {"tang": [{"url": alive.url()}, {"url": doomed.url()}]}});
    stock_bind(&tokens, &image, "sss", &config.to_string());
    doomed.stop();

    let (out, _) = token_open(&tokens, &image, &[("NBDE_TOKEN_TIMEOUT", "5")]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_dead_server_gives_up_within_the_deadline_with_a_clear_message() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let (_keys_a, mut first) = tang("P-521");
    let (_keys_b, mut second) = tang("P-521");
    let image = luks_image(dir.path(), "disk.img");
    // Two tokens, two dead servers: the deadline is shared, not paid per token.
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": first.url()}).to_string(),
    );
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": second.url()}).to_string(),
    );
    let origin = first.url();
    first.stop();
    second.stop();

    let (out, took) = token_open(&tokens, &image, &[("NBDE_TOKEN_TIMEOUT", "3")]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(took < Duration::from_secs(6), "took {took:?}: {said}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up early, {took:?}: {said}"
    );
    assert!(said.contains("gave up after"), "{said}");
    assert!(
        said.contains(&format!("server unreachable: {origin}")),
        "{said}"
    );
}

#[test]
fn a_live_token_answers_while_an_earlier_one_waits_on_a_dead_server() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let (_keys_a, mut dead) = tang("P-521");
    let (_keys_b, alive) = tang("P-521");
    let image = luks_image(dir.path(), "disk.img");
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": dead.url()}).to_string(),
    );
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": alive.url()}).to_string(),
    );
    dead.stop();

    let (out, took) = token_open(&tokens, &image, &[("NBDE_TOKEN_TIMEOUT", "20")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took < Duration::from_secs(10),
        "waited for the dead one: {took:?}"
    );
}

#[test]
fn a_refusing_server_ends_the_attempt_at_once() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let server = NbdeServer::start(&[]);
    let (url, _) = server.add_device("acme", "db1", None);
    let image = luks_image(dir.path(), "disk.img");
    ours_bind(&image, "tang", &json!({ "url": url }).to_string());
    server.admin_ok(&["device", "disable", "acme/db1"]);

    let (out, took) = token_open(&tokens, &image, &[("NBDE_TOKEN_TIMEOUT", "20")]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("refused by policy"), "{said}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_sovereign_volume_asks_no_server() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let server = NbdeServer::start(&[]);
    let (url, _) = server.add_device("acme", "db1", None);
    let image = luks_image(dir.path(), "disk.img");
    ours_bind(&image, "tang", &json!({ "url": url }).to_string());
    let marker = dir.path().join("marker.json");
    std::fs::write(
        &marker,
        json!({"type": "nbde-sovereign", "keyslots": []}).to_string(),
    )
    .unwrap();
    ok(run(
        "cryptsetup",
        &["token", "import", "--json-file", s(&marker), s(&image)],
        b"",
    ));

    let (out, _) = token_open(&tokens, &image, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sovereign"), "{}", text(&out));
    assert!(
        server.history(Some("acme/db1")).is_empty(),
        "a server was asked"
    );
}

#[test]
fn luks_dump_shows_pin_url_and_thumbprint() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let (keys, tangd) = tang("P-521");
    let image = luks_image(dir.path(), "disk.img");
    stock_bind(
        &tokens,
        &image,
        "tang",
        &json!({"url": tangd.url()}).to_string(),
    );

    let (out, _) = with_plugin(&tokens, "cryptsetup", &["luksDump", s(&image)], &[]);
    let dump = text(&out);
    assert!(out.status.success(), "{dump}");
    assert!(dump.contains("clevis pin: tang"), "{dump}");
    assert!(
        dump.contains(&format!("tang url:   {}", tangd.url())),
        "{dump}"
    );
    let thp = testkit::signing_thp(keys.path());
    assert!(dump.contains(&format!("tang thp:   {thp}")), "{dump}");
    // Nothing of the JWE's ciphertext or key material.
    let header = testkit::luks_json(&image);
    let ciphertext = header["tokens"]["0"]["jwe"]["ciphertext"].as_str().unwrap();
    assert!(!dump.contains(ciphertext), "{dump}");
}

#[test]
fn token_import_refuses_a_malformed_clevis_token() {
    let dir = tempdir();
    let tokens = plugin_dir(dir.path());
    let image = luks_image(dir.path(), "disk.img");
    let broken = [
        json!({"type": "clevis", "keyslots": ["0"]}),
        json!({"type": "clevis", "keyslots": ["0"], "jwe": {"protected": "e30", "ciphertext": "", "iv": "", "tag": ""}}),
        // {"alg":"dir","enc":"A256GCM"}: a JWE, but no clevis pin in its header.
        json!({"type": "clevis", "keyslots": ["0"], "jwe": {"protected": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0", "iv": "AAAAAAAAAAAAAAAA", "ciphertext": "AA", "tag": "AAAAAAAAAAAAAAAAAAAAAA"}}),
    ];
    for (i, token) in broken.iter().enumerate() {
        let file = dir.path().join(format!("broken{i}.json"));
        std::fs::write(&file, token.to_string()).unwrap();
        let (out, _) = with_plugin(
            &tokens,
            "cryptsetup",
            &["token", "import", "--json-file", s(&file), s(&image)],
            &[],
        );
        assert!(!out.status.success(), "imported {token}");
        assert!(text(&out).contains("clevis token:"), "{}", text(&out));
    }
    assert!(
        testkit::luks_json(&image)["tokens"]
            .as_object()
            .unwrap()
            .is_empty(),
        "a broken token was written"
    );
}
