//! The liveness checker (as Mandos has): a device that has not asked for a recovery for
//! longer than its `max_silence` (its own, else its org's; unset: never) is disabled,
//! with a history row ("silent") and an audit row saying why. An owner's `device enable`
//! restarts its clock.
//!
//! One thread per server process checks every `pace` (a tenth of the shortest max_silence
//! set, between 1 s and 60 s, looked up every second); replicas on one database all check, and the store's
//! guarded UPDATE lets exactly one of them disable a device.
//!
//! A time when no server checked is not the devices' silence (they could not have asked):
//! the store keeps since when servers have checked with no gap longer than `gap`, and
//! silence is counted from no earlier than that. After an outage, and when a max_silence
//! is first set, every device has its full max_silence from the first check.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::http::AppState;
use crate::store::now;

/// The longest max_silence accepted: ten years.
pub const MAX_SILENCE_LIMIT: i64 = 10 * 366 * 86_400;

/// How often to check, given the shortest max_silence set anywhere.
pub fn pace(shortest: Option<i64>) -> Duration {
    let seconds = shortest.map_or(60, |s| (s / 10).clamp(1, 60));
    Duration::from_secs(seconds as u64)
}

/// `seconds` in the largest unit that divides it: 90s, 15m, 2h, 7d.
pub fn human(seconds: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// A duration as the command line takes it: a number with an optional unit (s, m, h, d).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?}: expected a duration such as 90s, 15m, 12h or 30d");
    let (number, size) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3_600),
        Some((at, 'd')) => (&text[..at], 86_400),
        _ => (text, 1),
    };
    let seconds = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(bad)?;
    check(seconds)?;
    Ok(seconds)
}

/// A max_silence the server accepts: at least a second, at most `MAX_SILENCE_LIMIT`.
pub fn check(seconds: i64) -> Result<(), String> {
    if (1..=MAX_SILENCE_LIMIT).contains(&seconds) {
        Ok(())
    } else {
        Err(format!(
            "max_silence {seconds} s: between 1 s and {MAX_SILENCE_LIMIT} s"
        ))
    }
}

/// The longest time between two checks that still counts as watching without a gap:
/// three paces (a round late or two), and a little for a slow database.
pub fn gap(pace: Duration) -> i64 {
    3 * pace.as_secs() as i64 + 2
}

/// One round: disables the silent devices and reloads the keys if any was. A device's
/// silence is counted from no earlier than since when servers have checked without a gap:
/// while no server ran, no device could ask.
fn round(state: &AppState, pace: Duration) {
    let now = now();
    let checked = state
        .store
        .watched_since(now, gap(pace))
        .and_then(|since| state.store.disable_silent(now, since));
    match checked {
        Ok(silenced) => {
            for s in &silenced {
                tracing::info!(org = %s.org, device = %s.device, "{}", s.reason());
            }
            if !silenced.is_empty()
                && let Err(e) = state.reload_keys()
            {
                tracing::warn!(error = %e, "reloading keys after the liveness check");
            }
        }
        Err(e) => tracing::warn!(error = %e, "liveness check"),
    }
}

/// Starts the checker thread; it ends once the state is gone. It looks at the pace every
/// second (one small read), so a setting made through any replica takes effect at once.
pub fn start(state: &Arc<AppState>) -> std::io::Result<()> {
    let weak: Weak<AppState> = Arc::downgrade(state);
    std::thread::Builder::new()
        .name("liveness".into())
        .spawn(move || {
            let mut last = std::time::Instant::now();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(state) = weak.upgrade() else { return };
                // Nothing to check while no max_silence is set anywhere.
                let Ok(Some(shortest)) = state.store.shortest_max_silence() else {
                    continue;
                };
                let pace = pace(Some(shortest));
                if last.elapsed() >= pace {
                    round(&state, pace);
                    last = std::time::Instant::now();
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_alike() {
        for (text, seconds) in [
            ("90s", 90),
            ("15m", 900),
            ("12h", 43_200),
            ("30d", 2_592_000),
            ("7", 7),
        ] {
            assert_eq!(parse_duration(text), Ok(seconds), "{text}");
        }
        assert_eq!(human(90), "90s");
        assert_eq!(human(900), "15m");
        assert_eq!(human(2_592_000), "30d");
        for bad in ["", "0", "-5s", "5w", "s", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pace_is_a_tenth_of_the_shortest_silence_within_1_to_60_s() {
        assert_eq!(pace(None), Duration::from_secs(60));
        assert_eq!(pace(Some(5)), Duration::from_secs(1));
        assert_eq!(pace(Some(300)), Duration::from_secs(30));
        assert_eq!(pace(Some(86_400)), Duration::from_secs(60));
    }
}
