//! The liveness check: max_silence per org and device, and disabling silent devices. Of
//! several replicas checking at once, one disables a device: the guarded UPDATE waits on
//! the row another replica is disabling, then finds it disabled.

use super::Postgres;
use crate::store::{Liveness, Result, Silenced, StoreError};

/// As SQLite's: active devices with a max_silence and their last sign of life.
const CANDIDATES: &str = "SELECT d.id, o.name, d.name, COALESCE(d.max_silence, o.max_silence),
       greatest(d.created_at, COALESCE(d.alive_since, 0),
           COALESCE((SELECT h.at FROM history h WHERE h.org = o.name AND h.device = d.name
                     ORDER BY h.id DESC LIMIT 1), 0))
     FROM devices d JOIN orgs o ON o.id = d.org_id
     WHERE d.state = 'active' AND COALESCE(d.max_silence, o.max_silence) IS NOT NULL";

impl Liveness for Postgres {
    fn set_org_max_silence(&self, org: &str, seconds: Option<i64>) -> Result<()> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE orgs SET max_silence = $1 WHERE name = $2",
                &[&seconds, &org],
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
                "UPDATE devices SET max_silence = $1 WHERE id = $2",
                &[&seconds, &id],
            )
        })?;
        Ok(())
    }

    fn max_silence(&self, org: &str, device: &str) -> Result<(Option<i64>, Option<i64>)> {
        let (id, _) = self.device_row(org, device)?;
        let row = self.with(|c| {
            c.query_one(
                "SELECT d.max_silence, o.max_silence FROM devices d
                 JOIN orgs o ON o.id = d.org_id WHERE d.id = $1",
                &[&id],
            )
        })?;
        Ok((row.get(0), row.get(1)))
    }

    fn shortest_max_silence(&self) -> Result<Option<i64>> {
        // Looked up every second: as a change, it would drop every cached snapshot as often.
        let row = self.reading(|c| {
            c.query_one(
                "SELECT min(s) FROM (SELECT max_silence AS s FROM orgs
                                     UNION ALL SELECT max_silence FROM devices) m",
                &[],
            )
        })?;
        Ok(row.get(0))
    }

    fn watched_since(&self, now: i64, gap: i64) -> Result<i64> {
        let row = self.with(|c| {
            c.query_one(
                "INSERT INTO liveness_watch (id, since, checked_at) VALUES (1, $1, $1)
                 ON CONFLICT (id) DO UPDATE SET
                     since = CASE WHEN liveness_watch.checked_at < $1 - $2 THEN $1
                                  ELSE liveness_watch.since END,
                     checked_at = greatest(liveness_watch.checked_at, $1)
                 RETURNING since",
                &[&now, &gap],
            )
        })?;
        Ok(row.get(0))
    }

    fn disable_silent(&self, now: i64, watched_since: i64) -> Result<Vec<Silenced>> {
        let rows = self.with(|c| c.query(CANDIDATES, &[]))?;
        let mut silenced = Vec::new();
        for r in rows {
            let (id, org, device, max_silence, last): (i64, String, String, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let last = last.max(watched_since);
            if now - last <= max_silence {
                continue;
            }
            let cutoff = now - max_silence;
            let entry = Silenced {
                org: org.clone(),
                device: device.clone(),
                silent_for: now - last,
                max_silence,
            };
            let reason = entry.reason();
            let done = self.with(|c| {
                let mut tx = c.transaction()?;
                let disabled = tx.query_opt(
                    "UPDATE devices SET state = 'disabled'
                     WHERE id = $1 AND state = 'active'
                       AND created_at < $2 AND COALESCE(alive_since, 0) < $2
                       AND NOT EXISTS (SELECT 1 FROM history h
                                       WHERE h.org = $3 AND h.device = $4 AND h.at >= $2)
                     RETURNING id",
                    &[&id, &cutoff, &org, &device],
                )?;
                if disabled.is_none() {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO history (at, org, device, peer, kid, decision, reason)
                     VALUES ($1, $2, $3, 'liveness', NULL, 'silent', $4)",
                    &[&now, &org, &device, &reason],
                )?;
                tx.execute(
                    "INSERT INTO audit (at, account, action, target, org)
                     VALUES ($1, 'liveness', $2, $3, $4)",
                    &[
                        &now,
                        &format!("device disable ({reason})"),
                        &format!("{org}/{device}"),
                        &org,
                    ],
                )?;
                tx.commit()?;
                Ok(true)
            })?;
            if done {
                silenced.push(entry);
            }
        }
        Ok(silenced)
    }
}
