//! Tang's API, per device under `/o/{org}/d/{device}` and, for a tangd key directory, at
//! the root: `GET /adv`, `GET /adv/{kid}`, `POST /rec/{kid}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nbde_proto::{EcPoint, Jwk};
use serde_json::Value;

use super::{AppState, blocking};
use crate::error::ApiError;
use crate::keys::ExchangeKey;
use crate::policy::{self, Effect, Outcome as PolicyOutcome};
use crate::ratelimit::Limited;
use crate::store::Applied;
use crate::store::history::Entry;
use crate::webhooks::PendingRequest;

/// Largest `/rec` body, as tangd caps its request buffer.
pub const MAX_REC_BODY: usize = 64 * 1024;

fn jose(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jose+json"),
        )],
        body,
    )
        .into_response()
}

pub async fn device_adv(
    State(state): State<Arc<AppState>>,
    Path((org, device)): Path<(String, String)>,
) -> Response {
    let ring = state.key_ring();
    match ring.device(&org, &device).and_then(|d| d.adv()) {
        Some(adv) => jose(adv.to_owned()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn device_adv_kid(
    State(state): State<Arc<AppState>>,
    Path((org, device, kid)): Path<(String, String, String)>,
) -> Response {
    let ring = state.key_ring();
    match ring
        .device(&org, &device)
        .filter(|d| d.is_signing_kid(&kid))
        .and_then(|d| d.adv())
    {
        Some(adv) => jose(adv.to_owned()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn dir_adv(State(state): State<Arc<AppState>>) -> Response {
    match state.tang_dir.as_ref().map(|t| t.keys()) {
        Some(Ok(keys)) => jose(keys.adv().to_owned()),
        Some(Err(e)) => e.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn dir_adv_kid(State(state): State<Arc<AppState>>, Path(kid): Path<String>) -> Response {
    match state
        .tang_dir
        .as_ref()
        .map(|t| t.keys().and_then(|k| k.adv_for(&kid)))
    {
        Some(Ok(Some(adv))) => jose(adv),
        Some(Err(e)) => e.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Why a request got the answer it got, for the history.
struct Outcome {
    decision: &'static str,
    reason: String,
    response: Result<Vec<u8>, ApiError>,
}

impl Outcome {
    fn refuse(decision: &'static str, reason: impl Into<String>, error: ApiError) -> Outcome {
        Outcome {
            decision,
            reason: reason.into(),
            response: Err(error),
        }
    }
}

/// Each decision at debug level, as the history has it (it holds no secret: names, the
/// peer, the kid, the decision and its reason).
fn log_decision(entry: &Entry) {
    tracing::debug!(
        org = entry.org.as_deref().unwrap_or("-"),
        device = entry.device.as_deref().unwrap_or("-"),
        peer = %entry.peer,
        kid = entry.kid.as_deref().unwrap_or("-"),
        decision = entry.decision,
        reason = %entry.reason,
        "rec"
    );
}

/// A bucket of `/rec` ran dry (see `ratelimit`): 429 with Retry-After, and a history row.
fn rate_limited(limited: Limited) -> Outcome {
    Outcome::refuse(
        "rate-limited",
        format!("{} over its rate", limited.bucket),
        ApiError::TooManyRequests {
            retry_after: limited.retry_after_seconds,
        },
    )
}

fn malformed(reason: String) -> Outcome {
    Outcome::refuse("bad-request", reason.clone(), ApiError::Malformed(reason))
}

/// Checks the client's key and point as tangd does, against the curve of `server_key`;
/// cheap next to the exchange, so a request is validated before the policy is asked.
fn client_point(server_key: &ExchangeKey, body: &[u8]) -> Result<EcPoint, Outcome> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Err(malformed("body is not JSON".into()));
    };
    let Ok(client) = Jwk::from_value(value) else {
        return Err(malformed("body is not a JWK".into()));
    };
    let declares_ops =
        client.as_map().contains_key("key_ops") || client.as_map().contains_key("use");
    if declares_ops && !client.allows("deriveKey") {
        return Err(malformed("client key does not allow deriveKey".into()));
    }
    if client
        .str_member("alg")
        .ok()
        .flatten()
        .is_some_and(|alg| alg != "ECMR")
    {
        return Err(malformed("client key alg is not ECMR".into()));
    }
    let Some(secret) = &server_key.secret else {
        return Err(Outcome::refuse(
            "error",
            "stored exchange key unusable",
            ApiError::Internal("stored exchange key unusable".into()),
        ));
    };
    match client.point() {
        Ok(p) if p.curve() == secret.curve() => Ok(p),
        Ok(_) => Err(malformed("client point on another curve".into())),
        Err(e) => Err(malformed(format!("client point: {e}"))),
    }
}

/// Answers `s·x` as a sorted compact JWK; the one scalar multiplication of a recovery.
fn exchange_reply(server_key: &ExchangeKey, point: &EcPoint, reason: String) -> Outcome {
    let Some(secret) = &server_key.secret else {
        return Outcome::refuse(
            "error",
            "stored exchange key unusable",
            ApiError::Internal("stored exchange key unusable".into()),
        );
    };
    match crate::curve::server_exchange(secret, point) {
        Ok(reply) => {
            let jwk = Jwk::from_point(&reply);
            let map = jwk.as_map();
            // Sorted members, as tangd answers.
            let body = format!(
                r#"{{"alg":"ECMR","crv":"{}","key_ops":["deriveKey"],"kty":"EC","x":{},"y":{}}}"#,
                reply.curve().name(),
                map["x"],
                map["y"]
            );
            Outcome {
                decision: "allowed",
                reason,
                response: Ok(body.into_bytes()),
            }
        }
        Err(e) => malformed(format!("exchange: {e}")),
    }
}

async fn finish(
    state: &AppState,
    started: Instant,
    mut entry: Entry,
    mut outcome: Outcome,
) -> Response {
    entry.decision = outcome.decision;
    entry.reason = std::mem::take(&mut outcome.reason);
    log_decision(&entry);
    // The row is durable before any answer leaves; if it cannot be written, we do not take part.
    if !state.history.record(entry).await {
        state.metrics.observe("error", started.elapsed());
        return ApiError::Unavailable("decision history unavailable".into()).into_response();
    }
    state.metrics.observe(outcome.decision, started.elapsed());
    respond(outcome)
}

/// Answers an allowed request with no effect: the row is handed to the history writer
/// first and the multiplication runs while it is committed; the answer leaves only once
/// the row is durable.
async fn allowed(
    state: &AppState,
    started: Instant,
    mut entry: Entry,
    (key, point): (&ExchangeKey, &EcPoint),
    reason: String,
) -> Response {
    entry.decision = "allowed";
    entry.reason = reason;
    log_decision(&entry);
    // Kept for a correcting row; cheaper than waiting for the commit before computing.
    let correction = entry.clone();
    let pending = state.history.submit(entry);
    let outcome = exchange_reply(key, point, String::new());
    if !pending.committed().await {
        state.metrics.observe("error", started.elapsed());
        return ApiError::Unavailable("decision history unavailable".into()).into_response();
    }
    if outcome.response.is_err() {
        // Cannot happen for a checked point and key (prime-order curves, a scalar in
        // [1, n)), but the history must not say "allowed" for a request that got an error.
        let why = format!("after an allowed row: {}", outcome.reason);
        return finish(
            state,
            started,
            correction,
            Outcome {
                reason: why,
                ..outcome
            },
        )
        .await;
    }
    state.metrics.observe("allowed", started.elapsed());
    respond(outcome)
}

fn respond(outcome: Outcome) -> Response {
    match outcome.response {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk+json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn device_rec(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((org, device, kid)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _handling = state.history.handling();
    let peer = state.client_address(peer.ip(), &headers);
    let ring = state.key_ring();
    // The one lookup by name: from here on the device is its keys and its store id.
    let found = ring.device(&org, &device).cloned();
    let mut entry = Entry {
        org: Some(org),
        device: Some(device),
        peer: peer.to_string(),
        kid: Some(kid.clone()),
        decision: "",
        reason: String::new(),
    };
    if let Err(limited) = state.rec_limiter.check_source(peer) {
        return finish(&state, started, entry, rate_limited(limited)).await;
    }
    let not_found = |reason: &str, what: &str| {
        Outcome::refuse("not-found", reason, ApiError::NotFound(what.into()))
    };
    let (device, key) = match &found {
        None => {
            return finish(
                &state,
                started,
                entry,
                not_found("no such device", "device"),
            )
            .await;
        }
        Some(d) if !d.has_keys() => {
            return finish(
                &state,
                started,
                entry,
                not_found("device retired", "device"),
            )
            .await;
        }
        Some(d) => match d.exchange_key(&kid) {
            Some(key) => (d, key),
            None => return finish(&state, started, entry, not_found("unknown kid", "kid")).await,
        },
    };
    // Validated before the policy is asked: a malformed body must not use up an allow-once
    // or an approval, nor the device's bucket (it costs no multiplication).
    let point = match client_point(key, &body) {
        Ok(point) => point,
        Err(outcome) => return finish(&state, started, entry, outcome).await,
    };
    if let Err(limited) = state.rec_limiter.check_device(device.id) {
        return finish(&state, started, entry, rate_limited(limited)).await;
    }
    // Computed only once the policy allows, and then only once however often the race
    // below makes us decide again.
    let mut exchanged: Option<Result<Vec<u8>, ApiError>> = None;
    for _ in 0..3 {
        let id = device.id;
        let snapshot = if let Some(cached) = state.store.cached_snapshot(id) {
            Ok(Some(cached))
        } else if state.store.snapshot_is_local() {
            state.store.snapshot(id).map_err(ApiError::from)
        } else {
            blocking(&state, move |s| Ok(s.store.snapshot(id)?)).await
        };
        let snapshot = match snapshot {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                return finish(
                    &state,
                    started,
                    entry,
                    not_found("no such device", "device"),
                )
                .await;
            }
            Err(e) => {
                return finish(&state, started, entry, Outcome::refuse("error", "store", e)).await;
            }
        };
        let decision = policy::decide(&snapshot, peer);
        if decision.outcome == PolicyOutcome::Allow && decision.effect == Effect::None {
            return allowed(&state, started, entry, (key, &point), decision.reason).await;
        }
        let outcome = match decision.outcome {
            PolicyOutcome::Allow => {
                let response = match &exchanged {
                    Some(response) => response.clone(),
                    None => {
                        let outcome = exchange_reply(key, &point, String::new());
                        if outcome.response.is_err() {
                            return finish(&state, started, entry, outcome).await;
                        }
                        exchanged.insert(outcome.response).clone()
                    }
                };
                Outcome {
                    decision: "allowed",
                    reason: decision.reason.clone(),
                    response,
                }
            }
            PolicyOutcome::Refuse { kind, retry_after } => Outcome::refuse(
                kind,
                decision.reason.clone(),
                ApiError::Refused { kind, retry_after },
            ),
        };
        if decision.effect == Effect::None {
            return finish(&state, started, entry, outcome).await;
        }
        // The effect and the history row commit together, or not at all.
        entry.decision = outcome.decision;
        entry.reason = outcome.reason.clone();
        let row = entry.clone();
        let effect = decision.effect.clone();
        match blocking(&state, move |s| {
            Ok(s.store.apply_effect(id, &effect, &row)?)
        })
        .await
        {
            // Another request won the race: decide again on fresh state.
            Ok(Applied::Lost) => continue,
            Ok(applied) => {
                if let Applied::NewRequest(request) = applied {
                    state.request_pending(PendingRequest {
                        id: request,
                        org: entry.org.clone().unwrap_or_default(),
                        device: entry.device.clone().unwrap_or_default(),
                        peer: entry.peer.clone(),
                        created_at: crate::store::now(),
                    });
                }
                state.metrics.observe(outcome.decision, started.elapsed());
                return respond(outcome);
            }
            Err(e) => {
                return finish(&state, started, entry, Outcome::refuse("error", "store", e)).await;
            }
        }
    }
    let busy = ApiError::Refused {
        kind: "denied",
        retry_after: Some(1),
    };
    finish(
        &state,
        started,
        entry,
        Outcome::refuse("denied", "policy state kept changing", busy),
    )
    .await
}

pub async fn dir_rec(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(kid): Path<String>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _handling = state.history.handling();
    let source = state.client_address(peer.ip(), &headers);
    let entry = Entry {
        org: None,
        device: None,
        peer: source.to_string(),
        kid: Some(kid.clone()),
        decision: "",
        reason: String::new(),
    };
    if let Err(limited) = state.rec_limiter.check_source(source) {
        return finish(&state, started, entry, rate_limited(limited)).await;
    }
    let outcome = match state.tang_dir.as_ref().map(|t| t.keys()) {
        None => Outcome::refuse(
            "not-found",
            "no tang directory",
            ApiError::NotFound("route".into()),
        ),
        Some(Err(e)) => Outcome::refuse("error", "tang directory unreadable", e),
        Some(Ok(keys)) => match keys.exchange_key(&kid) {
            None => Outcome::refuse("not-found", "unknown kid", ApiError::NotFound("kid".into())),
            Some(key) => match client_point(key, &body) {
                Ok(point) => {
                    let reason = "tang directory key".to_owned();
                    return allowed(&state, started, entry, (key, &point), reason).await;
                }
                Err(outcome) => outcome,
            },
        },
    };
    finish(&state, started, entry, outcome).await
}
