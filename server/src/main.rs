//! The `nbde-server` command: `serve`, `init`, and admin verbs over the admin API.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Keys live in this process's memory: no core file, no ptrace or /proc/PID/mem reads
    // by other processes of the same user. A failure only loses that protection.
    // SAFETY: PR_SET_DUMPABLE takes no pointers and changes only this process's flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let args: cli::Args = argh::from_env();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbde-server: {e}");
            ExitCode::FAILURE
        }
    }
}
