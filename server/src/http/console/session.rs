//! Console sessions: a random cookie value whose SHA-256 names a store row (replicas share
//! them), idle and absolute expiry, and the CSRF token each session carries.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::PageError;
use crate::error::{ApiError, Result};
use crate::http::admin::{Caller, new_token, token_hash};
use crate::http::{AppState, blocking};
use crate::store::{ConsoleSession, now};

pub const COOKIE: &str = "nbde_session";
/// A session unused this long is over: an approver's phone left signed in on a table.
pub const IDLE_SECONDS: i64 = 30 * 60;
/// A session is over this long after sign-in, however busy.
pub const ABSOLUTE_SECONDS: i64 = 12 * 3600;
/// Last-seen is written at most this often, not on every page.
const TOUCH_EVERY: i64 = 60;

/// The session cookie's value, if the request carries one.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether the browser reached us on loopback, where a cookie cannot be Secure over plain
/// HTTP; everywhere else it is.
fn loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The Set-Cookie value for `value` (None: clear it).
pub fn set_cookie(headers: &HeaderMap, value: Option<&str>) -> HeaderValue {
    let secure = if loopback(headers) { "" } else { "; Secure" };
    let cookie = match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={ABSOLUTE_SECONDS}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A new session row; returns the cookie value (shown to the browser only).
pub fn create(state: &AppState, account: Option<i64>) -> Result<String> {
    // Rows of sessions nobody will present again go when new ones come.
    let t = now();
    state
        .store
        .sessions_expire(t - IDLE_SECONDS, t - ABSOLUTE_SECONDS)?;
    let value = new_token()?;
    let csrf = new_token()?;
    state
        .store
        .session_add(&token_hash(&value), account, &csrf)?;
    Ok(value)
}

fn expired(session: &ConsoleSession, t: i64) -> bool {
    t - session.last_seen_at > IDLE_SECONDS || t - session.created_at > ABSOLUTE_SECONDS
}

/// The live session named by the request's cookie (expired ones are deleted on sight).
pub async fn load(
    state: &Arc<AppState>,
    headers: &HeaderMap,
) -> Result<Option<(Vec<u8>, ConsoleSession)>> {
    let Some(value) = cookie_value(headers) else {
        return Ok(None);
    };
    let hash = token_hash(&value);
    blocking(state, move |s| {
        let Some(session) = s.store.session(&hash)? else {
            return Ok(None);
        };
        let t = now();
        if expired(&session, t) {
            s.store.session_rm(&hash)?;
            return Ok(None);
        }
        if t - session.last_seen_at >= TOUCH_EVERY {
            s.store.session_touch(&hash)?;
        }
        Ok(Some((hash, session)))
    })
    .await
}

/// A signed-in console user: the admin API's caller, and what its forms must carry.
pub struct Signed {
    pub caller: Caller,
    pub csrf: String,
    pub hash: Vec<u8>,
}

impl Signed {
    /// Refuses a form whose token is not this session's.
    pub fn check(&self, token: &str) -> std::result::Result<(), PageError> {
        if bool::from(token.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(PageError(ApiError::Forbidden(
                "the form's token is not this session's: reload the page".into(),
            )))
        }
    }

    pub fn name(&self) -> &str {
        &self.caller.account.name
    }
}

/// Not signed in: pages go to the sign-in page, anything else is refused.
pub struct SignInFirst(bool);

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        if self.0 {
            Redirect::to("/console/signin").into_response()
        } else {
            PageError(ApiError::Unauthorized).into_response()
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> std::result::Result<Signed, Response> {
        let page = parts.method == axum::http::Method::GET;
        let loaded = load(state, &parts.headers)
            .await
            .map_err(|e| PageError(e).into_response())?;
        let Some((hash, session)) = loaded else {
            return Err(SignInFirst(page).into_response());
        };
        let Some(account) = session.account else {
            return Err(SignInFirst(page).into_response());
        };
        let caller = blocking(state, move |s| Caller::of_account(s, account))
            .await
            .map_err(|e| PageError(e).into_response())?;
        Ok(Signed {
            caller,
            csrf: session.csrf,
            hash,
        })
    }
}
