//! Signing in and out: a bearer token (how the first sign-in happens), passkeys (WebAuthn
//! through webauthn-rs, enrolled by a signed-in account), and the rate limit on attempts.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use serde_json::json;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::session::{self, Signed};
use super::{PageError, PageResult, layout};
use crate::error::ApiError;
use crate::http::admin::token_hash;
use crate::http::{AppState, blocking};

/// The relying party: the console's origin, whose host is the passkeys' RP ID.
pub struct PasskeyConfig {
    webauthn: Webauthn,
}

impl PasskeyConfig {
    /// From the console's origin as browsers see it, e.g. `https://nbde.example`.
    pub fn new(origin: &str) -> Result<PasskeyConfig, String> {
        let url = Url::parse(origin).map_err(|e| format!("console origin {origin:?}: {e}"))?;
        let rp_id = url
            .host_str()
            .ok_or_else(|| format!("console origin {origin:?} has no host"))?
            .to_owned();
        if rp_id.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return Err(format!(
                "console origin {origin:?}: passkeys need a host name, not an address"
            ));
        }
        let webauthn = WebauthnBuilder::new(&rp_id, &url)
            .and_then(|b| b.rp_name("nbde").build())
            .map_err(|e| format!("console origin {origin:?}: {e}"))?;
        Ok(PasskeyConfig { webauthn })
    }
}

/// Seconds between attempts once the burst is spent.
const RETRY_SECONDS: u64 = 6;

/// Sign-in attempts per client address: a burst of 5, then one every 6 seconds.
pub struct SignInLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl SignInLimiter {
    pub fn new() -> SignInLimiter {
        let quota = Quota::per_minute(NonZeroU32::new(10).expect("10 > 0"))
            .allow_burst(NonZeroU32::new(5).expect("5 > 0"));
        SignInLimiter(DefaultKeyedRateLimiter::keyed(quota))
    }

    fn check(&self, client: IpAddr) -> Result<(), PageError> {
        self.0.check_key(&client).map_err(|_| {
            PageError(ApiError::TooManyRequests {
                retry_after: RETRY_SECONDS,
            })
        })
    }
}

fn client(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    state.client_address(peer.ip(), headers)
}

/// A ceremony in progress, kept in the session row (so a replica behind a load balancer
/// can finish what another started).
#[derive(Serialize, Deserialize)]
enum Ceremony {
    Enrol {
        account: i64,
        name: String,
        state: PasskeyRegistration,
    },
    SignIn {
        account: i64,
        state: PasskeyAuthentication,
    },
}

fn passkeys_of(config: &PasskeyConfig) -> &Webauthn {
    &config.webauthn
}

fn passkey_config(state: &AppState) -> Result<&PasskeyConfig, PageError> {
    state.console.passkeys.as_ref().ok_or_else(|| {
        PageError(ApiError::NotFound(
            "passkeys: the server has no console origin (serve --console-origin)".into(),
        ))
    })
}

fn internal(what: &str) -> impl Fn(webauthn_rs::prelude::WebauthnError) -> PageError + '_ {
    move |e| PageError(ApiError::BadRequest(format!("{what}: {e}")))
}

pub async fn signin_page(State(state): State<Arc<AppState>>) -> Response {
    layout::signin_page(state.console.passkeys.is_some(), None).into_response()
}

#[derive(Deserialize)]
pub struct TokenForm {
    token: String,
}

/// A signed-in session for `account`: a fresh cookie (a value from before sign-in never
/// becomes signed in), and the sign-in in the audit trail.
fn signed_in(
    state: &AppState,
    account: &crate::store::Account,
    how: &str,
) -> crate::error::Result<String> {
    let value = session::create(state, Some(account.id))?;
    state
        .store
        .audit_in(None, &account.name, "console sign-in", how)?;
    Ok(value)
}

pub async fn signin_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> PageResult {
    state
        .console
        .sign_in
        .check(client(&state, peer, &headers))?;
    let hash = token_hash(form.token.trim());
    let value = blocking(&state, move |s| {
        let account = s
            .store
            .account_by_token(&hash)?
            .ok_or(ApiError::Unauthorized)?;
        signed_in(s, &account, "token")
    })
    .await;
    let value = match value {
        Ok(v) => v,
        Err(ApiError::Unauthorized) => {
            let page = layout::signin_page(
                state.console.passkeys.is_some(),
                Some("That token is not valid."),
            );
            return Ok((axum::http::StatusCode::UNAUTHORIZED, page).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let mut response = Redirect::to("/console/devices").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&headers, Some(&value)),
    );
    Ok(response)
}

pub async fn signout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(value) = session::cookie_value(&headers) {
        let hash = token_hash(&value);
        let _ = blocking(&state, move |s| Ok(s.store.session_rm(&hash)?)).await;
    }
    let mut response = Redirect::to("/console/signin").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&headers, None));
    response
}

#[derive(Deserialize)]
pub struct SignInStart {
    account: String,
}

/// Starts a passkey sign-in for an account: an anonymous session holds the challenge.
pub async fn passkey_signin_start(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<SignInStart>,
) -> PageResult {
    state
        .console
        .sign_in
        .check(client(&state, peer, &headers))?;
    let config = passkey_config(&state)?;
    let stored = blocking(&state, move |s| {
        let id = s.store.account_id(&body.account)?;
        Ok((id, s.store.passkeys(id)?))
    })
    .await
    // One answer for "no such account" and "no passkey": names are not probed here.
    .map_err(|_| PageError(ApiError::NotFound("no passkey for that account".into())))?;
    let (account, stored) = stored;
    let keys: Vec<Passkey> = stored
        .iter()
        .filter_map(|p| serde_json::from_str(&p.credential).ok())
        .collect();
    if keys.is_empty() {
        return Err(PageError(ApiError::NotFound(
            "no passkey for that account".into(),
        )));
    }
    let (challenge, auth) = passkeys_of(config)
        .start_passkey_authentication(&keys)
        .map_err(internal("passkey sign-in"))?;
    let ceremony = serde_json::to_string(&Ceremony::SignIn {
        account,
        state: auth,
    })
    .map_err(|e| PageError(ApiError::Internal(e.to_string())))?;
    let value = blocking(&state, move |s| {
        let value = session::create(s, None)?;
        s.store
            .session_ceremony(&token_hash(&value), Some(&ceremony))?;
        Ok(value)
    })
    .await?;
    let mut response = Json(challenge).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&headers, Some(&value)),
    );
    Ok(response)
}

/// Takes the ceremony of the request's session (once: a replayed finish finds none).
async fn take_ceremony(
    state: &Arc<AppState>,
    headers: &HeaderMap,
) -> Result<(Vec<u8>, Ceremony), PageError> {
    let (hash, _) = session::load(state, headers)
        .await?
        .ok_or(PageError(ApiError::Unauthorized))?;
    let key = hash.clone();
    let taken = blocking(state, move |s| Ok(s.store.session_ceremony(&key, None)?)).await?;
    let ceremony = taken
        .and_then(|c| serde_json::from_str(&c).ok())
        .ok_or_else(|| PageError(ApiError::BadRequest("no passkey ceremony under way".into())))?;
    Ok((hash, ceremony))
}

pub async fn passkey_signin_finish(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(credential): Json<PublicKeyCredential>,
) -> PageResult {
    state
        .console
        .sign_in
        .check(client(&state, peer, &headers))?;
    let config = passkey_config(&state)?;
    let (anonymous, ceremony) = take_ceremony(&state, &headers).await?;
    let Ceremony::SignIn {
        account,
        state: auth,
    } = ceremony
    else {
        return Err(PageError(ApiError::BadRequest("not a sign-in".into())));
    };
    let result = passkeys_of(config)
        .finish_passkey_authentication(&credential, &auth)
        .map_err(|_| PageError(ApiError::Unauthorized))?;
    let value = blocking(&state, move |s| {
        for stored in s.store.passkeys(account)? {
            let Ok(mut key) = serde_json::from_str::<Passkey>(&stored.credential) else {
                continue;
            };
            if key.cred_id() == result.cred_id() {
                key.update_credential(&result);
                let json =
                    serde_json::to_string(&key).map_err(|e| ApiError::Internal(e.to_string()))?;
                s.store.passkey_used(stored.id, &json)?;
            }
        }
        s.store.session_rm(&anonymous)?;
        let who = account_by_id(s, account)?;
        signed_in(s, &who, "passkey")
    })
    .await?;
    let mut response = Json(json!({"next": "/console/devices"})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&headers, Some(&value)),
    );
    Ok(response)
}

fn account_by_id(state: &AppState, id: i64) -> crate::error::Result<crate::store::Account> {
    state
        .store
        .account_by_id(id)?
        .ok_or_else(|| ApiError::NotFound(format!("account {id}")))
}

pub async fn passkeys_page(State(state): State<Arc<AppState>>, signed: Signed) -> PageResult {
    let account = signed.caller.account.id;
    let keys = blocking(&state, move |s| Ok(s.store.passkeys(account)?)).await?;
    Ok(layout::passkeys_page(&signed, &keys, state.console.passkeys.is_some()).into_response())
}

#[derive(Deserialize)]
pub struct EnrolStart {
    name: String,
}

fn csrf_header(signed: &Signed, headers: &HeaderMap) -> Result<(), PageError> {
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    signed.check(token)
}

pub async fn passkey_add_start(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Json(body): Json<EnrolStart>,
) -> PageResult {
    csrf_header(&signed, &headers)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 {
        return Err(PageError(ApiError::BadRequest(
            "name the passkey (1-64 characters)".into(),
        )));
    }
    let config = passkey_config(&state)?;
    let account = signed.caller.account.clone();
    let existing = blocking(&state, move |s| Ok(s.store.passkeys(account.id)?)).await?;
    let exclude = existing
        .iter()
        .filter_map(|p| serde_json::from_str::<Passkey>(&p.credential).ok())
        .map(|k| k.cred_id().clone())
        .collect::<Vec<_>>();
    let user = Uuid::from_u64_pair(0, signed.caller.account.id as u64);
    let (challenge, registration) = passkeys_of(config)
        .start_passkey_registration(user, signed.name(), signed.name(), Some(exclude))
        .map_err(internal("passkey enrolment"))?;
    let ceremony = serde_json::to_string(&Ceremony::Enrol {
        account: signed.caller.account.id,
        name,
        state: registration,
    })
    .map_err(|e| PageError(ApiError::Internal(e.to_string())))?;
    let hash = signed.hash.clone();
    blocking(&state, move |s| {
        Ok(s.store.session_ceremony(&hash, Some(&ceremony))?)
    })
    .await?;
    Ok(Json(challenge).into_response())
}

pub async fn passkey_add_finish(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Json(credential): Json<RegisterPublicKeyCredential>,
) -> PageResult {
    csrf_header(&signed, &headers)?;
    let config = passkey_config(&state)?;
    let (_, ceremony) = take_ceremony(&state, &headers).await?;
    let Ceremony::Enrol {
        account,
        name,
        state: registration,
    } = ceremony
    else {
        return Err(PageError(ApiError::BadRequest("not an enrolment".into())));
    };
    if account != signed.caller.account.id {
        return Err(PageError(ApiError::Forbidden(
            "another account's ceremony".into(),
        )));
    }
    let key = passkeys_of(config)
        .finish_passkey_registration(&credential, &registration)
        .map_err(internal("passkey enrolment"))?;
    let json =
        serde_json::to_string(&key).map_err(|e| PageError(ApiError::Internal(e.to_string())))?;
    let who = signed.name().to_owned();
    blocking(&state, move |s| {
        s.store.passkey_add(account, &name, &json)?;
        s.store.audit_in(None, &who, "passkey add", &name)?;
        Ok(())
    })
    .await?;
    Ok(Json(json!({"next": "/console/passkeys"})).into_response())
}
