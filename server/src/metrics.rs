//! Prometheus metrics for `/rec`: requests by decision, and a latency histogram, in the
//! exposition format of the official client library.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const BUCKETS_SECONDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    decision: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Decision, Counter>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let requests = Family::<Decision, Counter>::default();
        let duration = Histogram::new(BUCKETS_SECONDS);
        let mut registry = Registry::default();
        // Counters get their `_total` suffix from the library.
        registry.register(
            "nbde_rec_requests",
            "Recovery requests by decision",
            requests.clone(),
        );
        registry.register(
            "nbde_rec_duration_seconds",
            "Time to answer a recovery request",
            duration.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
        }
    }
}

impl Metrics {
    pub fn observe(&self, decision: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&Decision { decision }).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
