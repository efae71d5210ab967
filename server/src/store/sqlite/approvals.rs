//! Allow-once allowances, approval groups and manual unlock requests.

use rusqlite::{OptionalExtension, params};

use super::{Sqlite, conflict_or, pairs, parse_column, texts};
use crate::api::{Group, Request};
use crate::policy::{RequestState, Verdict};
use crate::store::{Accounts, Approvals, RequestScope, Result, StoreError, now};

/// Approval groups of device ?1's org whose required tags the device all has: the one
/// definition of "a device matches a group", for the policy and for who may approve.
pub(super) const MATCHING_GROUPS: &str = "SELECT g.id, g.window_seconds FROM approval_groups g
    WHERE g.org_id = (SELECT org_id FROM devices WHERE id = ?1)
    AND NOT EXISTS (SELECT 1 FROM group_tags t WHERE t.group_id = g.id AND NOT EXISTS
        (SELECT 1 FROM device_tags d WHERE d.device_id = ?1 AND d.key = t.key AND d.value = t.value))";

/// The window an approval gets when no group says otherwise.
const DEFAULT_WINDOW: i64 = 900;

impl Approvals for Sqlite {
    fn allow_once(&self, org: &str, device: &str, by: &str) -> Result<i64> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO allow_once (device_id, created_at, created_by) VALUES (?1, ?2, ?3)",
                params![id, now(), by],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    fn group_add(
        &self,
        org: &str,
        name: &str,
        tags: &[(String, String)],
        approvers: &[String],
        window: i64,
    ) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        let approver_ids = approvers
            .iter()
            .map(|a| self.account_id(a))
            .collect::<Result<Vec<_>>>()?;
        self.try_with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO approval_groups (org_id, name, window_seconds) VALUES (?1, ?2, ?3)",
                params![org_id, name, window],
            )?;
            let id = tx.last_insert_rowid();
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO group_tags (group_id, key, value) VALUES (?1, ?2, ?3)",
                    params![id, k, v],
                )?;
            }
            for a in &approver_ids {
                tx.execute(
                    "INSERT OR IGNORE INTO group_approvers (group_id, account_id) VALUES (?1, ?2)",
                    params![id, a],
                )?;
            }
            tx.commit()
        })?
        .map_err(|e| conflict_or(e, || format!("group {org}/{name} exists")))
    }

    fn group_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        let removed = self.with(|c| {
            let tx = c.transaction()?;
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM approval_groups WHERE org_id = ?1 AND name = ?2",
                    params![org_id, name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                tx.execute("DELETE FROM group_tags WHERE group_id = ?1", params![id])?;
                tx.execute(
                    "DELETE FROM group_approvers WHERE group_id = ?1",
                    params![id],
                )?;
                tx.execute("DELETE FROM approval_groups WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(id.is_some())
        })?;
        if removed {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("group {org}/{name}")))
        }
    }

    fn groups(&self, org: &str) -> Result<Vec<Group>> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let groups = c
                .prepare(
                    "SELECT id, name, window_seconds FROM approval_groups WHERE org_id = ?1
                     ORDER BY name",
                )?
                .query_map(params![org_id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut tags =
                c.prepare("SELECT key, value FROM group_tags WHERE group_id = ?1 ORDER BY key")?;
            let mut approvers = c.prepare(
                "SELECT a.name FROM group_approvers g JOIN accounts a ON a.id = g.account_id
                 WHERE g.group_id = ?1 ORDER BY a.name",
            )?;
            groups
                .into_iter()
                .map(|(id, name, window_seconds)| {
                    Ok(Group {
                        name,
                        tags: pairs(&mut tags, id)?,
                        approvers: texts(&mut approvers, id)?,
                        window_seconds,
                    })
                })
                .collect()
        })
    }

    fn requests(&self, orgs: Option<&[String]>, only_pending: bool) -> Result<Vec<Request>> {
        let rows = self.with(|c| {
            c.prepare(
                "SELECT r.id, o.name, d.name, r.peer, r.created_at, r.state, r.decided_by, r.expires_at
                 FROM unlock_requests r JOIN devices d ON d.id = r.device_id
                 JOIN orgs o ON o.id = d.org_id
                 WHERE (?1 = 0 OR r.state = 'pending') ORDER BY r.id",
            )?
            .query_map(params![only_pending], |r| {
                Ok(Request {
                    id: r.get(0)?,
                    org: r.get(1)?,
                    device: r.get(2)?,
                    peer: r.get(3)?,
                    created_at: r.get(4)?,
                    state: parse_column(r.get(5)?, RequestState::parse)?,
                    decided_by: r.get(6)?,
                    expires_at: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .filter(|r| orgs.is_none_or(|o| o.contains(&r.org)))
            .collect())
    }

    fn request_scope(&self, id: i64) -> Result<RequestScope> {
        self.with(|c| {
            let Some((org, device_id)): Option<(String, i64)> = c
                .query_row(
                    "SELECT o.name, d.id FROM unlock_requests r JOIN devices d ON d.id = r.device_id
                     JOIN orgs o ON o.id = d.org_id WHERE r.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let groups = c
                .prepare(MATCHING_GROUPS)?
                .query_map(params![device_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut approvers = Vec::new();
            let mut stmt =
                c.prepare("SELECT account_id FROM group_approvers WHERE group_id = ?1")?;
            for (g, _) in &groups {
                approvers.extend(
                    stmt.query_map(params![g], |r| r.get::<_, i64>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                );
            }
            let window = groups
                .iter()
                .map(|(_, w)| *w)
                .max()
                .unwrap_or(DEFAULT_WINDOW);
            Ok(Some(RequestScope {
                org,
                approvers,
                window,
            }))
        })?
        .ok_or_else(|| StoreError::NotFound(format!("request {id}")))
    }

    fn decide_request(&self, id: i64, verdict: Verdict, by: &str, window: i64) -> Result<()> {
        let t = now();
        let changed = self.with(|c| match verdict {
            Verdict::Approve => c.execute(
                "UPDATE unlock_requests SET state = 'approved', decided_by = ?1, decided_at = ?2,
                 expires_at = ?3 WHERE id = ?4 AND state IN ('pending', 'denied')",
                params![by, t, t + window, id],
            ),
            Verdict::Deny => c.execute(
                "UPDATE unlock_requests SET state = 'denied', decided_by = ?1, decided_at = ?2,
                 expires_at = NULL WHERE id = ?3 AND state IN ('pending', 'approved')",
                params![by, t, id],
            ),
            Verdict::Defer => c.execute(
                "UPDATE unlock_requests SET decided_by = ?1, decided_at = ?2
                 WHERE id = ?3 AND state = 'pending'",
                params![by, t, id],
            ),
        })?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "request {id} cannot be {}d in its current state",
                verdict.as_str()
            )))
        }
    }
}
