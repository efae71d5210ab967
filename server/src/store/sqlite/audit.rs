//! The audit trail of admin changes.

use rusqlite::params;

use super::Sqlite;
use crate::api::AuditEntry;
use crate::store::{Audit, Result, now};

impl Audit for Sqlite {
    fn audit_in(&self, org: Option<&str>, account: &str, action: &str, target: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, account, action, target, org) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), account, action, target, org],
            )
            .map(|_| ())
        })
    }

    fn audit_log(&self, orgs: Option<&[String]>, limit: i64) -> Result<Vec<AuditEntry>> {
        // The org filter is part of the query, so the limit counts only rows the caller
        // may see (JSON: SQLite has no array parameters).
        let orgs = orgs.map(|o| serde_json::to_string(o).unwrap_or_default());
        self.with(|c| {
            c.prepare_cached(
                "SELECT at, account, action, target, org FROM audit
                 WHERE ?1 IS NULL OR org IN (SELECT value FROM json_each(?1))
                 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![orgs, limit], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    account: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    org: r.get(4)?,
                })
            })?
            .collect()
        })
    }
}
