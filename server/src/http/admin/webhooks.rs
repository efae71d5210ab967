//! An organisation's webhooks: added (the signing secret shown once), listed (never the
//! secret), removed. Owners only: a webhook receives every pending request of the org.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use super::{Caller, audited, new_token, run};
use crate::api::{NewWebhook, Removed, Role, WebhookCreated, WebhookList, WebhookView};
use crate::error::{ApiError, Result};
use crate::http::AppState;

fn check_url(text: &str) -> Result<()> {
    let url = url::Url::parse(text)
        .map_err(|e| ApiError::BadRequest(format!("webhook URL {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::BadRequest(format!(
            "webhook URL {text:?}: use http:// or https:// and a host"
        )));
    }
    Ok(())
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<WebhookList>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        let webhooks = s
            .store
            .webhooks(&org)?
            .into_iter()
            .map(|w| WebhookView {
                id: w.id,
                url: w.url,
                created_at: w.created_at,
            })
            .collect();
        Ok(WebhookList { webhooks })
    })
    .await
}

pub(crate) async fn add(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewWebhook>,
) -> Result<Json<WebhookCreated>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        check_url(&body.url)?;
        let secret = new_token()?;
        let id = s.store.webhook_add(&org, &body.url, &secret)?;
        audited(
            s,
            &caller,
            Some(&org),
            "webhook add",
            &format!("{id} {}", body.url),
        )?;
        Ok(WebhookCreated {
            id,
            url: body.url,
            secret,
        })
    })
    .await
}

pub(crate) async fn rm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, id)): Path<(String, i64)>,
) -> Result<Json<Removed>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.webhook_rm(&org, id)?;
        audited(s, &caller, Some(&org), "webhook rm", &id.to_string())?;
        Ok(Removed {
            removed: id.to_string(),
        })
    })
    .await
}
