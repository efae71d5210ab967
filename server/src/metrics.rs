//! Prometheus counters for `/rec`: requests by decision, and a latency histogram.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS_SECONDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    by_decision: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, decision: &'static str, elapsed: Duration) {
        if let Ok(mut map) = self.by_decision.lock() {
            *map.entry(decision).or_default() += 1;
        }
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_SECONDS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP nbde_rec_requests_total Recovery requests by decision.\n");
        out.push_str("# TYPE nbde_rec_requests_total counter\n");
        if let Ok(map) = self.by_decision.lock() {
            for (decision, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "nbde_rec_requests_total{{decision=\"{decision}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP nbde_rec_duration_seconds Time to answer a recovery request.\n");
        out.push_str("# TYPE nbde_rec_duration_seconds histogram\n");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_SECONDS) {
            let _ = writeln!(
                out,
                "nbde_rec_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "nbde_rec_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "nbde_rec_duration_seconds_sum {sum}");
        let _ = writeln!(out, "nbde_rec_duration_seconds_count {count}");
        out
    }
}
