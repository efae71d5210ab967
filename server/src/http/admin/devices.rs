//! Organisations and devices: creating them, listing and showing them, a device's
//! lifecycle, its liveness check, key rotation and the mode its machine reports.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use nbde_proto::Curve;

use super::{Caller, changed, device_changed, device_view, host_of, run, valid_name};
use crate::api::{
    Device, DeviceList, MaxSilence, Mode, ModeReport, NewDevice, NewOrg, Org, OrgCreated, OrgList,
    OrgLiveness, Role,
};
use crate::error::{ApiError, Result};
use crate::http::AppState;
use crate::keys;
use crate::liveness;
use crate::policy::DeviceState;

pub(crate) async fn list_orgs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<OrgList>> {
    run(state, move |s| {
        let visible = caller.visible_orgs();
        let orgs = s
            .store
            .orgs()?
            .into_iter()
            .filter(|o| visible.as_ref().is_none_or(|v| v.contains(&o.name)))
            .map(|o| Org {
                name: o.name,
                require_source: o.require_source,
            })
            .collect();
        Ok(OrgList { orgs })
    })
    .await
}

pub(crate) async fn add_org(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewOrg>,
) -> Result<Json<OrgCreated>> {
    run(state, move |s| {
        caller.require_admin()?;
        valid_name("organisation", &body.name)?;
        s.store
            .add_org(&body.name, &keys::generate_signing_key()?)?;
        changed(s, &caller, Some(&body.name), "org add", &body.name)?;
        let thp = s
            .key_ring()
            .orgs
            .get(&body.name)
            .and_then(|o| o.thp().map(str::to_owned));
        Ok(OrgCreated {
            name: body.name,
            thp,
        })
    })
    .await
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DeviceList>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Viewer)?;
        s.store.org_id(&org)?;
        let ring = s.key_ring();
        let devices = ring
            .device_names(&org)
            .into_iter()
            .map(|name| device_view(s, &org, name, host.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceList { devices })
    })
    .await
}

fn curve_of(name: Option<&str>) -> Result<Curve> {
    match name {
        None => Ok(Curve::P521),
        Some(name) => Curve::from_name(name).map_err(|e| ApiError::BadRequest(e.to_string())),
    }
}

pub(crate) async fn add(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    headers: HeaderMap,
    Json(body): Json<NewDevice>,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        valid_name("device", &body.name)?;
        let curve = curve_of(body.curve.as_deref())?;
        s.store
            .add_device(&org, &body.name, &keys::generate_exchange_key(curve)?)?;
        device_changed(s, &caller, (&org, &body.name), "device add")?;
        device_view(s, &org, &body.name, host.as_deref())
    })
    .await
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Viewer)?;
        device_view(s, &org, &device, host.as_deref())
    })
    .await
}

/// What a device change does to key material.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    Kept,
    /// Deleted: once the change is in the trail and the key ring reloaded, the freed
    /// copies are erased from disk. In that order, so a 500 for an erasure that could not
    /// be confirmed still leaves the trail and the ring right.
    Destroyed,
}

/// A lifecycle, key or mode change of one device, audited as `action`.
async fn device_change(
    state: Arc<AppState>,
    caller: Caller,
    (org, device): (String, String),
    headers: HeaderMap,
    (action, keys): (String, Keys),
    apply: impl FnOnce(&AppState, &str, &str) -> Result<()> + Send + 'static,
) -> Result<Json<Device>> {
    let host = host_of(&headers);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        apply(s, &org, &device)?;
        device_changed(s, &caller, (&org, &device), &action)?;
        if keys == Keys::Destroyed {
            s.store.erase_destroyed()?;
        }
        device_view(s, &org, &device, host.as_deref())
    })
    .await
}

/// A change audited as `device {verb}`.
async fn device_verb(
    state: Arc<AppState>,
    caller: Caller,
    path: (String, String),
    headers: HeaderMap,
    verb: &'static str,
    apply: impl FnOnce(&AppState, &str, &str) -> Result<()> + Send + 'static,
) -> Result<Json<Device>> {
    let change = (format!("device {verb}"), Keys::Kept);
    device_change(state, caller, path, headers, change, apply).await
}

fn set_state(state: DeviceState) -> impl FnOnce(&AppState, &str, &str) -> Result<()> {
    move |s, org, device| Ok(s.store.set_device_state(org, device, state)?)
}

pub(crate) async fn disable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    let apply = set_state(DeviceState::Disabled);
    device_verb(state, caller, path, headers, "disable", apply).await
}

pub(crate) async fn enable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    let apply = set_state(DeviceState::Active);
    device_verb(state, caller, path, headers, "enable", apply).await
}

pub(crate) async fn retire(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    let apply = set_state(DeviceState::Retired);
    let change = ("device retire".to_owned(), Keys::Destroyed);
    device_change(state, caller, path, headers, change, apply).await
}

/// The machine's report of its volume's mode; `sovereign` retires the device.
pub(crate) async fn mode(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<ModeReport>,
) -> Result<Json<Device>> {
    // Who may report comes before what was reported, as in every other verb.
    caller.require(&path.0, Role::Owner)?;
    let mode = Mode::parse(&body.mode).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "mode {:?}: use managed, managed+user or sovereign",
            body.mode
        ))
    })?;
    let keys = if mode == Mode::Sovereign {
        Keys::Destroyed
    } else {
        Keys::Kept
    };
    let by = caller.name().to_owned();
    let change = (format!("device mode {}", mode.as_str()), keys);
    device_change(
        state,
        caller,
        path,
        headers,
        change,
        move |s, org, device| Ok(s.store.report_mode(org, device, mode, &by)?),
    )
    .await
}

pub(crate) async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Device>> {
    device_verb(state, caller, path, headers, "rotate", |s, org, device| {
        // The new key keeps the device's curve.
        let curve = s
            .key_ring()
            .device(org, device)
            .and_then(|d| d.curve())
            .unwrap_or(Curve::P521);
        let jwk = keys::generate_exchange_key(curve)?;
        Ok(s.store.rotate_device(org, device, &jwk)?)
    })
    .await
}

/// The audit's words for a max_silence setting, after a check of its range.
fn max_silence_action(setting: &MaxSilence) -> Result<String> {
    match setting.max_silence {
        Some(seconds) => {
            liveness::check(seconds).map_err(ApiError::BadRequest)?;
            Ok(format!("max-silence {}", liveness::human(seconds)))
        }
        None => Ok("max-silence none".into()),
    }
}

/// An org's max_silence, the default of its devices.
pub(crate) async fn org_liveness(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<MaxSilence>,
) -> Result<Json<OrgLiveness>> {
    let action = format!("org set {}", max_silence_action(&body)?);
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.set_org_max_silence(&org, body.max_silence)?;
        changed(s, &caller, Some(&org), &action, &org)?;
        Ok(OrgLiveness {
            org,
            max_silence: body.max_silence,
        })
    })
    .await
}

/// A device's own max_silence (null: its org's).
pub(crate) async fn liveness(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<MaxSilence>,
) -> Result<Json<Device>> {
    let change = (format!("device {}", max_silence_action(&body)?), Keys::Kept);
    device_change(
        state,
        caller,
        path,
        headers,
        change,
        move |s, org, device| {
            Ok(s.store
                .set_device_max_silence(org, device, body.max_silence)?)
        },
    )
    .await
}
