//! Organisations' escrow public keys and devices' encrypted header backups.

use rusqlite::{OptionalExtension, Row, params};

use super::{Sqlite, erasure};
use crate::api::{EscrowBlob, EscrowInfo};
use crate::policy::DeviceState;
use crate::store::{Escrow, EscrowKeyRow, NewEscrowRow, Result, StoreError, now};

const INFO_COLUMNS: &str = "uuid, kid, size, uploaded_at, uploaded_by";

fn info(r: &Row<'_>) -> rusqlite::Result<EscrowInfo> {
    Ok(EscrowInfo {
        uuid: r.get(0)?,
        kid: r.get(1)?,
        size: r.get(2)?,
        uploaded_at: r.get(3)?,
        uploaded_by: r.get(4)?,
    })
}

impl Escrow for Sqlite {
    fn set_escrow_key(&self, org: &str, key: &EscrowKeyRow) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO escrow_keys (org_id, kid, jwk, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org_id) DO UPDATE
                 SET kid = excluded.kid, jwk = excluded.jwk, created_at = excluded.created_at",
                params![org_id, key.kid, key.jwk, now()],
            )
            .map(|_| ())
        })
    }

    fn escrow_key(&self, org: &str) -> Result<Option<EscrowKeyRow>> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            c.query_row(
                "SELECT kid, jwk FROM escrow_keys WHERE org_id = ?1",
                params![org_id],
                |r| {
                    Ok(EscrowKeyRow {
                        kid: r.get(0)?,
                        jwk: r.get(1)?,
                    })
                },
            )
            .optional()
        })
    }

    fn put_escrow(&self, org: &str, device: &str, upload: &NewEscrowRow<'_>) -> Result<EscrowInfo> {
        let (id, org_id) = self.device_row(org, device)?;
        let stored = EscrowInfo {
            uuid: upload.uuid.to_owned(),
            kid: upload.kid.to_owned(),
            size: upload.jwe.len() as i64,
            uploaded_at: now(),
            uploaded_by: upload.by.to_owned(),
        };
        self.with(|c| {
            let tx = c.transaction()?;
            let state: String = tx.query_row(
                "SELECT state FROM devices WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            if state == DeviceState::Retired.as_str() {
                return Ok(Err(StoreError::Conflict(format!(
                    "device {org}/{device} is retired: it keeps no header backup"
                ))));
            }
            // Checked again here: the key may have been replaced since the caller read it.
            let current: Option<String> = tx
                .query_row(
                    "SELECT kid FROM escrow_keys WHERE org_id = ?1",
                    params![org_id],
                    |r| r.get(0),
                )
                .optional()?;
            if current.as_deref() != Some(upload.kid) {
                return Ok(Err(StoreError::Conflict(format!(
                    "the escrow key of {org:?} changed: encrypt to the current one"
                ))));
            }
            let replaced = tx.execute(
                "DELETE FROM device_escrow WHERE device_id = ?1",
                params![id],
            )? > 0;
            tx.execute(
                "INSERT INTO device_escrow (device_id, uuid, kid, size, uploaded_at, uploaded_by, jwe)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    stored.uuid,
                    stored.kid,
                    stored.size,
                    stored.uploaded_at,
                    stored.uploaded_by,
                    upload.jwe
                ],
            )?;
            if replaced {
                erasure::mark_pending(&tx)?;
            }
            tx.commit().map(Ok)
        })??;
        Ok(stored)
    }

    fn escrow_info(&self, org: &str, device: &str) -> Result<Option<EscrowInfo>> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {INFO_COLUMNS} FROM device_escrow WHERE device_id = ?1"
            ))?
            .query_row(params![id], info)
            .optional()
        })
    }

    fn escrow(&self, org: &str, device: &str) -> Result<Option<EscrowBlob>> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.query_row(
                &format!("SELECT {INFO_COLUMNS}, jwe FROM device_escrow WHERE device_id = ?1"),
                params![id],
                |r| {
                    Ok(EscrowBlob {
                        info: info(r)?,
                        jwe: r.get(5)?,
                    })
                },
            )
            .optional()
        })
    }

    fn rm_escrow(&self, org: &str, device: &str) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if tx.execute(
                "DELETE FROM device_escrow WHERE device_id = ?1",
                params![id],
            )? == 0
            {
                return Ok(Err(StoreError::NotFound(format!(
                    "header backup of {org}/{device}"
                ))));
            }
            erasure::mark_pending(&tx)?;
            tx.commit().map(Ok)
        })?
    }
}
