//! `serve --tang-dir` on a directory that advertises nothing (a fresh install's empty
//! /var/lib/tang, or every key rotated away) creates a pair as `tangd-keygen` does, and
//! stock clevis, jose and tangd accept it. Real processes and sockets throughout.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::*;

/// `(file name, parsed JWK)` of every file in `dir`, sorted by name; hidden ones included.
fn files(dir: &Path) -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let jwk = serde_json::from_str(&text).unwrap_or(Value::Null);
            (name, jwk)
        })
        .collect()
}

fn visible(dir: &Path) -> Vec<(String, Value)> {
    files(dir)
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect()
}

/// Stock `jose jwk thp -a S256` of a key file: the name tangd-keygen gives it.
fn jose_thp(path: &Path) -> String {
    let out = run_ok(
        "jose",
        &["jwk", "thp", "-a", "S256", "-i", path.to_str().unwrap()],
        b"",
    );
    String::from_utf8(out).unwrap().trim().to_owned()
}

/// What a key file looks like apart from its key material: the sorted member names, alg,
/// crv, key_ops, and the file mode.
fn shape(path: &Path, jwk: &Value) -> String {
    let members: Vec<&String> = jwk.as_object().unwrap().keys().collect();
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    format!(
        "members={members:?} alg={} crv={} key_ops={} mode={mode:o}",
        jwk["alg"], jwk["crv"], jwk["key_ops"]
    )
}

/// Checks `dir` holds exactly one visible ES512 and one visible ECMR key, each named by its
/// stock S256 thumbprint and shaped as `tangd-keygen` writes them, and no stray (temporary)
/// file; returns the two visible names.
fn assert_keygen_pair(dir: &Path) -> BTreeSet<String> {
    let stock = tempdir();
    run_ok(TANGD_KEYGEN, &[stock.path().to_str().unwrap()], b"");
    let stock_shapes: BTreeSet<_> = files(stock.path())
        .iter()
        .map(|(name, jwk)| shape(&stock.path().join(name), jwk))
        .collect();

    let made = visible(dir);
    assert_eq!(made.len(), 2, "{made:?}");
    let mut shapes = BTreeSet::new();
    for (name, jwk) in &made {
        let path = dir.join(name);
        assert_eq!(*name, format!("{}.jwk", jose_thp(&path)));
        shapes.insert(shape(&path, jwk));
    }
    assert_eq!(
        shapes, stock_shapes,
        "same members, alg, crv, key_ops, mode"
    );
    assert!(
        files(dir).iter().all(|(name, _)| name.ends_with(".jwk")),
        "{:?}",
        files(dir)
    );
    made.into_iter().map(|(name, _)| name).collect()
}

/// `GET url` with stock curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let out = run_ok(
        "curl",
        &["-sS", "-o", "-", "-w", "\n%{http_code}", url],
        b"",
    );
    let text = String::from_utf8(out).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// GET /adv must answer 200 with an advertisement that stock jose verifies with the
/// directory's visible signing key and that lists exactly the visible keys' public halves.
fn assert_adv_verifies(url: &str, dir: &Path) {
    let (status, adv) = get(&format!("{url}/adv"));
    assert_eq!(status, 200, "{adv}");
    let made = visible(dir);
    let (sig, _) = made
        .iter()
        .find(|(_, jwk)| jwk["alg"] == "ES512")
        .expect("a signing key");
    let adv_file = dir.parent().unwrap().join(format!("{sig}.adv"));
    std::fs::write(&adv_file, &adv).unwrap();
    run_ok(
        "jose",
        &[
            "jws",
            "ver",
            "-i",
            adv_file.to_str().unwrap(),
            "-k",
            dir.join(sig).to_str().unwrap(),
        ],
        b"",
    );
    std::fs::remove_file(adv_file).unwrap();
    let jws = nbde_proto::Jws::parse(&adv).unwrap();
    let set = nbde_proto::KeySet::from_verified_adv(&jws).unwrap();
    let advertised: BTreeSet<String> = set
        .keys()
        .iter()
        .map(|k| k.thumbprint(nbde_proto::ThumbprintHash::S256).unwrap() + ".jwk")
        .collect();
    let on_disk: BTreeSet<String> = made.into_iter().map(|(name, _)| name).collect();
    assert_eq!(advertised, on_disk);
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Stock tangd behind `socat TCP-LISTEN:PORT,fork`, as tang's own tests run it, on a
/// given port (the one a JWE's URL names); ended by PID when dropped.
struct SocatTangd(Child);

impl SocatTangd {
    fn start(port: u16, dir: &Path) -> SocatTangd {
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("EXEC:{TANGD} {}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (the test command installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SocatTangd(child)
    }
}

impl Drop for SocatTangd {
    fn drop(&mut self) {
        // Ends only the socat this test started, by its PID.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn kid_of(jwe: &str) -> String {
    let protected = jwe.split('.').next().unwrap();
    let header = nbde_proto::b64::decode(protected, "header").unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// Renames every visible key to its hidden name, as `tangd-rotate-keys` does before it
/// makes a new pair: afterwards nothing is advertised.
fn hide_all(dir: &Path) {
    for (name, _) in visible(dir) {
        std::fs::rename(dir.join(&name), dir.join(format!(".{name}"))).unwrap();
    }
}

fn keys_dir() -> (tempfile::TempDir, PathBuf) {
    // The keys live one level down so the adv scratch file above them is not in the dir.
    let root = tempdir();
    let dir = root.path().join("db");
    std::fs::create_dir(&dir).unwrap();
    (root, dir)
}

#[test]
fn empty_tang_dir_gets_a_keygen_pair_that_clevis_and_stock_tangd_use() {
    let (_root, dir) = keys_dir();
    let mut server = NbdeServer::start(&["--tang-dir", dir.to_str().unwrap()]);
    // Created at startup, before any request.
    let names = assert_keygen_pair(&dir);
    assert_adv_verifies(&server.url, &dir);

    let cfg = json!({"url": server.url}).to_string();
    let jwe = clevis_encrypt("tang", &cfg, b"bound to a fresh dir");
    assert!(names.contains(&format!("{}.jwk", kid_of(&jwe))));
    assert_eq!(clevis_decrypt(&jwe).stdout, b"bound to a fresh dir");
    assert_eq!(visible(&dir).len(), 2, "no further keys made by requests");

    // Stock tangd, on the same address and directory, recovers the binding made against us.
    let port = port_of(&server.url);
    server.stop();
    let _tangd = SocatTangd::start(port, &dir);
    let (status, _) = get(&format!("{}/adv", server.url));
    assert_eq!(status, 200);
    assert_adv_verifies(&server.url, &dir);
    let out = clevis_decrypt(&jwe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"bound to a fresh dir");
    assert_eq!(files(&dir).len(), 2, "tangd found its pair and made none");
}

#[test]
fn fully_rotated_tang_dir_gets_a_fresh_pair_and_old_bindings_still_recover() {
    let (_root, dir) = keys_dir();
    run_ok(TANGD_KEYGEN, &[dir.to_str().unwrap()], b"");
    let mut server = NbdeServer::start(&["--tang-dir", dir.to_str().unwrap()]);
    let cfg = json!({"url": server.url}).to_string();
    let first = clevis_encrypt("tang", &cfg, b"first");

    // Stock rotation (hide, then a new pair), then everything hidden while we run: the
    // re-read after the change makes a pair.
    run_ok(TANGD_ROTATE, &["-d", dir.to_str().unwrap()], b"");
    let second = clevis_encrypt("tang", &cfg, b"second");
    assert_ne!(kid_of(&second), kid_of(&first));
    hide_all(&dir);
    assert_adv_verifies(&server.url, &dir);
    let fresh = assert_keygen_pair(&dir);
    let third = clevis_encrypt("tang", &cfg, b"third");
    assert!(fresh.contains(&format!("{}.jwk", kid_of(&third))));
    for (jwe, plain) in [(&first, "first"), (&second, "second"), (&third, "third")] {
        assert_eq!(clevis_decrypt(jwe).stdout, plain.as_bytes());
    }

    // Fully rotated while stopped: the pair is made at startup.
    server.stop();
    hide_all(&dir);
    assert!(visible(&dir).is_empty());
    server.restart();
    let restarted = assert_keygen_pair(&dir);
    assert!(restarted.is_disjoint(&fresh));
    assert_eq!(files(&dir).len(), 8, "three hidden pairs and the new one");
    assert_adv_verifies(&server.url, &dir);
    let fourth = clevis_encrypt("tang", &cfg, b"fourth");
    for (jwe, plain) in [
        (&first, "first"),
        (&second, "second"),
        (&third, "third"),
        (&fourth, "fourth"),
    ] {
        assert_eq!(clevis_decrypt(jwe).stdout, plain.as_bytes());
    }
}

/// As a packaged install has it: the directory belongs to the tang user and nbde-server runs
/// as root. The keys must go to that user, as `tangd-keygen` gives them, or tangd (running
/// as that user) cannot read them. Needs root and Debian's `_tang` user; else skipped.
#[test]
fn keys_made_as_root_belong_to_the_dirs_owner_and_tangd_reads_them_as_that_user() {
    use std::os::unix::fs::MetadataExt;
    let uid = String::from_utf8(run_ok("id", &["-u"], b"")).unwrap();
    if uid.trim() != "0" || !run("id", &["_tang"], b"").status.success() {
        eprintln!("skipped: needs root and the _tang user");
        return;
    }
    let (root, dir) = keys_dir();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    run_ok("chown", &["_tang:_tang", dir.to_str().unwrap()], b"");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let server = NbdeServer::start(&["--tang-dir", dir.to_str().unwrap()]);
    let names = assert_keygen_pair(&dir);
    drop(server);
    let owner = std::fs::metadata(&dir).unwrap();
    for name in &names {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner.uid(), owner.gid()),
            "{name}"
        );
    }
    // One request to tangd run as _tang, as Debian's socket unit runs it.
    let reply = run_ok(
        "runuser",
        &["-u", "_tang", "--", TANGD, dir.to_str().unwrap()],
        b"GET /adv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let reply = String::from_utf8(reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(files(&dir).len(), 2, "tangd read our pair and made none");
}
