//! Tang's API, per device under `/o/{org}/d/{device}` and, for a tangd key directory, at
//! the root: `GET /adv`, `GET /adv/{kid}`, `POST /rec/{kid}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nbde_proto::{Jwk, exchange};
use serde_json::Value;

use super::AppState;
use crate::error::ApiError;
use crate::policy::{self, Effect, Outcome as PolicyOutcome};
use crate::store::history::Entry;

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
    match ring.device(&org, &device) {
        Some(d) if !d.exchange.is_empty() => match d.adv() {
            Ok(adv) => jose(adv.to_owned()),
            Err(e) => e.into_response(),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn device_adv_kid(
    State(state): State<Arc<AppState>>,
    Path((org, device, kid)): Path<(String, String, String)>,
) -> Response {
    let ring = state.key_ring();
    match ring.device(&org, &device) {
        Some(d) if !d.exchange.is_empty() && d.is_signing_kid(&kid) => match d.adv() {
            Ok(adv) => jose(adv.to_owned()),
            Err(e) => e.into_response(),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
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

/// Checks the client's point as tangd does, then answers `s·x` as a sorted compact JWK.
fn exchange_reply(server_key: &Jwk, body: &[u8]) -> Outcome {
    let bad =
        |reason: &str| Outcome::refuse("bad-request", reason, ApiError::BadRequest(reason.into()));
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return bad("body is not JSON");
    };
    let Ok(client) = Jwk::from_value(value) else {
        return bad("body is not a JWK");
    };
    let declares_ops =
        client.as_map().contains_key("key_ops") || client.as_map().contains_key("use");
    if declares_ops && !client.allows("deriveKey") {
        return bad("client key does not allow deriveKey");
    }
    if client
        .str_member("alg")
        .ok()
        .flatten()
        .is_some_and(|alg| alg != "ECMR")
    {
        return bad("client key alg is not ECMR");
    }
    let (Ok(secret), Ok(server_point)) = (server_key.scalar(), server_key.point()) else {
        return Outcome::refuse(
            "error",
            "stored exchange key unusable",
            ApiError::Internal("stored exchange key unusable".into()),
        );
    };
    let point = match client.point() {
        Ok(p) if p.curve() == server_point.curve() => p,
        Ok(_) => return bad("client point on another curve"),
        Err(e) => return bad(&format!("client point: {e}")),
    };
    match exchange::server_exchange(&secret, &point) {
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
                reason: String::new(),
                response: Ok(body.into_bytes()),
            }
        }
        Err(e) => bad(&format!("exchange: {e}")),
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
    // The row is durable before any answer leaves; if it cannot be written, we do not take part.
    if !state.history.record(entry).await {
        state.metrics.observe("error", started.elapsed());
        return ApiError::Internal("decision history unavailable".into()).into_response();
    }
    state.metrics.observe(outcome.decision, started.elapsed());
    respond(outcome)
}

/// Runs a store call off the async workers (SQLite may wait on fsync).
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    call: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || call(&state))
        .await
        .unwrap_or_else(|e| Err(ApiError::Internal(format!("store task: {e}"))))
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
    let peer = state.client_address(peer.ip(), &headers);
    let mut entry = Entry {
        org: Some(org.clone()),
        device: Some(device.clone()),
        peer: peer.to_string(),
        kid: Some(kid.clone()),
        decision: "",
        reason: String::new(),
    };
    let ring = state.key_ring();
    let key = match ring.device(&org, &device) {
        None => {
            let outcome = Outcome::refuse(
                "not-found",
                "no such device",
                ApiError::NotFound("device".into()),
            );
            return finish(&state, started, entry, outcome).await;
        }
        Some(d) if d.exchange.is_empty() => {
            let outcome = Outcome::refuse(
                "not-found",
                "device retired",
                ApiError::NotFound("device".into()),
            );
            return finish(&state, started, entry, outcome).await;
        }
        Some(d) => match d.exchange_key(&kid) {
            Some(key) => key.clone(),
            None => {
                let outcome =
                    Outcome::refuse("not-found", "unknown kid", ApiError::NotFound("kid".into()));
                return finish(&state, started, entry, outcome).await;
            }
        },
    };
    // The exchange is computed first: a malformed body must not use up an allow-once or
    // an approval.
    let exchanged = exchange_reply(&key, &body);
    if exchanged.response.is_err() {
        return finish(&state, started, entry, exchanged).await;
    }
    for _ in 0..3 {
        let (org, device) = (org.clone(), device.clone());
        let snapshot = blocking(&state, move |s| s.store.snapshot(&org, &device)).await;
        let (device_id, snapshot) = match snapshot {
            Ok(Some(found)) => found,
            Ok(None) => {
                let outcome = Outcome::refuse(
                    "not-found",
                    "no such device",
                    ApiError::NotFound("device".into()),
                );
                return finish(&state, started, entry, outcome).await;
            }
            Err(e) => {
                return finish(&state, started, entry, Outcome::refuse("error", "store", e)).await;
            }
        };
        let decision = policy::decide(&snapshot, peer);
        let outcome = match decision.outcome {
            PolicyOutcome::Allow => Outcome {
                decision: "allowed",
                reason: decision.reason.clone(),
                response: exchanged.response.clone(),
            },
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
        match blocking(&state, move |s| s.store.apply(device_id, &effect, &row)).await {
            Ok(true) => {
                state.metrics.observe(outcome.decision, started.elapsed());
                return respond(outcome);
            }
            // Another request won the race: decide again on fresh state.
            Ok(false) => continue,
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
    let entry = Entry {
        org: None,
        device: None,
        peer: state.client_address(peer.ip(), &headers).to_string(),
        kid: Some(kid.clone()),
        decision: "",
        reason: String::new(),
    };
    let outcome = match state.tang_dir.as_ref().map(|t| t.keys()) {
        None => Outcome::refuse(
            "not-found",
            "no tang directory",
            ApiError::NotFound("route".into()),
        ),
        Some(Err(e)) => Outcome::refuse("error", "tang directory unreadable", e),
        Some(Ok(keys)) => match keys.exchange_key(&kid) {
            None => Outcome::refuse("not-found", "unknown kid", ApiError::NotFound("kid".into())),
            Some(key) => {
                let mut outcome = exchange_reply(key, &body);
                if outcome.response.is_ok() {
                    outcome.reason = "tang directory key".into();
                }
                outcome
            }
        },
    };
    finish(&state, started, entry, outcome).await
}
