//! One recovery race per volume and process: the first call for any clevis token of a
//! volume starts every clevis token of it at once, under one deadline. libcryptsetup asks
//! token after token (lowest id first), so without this a volume bound to three servers
//! would wait three deadlines when the first server is down; with it, a later token whose
//! server answered first is handed out at once, and the total stays one deadline.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nbde_unlock::boot::{self, Backoff, RouteWatch};
use nbde_unlock::http::Timeouts;
use nbde_unlock::luks::marker::TOKEN_TYPE as SOVEREIGN_TOKEN;
use nbde_unlock::pin::{self, Context};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::describe;
use crate::device::Device;

/// Well under systemd-cryptsetup's own token timeout (30 s by default), so a volume whose
/// servers are all gone reaches its passphrase prompt in good time.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Why no key: an errno for libcryptsetup and words for the person at the console.
pub struct Refusal {
    pub errno: i32,
    pub message: String,
}

fn refusal(errno: i32, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        message: message.into(),
    }
}

enum Outcome {
    Key(Zeroizing<Vec<u8>>),
    /// Handed to libcryptsetup already; a second call for the token starts a new race.
    Taken,
    Failed(String),
}

struct Race {
    volume: String,
    deadline: Instant,
    outcomes: Mutex<HashMap<u32, Outcome>>,
    changed: Condvar,
}

impl Race {
    fn settle(&self, token: u32, outcome: Outcome) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        outcomes.insert(token, outcome);
        self.changed.notify_all();
    }

    /// Whether a later call may still take something from this race.
    fn live(&self) -> bool {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        Instant::now() < self.deadline || outcomes.values().any(|o| matches!(o, Outcome::Key(_)))
    }
}

fn races() -> &'static Mutex<Vec<Arc<Race>>> {
    static RACES: OnceLock<Mutex<Vec<Arc<Race>>>> = OnceLock::new();
    RACES.get_or_init(Mutex::default)
}

/// The deadline from `$NBDE_TOKEN_TIMEOUT`, else `rd.nbde.token_timeout=` on the kernel
/// command line (seconds, 1 to 600), else ten seconds.
fn deadline_length() -> Duration {
    let from_cmdline = || {
        let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
        cmdline
            .split_whitespace()
            .find_map(|word| word.strip_prefix("rd.nbde.token_timeout="))
            .map(str::to_owned)
    };
    std::env::var("NBDE_TOKEN_TIMEOUT")
        .ok()
        .or_else(from_cmdline)
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|seconds| (1..=600).contains(seconds))
        .map_or(DEFAULT_DEADLINE, Duration::from_secs)
}

/// The key of `token`, recovered in a race of all the volume's clevis tokens.
pub fn key_for(device: Device, token: u32) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    let tokens = device.token_values();
    if tokens
        .iter()
        .any(|(_, json)| json.get("type").and_then(Value::as_str) == Some(SOVEREIGN_TOKEN))
    {
        return Err(refusal(
            libc::ENOENT,
            "the volume is sovereign: no automatic unlock, the user key is needed",
        ));
    }
    let race = race_for(device, &tokens);
    let mut outcomes = race.outcomes.lock().unwrap_or_else(|e| e.into_inner());
    // Recovery threads stop by the deadline; the grace covers a name lookup, which no
    // timeout bounds, so a stuck resolver cannot hold the prompt back for long.
    let give_up = race.deadline + Duration::from_secs(2);
    loop {
        match outcomes.get(&token) {
            Some(Outcome::Key(_)) => {
                let Some(Outcome::Key(key)) = outcomes.insert(token, Outcome::Taken) else {
                    unreachable!("matched just above");
                };
                return Ok(key);
            }
            Some(Outcome::Failed(reason)) => return Err(refusal(libc::ENOENT, reason.clone())),
            Some(Outcome::Taken) => {
                return Err(refusal(libc::ENOENT, "its key was already handed out"));
            }
            None => {}
        }
        if let Some(later) = outcomes
            .iter()
            .find(|(id, o)| **id > token && matches!(o, Outcome::Key(_)))
            .map(|(id, _)| *id)
        {
            device.log_debug(&format!("clevis token {later} answered first"));
            return Err(refusal(
                libc::ENOENT,
                format!("not needed: token {later} answered first"),
            ));
        }
        let now = Instant::now();
        if now >= give_up {
            return Err(refusal(libc::ETIMEDOUT, "no answer in time"));
        }
        outcomes = race
            .changed
            .wait_timeout(outcomes, give_up - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// The race running for this volume, or a new one with a thread per clevis token.
fn race_for(device: Device, tokens: &[(u32, Value)]) -> Arc<Race> {
    let volume = device.identity();
    let mut all = races().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|race| race.live());
    if let Some(race) = all.iter().find(|race| race.volume == volume) {
        return Arc::clone(race);
    }
    let race = Arc::new(Race {
        volume,
        deadline: Instant::now() + deadline_length(),
        outcomes: Mutex::default(),
        changed: Condvar::new(),
    });
    for (id, json) in tokens {
        if json.get("type").and_then(Value::as_str) != Some("clevis") {
            continue;
        }
        match describe::from_value(json) {
            Ok(parsed) if matches!(parsed.pin.pin, nbde_proto::Pin::Other { .. }) => {
                let name = parsed.pin.name().to_owned();
                race.settle(
                    *id,
                    Outcome::Failed(format!("pin {name} is not handled here")),
                );
            }
            Ok(parsed) => {
                let race = Arc::clone(&race);
                let id = *id;
                std::thread::spawn(move || {
                    let outcome = recover_until_deadline(id, &parsed.pin, race.deadline);
                    race.settle(id, outcome);
                });
            }
            Err(reason) => race.settle(*id, Outcome::Failed(reason)),
        }
    }
    all.push(Arc::clone(&race));
    race
}

/// What a last try keeps of the deadline: a refused or reset connection answers well
/// within it.
const LAST_TRY: Duration = Duration::from_millis(300);

/// Tries one token until it answers, refuses for good, or the deadline passes; each
/// attempt's timeouts are cut to the time left.
fn recover_until_deadline(id: u32, clevis: &nbde_proto::ClevisJwe, deadline: Instant) -> Outcome {
    let started = Instant::now();
    let console = in_initrd();
    let mut said = String::new();
    let mut backoff = Backoff::new();
    let route = RouteWatch::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(100) {
            return Outcome::Failed("no time left".into());
        }
        let ctx = Context {
            timeouts: Timeouts {
                connect: left.min(Duration::from_secs(5)),
                total: left,
            },
            assume_yes: false,
        };
        let error = match pin::recover(clevis, &ctx) {
            Ok(key) => {
                if console {
                    boot::status(&format!("clevis token {id}: key recovered"));
                }
                return Outcome::Key(key);
            }
            Err(error) => error,
        };
        let failures = std::slice::from_ref(&error);
        let no_route = boot::no_route_anywhere(failures);
        let (words, retry_after) = if no_route {
            (boot::NO_ROUTE_WORDS.to_owned(), None)
        } else {
            boot::describe(failures)
        };
        if console && words != said {
            boot::status(&format!("clevis token {id}: {words}"));
            said.clone_from(&words);
        }
        if !boot::worth_retrying(&error) {
            return Outcome::Failed(words);
        }
        let delay = if no_route {
            boot::NO_ROUTE_RETRY
        } else {
            backoff.next(retry_after).min(Duration::from_secs(2))
        };
        // When the next delay would cross the deadline, one last try just before it rather
        // than none: a server that comes up late still gets the time the user granted.
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= LAST_TRY {
            return Outcome::Failed(format!(
                "gave up after {:.1} s: {words}",
                started.elapsed().as_secs_f32()
            ));
        }
        if no_route {
            // The next try as soon as the network changes.
            route.wait(delay.min(left - LAST_TRY));
        } else {
            std::thread::sleep(delay.min(left - LAST_TRY));
        }
    }
}

/// In an initrd (systemd's marker file) progress also goes to the console through the
/// kernel log, as the agent's does: at boot a person watches the console, not a journal.
fn in_initrd() -> bool {
    std::path::Path::new("/etc/initrd-release").exists()
}
