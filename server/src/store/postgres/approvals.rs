//! Allow-once allowances, approval groups and manual unlock requests.

use super::{Postgres, conflict_or, pairs, parse_column, texts};
use crate::api::{Group, Request};
use crate::policy::{RequestState, Verdict};
use crate::store::{Accounts, Approvals, RequestScope, Result, StoreError, now};

/// Approval groups of device $1's org whose required tags the device all has: the one
/// definition of "a device matches a group", for the policy and for who may approve.
pub(super) const MATCHING_GROUPS: &str = "SELECT g.id, g.window_seconds FROM approval_groups g
    WHERE g.org_id = (SELECT org_id FROM devices WHERE id = $1)
    AND NOT EXISTS (SELECT 1 FROM group_tags t WHERE t.group_id = g.id AND NOT EXISTS
        (SELECT 1 FROM device_tags d WHERE d.device_id = $1 AND d.key = t.key AND d.value = t.value))";

/// The window an approval gets when no group says otherwise.
const DEFAULT_WINDOW: i64 = 900;

impl Approvals for Postgres {
    fn allow_once(&self, org: &str, device: &str, by: &str) -> Result<i64> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.query_one(
                "INSERT INTO allow_once (device_id, created_at, created_by) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&id, &now(), &by],
            )
            .map(|r| r.get(0))
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
            let mut tx = c.transaction()?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO approval_groups (org_id, name, window_seconds) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[&org_id, &name, &window],
                )?
                .get(0);
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO group_tags (group_id, key, value) VALUES ($1, $2, $3)",
                    &[&id, k, v],
                )?;
            }
            for a in &approver_ids {
                tx.execute(
                    "INSERT INTO group_approvers (group_id, account_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&id, a],
                )?;
            }
            tx.commit()
        })?
        .map_err(|e| conflict_or(e, || format!("group {org}/{name} exists")))
    }

    fn group_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        // Tags and approvers go with the group (ON DELETE CASCADE).
        let removed = self.with(|c| {
            c.execute(
                "DELETE FROM approval_groups WHERE org_id = $1 AND name = $2",
                &[&org_id, &name],
            )
        })?;
        if removed > 0 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("group {org}/{name}")))
        }
    }

    fn groups(&self, org: &str) -> Result<Vec<Group>> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let groups = tx.query(
                "SELECT id, name, window_seconds FROM approval_groups WHERE org_id = $1
                 ORDER BY name",
                &[&org_id],
            )?;
            let mut out = Vec::with_capacity(groups.len());
            for g in &groups {
                let id: i64 = g.get(0);
                let tags = pairs(tx.query(
                    "SELECT key, value FROM group_tags WHERE group_id = $1 ORDER BY key",
                    &[&id],
                )?);
                let approvers = texts(tx.query(
                    "SELECT a.name FROM group_approvers g JOIN accounts a ON a.id = g.account_id
                     WHERE g.group_id = $1 ORDER BY a.name",
                    &[&id],
                )?);
                out.push(Group {
                    name: g.get(1),
                    tags,
                    approvers,
                    window_seconds: g.get(2),
                });
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn requests(&self, orgs: Option<&[String]>, only_pending: bool) -> Result<Vec<Request>> {
        let orgs: Option<Vec<String>> = orgs.map(<[String]>::to_vec);
        let rows = self.with(|c| {
            c.query(
                "SELECT r.id, o.name, d.name, r.peer, r.created_at, r.state, r.decided_by,
                        r.expires_at
                 FROM unlock_requests r JOIN devices d ON d.id = r.device_id
                 JOIN orgs o ON o.id = d.org_id
                 WHERE (NOT $1 OR r.state = 'pending')
                   AND ($2::text[] IS NULL OR o.name = ANY($2))
                 ORDER BY r.id",
                &[&only_pending, &orgs],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(Request {
                    id: r.get(0),
                    org: r.get(1),
                    device: r.get(2),
                    peer: r.get(3),
                    created_at: r.get(4),
                    state: parse_column(r.get(5), RequestState::parse)?,
                    decided_by: r.get(6),
                    expires_at: r.get(7),
                })
            })
            .collect()
    }

    fn request_scope(&self, id: i64) -> Result<RequestScope> {
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let Some(row) = tx.query_opt(
                "SELECT o.name, d.id FROM unlock_requests r JOIN devices d ON d.id = r.device_id
                 JOIN orgs o ON o.id = d.org_id WHERE r.id = $1",
                &[&id],
            )?
            else {
                return Ok(None);
            };
            let device_id: i64 = row.get(1);
            let groups = tx.query(MATCHING_GROUPS, &[&device_id])?;
            let mut approvers = Vec::new();
            for g in &groups {
                let group: i64 = g.get(0);
                approvers.extend(
                    tx.query(
                        "SELECT account_id FROM group_approvers WHERE group_id = $1",
                        &[&group],
                    )?
                    .iter()
                    .map(|r| r.get::<_, i64>(0)),
                );
            }
            let window = groups
                .iter()
                .map(|g| g.get::<_, i64>(1))
                .max()
                .unwrap_or(DEFAULT_WINDOW);
            tx.commit()?;
            Ok(Some(RequestScope {
                org: row.get(0),
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
                "UPDATE unlock_requests SET state = 'approved', decided_by = $1, decided_at = $2,
                 expires_at = $3 WHERE id = $4 AND state IN ('pending', 'denied')",
                &[&by, &t, &(t + window), &id],
            ),
            Verdict::Deny => c.execute(
                "UPDATE unlock_requests SET state = 'denied', decided_by = $1, decided_at = $2,
                 expires_at = NULL WHERE id = $3 AND state IN ('pending', 'approved')",
                &[&by, &t, &id],
            ),
            Verdict::Defer => c.execute(
                "UPDATE unlock_requests SET decided_by = $1, decided_at = $2
                 WHERE id = $3 AND state = 'pending'",
                &[&by, &t, &id],
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
