//! systemd password agent (dracut): watches systemd's `ask.*` password requests and
//! answers those for devices with a clevis binding, while other agents keep asking.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::early::Early;
use super::{bindings, recover_until, status};
use crate::error::Result;
use crate::luks::Volume;
use crate::pin::Context;

/// An `ask.*` request of the systemd password-agent protocol.
#[derive(Debug, Default, PartialEq)]
pub struct Ask {
    pub socket: PathBuf,
    pub id: String,
    /// CLOCK_MONOTONIC microseconds; 0 means no deadline.
    pub not_after: u64,
}

pub fn parse_ask(text: &str) -> Option<Ask> {
    let mut ask = Ask::default();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[Ask]";
            continue;
        }
        if !in_section {
            continue;
        }
        match line.split_once('=') {
            Some(("Socket", v)) => ask.socket = PathBuf::from(v),
            Some(("Id", v)) => ask.id = v.to_owned(),
            Some(("NotAfter", v)) => ask.not_after = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (!ask.socket.as_os_str().is_empty()).then_some(ask)
}

fn monotonic_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

const ASK_DIR: &str = "/run/systemd/ask-password";

/// Watches systemd's password requests and answers those for devices with a clevis
/// binding. Other agents (the console) keep asking; the first answer wins.
pub fn agent(ctx: &Context) -> Result<()> {
    let early = Early::start(ctx);
    let mut handled: Vec<PathBuf> = Vec::new();
    let watch = InotifyWatch::new(Path::new(ASK_DIR));
    loop {
        let mut asks: Vec<PathBuf> = std::fs::read_dir(ASK_DIR)
            .map(|e| {
                e.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("ask."))
                    })
                    .collect()
            })
            .unwrap_or_default();
        asks.sort();
        handled.retain(|h| asks.contains(h));
        for path in asks {
            if handled.contains(&path) {
                continue;
            }
            handled.push(path.clone());
            let Some(ask) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| parse_ask(&t))
            else {
                continue;
            };
            let Some(device) = ask.id.strip_prefix("cryptsetup:") else {
                continue;
            };
            let device = PathBuf::from(device.split_whitespace().next().unwrap_or(device));
            let ctx = *ctx;
            let early = early.clone();
            std::thread::spawn(move || answer(&path, &ask, &device, &ctx, &early));
        }
        watch.wait(Duration::from_secs(1));
    }
}

fn answer(ask_file: &Path, ask: &Ask, device: &Path, ctx: &Context, early: &Early) {
    let Ok(mut volume) = Volume::open(device) else {
        return;
    };
    let found = bindings(&mut volume);
    if found.is_empty() {
        return;
    }
    let deadline = (ask.not_after != 0).then(|| {
        Instant::now() + Duration::from_micros(ask.not_after.saturating_sub(monotonic_micros()))
    });
    // Stop once the request is gone: someone typed the passphrase, or it timed out.
    let gone = Arc::new(AtomicBool::new(false));
    let watcher = {
        let gone = gone.clone();
        let file = ask_file.to_owned();
        std::thread::spawn(move || {
            while file.exists() {
                std::thread::sleep(Duration::from_millis(200));
            }
            gone.store(true, Ordering::SeqCst);
        })
    };
    let label = device.display().to_string();
    let recovered = early
        .take(device, &gone, deadline)
        .or_else(|| recover_until(&label, &found, ctx, &gone, deadline));
    if let Some((slots, key)) = recovered {
        // The preferred priority of the bound slot makes systemd-cryptsetup try it first.
        let mut reply = Zeroizing::new(Vec::with_capacity(key.len() + 1));
        reply.push(b'+');
        reply.extend_from_slice(&key);
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to(&reply, &ask.socket));
        match sent {
            Ok(_) => status(&format!(
                "{label}: key for keyslot {slots:?} handed to systemd-cryptsetup"
            )),
            Err(e) => status(&format!("{label}: cannot answer the password request: {e}")),
        }
    }
    drop(watcher);
}

/// inotify on a directory, to wake when a request appears; a timed sleep where inotify
/// is not available.
struct InotifyWatch {
    fd: i32,
}

impl InotifyWatch {
    fn new(dir: &Path) -> InotifyWatch {
        let _ = std::fs::create_dir_all(dir);
        // SAFETY: plain syscalls; the fd is owned by this struct and closed on drop.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd >= 0 {
            let path =
                std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: fd is a valid inotify fd; path is NUL-terminated.
            unsafe {
                libc::inotify_add_watch(
                    fd,
                    path.as_ptr(),
                    libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_DELETE,
                )
            };
        }
        InotifyWatch { fd }
    }

    fn wait(&self, timeout: Duration) {
        if self.fd < 0 {
            std::thread::sleep(timeout);
            return;
        }
        let mut poll = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; then drain the events into a local buffer.
        unsafe {
            if libc::poll(&mut poll, 1, timeout.as_millis() as i32) > 0 {
                let mut buf = [0u8; 4096];
                libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
}

impl Drop for InotifyWatch {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: closing the fd this struct owns.
            unsafe { libc::close(self.fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_systemd_ask_file() {
        let text = "[Ask]\nPID=123\nSocket=/run/systemd/ask-password/sck.1\nAcceptCached=1\nEcho=0\nNotAfter=5000000\nId=cryptsetup:/dev/disk/by-uuid/abc\nMessage=Please enter passphrase\n";
        let ask = parse_ask(text).unwrap();
        assert_eq!(ask.socket, PathBuf::from("/run/systemd/ask-password/sck.1"));
        assert_eq!(ask.id, "cryptsetup:/dev/disk/by-uuid/abc");
        assert_eq!(ask.not_after, 5_000_000);
        assert_eq!(parse_ask("[Other]\nSocket=/x\n"), None);
    }
}
