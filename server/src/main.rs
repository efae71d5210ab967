//! The `nbde-server` command: `serve`, `init`, and admin verbs over the admin API.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: cli::Args = argh::from_env();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbde-server: {e}");
            ExitCode::FAILURE
        }
    }
}
