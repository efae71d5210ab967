//! Header escrow and the sovereign transition against a real nbde-server: a destroyed
//! header comes back from escrow with the customer's key alone; the server's own keys
//! cannot open the blob; after sovereign the device's keys and the blob are in no file of
//! the server's data directory.

use std::path::Path;
use std::process::{Command, Output};

use nbde_proto::{Jwe, Jwk};
use serde_json::{Value, json};
use testkit::*;

fn ours_as(server: &NbdeServer, args: &[&str]) -> Output {
    Command::new(nbde_unlock())
        .args(args)
        .env("NBDE_TOKEN", &server.token)
        .env_remove("NBDE_SERVER")
        .output()
        .unwrap()
}

/// Every private JWK the server's database holds (exchange and signing keys), opened
/// with its key-encryption key.
fn server_private_keys(server: &NbdeServer) -> Vec<Jwk> {
    let keys = testkit::sealed_keys::sqlite_private_keys(server.data.path(), &server.kek);
    keys.into_iter()
        .map(|k| {
            assert!(k.jwk.as_map().contains_key("d"), "a private key");
            k.jwk
        })
        .collect()
}

/// A piece of the device's sealed exchange key as the store keeps it on disk.
fn sealed_piece(data: &Path) -> Vec<u8> {
    let db = data.join("nbde.sqlite");
    let out = run_ok("sqlite3", &[s(&db), "SELECT jwk FROM exchange_keys"], b"");
    let text = String::from_utf8(out).unwrap();
    let ciphertext = text.lines().next().unwrap().rsplit('.').next().unwrap();
    ciphertext.as_bytes()[..64].to_vec()
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

struct Setup {
    server: NbdeServer,
    url: String,
    dir: tempfile::TempDir,
    image: std::path::PathBuf,
    escrow_key: std::path::PathBuf,
}

/// A server with org "acme" (escrow key set), device "web1", and a volume bound to it
/// with the passphrase as its user key.
fn setup() -> Setup {
    let server = NbdeServer::start(&[]);
    let (url, thp) = server.add_device("acme", "web1", None);
    let dir = tempdir();
    let image = luks_image(dir.path(), "v.img");
    let cfg = json!({ "url": url, "thp": thp }).to_string();
    let pass = passphrase_file(&image);
    ok(ours_with(
        &["bind", "-d", s(&image), "-k", s(&pass), "tang", &cfg],
        b"",
    ));
    let escrow_key = dir.path().join("escrow.jwk");
    let public = ok(ours_with(
        &["header", "keygen", "--private", s(&escrow_key)],
        b"",
    ));
    let public_file = dir.path().join("escrow.pub.jwk");
    std::fs::write(&public_file, &public).unwrap();
    server.admin_ok(&["org", "escrow-key", "acme", "--jwk", s(&public_file)]);
    Setup {
        server,
        url,
        dir,
        image,
        escrow_key,
    }
}

#[test]
fn a_destroyed_header_comes_back_from_escrow_and_the_server_cannot_read_it() {
    let t = setup();
    let image = s(&t.image);
    ok(ours_as(&t.server, &["header", "escrow", "-d", image]));
    let shown: Value =
        serde_json::from_str(
            &t.server
                .admin_ok(&["device", "show", "acme/web1", "--json"]),
        )
        .unwrap();
    let uuid = String::from_utf8(run_ok("cryptsetup", &["luksUUID", image], b"")).unwrap();
    assert_eq!(shown["escrow"]["uuid"], uuid.trim());

    // What the server stores opens with the customer's key, and with none of its own.
    let blob = t.dir.path().join("blob.jwe");
    t.server
        .admin_ok(&["device", "escrow", "get", "acme/web1", "--out", s(&blob)]);
    let jwe =
        Jwe::parse_large_compact(std::fs::read_to_string(&blob).unwrap().trim(), 64 << 20).unwrap();
    let customer: Jwk =
        Jwk::from_value(serde_json::from_slice(&std::fs::read(&t.escrow_key).unwrap()).unwrap())
            .unwrap();
    assert!(jwe.decrypt_ecdh_es(&customer.scalar().unwrap()).is_ok());
    let own = server_private_keys(&t.server);
    assert!(own.len() >= 2);
    for key in &own {
        assert!(
            jwe.decrypt_ecdh_es(&key.scalar().unwrap()).is_err(),
            "a server key opened it"
        );
    }

    // Both binary headers and their JSON areas wiped: the volume no longer reads.
    let mut bytes = std::fs::read(&t.image).unwrap();
    bytes[..32 << 10].fill(0);
    std::fs::write(&t.image, &bytes).unwrap();
    assert!(!run("cryptsetup", &["isLuks", image], b"").status.success());
    assert!(!key_opens(&t.image, None, PASSPHRASE.as_bytes()));

    // A wrong escrow key is refused, and nothing is written.
    let wrong = t.dir.path().join("wrong.jwk");
    ok(ours_with(
        &["header", "keygen", "--private", s(&wrong)],
        b"",
    ));
    let args = [
        "header",
        "restore",
        "-d",
        image,
        "--url",
        &t.url,
        "--escrow-key",
    ];
    let mut with_wrong = args.to_vec();
    with_wrong.push(s(&wrong));
    fails_with(&ours_as(&t.server, &with_wrong), 1, "does not open");
    assert!(!run("cryptsetup", &["isLuks", image], b"").status.success());

    let mut with_right = args.to_vec();
    with_right.push(s(&t.escrow_key));
    ok(ours_as(&t.server, &with_right));
    assert!(
        key_opens(&t.image, Some(0), PASSPHRASE.as_bytes()),
        "user key"
    );
    assert_eq!(working_bindings(&t.image), [1], "network binding");

    // Another volume's header is not put on this one.
    let other = luks_image(t.dir.path(), "other.img");
    let mut onto_other = with_right.clone();
    onto_other[3] = s(&other);
    fails_with(&ours_as(&t.server, &onto_other), 1, "escrowed header is of");
}

#[test]
fn sovereign_tells_the_server_and_leaves_no_key_or_blob_on_its_disk() {
    let mut t = setup();
    let image = s(&t.image);
    ok(ours_as(&t.server, &["header", "escrow", "-d", image]));
    let blob = t.dir.path().join("blob.jwe");
    t.server
        .admin_ok(&["device", "escrow", "get", "acme/web1", "--out", s(&blob)]);
    let blob = std::fs::read_to_string(&blob).unwrap();
    let blob_piece = blob.trim().rsplit('.').nth(1).unwrap().as_bytes()[1000..1064].to_vec();
    let exchange = server_private_keys(&t.server)
        .into_iter()
        .find(|k| k.allows("deriveKey"))
        .unwrap();
    let d = exchange.str_member("d").unwrap().unwrap().to_owned();
    let data = t.server.data.path().to_owned();
    let sealed = sealed_piece(&data);
    // The private scalar is never on disk: it is sealed under the key-encryption key.
    assert_eq!(files_containing(&data, d.as_bytes()), Vec::<String>::new());
    // The control: before, the sealed key and the blob are on the server's disk.
    assert!(!files_containing(&data, &sealed).is_empty());
    assert!(!files_containing(&data, &blob_piece).is_empty());

    // The server down: refused before the header is touched.
    let before = luks_json(&t.image);
    t.server.stop();
    let pass = passphrase_file(&t.image);
    let out = ours_as(
        &t.server,
        &["mode", "-d", image, "sovereign", "-k", s(&pass)],
    );
    fails_with(&out, 1, "nothing changed");
    assert_eq!(luks_json(&t.image), before);
    t.server.restart();

    let out = ours_as(
        &t.server,
        &["mode", "-d", image, "sovereign", "-k", s(&pass)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("keys are destroyed"), "{stderr}");
    let shown: Value =
        serde_json::from_str(&ok(ours_with(&["mode", "-d", image, "--json"], b""))).unwrap();
    assert_eq!(shown["mode"], "sovereign");
    assert_eq!(shown["marker"]["servers"][0]["told"], true);

    let device: Value =
        serde_json::from_str(
            &t.server
                .admin_ok(&["device", "show", "acme/web1", "--json"]),
        )
        .unwrap();
    assert_eq!(device["state"], "retired");
    assert_eq!(device["mode"]["mode"], "sovereign");
    assert!(device["escrow"].is_null());
    let audit = t.server.admin_ok(&["audit"]);
    assert!(audit.contains("device mode sovereign"), "{audit}");
    for round in ["after sovereign", "after a restart"] {
        assert_eq!(
            files_containing(&data, &sealed),
            Vec::<String>::new(),
            "{round}"
        );
        assert_eq!(
            files_containing(&data, &blob_piece),
            Vec::<String>::new(),
            "{round}"
        );
        t.server.restart();
    }
    assert!(
        t.server.history(Some("acme/web1")).is_empty(),
        "no recovery was asked"
    );
}
