//! The admin API under `/admin/v1`: bearer tokens (stored hashed), per-org roles, JSON in
//! and out, every change written to the audit trail.
//!
//! Roles: `owner` does everything in its org, `approver` reads and decides the requests of
//! the groups it approves for, `viewer` reads. A server administrator (the account `init`
//! made) is owner of every org and the only one who creates orgs. A caller with no role in
//! an org gets 403 for anything of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use nbde_proto::{Curve, ThumbprintHash};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::error::{ApiError, Result};
use crate::keys;
use crate::net::Cidr;
use crate::store::policy::Role;
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

/// The authenticated caller and its roles.
pub struct Caller {
    pub account: Account,
    roles: Vec<(String, Role)>,
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let account = state
            .store
            .account_by_token(&token_hash(token.trim()))?
            .ok_or(ApiError::Unauthorized)?;
        let roles = state.store.memberships(account.id)?;
        Ok(Caller { account, roles })
    }
}

impl Caller {
    fn role_in(&self, org: &str) -> Option<Role> {
        if self.account.is_admin {
            return Some(Role::Owner);
        }
        self.roles.iter().find(|(o, _)| o == org).map(|(_, r)| *r)
    }

    fn require(&self, org: &str, needed: Role) -> Result<()> {
        match self.role_in(org) {
            Some(role) if role >= needed => Ok(()),
            _ => Err(ApiError::Forbidden(format!(
                "{} role in {org:?} required",
                needed.as_str()
            ))),
        }
    }

    fn require_admin(&self) -> Result<()> {
        if self.account.is_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("server administrator required".into()))
        }
    }

    /// Orgs the caller may read; None means all.
    fn visible_orgs(&self) -> Option<Vec<String>> {
        (!self.account.is_admin).then(|| self.roles.iter().map(|(o, _)| o.clone()).collect())
    }

    fn name(&self) -> &str {
        &self.account.name
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

fn cidrs(list: &[String]) -> Result<Vec<Cidr>> {
    list.iter()
        .map(|c| c.parse().map_err(ApiError::BadRequest))
        .collect()
}

fn tag_pairs(tags: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    for key in tags.keys() {
        valid_name("tag", key)?;
    }
    Ok(tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Records an admin change and reloads the keys the tang routes use.
fn changed(
    state: &AppState,
    caller: &Caller,
    org: Option<&str>,
    action: &str,
    target: &str,
) -> Result<()> {
    state.store.audit_in(org, caller.name(), action, target)?;
    state.reload_keys()
}

// ---- organisations ----

#[derive(Deserialize)]
struct NewOrg {
    name: String,
}

async fn list_orgs(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let visible = caller.visible_orgs();
    let orgs: Vec<Value> = state
        .store
        .orgs()?
        .into_iter()
        .filter(|o| visible.as_ref().is_none_or(|v| v.contains(&o.name)))
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
    changed(&state, &caller, Some(&body.name), "org add", &body.name)?;
    let thp = state
        .key_ring()
        .orgs
        .get(&body.name)
        .and_then(|o| o.signing.first()?.thumbprint(ThumbprintHash::S256).ok());
    Ok(Json(json!({"name": body.name, "thp": thp})))
}

#[derive(Deserialize)]
struct OrgSettings {
    require_source: bool,
}

async fn org_settings(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<OrgSettings>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    state.store.set_require_source(&org, body.require_source)?;
    let what = if body.require_source {
        "require-source"
    } else {
        "any-source"
    };
    changed(
        &state,
        &caller,
        Some(&org),
        &format!("org set {what}"),
        &org,
    )?;
    Ok(Json(
        json!({"name": org, "require_source": body.require_source}),
    ))
}

// ---- devices ----

#[derive(Deserialize)]
struct NewDevice {
    name: String,
    #[serde(default)]
    curve: Option<String>,
}

fn host_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

fn base_url(state: &AppState, host: Option<&str>) -> String {
    let scheme = if state.settings.tls { "https" } else { "http" };
    match (&state.settings.public_url, host) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(host)) => format!("{scheme}://{host}"),
        (None, None) => String::new(),
    }
}

fn device_json(state: &AppState, org: &str, name: &str, host: Option<&str>) -> Result<Value> {
    let ring = state.key_ring();
    let Some(d) = ring.device(org, name) else {
        return Err(ApiError::NotFound(format!("device {org}/{name}")));
    };
    let kid = d
        .exchange
        .iter()
        .rev()
        .find(|(_, shown)| *shown)
        .and_then(|(k, _)| k.thumbprint(ThumbprintHash::S256).ok());
    let (sources, netlists) = state.store.sources(org, name)?;
    let tags: BTreeMap<String, String> = state.store.tags(org, name)?.into_iter().collect();
    let source = if sources.is_empty() && netlists.is_empty() {
        if d.org.require_source {
            "none (refused: org requires a source)"
        } else {
            "any source"
        }
    } else {
        "restricted"
    };
    Ok(json!({
        "org": org,
        "name": name,
        "state": d.state.as_str(),
        "url": format!("{}/o/{org}/d/{name}", base_url(state, host)),
        "thp": d.thp(),
        "kid": kid,
        "curve": d.exchange.last().and_then(|(k, _)| k.curve().ok()).map(|c| c.name()),
        "exchange_keys": d.exchange.len(),
        "source": source,
        "sources": sources,
        "netlists": netlists,
        "tags": tags,
    }))
}

async fn add_device(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<NewDevice>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    valid_name("device", &body.name)?;
    let curve = match body.curve.as_deref() {
        None => Curve::P521,
        Some(name) => Curve::from_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    state
        .store
        .add_device(&org, &body.name, &keys::generate_exchange_key(curve)?)?;
    changed(
        &state,
        &caller,
        Some(&org),
        "device add",
        &format!("{org}/{}", body.name),
    )?;
    device_json(&state, &org, &body.name, host_of(&headers).as_deref()).map(Json)
}

async fn list_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Viewer)?;
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
    let devices = names
        .into_iter()
        .map(|name| device_json(&state, &org, name, host.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(json!({"devices": devices})))
}

async fn device_action(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device, action)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    let mut extra = json!({});
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
            let curve = state
                .key_ring()
                .device(&org, &device)
                .and_then(|d| d.exchange.last().and_then(|(k, _)| k.curve().ok()))
                .unwrap_or(Curve::P521);
            state
                .store
                .rotate_device(&org, &device, &keys::generate_exchange_key(curve)?)?
        }
        "allow-once" => {
            extra = json!({"allow_once": state.store.allow_once(&org, &device, caller.name())?})
        }
        other => return Err(ApiError::NotFound(format!("action {other:?}"))),
    }
    changed(
        &state,
        &caller,
        Some(&org),
        &format!("device {action}"),
        &format!("{org}/{device}"),
    )?;
    let mut out = device_json(&state, &org, &device, host_of(&headers).as_deref())?;
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct Tags {
    tags: BTreeMap<String, String>,
}

async fn device_tags(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Tags>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    state
        .store
        .set_tags(&org, &device, &tag_pairs(&body.tags)?)?;
    changed(
        &state,
        &caller,
        Some(&org),
        "device tag",
        &format!("{org}/{device}"),
    )?;
    device_json(&state, &org, &device, host_of(&headers).as_deref()).map(Json)
}

#[derive(Deserialize)]
struct SourceChange {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    rm: Vec<String>,
}

async fn device_sources(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<SourceChange>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    state
        .store
        .change_sources(&org, &device, &cidrs(&body.add)?, true)?;
    state
        .store
        .change_sources(&org, &device, &cidrs(&body.rm)?, false)?;
    let target = format!("{org}/{device} +{:?} -{:?}", body.add, body.rm);
    changed(&state, &caller, Some(&org), "allow", &target)?;
    device_json(&state, &org, &device, host_of(&headers).as_deref()).map(Json)
}

async fn device_netlist(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device, name, action)): Path<(String, String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    let attach = match action.as_str() {
        "attach" => true,
        "detach" => false,
        other => return Err(ApiError::NotFound(format!("action {other:?}"))),
    };
    state.store.netlist_attach(&org, &device, &name, attach)?;
    changed(
        &state,
        &caller,
        Some(&org),
        &format!("netlist {action}"),
        &format!("{org}/{device} {name}"),
    )?;
    device_json(&state, &org, &device, host_of(&headers).as_deref()).map(Json)
}

// ---- network-access lists ----

#[derive(Deserialize)]
struct NewNetlist {
    name: String,
    cidrs: Vec<String>,
}

async fn list_netlists(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Viewer)?;
    let lists: Vec<Value> = state
        .store
        .netlists(&org)?
        .into_iter()
        .map(|(name, cidrs)| json!({"name": name, "cidrs": cidrs}))
        .collect();
    Ok(Json(json!({"netlists": lists})))
}

async fn add_netlist(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewNetlist>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    valid_name("network-access list", &body.name)?;
    state
        .store
        .netlist_add(&org, &body.name, &cidrs(&body.cidrs)?)?;
    changed(
        &state,
        &caller,
        Some(&org),
        "netlist add",
        &format!("{org}/{} {:?}", body.name, body.cidrs),
    )?;
    Ok(Json(json!({"name": body.name})))
}

async fn rm_netlist(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    state.store.netlist_rm(&org, &name)?;
    changed(
        &state,
        &caller,
        Some(&org),
        "netlist rm",
        &format!("{org}/{name}"),
    )?;
    Ok(Json(json!({"removed": name})))
}

// ---- approval groups and requests ----

#[derive(Deserialize)]
struct NewGroup {
    name: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    window_seconds: Option<i64>,
}

async fn list_groups(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Viewer)?;
    Ok(Json(json!({"groups": state.store.groups(&org)?})))
}

async fn add_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewGroup>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    valid_name("group", &body.name)?;
    let window = body.window_seconds.unwrap_or(900).clamp(1, 7 * 86400);
    state.store.group_add(
        &org,
        &body.name,
        &tag_pairs(&body.tags)?,
        &body.approvers,
        window,
    )?;
    changed(
        &state,
        &caller,
        Some(&org),
        "group add",
        &format!("{org}/{}", body.name),
    )?;
    Ok(Json(json!({"name": body.name, "window_seconds": window})))
}

async fn rm_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    state.store.group_rm(&org, &name)?;
    changed(
        &state,
        &caller,
        Some(&org),
        "group rm",
        &format!("{org}/{name}"),
    )?;
    Ok(Json(json!({"removed": name})))
}

#[derive(Deserialize)]
struct OrgFilter {
    org: Option<String>,
    device: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    all: bool,
}

/// The orgs a read is scoped to: the one asked for (if the caller may read it), else all
/// the caller may read.
fn scope(caller: &Caller, org: Option<&str>) -> Result<Option<Vec<String>>> {
    match org {
        Some(org) => {
            caller.require(org, Role::Viewer)?;
            Ok(Some(vec![org.to_owned()]))
        }
        None => Ok(caller.visible_orgs()),
    }
}

async fn list_requests(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<OrgFilter>,
) -> Result<Json<Value>> {
    let orgs = scope(&caller, q.org.as_deref())?;
    Ok(Json(
        json!({"requests": state.store.requests(orgs.as_deref(), !q.all)?}),
    ))
}

async fn decide_request(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Json<Value>> {
    if !matches!(action.as_str(), "approve" | "deny" | "defer") {
        return Err(ApiError::NotFound(format!("action {action:?}")));
    }
    let (org, approvers, window) = state.store.request_scope(id)?;
    let may = match caller.role_in(&org) {
        Some(Role::Owner) => true,
        Some(Role::Approver) => approvers.contains(&caller.account.id),
        _ => false,
    };
    if !may {
        return Err(ApiError::Forbidden(format!(
            "not an approver of request {id}"
        )));
    }
    state
        .store
        .decide_request(id, &action, caller.name(), window)?;
    state.store.audit_in(
        Some(&org),
        caller.name(),
        &format!("request {action}"),
        &id.to_string(),
    )?;
    Ok(Json(json!({"id": id, "action": action})))
}

// ---- accounts and tokens ----

#[derive(Deserialize)]
struct NewAccount {
    name: String,
    role: String,
}

async fn add_account(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewAccount>,
) -> Result<Json<Value>> {
    caller.require(&org, Role::Owner)?;
    valid_name("account", &body.name)?;
    let role = Role::parse(&body.role)?;
    state.store.org_id(&org)?;
    let account = match state.store.account_id(&body.name) {
        Ok(id) => id,
        Err(_) => state.store.add_account(&body.name, false)?,
    };
    state.store.add_member(account, &org, role)?;
    let token = new_token()?;
    let token_id = state.store.add_token(account, &token_hash(&token))?;
    changed(
        &state,
        &caller,
        Some(&org),
        &format!("account add {}", role.as_str()),
        &body.name,
    )?;
    Ok(Json(
        json!({"account": body.name, "org": org, "role": role, "token_id": token_id, "token": token}),
    ))
}

async fn add_token(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let token = new_token()?;
    let id = state
        .store
        .add_token(caller.account.id, &token_hash(&token))?;
    state
        .store
        .audit_in(None, caller.name(), "token add", &id.to_string())?;
    Ok(Json(json!({"token_id": id, "token": token})))
}

async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    let own = (!caller.account.is_admin).then_some(caller.account.id);
    state.store.revoke_token(id, own)?;
    state
        .store
        .audit_in(None, caller.name(), "token revoke", &id.to_string())?;
    Ok(Json(json!({"revoked": id})))
}

// ---- history and audit ----

async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<OrgFilter>,
) -> Result<Json<Value>> {
    let orgs = scope(&caller, q.org.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = match &orgs {
        None => state
            .store
            .history(q.org.as_deref(), q.device.as_deref(), limit)?,
        Some(list) => {
            let mut rows = Vec::new();
            for org in list {
                rows.extend(state.store.history(Some(org), q.device.as_deref(), limit)?);
            }
            rows.sort_by_key(|r| std::cmp::Reverse(r.at));
            rows.truncate(limit as usize);
            rows
        }
    };
    Ok(Json(json!({"history": rows})))
}

async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<OrgFilter>,
) -> Result<Json<Value>> {
    let orgs = scope(&caller, q.org.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        json!({"audit": state.store.audit_log(orgs.as_deref(), limit)?}),
    ))
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/orgs", get(list_orgs).post(add_org))
        .route("/orgs/{org}/settings", post(org_settings))
        .route("/orgs/{org}/devices", get(list_devices).post(add_device))
        .route("/orgs/{org}/devices/{device}/tags", post(device_tags))
        .route("/orgs/{org}/devices/{device}/sources", post(device_sources))
        .route(
            "/orgs/{org}/devices/{device}/netlists/{name}/{action}",
            post(device_netlist),
        )
        .route("/orgs/{org}/devices/{device}/{action}", post(device_action))
        .route("/orgs/{org}/netlists", get(list_netlists).post(add_netlist))
        .route("/orgs/{org}/netlists/{name}/rm", post(rm_netlist))
        .route("/orgs/{org}/groups", get(list_groups).post(add_group))
        .route("/orgs/{org}/groups/{name}/rm", post(rm_group))
        .route("/orgs/{org}/accounts", post(add_account))
        .route("/requests", get(list_requests))
        .route("/requests/{id}/{action}", post(decide_request))
        .route("/tokens", post(add_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/history", get(history))
        .route("/audit", get(audit))
}
