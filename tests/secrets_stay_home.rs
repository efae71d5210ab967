//! Secrets never leave: a bind and unlocks through nbde-server with every log at debug
//! level, then a search of everything the server wrote (its log, its decision history, its
//! audit trail, its store's files) and everything nbde-unlock printed, for every secret of
//! the run: the LUKS passphrase, the key the binding recovers, the owner's bearer token and
//! the server's private exchange key. The store holds that key sealed under its
//! key-encryption key, which lives beside the data directory: no file in it holds the key.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::*;

/// A secret as it could appear: as given, and the forms its bytes take in text.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.into_bytes());
    out.push(nbde_proto::b64::encode(secret).into_bytes());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 8 && haystack.windows(needle.len()).any(|w| w == needle)
}

fn start_server(data: &Path, log: &Path) -> (Child, String) {
    let mut child = Command::new(bin("nbde-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .env("NBDE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("nbde-server: listening on ").nth(1) {
            let url = rest.lines().next().unwrap().trim().to_owned();
            return (child, url);
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        assert!(child.try_wait().unwrap().is_none(), "server exited: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_secret_reaches_a_log_the_history_the_audit_or_the_output() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let token = String::from_utf8(run_ok(
        &bin("nbde-server"),
        &["init", "--data", data.to_str().unwrap()],
        b"",
    ))
    .unwrap()
    .lines()
    .last()
    .unwrap()
    .to_owned();
    let log = dir.path().join("server.log");
    let (mut server, url) = start_server(&data, &log);
    let admin = |args: &[&str]| {
        let mut full = vec!["--server", url.as_str()];
        full.extend_from_slice(args);
        run_with_env(&bin("nbde-server"), &full, b"", &[("NBDE_TOKEN", &token)])
    };
    assert!(admin(&["org", "add", "acme"]).status.success());
    let device = admin(&["device", "add", "--org", "acme", "web1", "--json"]);
    let device: Value = serde_json::from_slice(&device.stdout).unwrap();
    let config = serde_json::json!({"url": device["url"], "thp": device["thp"]}).to_string();

    let image = luks_image(dir.path(), "root.img");
    let keyfile = passphrase_file(&image);
    let mut printed = Vec::new();
    let mut ours = |args: &[&str]| {
        let out = run(&nbde_unlock(), args, b"");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed.extend_from_slice(&out.stderr);
        out.stdout
    };
    ours(&[
        "luks",
        "bind",
        "-d",
        s(&image),
        "-k",
        s(&keyfile),
        "tang",
        &config,
    ]);
    let bound_key = ours(&["luks", "pass", "-d", s(&image), "-s", "1"]);
    assert!(key_opens(&image, Some(1), &bound_key));
    ours(&["luks", "list", "-d", s(&image)]);
    ours(&["luks", "report", "-d", s(&image), "-s", "1", "-q"]);

    let history = admin(&["history", "--json"]).stdout;
    let audit = admin(&["audit", "--json"]).stdout;
    assert!(String::from_utf8_lossy(&history).contains("allowed"));
    server.kill().unwrap();
    server.wait().unwrap();

    // The private half of the device's exchange key, from the store, opened with the
    // key-encryption key `init` made beside the data directory.
    let private: Vec<Vec<u8>> =
        testkit::sealed_keys::sqlite_private_keys(&data, &dir.path().join("data.kek"))
            .iter()
            .filter(|k| k.family == "exchange")
            .map(|k| k.d())
            .collect();
    assert!(!private.is_empty());
    let sealed = String::from_utf8(run_ok(
        "sqlite3",
        &[
            data.join("nbde.sqlite").to_str().unwrap(),
            "SELECT jwk FROM exchange_keys",
        ],
        b"",
    ))
    .unwrap();

    let server_log = std::fs::read(&log).unwrap();
    // Debug logging was on: every decision and every admin call is there.
    let logged = String::from_utf8_lossy(&server_log);
    assert!(logged.contains("decision=\"allowed\""), "{logged}");
    assert!(
        logged.contains("admin account=owner method=POST path=/orgs"),
        "{logged}"
    );
    let mut store = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        store.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let places: [(&str, &[u8]); 5] = [
        ("server log", &server_log),
        ("history", &history),
        ("audit", &audit),
        ("nbde-unlock's messages", &printed),
        ("store files", &store),
    ];
    let secrets: [(&str, &[u8]); 4] = [
        ("LUKS passphrase", PASSPHRASE.as_bytes()),
        ("bound key", &bound_key),
        ("owner token", token.as_bytes()),
        ("exchange private key", &private[0]),
    ];
    // The search finds what is there: the sealed key in the store.
    assert!(
        contains(&store, sealed.lines().next().unwrap().as_bytes()),
        "the scan cannot see the store's sealed key"
    );
    for (what, secret) in secrets {
        for (place, text) in places {
            for form in forms(secret) {
                assert!(!contains(text, &form), "{what} found in the {place}");
            }
        }
    }
}
