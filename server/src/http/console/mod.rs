//! The web console under `/console`: server-rendered pages for the people who approve
//! unlocks, acting through the admin API's own handlers (so the console and the CLI share
//! every check and every audit row), signed in with a passkey or, the first time, a
//! bearer token.
//!
//! Browser defences: a session cookie that is HttpOnly and SameSite=Strict (Secure unless
//! the page is served to loopback), idle and absolute expiry, a CSRF token on every form
//! and console POST, an Origin check on every POST, and a Content Security Policy with no
//! inline script (the one script is a file of ours, for live approvals and passkeys).

mod actions;
mod approvals;
mod auth;
mod layout;
mod orgs;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AppState;
use crate::error::ApiError;

pub use auth::PasskeyConfig;

/// What the console needs besides the admin API: passkey settings and sign-in limits.
pub struct ConsoleState {
    pub passkeys: Option<PasskeyConfig>,
    sign_in: auth::SignInLimiter,
}

impl ConsoleState {
    pub fn new(passkeys: Option<PasskeyConfig>) -> ConsoleState {
        ConsoleState {
            passkeys,
            sign_in: auth::SignInLimiter::new(),
        }
    }
}

/// Served on every console response: nothing runs but our own script, nothing embeds us,
/// nothing is cached.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A POST whose Origin is another site is refused before anything else: with the
/// SameSite cookie and the form token, a third line against cross-site requests, and the
/// only one for sign-in, where there is no session yet.
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok());
        if let Some(origin) = origin {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            if origin_host.is_none() || origin_host != host {
                return PageError(ApiError::Forbidden("cross-site request".into())).into_response();
            }
        }
    }
    next.run(request).await
}

/// An error shown as a page with the admin API's status for it.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let api = self.0.clone().into_response();
        let status = api.status();
        let mut response = (status, layout::error_page(status, &self.0)).into_response();
        if let Some(retry) = api.headers().get(header::RETRY_AFTER) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry.clone());
        }
        response
    }
}

pub type PageResult = std::result::Result<Response, PageError>;

/// After a change: back to the page it was made on (303, so a reload does not post again).
fn see(path: &str) -> Response {
    Redirect::to(path).into_response()
}

async fn asset_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../../assets/console.css"),
    )
}

async fn asset_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

pub fn router() -> Router<Arc<AppState>> {
    let device = "/orgs/{org}/devices/{device}";
    let routes = Router::new()
        .route("/", get(|| async { see("/console/devices") }))
        .route("/assets/console.css", get(asset_css))
        .route("/assets/console.js", get(asset_js))
        .route("/signin", get(auth::signin_page).post(auth::signin_token))
        .route("/signin/passkey/start", post(auth::passkey_signin_start))
        .route("/signin/passkey/finish", post(auth::passkey_signin_finish))
        .route("/signout", post(auth::signout))
        .route("/passkeys", get(auth::passkeys_page))
        .route("/passkeys/start", post(auth::passkey_add_start))
        .route("/passkeys/finish", post(auth::passkey_add_finish))
        .route("/devices", get(pages::devices))
        .route(device, get(pages::device))
        .route(&format!("{device}/{{verb}}"), post(actions::device_verb))
        .route("/requests", get(approvals::requests))
        .route("/requests/events", get(approvals::events))
        .route("/requests/{id}", get(approvals::request))
        .route("/requests/{id}/{verdict}", post(approvals::decide))
        .route(
            "/orgs/{org}/netlists",
            get(orgs::netlists).post(orgs::netlist_add),
        )
        .route("/orgs/{org}/netlists/{name}/rm", post(orgs::netlist_rm))
        .route(
            "/orgs/{org}/groups",
            get(orgs::groups).post(orgs::group_add),
        )
        .route("/orgs/{org}/groups/{name}/rm", post(orgs::group_rm))
        .route(
            "/orgs/{org}/accounts",
            get(orgs::accounts).post(orgs::account_add),
        )
        .route("/audit", get(orgs::audit));
    routes
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::from_fn(security_headers))
}
