//! Where a device may unlock from: the org's require-source setting, a device's own
//! allowlist, shared network-access lists, and the tags approval groups match.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::{Caller, changed, cidrs, device_view, host_of, run, tag_pairs, valid_name};
use crate::api::{
    Device, Named, Netlist, NetlistList, Org, OrgSettings, Removed, Role, SourceChange, Tags,
};
use crate::error::Result;
use crate::http::AppState;

pub(crate) async fn org_settings(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<OrgSettings>,
) -> Result<Json<Org>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.set_require_source(&org, body.require_source)?;
        let what = if body.require_source {
            "require-source"
        } else {
            "any-source"
        };
        changed(s, &caller, Some(&org), &format!("org set {what}"), &org)?;
        Ok(Org {
            name: org,
            require_source: body.require_source,
        })
    })
    .await
}

pub(crate) async fn tags(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Tags>,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.set_tags(&org, &device, &tag_pairs(&body.tags)?)?;
        let target = format!("{org}/{device}");
        changed(s, &caller, Some(&org), "device tag", &target)?;
        device_view(s, &org, &device, host.as_deref())
    })
    .await
}

pub(crate) async fn sources(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<SourceChange>,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store
            .change_sources(&org, &device, &cidrs(&body.add)?, true)?;
        s.store
            .change_sources(&org, &device, &cidrs(&body.rm)?, false)?;
        let target = format!("{org}/{device} +{:?} -{:?}", body.add, body.rm);
        changed(s, &caller, Some(&org), "allow", &target)?;
        device_view(s, &org, &device, host.as_deref())
    })
    .await
}

async fn attach_or_detach(
    state: Arc<AppState>,
    caller: Caller,
    (org, device, name): (String, String, String),
    headers: HeaderMap,
    attach: bool,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.netlist_attach(&org, &device, &name, attach)?;
        let verb = if attach { "attach" } else { "detach" };
        let target = format!("{org}/{device} {name}");
        changed(s, &caller, Some(&org), &format!("netlist {verb}"), &target)?;
        device_view(s, &org, &device, host.as_deref())
    })
    .await
}

pub(crate) async fn attach(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    attach_or_detach(state, caller, path, headers, true).await
}

pub(crate) async fn detach(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    attach_or_detach(state, caller, path, headers, false).await
}

pub(crate) async fn list_netlists(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<NetlistList>> {
    run(state, move |s| {
        caller.require(&org, Role::Viewer)?;
        let netlists = s
            .store
            .netlists(&org)?
            .into_iter()
            .map(|(name, cidrs)| Netlist { name, cidrs })
            .collect();
        Ok(NetlistList { netlists })
    })
    .await
}

pub(crate) async fn add_netlist(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<Netlist>,
) -> Result<Json<Named>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        valid_name("network-access list", &body.name)?;
        s.store
            .netlist_add(&org, &body.name, &cidrs(&body.cidrs)?)?;
        let target = format!("{org}/{} {:?}", body.name, body.cidrs);
        changed(s, &caller, Some(&org), "netlist add", &target)?;
        Ok(Named { name: body.name })
    })
    .await
}

pub(crate) async fn rm_netlist(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, name)): Path<(String, String)>,
) -> Result<Json<Removed>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.netlist_rm(&org, &name)?;
        changed(
            s,
            &caller,
            Some(&org),
            "netlist rm",
            &format!("{org}/{name}"),
        )?;
        Ok(Removed { removed: name })
    })
    .await
}
