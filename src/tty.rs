//! Questions on the controlling terminal: yes/no, and passphrases without echo.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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

/// Echo off on a terminal for as long as the guard lives: it saves the terminal's
/// settings, turns ECHO off (and ECHONL on, so Enter still shows), and restores the saved
/// settings when dropped — on every way out, errors and unwinding included. On a file
/// descriptor that is not a terminal it does nothing.
pub struct EchoOff<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Option<libc::termios>,
}

impl<'fd> EchoOff<'fd> {
    pub fn new(fd: BorrowedFd<'fd>) -> EchoOff<'fd> {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the guard's lifetime.
        let terminal = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut saved) } == 0;
        if terminal {
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            // SAFETY: as above, with a copy of the terminal's own settings.
            unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &quiet) };
        }
        EchoOff {
            fd,
            saved: terminal.then_some(saved),
        }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings read in `new` on the same open fd.
            unsafe { libc::tcsetattr(self.fd.as_raw_fd(), libc::TCSANOW, saved) };
        }
    }
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
    read_quietly(&tty, prompt)
}

fn read_quietly(tty: &File, prompt: &str) -> Result<Zeroizing<Vec<u8>>> {
    let _quiet = EchoOff::new(tty.as_fd());
    let mut writer = tty;
    writer
        .write_all(prompt.as_bytes())
        .map_err(Error::io("/dev/tty"))?;
    let line = read_line(tty)?;
    Ok(Zeroizing::new(line.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A pseudo-terminal: (controller, terminal), with the kernel's default settings.
    fn pty() -> (File, File) {
        let (mut controller, mut terminal) = (-1, -1);
        // SAFETY: openpty writes two new fds into the integers we own; null name,
        // settings and size ask for the defaults.
        let rc = unsafe {
            libc::openpty(
                &mut controller,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened and are owned by nothing else.
        unsafe {
            (
                File::from(OwnedFd::from_raw_fd(controller)),
                File::from(OwnedFd::from_raw_fd(terminal)),
            )
        }
    }

    fn local_flags(tty: &File) -> libc::tcflag_t {
        // SAFETY: as in EchoOff::new.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `tty` is an open terminal.
        assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
        t.c_lflag
    }

    #[test]
    fn the_guard_turns_echo_off_and_restores_the_terminal() {
        let (_controller, terminal) = pty();
        let before = local_flags(&terminal);
        assert_ne!(before & libc::ECHO, 0);
        {
            let _quiet = EchoOff::new(terminal.as_fd());
            assert_eq!(local_flags(&terminal) & libc::ECHO, 0);
            assert_ne!(local_flags(&terminal) & libc::ECHONL, 0);
        }
        assert_eq!(local_flags(&terminal), before);
        // Not a terminal: nothing to save, nothing to restore.
        let file = tempfile::tempfile().unwrap();
        drop(EchoOff::new(file.as_fd()));
    }

    #[test]
    fn echo_comes_back_after_a_passphrase_read_succeeds_or_fails() {
        let (controller, terminal) = pty();
        let before = local_flags(&terminal);
        (&controller).write_all(b"secret words\n").unwrap();
        let got = read_quietly(&terminal, "Passphrase: ").unwrap();
        assert_eq!(&got[..], b"secret words");
        assert_eq!(local_flags(&terminal), before);

        // A line that is not UTF-8 makes the read fail: echo must come back all the same.
        (&controller).write_all(b"\xff\xfe\n").unwrap();
        assert!(read_quietly(&terminal, "Passphrase: ").is_err());
        assert_eq!(local_flags(&terminal), before);
    }
}
