//! Questions on the controlling terminal: yes/no, and passphrases without echo.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

fn open_tty(why: &str) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| Error::Config(format!("no terminal to {why}")))
}

fn read_line(tty: &File) -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    BufReader::new(tty)
        .read_line(&mut line)
        .map_err(Error::io("/dev/tty"))?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// Asks `question` and returns whether the answer was y or Y.
pub fn confirm(question: &str, why: &str) -> Result<bool> {
    let tty = open_tty(why)?;
    (&tty)
        .write_all(question.as_bytes())
        .map_err(Error::io("/dev/tty"))?;
    Ok(matches!(read_line(&tty)?.as_str(), "y" | "Y"))
}

/// Reads a passphrase with echo off; echo is restored even if reading fails.
pub fn passphrase(prompt: &str) -> Result<Zeroizing<Vec<u8>>> {
    let tty = open_tty("ask for the passphrase (use -k)")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid open fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal for the lifetime of `tty`.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above; `quiet` is a valid termios copied from the terminal's own.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let result = (&tty)
        .write_all(prompt.as_bytes())
        .map_err(Error::io("/dev/tty"))
        .and_then(|()| read_line(&tty));
    if have_termios {
        // SAFETY: restores the settings read above on the same fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    Ok(Zeroizing::new(result?.as_bytes().to_vec()))
}
