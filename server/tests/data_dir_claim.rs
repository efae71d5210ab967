//! One process at a time on a SQLite data directory: beside a running server, a second
//! `serve`, a `rekey` and a `migrate --from` are refused, naming the server's pid, and
//! change nothing; once the server has stopped, the rekey works and the server starts again
//! on the new key-encryption key.

use testkit::{NbdeServer, bin, run};

fn refused_as_in_use(out: &std::process::Output, what: &str) {
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} ran beside the server");
    assert!(
        said.contains("is in use by another nbde-server process (pid "),
        "{what}: {said}"
    );
}

#[test]
fn a_served_data_directory_is_refused_to_a_second_server_a_rekey_and_a_migration() {
    let mut server = NbdeServer::start(&[]);
    server.add_device("acme", "web1", Some("P-256"));
    let data = server.data.path().to_str().unwrap().to_owned();
    let kek = server.kek.to_str().unwrap().to_owned();
    let kek_before = std::fs::read(&kek).unwrap();
    let nbde_server = bin("nbde-server");

    // Bounded: a second server that is not refused would serve until killed.
    let second = run(
        "timeout",
        &[
            "10",
            &nbde_server,
            "serve",
            "--data",
            &data,
            "--kek-file",
            &kek,
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
    );
    refused_as_in_use(&second, "a second serve");
    let rekey = run(
        &nbde_server,
        &["rekey", "--data", &data, "--kek-file", &kek],
        b"",
    );
    refused_as_in_use(&rekey, "rekey");
    assert_eq!(std::fs::read(&kek).unwrap(), kek_before, "the KEK changed");
    assert!(!std::path::Path::new(&format!("{kek}.new")).exists());
    // Refused before the target is looked at: nothing listens there.
    let migrate = run(
        &nbde_server,
        &[
            "migrate",
            "--from",
            &data,
            "--to",
            "postgres://nobody@127.0.0.1:1/none",
            "--kek-file",
            &kek,
        ],
        b"",
    );
    refused_as_in_use(&migrate, "migrate --from");
    // The server itself goes on.
    server.add_device("acme", "web2", Some("P-256"));

    server.stop();
    let rekey = run(
        &nbde_server,
        &["rekey", "--data", &data, "--kek-file", &kek],
        b"",
    );
    assert!(
        rekey.status.success(),
        "{}",
        String::from_utf8_lossy(&rekey.stderr)
    );
    assert_ne!(std::fs::read(&kek).unwrap(), kek_before);
    server.restart();
    let list = server.admin_ok(&["device", "list", "--org", "acme", "--json"]);
    assert!(list.contains("web1") && list.contains("web2"), "{list}");
}
