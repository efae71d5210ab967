//! The `nbde-unlock` command: parses arguments, runs one verb, maps the result to an
//! exit code. Everything else lives in the library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    nbde_unlock::private::forbid_core_dumps();
    let args = match cli::parse() {
        Ok(args) => args,
        Err(exit) => return exit,
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: {e}", cli::program_name());
            ExitCode::FAILURE
        }
    }
}
