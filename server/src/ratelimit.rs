//! Token buckets on `/rec`, one per source address and one per device.
//!
//! A boot asks once per server per attempt, seconds apart (nbde-unlock and stock clevis
//! alike), so the default buckets are far above any boot and only a flood meets them: a
//! source that floods spends its own bucket, not another address's or another device's,
//! and the multiplications it would have cost stay free for everyone else. The source
//! bucket is generous because many machines may share one address (NAT, a proxy in
//! `trusted_proxies`) and reboot together after a power cut.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

/// Checks between two prunings of the buckets that are full again (and so forgotten).
const PRUNE_EVERY: u64 = 4096;

/// The `[rate_limit]` table of the configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Recoveries one source address may ask for per second, sustained.
    pub source_per_second: NonZeroU32,
    /// …and at once, after a quiet spell.
    pub source_burst: NonZeroU32,
    /// Recoveries one device may be asked for per minute, sustained.
    pub device_per_minute: NonZeroU32,
    /// …and at once.
    pub device_burst: NonZeroU32,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        let n = |v: u32| NonZeroU32::new(v).expect("nonzero default");
        RateLimits {
            source_per_second: n(100),
            source_burst: n(1000),
            device_per_minute: n(60),
            device_burst: n(60),
        }
    }
}

impl RateLimits {
    /// Buckets no test or benchmark load empties (a microsecond per token), for the ones
    /// that send thousands of requests from one address to one device about something else.
    pub fn lifted() -> RateLimits {
        let n = |v: u32| NonZeroU32::new(v).expect("nonzero");
        RateLimits {
            source_per_second: n(1_000_000),
            source_burst: n(1_000_000),
            device_per_minute: n(60_000_000),
            device_burst: n(1_000_000),
        }
    }
}

/// Which bucket ran dry, and when it holds a token again.
#[derive(Debug, PartialEq, Eq)]
pub struct Limited {
    pub bucket: &'static str,
    pub retry_after_seconds: u64,
}

pub struct RecLimiter {
    by_source: DefaultKeyedRateLimiter<IpAddr>,
    by_device: DefaultKeyedRateLimiter<i64>,
    checks: AtomicU64,
}

impl RecLimiter {
    pub fn new(limits: RateLimits) -> RecLimiter {
        let source = Quota::per_second(limits.source_per_second).allow_burst(limits.source_burst);
        let device = Quota::per_minute(limits.device_per_minute).allow_burst(limits.device_burst);
        RecLimiter {
            by_source: DefaultKeyedRateLimiter::keyed(source),
            by_device: DefaultKeyedRateLimiter::keyed(device),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token from the source's bucket.
    pub fn check_source(&self, source: IpAddr) -> Result<(), Limited> {
        self.prune_now_and_then();
        self.by_source
            .check_key(&source)
            .map_err(|not_until| limited("source", not_until))
    }

    /// Takes a token from the device's bucket.
    pub fn check_device(&self, device: i64) -> Result<(), Limited> {
        self.by_device
            .check_key(&device)
            .map_err(|not_until| limited("device", not_until))
    }

    /// Forgets full buckets now and then, so that addresses seen once do not pile up.
    fn prune_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.by_source.retain_recent();
            self.by_device.retain_recent();
        }
    }
}

/// Bearer tokens that matched no account, per source address: a burst of 10, then one
/// every 6 seconds. A source that has spent its bucket is refused (429) before any lookup
/// until the next token, so guessing costs the store nothing; good tokens spend nothing.
pub struct FailedTokens {
    bucket: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailedTokens {
    pub fn new() -> FailedTokens {
        let quota = Quota::per_minute(NonZeroU32::new(10).expect("10 > 0"))
            .allow_burst(NonZeroU32::new(10).expect("10 > 0"));
        FailedTokens {
            bucket: DefaultKeyedRateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may present a token now; else the seconds until it may.
    pub fn admit(&self, source: IpAddr) -> Result<(), u64> {
        let blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        match blocked.get(&source) {
            Some(until) if *until > Instant::now() => Err(whole_seconds(*until - Instant::now())),
            _ => Ok(()),
        }
    }

    /// A token from `source` matched no account.
    pub fn failed(&self, source: IpAddr) {
        if let Err(not_until) = self.bucket.check_key(&source) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let now = Instant::now();
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            blocked.retain(|_, until| *until > now);
            blocked.insert(source, now + wait);
        }
    }
}

impl Default for FailedTokens {
    fn default() -> FailedTokens {
        FailedTokens::new()
    }
}

/// Whole seconds for Retry-After, rounded up, never 0 (that would say "now").
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn limited(
    bucket: &'static str,
    not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> Limited {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Limited {
        bucket,
        retry_after_seconds: whole_seconds(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(source: (u32, u32), device: (u32, u32)) -> RateLimits {
        let n = |v| NonZeroU32::new(v).unwrap();
        RateLimits {
            source_per_second: n(source.0),
            source_burst: n(source.1),
            device_per_minute: n(device.0),
            device_burst: n(device.1),
        }
    }

    #[test]
    fn a_source_spends_its_own_bucket_only() {
        let limiter = RecLimiter::new(limits((1, 3), (60, 100)));
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check_source(flood), Ok(()));
        }
        let refused = limiter.check_source(flood).unwrap_err();
        assert_eq!(refused.bucket, "source");
        assert_eq!(refused.retry_after_seconds, 1);
        assert_eq!(limiter.check_source(other), Ok(()));
    }

    #[test]
    fn a_device_spends_its_own_bucket_only() {
        let limiter = RecLimiter::new(limits((100, 100), (1, 2)));
        assert_eq!(limiter.check_device(7), Ok(()));
        assert_eq!(limiter.check_device(7), Ok(()));
        let refused = limiter.check_device(7).unwrap_err();
        assert_eq!(refused.bucket, "device");
        assert!(
            (59..=60).contains(&refused.retry_after_seconds),
            "{refused:?}"
        );
        assert_eq!(limiter.check_device(8), Ok(()));
    }

    #[test]
    fn failed_tokens_block_their_source_only_once_the_burst_is_spent() {
        let guard = FailedTokens::new();
        let guessing: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(guard.admit(guessing), Ok(()));
            guard.failed(guessing);
        }
        assert_eq!(guard.admit(guessing), Ok(()));
        guard.failed(guessing); // the 11th: over the burst
        let wait = guard.admit(guessing).unwrap_err();
        assert!((1..=6).contains(&wait), "{wait}");
        assert_eq!(guard.admit("192.0.2.10".parse().unwrap()), Ok(()));
    }

    #[test]
    fn the_configuration_table_fills_in_defaults() {
        let parsed: RateLimits = toml::from_str("source_burst = 5").unwrap();
        assert_eq!(parsed.source_burst.get(), 5);
        assert_eq!(parsed.device_burst, RateLimits::default().device_burst);
        assert!(toml::from_str::<RateLimits>("source_burst = 0").is_err());
        assert!(toml::from_str::<RateLimits>("burst = 5").is_err());
    }
}
