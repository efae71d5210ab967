//! Pending approvals, live: the list is re-rendered on the server and pushed as a
//! server-sent event whenever it changes, so an approver's open page shows a new request
//! without reloading (replicas included: each event stream reads the shared store).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use maud::{Markup, html};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::IntervalStream;

use super::layout::{page, pager, slice, token, when};
use super::session::Signed;
use super::{PageError, PageResult, see};
use crate::api::{Request, RequestQuery, Role};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::admin::approvals;
use crate::policy::RequestState;

/// How often an open approvals page's stream looks for a change.
const LIVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default, Deserialize)]
pub struct RequestsQuery {
    page: Option<usize>,
    /// Decided requests too.
    #[serde(default)]
    all: bool,
}

async fn list(
    state: &Arc<AppState>,
    signed: &Signed,
    all: bool,
) -> Result<Vec<Request>, PageError> {
    let query = RequestQuery { org: None, all };
    let list =
        approvals::list_requests(State(state.clone()), signed.caller.clone(), Query(query)).await?;
    Ok(list.0.requests)
}

/// Whether the caller may press approve/deny at all; the handler still checks that an
/// approver approves for the request's group.
fn may_decide(signed: &Signed, org: &str) -> bool {
    matches!(
        signed.caller.role_in(org),
        Some(Role::Owner | Role::Approver)
    )
}

fn decide_forms(signed: &Signed, r: &Request) -> Markup {
    html! {
        @if r.state == RequestState::Pending && may_decide(signed, &r.org) {
            @for (verdict, label) in [("approve", "Approve"), ("deny", "Deny"), ("defer", "Defer")] {
                form.inline method="post" action={ "/console/requests/" (r.id) "/" (verdict) } {
                    (token(signed))
                    button type="submit" class=(verdict) { (label) }
                }
            }
        }
    }
}

/// The table body the page shows and the event stream replaces.
fn rows(signed: &Signed, requests: &[Request]) -> Markup {
    html! {
        @if requests.is_empty() {
            tr { td colspan="5" { "Nothing waits for a decision." } }
        }
        @for r in requests {
            tr {
                td { a href={ "/console/requests/" (r.id) } { "#" (r.id) } }
                td { a href={ "/console/orgs/" (r.org) "/devices/" (r.device) } { (r.org) "/" (r.device) } }
                td data-label="Source" { (r.peer) }
                td data-label="Asked" { (when(r.created_at)) }
                td data-label="State" { span class={ "badge " (r.state.as_str()) } { (r.state.as_str()) }
                     @if let Some(by) = &r.decided_by { " by " (by) }
                     " " (decide_forms(signed, r)) }
            }
        }
    }
}

/// A short name for a rendering of the rows: the page tells its stream what it shows, so
/// the stream sends only what differs (replacing identical rows would only make a button
/// under someone's finger go stale).
fn digest(fragment: &str) -> String {
    use sha2::{Digest, Sha256};
    nbde_proto::b64::encode(&Sha256::digest(fragment.as_bytes())[..12])
}

fn table(signed: &Signed, requests: &[Request], live: bool) -> Markup {
    let body = rows(signed, requests);
    let stream = live.then(|| format!("/console/requests/events?seen={}", digest(&body.0)));
    html! {
        table.requests {
            thead { tr { th { "Request" } th { "Device" } th { "Source" } th { "Asked" } th { "State" } } }
            tbody #requests data-live=[stream] { (body) }
        }
    }
}

#[derive(Default, Deserialize)]
pub struct EventsQuery {
    /// The digest of the rows the page already shows.
    seen: Option<String>,
}

pub async fn requests(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(q): Query<RequestsQuery>,
) -> PageResult {
    let all = list(&state, &signed, q.all).await?;
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&all, page_no);
    let base = if q.all {
        "/console/requests?all=true"
    } else {
        "/console/requests"
    };
    let body = html! {
        p {
            @if q.all { a href="/console/requests" { "Pending only" } }
            @else { "Pending requests; this list updates by itself. " a href="/console/requests?all=true" { "All requests" } }
        }
        (table(&signed, shown, !q.all && page_no == 1))
        (pager(base, page_no, more))
    };
    Ok(page(&signed, "Approvals", body).into_response())
}

/// Server-sent events: `requests` with the new table body whenever the pending list
/// (or a request's state in it) changed.
pub async fn events(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(q): Query<EventsQuery>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    let mut last: Option<String> = q.seen;
    let ticks = IntervalStream::new(tokio::time::interval(LIVE_EVERY));
    let stream = ticks
        .then(move |_| {
            let state = state.clone();
            let signed = Signed {
                caller: signed.caller.clone(),
                csrf: signed.csrf.clone(),
                hash: signed.hash.clone(),
            };
            async move {
                let pending = list(&state, &signed, false).await.ok()?;
                let (shown, _) = slice(&pending, 1);
                Some(rows(&signed, shown).into_string())
            }
        })
        .filter_map(move |fragment| {
            let fragment = fragment?;
            let seen = digest(&fragment);
            if last.as_deref() == Some(seen.as_str()) {
                return None;
            }
            last = Some(seen);
            Some(Ok(Event::default().event("requests").data(fragment)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn request(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<i64>,
) -> PageResult {
    let all = list(&state, &signed, true).await?;
    let r = all
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| PageError(ApiError::NotFound(format!("request {id}"))))?;
    let body = html! {
        dl.facts {
            dt { "Device" } dd { a href={ "/console/orgs/" (r.org) "/devices/" (r.device) } { (r.org) "/" (r.device) } }
            dt { "Source" } dd { (r.peer) }
            dt { "Asked" } dd { (when(r.created_at)) }
            dt { "State" } dd { span class={ "badge " (r.state.as_str()) } { (r.state.as_str()) }
                                @if let Some(by) = &r.decided_by { " by " (by) } }
            @if let Some(until) = r.expires_at { dt { "Valid until" } dd { (when(until)) } }
        }
        (decide_forms(&signed, r))
    };
    Ok(page(&signed, &format!("Request #{id}"), body).into_response())
}

#[derive(Deserialize)]
pub struct DecideForm {
    csrf: String,
}

pub async fn decide(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((id, verdict)): Path<(i64, String)>,
    Form(form): Form<DecideForm>,
) -> PageResult {
    signed.check(&form.csrf)?;
    let s = State(state);
    let caller = signed.caller.clone();
    match verdict.as_str() {
        "approve" => drop(approvals::approve(s, caller, Path(id)).await?),
        "deny" => drop(approvals::deny(s, caller, Path(id)).await?),
        "defer" => drop(approvals::defer(s, caller, Path(id)).await?),
        _ => {
            return Err(PageError(ApiError::NotFound(format!(
                "verdict {verdict:?}"
            ))));
        }
    }
    Ok(see(&format!("/console/requests/{id}")))
}
