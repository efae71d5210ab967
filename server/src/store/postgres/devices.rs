//! Organisations with their signing keys, devices with their exchange keys, lifecycle and
//! reported mode.

use postgres::Transaction;

use super::sealing::is_store_kek;
use super::{Postgres, conflict_or, erasure, parse_column, watch};
use crate::api::{DeviceMode, Mode};
use crate::policy::DeviceState;
use crate::store::sealing::{SealedJwk, other_kek};
use crate::store::{DeviceRow, Devices, OrgRow, Result, StoreError, now};

/// Locks the device's row for the rest of the transaction (so changes to one device from
/// several replicas queue up) and tells whether it is retired.
fn lock_device(tx: &mut Transaction<'_>, id: i64) -> std::result::Result<bool, postgres::Error> {
    let state: String = tx
        .query_one("SELECT state FROM devices WHERE id = $1 FOR UPDATE", &[&id])?
        .get(0);
    Ok(state == DeviceState::Retired.as_str())
}

fn retired(org: &str, name: &str) -> StoreError {
    StoreError::Conflict(format!("device {org}/{name} is retired"))
}

/// The managed unlock path is gone for good: no key, no header backup, no way back.
fn retire(tx: &mut Transaction<'_>, id: i64) -> std::result::Result<(), postgres::Error> {
    tx.execute(
        "UPDATE devices SET state = $1 WHERE id = $2",
        &[&DeviceState::Retired.as_str(), &id],
    )?;
    tx.execute("DELETE FROM exchange_keys WHERE device_id = $1", &[&id])?;
    tx.execute("DELETE FROM device_escrow WHERE device_id = $1", &[&id])?;
    erasure::mark_pending(tx)
}

impl Devices for Postgres {
    fn add_org(&self, name: &str, signing_key: SealedJwk<'_>) -> Result<i64> {
        self.try_with(|c| {
            let mut tx = c.transaction()?;
            if !is_store_kek(&mut tx, signing_key.kek_id)? {
                return Ok(Err(other_kek(name)));
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO orgs (name, created_at) VALUES ($1, $2) RETURNING id",
                    &[&name, &now()],
                )?
                .get(0);
            tx.execute(
                "INSERT INTO signing_keys (org_id, jwk, created_at) VALUES ($1, $2, $3)",
                &[&id, &signing_key.text, &now()],
            )?;
            tx.commit()?;
            Ok(Ok(id))
        })?
        .map_err(|e| conflict_or(e, || format!("organisation {name:?} exists")))?
    }

    fn orgs(&self) -> Result<Vec<OrgRow>> {
        let (orgs, keys) = self.with(|c| {
            // One snapshot for both reads: an org and its keys as of one moment.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let orgs = tx.query(
                "SELECT id, name, require_source FROM orgs ORDER BY name",
                &[],
            )?;
            let keys = tx.query("SELECT org_id, jwk FROM signing_keys ORDER BY id", &[])?;
            tx.commit()?;
            Ok((orgs, keys))
        })?;
        Ok(orgs
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                OrgRow {
                    id,
                    name: r.get(1),
                    require_source: r.get(2),
                    signing_keys: keys
                        .iter()
                        .filter(|k| k.get::<_, i64>(0) == id)
                        .map(|k| k.get(1))
                        .collect(),
                }
            })
            .collect())
    }

    fn org_id(&self, name: &str) -> Result<i64> {
        self.org_id_of(name)
    }

    fn add_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<i64> {
        let org_id = self.org_id_of(org)?;
        self.try_with(|c| {
            let mut tx = c.transaction()?;
            if !is_store_kek(&mut tx, exchange_key.kek_id)? {
                return Ok(Err(other_kek(org)));
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO devices (org_id, name, state, created_at)
                     VALUES ($1, $2, 'active', $3) RETURNING id",
                    &[&org_id, &name, &now()],
                )?
                .get(0);
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at)
                 VALUES ($1, $2, true, $3)",
                &[&id, &exchange_key.text, &now()],
            )?;
            tx.commit()?;
            Ok(Ok(id))
        })?
        .map_err(|e| conflict_or(e, || format!("device {org}/{name} exists")))?
    }

    fn devices(&self) -> Result<Vec<DeviceRow>> {
        let (devices, keys) = self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let devices = tx.query(
                "SELECT d.id, o.name, d.name, d.state FROM devices d
                 JOIN orgs o ON o.id = d.org_id ORDER BY o.name, d.name",
                &[],
            )?;
            let keys = tx.query(
                "SELECT device_id, jwk, advertised FROM exchange_keys ORDER BY id",
                &[],
            )?;
            tx.commit()?;
            Ok((devices, keys))
        })?;
        let mut by_device: std::collections::HashMap<i64, Vec<(String, bool)>> =
            std::collections::HashMap::new();
        for k in &keys {
            by_device
                .entry(k.get(0))
                .or_default()
                .push((k.get(1), k.get(2)));
        }
        devices
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                Ok(DeviceRow {
                    id,
                    org: r.get(1),
                    name: r.get(2),
                    state: parse_column(r.get(3), DeviceState::parse)?,
                    exchange_keys: by_device.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    fn device_with_keys(&self, org: &str, name: &str) -> Result<Option<DeviceRow>> {
        let (device, keys) = self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let device = tx.query_opt(
                "SELECT d.id, o.name, d.name, d.state FROM devices d
                 JOIN orgs o ON o.id = d.org_id WHERE o.name = $1 AND d.name = $2",
                &[&org, &name],
            )?;
            let keys = match &device {
                Some(d) => tx.query(
                    "SELECT jwk, advertised FROM exchange_keys WHERE device_id = $1 ORDER BY id",
                    &[&d.get::<_, i64>(0)],
                )?,
                None => Vec::new(),
            };
            tx.commit()?;
            Ok((device, keys))
        })?;
        device
            .map(|r| {
                Ok(DeviceRow {
                    id: r.get(0),
                    org: r.get(1),
                    name: r.get(2),
                    state: parse_column(r.get(3), DeviceState::parse)?,
                    exchange_keys: keys.iter().map(|k| (k.get(0), k.get(1))).collect(),
                })
            })
            .transpose()
    }

    fn set_device_state(&self, org: &str, name: &str, state: DeviceState) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            if lock_device(&mut tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            if state == DeviceState::Retired {
                retire(&mut tx, id)?;
            } else {
                // Enabling restarts the liveness clock.
                tx.execute(
                    "UPDATE devices SET state = $1,
                         alive_since = CASE WHEN $1 = 'active' THEN $3 ELSE alive_since END
                     WHERE id = $2",
                    &[&state.as_str(), &id, &now()],
                )?;
            }
            tx.commit().map(Ok)
        })?
    }

    fn rotate_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            if lock_device(&mut tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            if !is_store_kek(&mut tx, exchange_key.kek_id)? {
                return Ok(Err(other_kek(org)));
            }
            tx.execute(
                "UPDATE exchange_keys SET advertised = false WHERE device_id = $1",
                &[&id],
            )?;
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at)
                 VALUES ($1, $2, true, $3)",
                &[&id, &exchange_key.text, &now()],
            )?;
            tx.commit().map(Ok)
        })?
    }

    fn report_mode(&self, org: &str, name: &str, mode: Mode, by: &str) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            let is_retired = lock_device(&mut tx, id)?;
            if mode == Mode::Sovereign {
                // Again on a retired device too: the machine may repeat its report.
                retire(&mut tx, id)?;
            } else if is_retired {
                return Ok(Err(StoreError::Conflict(format!(
                    "device {org}/{name} is retired and has no managed path: bind the volume \
                     to a new device"
                ))));
            }
            tx.execute(
                "UPDATE devices SET mode = $1, mode_reported_at = $2, mode_reported_by = $3
                 WHERE id = $4",
                &[&mode.as_str(), &now(), &by, &id],
            )?;
            tx.commit().map(Ok)
        })?
    }

    fn device_mode(&self, org: &str, name: &str) -> Result<Option<DeviceMode>> {
        let (id, _) = self.device_row(org, name)?;
        let row = self.with(|c| {
            c.query_opt(
                "SELECT mode, mode_reported_at, mode_reported_by FROM devices
                 WHERE id = $1 AND mode IS NOT NULL",
                &[&id],
            )
        })?;
        row.map(|r| {
            Ok(DeviceMode {
                mode: parse_column(r.get(0), Mode::parse)?,
                reported_at: r.get(1),
                reported_by: r.get(2),
            })
        })
        .transpose()
    }

    fn erase_destroyed(&self) -> Result<()> {
        erasure::erase_pending(self)
    }

    fn watch(&self, on_change: Box<dyn Fn() + Send + Sync>) -> Result<()> {
        watch::start(
            self.connect.clone(),
            self.pool.clone(),
            self.closed.clone(),
            self.freshness.clone(),
            on_change,
        )
    }
}
