//! The page frame (head, navigation, sign-out), the sign-in and passkey pages, the error
//! page, and the small pieces every page uses: times, pagination, a form's token field.
//! maud escapes every interpolated value, so nothing a device or an account is named can
//! become markup.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::session::Signed;
use crate::error::ApiError;
use crate::store::StoredPasskey;

/// Rows per page of every list.
pub const PAGE_SIZE: usize = 25;

pub use crate::api::utc as when;

/// The hidden field every form carries.
pub fn token(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            @if let Some(csrf) = csrf { meta name="csrf-token" content=(csrf); }
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · nbde" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A signed-in page: navigation, the account, sign-out, then `body`.
pub fn page(signed: &Signed, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&signed.csrf)))
            body {
                header {
                    nav {
                        a href="/console/devices" { "Devices" }
                        a href="/console/requests" { "Approvals" }
                        a href="/console/audit" { "Audit" }
                        @for (org, _) in signed.caller.roles() {
                            a href={ "/console/orgs/" (org) "/netlists" } { (org) }
                        }
                        a href="/console/passkeys" { "Passkeys" }
                    }
                    form.signout method="post" action="/console/signout" {
                        (token(signed))
                        span.who { (signed.name()) }
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error_page(status: StatusCode, error: &ApiError) -> Markup {
    let message = match error {
        // The API's own wording for these is meant for people; the rest say only what.
        ApiError::BadRequest(m) | ApiError::Forbidden(m) | ApiError::NotFound(m) => m.clone(),
        ApiError::Conflict(m) => m.clone(),
        ApiError::Unauthorized => "Sign in first.".into(),
        ApiError::Refused { kind, .. } => format!("Refused: {kind}. Wait and try again."),
        ApiError::TooManyRequests { retry_after } => {
            format!("Too many attempts: wait {retry_after} seconds and try again.")
        }
        _ => "The server cannot do that now; try again shortly.".into(),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error", None))
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error { (message) }
                    p { a href="/console/devices" { "Back to the console" } }
                }
            }
        }
    }
}

pub fn signin_page(passkeys: bool, problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", None))
            body {
                main.narrow {
                    h1 { "Sign in to nbde" }
                    @if let Some(problem) = problem { p.error { (problem) } }
                    @if passkeys {
                        form #passkey-signin {
                            label { "Account" input name="account" autocomplete="username webauthn" required; }
                            button type="submit" { "Sign in with a passkey" }
                            p.error #passkey-error hidden {}
                        }
                    }
                    details open[!passkeys] {
                        summary { "Sign in with a token" }
                        form method="post" action="/console/signin" {
                            label { "Token" input type="password" name="token" autocomplete="off" required; }
                            button type="submit" { "Sign in" }
                        }
                    }
                }
            }
        }
    }
}

pub fn passkeys_page(signed: &Signed, keys: &[StoredPasskey], enabled: bool) -> Markup {
    page(
        signed,
        "Passkeys",
        html! {
            @if keys.is_empty() {
                p { "No passkey yet: add one, then sign in with it instead of a token." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Added" } th { "Last used" } } }
                    tbody {
                        @for k in keys {
                            tr {
                                td { (k.name) }
                                td { (when(k.created_at)) }
                                td { (k.last_used_at.map(when).unwrap_or_else(|| "never".into())) }
                            }
                        }
                    }
                }
            }
            @if enabled {
                form #passkey-add {
                    label { "Name" input name="name" value="this device" required maxlength="64"; }
                    button type="submit" { "Add a passkey" }
                    p.error #passkey-error hidden {}
                }
            } @else {
                p { "Passkeys need the server's console origin (serve --console-origin)." }
            }
        },
    )
}

/// Page links for a list of `total` rows (None: unknown, `more` says whether a next page
/// exists) shown `PAGE_SIZE` at a time; `base` already holds the page's other query.
pub fn pager(base: &str, page: usize, more: bool) -> Markup {
    let join = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.pager {
            @if page > 1 {
                a rel="prev" href={ (base) (join) "page=" (page - 1) } { "← Newer" }
            }
            span { "Page " (page) }
            @if more {
                a rel="next" href={ (base) (join) "page=" (page + 1) } { "Older →" }
            }
        }
    }
}

/// `rows[page]` of `PAGE_SIZE`, and whether a later page has rows.
pub fn slice<T>(rows: &[T], page: usize) -> (&[T], bool) {
    let start = (page.max(1) - 1) * PAGE_SIZE;
    let end = (start + PAGE_SIZE).min(rows.len());
    if start >= rows.len() {
        return (&[], false);
    }
    (&rows[start..end], rows.len() > end)
}
