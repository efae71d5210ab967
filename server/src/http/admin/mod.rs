//! The admin API under `/admin/v1`: bearer tokens (stored hashed), per-org roles, the
//! bodies of `crate::api` in and out, every change written to the audit trail. One route
//! per verb, grouped by area in the child modules; every handler runs its store calls off
//! the async workers.
//!
//! Roles: `owner` does everything in its org, `approver` reads and decides the requests of
//! the groups it approves for, `viewer` reads. A server administrator (the account `init`
//! made) is owner of every org and the only one who creates orgs. A caller with no role in
//! an org gets 403 for anything of it.

pub(crate) mod accounts;
pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod devices;
pub(crate) mod escrow;
pub(crate) mod policy;
pub(crate) mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use super::{AppState, blocking};
use crate::api::{Device, MAX_ESCROW_BODY, Role};
use crate::error::{ApiError, Result};
use crate::net::Cidr;
use crate::store::Account;

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
#[derive(Clone)]
pub struct Caller {
    pub account: Account,
    roles: Vec<(String, Role)>,
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|peer| state.client_address(peer.0.ip(), &parts.headers));
        if let Some(source) = source {
            state
                .failed_tokens
                .admit(source)
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let hash = token_hash(token.trim());
        let found = blocking(state, move |s| {
            let account = s
                .store
                .account_by_token(&hash)?
                .ok_or(ApiError::Unauthorized)?;
            let roles = s.store.memberships(account.id)?;
            Ok(Caller { account, roles })
        })
        .await;
        match (&found, source) {
            (Err(ApiError::Unauthorized), Some(source)) => {
                tracing::debug!(%source, "admin: token matches no account");
                state.failed_tokens.failed(source);
            }
            (Ok(caller), _) => tracing::debug!(
                account = %caller.account.name,
                method = %parts.method,
                // Under /admin/v1, where this router is nested.
                path = %parts.uri.path(),
                "admin"
            ),
            _ => {}
        }
        found
    }
}

impl Caller {
    /// The caller `account` is, with its roles: how the web console acts through the same
    /// handlers as the API (blocking: it reads the store).
    pub(crate) fn of_account(state: &AppState, account: Account) -> Result<Caller> {
        let roles = state.store.memberships(account.id)?;
        Ok(Caller { account, roles })
    }

    /// Each org the caller has a role in, with that role (a server administrator: none
    /// listed, owner of all).
    pub(crate) fn roles(&self) -> &[(String, Role)] {
        &self.roles
    }

    pub(crate) fn role_in(&self, org: &str) -> Option<Role> {
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

    /// The orgs a read is scoped to: the one asked for (if the caller may read it), else
    /// all the caller may read.
    fn scope(&self, org: Option<&str>) -> Result<Option<Vec<String>>> {
        match org {
            Some(org) => {
                self.require(org, Role::Viewer)?;
                Ok(Some(vec![org.to_owned()]))
            }
            None => Ok(self.visible_orgs()),
        }
    }

    fn name(&self) -> &str {
        &self.account.name
    }
}

/// Runs a handler's body on the blocking pool and answers its value as JSON.
async fn run<T: Send + 'static>(
    state: Arc<AppState>,
    body: impl FnOnce(&AppState) -> Result<T> + Send + 'static,
) -> Result<Json<T>> {
    blocking(&state, body).await.map(Json)
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

/// Records an admin action in the audit trail.
fn audited(
    state: &AppState,
    caller: &Caller,
    org: Option<&str>,
    action: &str,
    target: &str,
) -> Result<()> {
    Ok(state.store.audit_in(org, caller.name(), action, target)?)
}

/// Records an admin change and reloads the keys the tang routes use.
fn changed(
    state: &AppState,
    caller: &Caller,
    org: Option<&str>,
    action: &str,
    target: &str,
) -> Result<()> {
    audited(state, caller, org, action, target)?;
    state.reload_keys()
}

/// Records an admin change to one device and reloads that device's keys only.
fn device_changed(
    state: &AppState,
    caller: &Caller,
    (org, device): (&str, &str),
    action: &str,
) -> Result<()> {
    audited(state, caller, Some(org), action, &format!("{org}/{device}"))?;
    state.reload_device(org, device)
}

fn host_of(headers: &HeaderMap) -> Option<String> {
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

/// A device as the admin API shows it.
fn device_view(state: &AppState, org: &str, name: &str, host: Option<&str>) -> Result<Device> {
    let ring = state.key_ring();
    let Some(d) = ring.device(org, name) else {
        return Err(ApiError::NotFound(format!("device {org}/{name}")));
    };
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
    Ok(Device {
        org: org.to_owned(),
        name: name.to_owned(),
        state: d.state,
        url: format!("{}/o/{org}/d/{name}", base_url(state, host)),
        thp: d.thp().map(str::to_owned),
        kid: d.kid().map(str::to_owned),
        curve: d.curve().map(|c| c.name().to_owned()),
        exchange_keys: d.exchange_count(),
        source: source.to_owned(),
        sources,
        netlists,
        tags,
        allow_once: None,
        mode: state.store.device_mode(org, name)?,
        escrow: state.store.escrow_info(org, name)?,
        max_silence: {
            let (own, of_org) = state.store.max_silence(org, name)?;
            own.or(of_org)
        },
    })
}

pub fn router() -> Router<Arc<AppState>> {
    let device = "/orgs/{org}/devices/{device}";
    Router::new()
        .route("/orgs", get(devices::list_orgs).post(devices::add_org))
        .route("/orgs/{org}/devices", get(devices::list).post(devices::add))
        .route(device, get(devices::show))
        .route(&format!("{device}/disable"), post(devices::disable))
        .route(&format!("{device}/enable"), post(devices::enable))
        .route(&format!("{device}/retire"), post(devices::retire))
        .route(&format!("{device}/rotate"), post(devices::rotate))
        .route(&format!("{device}/mode"), post(devices::mode))
        .route(&format!("{device}/liveness"), post(devices::liveness))
        .route("/orgs/{org}/liveness", post(devices::org_liveness))
        .route(
            "/orgs/{org}/escrow-key",
            get(escrow::key).post(escrow::set_key),
        )
        .route(
            &format!("{device}/escrow"),
            get(escrow::get)
                .post(escrow::put)
                .layer(DefaultBodyLimit::max(MAX_ESCROW_BODY)),
        )
        .route(&format!("{device}/escrow/rm"), post(escrow::rm))
        .route("/orgs/{org}/settings", post(policy::org_settings))
        .route(&format!("{device}/tags"), post(policy::tags))
        .route(&format!("{device}/sources"), post(policy::sources))
        .route(
            &format!("{device}/netlists/{{name}}/attach"),
            post(policy::attach),
        )
        .route(
            &format!("{device}/netlists/{{name}}/detach"),
            post(policy::detach),
        )
        .route(
            "/orgs/{org}/netlists",
            get(policy::list_netlists).post(policy::add_netlist),
        )
        .route("/orgs/{org}/netlists/{name}/rm", post(policy::rm_netlist))
        .route(&format!("{device}/allow-once"), post(approvals::allow_once))
        .route(
            "/orgs/{org}/groups",
            get(approvals::list_groups).post(approvals::add_group),
        )
        .route("/orgs/{org}/groups/{name}/rm", post(approvals::rm_group))
        .route("/requests", get(approvals::list_requests))
        .route("/requests/{id}/approve", post(approvals::approve))
        .route("/requests/{id}/deny", post(approvals::deny))
        .route("/requests/{id}/defer", post(approvals::defer))
        .route("/orgs/{org}/accounts", post(accounts::add_account))
        .route("/tokens", post(accounts::add_token))
        .route("/tokens/{id}/revoke", post(accounts::revoke_token))
        .route(
            "/orgs/{org}/webhooks",
            get(webhooks::list).post(webhooks::add),
        )
        .route("/orgs/{org}/webhooks/{id}/rm", post(webhooks::rm))
        .route("/history", get(audit::history))
        .route("/audit", get(audit::audit))
}
