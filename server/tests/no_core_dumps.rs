//! The server holds every device's private keys in memory: it makes itself not dumpable,
//! so the kernel writes no core file of it and other processes of its user can neither
//! ptrace it nor read its memory through /proc.

use std::time::Duration;

use testkit::dumpable::{NOBODY, readable_by_its_user_once_running, spawn_as_nobody};
use testkit::{bin, tempdir};

#[test]
fn nbde_server_is_not_dumpable() {
    let data = tempdir();
    std::os::unix::fs::chown(data.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // Its key-encryption key, nobody's and private, beside the data directory.
    let keys = tempdir();
    std::os::unix::fs::chown(keys.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let kek = keys.path().join("kek");
    std::fs::write(&kek, [7u8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    std::os::unix::fs::chown(&kek, Some(NOBODY), Some(NOBODY)).unwrap();
    let server = bin("nbde-server");
    let path = data.path().to_str().unwrap();
    let kek = kek.to_str().unwrap();
    let args = [
        "serve",
        "--data",
        path,
        "--listen",
        "127.0.0.1:0",
        "--kek-file",
        kek,
    ];
    let mut child = spawn_as_nobody(&server, &args);
    let readable = readable_by_its_user_once_running(&child, &server, Duration::from_secs(2));
    let exited = child.try_wait().unwrap();
    child.kill().ok();
    child.wait().unwrap();
    assert_eq!(exited, None, "the server exited");
    assert!(
        !readable,
        "another process of its user reads nbde-server's /proc/PID/environ"
    );
}
