//! A server whose stderr has no reader any more (the terminal, the pipe or the log
//! collector that started it is gone) keeps answering, and SIGTERM still ends it at once.
//! Before, the first log line that could not be written panicked the task that logged it:
//! the SIGTERM handler died and the server ran on, unkillable but by SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{bin, post_status, run_ok, tempdir};

#[test]
fn answers_and_stops_on_sigterm_with_its_stderr_reader_gone() {
    let data = tempdir();
    let kek_dir = tempdir();
    let kek = kek_dir.path().join("kek");
    let (data_dir, kek) = (data.path().to_str().unwrap(), kek.to_str().unwrap());
    let server = bin("nbde-server");
    run_ok(
        &server,
        &["init", "--data", data_dir, "--kek-file", kek],
        b"",
    );
    let mut child = Command::new(&server)
        .args(["serve", "--data", data_dir, "--kek-file", kek])
        .args(["--listen", "127.0.0.1:0"])
        // Every request logs a line at debug level.
        .env("NBDE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(addr) = line
            .trim()
            .strip_prefix("nbde-server: listening on http://")
        {
            break addr.to_owned();
        }
    };
    drop(stderr);

    // Each answered, and each a log line that cannot be written.
    for _ in 0..3 {
        let status = post_status(&addr, "/o/acme/d/none/rec/kid", b"{}", "");
        assert_eq!(status, 404, "a request after stderr went away");
    }

    let pid = child.id() as libc::pid_t;
    // SAFETY: kill takes no pointers; `pid` is our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if asked.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("still running 5 s after SIGTERM");
    };
    assert!(status.success(), "ended with {status}");
}
