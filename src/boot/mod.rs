//! Unlocking at boot: the retry loop shared by every mode, and the three modes —
//! a systemd password agent (dracut, `agent`), cryptroot's passfifo (initramfs-tools,
//! `passfifo`), and standalone (a console prompt racing the network, for hand-built
//! images, `standalone`) — plus what an image generator asks before it builds: whether
//! a device's bindings need the network at all.
//!
//! In every mode all tokens are tried at once, each attempt is bounded by the HTTP
//! timeouts, failures back off with jitter (honouring `Retry-After`), and progress goes to
//! the console through /dev/kmsg. No key is ever logged.

mod agent;
mod early;
mod passfifo;
mod route;
mod standalone;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nbde_proto::ClevisJwe;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::pin::{self, Context};

pub use agent::{Ask, agent, parse_ask};
pub use passfifo::passfifo;
pub use route::RouteWatch;
pub use standalone::standalone;

/// One line on the console, through the kernel log so it shows wherever the kernel prints
/// and stays in its log. A program prompting on the console may have turned the kernel's
/// console output off: cryptsetup's askpass does (`klogctl(SYSLOG_ACTION_CONSOLE_OFF)`)
/// until its prompt is answered. Then the line goes to the console as well, or the person at
/// the prompt never learns that the server refused or waits for an approval.
pub fn status(message: &str) {
    let line = format!("nbde-unlock: {message}\n");
    let logged = write_line(Path::new("/dev/kmsg"), &format!("<5>{line}"));
    let shown = logged && !kernel_console_off(&std::fs::read_to_string(PRINTK).unwrap_or_default());
    if !shown && !write_line(Path::new("/dev/console"), &line) && !logged {
        // Not eprintln!, which panics (and a release build aborts) when stderr is gone: a
        // status line is worth less than the unlock it reports on.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// The kernel's log levels: the console's current level first, then the default message
/// level, the lowest the console's may be set to, and its default.
const PRINTK: &str = "/proc/sys/kernel/printk";

/// Whether the kernel's console output is off: its level set to the lowest allowed, as
/// `SYSLOG_ACTION_CONSOLE_OFF` does. A `quiet` boot lowers it only to warnings, and there
/// a notice is meant not to show.
fn kernel_console_off(printk: &str) -> bool {
    let levels: Vec<u8> = printk
        .split_whitespace()
        .map_while(|l| l.parse().ok())
        .collect();
    matches!(levels[..], [console, _, minimum, ..] if console <= minimum)
}

/// Writes `line` in one write; false when that fails. A terminal is opened without
/// becoming the caller's controlling terminal, and without blocking: a serial console
/// held up by flow control must not hold up the unlock whose progress it reports.
fn write_line(path: &Path, line: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .is_ok()
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

/// A clevis binding to try: its keyslots and its pin, parsed once for every round.
#[derive(Clone)]
pub struct Binding {
    pub keyslots: Vec<u32>,
    pub pin: Arc<ClevisJwe>,
}

/// The bindings of active keyslots, each pin parsed once, and why the others cannot be
/// used.
pub fn usable_bindings(volume: &mut Volume) -> (Vec<Binding>, Vec<Error>) {
    let mut usable = Vec::new();
    let mut unusable = Vec::new();
    if let Err(sovereign) = volume.refuse_if_sovereign() {
        return (usable, vec![sovereign]);
    }
    for b in volume.bindings().into_iter().filter(|b| b.active) {
        match b.jwe.map(ClevisJwe::parse) {
            Ok(Ok(pin)) => usable.push(Binding {
                keyslots: vec![b.slot],
                pin: Arc::new(pin),
            }),
            Ok(Err(e)) => unusable.push(Error::Config(format!("keyslot {}: {e}", b.slot))),
            Err(reason) => unusable.push(Error::Config(reason)),
        }
    }
    (usable, unusable)
}

/// The usable bindings of a volume being unlocked at boot; the others are reported.
pub fn bindings(volume: &mut Volume) -> Vec<Binding> {
    let (usable, unusable) = usable_bindings(volume);
    if let [Error::Sovereign(_)] = unusable[..] {
        status(&format!(
            "{}: sovereign: no automatic unlock, asking for the user key",
            volume.path().display()
        ));
        return usable;
    }
    for reason in unusable {
        status(&format!("{}: skipping {reason}", volume.path().display()));
    }
    usable
}

/// How soon to try again while this machine has no route to any server, at the latest:
/// early in boot the network comes up any moment, and an attempt that cannot leave the
/// machine costs no server anything, so waiting out a backoff would only delay the boot.
/// A change of the machine's links, addresses or routes (`RouteWatch`) ends it sooner.
pub const NO_ROUTE_RETRY: Duration = Duration::from_millis(250);

/// What the console says while this machine has no route to any server.
pub const NO_ROUTE_WORDS: &str = "network not up yet, no route to the server(s)";

/// Whether every failure is this machine having no route to its server.
pub fn no_route_anywhere(failures: &[Error]) -> bool {
    let leaves: Vec<&Error> = failures.iter().flat_map(Error::leaves).collect();
    !leaves.is_empty()
        && leaves
            .iter()
            .all(|leaf| matches!(leaf, Error::Network { no_route: true, .. }))
}

/// Why a round of attempts failed, in words for the console, and how long to wait.
fn explain(failures: &[Error], backoff: &mut Backoff) -> (String, Duration) {
    if no_route_anywhere(failures) {
        return (NO_ROUTE_WORDS.into(), NO_ROUTE_RETRY);
    }
    let (words, retry_after) = describe(failures);
    let delay = backoff.next(retry_after);
    (
        format!("{words}; retry in {} s", delay.as_secs().max(1)),
        delay,
    )
}

/// Why attempts failed, in words for a person (a server by its origin only, never a key
/// or a kid), and the `Retry-After` of a request waiting for approval.
pub fn describe(failures: &[Error]) -> (String, Option<u64>) {
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
            Error::Network { url, detail, .. } if detail.contains("clock") => {
                format!("{}: {detail}", origin(url))
            }
            Error::Network { url, .. } => format!("server unreachable: {}", origin(url)),
            other => other.to_string(),
        };
        if !words.contains(&text) {
            words.push(text);
        }
    }
    (words.join("; "), retry_after)
}

/// Whether trying again may help: the network or the server may come back, an approval
/// may come. A policy refusal, a missing key or a malformed pin stays as it is.
pub fn worth_retrying(error: &Error) -> bool {
    error.leaves().into_iter().any(|leaf| match leaf {
        Error::Network { .. } => true,
        // At boot the TPM driver may come up after us.
        Error::Tpm2 { transient, .. } => *transient,
        Error::Server {
            status, problem, ..
        } => *status >= 500 || *status == 429 || problem.as_deref() == Some("pending-approval"),
        _ => false,
    })
}

/// `scheme://host:port` of a URL: enough to say which server, without paths or kids.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// The keyslots of the binding that answered, and its key.
pub type Recovered = (Vec<u32>, Zeroizing<Vec<u8>>);

/// One round: every binding at once; the first key that `accept` takes (given its
/// keyslots) wins, and nothing waits for the slower ones. Otherwise every failure.
pub fn recover_once(
    bindings: &[Binding],
    ctx: &Context,
    mut accept: impl FnMut(&[u32], &[u8]) -> Result<()>,
) -> std::result::Result<Recovered, Vec<Error>> {
    let (sender, receiver) = mpsc::channel();
    for binding in bindings {
        let sender = sender.clone();
        let binding = binding.clone();
        let ctx = *ctx;
        std::thread::spawn(move || {
            let _ = sender.send((binding.keyslots, pin::recover(&binding.pin, &ctx)));
        });
    }
    drop(sender);
    let mut failures = Vec::new();
    for (keyslots, result) in receiver {
        match result.and_then(|key| accept(&keyslots, &key).map(|()| key)) {
            Ok(key) => return Ok((keyslots, key)),
            Err(e) => failures.push(e),
        }
    }
    Err(failures)
}

/// Tries every binding at once, again and again, until one recovers its key, `stop` is
/// set, or `deadline` passes. Returns the winning binding's keyslots and key.
pub fn recover_until(
    label: &str,
    bindings: &[Binding],
    ctx: &Context,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> Option<Recovered> {
    // A request already answered (a typed passphrase) or timed out asks no server.
    if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let mut backoff = Backoff::new();
    let mut said = String::new();
    let route = RouteWatch::new();
    status(&format!("{label}: asking {} binding(s)", bindings.len()));
    loop {
        let failures = match recover_once(bindings, ctx, |_, _| Ok(())) {
            Ok(found) => {
                status(&format!("{label}: key recovered"));
                return Some(found);
            }
            Err(failures) => failures,
        };
        let no_route = no_route_anywhere(&failures);
        let (message, delay) = explain(&failures, &mut backoff);
        // The no-route message repeats four times a second until the network is up: once.
        if message != said {
            status(&format!("{label}: {message}"));
            said = message;
        }
        // With no route, the next try comes as soon as the network changes.
        let wake = Instant::now() + delay;
        while Instant::now() < wake {
            if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let slice =
                Duration::from_millis(100).min(wake.saturating_duration_since(Instant::now()));
            if no_route {
                if route.wait(slice) {
                    break;
                }
            } else {
                std::thread::sleep(slice);
            }
        }
    }
}

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

/// Whether any clevis binding of an active keyslot on `devices` needs the network to
/// recover its key (a sovereign volume's never does). Every device must be a readable LUKS
/// volume. Writes nothing: image generators ask this at build time.
pub fn needs_network(devices: &[PathBuf]) -> Result<bool> {
    any_binding(devices, ClevisJwe::needs_network)
}

/// Whether any such binding uses the tpm2 pin (alone or in sss): then an image needs
/// `nbde-tpm2` and the TSS libraries, and otherwise does not.
pub fn needs_tpm2(devices: &[PathBuf]) -> Result<bool> {
    any_binding(devices, |pin| pin.uses("tpm2"))
}

fn any_binding(devices: &[PathBuf], wanted: impl Fn(&ClevisJwe) -> bool) -> Result<bool> {
    let mut needed = false;
    for device in devices {
        let mut volume = Volume::open(device)?;
        if volume.marker().is_some() {
            continue;
        }
        needed |= volume
            .bindings()
            .into_iter()
            .filter(|b| b.active)
            .filter_map(|b| ClevisJwe::parse(b.jwe.ok()?).ok())
            .any(|pin| wanted(&pin));
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_kernel_console_is_off_only_at_its_lowest_level() {
        // As askpass leaves it, a plain boot, a `quiet` one, and an unreadable file.
        assert!(kernel_console_off("1\t4\t1\t7\n"));
        assert!(!kernel_console_off("7\t4\t1\t7\n"));
        assert!(!kernel_console_off("4\t4\t1\t7\n"));
        assert!(!kernel_console_off(""));
    }

    #[test]
    fn a_console_that_takes_no_more_output_does_not_hold_up_a_status_line() {
        // A pseudo-terminal whose other end nobody reads: its buffer fills, as a serial
        // console's does when flow control stops it.
        let (terminal, _unread_end) = unread_terminal();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let line = format!("nbde-unlock: {}\n", "x".repeat(1000));
            let written: Vec<bool> = (0..1000).map(|_| write_line(&terminal, &line)).collect();
            let _ = done.send(written);
        });
        let written = finished
            .recv_timeout(Duration::from_secs(20))
            .expect("a write to a full terminal blocked");
        assert!(written[0], "the first line fits");
        assert!(!written[999], "a full terminal takes no more");
    }

    /// A new pseudo-terminal: the path of its terminal end, and its other end, open.
    fn unread_terminal() -> (PathBuf, std::fs::File) {
        use std::os::fd::FromRawFd;
        // SAFETY: posix_openpt returns a new descriptor or -1; grantpt, unlockpt and
        // ptsname_r only read it, and ptsname_r writes at most name.len() bytes.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt");
            let other_end = std::fs::File::from_raw_fd(fd);
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut name = [0u8; 64];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr().cast(), name.len()), 0);
            let end = name.iter().position(|&b| b == 0).unwrap();
            let path = PathBuf::from(std::str::from_utf8(&name[..end]).unwrap());
            (path, other_end)
        }
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
                no_route: false,
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
    fn no_route_anywhere_retries_at_once_and_keeps_the_backoff() {
        let down = |url: &str| Error::Network {
            url: url.into(),
            detail: "Network is unreachable (os error 101)".into(),
            no_route: true,
        };
        let mut backoff = Backoff::new();
        let failures = vec![down("http://a/rec"), down("http://b/rec")];
        assert_eq!(explain(&failures, &mut backoff).1, NO_ROUTE_RETRY);
        assert_eq!(backoff.attempt, 0);
        // One server reached (refused): the backoff applies.
        let mixed = vec![
            down("http://a/rec"),
            Error::Network {
                url: "http://b/rec".into(),
                detail: "refused".into(),
                no_route: false,
            },
        ];
        assert!(explain(&mixed, &mut backoff).1 >= Duration::from_millis(500));
    }
}
