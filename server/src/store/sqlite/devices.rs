//! Organisations with their signing keys, devices with their exchange keys, lifecycle and
//! reported mode.

use rusqlite::{OptionalExtension, Transaction, params};

use super::sealing::is_store_kek;
use super::{Sqlite, conflict_or, erasure, parse_column, texts};
use crate::api::{DeviceMode, Mode};
use crate::policy::DeviceState;
use crate::store::sealing::{SealedJwk, other_kek};
use crate::store::{DeviceRow, Devices, OrgRow, Result, StoreError, now};

fn device_is_retired(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<bool> {
    let state: String = tx.query_row(
        "SELECT state FROM devices WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    Ok(state == DeviceState::Retired.as_str())
}

const DEVICE_ROW: &str = "SELECT d.id, o.name, d.name, d.state
     FROM devices d JOIN orgs o ON o.id = d.org_id";

/// A row of `DEVICE_ROW`, its keys not read yet.
fn device_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        org: r.get(1)?,
        name: r.get(2)?,
        state: parse_column(r.get(3)?, DeviceState::parse)?,
        exchange_keys: Vec::new(),
    })
}

/// `device` with its exchange keys, oldest first.
fn with_keys(c: &rusqlite::Connection, mut device: DeviceRow) -> rusqlite::Result<DeviceRow> {
    device.exchange_keys = c
        .prepare_cached(
            "SELECT jwk, advertised FROM exchange_keys WHERE device_id = ?1 ORDER BY id",
        )?
        .query_map(params![device.id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(device)
}

fn retired(org: &str, name: &str) -> StoreError {
    StoreError::Conflict(format!("device {org}/{name} is retired"))
}

/// The managed unlock path is gone for good: no key, no header backup, no way back.
fn retire(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE devices SET state = ?1 WHERE id = ?2",
        params![DeviceState::Retired.as_str(), id],
    )?;
    tx.execute(
        "DELETE FROM exchange_keys WHERE device_id = ?1",
        params![id],
    )?;
    tx.execute(
        "DELETE FROM device_escrow WHERE device_id = ?1",
        params![id],
    )?;
    erasure::mark_pending(tx)
}

impl Devices for Sqlite {
    fn add_org(&self, name: &str, signing_key: SealedJwk<'_>) -> Result<i64> {
        self.try_with(|c| {
            let tx = c.transaction()?;
            if !is_store_kek(&tx, signing_key.kek_id)? {
                return Ok(Err(other_kek(name)));
            }
            tx.execute(
                "INSERT INTO orgs (name, created_at) VALUES (?1, ?2)",
                params![name, now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO signing_keys (org_id, jwk, created_at) VALUES (?1, ?2, ?3)",
                params![id, signing_key.text, now()],
            )?;
            tx.commit()?;
            Ok(Ok(id))
        })?
        .map_err(|e| conflict_or(e, || format!("organisation {name:?} exists")))?
    }

    fn orgs(&self) -> Result<Vec<OrgRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, name, require_source FROM orgs ORDER BY name")?;
            let orgs = stmt
                .query_map([], |r| {
                    Ok(OrgRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        require_source: r.get(2)?,
                        signing_keys: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut keys =
                c.prepare("SELECT jwk FROM signing_keys WHERE org_id = ?1 ORDER BY id")?;
            orgs.into_iter()
                .map(|mut org| {
                    org.signing_keys = texts(&mut keys, org.id)?;
                    Ok(org)
                })
                .collect()
        })
    }

    fn org_id(&self, name: &str) -> Result<i64> {
        self.org_id_of(name)
    }

    fn add_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<i64> {
        let org_id = self.org_id_of(org)?;
        self.try_with(|c| {
            let tx = c.transaction()?;
            if !is_store_kek(&tx, exchange_key.kek_id)? {
                return Ok(Err(other_kek(org)));
            }
            tx.execute(
                "INSERT INTO devices (org_id, name, state, created_at) VALUES (?1, ?2, 'active', ?3)",
                params![org_id, name, now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at) VALUES (?1, ?2, 1, ?3)",
                params![id, exchange_key.text, now()],
            )?;
            tx.commit()?;
            Ok(Ok(id))
        })?
        .map_err(|e| conflict_or(e, || format!("device {org}/{name} exists")))?
    }

    fn devices(&self) -> Result<Vec<DeviceRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{DEVICE_ROW} ORDER BY o.name, d.name"))?;
            let devices = stmt
                .query_map([], device_of)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            devices.into_iter().map(|d| with_keys(c, d)).collect()
        })
    }

    fn device_with_keys(&self, org: &str, name: &str) -> Result<Option<DeviceRow>> {
        self.with(|c| {
            let row = c
                .prepare_cached(&format!("{DEVICE_ROW} WHERE o.name = ?1 AND d.name = ?2"))?
                .query_row(params![org, name], device_of)
                .optional()?;
            row.map(|d| with_keys(c, d)).transpose()
        })
    }

    fn set_device_state(&self, org: &str, name: &str, state: DeviceState) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if device_is_retired(&tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            if state == DeviceState::Retired {
                retire(&tx, id)?;
            } else {
                // Enabling restarts the liveness clock.
                tx.execute(
                    "UPDATE devices SET state = ?1,
                         alive_since = CASE WHEN ?1 = 'active' THEN ?3 ELSE alive_since END
                     WHERE id = ?2",
                    params![state.as_str(), id, now()],
                )?;
            }
            tx.commit().map(Ok)
        })?
    }

    fn rotate_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if device_is_retired(&tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            if !is_store_kek(&tx, exchange_key.kek_id)? {
                return Ok(Err(other_kek(org)));
            }
            tx.execute(
                "UPDATE exchange_keys SET advertised = 0 WHERE device_id = ?1",
                params![id],
            )?;
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at) VALUES (?1, ?2, 1, ?3)",
                params![id, exchange_key.text, now()],
            )?;
            tx.commit().map(Ok)
        })?
    }

    fn report_mode(&self, org: &str, name: &str, mode: Mode, by: &str) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if mode == Mode::Sovereign {
                // Again on a retired device too: the machine may repeat its report.
                retire(&tx, id)?;
            } else if device_is_retired(&tx, id)? {
                return Ok(Err(StoreError::Conflict(format!(
                    "device {org}/{name} is retired and has no managed path: bind the volume \
                     to a new device"
                ))));
            }
            tx.execute(
                "UPDATE devices SET mode = ?1, mode_reported_at = ?2, mode_reported_by = ?3
                 WHERE id = ?4",
                params![mode.as_str(), now(), by, id],
            )?;
            tx.commit().map(Ok)
        })?
    }

    fn device_mode(&self, org: &str, name: &str) -> Result<Option<DeviceMode>> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            c.query_row(
                "SELECT mode, mode_reported_at, mode_reported_by FROM devices
                 WHERE id = ?1 AND mode IS NOT NULL",
                params![id],
                |r| {
                    Ok(DeviceMode {
                        mode: parse_column(r.get(0)?, Mode::parse)?,
                        reported_at: r.get(1)?,
                        reported_by: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    fn erase_destroyed(&self) -> Result<()> {
        self.locked(erasure::erase_pending)
    }

    fn watch(&self, _on_change: Box<dyn Fn() + Send + Sync>) -> Result<()> {
        // One process owns the file: every change is its own, and it reloads itself.
        Ok(())
    }
}
