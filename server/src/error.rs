//! One error type for the HTTP layer: each maps to a fixed status and problem type. The
//! cause is logged; the client sees only the type and a fixed title.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Clone, Debug)]
pub enum ApiError {
    /// Malformed admin request; the caller is told what was wrong.
    BadRequest(String),
    /// Malformed `/rec` body or point. Anyone may send one, so the answer is the bare
    /// problem type; the detail goes to the log and the history.
    Malformed(String),
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// The policy refused: `kind` is the problem type (denied, disabled, pending-approval).
    Refused {
        kind: &'static str,
        retry_after: Option<u64>,
    },
    /// Too many attempts from one source: try again after `retry_after` seconds.
    TooManyRequests {
        retry_after: u64,
    },
    /// The store cannot be reached or cannot confirm a write: the server takes no part and
    /// tells the client when to try again (a replica or the database may be back by then).
    Unavailable(String),
    Internal(String),
}

/// Seconds a client should wait after a 503 before trying again.
pub const UNAVAILABLE_RETRY_SECONDS: u64 = 1;

pub type Result<T> = std::result::Result<T, ApiError>;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::BadRequest(m) | ApiError::Malformed(m) => write!(f, "bad request: {m}"),
            ApiError::Unauthorized => write!(f, "unauthorized"),
            ApiError::Forbidden(m) => write!(f, "forbidden: {m}"),
            ApiError::NotFound(m) => write!(f, "not found: {m}"),
            ApiError::Conflict(m) => write!(f, "conflict: {m}"),
            ApiError::Refused { kind, .. } => write!(f, "refused: {kind}"),
            ApiError::TooManyRequests { retry_after } => {
                write!(f, "too many requests: retry after {retry_after} s")
            }
            ApiError::Unavailable(m) => write!(f, "unavailable: {m}"),
            ApiError::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

impl std::error::Error for ApiError {}

fn problem(status: StatusCode, kind: &str, detail: Option<&str>) -> Response {
    let mut body = json!({"type": kind, "title": status.canonical_reason().unwrap_or(""), "status": status.as_u16()});
    if let Some(detail) = detail {
        body["detail"] = detail.into();
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            // Admin API errors say what was wrong: the caller is authenticated.
            ApiError::BadRequest(m) => problem(StatusCode::BAD_REQUEST, "bad-request", Some(&m)),
            ApiError::Malformed(m) => {
                tracing::info!(detail = %m, "malformed recovery request");
                problem(StatusCode::BAD_REQUEST, "bad-request", None)
            }
            ApiError::Unauthorized => problem(StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(m) => problem(StatusCode::FORBIDDEN, "forbidden", Some(&m)),
            ApiError::NotFound(m) => problem(StatusCode::NOT_FOUND, "not-found", Some(&m)),
            ApiError::Conflict(m) => problem(StatusCode::CONFLICT, "conflict", Some(&m)),
            ApiError::Refused { kind, retry_after } => {
                let mut response = problem(StatusCode::FORBIDDEN, kind, None);
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
            ApiError::TooManyRequests { retry_after } => {
                let mut response =
                    problem(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                response
            }
            ApiError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_SECONDS),
                );
                response
            }
            ApiError::Internal(m) => {
                // Never echo internals.
                tracing::error!(error = %m, "internal error");
                problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        }
    }
}

/// The store's errors at the edge: its conflicts and misses are the caller's to see, its
/// failures are logged and answered 503 with Retry-After.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}
