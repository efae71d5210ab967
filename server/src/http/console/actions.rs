//! A device's buttons: each form post checks the session's token, then calls the admin
//! API's handler for the verb (which checks the role and writes the audit row).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use super::session::Signed;
use super::{PageError, PageResult, see};
use crate::api::SourceChange;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::admin::{approvals, devices, policy};

#[derive(Deserialize)]
pub struct VerbForm {
    csrf: String,
    /// Retire: the device's name, typed.
    #[serde(default)]
    confirm: String,
    /// Sources: space-separated addresses or CIDRs.
    #[serde(default)]
    add: String,
    #[serde(default)]
    rm: String,
}

fn words(text: &str) -> Vec<String> {
    text.split([' ', ',', '\n', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn device_verb(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Path((org, device, verb)): Path<(String, String, String)>,
    Form(form): Form<VerbForm>,
) -> PageResult {
    signed.check(&form.csrf)?;
    let back = format!("/console/orgs/{org}/devices/{device}");
    let caller = signed.caller.clone();
    let path = Path((org, device.clone()));
    let s = State(state);
    match verb.as_str() {
        "disable" => drop(devices::disable(s, caller, path, headers).await?),
        "enable" => drop(devices::enable(s, caller, path, headers).await?),
        "rotate" => drop(devices::rotate(s, caller, path, headers).await?),
        "allow-once" => drop(approvals::allow_once(s, caller, path, headers).await?),
        "retire" => {
            if form.confirm.trim() != device {
                return Err(PageError(ApiError::BadRequest(format!(
                    "to retire, type the device's name ({device}) exactly"
                ))));
            }
            drop(devices::retire(s, caller, path, headers).await?)
        }
        "sources" => {
            let change = SourceChange {
                add: words(&form.add),
                rm: words(&form.rm),
            };
            drop(policy::sources(s, caller, path, headers, Json(change)).await?)
        }
        _ => return Err(PageError(ApiError::NotFound(format!("action {verb:?}")))),
    }
    Ok(see(&back))
}
