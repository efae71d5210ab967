//! The audit trail of admin changes.

use super::Postgres;
use crate::api::AuditEntry;
use crate::store::{Audit, Result, now};

impl Audit for Postgres {
    fn audit_in(&self, org: Option<&str>, account: &str, action: &str, target: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, account, action, target, org) VALUES ($1, $2, $3, $4, $5)",
                &[&now(), &account, &action, &target, &org],
            )
            .map(|_| ())
        })
    }

    fn audit_log(&self, orgs: Option<&[String]>, limit: i64) -> Result<Vec<AuditEntry>> {
        // The org filter is part of the query, so the limit counts only rows the caller
        // may see.
        let orgs: Option<Vec<String>> = orgs.map(<[String]>::to_vec);
        let rows = self.with(|c| {
            c.query(
                "SELECT at, account, action, target, org FROM audit
                 WHERE $1::text[] IS NULL OR org = ANY($1)
                 ORDER BY id DESC LIMIT $2",
                &[&orgs, &limit],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                account: r.get(1),
                action: r.get(2),
                target: r.get(3),
                org: r.get(4),
            })
            .collect())
    }
}
