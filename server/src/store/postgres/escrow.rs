//! Organisations' escrow public keys and devices' encrypted header backups.

use postgres::Row;

use super::{Postgres, erasure};
use crate::api::{EscrowBlob, EscrowInfo};
use crate::policy::DeviceState;
use crate::store::{Escrow, EscrowKeyRow, NewEscrowRow, Result, StoreError, now};

const INFO_COLUMNS: &str = "uuid, kid, size, uploaded_at, uploaded_by";

fn info(r: &Row) -> EscrowInfo {
    EscrowInfo {
        uuid: r.get(0),
        kid: r.get(1),
        size: r.get(2),
        uploaded_at: r.get(3),
        uploaded_by: r.get(4),
    }
}

impl Escrow for Postgres {
    fn set_escrow_key(&self, org: &str, key: &EscrowKeyRow) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO escrow_keys (org_id, kid, jwk, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (org_id) DO UPDATE
                 SET kid = excluded.kid, jwk = excluded.jwk, created_at = excluded.created_at",
                &[&org_id, &key.kid, &key.jwk, &now()],
            )
            .map(|_| ())
        })
    }

    fn escrow_key(&self, org: &str) -> Result<Option<EscrowKeyRow>> {
        let org_id = self.org_id_of(org)?;
        let row = self.with(|c| {
            c.query_opt(
                "SELECT kid, jwk FROM escrow_keys WHERE org_id = $1",
                &[&org_id],
            )
        })?;
        Ok(row.map(|r| EscrowKeyRow {
            kid: r.get(0),
            jwk: r.get(1),
        }))
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
            let mut tx = c.transaction()?;
            // The device's row lock queues concurrent uploads and retirements of it.
            let state: String = tx
                .query_one("SELECT state FROM devices WHERE id = $1 FOR UPDATE", &[&id])?
                .get(0);
            if state == DeviceState::Retired.as_str() {
                return Ok(Err(StoreError::Conflict(format!(
                    "device {org}/{device} is retired: it keeps no header backup"
                ))));
            }
            // Checked again here (and held): the key may have been replaced since the
            // caller read it.
            let current: Option<String> = tx
                .query_opt(
                    "SELECT kid FROM escrow_keys WHERE org_id = $1 FOR SHARE",
                    &[&org_id],
                )?
                .map(|r| r.get(0));
            if current.as_deref() != Some(upload.kid) {
                return Ok(Err(StoreError::Conflict(format!(
                    "the escrow key of {org:?} changed: encrypt to the current one"
                ))));
            }
            let replaced =
                tx.execute("DELETE FROM device_escrow WHERE device_id = $1", &[&id])? > 0;
            tx.execute(
                "INSERT INTO device_escrow (device_id, uuid, kid, size, uploaded_at, uploaded_by, jwe)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id,
                    &stored.uuid,
                    &stored.kid,
                    &stored.size,
                    &stored.uploaded_at,
                    &stored.uploaded_by,
                    &upload.jwe,
                ],
            )?;
            if replaced {
                erasure::mark_pending(&mut tx)?;
            }
            tx.commit().map(Ok)
        })??;
        Ok(stored)
    }

    fn escrow_info(&self, org: &str, device: &str) -> Result<Option<EscrowInfo>> {
        let (id, _) = self.device_row(org, device)?;
        let row = self.with(|c| {
            c.query_opt(
                &format!("SELECT {INFO_COLUMNS} FROM device_escrow WHERE device_id = $1"),
                &[&id],
            )
        })?;
        Ok(row.as_ref().map(info))
    }

    fn escrow(&self, org: &str, device: &str) -> Result<Option<EscrowBlob>> {
        let (id, _) = self.device_row(org, device)?;
        let row = self.with(|c| {
            c.query_opt(
                &format!("SELECT {INFO_COLUMNS}, jwe FROM device_escrow WHERE device_id = $1"),
                &[&id],
            )
        })?;
        Ok(row.map(|r| EscrowBlob {
            info: info(&r),
            jwe: r.get(5),
        }))
    }

    fn rm_escrow(&self, org: &str, device: &str) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            if tx.execute("DELETE FROM device_escrow WHERE device_id = $1", &[&id])? == 0 {
                return Ok(Err(StoreError::NotFound(format!(
                    "header backup of {org}/{device}"
                ))));
            }
            erasure::mark_pending(&mut tx)?;
            tx.commit().map(Ok)
        })?
    }
}
