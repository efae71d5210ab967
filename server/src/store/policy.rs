//! The policy tables: sources, network-access lists, tags, allow-once, approval groups,
//! manual unlock requests, and the per-org roles of accounts.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::history::Entry;
use super::{DeviceState, Store, now};
use crate::error::{ApiError, Result};
use crate::net::Cidr;
use crate::policy::{Effect, RequestView, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Approver,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "owner" => Ok(Role::Owner),
            "approver" => Ok(Role::Approver),
            "viewer" => Ok(Role::Viewer),
            other => Err(ApiError::BadRequest(format!(
                "role {other:?}: owner, approver or viewer"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestRow {
    pub id: i64,
    pub org: String,
    pub device: String,
    pub peer: String,
    pub created_at: i64,
    pub state: String,
    pub decided_by: Option<String>,
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupRow {
    pub name: String,
    pub tags: Vec<(String, String)>,
    pub approvers: Vec<String>,
    pub window_seconds: i64,
}

/// Approval groups of device ?1's org whose required tags the device all has: the one
/// definition of "a device matches a group", for the policy and for who may approve.
const MATCHING_GROUPS: &str = "SELECT g.id, g.window_seconds FROM approval_groups g
    WHERE g.org_id = (SELECT org_id FROM devices WHERE id = ?1)
    AND NOT EXISTS (SELECT 1 FROM group_tags t WHERE t.group_id = g.id AND NOT EXISTS
        (SELECT 1 FROM device_tags d WHERE d.device_id = ?1 AND d.key = t.key AND d.value = t.value))";

fn parse_cidrs(texts: Vec<String>) -> Vec<Cidr> {
    // Entries were validated when stored; an unparsable one matches nothing.
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

impl Store {
    /// Everything the policy needs for one `/rec`, read in one transaction.
    pub fn snapshot(&self, org: &str, device: &str) -> Result<Option<(i64, Snapshot)>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let row = tx
                .query_row(
                    "SELECT d.id, d.state, o.require_source FROM devices d JOIN orgs o ON o.id = d.org_id
                     WHERE o.name = ?1 AND d.name = ?2",
                    params![org, device],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)),
                )
                .optional()?;
            let Some((id, state, require_source)) = row else {
                return Ok(None);
            };
            let mut sources: Vec<String> = tx
                .prepare_cached("SELECT cidr FROM device_sources WHERE device_id = ?1")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            sources.extend(
                tx.prepare_cached(
                    "SELECT e.cidr FROM device_netlists dn JOIN netlist_entries e ON e.netlist_id = dn.netlist_id
                     WHERE dn.device_id = ?1",
                )?
                .query_map(params![id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            );
            let allow_once = tx
                .prepare_cached("SELECT id FROM allow_once WHERE device_id = ?1 AND used_at IS NULL ORDER BY id LIMIT 1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let needs_approval: bool = tx
                .prepare_cached(&format!("SELECT EXISTS ({MATCHING_GROUPS})"))?
                .query_row(params![id], |r| r.get(0))?;
            let latest_request = tx
                .prepare_cached("SELECT id, state, expires_at FROM unlock_requests WHERE device_id = ?1 ORDER BY id DESC LIMIT 1")?
                .query_row(params![id], |r| {
                    Ok(RequestView {
                        id: r.get(0)?,
                        state: r.get(1)?,
                        expires_at: r.get(2)?,
                    })
                })
                .optional()?;
            Ok(Some((
                id,
                Snapshot {
                    state: DeviceState::parse(&state),
                    require_source,
                    sources: parse_cidrs(sources),
                    allow_once,
                    needs_approval,
                    latest_request,
                    now: now(),
                },
            )))
        })
    }

    /// Applies a decision's effect and writes its history row in one transaction. False if
    /// the guard failed (another request won the race): the caller decides again.
    pub fn apply(&self, device_id: i64, effect: &Effect, entry: &Entry) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now();
            let applied = match effect {
                Effect::None => true,
                Effect::UseAllowOnce(id) => {
                    tx.execute("UPDATE allow_once SET used_at = ?1 WHERE id = ?2 AND used_at IS NULL", params![t, id])? == 1
                }
                Effect::UseApproval(id) => {
                    tx.execute(
                        "UPDATE unlock_requests SET state = 'used' WHERE id = ?1 AND state = 'approved' AND expires_at > ?2",
                        params![id, t],
                    )? == 1
                }
                Effect::CreateRequest => {
                    // Repeated polls attach to the pending request instead of making new ones.
                    tx.execute(
                        "INSERT INTO unlock_requests (device_id, peer, created_at, state)
                         SELECT ?1, ?2, ?3, 'pending'
                         WHERE NOT EXISTS (SELECT 1 FROM unlock_requests WHERE device_id = ?1 AND state = 'pending')",
                        params![device_id, entry.peer, t],
                    )?;
                    true
                }
            };
            if !applied {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO history (at, org, device, peer, kid, decision, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t, entry.org, entry.device, entry.peer, entry.kid, entry.decision, entry.reason],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    // ---- admin: sources, tags, netlists ----

    pub fn set_require_source(&self, org: &str, required: bool) -> Result<()> {
        let id = self.org_id(org)?;
        self.with(|c| {
            c.execute(
                "UPDATE orgs SET require_source = ?1 WHERE id = ?2",
                params![required, id],
            )
            .map(|_| ())
        })
    }

    pub fn change_sources(&self, org: &str, device: &str, cidrs: &[Cidr], add: bool) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let tx = c.transaction()?;
            for cidr in cidrs {
                if add {
                    tx.execute(
                        "INSERT OR IGNORE INTO device_sources (device_id, cidr) VALUES (?1, ?2)",
                        params![id, cidr.to_string()],
                    )?;
                } else {
                    tx.execute(
                        "DELETE FROM device_sources WHERE device_id = ?1 AND cidr = ?2",
                        params![id, cidr.to_string()],
                    )?;
                }
            }
            tx.commit()
        })
    }

    pub fn sources(&self, org: &str, device: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let own = c
                .prepare("SELECT cidr FROM device_sources WHERE device_id = ?1 ORDER BY cidr")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let lists = c
                .prepare("SELECT n.name FROM device_netlists dn JOIN netlists n ON n.id = dn.netlist_id WHERE dn.device_id = ?1 ORDER BY n.name")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok((own, lists))
        })
    }

    pub fn set_tags(&self, org: &str, device: &str, tags: &[(String, String)]) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let tx = c.transaction()?;
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO device_tags (device_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
                    params![id, k, v],
                )?;
            }
            tx.commit()
        })
    }

    pub fn tags(&self, org: &str, device: &str) -> Result<Vec<(String, String)>> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.prepare("SELECT key, value FROM device_tags WHERE device_id = ?1 ORDER BY key")?
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    pub fn netlist_add(&self, org: &str, name: &str, cidrs: &[Cidr]) -> Result<()> {
        let org_id = self.org_id(org)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO netlists (org_id, name) VALUES (?1, ?2)",
                params![org_id, name],
            )?;
            let id: i64 = tx.query_row(
                "SELECT id FROM netlists WHERE org_id = ?1 AND name = ?2",
                params![org_id, name],
                |r| r.get(0),
            )?;
            for cidr in cidrs {
                tx.execute(
                    "INSERT OR IGNORE INTO netlist_entries (netlist_id, cidr) VALUES (?1, ?2)",
                    params![id, cidr.to_string()],
                )?;
            }
            tx.commit()
        })
    }

    pub fn netlist_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id(org)?;
        let removed = self.with(|c| {
            let tx = c.transaction()?;
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM netlists WHERE org_id = ?1 AND name = ?2",
                    params![org_id, name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                tx.execute(
                    "DELETE FROM device_netlists WHERE netlist_id = ?1",
                    params![id],
                )?;
                tx.execute(
                    "DELETE FROM netlist_entries WHERE netlist_id = ?1",
                    params![id],
                )?;
                tx.execute("DELETE FROM netlists WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(id.is_some())
        })?;
        if removed {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "network-access list {org}/{name}"
            )))
        }
    }

    pub fn netlists(&self, org: &str) -> Result<Vec<(String, Vec<String>)>> {
        let org_id = self.org_id(org)?;
        self.with(|c| {
            let names = c
                .prepare("SELECT id, name FROM netlists WHERE org_id = ?1 ORDER BY name")?
                .query_map(params![org_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut entries =
                c.prepare("SELECT cidr FROM netlist_entries WHERE netlist_id = ?1 ORDER BY cidr")?;
            names
                .into_iter()
                .map(|(id, name)| {
                    Ok((
                        name,
                        entries
                            .query_map(params![id], |r| r.get(0))?
                            .collect::<rusqlite::Result<Vec<String>>>()?,
                    ))
                })
                .collect()
        })
    }

    pub fn netlist_attach(&self, org: &str, device: &str, name: &str, attach: bool) -> Result<()> {
        let (id, org_id) = self.device_row(org, device)?;
        let list: i64 = self
            .with(|c| {
                c.query_row(
                    "SELECT id FROM netlists WHERE org_id = ?1 AND name = ?2",
                    params![org_id, name],
                    |r| r.get(0),
                )
                .optional()
            })?
            .ok_or_else(|| ApiError::NotFound(format!("network-access list {org}/{name}")))?;
        self.with(|c| {
            if attach {
                c.execute(
                    "INSERT OR IGNORE INTO device_netlists (device_id, netlist_id) VALUES (?1, ?2)",
                    params![id, list],
                )
            } else {
                c.execute(
                    "DELETE FROM device_netlists WHERE device_id = ?1 AND netlist_id = ?2",
                    params![id, list],
                )
            }
            .map(|_| ())
        })
    }

    // ---- admin: allow-once, groups, requests ----

    pub fn allow_once(&self, org: &str, device: &str, by: &str) -> Result<i64> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO allow_once (device_id, created_at, created_by) VALUES (?1, ?2, ?3)",
                params![id, now(), by],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn account_id(&self, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT id FROM accounts WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
        })?
        .ok_or_else(|| ApiError::NotFound(format!("account {name:?}")))
    }

    pub fn group_add(
        &self,
        org: &str,
        name: &str,
        tags: &[(String, String)],
        approvers: &[String],
        window: i64,
    ) -> Result<()> {
        let org_id = self.org_id(org)?;
        let approver_ids = approvers
            .iter()
            .map(|a| self.account_id(a))
            .collect::<Result<Vec<_>>>()?;
        self.with(|c| {
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
        })
        .map_err(|e| super::conflict_or(e, format!("group {org}/{name} exists")))
    }

    pub fn group_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id(org)?;
        let n = self.with(|c| {
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
        if n {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("group {org}/{name}")))
        }
    }

    pub fn groups(&self, org: &str) -> Result<Vec<GroupRow>> {
        let org_id = self.org_id(org)?;
        self.with(|c| {
            let groups = c
                .prepare("SELECT id, name, window_seconds FROM approval_groups WHERE org_id = ?1 ORDER BY name")?
                .query_map(params![org_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut tags = c.prepare("SELECT key, value FROM group_tags WHERE group_id = ?1 ORDER BY key")?;
            let mut approvers = c.prepare("SELECT a.name FROM group_approvers g JOIN accounts a ON a.id = g.account_id WHERE g.group_id = ?1 ORDER BY a.name")?;
            groups
                .into_iter()
                .map(|(id, name, window_seconds)| {
                    Ok(GroupRow {
                        name,
                        tags: tags.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?,
                        approvers: approvers.query_map(params![id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?,
                        window_seconds,
                    })
                })
                .collect()
        })
    }

    pub fn requests(&self, orgs: Option<&[String]>, only_pending: bool) -> Result<Vec<RequestRow>> {
        let rows = self.with(|c| {
            c.prepare(
                "SELECT r.id, o.name, d.name, r.peer, r.created_at, r.state, r.decided_by, r.expires_at
                 FROM unlock_requests r JOIN devices d ON d.id = r.device_id JOIN orgs o ON o.id = d.org_id
                 WHERE (?1 = 0 OR r.state = 'pending') ORDER BY r.id",
            )?
            .query_map(params![only_pending], |r| {
                Ok(RequestRow {
                    id: r.get(0)?,
                    org: r.get(1)?,
                    device: r.get(2)?,
                    peer: r.get(3)?,
                    created_at: r.get(4)?,
                    state: r.get(5)?,
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

    /// The org of a request, and the accounts that may approve it (approvers of groups
    /// whose tags the device matches), with the longest window among those groups.
    pub fn request_scope(&self, id: i64) -> Result<(String, Vec<i64>, i64)> {
        self.with(|c| {
            let (org, device_id): (String, i64) = match c
                .query_row(
                    "SELECT o.name, d.id FROM unlock_requests r JOIN devices d ON d.id = r.device_id JOIN orgs o ON o.id = d.org_id WHERE r.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
            {
                Some(v) => v,
                None => return Ok(None),
            };
            let groups = c
                .prepare(MATCHING_GROUPS)?
                .query_map(params![device_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut approvers = Vec::new();
            let mut stmt = c.prepare("SELECT account_id FROM group_approvers WHERE group_id = ?1")?;
            for (g, _) in &groups {
                approvers.extend(stmt.query_map(params![g], |r| r.get::<_, i64>(0))?.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            let window = groups.iter().map(|(_, w)| *w).max().unwrap_or(900);
            Ok(Some((org, approvers, window)))
        })?
        .ok_or_else(|| ApiError::NotFound(format!("request {id}")))
    }

    /// approve (valid for `window` seconds, one use), deny (sticks), or defer (stays pending).
    pub fn decide_request(&self, id: i64, action: &str, by: &str, window: i64) -> Result<()> {
        let t = now();
        let changed = self.with(|c| match action {
            "approve" => c.execute(
                "UPDATE unlock_requests SET state = 'approved', decided_by = ?1, decided_at = ?2, expires_at = ?3
                 WHERE id = ?4 AND state IN ('pending', 'denied')",
                params![by, t, t + window, id],
            ),
            "deny" => c.execute(
                "UPDATE unlock_requests SET state = 'denied', decided_by = ?1, decided_at = ?2, expires_at = NULL
                 WHERE id = ?3 AND state IN ('pending', 'approved')",
                params![by, t, id],
            ),
            _ => c.execute(
                "UPDATE unlock_requests SET decided_by = ?1, decided_at = ?2 WHERE id = ?3 AND state = 'pending'",
                params![by, t, id],
            ),
        })?;
        if changed == 1 {
            Ok(())
        } else {
            Err(ApiError::Conflict(format!(
                "request {id} cannot be {action}d in its current state"
            )))
        }
    }

    // ---- accounts ----

    pub fn add_member(&self, account: i64, org: &str, role: Role) -> Result<()> {
        let org_id = self.org_id(org)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO memberships (account_id, org_id, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account_id, org_id) DO UPDATE SET role = excluded.role",
                params![account, org_id, role.as_str()],
            )
            .map(|_| ())
        })
    }

    pub fn memberships(&self, account: i64) -> Result<Vec<(String, Role)>> {
        let rows = self.with(|c| {
            c.prepare("SELECT o.name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id WHERE m.account_id = ?1")?
                .query_map(params![account], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(o, r)| Ok((o, Role::parse(&r)?)))
            .collect()
    }

    /// Revokes a token of `account` (any account's if `account` is None).
    pub fn revoke_token(&self, id: i64, account: Option<i64>) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL AND (?3 IS NULL OR account_id = ?3)",
                params![now(), id, account],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("token {id}")))
        }
    }

    pub fn audit_in(
        &self,
        org: Option<&str>,
        account: &str,
        action: &str,
        target: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, account, action, target, org) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), account, action, target, org],
            )
            .map(|_| ())
        })
    }

    pub fn audit_log(&self, orgs: Option<&[String]>, limit: i64) -> Result<Vec<serde_json::Value>> {
        let rows = self.with(|c| {
            c.prepare(
                "SELECT at, account, action, target, org FROM audit ORDER BY id DESC LIMIT ?1",
            )?
            .query_map(params![limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, _, _, org)| match (orgs, org) {
                (None, _) => true,
                (Some(list), Some(o)) => list.contains(o),
                (Some(_), None) => false,
            })
            .map(|(at, account, action, target, org)| serde_json::json!({"at": at, "account": account, "action": action, "target": target, "org": org}))
            .collect())
    }
}
