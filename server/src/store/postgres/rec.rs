//! The `/rec` path: the policy's snapshot of a device, the decision's effect with its
//! history row, the history writer's own connection, and reading the history back.
//!
//! Replicas race on the same rows. Under READ COMMITTED a guarded UPDATE that waited for
//! a concurrent one re-checks its WHERE on the row that one left, so exactly one request
//! uses an allowance or an approval; a partial unique index keeps one pending request per
//! device. `synchronous_commit` is left on: a row is durable before the answer leaves.

use postgres::{Client, GenericClient};

use super::approvals::MATCHING_GROUPS;
use super::{Postgres, parse_column, unavailable};
use crate::api::HistoryEntry;
use crate::net::Cidr;
use crate::policy::{DeviceState, Effect, RequestState, RequestView, Snapshot};
use crate::store::history::{Entry, HistorySink};
use crate::store::snapshot_cache::SnapshotCache;
use crate::store::{Applied, Rec, Result, now};

/// Everything the policy reads about device `$1`, in one row.
static SNAPSHOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT d.state, o.require_source,
            ARRAY(SELECT cidr FROM device_sources WHERE device_id = d.id
                  UNION ALL
                  SELECT e.cidr FROM device_netlists dn
                  JOIN netlist_entries e ON e.netlist_id = dn.netlist_id
                  WHERE dn.device_id = d.id),
            (SELECT id FROM allow_once WHERE device_id = d.id AND used_at IS NULL
             ORDER BY id LIMIT 1),
            EXISTS ({MATCHING_GROUPS}),
            r.id, r.state, r.expires_at, r.decided_by
         FROM devices d JOIN orgs o ON o.id = d.org_id
         LEFT JOIN LATERAL (SELECT id, state, expires_at, decided_by FROM unlock_requests
                            WHERE device_id = d.id ORDER BY id DESC LIMIT 1) r ON true
         WHERE d.id = $1"
    )
});

const INSERT_HISTORY: &str = "INSERT INTO history (at, org, device, peer, kid, decision, reason)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

fn parse_cidrs(texts: Vec<String>) -> Vec<Cidr> {
    // Entries were validated when stored; an unparsable one matches nothing.
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

fn insert_history(
    c: &mut impl GenericClient,
    at: i64,
    e: &Entry,
) -> std::result::Result<u64, postgres::Error> {
    c.execute(
        INSERT_HISTORY,
        &[
            &at,
            &e.org,
            &e.device,
            &e.peer,
            &e.kid,
            &e.decision,
            &e.reason,
        ],
    )
}

/// A batch of history rows in one statement, column by column: a single statement commits
/// by itself, so a batch is one round trip where BEGIN, a prepare, an INSERT per row and
/// COMMIT were four or more (each a wakeup of this server and of the database's backend).
const INSERT_HISTORY_BATCH: &str = "INSERT INTO history (at, org, device, peer, kid, decision, reason)
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])";

/// The history writer's connection: a batch of rows in one statement, one WAL flush. A
/// lost connection fails that batch; the next batch connects again.
struct PostgresHistory {
    connect: super::tls::Connect,
    client: Option<Client>,
}

impl PostgresHistory {
    fn write_batch(&mut self, batch: &[&Entry]) -> std::result::Result<(), postgres::Error> {
        use postgres::types::Type;
        let client = match &mut self.client {
            Some(c) if !c.is_closed() => c,
            _ => self.client.insert(self.connect.connect()?),
        };
        let column = |f: fn(&Entry) -> Option<&str>| batch.iter().map(|e| f(e)).collect::<Vec<_>>();
        let orgs = column(|e| e.org.as_deref());
        let devices = column(|e| e.device.as_deref());
        let peers = column(|e| Some(&e.peer));
        let kids = column(|e| e.kid.as_deref());
        let decisions = column(|e| Some(e.decision));
        let reasons = column(|e| Some(&e.reason));
        // Unprepared, with its parameter types: one round trip, committed when it returns.
        client.query_typed(
            INSERT_HISTORY_BATCH,
            &[
                (&now(), Type::INT8),
                (&orgs, Type::TEXT_ARRAY),
                (&devices, Type::TEXT_ARRAY),
                (&peers, Type::TEXT_ARRAY),
                (&kids, Type::TEXT_ARRAY),
                (&decisions, Type::TEXT_ARRAY),
                (&reasons, Type::TEXT_ARRAY),
            ],
        )?;
        Ok(())
    }
}

impl HistorySink for PostgresHistory {
    fn write(&mut self, batch: &[&Entry]) -> Result<()> {
        let written = self.write_batch(batch);
        if written.is_err() {
            self.client = None;
        }
        written.map_err(unavailable)
    }
}

impl Postgres {
    fn snapshots(&self) -> std::sync::MutexGuard<'_, SnapshotCache> {
        // The cache holds plain values: one a panicking thread left is still whole.
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Rec for Postgres {
    fn cached_snapshot(&self, device_id: i64) -> Option<Snapshot> {
        let changes = self.freshness.current()?;
        let mut snapshot = self.snapshots().get(changes, device_id)?;
        snapshot.now = now();
        Some(snapshot)
    }

    fn snapshot(&self, device_id: i64) -> Result<Option<Snapshot>> {
        // Taken before the read: a change heard after it makes the next request read again.
        let changes = self.freshness.current();
        // One statement is one snapshot of the database (READ COMMITTED takes it per
        // statement), and `query_typed` sends it unprepared in a single round trip: the
        // separate queries of a transaction cost a dozen round trips per recovery.
        let row = self.reading(|c| {
            c.query_typed_opt(&SNAPSHOT, &[(&device_id, postgres::types::Type::INT8)])
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let latest_request = row
            .get::<_, Option<i64>>(5)
            .map(|id| {
                Ok(RequestView {
                    id,
                    state: parse_column(row.get(6), RequestState::parse)?,
                    expires_at: row.get(7),
                    decided_by: row.get(8),
                })
            })
            .transpose()?;
        let snapshot = Snapshot {
            state: parse_column(row.get(0), DeviceState::parse)?,
            require_source: row.get(1),
            sources: parse_cidrs(row.get(2)),
            allow_once: row.get(3),
            needs_approval: row.get(4),
            latest_request,
            now: now(),
        };
        if let Some(changes) = changes {
            self.snapshots().put(changes, device_id, snapshot.clone());
        }
        Ok(Some(snapshot))
    }

    fn apply_effect(&self, device_id: i64, effect: &Effect, entry: &Entry) -> Result<Applied> {
        // `with` counts this as a change whatever comes of it: the next decision reads
        // again, also when another replica won the race for the allow-once or approval.
        self.with(|c| {
            let mut tx = c.transaction()?;
            let t = now();
            let mut created = None;
            let applied = match effect {
                Effect::None => true,
                Effect::UseAllowOnce(id) => {
                    tx.execute(
                        "UPDATE allow_once SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
                        &[&t, id],
                    )? == 1
                }
                Effect::UseApproval(id) => {
                    tx.execute(
                        "UPDATE unlock_requests SET state = 'used'
                         WHERE id = $1 AND state = 'approved' AND expires_at > $2",
                        &[id, &t],
                    )? == 1
                }
                Effect::CreateRequest => {
                    // Repeated polls, from any replica, attach to the pending request.
                    created = tx
                        .query_opt(
                            "INSERT INTO unlock_requests (device_id, peer, created_at, state)
                             VALUES ($1, $2, $3, 'pending')
                             ON CONFLICT (device_id) WHERE state = 'pending' DO NOTHING
                             RETURNING id",
                            &[&device_id, &entry.peer, &t],
                        )?
                        .map(|r| r.get(0));
                    true
                }
            };
            if !applied {
                return Ok(Applied::Lost);
            }
            insert_history(&mut tx, t, entry)?;
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
        let rows = self.with(|c| {
            c.query(
                "SELECT at, org, device, peer, kid, decision, reason FROM history
                 WHERE ($1::text IS NULL OR org = $1) AND ($2::text IS NULL OR device = $2)
                 ORDER BY id DESC LIMIT $3",
                &[&org, &device, &limit],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                at: r.get(0),
                org: r.get(1),
                device: r.get(2),
                peer: r.get(3),
                kid: r.get(4),
                decision: r.get(5),
                reason: r.get(6),
            })
            .collect())
    }

    fn history_sink(&self) -> Result<Box<dyn HistorySink>> {
        let client = self.connect.connect().map_err(unavailable)?;
        Ok(Box::new(PostgresHistory {
            connect: self.connect.clone(),
            client: Some(client),
        }))
    }

    fn healthy(&self) -> bool {
        self.with(|c| c.query_one("SELECT 1", &[]).map(|_| ()))
            .is_ok()
    }
}
