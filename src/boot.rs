//! Unlocking at boot: the retry loop shared by every mode, and the three modes —
//! a systemd password agent (dracut), cryptroot's passfifo (initramfs-tools), and
//! standalone (a console prompt racing the network, for hand-built images).
//!
//! In every mode all tokens are tried at once, each attempt is bounded by the HTTP
//! timeouts, failures back off with jitter (honouring `Retry-After`), and progress goes to
//! the console through /dev/kmsg. No key is ever logged.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nbde_proto::Jwe;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::pin::{self, Context};
use libcryptsetup_rs::consts::flags::CryptActivate;

/// One line on the console, through the kernel log so it shows wherever the kernel prints.
pub fn status(message: &str) {
    let line = format!("<5>nbde-unlock: {message}\n");
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut k| k.write_all(line.as_bytes()))
        .is_ok();
    if !wrote {
        eprintln!("nbde-unlock: {message}");
    }
}

/// Exponential backoff from 1 s to 30 s, each delay drawn from its upper half so that
/// many machines booting together do not retry in step.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    /// The next delay; a server's `Retry-After` wins when it is given (capped at MAX).
    pub fn next(&mut self, retry_after: Option<u64>) -> Duration {
        let ceiling = match retry_after {
            Some(seconds) => return Duration::from_secs(seconds.clamp(1, Self::MAX.as_secs())),
            None => Duration::from_secs(1u64 << self.attempt.min(5)).min(Self::MAX),
        };
        self.attempt += 1;
        let mut byte = [0u8; 1];
        let _ = getrandom::fill(&mut byte);
        ceiling / 2 + ceiling / 2 * u32::from(byte[0]) / 255
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// A clevis binding to try: its keyslots and its JWE.
#[derive(Clone)]
pub struct Binding {
    pub keyslots: Vec<u32>,
    pub jwe: Jwe,
}

pub fn bindings(volume: &mut Volume) -> Vec<Binding> {
    let path = volume.path().display().to_string();
    volume
        .bindings()
        .into_iter()
        .filter(|b| b.active)
        .filter_map(|b| match b.jwe {
            Ok(jwe) => Some(Binding {
                keyslots: vec![b.slot],
                jwe,
            }),
            Err(reason) => {
                status(&format!("{path}: skipping {reason}"));
                None
            }
        })
        .collect()
}

/// Why a round of attempts failed, in words for the console, and how long to wait.
fn explain(failures: &[Error], backoff: &mut Backoff) -> (String, Duration) {
    let leaves: Vec<&Error> = failures.iter().flat_map(Error::leaves).collect();
    let mut retry_after = None;
    let mut words = Vec::new();
    for leaf in &leaves {
        let text = match leaf {
            Error::Server {
                url,
                problem: Some(kind),
                retry_after: hint,
                ..
            } if kind == "pending-approval" => {
                retry_after = retry_after.or(*hint);
                format!("waiting for approval at {}", origin(url))
            }
            Error::Server {
                url,
                problem: Some(kind),
                ..
            } => format!("refused by policy ({kind}) at {}", origin(url)),
            Error::Server { url, status, .. } => {
                format!("server error {status} at {}", origin(url))
            }
            Error::Network { url, .. } => format!("server unreachable: {}", origin(url)),
            other => other.to_string(),
        };
        if !words.contains(&text) {
            words.push(text);
        }
    }
    let delay = backoff.next(retry_after);
    (
        format!(
            "{}; retry in {} s",
            words.join("; "),
            delay.as_secs().max(1)
        ),
        delay,
    )
}

/// `scheme://host:port` of a URL: enough to say which server, without paths or kids.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Tries every binding at once, again and again, until one recovers its key, `stop` is
/// set, or `deadline` passes. Returns the winning binding's keyslots and key.
pub fn recover_until(
    label: &str,
    bindings: &[Binding],
    ctx: &Context,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> Option<(Vec<u32>, Zeroizing<Vec<u8>>)> {
    let mut backoff = Backoff::new();
    status(&format!("{label}: asking {} binding(s)", bindings.len()));
    loop {
        let (sender, receiver) = mpsc::channel();
        for binding in bindings {
            let sender = sender.clone();
            let binding = binding.clone();
            let ctx = *ctx;
            std::thread::spawn(move || {
                let _ = sender.send((binding.keyslots, pin::decrypt(&binding.jwe, &ctx)));
            });
        }
        drop(sender);
        let mut failures = Vec::new();
        for (keyslots, result) in receiver {
            match result {
                Ok(key) => {
                    status(&format!("{label}: key recovered"));
                    return Some((keyslots, key));
                }
                Err(e) => failures.push(e),
            }
        }
        let (message, delay) = explain(&failures, &mut backoff);
        status(&format!("{label}: {message}"));
        let wake = Instant::now() + delay;
        while Instant::now() < wake {
            if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------- standalone

/// Block devices the kernel knows, as /dev paths.
fn block_devices() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/class/block")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| Path::new("/dev").join(e.file_name()))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn mapper_exists(name: &str) -> bool {
    Path::new("/dev/mapper").join(name).exists()
}

enum Opened {
    Network { device: PathBuf, slot: u32 },
    Passphrase { device: PathBuf },
}

/// Opens every LUKS2 device that has a clevis binding (or the `devices` given), racing
/// the network against a passphrase typed on standard input.
pub fn standalone(devices: Vec<PathBuf>, ctx: &Context, prompt: bool) -> Result<()> {
    let candidates = if devices.is_empty() {
        block_devices()
    } else {
        devices
    };
    let mut pending: Vec<(PathBuf, String)> = Vec::new();
    for device in candidates {
        let Ok(mut volume) = Volume::open(&device) else {
            continue;
        };
        if bindings(&mut volume).is_empty() {
            continue;
        }
        let name = format!("luks-{}", volume.uuid()?);
        if mapper_exists(&name) {
            continue;
        }
        status(&format!("{}: unlocking as {name}", device.display()));
        pending.push((device, name));
    }
    if pending.is_empty() {
        status("no LUKS2 device with a clevis binding");
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (events, opened) = mpsc::channel();
    for (device, name) in pending.clone() {
        let events = events.clone();
        let stop = stop.clone();
        let ctx = *ctx;
        std::thread::spawn(move || {
            let Ok(mut volume) = Volume::open(&device) else {
                return;
            };
            let found = bindings(&mut volume);
            let label = device.display().to_string();
            while let Some((slots, key)) = recover_until(&label, &found, &ctx, &stop, None) {
                for slot in slots {
                    if volume
                        .activate(&name, Some(slot), &key, CryptActivate::empty())
                        .is_ok()
                    {
                        let _ = events.send(Opened::Network { device, slot });
                        return;
                    }
                }
                if mapper_exists(&name) {
                    return;
                }
                status(&format!("{label}: recovered key does not open its keyslot"));
            }
        });
    }
    if prompt {
        let events = events.clone();
        let waiting = Arc::new(Mutex::new(pending.clone()));
        std::thread::spawn(move || console_prompt(&waiting, &events));
    }
    drop(events);

    let mut remaining: Vec<PathBuf> = pending.into_iter().map(|(d, _)| d).collect();
    while !remaining.is_empty() {
        let Ok(event) = opened.recv() else { break };
        let device = match event {
            Opened::Network { device, slot } => {
                status(&format!(
                    "{}: keyslot {slot} opened through the network",
                    device.display()
                ));
                device
            }
            Opened::Passphrase { device } => {
                status(&format!(
                    "{}: opened with the typed passphrase",
                    device.display()
                ));
                device
            }
        };
        remaining.retain(|d| *d != device);
    }
    stop.store(true, Ordering::SeqCst);
    if remaining.is_empty() {
        Ok(())
    } else {
        Err(Error::Config("some devices stayed locked".into()))
    }
}

/// Reads passphrases from standard input (echo off on a terminal) and tries each on the
/// devices still locked, in any keyslot, as a person at the console expects.
fn console_prompt(waiting: &Mutex<Vec<(PathBuf, String)>>, events: &mpsc::Sender<Opened>) {
    let stdin = std::io::stdin();
    let fd = 0;
    // SAFETY: termios is plain data, filled by tcgetattr on fd 0.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 stays open for the life of the process.
    let terminal = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if terminal {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above, with a copy of the terminal's own settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    loop {
        let names: Vec<String> = match waiting.lock() {
            Ok(w) => w.iter().map(|(d, _)| d.display().to_string()).collect(),
            Err(_) => return,
        };
        if names.is_empty() {
            break;
        }
        eprint!(
            "Passphrase for {} (or wait for the network): ",
            names.join(", ")
        );
        let mut line = Zeroizing::new(String::new());
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let passphrase = line.trim_end_matches(['\n', '\r']);
        let Ok(mut list) = waiting.lock() else { return };
        let mut opened_any = false;
        list.retain(|(device, name)| {
            if mapper_exists(name) {
                return false;
            }
            let opened = Volume::open(device)
                .and_then(|mut v| {
                    v.activate(name, None, passphrase.as_bytes(), CryptActivate::empty())
                })
                .is_ok();
            if opened {
                opened_any = true;
                let _ = events.send(Opened::Passphrase {
                    device: device.clone(),
                });
            }
            !opened
        });
        if !opened_any {
            eprintln!("nbde-unlock: wrong passphrase");
        }
    }
    if terminal {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
}

// ---------------------------------------------------------------- systemd agent

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
            std::thread::spawn(move || answer(&path, &ask, &device, &ctx));
        }
        watch.wait(Duration::from_secs(1));
    }
}

fn answer(ask_file: &Path, ask: &Ask, device: &Path, ctx: &Context) {
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
    if let Some((slots, key)) = recover_until(&label, &found, ctx, &gone, deadline) {
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

// ---------------------------------------------------------------- cryptroot passfifo

const PASSFIFO: &str = "/lib/cryptsetup/passfifo";

/// One line of /cryptroot/crypttab: target name and source device.
fn crypttab(path: &Path) -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?.to_owned();
            let source = fields.next()?;
            let device = if let Some(uuid) = source.strip_prefix("UUID=") {
                PathBuf::from(format!("/dev/disk/by-uuid/{uuid}"))
            } else if let Some(label) = source.strip_prefix("LABEL=") {
                PathBuf::from(format!("/dev/disk/by-label/{label}"))
            } else {
                PathBuf::from(source)
            };
            Some((name, device))
        })
        .collect()
}

/// Feeds cryptroot: for each crypttab entry in order (cryptroot's own order) whose device
/// has a clevis binding, recover its key and write it into askpass's fifo when askpass
/// asks; the console prompt stays with askpass, and whichever answer comes first wins.
pub fn passfifo(crypttab_path: &Path, ctx: &Context) -> Result<()> {
    let stop = AtomicBool::new(false);
    for (name, device) in crypttab(crypttab_path) {
        // udev may still be settling.
        let appeared = Instant::now() + Duration::from_secs(30);
        while !device.exists() && Instant::now() < appeared {
            std::thread::sleep(Duration::from_millis(100));
        }
        let Ok(mut volume) = Volume::open(&device) else {
            continue;
        };
        let found = bindings(&mut volume);
        if found.is_empty() {
            continue;
        }
        let label = format!("{} ({name})", device.display());
        while !mapper_exists(&name) {
            let Some((_, key)) = recover_until(&label, &found, ctx, &stop, None) else {
                break;
            };
            // Write only when askpass is listening, and only while the target is not open.
            while !Path::new(PASSFIFO).exists() && !mapper_exists(&name) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if mapper_exists(&name) {
                break;
            }
            if let Ok(mut fifo) = std::fs::OpenOptions::new().write(true).open(PASSFIFO) {
                let _ = fifo.write_all(&key);
            }
            let settle = Instant::now() + Duration::from_secs(10);
            while !mapper_exists(&name) && Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if mapper_exists(&name) {
            status(&format!("{label}: opened"));
        }
    }
    Ok(())
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

    #[test]
    fn backoff_grows_to_thirty_seconds_and_honours_retry_after() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.next(None)).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[7] >= Duration::from_secs(15) && delays[7] <= Backoff::MAX);
        assert_eq!(b.next(Some(7)), Duration::from_secs(7));
        assert_eq!(b.next(Some(3600)), Backoff::MAX);
    }

    #[test]
    fn explains_failures_without_paths_or_keys() {
        let failures = vec![
            Error::Server {
                url: "http://10.0.2.100:7500/o/acme/d/web1/rec/KID".into(),
                status: 403,
                problem: Some("pending-approval".into()),
                retry_after: Some(4),
            },
            Error::Network {
                url: "http://10.0.2.101/rec/KID".into(),
                detail: "refused".into(),
            },
        ];
        let (text, delay) = explain(&failures, &mut Backoff::new());
        assert_eq!(
            text,
            "waiting for approval at http://10.0.2.100:7500; server unreachable: http://10.0.2.101; retry in 4 s"
        );
        assert_eq!(delay, Duration::from_secs(4));
    }

    #[test]
    fn reads_cryptroot_crypttab() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crypttab");
        std::fs::write(
            &path,
            "# comment\ncryptroot UUID=1234 none luks,initramfs\nswap /dev/vdb none luks\n",
        )
        .unwrap();
        assert_eq!(
            crypttab(&path),
            vec![
                (
                    "cryptroot".to_owned(),
                    PathBuf::from("/dev/disk/by-uuid/1234")
                ),
                ("swap".to_owned(), PathBuf::from("/dev/vdb")),
            ]
        );
    }
}
