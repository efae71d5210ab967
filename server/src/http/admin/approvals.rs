//! Human decisions: allow-once, approval groups, and the requests approvers decide.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use super::{Caller, changed, device_view, host_of, run, tag_pairs, valid_name};
use crate::api::{
    Decided, Device, GroupCreated, GroupList, NewGroup, Removed, RequestList, RequestQuery, Role,
};
use crate::error::{ApiError, Result};
use crate::http::AppState;
use crate::policy::Verdict;

/// The longest an approval may stay valid: a week.
const MAX_WINDOW: i64 = 7 * 86400;

pub(crate) async fn allow_once(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        let id = s.store.allow_once(&org, &device, caller.name())?;
        let target = format!("{org}/{device}");
        changed(s, &caller, Some(&org), "device allow-once", &target)?;
        let mut view = device_view(s, &org, &device, host.as_deref())?;
        view.allow_once = Some(id);
        Ok(view)
    })
    .await
}

pub(crate) async fn list_groups(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<GroupList>> {
    run(state, move |s| {
        caller.require(&org, Role::Viewer)?;
        Ok(GroupList {
            groups: s.store.groups(&org)?,
        })
    })
    .await
}

pub(crate) async fn add_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewGroup>,
) -> Result<Json<GroupCreated>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        valid_name("group", &body.name)?;
        let window = body.window_seconds.unwrap_or(900).clamp(1, MAX_WINDOW);
        let tags = tag_pairs(&body.tags)?;
        s.store
            .group_add(&org, &body.name, &tags, &body.approvers, window)?;
        let target = format!("{org}/{}", body.name);
        changed(s, &caller, Some(&org), "group add", &target)?;
        Ok(GroupCreated {
            name: body.name,
            window_seconds: window,
        })
    })
    .await
}

pub(crate) async fn rm_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, name)): Path<(String, String)>,
) -> Result<Json<Removed>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.group_rm(&org, &name)?;
        changed(s, &caller, Some(&org), "group rm", &format!("{org}/{name}"))?;
        Ok(Removed { removed: name })
    })
    .await
}

pub(crate) async fn list_requests(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<RequestQuery>,
) -> Result<Json<RequestList>> {
    run(state, move |s| {
        let orgs = caller.scope(q.org.as_deref())?;
        Ok(RequestList {
            requests: s.store.requests(orgs.as_deref(), !q.all)?,
        })
    })
    .await
}

/// An owner of the request's org decides any request; an approver those of the groups its
/// device matches and that the approver is in.
async fn decide(
    state: Arc<AppState>,
    caller: Caller,
    id: i64,
    verdict: Verdict,
) -> Result<Json<Decided>> {
    run(state, move |s| {
        let scope = s.store.request_scope(id)?;
        let may = match caller.role_in(&scope.org) {
            Some(Role::Owner) => true,
            Some(Role::Approver) => scope.approvers.contains(&caller.account.id),
            _ => false,
        };
        if !may {
            return Err(ApiError::Forbidden(format!(
                "not an approver of request {id}"
            )));
        }
        s.store
            .decide_request(id, verdict, caller.name(), scope.window)?;
        let action = format!("request {}", verdict.as_str());
        s.store
            .audit_in(Some(&scope.org), caller.name(), &action, &id.to_string())?;
        Ok(Decided {
            id,
            action: verdict,
        })
    })
    .await
}

pub(crate) async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Decided>> {
    decide(state, caller, id, Verdict::Approve).await
}

pub(crate) async fn deny(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Decided>> {
    decide(state, caller, id, Verdict::Deny).await
}

pub(crate) async fn defer(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Decided>> {
    decide(state, caller, id, Verdict::Defer).await
}
