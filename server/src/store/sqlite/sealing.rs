//! The id of the KEK the keys are sealed under, every key as stored, and resealing them
//! all in one transaction (see `store::sealing`).

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Sqlite, conflict_or, erasure, parse_column};
use crate::store::sealing::{KeyFamily, Resealed, SealedKeys, StoredKey, sealed_prefix};
use crate::store::{Result, StoreError};

fn recorded(tx: &Transaction<'_>) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT kek_id FROM key_encryption WHERE id = 1", [], |r| {
        r.get(0)
    })
    .optional()
}

/// Whether `kek_id` is the store's: a key sealed under it may be added.
pub(super) fn is_store_kek(tx: &Transaction<'_>, kek_id: &str) -> rusqlite::Result<bool> {
    Ok(recorded(tx)?.as_deref() == Some(kek_id))
}

impl SealedKeys for Sqlite {
    fn exclude_servers(&self) -> Result<()> {
        // The data directory's claim (`store::claim`), taken before the store is opened.
        Ok(())
    }

    fn kek_id(&self) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row("SELECT kek_id FROM key_encryption WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    fn stored_keys(&self) -> Result<Vec<StoredKey>> {
        self.with(|c| {
            c.prepare(
                "SELECT 'signing', k.id, o.name, NULL, k.jwk
                 FROM signing_keys k JOIN orgs o ON o.id = k.org_id
                 UNION ALL
                 SELECT 'exchange', k.id, o.name, d.name, k.jwk
                 FROM exchange_keys k JOIN devices d ON d.id = k.device_id
                 JOIN orgs o ON o.id = d.org_id
                 ORDER BY 1 DESC, 2",
            )?
            .query_map([], |r| {
                Ok(StoredKey {
                    family: parse_column(r.get(0)?, KeyFamily::parse)?,
                    row: r.get(1)?,
                    org: r.get(2)?,
                    device: r.get(3)?,
                    text: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn reseal(&self, from: Option<&str>, to: &str, keys: &[Resealed]) -> Result<()> {
        self.try_with(|c| {
            // Immediate: the guard's read and the writes see one state of the file.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if recorded(&tx)?.as_deref() != from {
                return Ok(Err(StoreError::Conflict(
                    "the store's key-encryption key changed meanwhile".into(),
                )));
            }
            for key in keys {
                let table = match key.family {
                    KeyFamily::Signing => "signing_keys",
                    KeyFamily::Exchange => "exchange_keys",
                };
                let changed = tx.execute(
                    &format!("UPDATE {table} SET jwk = ?1 WHERE id = ?2 AND jwk = ?3"),
                    params![key.new, key.row, key.old],
                )?;
                if changed != 1 {
                    return Ok(Err(StoreError::Conflict(format!(
                        "{} key {} changed meanwhile",
                        key.family.as_str(),
                        key.row
                    ))));
                }
            }
            tx.execute(
                "INSERT INTO key_encryption (id, kek_id) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET kek_id = excluded.kek_id",
                params![to],
            )?;
            let prefix = sealed_prefix(to);
            let left: i64 = tx.query_row(
                "SELECT (SELECT count(*) FROM signing_keys WHERE substr(jwk, 1, length(?1)) <> ?1)
                      + (SELECT count(*) FROM exchange_keys WHERE substr(jwk, 1, length(?1)) <> ?1)",
                params![prefix],
                |r| r.get(0),
            )?;
            if left > 0 {
                return Ok(Err(StoreError::Conflict(format!(
                    "{left} key(s) would be left sealed otherwise"
                ))));
            }
            if !keys.is_empty() {
                erasure::mark_pending(&tx)?;
            }
            tx.commit()?;
            Ok(Ok(()))
        })?
        .map_err(|e| conflict_or(e, || "the store's key-encryption key changed meanwhile".into()))?
    }
}
