//! Telling people that an unlock waits for them: when a `/rec` makes a new pending request,
//! every webhook of the device's organisation gets a POST, signed so the receiver can
//! check it came from this server.
//!
//! The body (`Content-Type: application/json`):
//!
//! ```json
//! {"event": "request.pending",
//!  "request": {"id": 12, "org": "acme", "device": "db1", "peer": "10.0.0.5",
//!              "created_at": "2026-11-23T22:00:00Z"},
//!  "url": "https://nbde.example/console/requests/12",
//!  "text": "nbde: acme/db1 asks to unlock from 10.0.0.5: https://nbde.example/console/requests/12"}
//! ```
//!
//! `text` makes it a Slack (and Mattermost, Rocket.Chat) incoming-webhook message as it
//! is; `url` is the request's console page (the console origin, else the public URL).
//! Headers: `X-Nbde-Event: request.pending`, `X-Nbde-Timestamp: <unix seconds>`,
//! `X-Nbde-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: a receiver
//! recomputes it with the secret `webhook add` printed, compares in constant time, and
//! refuses old timestamps.
//!
//! Delivery never delays an answer: `/rec` only queues. One thread posts, and retries a
//! failure (network error or non-2xx) after 1, 2, 4, 8 and 16 s — six attempts — without
//! holding up other deliveries. Every attempt is in the org's audit trail.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::api::utc;
use crate::http::AppState;

/// Attempts per notification and webhook.
pub const ATTEMPTS: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

/// A new pending request, as `/rec` saw it.
#[derive(Clone, Debug)]
pub struct PendingRequest {
    pub id: i64,
    pub org: String,
    pub device: String,
    pub peer: String,
    pub created_at: i64,
}

/// `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The notification's body for `request`, its console page under `base`.
pub fn body(request: &PendingRequest, base: &str) -> Vec<u8> {
    let url = format!(
        "{}/console/requests/{}",
        base.trim_end_matches('/'),
        request.id
    );
    json!({
        "event": "request.pending",
        "request": {
            "id": request.id,
            "org": request.org,
            "device": request.device,
            "peer": request.peer,
            "created_at": utc(request.created_at),
        },
        "url": url,
        "text": format!("nbde: {}/{} asks to unlock from {}: {url}",
                        request.org, request.device, request.peer),
    })
    .to_string()
    .into_bytes()
}

/// One POST to make, now or later.
struct Delivery {
    due: Instant,
    attempt: u32,
    org: String,
    request: i64,
    webhook: i64,
    url: String,
    secret: String,
    body: Arc<Vec<u8>>,
}

/// The queue `/rec` hands new requests to.
pub struct Notifier {
    jobs: mpsc::Sender<PendingRequest>,
}

impl Notifier {
    /// Starts the delivery thread; it ends when the server state is gone.
    pub fn start(state: Weak<AppState>) -> std::io::Result<Notifier> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || deliver_all(&state, &queue))?;
        Ok(Notifier { jobs })
    }

    /// Queues the notification; returns at once.
    pub fn request_pending(&self, request: PendingRequest) {
        let _ = self.jobs.send(request);
    }
}

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(TIMEOUT))
        .tls_config(tls)
        .build()
        .into()
}

fn deliver_all(state: &Weak<AppState>, queue: &mpsc::Receiver<PendingRequest>) {
    let agent = agent();
    let mut waiting: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut deliveries: std::collections::HashMap<u64, Delivery> = Default::default();
    let mut next_key = 0u64;
    loop {
        let wait = waiting
            .peek()
            .map(|Reverse((due, _))| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match queue.recv_timeout(wait) {
            Ok(request) => {
                let Some(state) = state.upgrade() else { return };
                for d in fan_out(&state, &request) {
                    waiting.push(Reverse((d.due, next_key)));
                    deliveries.insert(next_key, d);
                    next_key += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Some(Reverse((due, key))) = waiting.peek().copied() {
            if due > Instant::now() {
                break;
            }
            waiting.pop();
            let Some(mut d) = deliveries.remove(&key) else {
                continue;
            };
            let Some(state) = state.upgrade() else { return };
            if !post(&state, &agent, &d) && d.attempt < ATTEMPTS {
                d.due = Instant::now() + FIRST_RETRY * 2u32.pow(d.attempt - 1);
                d.attempt += 1;
                waiting.push(Reverse((d.due, key)));
                deliveries.insert(key, d);
            }
        }
    }
}

/// One delivery per webhook of the request's org.
fn fan_out(state: &AppState, request: &PendingRequest) -> Vec<Delivery> {
    let hooks = match state.store.webhooks(&request.org) {
        Ok(hooks) => hooks,
        Err(e) => {
            tracing::warn!(error = %e, org = %request.org, "webhooks unreadable; not notified");
            return Vec::new();
        }
    };
    let base = state
        .settings
        .console_origin
        .as_deref()
        .or(state.settings.public_url.as_deref())
        .unwrap_or("");
    let body = Arc::new(body(request, base));
    hooks
        .into_iter()
        .map(|h| Delivery {
            due: Instant::now(),
            attempt: 1,
            org: request.org.clone(),
            request: request.id,
            webhook: h.id,
            url: h.url,
            secret: h.secret,
            body: body.clone(),
        })
        .collect()
}

/// One attempt, audited; true if the receiver took it (2xx).
fn post(state: &AppState, agent: &ureq::Agent, d: &Delivery) -> bool {
    let timestamp = crate::store::now();
    let outcome = agent
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("X-Nbde-Event", "request.pending")
        .header("X-Nbde-Timestamp", timestamp.to_string())
        .header("X-Nbde-Signature", signature(&d.secret, timestamp, &d.body))
        .send(&d.body[..]);
    let (delivered, result) = match outcome {
        Ok(r) if r.status().is_success() => (true, r.status().as_u16().to_string()),
        Ok(r) => (false, r.status().as_u16().to_string()),
        Err(e) => (false, format!("error {e}")),
    };
    let target = format!(
        "webhook {} request {} attempt {}: {result}",
        d.webhook, d.request, d.attempt
    );
    if let Err(e) = state
        .store
        .audit_in(Some(&d.org), "webhook", "webhook delivery", &target)
    {
        tracing::warn!(error = %e, "webhook attempt not audited");
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'shh'
        assert_eq!(
            signature("shh", 1_700_000_000, br#"{"a":1}"#),
            "sha256=be310eac0f84daf469d630347a950258de768b365563ab68f29f2f783473d547"
        );
    }

    #[test]
    fn the_body_names_the_request_and_links_its_page() {
        let r = PendingRequest {
            id: 12,
            org: "acme".into(),
            device: "db1".into(),
            peer: "10.0.0.5".into(),
            created_at: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&r, "https://n.example/")).unwrap();
        assert_eq!(v["event"], "request.pending");
        assert_eq!(v["request"]["id"], 12);
        assert_eq!(v["request"]["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["url"], "https://n.example/console/requests/12");
        assert!(v["text"].as_str().unwrap().contains("acme/db1"));
    }
}
