//! Kill tests: a command run under strace, killed with SIGKILL on entering one of its
//! write-type system calls, at each such call in turn.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::run;

/// The write-type system calls the kill tests interrupt.
pub const WRITE_CALLS: [&str; 9] = [
    "write",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "fsync",
    "fdatasync",
    "rename",
    "unlink",
    "ftruncate",
];

/// Runs `program args` under strace, killed with SIGKILL on entering its `n`-th `call`, so
/// that call never happens. Returns the output and whether the run was killed. The header
/// backup directory a killed nbde-unlock leaves (`nbde-unlock-*`, seen in the traced
/// `mkdir`) is removed, so repeated kills do not fill /run.
pub fn run_killed_at(
    call: &str,
    n: usize,
    program: &str,
    args: &[&str],
    stdin: &[u8],
) -> (Output, bool) {
    use std::os::unix::process::ExitStatusExt;
    let log = tempfile::NamedTempFile::new().unwrap();
    let trace = format!("trace={call},mkdir,mkdirat");
    let inject = format!("inject={call}:signal=SIGKILL:when={n}");
    let mut full = vec![
        "-f",
        "-qq",
        "-s",
        "4096",
        "-o",
        log.path().to_str().unwrap(),
        "-e",
        &trace,
        "-e",
        &inject,
        program,
    ];
    full.extend_from_slice(args);
    let out = run("strace", &full, stdin);
    // strace ends itself with the tracee's signal: SIGKILL (9).
    let killed = out.status.signal() == Some(9) || out.status.code() == Some(128 + 9);
    let log = std::fs::read_to_string(log.path()).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("mkdir") && l.ends_with("= 0"))
    {
        let Some(path) = line.split('"').nth(1).map(Path::new) else {
            continue;
        };
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nbde-unlock-"));
        if ours && path.is_absolute() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    (out, killed)
}

/// Runs `program args` killed at each write-type system call in turn: for each call in
/// `WRITE_CALLS`, at its 1st, 2nd, … invocation until a run gets past its last one. (strace
/// counts each call apart, so killing at the n-th of a whole set would skip the points
/// where a rarer call comes between two others.) `reset` runs before each run; `check`
/// after each, with a label and whether the run was killed. A run that was not killed must
/// succeed. Returns the number of killed runs.
pub fn kill_at_every_write(
    program: &str,
    args: &[&str],
    stdin: &[u8],
    mut reset: impl FnMut(),
    mut check: impl FnMut(&str, bool),
) -> usize {
    WRITE_CALLS
        .iter()
        .map(|call| kill_at_each(call, program, args, stdin, &mut reset, &mut check))
        .sum()
}

/// `kill_at_every_write` on one thread per core, each lane on its own working copy:
/// `args(lane)`, `reset(lane)` and `check(lane, label, killed)` name it. The write calls
/// are dealt out to the lanes as they come free.
pub fn kill_at_every_write_in_lanes(
    program: &str,
    args: impl Fn(usize) -> Vec<String> + Sync,
    stdin: &[u8],
    reset: impl Fn(usize) + Sync,
    check: impl Fn(usize, &str, bool) + Sync,
) -> usize {
    let lanes = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..lanes)
            .map(|lane| {
                let (args, reset, check, next) = (&args, &reset, &check, &next);
                scope.spawn(move || {
                    let args = args(lane);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut killed_runs = 0;
                    while let Some(call) = WRITE_CALLS.get(next.fetch_add(1, Ordering::Relaxed)) {
                        killed_runs += kill_at_each(
                            call,
                            program,
                            &args,
                            stdin,
                            &mut || reset(lane),
                            &mut |at, killed| check(lane, at, killed),
                        );
                    }
                    killed_runs
                })
            })
            .collect();
        running
            .into_iter()
            .map(|lane| lane.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    })
}

/// Kills `program args` at the 1st, 2nd, … invocation of `call` until a run gets past its
/// last one; the number of killed runs.
fn kill_at_each(
    call: &str,
    program: &str,
    args: &[&str],
    stdin: &[u8],
    reset: &mut dyn FnMut(),
    check: &mut dyn FnMut(&str, bool),
) -> usize {
    let mut killed_runs = 0;
    for n in 1.. {
        reset();
        let (out, killed) = run_killed_at(call, n, program, args, stdin);
        let label = format!("{call} #{n}");
        if !killed {
            assert!(
                out.status.success(),
                "{label} was not reached, yet the run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        check(&label, killed);
        if !killed {
            break;
        }
        killed_runs += 1;
        assert!(n < 1000, "{call}: never completed");
    }
    killed_runs
}
