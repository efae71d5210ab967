//! The liveness check: max_silence per org and device, and disabling silent devices.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::Sqlite;
use crate::store::{Liveness, Result, Silenced, StoreError};

/// Active devices with a max_silence (theirs, else their org's) and their last sign of
/// life: the newest history row (any /rec request, whatever its decision), creation or
/// enabling, whichever is latest.
const CANDIDATES: &str = "SELECT d.id, o.name, d.name, COALESCE(d.max_silence, o.max_silence),
       max(d.created_at, COALESCE(d.alive_since, 0),
           COALESCE((SELECT h.at FROM history h WHERE h.org = o.name AND h.device = d.name
                     ORDER BY h.id DESC LIMIT 1), 0))
     FROM devices d JOIN orgs o ON o.id = d.org_id
     WHERE d.state = 'active' AND COALESCE(d.max_silence, o.max_silence) IS NOT NULL";

impl Liveness for Sqlite {
    fn set_org_max_silence(&self, org: &str, seconds: Option<i64>) -> Result<()> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE orgs SET max_silence = ?1 WHERE name = ?2",
                params![seconds, org],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("organisation {org:?}")));
        }
        Ok(())
    }

    fn set_device_max_silence(&self, org: &str, device: &str, seconds: Option<i64>) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.execute(
                "UPDATE devices SET max_silence = ?1 WHERE id = ?2",
                params![seconds, id],
            )
        })?;
        Ok(())
    }

    fn max_silence(&self, org: &str, device: &str) -> Result<(Option<i64>, Option<i64>)> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.query_row(
                "SELECT d.max_silence, o.max_silence FROM devices d
                 JOIN orgs o ON o.id = d.org_id WHERE d.id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    fn shortest_max_silence(&self) -> Result<Option<i64>> {
        self.with(|c| {
            c.query_row(
                "SELECT min(s) FROM (SELECT max_silence AS s FROM orgs
                                     UNION ALL SELECT max_silence FROM devices)",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    fn watched_since(&self, now: i64, gap: i64) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "INSERT INTO liveness_watch (id, since, checked_at) VALUES (1, ?1, ?1)
                 ON CONFLICT (id) DO UPDATE SET
                     since = CASE WHEN liveness_watch.checked_at < ?1 - ?2 THEN ?1
                                  ELSE liveness_watch.since END,
                     checked_at = max(liveness_watch.checked_at, ?1)
                 RETURNING since",
                params![now, gap],
                |r| r.get(0),
            )
        })
    }

    fn disable_silent(&self, now: i64, watched_since: i64) -> Result<Vec<Silenced>> {
        let candidates: Vec<(i64, String, String, i64, i64)> = self.with(|c| {
            c.prepare_cached(CANDIDATES)?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
        })?;
        let mut silenced = Vec::new();
        for (id, org, device, max_silence, last) in candidates {
            let last = last.max(watched_since);
            if now - last <= max_silence {
                continue;
            }
            let cutoff = now - max_silence;
            let done = self.with(|c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // Again under the write lock: a request or an enabling since the read
                // keeps the device.
                let changed = tx.execute(
                    "UPDATE devices SET state = 'disabled'
                     WHERE id = ?1 AND state = 'active'
                       AND created_at < ?2 AND COALESCE(alive_since, 0) < ?2
                       AND NOT EXISTS (SELECT 1 FROM history h
                                       WHERE h.org = ?3 AND h.device = ?4 AND h.at >= ?2)",
                    params![id, cutoff, org, device],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                let entry = Silenced {
                    org: org.clone(),
                    device: device.clone(),
                    silent_for: now - last,
                    max_silence,
                };
                tx.execute(
                    "INSERT INTO history (at, org, device, peer, kid, decision, reason)
                     VALUES (?1, ?2, ?3, 'liveness', NULL, 'silent', ?4)",
                    params![now, org, device, entry.reason()],
                )?;
                tx.execute(
                    "INSERT INTO audit (at, account, action, target, org)
                     VALUES (?1, 'liveness', ?2, ?3, ?4)",
                    params![
                        now,
                        format!("device disable ({})", entry.reason()),
                        format!("{org}/{device}"),
                        org
                    ],
                )?;
                tx.commit()?;
                Ok(Some(entry))
            })?;
            silenced.extend(done);
        }
        Ok(silenced)
    }
}
