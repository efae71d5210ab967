//! nbde-tpm2 unseals the content key: it makes itself not dumpable, so the kernel writes
//! no core file of it and other processes of its user cannot read its memory.

use std::time::Duration;

use testkit::dumpable::{readable_by_its_user_once_running, spawn_as_nobody};

#[test]
fn nbde_tpm2_is_not_dumpable() {
    // Waiting for its JWE on standard input, as an unprivileged user.
    let tpm2 = env!("CARGO_BIN_EXE_nbde-tpm2");
    let mut child = spawn_as_nobody(tpm2, &["decrypt"]);
    let readable = readable_by_its_user_once_running(&child, tpm2, Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !readable,
        "another process of its user reads nbde-tpm2's /proc/PID/environ"
    );
}
