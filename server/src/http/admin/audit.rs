//! Reading what happened: the decision history of `/rec` and the audit trail.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};

use super::{Caller, run};
use crate::api::{AuditList, AuditQuery, HistoryList, HistoryQuery};
use crate::error::Result;
use crate::http::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 10_000;

pub(crate) async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryList>> {
    run(state, move |s| {
        let orgs = caller.scope(q.org.as_deref())?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let history = match &orgs {
            None => s
                .store
                .history(q.org.as_deref(), q.device.as_deref(), limit)?,
            Some(list) => {
                // Each org's newest rows, merged: the limit counts only visible rows.
                let mut rows = Vec::new();
                for org in list {
                    rows.extend(s.store.history(Some(org), q.device.as_deref(), limit)?);
                }
                rows.sort_by_key(|r| std::cmp::Reverse(r.at));
                rows.truncate(limit as usize);
                rows
            }
        };
        Ok(HistoryList { history })
    })
    .await
}

pub(crate) async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditList>> {
    run(state, move |s| {
        let orgs = caller.scope(q.org.as_deref())?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        Ok(AuditList {
            audit: s.store.audit_log(orgs.as_deref(), limit)?,
        })
    })
    .await
}
