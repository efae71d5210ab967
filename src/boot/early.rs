//! Keys recovered before systemd-cryptsetup asks for them (the dracut agent).
//!
//! systemd-cryptsetup asks for a password about a second after its unit starts (on a slow
//! machine), and the network is often up before that: an agent that only starts its
//! exchange when asked adds the exchange to the boot. So the agent starts, per LUKS device
//! the initrd is told to open (`rd.luks.uuid=`, `rd.luks.name=`, the initrd's crypttab),
//! one round of recovery as soon as the device and a route to its server exist, and keeps
//! the key (zeroized when dropped) until that device's request comes. One round only: a
//! refusal, an approval to wait for or an unreachable server is left to the request's own
//! retry loop, which a typed passphrase can end. A device already opened (by a typed
//! passphrase, a token plugin) is not asked for.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{
    NO_ROUTE_RETRY, NO_ROUTE_WORDS, Recovered, RouteWatch, bindings, no_route_anywhere,
    recover_once, status,
};
use crate::luks::Volume;
use crate::pin::Context;

/// How often to look for a device node, a route, or a device opened by someone else.
const POLL: Duration = Duration::from_millis(100);

enum State {
    /// A round is on its way (or waits for the device or a route).
    Running,
    Ready(Recovered),
    /// Nothing to hand over: no binding, the round failed, or the key was taken.
    Done,
}

struct Entry {
    device: PathBuf,
    /// The device's node, once it exists: requests are matched by `st_rdev`.
    rdev: Option<u64>,
    state: State,
}

/// The keys recovered early, one entry per device the initrd is told to open.
pub struct Early {
    entries: Mutex<Vec<Entry>>,
    changed: Condvar,
}

impl Early {
    /// Starts one background round per device named on the kernel command line or in the
    /// initrd's crypttab.
    pub fn start(ctx: &Context) -> Arc<Early> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let crypttab = std::fs::read_to_string("/etc/crypttab").unwrap_or_default();
        let devices = wanted_devices(&cmdline, &crypttab);
        let early = Arc::new(Early {
            entries: Mutex::new(
                devices
                    .iter()
                    .map(|device| Entry {
                        device: device.clone(),
                        rdev: None,
                        state: State::Running,
                    })
                    .collect(),
            ),
            changed: Condvar::new(),
        });
        for (index, device) in devices.into_iter().enumerate() {
            let early = early.clone();
            let ctx = *ctx;
            std::thread::spawn(move || {
                let state = early.recover(index, &device, &ctx);
                early.set(index, |entry| entry.state = state);
            });
        }
        early
    }

    fn set(&self, index: usize, change: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut entries[index]);
        self.changed.notify_all();
    }

    /// The round for one device: waits for its node, then for a route, then asks once.
    fn recover(&self, index: usize, device: &Path, ctx: &Context) -> State {
        let rdev = loop {
            if let Ok(meta) = std::fs::metadata(device) {
                break meta.rdev();
            }
            std::thread::sleep(POLL);
        };
        self.set(index, |entry| entry.rdev = Some(rdev));
        let Ok(mut volume) = Volume::open(device) else {
            return State::Done;
        };
        let found = bindings(&mut volume);
        if found.is_empty() {
            return State::Done;
        }
        let label = device.display().to_string();
        status(&format!(
            "{label}: asking {} binding(s) before the password request",
            found.len()
        ));
        let route = RouteWatch::new();
        let mut said_no_route = false;
        loop {
            if is_open(rdev) || self.taken(index) {
                return State::Done;
            }
            match recover_once(&found, ctx, |_, _| Ok(())) {
                Ok(recovered) => {
                    status(&format!("{label}: key recovered"));
                    return State::Ready(recovered);
                }
                // Early in boot the network comes up any moment; an attempt that cannot
                // leave the machine costs no server anything.
                Err(failures) if no_route_anywhere(&failures) => {
                    // Said once: a password request waiting for this round says nothing,
                    // and a network that never comes would otherwise leave no word of why.
                    if !said_no_route {
                        status(&format!("{label}: {NO_ROUTE_WORDS}"));
                        said_no_route = true;
                    }
                    route.wait(NO_ROUTE_RETRY);
                }
                Err(_) => return State::Done,
            }
        }
    }

    fn taken(&self, index: usize) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        matches!(entries[index].state, State::Done)
    }

    /// The key recovered early for `device`, waiting while its round runs, until `gone`
    /// is set or `deadline` passes. None: no early round for it, or it found no key; the
    /// caller asks the servers itself. A key is handed out once.
    pub fn take(
        &self,
        device: &Path,
        gone: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Option<Recovered> {
        let rdev = std::fs::metadata(device).ok()?.rdev();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // A node the round has not seen yet (it looks every POLL): matched here, so a
        // request never runs a round of its own beside ours.
        for entry in entries.iter_mut().filter(|e| e.rdev.is_none()) {
            entry.rdev = std::fs::metadata(&entry.device).ok().map(|m| m.rdev());
        }
        loop {
            let entry = entries.iter_mut().find(|e| e.rdev == Some(rdev))?;
            match std::mem::replace(&mut entry.state, State::Done) {
                State::Ready(recovered) => return Some(recovered),
                State::Done => return None,
                State::Running => entry.state = State::Running,
            }
            if gone.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                // Nobody waits for this round any more: it stops at its next attempt.
                entry.state = State::Done;
                return None;
            }
            entries = self
                .changed
                .wait_timeout(entries, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Whether device-mapper already holds the block device `rdev` (it was opened).
fn is_open(rdev: u64) -> bool {
    let dev = format!(
        "/sys/dev/block/{}:{}/holders",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_dir(dev).is_ok_and(|mut holders| holders.next().is_some())
}

/// The LUKS devices the initrd is told to open: `rd.luks.uuid=[luks-]UUID` and
/// `rd.luks.name=UUID=NAME` on the kernel command line, and the initrd's crypttab (a
/// `UUID=` or a `/dev` path as the device). `rd.luks=0` turns systemd's opening off, and
/// with it ours.
pub fn wanted_devices(cmdline: &str, crypttab: &str) -> Vec<PathBuf> {
    let by_uuid = |uuid: &str| PathBuf::from(format!("/dev/disk/by-uuid/{uuid}"));
    let mut devices = Vec::new();
    for word in cmdline.split_whitespace() {
        if word == "rd.luks=0" || word == "rd.luks=no" || word == "luks=0" {
            return Vec::new();
        }
        if let Some(uuid) = word.strip_prefix("rd.luks.uuid=") {
            devices.push(by_uuid(uuid.strip_prefix("luks-").unwrap_or(uuid)));
        } else if let Some((uuid, _name)) = word
            .strip_prefix("rd.luks.name=")
            .and_then(|v| v.split_once('='))
        {
            devices.push(by_uuid(uuid));
        }
    }
    for line in crypttab.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        match line.split_whitespace().nth(1) {
            Some(device) if device.starts_with("UUID=") => devices.push(by_uuid(&device[5..])),
            Some(device) if device.starts_with("/dev/") => devices.push(PathBuf::from(device)),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    devices.retain(|d| seen.insert(d.clone()));
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_from_the_command_line_and_crypttab() {
        let cmdline = "console=ttyS0 root=/dev/mapper/luks-a rd.luks.uuid=luks-a \
                       rd.luks.uuid=b rd.luks.name=c=data rd.neednet=1";
        let crypttab = "# comment\nluks-a UUID=a none luks\nswap /dev/vdb /dev/urandom swap\n\n";
        assert_eq!(
            wanted_devices(cmdline, crypttab),
            [
                "/dev/disk/by-uuid/a",
                "/dev/disk/by-uuid/b",
                "/dev/disk/by-uuid/c",
                "/dev/vdb"
            ]
            .map(PathBuf::from)
        );
        assert!(wanted_devices("rd.luks.uuid=a rd.luks=0", "x UUID=b").is_empty());
        assert!(wanted_devices("quiet", "").is_empty());
    }
}
