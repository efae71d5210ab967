//! An organisation's shared settings: network-access lists, approval groups, accounts and
//! their roles; and the audit trail. Owners get the forms; everyone else reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{page, pager, slice, token, when};
use super::session::Signed;
use super::{PageError, PageResult, see};
use crate::api::{AuditQuery, Netlist, NewAccount, NewGroup, Role};
use crate::error::ApiError;
use crate::http::admin::{accounts, approvals, audit as admin_audit, policy};
use crate::http::{AppState, blocking};

#[derive(Default, Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

fn words(text: &str) -> Vec<String> {
    text.split([' ', ',', '\n', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn org_tabs(org: &str) -> Markup {
    html! {
        nav.tabs {
            a href={ "/console/orgs/" (org) "/netlists" } { "Network lists" }
            a href={ "/console/orgs/" (org) "/groups" } { "Approval groups" }
            a href={ "/console/orgs/" (org) "/accounts" } { "Accounts" }
        }
    }
}

fn is_owner(signed: &Signed, org: &str) -> bool {
    signed.caller.role_in(org) == Some(Role::Owner)
}

pub async fn netlists(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let lists = policy::list_netlists(State(state), signed.caller.clone(), Path(org.clone()))
        .await?
        .0
        .netlists;
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&lists, page_no);
    let owner = is_owner(&signed, &org);
    let body = html! {
        (org_tabs(&org))
        table {
            thead { tr { th { "List" } th { "Networks" } @if owner { th {} } } }
            tbody {
                @for n in shown {
                    tr {
                        td { (n.name) }
                        td { @for c in &n.cidrs { code { (c) } " " } }
                        @if owner {
                            td { form.inline method="post" action={ "/console/orgs/" (org) "/netlists/" (n.name) "/rm" } {
                                (token(&signed)) button type="submit" { "Remove" } } }
                        }
                    }
                }
            }
        }
        (pager(&format!("/console/orgs/{org}/netlists"), page_no, more))
        @if owner {
            h2 { "Add a list" }
            form method="post" action={ "/console/orgs/" (org) "/netlists" } {
                (token(&signed))
                label { "Name" input name="name" required; }
                label { "Networks (CIDRs, space separated)" input name="cidrs" required; }
                button type="submit" { "Add" }
            }
        }
    };
    Ok(page(&signed, &format!("{org}: network-access lists"), body).into_response())
}

#[derive(Deserialize)]
pub struct NetlistForm {
    csrf: String,
    name: String,
    cidrs: String,
}

pub async fn netlist_add(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Form(form): Form<NetlistForm>,
) -> PageResult {
    signed.check(&form.csrf)?;
    let body = Netlist {
        name: form.name,
        cidrs: words(&form.cidrs),
    };
    drop(
        policy::add_netlist(
            State(state),
            signed.caller.clone(),
            Path(org.clone()),
            Json(body),
        )
        .await?,
    );
    Ok(see(&format!("/console/orgs/{org}/netlists")))
}

#[derive(Deserialize)]
pub struct TokenOnly {
    csrf: String,
}

pub async fn netlist_rm(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((org, name)): Path<(String, String)>,
    Form(form): Form<TokenOnly>,
) -> PageResult {
    signed.check(&form.csrf)?;
    drop(
        policy::rm_netlist(
            State(state),
            signed.caller.clone(),
            Path((org.clone(), name)),
        )
        .await?,
    );
    Ok(see(&format!("/console/orgs/{org}/netlists")))
}

pub async fn groups(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let groups = approvals::list_groups(State(state), signed.caller.clone(), Path(org.clone()))
        .await?
        .0
        .groups;
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&groups, page_no);
    let owner = is_owner(&signed, &org);
    let body = html! {
        (org_tabs(&org))
        p { "A device whose tags match all of a group's tags unlocks only after one of the group's approvers approves." }
        table {
            thead { tr { th { "Group" } th { "Tags" } th { "Approvers" } th { "Window" } @if owner { th {} } } }
            tbody {
                @for g in shown {
                    tr {
                        td { (g.name) }
                        td { @for (k, v) in &g.tags { span.tag { (k) "=" (v) } " " } }
                        td { (g.approvers.join(", ")) }
                        td { (g.window_seconds) " s" }
                        @if owner {
                            td { form.inline method="post" action={ "/console/orgs/" (org) "/groups/" (g.name) "/rm" } {
                                (token(&signed)) button type="submit" { "Remove" } } }
                        }
                    }
                }
            }
        }
        (pager(&format!("/console/orgs/{org}/groups"), page_no, more))
        @if owner {
            h2 { "Add a group" }
            form method="post" action={ "/console/orgs/" (org) "/groups" } {
                (token(&signed))
                label { "Name" input name="name" required; }
                label { "Tags (key=value, space separated)" input name="tags" required; }
                label { "Approvers (account names)" input name="approvers"; }
                label { "Window (seconds an approval stays usable)" input name="window" type="number" value="900" min="1"; }
                button type="submit" { "Add" }
            }
        }
    };
    Ok(page(&signed, &format!("{org}: approval groups"), body).into_response())
}

#[derive(Deserialize)]
pub struct GroupForm {
    csrf: String,
    name: String,
    tags: String,
    #[serde(default)]
    approvers: String,
    window: Option<i64>,
}

pub async fn group_add(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Form(form): Form<GroupForm>,
) -> PageResult {
    signed.check(&form.csrf)?;
    let mut tags = BTreeMap::new();
    for pair in words(&form.tags) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            PageError(ApiError::BadRequest(format!(
                "tag {pair:?}: write key=value"
            )))
        })?;
        tags.insert(k.to_owned(), v.to_owned());
    }
    let body = NewGroup {
        name: form.name,
        tags,
        approvers: words(&form.approvers),
        window_seconds: form.window,
    };
    drop(
        approvals::add_group(
            State(state),
            signed.caller.clone(),
            Path(org.clone()),
            Json(body),
        )
        .await?,
    );
    Ok(see(&format!("/console/orgs/{org}/groups")))
}

pub async fn group_rm(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((org, name)): Path<(String, String)>,
    Form(form): Form<TokenOnly>,
) -> PageResult {
    signed.check(&form.csrf)?;
    drop(
        approvals::rm_group(
            State(state),
            signed.caller.clone(),
            Path((org.clone(), name)),
        )
        .await?,
    );
    Ok(see(&format!("/console/orgs/{org}/groups")))
}

pub async fn accounts(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> PageResult {
    if signed.caller.role_in(&org).is_none() {
        return Err(PageError(ApiError::Forbidden(format!(
            "no role in {org:?}"
        ))));
    }
    let of = org.clone();
    let members = blocking(&state, move |s| Ok(s.store.members(&of)?)).await?;
    let page_no = q.page.unwrap_or(1);
    let (shown, more) = slice(&members, page_no);
    let owner = is_owner(&signed, &org);
    let body = html! {
        (org_tabs(&org))
        table {
            thead { tr { th { "Account" } th { "Role" } } }
            tbody { @for (name, role) in shown { tr { td { (name) } td { (role.as_str()) } } } }
        }
        (pager(&format!("/console/orgs/{org}/accounts"), page_no, more))
        @if owner {
            h2 { "Add an account" }
            p { "The new account's first token is shown once; it signs in with it and enrols a passkey." }
            form method="post" action={ "/console/orgs/" (org) "/accounts" } {
                (token(&signed))
                label { "Name" input name="name" required; }
                label { "Role" select name="role" {
                    option value="viewer" { "viewer" } option value="approver" { "approver" } option value="owner" { "owner" } } }
                button type="submit" { "Add" }
            }
        }
    };
    Ok(page(&signed, &format!("{org}: accounts"), body).into_response())
}

#[derive(Deserialize)]
pub struct AccountForm {
    csrf: String,
    name: String,
    role: String,
}

pub async fn account_add(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(org): Path<String>,
    Form(form): Form<AccountForm>,
) -> PageResult {
    signed.check(&form.csrf)?;
    let body = NewAccount {
        name: form.name,
        role: form.role,
    };
    let created = accounts::add_account(
        State(state),
        signed.caller.clone(),
        Path(org.clone()),
        Json(body),
    )
    .await?
    .0;
    let body = html! {
        p { "Account " strong { (created.account) } " is " (created.role.as_str()) " in " (created.org) "." }
        p { "Its token, shown this once — hand it over privately:" }
        pre.secret { (created.token) }
        p { a href={ "/console/orgs/" (org) "/accounts" } { "Back to the accounts" } }
    };
    Ok(page(&signed, "Account added", body).into_response())
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let page_no = q.page.unwrap_or(1);
    let limit = (page_no * super::layout::PAGE_SIZE + 1) as i64;
    let query = AuditQuery {
        org: None,
        limit: Some(limit.min(10_000)),
    };
    let rows = admin_audit::audit(State(state), signed.caller.clone(), Query(query))
        .await?
        .0
        .audit;
    let (shown, more) = slice(&rows, page_no);
    let body = html! {
        table.audit {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Target" } th { "Org" } } }
            tbody {
                @for a in shown {
                    tr { td { (when(a.at)) } td { (a.account) } td { (a.action) } td { (a.target) } td { (a.org.as_deref().unwrap_or("—")) } }
                }
            }
        }
        (pager("/console/audit", page_no, more))
    };
    Ok(page(&signed, "Audit trail", body).into_response())
}
