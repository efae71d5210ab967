//! Keys at rest (issue #16): the private keys are sealed under a key-encryption key kept
//! outside the store, so a copy of the data directory or a dump of the database yields no
//! private scalar; a wrong KEK is refused; `rekey` replaces the KEK, survives a kill at any
//! moment, and recoveries bound before keep working; a store from before sealing is sealed
//! on its first start. The private scalars are learnt from the store opened with its KEK
//! (testkit::sealed_keys, written apart from the server's code), never hard-coded.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::sealed_keys::{PrivateKey, STORED_KEYS, open_rows, open_sealed, sqlite_private_keys};
use testkit::{NbdeServer, Postgres, bin, clevis_decrypt, run, run_killed_at, run_ok, tempdir};

/// Two devices on each curve, the first rotated once: with the org's signing key, eight
/// private keys.
const DEVICES: [(&str, &str); 6] = [
    ("p256-a", "P-256"),
    ("p256-b", "P-256"),
    ("p384-a", "P-384"),
    ("p384-b", "P-384"),
    ("p521-a", "P-521"),
    ("p521-b", "P-521"),
];
const KEYS: usize = 1 + DEVICES.len() + 1;

/// (device, JWE whose plaintext is the device's name) for every device, bound with stock
/// clevis and recovered once; then p256-a is rotated (its bound key is kept for recovery).
fn populate(server: &NbdeServer) -> Vec<(String, String)> {
    let bound: Vec<(String, String)> = DEVICES
        .iter()
        .map(|(name, curve)| {
            let (url, thp) = server.add_device("acme", name, Some(curve));
            let config = serde_json::json!({"url": url, "thp": thp}).to_string();
            let jwe = testkit::clevis_encrypt("tang", &config, name.as_bytes());
            (name.to_string(), jwe)
        })
        .collect();
    server.admin_ok(&["device", "rotate", "acme/p256-a"]);
    recovers(&bound);
    bound
}

fn recovers(bound: &[(String, String)]) {
    for (name, jwe) in bound {
        let out = clevis_decrypt(jwe);
        assert_eq!(
            out.stdout,
            name.as_bytes(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every private scalar in each form it could be written in: base64url (as in the JWK),
/// raw bytes, hex in lower and upper case.
fn scalar_needles(keys: &[PrivateKey]) -> Vec<(String, Vec<u8>)> {
    keys.iter()
        .enumerate()
        .flat_map(|(i, key)| {
            let d = key.d();
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            let label = format!("key {i} ({} {}/{})", key.family, key.org, key.device);
            [
                (
                    format!("{label} base64url"),
                    key.jwk.as_map()["d"].as_str().unwrap().as_bytes().to_vec(),
                ),
                (format!("{label} raw"), d.clone()),
                (format!("{label} hex"), hex.clone().into_bytes()),
                (format!("{label} HEX"), hex.to_uppercase().into_bytes()),
            ]
        })
        .collect()
}

/// Every (file, needle label) where a needle occurs, searching every file under `root` as
/// bytes, in one pass per file (by each needle's first eight bytes).
fn hits(root: &Path, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut by_prefix: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    for (i, (_, needle)) in needles.iter().enumerate() {
        by_prefix
            .entry(needle[..8].try_into().unwrap())
            .or_default()
            .push(i);
    }
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let mut seen = HashSet::new();
            for at in 0..bytes.len().saturating_sub(7) {
                let Some(candidates) = by_prefix.get(&bytes[at..at + 8]) else {
                    continue;
                };
                for &i in candidates {
                    if bytes[at..].starts_with(&needles[i].1) && seen.insert(i) {
                        found.push(format!("{}: {}", path.display(), needles[i].0));
                    }
                }
            }
        }
    }
    found
}

fn copy_dir(from: &Path, to: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    names
}

/// Turns the SQLite store in `data` into what the server wrote before keys were sealed
/// (schema version 5, every key a plain JWK): each key opened with `kek` and written back.
fn make_plain(data: &Path, kek: &Path) {
    let kek = std::fs::read(kek).unwrap();
    let db = rusqlite::Connection::open(data.join("nbde.sqlite")).unwrap();
    for (table, family) in [("signing_keys", "signing"), ("exchange_keys", "exchange")] {
        let sql = format!(
            "SELECT k.id, o.name, {}, k.jwk FROM {table} k {}",
            if family == "signing" { "''" } else { "d.name" },
            if family == "signing" {
                "JOIN orgs o ON o.id = k.org_id"
            } else {
                "JOIN devices d ON d.id = k.device_id JOIN orgs o ON o.id = d.org_id"
            }
        );
        let rows: Vec<(i64, String, String, String)> = db
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (id, org, device, stored) in rows {
            let plain = open_sealed(&kek, family, &org, &device, &stored);
            db.execute(
                &format!("UPDATE {table} SET jwk = ?1 WHERE id = ?2"),
                rusqlite::params![plain.to_value().to_string(), id],
            )
            .unwrap();
        }
    }
    // Schema version 5: without what versions 6 (key_encryption), 7 (liveness) and 8 (the
    // liveness watch) added.
    db.execute_batch(
        "DROP TABLE key_encryption;
         DROP TABLE liveness_watch;
         ALTER TABLE orgs DROP COLUMN max_silence;
         ALTER TABLE devices DROP COLUMN max_silence;
         ALTER TABLE devices DROP COLUMN alive_since;
         PRAGMA user_version = 5;",
    )
    .unwrap();
}

/// A private KEK file of 32 random bytes that is not the store's.
fn other_kek(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("other.kek");
    let bytes: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

/// `nbde-server serve` that must refuse to start: its stderr (bounded in time, in case it
/// does start).
fn refused_serve(args: &[&str]) -> String {
    let program = bin("nbde-server");
    let mut full = vec!["20", &program, "serve", "--listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let out = run("timeout", &full, b"");
    assert!(!out.status.success(), "started: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_copy_of_the_data_directory_holds_no_private_scalar() {
    let mut server = NbdeServer::start(&[]);
    populate(&server);
    let keys = sqlite_private_keys(server.data.path(), &server.kek);
    assert_eq!(keys.len(), KEYS);
    let needles = scalar_needles(&keys);

    // A copy taken while the server runs: the WAL and its index with it.
    let live = tempdir();
    let files = copy_dir(server.data.path(), live.path());
    assert!(files.contains(&"nbde.sqlite-wal".to_string()), "{files:?}");
    assert_eq!(hits(live.path(), &needles), Vec::<String>::new());
    // And one taken after a clean stop.
    server.stop();
    let stopped = tempdir();
    copy_dir(server.data.path(), stopped.path());
    assert_eq!(hits(stopped.path(), &needles), Vec::<String>::new());

    // The control: the same search over this store with its keys in plain text, as the
    // server kept them before sealing, finds every scalar.
    make_plain(stopped.path(), &server.kek);
    let found = hits(stopped.path(), &needles);
    for (label, _) in needles.iter().filter(|(l, _)| l.ends_with("base64url")) {
        assert!(
            found.iter().any(|f| f.ends_with(label.as_str())),
            "{label} not found in the plain store: {found:?}"
        );
    }
    eprintln!(
        "{} scalars searched in {} forms ({} needles): 0 hits in the sealed store, {} in the plain one",
        keys.len(),
        4,
        needles.len(),
        found.len()
    );
}

#[test]
fn a_dump_of_the_database_and_the_cluster_files_hold_no_private_scalar() {
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let mut server = NbdeServer::start_on_database(&url, &[]);
    populate(&server);
    let database = url.rsplit('/').next().unwrap();
    let keys = open_rows(&server.kek, &cluster.psql_in(database, STORED_KEYS));
    assert_eq!(keys.len(), KEYS);
    let needles = scalar_needles(&keys);
    server.stop();

    let dumps = tempdir();
    let dump = run_ok("pg_dump", &["--dbname", &url], b"");
    assert!(
        String::from_utf8_lossy(&dump).contains("nbde-sealed-v1."),
        "the dump holds the sealed keys"
    );
    std::fs::write(dumps.path().join("dump.sql"), &dump).unwrap();
    assert_eq!(hits(dumps.path(), &needles), Vec::<String>::new());
    // Every file of the cluster: tables, WAL, statistics.
    cluster.psql("CHECKPOINT");
    assert_eq!(hits(cluster.data_dir(), &needles), Vec::<String>::new());
}

#[test]
fn a_wrong_or_exposed_kek_is_refused_and_changes_nothing() {
    let mut server = NbdeServer::start(&[]);
    let bound = populate(&server);
    server.stop();
    let data = server.data.path().to_str().unwrap().to_owned();
    let db = server.data.path().join("nbde.sqlite");
    let state = || {
        run_ok(
            "sqlite3",
            &[
                db.to_str().unwrap(),
                "SELECT jwk FROM signing_keys UNION ALL SELECT jwk FROM exchange_keys
                 UNION ALL SELECT kek_id FROM key_encryption",
            ],
            b"",
        )
    };
    let before = state();
    let dir = tempdir();

    let other = other_kek(dir.path());
    let e = refused_serve(&["--data", &data, "--kek-file", other.to_str().unwrap()]);
    assert!(
        e.contains(&format!(
            "the key-encryption key at {} does not match this store",
            other.display()
        )),
        "{e}"
    );
    let exposed = dir.path().join("exposed.kek");
    std::fs::copy(&server.kek, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = refused_serve(&["--data", &data, "--kek-file", exposed.to_str().unwrap()]);
    assert!(e.contains("lets others read it"), "{e}");
    let missing = dir.path().join("missing.kek");
    let e = refused_serve(&["--data", &data, "--kek-file", missing.to_str().unwrap()]);
    assert!(e.contains("no key-encryption key at"), "{e}");
    let e = refused_serve(&["--data", &data]);
    assert!(
        e.contains(".kek"),
        "the default is beside the data directory: {e}"
    );
    // init does not make a new KEK for a store sealed under another.
    let out = run(
        &bin("nbde-server"),
        &[
            "init",
            "--kek-only",
            "--data",
            &data,
            "--kek-file",
            missing.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(!missing.exists());

    assert_eq!(state(), before, "nothing changed");
    server.restart();
    recovers(&bound);
}

/// Stops `server`, rekeys its store, and checks what a user would: recoveries of bindings
/// made before work, the scalars are the same, the old KEK no longer opens the store.
fn rekey_and_check(server: &mut NbdeServer, location: &[&str], bound: &[(String, String)]) {
    let dir = tempdir();
    let old = dir.path().join("old.kek");
    std::fs::copy(&server.kek, &old).unwrap();
    server.stop();
    let kek = server.kek.to_str().unwrap().to_owned();
    let mut args = vec!["rekey", "--kek-file", &kek];
    args.extend_from_slice(location);
    let out = run_ok(&bin("nbde-server"), &args, b"");
    assert!(out.is_empty(), "nothing on stdout");
    assert_ne!(
        std::fs::read(&server.kek).unwrap(),
        std::fs::read(&old).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&server.kek).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert!(!pending_kek(&server.kek).exists());
    let mut serve = location.to_vec();
    serve.extend(["--kek-file", old.to_str().unwrap()]);
    let e = refused_serve(&serve);
    assert!(e.contains("does not match this store"), "{e}");
    server.restart();
    recovers(bound);
}

/// Where a rekey writes the new KEK before its commit.
fn pending_kek(kek: &Path) -> std::path::PathBuf {
    let mut name = kek.as_os_str().to_os_string();
    name.push(".new");
    name.into()
}

#[test]
fn rekey_keeps_recoveries_and_retires_the_old_kek() {
    let mut server = NbdeServer::start(&[]);
    let bound = populate(&server);
    let before: Vec<Vec<u8>> = sqlite_private_keys(server.data.path(), &server.kek)
        .iter()
        .map(PrivateKey::d)
        .collect();
    let data = server.data.path().to_str().unwrap().to_owned();
    rekey_and_check(&mut server, &["--data", &data], &bound);
    let after: Vec<Vec<u8>> = sqlite_private_keys(server.data.path(), &server.kek)
        .iter()
        .map(PrivateKey::d)
        .collect();
    assert_eq!(before, after, "the same keys, sealed anew");

    // On PostgreSQL, with a replica that is handed the new file.
    let cluster = Postgres::start();
    let url = cluster.create_database();
    let mut a = NbdeServer::start_on_database(&url, &[]);
    let mut b = a.replica(&[]);
    let bound = populate(&a);
    // Beside running replicas a rekey is refused, and changes nothing.
    let kek_before = std::fs::read(&a.kek).unwrap();
    let out = run(
        &bin("nbde-server"),
        &[
            "rekey",
            "--database",
            &url,
            "--kek-file",
            a.kek.to_str().unwrap(),
        ],
        b"",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rekeyed beside two replicas");
    assert!(
        said.contains("2 nbde-server process(es) serve this database"),
        "{said}"
    );
    assert_eq!(std::fs::read(&a.kek).unwrap(), kek_before);
    assert!(!pending_kek(&a.kek).exists());
    b.stop();
    rekey_and_check(&mut a, &["--database", &url], &bound);
    let e = refused_serve(&["--database", &url, "--kek-file", b.kek.to_str().unwrap()]);
    assert!(e.contains("does not match this store"), "{e}");
    std::fs::copy(&a.kek, &b.kek).unwrap();
    b.restart();
    let status = b.admin_ok(&["device", "list", "--org", "acme", "--json"]);
    assert!(status.contains("p521-b"), "{status}");
}

#[test]
fn a_rekey_killed_at_any_moment_leaves_a_store_that_opens() {
    let mut server = NbdeServer::start(&[]);
    let bound = populate(&server);
    // Two recoveries per check: a rotated-out key and a P-521 one.
    let checked = [bound[0].clone(), bound[5].clone()];
    server.stop();
    let data = server.data.path().to_str().unwrap().to_owned();
    let kek = server.kek.to_str().unwrap().to_owned();
    let args = ["rekey", "--data", data.as_str(), "--kek-file", kek.as_str()];
    let program = bin("nbde-server");
    let mut check = |label: &str| {
        server.restart();
        for (name, jwe) in &checked {
            let out = clevis_decrypt(jwe);
            assert_eq!(
                out.stdout,
                name.as_bytes(),
                "after a kill at {label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server.stop();
    };
    let started = Instant::now();
    run_ok(&program, &args, b"");
    let one_rekey = started.elapsed();

    // At the steps that make it durable: each sync, rename, unlink, truncation, and a spread
    // of page writes.
    let mut kills = 0;
    for call in [
        "fsync",
        "fdatasync",
        "rename",
        "unlink",
        "ftruncate",
        "pwrite64",
    ] {
        for n in [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 60, 90] {
            let (out, killed) = run_killed_at(call, n, &program, &args, b"");
            if !killed {
                assert!(
                    out.status.success(),
                    "{call} #{n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            kills += 1;
            check(&format!("{call} #{n}"));
        }
    }
    // And at random moments.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut x = seed;
    for i in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_micros(x % (one_rekey.as_micros() as u64 * 12 / 10 + 1));
        let mut child = Command::new(&program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // Ends only the rekey this test started, by its PID.
        let _ = child.kill();
        let status = child.wait().unwrap();
        kills += usize::from(status.code().is_none());
        check(&format!("random kill {i} after {delay:?} (seed {seed})"));
    }
    eprintln!(
        "{kills} rekeys killed (one takes {one_rekey:?}); the store opened and recovered after each"
    );
    assert!(kills >= 10, "{kills}");
}

#[test]
fn a_store_from_before_sealing_is_sealed_on_its_first_start() {
    let mut server = NbdeServer::start(&[]);
    let bound = populate(&server);
    server.stop();
    let data = server.data.path();
    let keys = sqlite_private_keys(data, &server.kek);
    let needles = scalar_needles(&keys);
    make_plain(data, &server.kek);
    std::fs::remove_file(&server.kek).unwrap();
    assert!(
        !hits(data, &needles).is_empty(),
        "the plain store shows its scalars"
    );

    // The upgrade: a KEK is made (the package's postinst runs this), the first start seals.
    let kek = server.kek.to_str().unwrap().to_owned();
    let datas = data.to_str().unwrap();
    run_ok(
        &bin("nbde-server"),
        &["init", "--kek-only", "--data", datas, "--kek-file", &kek],
        b"",
    );
    let log = tempdir();
    let log = log.path().join("serve.log");
    let listen = server.url.trim_start_matches("http://").to_owned();
    let mut child = Command::new(bin("nbde-server"))
        .args([
            "serve",
            "--data",
            datas,
            "--kek-file",
            &kek,
            "--listen",
            &listen,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            break text;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        text.contains(&format!(
            "sealed {KEYS} private keys the store held in plain text"
        )),
        "{text}"
    );
    recovers(&bound);
    // Ends only the server this test started, by its PID.
    let _ = child.kill();
    child.wait().unwrap();
    assert_eq!(
        hits(data, &needles),
        Vec::<String>::new(),
        "the plain texts are erased"
    );
    let sealed: Vec<Vec<u8>> = sqlite_private_keys(data, &server.kek)
        .iter()
        .map(PrivateKey::d)
        .collect();
    assert_eq!(sealed, keys.iter().map(PrivateKey::d).collect::<Vec<_>>());
    server.restart();
    recovers(&bound);
}
