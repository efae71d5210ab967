//! The devices list and one device's page: state, mode, tags, last decision; history with
//! filters, where it may unlock from, allow-once, lifecycle, escrow. Read through the admin
//! API's handlers, so a viewer sees what the API would show it and nothing more.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::PageResult;
use super::layout::{PAGE_SIZE, page, pager, slice, token, when};
use super::session::Signed;
use crate::api::{Device, HistoryEntry, HistoryQuery, Role};
use crate::http::admin::{audit, devices as admin_devices};
use crate::http::{AppState, blocking};
use crate::policy::DeviceState;

/// How many rows a filtered list reads at most before paging through them.
const MAX_ROWS: i64 = 10_000;

#[derive(Default, Deserialize)]
pub struct ListQuery {
    page: Option<usize>,
    /// Only this decision (allowed, denied, …) in a history.
    decision: Option<String>,
    /// Only rows from this source address.
    peer: Option<String>,
}

fn state_badge(state: DeviceState) -> Markup {
    html! { span class={ "badge " (state.as_str()) } { (state.as_str()) } }
}

pub async fn devices(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let orgs = admin_devices::list_orgs(State(state.clone()), signed.caller.clone()).await?;
    let org_names: Vec<String> = orgs.0.orgs.iter().map(|o| o.name.clone()).collect();
    let mut all: Vec<Device> = Vec::new();
    for org in orgs.0.orgs {
        let list = admin_devices::list(
            State(state.clone()),
            signed.caller.clone(),
            Path(org.name),
            headers.clone(),
        )
        .await?;
        all.extend(list.0.devices);
    }
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&all, page_no);
    let keys: Vec<(String, String)> = shown
        .iter()
        .map(|d| (d.org.clone(), d.name.clone()))
        .collect();
    // The last decision of each shown device only: one indexed read per row of the page.
    let last = blocking(&state, move |s| {
        keys.iter()
            .map(|(org, name)| {
                Ok(s.store
                    .history(Some(org), Some(name), 1)?
                    .into_iter()
                    .next())
            })
            .collect::<crate::error::Result<Vec<Option<HistoryEntry>>>>()
    })
    .await?;
    let body = html! {
        p.orgs {
            @for org in &org_names {
                strong { (org) } ": "
                a href={ "/console/orgs/" (org) "/netlists" } { "network lists" } " · "
                a href={ "/console/orgs/" (org) "/groups" } { "approval groups" } " · "
                a href={ "/console/orgs/" (org) "/accounts" } { "accounts" } br;
            }
        }
        @if all.is_empty() {
            p { "No devices yet. Add one with " code { "nbde-server device add" } "." }
        } @else {
            table.devices {
                thead { tr { th { "Device" } th { "State" } th { "Mode" } th { "Tags" } th { "Last decision" } } }
                tbody {
                    @for (d, last) in shown.iter().zip(&last) {
                        tr {
                            td { a href={ "/console/orgs/" (d.org) "/devices/" (d.name) } { (d.org) "/" (d.name) } }
                            td data-label="State" { (state_badge(d.state)) }
                            td data-label="Mode" { (d.mode.as_ref().map(|m| m.mode.as_str()).unwrap_or("—")) }
                            td data-label="Tags" { @for (k, v) in &d.tags { span.tag { (k) "=" (v) } " " } }
                            td data-label="Last decision" {
                                @match last {
                                    Some(h) => { span class={ "decision " (h.decision) } { (h.decision) } " " small { (when(h.at)) } }
                                    None => { "never asked" }
                                }
                            }
                        }
                    }
                }
            }
            (pager("/console/devices", page_no, more))
        }
    };
    Ok(page(&signed, "Devices", body).into_response())
}

fn history_table(rows: &[HistoryEntry]) -> Markup {
    html! {
        table.history {
            thead { tr { th { "When" } th { "Source" } th { "Decision" } th { "Why" } } }
            tbody {
                @for h in rows {
                    tr {
                        td data-label="When" { (when(h.at)) }
                        td data-label="Source" { (h.peer) }
                        td data-label="Decision" { span class={ "decision " (h.decision) } { (h.decision) } }
                        td data-label="Why" { (h.reason) }
                    }
                }
            }
        }
    }
}

/// A form posting `verb` for the device, with the session's token.
fn verb_form(signed: &Signed, d: &Device, verb: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/orgs/" (d.org) "/devices/" (d.name) "/" (verb) } {
            (token(signed))
            button type="submit" { (label) }
        }
    }
}

fn owner_controls(signed: &Signed, d: &Device) -> Markup {
    html! {
        section.controls {
            h2 { "Actions" }
            @if d.state != DeviceState::Retired {
                (verb_form(signed, d, "allow-once", "Allow the next unlock once"))
                @if d.state == DeviceState::Active {
                    (verb_form(signed, d, "disable", "Disable"))
                } @else {
                    (verb_form(signed, d, "enable", "Enable"))
                }
                (verb_form(signed, d, "rotate", "Rotate keys"))
                form.retire method="post" action={ "/console/orgs/" (d.org) "/devices/" (d.name) "/retire" } {
                    (token(signed))
                    label {
                        "Retiring destroys this device's keys: it will never unlock through the server again. Type "
                        code { (d.name) } " to confirm."
                        input name="confirm" autocomplete="off" required;
                    }
                    button.danger type="submit" { "Retire" }
                }
            }
            h3 { "Where it may unlock from" }
            form method="post" action={ "/console/orgs/" (d.org) "/devices/" (d.name) "/sources" } {
                (token(signed))
                label { "Add sources (addresses or CIDRs, space separated)" input name="add"; }
                label { "Remove sources" input name="rm"; }
                button type="submit" { "Change sources" }
            }
        }
    }
}

pub async fn device(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let d = admin_devices::show(
        State(state.clone()),
        signed.caller.clone(),
        Path((org.clone(), name.clone())),
        headers,
    )
    .await?
    .0;
    let history = audit::history(
        State(state.clone()),
        signed.caller.clone(),
        Query(HistoryQuery {
            org: Some(org.clone()),
            device: Some(name.clone()),
            limit: Some(MAX_ROWS),
        }),
    )
    .await?
    .0
    .history;
    let wanted = |h: &&HistoryEntry| {
        q.decision
            .as_deref()
            .is_none_or(|d| d.is_empty() || h.decision == d)
            && q.peer
                .as_deref()
                .is_none_or(|p| p.is_empty() || h.peer == p)
    };
    let filtered: Vec<HistoryEntry> = history.iter().filter(wanted).cloned().collect();
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&filtered, page_no);
    let base = format!(
        "/console/orgs/{org}/devices/{name}?decision={}&peer={}",
        q.decision.as_deref().unwrap_or(""),
        q.peer.as_deref().unwrap_or("")
    );
    let owner = signed.caller.role_in(&org) == Some(Role::Owner);
    let title = format!("{org}/{name}");
    let body = html! {
        dl.facts {
            dt { "State" } dd { (state_badge(d.state)) }
            dt { "Mode" } dd {
                @match &d.mode {
                    Some(m) => { (m.mode.as_str()) " " small { "reported " (when(m.reported_at)) " by " (m.reported_by) } }
                    None => { "not reported" }
                }
            }
            dt { "Unlock URL" } dd { code { (d.url) } }
            dt { "Thumbprint" } dd { code { (d.thp.as_deref().unwrap_or("—")) } }
            dt { "Sources" } dd {
                (d.source)
                @for s in &d.sources { " " code { (s) } }
            }
            dt { "Network lists" } dd {
                @if d.netlists.is_empty() { "none" }
                @for n in &d.netlists { a href={ "/console/orgs/" (org) "/netlists" } { (n) } " " }
            }
            dt { "Tags" } dd { @for (k, v) in &d.tags { span.tag { (k) "=" (v) } " " } }
            dt { "Liveness" } dd {
                @match d.max_silence {
                    Some(s) => { "disabled after " (crate::liveness::human(s)) " without a recovery" }
                    None => { "no check" }
                }
            }
            dt { "Header escrow" } dd {
                @match &d.escrow {
                    Some(e) => { "stored " (when(e.uploaded_at)) " by " (e.uploaded_by) " (" (e.size) " bytes, LUKS " (e.uuid) ")" }
                    None => { "none" }
                }
            }
        }
        @if owner { (owner_controls(&signed, &d)) }
        section {
            h2 { "History" }
            form.filters method="get" {
                label { "Decision"
                    select name="decision" {
                        option value="" { "any" }
                        @for kind in ["allowed", "denied", "disabled", "pending-approval", "not-found", "malformed", "error"] {
                            option value=(kind) selected[q.decision.as_deref() == Some(kind)] { (kind) }
                        }
                    }
                }
                label { "Source" input name="peer" value=(q.peer.as_deref().unwrap_or("")); }
                button type="submit" { "Filter" }
            }
            @if shown.is_empty() { p { "No decisions match." } } @else { (history_table(shown)) }
            (pager(&base, page_no, more))
            p { small { (filtered.len()) " of the newest " (history.len()) " decisions match; " (PAGE_SIZE) " a page." } }
        }
    };
    Ok(page(&signed, &title, body).into_response())
}
