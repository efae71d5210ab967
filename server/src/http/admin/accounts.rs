//! Accounts with a role in an organisation, and the caller's own bearer tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use super::{Caller, changed, new_token, run, token_hash, valid_name};
use crate::api::{AccountCreated, NewAccount, Revoked, Role, TokenCreated};
use crate::error::{ApiError, Result};
use crate::http::AppState;
use crate::store::StoreError;

pub(crate) async fn add_account(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewAccount>,
) -> Result<Json<AccountCreated>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        valid_name("account", &body.name)?;
        let role = Role::parse(&body.role).ok_or_else(|| {
            ApiError::BadRequest(format!("role {:?}: owner, approver or viewer", body.role))
        })?;
        s.store.org_id(&org)?;
        // An existing account gets a role in one more org.
        let account = match s.store.account_id(&body.name) {
            Ok(id) => id,
            Err(StoreError::NotFound(_)) => s.store.add_account(&body.name, false)?,
            Err(e) => return Err(e.into()),
        };
        s.store.add_member(account, &org, role)?;
        let token = new_token()?;
        let token_id = s.store.add_token(account, &token_hash(&token))?;
        let action = format!("account add {}", role.as_str());
        changed(s, &caller, Some(&org), &action, &body.name)?;
        Ok(AccountCreated {
            account: body.name,
            org,
            role,
            token_id,
            token,
        })
    })
    .await
}

pub(crate) async fn add_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<TokenCreated>> {
    run(state, move |s| {
        let token = new_token()?;
        let id = s.store.add_token(caller.account.id, &token_hash(&token))?;
        s.store
            .audit_in(None, caller.name(), "token add", &id.to_string())?;
        Ok(TokenCreated {
            token_id: id,
            token,
        })
    })
    .await
}

pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Revoked>> {
    run(state, move |s| {
        // An administrator revokes anyone's token; others only their own.
        let own = (!caller.account.is_admin).then_some(caller.account.id);
        s.store.revoke_token(id, own)?;
        s.store
            .audit_in(None, caller.name(), "token revoke", &id.to_string())?;
        Ok(Revoked { revoked: id })
    })
    .await
}
