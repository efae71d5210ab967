//! The `/rec` path: the policy's snapshot of a device, the decision's effect with its
//! history row, the history writer's own connection, and reading the history back.

use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::approvals::MATCHING_GROUPS;
use super::{Sqlite, connect, lock, parse_column, unavailable};
use crate::api::HistoryEntry;
use crate::net::Cidr;
use crate::policy::{DeviceState, Effect, RequestState, RequestView, Snapshot};
use crate::store::history::{Entry, HistorySink};
use crate::store::{Applied, Rec, Result, now};

const INSERT_HISTORY: &str = "INSERT INTO history (at, org, device, peer, kid, decision, reason)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

fn parse_cidrs(texts: &str) -> Vec<Cidr> {
    // Entries were validated when stored; an unparsable one matches nothing.
    texts
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect()
}

fn insert_history(c: &Connection, at: i64, e: &Entry) -> rusqlite::Result<usize> {
    c.prepare_cached(INSERT_HISTORY)?.execute(params![
        at, e.org, e.device, e.peer, e.kid, e.decision, e.reason
    ])
}

/// The history writer's connection: a batch of rows in one transaction, one fsync.
struct SqliteHistory(Connection);

impl HistorySink for SqliteHistory {
    fn write(&mut self, batch: &[&Entry]) -> Result<()> {
        let tx = self.0.transaction().map_err(unavailable)?;
        let at = now();
        for e in batch {
            insert_history(&tx, at, e).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }
}

/// Everything the policy reads about device `?1`, in one row, as PostgreSQL's snapshot is:
/// one statement is its own consistent read, and a storm of distinct devices reads once per
/// recovery (six statements in an explicit transaction cost half as much again). The
/// sources come as one space-separated text: a CIDR has no space.
static SNAPSHOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT d.state, o.require_source,
            (SELECT group_concat(cidr, ' ') FROM
                (SELECT cidr FROM device_sources WHERE device_id = ?1
                 UNION ALL
                 SELECT e.cidr FROM device_netlists dn
                 JOIN netlist_entries e ON e.netlist_id = dn.netlist_id
                 WHERE dn.device_id = ?1)),
            (SELECT id FROM allow_once WHERE device_id = ?1 AND used_at IS NULL
             ORDER BY id LIMIT 1),
            EXISTS ({MATCHING_GROUPS}),
            r.id, r.state, r.expires_at, r.decided_by
         FROM devices d JOIN orgs o ON o.id = d.org_id
         LEFT JOIN unlock_requests r
              ON r.id = (SELECT max(id) FROM unlock_requests WHERE device_id = ?1)
         WHERE d.id = ?1"
    )
});

impl Sqlite {
    fn read_snapshot(&self, device_id: i64) -> Result<Option<Snapshot>> {
        self.reading(|c| {
            c.prepare_cached(&SNAPSHOT)?
                .query_row(params![device_id], |r| {
                    let sources: Option<String> = r.get(2)?;
                    let latest_request = match r.get::<_, Option<i64>>(5)? {
                        None => None,
                        Some(id) => Some(RequestView {
                            id,
                            state: parse_column(r.get(6)?, RequestState::parse)?,
                            expires_at: r.get(7)?,
                            decided_by: r.get(8)?,
                        }),
                    };
                    Ok(Snapshot {
                        state: parse_column(r.get(0)?, DeviceState::parse)?,
                        require_source: r.get(1)?,
                        sources: parse_cidrs(sources.as_deref().unwrap_or_default()),
                        allow_once: r.get(3)?,
                        needs_approval: r.get(4)?,
                        latest_request,
                        now: now(),
                    })
                })
                .optional()
        })
    }
}

impl Rec for Sqlite {
    fn snapshot(&self, device_id: i64) -> Result<Option<Snapshot>> {
        // Loaded before the read: a change counted after it makes the next request read again.
        let changes = self.changes.load(Ordering::Acquire);
        if let Some(mut snapshot) = lock(&self.snapshots)?.get(changes, device_id) {
            snapshot.now = now();
            return Ok(Some(snapshot));
        }
        let snapshot = self.read_snapshot(device_id)?;
        if let Some(snapshot) = &snapshot {
            lock(&self.snapshots)?.put(changes, device_id, snapshot.clone());
        }
        Ok(snapshot)
    }

    fn snapshot_is_local(&self) -> bool {
        true
    }

    fn apply_effect(&self, device_id: i64, effect: &Effect, entry: &Entry) -> Result<Applied> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now();
            let mut created = None;
            let applied = match effect {
                Effect::None => true,
                Effect::UseAllowOnce(id) => {
                    tx.execute(
                        "UPDATE allow_once SET used_at = ?1 WHERE id = ?2 AND used_at IS NULL",
                        params![t, id],
                    )? == 1
                }
                Effect::UseApproval(id) => {
                    tx.execute(
                        "UPDATE unlock_requests SET state = 'used'
                         WHERE id = ?1 AND state = 'approved' AND expires_at > ?2",
                        params![id, t],
                    )? == 1
                }
                Effect::CreateRequest => {
                    // Repeated polls attach to the pending request instead of making new ones.
                    let inserted = tx.execute(
                        "INSERT INTO unlock_requests (device_id, peer, created_at, state)
                         SELECT ?1, ?2, ?3, 'pending'
                         WHERE NOT EXISTS (SELECT 1 FROM unlock_requests
                                           WHERE device_id = ?1 AND state = 'pending')",
                        params![device_id, entry.peer, t],
                    )?;
                    if inserted == 1 {
                        created = Some(tx.last_insert_rowid());
                    }
                    true
                }
            };
            if !applied {
                return Ok(Applied::Lost);
            }
            insert_history(&tx, t, entry)?;
            tx.commit()?;
            Ok(created.map_or(Applied::Done, Applied::NewRequest))
        })
    }

    fn history(
        &self,
        org: Option<&str>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<HistoryEntry>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT at, org, device, peer, kid, decision, reason FROM history
                 WHERE (?1 IS NULL OR org = ?1) AND (?2 IS NULL OR device = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?
            .query_map(params![org, device, limit], |r| {
                Ok(HistoryEntry {
                    at: r.get(0)?,
                    org: r.get(1)?,
                    device: r.get(2)?,
                    peer: r.get(3)?,
                    kid: r.get(4)?,
                    decision: r.get(5)?,
                    reason: r.get(6)?,
                })
            })?
            .collect()
        })
    }

    fn history_sink(&self) -> Result<Box<dyn HistorySink>> {
        let conn = connect(&self.path)?;
        Ok(Box::new(SqliteHistory(conn)))
    }

    fn healthy(&self) -> bool {
        self.with(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .is_ok()
    }
}
