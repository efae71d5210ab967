//! The file system under the data directory fills up: a recovery is answered 503 with
//! Retry-After (the server takes no part when its history row cannot be written), an admin
//! change fails with an error and leaves nothing half made, and once there is room again
//! the server answers by itself, with everything it held before. On a tmpfs of its own
//! (tests run as root), unmounted when the test ends.

#[allow(dead_code)] // only the recovery client: no haproxy here
mod replica;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use replica::Recovery;
use testkit::{NbdeServer, tempdir};

/// A small tmpfs mounted on a directory of its own.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempdir();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Writes `path` until the file system has no room left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last bytes too, a page at a time.
    while file.write(&[0x5a]).is_ok_and(|n| n == 1) {}
}

fn allowed_rows(server: &NbdeServer) -> usize {
    server
        .history(Some("acme/web1"))
        .iter()
        .filter(|r| r["decision"] == "allowed")
        .count()
}

#[test]
fn a_full_disk_answers_503_loses_nothing_and_recovers_by_itself() {
    let disk = Tmpfs::mount("16m");
    let mut server = NbdeServer::start_in(disk.path(), &[]);
    server.add_device("acme", "web1", Some("P-256"));
    let recovery = Recovery::new(&server.addr(), "web1");
    assert_eq!(recovery.attempt(&server.addr()).unwrap(), 200);

    let filler = disk.path().join("filler");
    fill(&filler);

    let (status, retry_after) = recovery.attempt_with_retry_after(&server.addr()).unwrap();
    assert_eq!(status, 503, "answered with no room for its history row");
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{retry_after:?}"
    );
    let added = server.admin(&["device", "add", "--org", "acme", "web2"]);
    assert!(!added.status.success(), "an admin change on a full disk");
    let said = String::from_utf8_lossy(&added.stderr);
    assert!(said.contains("unavailable"), "{said}");

    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    loop {
        match recovery.attempt(&server.addr()).unwrap() {
            200 => break,
            503 => assert!(back.elapsed() < Duration::from_secs(10), "no recovery"),
            other => panic!("HTTP {other}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every answer has its row, the 503 none; the device that failed to be added is not
    // there half made, and can be added now.
    assert_eq!(allowed_rows(&server), 2);
    let list = server.admin_ok(&["device", "list", "--org", "acme", "--json"]);
    assert!(!list.contains("web2"), "{list}");
    server.admin_ok(&["device", "add", "--org", "acme", "web2"]);

    // And the store opens again as it was.
    server.restart();
    assert_eq!(recovery.attempt(&server.addr()).unwrap(), 200);
    assert_eq!(allowed_rows(&server), 3);
}
