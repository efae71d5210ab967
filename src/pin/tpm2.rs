//! The tpm2 pin, through `nbde-tpm2`: a program beside this one that links the TSS (and
//! with it libcrypto), so this binary links neither. It speaks clevis's pin protocol: the
//! JWE or plaintext goes in on stdin, the other comes back on stdout, through pipes only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nbde_proto::Jwe;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The helper's name, and the variable that may name another path (tests, odd layouts).
const HELPER: &str = "nbde-tpm2";
const HELPER_VARIABLE: &str = "NBDE_TPM2";
/// Where packages and the initramfs integrations put it when it is not beside us (the
/// token plugin runs inside systemd-cryptsetup or cryptsetup, in another directory).
const HELPER_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/usr/sbin"];
/// `nbde-tpm2`'s status when trying again may help (EX_TEMPFAIL).
const EXIT_TRANSIENT: i32 = 75;

fn helper() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(HELPER_VARIABLE) {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(HELPER)));
    beside
        .into_iter()
        .chain(HELPER_DIRS.iter().map(|dir| Path::new(dir).join(HELPER)))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::Tpm2 {
            detail: format!(
                "{HELPER} is not installed (looked beside this program and in {})",
                HELPER_DIRS.join(", ")
            ),
            transient: false,
        })
}

/// Runs the helper with `args`, `input` on stdin; its stdout, or its own words on failure.
fn run(args: &[&str], input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let path = helper()?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("starting {}", path.display())))?;
    // The helper reads all of stdin before it writes, so writing first cannot deadlock.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input))
        .unwrap_or(Ok(()));
    let mut output = Zeroizing::new(Vec::new());
    let mut errors = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_end(&mut output)
            .map_err(Error::io(format!("reading {HELPER}")))?;
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut errors);
    }
    let status = child
        .wait()
        .map_err(Error::io(format!("waiting for {HELPER}")))?;
    if status.success() {
        written.map_err(Error::io(format!("writing to {HELPER}")))?;
        return Ok(output);
    }
    let detail = errors
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("tpm2: ").to_owned())
        .unwrap_or_else(|| format!("{HELPER} failed ({status})"));
    Err(Error::Tpm2 {
        detail,
        transient: status.code() == Some(EXIT_TRANSIENT),
    })
}

pub fn encrypt(config: &Value, plaintext: &[u8]) -> Result<Jwe> {
    let config = config.to_string();
    let jwe = run(&["encrypt", &config], plaintext)?;
    let text = std::str::from_utf8(&jwe).map_err(|_| Error::Tpm2 {
        detail: format!("{HELPER} wrote something that is not a JWE"),
        transient: false,
    })?;
    Jwe::parse_compact(text.trim()).map_err(Error::proto("tpm2 JWE"))
}

pub fn recover(jwe: &Jwe) -> Result<Zeroizing<Vec<u8>>> {
    run(&["decrypt"], jwe.to_compact().as_bytes())
}
