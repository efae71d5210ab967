//! Whether a process is dumpable, seen as an attacker of the same user sees it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid nobody runs as on Debian.
pub const NOBODY: u32 = 65534;

/// Starts `program args…` as nobody (setpriv execs it in place, so the pid is the
/// program's), its standard input an open pipe so that it waits there.
pub fn spawn_as_nobody(program: &str, args: &[&str]) -> Child {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)")
}

/// Whether another process of nobody's can read the memory-backed files of `child` once
/// it runs `program` (its environment, /proc/PID/environ), waiting up to `grace` for it to
/// make itself not dumpable. The kernel refuses such reads of a process that is not
/// dumpable to everyone without CAP_SYS_PTRACE, as it refuses ptrace and writes no core.
pub fn readable_by_its_user_once_running(child: &Child, program: &str, grace: Duration) -> bool {
    let dir = format!("/proc/{}", child.id());
    let name = std::path::Path::new(program)
        .file_name()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    // First the exec into `program` (setpriv runs before it, as nobody and dumpable).
    while std::fs::read_link(format!("{dir}/exe"))
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n != name.as_os_str()))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{program} did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let until = Instant::now() + grace;
    loop {
        let read = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(format!("{dir}/environ"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("setpriv (util-linux)")
            .success();
        if !read || Instant::now() >= until {
            return read;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
