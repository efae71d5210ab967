//! The admin API under `/admin/v1`: bearer tokens (stored hashed), JSON in and out, every
//! change written to the audit trail.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use nbde_proto::Curve;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::error::{ApiError, Result};
use crate::keys;
use crate::store::{Account, DeviceState};

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh bearer token; only its hash is stored.
pub fn new_token() -> Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|_| ApiError::Internal("random number generator failed".into()))?;
    Ok(format!("nbde_{}", nbde_proto::b64::encode(&raw)))
}

/// The authenticated caller.
pub struct Caller(pub Account);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        state
            .store
            .account_by_token(&token_hash(token.trim()))?
            .map(Caller)
            .ok_or(ApiError::Unauthorized)
    }
}

impl Caller {
    /// Server administrators may do everything (per-org roles come with the policy work).
    fn require_admin(&self) -> Result<()> {
        if self.0.is_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("administrator role required".into()))
        }
    }
}

fn valid_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{kind} name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[derive(Deserialize)]
struct NewOrg {
    name: String,
}

async fn list_orgs(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    caller.require_admin()?;
    let orgs: Vec<Value> = state
        .store
        .orgs()?
        .into_iter()
        .map(|o| json!({"name": o.name, "require_source": o.require_source}))
        .collect();
    Ok(Json(json!({"orgs": orgs})))
}

async fn add_org(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewOrg>,
) -> Result<Json<Value>> {
    caller.require_admin()?;
    valid_name("organisation", &body.name)?;
    state
        .store
        .add_org(&body.name, &keys::generate_signing_key()?)?;
    state.store.audit(&caller.0.name, "org add", &body.name)?;
    state.reload_keys()?;
    let thp = state.key_ring().orgs.get(&body.name).and_then(|o| {
        o.signing
            .first()?
            .thumbprint(nbde_proto::ThumbprintHash::S256)
            .ok()
    });
    Ok(Json(json!({"name": body.name, "thp": thp})))
}

#[derive(Deserialize)]
struct NewDevice {
    name: String,
    #[serde(default)]
    curve: Option<String>,
}

fn base_url(state: &AppState, parts_host: Option<&str>) -> String {
    let scheme = if state.settings.tls { "https" } else { "http" };
    match (&state.settings.public_url, parts_host) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(host)) => format!("{scheme}://{host}"),
        (None, None) => String::new(),
    }
}

fn device_json(state: &AppState, org: &str, name: &str, host: Option<&str>) -> Value {
    let ring = state.key_ring();
    let Some(d) = ring.device(org, name) else {
        return json!({"org": org, "name": name});
    };
    let kid = d
        .exchange
        .iter()
        .rev()
        .find(|(_, shown)| *shown)
        .and_then(|(k, _)| k.thumbprint(nbde_proto::ThumbprintHash::S256).ok());
    json!({
        "org": org,
        "name": name,
        "state": d.state.as_str(),
        "url": format!("{}/o/{org}/d/{name}", base_url(state, host)),
        "thp": d.thp(),
        "kid": kid,
        "curve": d.exchange.last().and_then(|(k, _)| k.curve().ok()).map(|c| c.name()),
        "exchange_keys": d.exchange.len(),
    })
}

fn host_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

async fn add_device(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<NewDevice>,
) -> Result<Json<Value>> {
    caller.require_admin()?;
    valid_name("device", &body.name)?;
    let curve = match body.curve.as_deref() {
        None => Curve::P521,
        Some(name) => Curve::from_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    state
        .store
        .add_device(&org, &body.name, &keys::generate_exchange_key(curve)?)?;
    state.store.audit(
        &caller.0.name,
        "device add",
        &format!("{org}/{}", body.name),
    )?;
    state.reload_keys()?;
    Ok(Json(device_json(
        &state,
        &org,
        &body.name,
        host_of(&headers).as_deref(),
    )))
}

async fn list_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    caller.require_admin()?;
    state.store.org_id(&org)?;
    let host = host_of(&headers);
    let ring = state.key_ring();
    let mut names: Vec<&String> = ring
        .devices
        .keys()
        .filter(|(o, _)| *o == org)
        .map(|(_, d)| d)
        .collect();
    names.sort();
    let devices: Vec<Value> = names
        .into_iter()
        .map(|name| device_json(&state, &org, name, host.as_deref()))
        .collect();
    Ok(Json(json!({"devices": devices})))
}

async fn device_action(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device, action)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    caller.require_admin()?;
    match action.as_str() {
        "disable" => state
            .store
            .set_device_state(&org, &device, DeviceState::Disabled)?,
        "enable" => state
            .store
            .set_device_state(&org, &device, DeviceState::Active)?,
        "retire" => state
            .store
            .set_device_state(&org, &device, DeviceState::Retired)?,
        "rotate" => {
            let ring = state.key_ring();
            let curve = ring
                .device(&org, &device)
                .and_then(|d| d.exchange.last().and_then(|(k, _)| k.curve().ok()))
                .unwrap_or(Curve::P521);
            state
                .store
                .rotate_device(&org, &device, &keys::generate_exchange_key(curve)?)?
        }
        other => return Err(ApiError::NotFound(format!("action {other:?}"))),
    }
    state.store.audit(
        &caller.0.name,
        &format!("device {action}"),
        &format!("{org}/{device}"),
    )?;
    state.reload_keys()?;
    Ok(Json(device_json(
        &state,
        &org,
        &device,
        host_of(&headers).as_deref(),
    )))
}

#[derive(Deserialize)]
struct HistoryQuery {
    org: Option<String>,
    device: Option<String>,
    limit: Option<i64>,
}

async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>> {
    caller.require_admin()?;
    let rows = state.store.history(
        q.org.as_deref(),
        q.device.as_deref(),
        q.limit.unwrap_or(100).clamp(1, 10_000),
    )?;
    Ok(Json(json!({"history": rows})))
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/orgs", get(list_orgs).post(add_org))
        .route("/orgs/{org}/devices", get(list_devices).post(add_device))
        .route("/orgs/{org}/devices/{device}/{action}", post(device_action))
        .route("/history", get(history))
}
