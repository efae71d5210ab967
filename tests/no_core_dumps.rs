//! Keys and passphrases pass through nbde-unlock's memory: it makes itself not dumpable,
//! so the kernel writes no core file of it and other processes of its user can neither
//! ptrace it nor read its memory through /proc.

use std::time::Duration;

use testkit::dumpable::{readable_by_its_user_once_running, spawn_as_nobody};
use testkit::nbde_unlock;

#[test]
fn nbde_unlock_is_not_dumpable() {
    // Waiting for a JWE on standard input, as an unprivileged user.
    let mut child = spawn_as_nobody(&nbde_unlock(), &["decrypt"]);
    let readable =
        readable_by_its_user_once_running(&child, &nbde_unlock(), Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !readable,
        "another process of its user reads nbde-unlock's /proc/PID/environ"
    );
}

/// The observation itself: an ordinary program run the same way can be read.
#[test]
fn an_ordinary_program_stays_dumpable() {
    let mut child = spawn_as_nobody("/usr/bin/cat", &[]);
    let readable =
        readable_by_its_user_once_running(&child, "/usr/bin/cat", Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(readable);
}
