//! The id of the KEK the keys are sealed under, every key as stored, and resealing them
//! all in one transaction (see `store::sealing`). Replicas: a key is added under a shared
//! lock of the `key_encryption` row and a reseal holds it exclusively, so a key is never
//! added under an id a concurrent reseal is replacing.

use postgres::Transaction;

use super::{Postgres, conflict_or, erasure, parse_column};
use crate::store::sealing::{KeyFamily, Resealed, SealedKeys, StoredKey, sealed_prefix};
use crate::store::{Result, StoreError};

/// Whether `kek_id` is the store's, holding it (shared) until the transaction ends.
pub(super) fn is_store_kek(
    tx: &mut Transaction<'_>,
    kek_id: &str,
) -> std::result::Result<bool, postgres::Error> {
    let recorded: Option<String> = tx
        .query_opt(
            "SELECT kek_id FROM key_encryption WHERE id = 1 FOR SHARE",
            &[],
        )?
        .map(|r| r.get(0));
    Ok(recorded.as_deref() == Some(kek_id))
}

fn changed_meanwhile() -> StoreError {
    StoreError::Conflict("the store's key-encryption key changed meanwhile".into())
}

impl SealedKeys for Postgres {
    fn exclude_servers(&self) -> Result<()> {
        let mut client = self.connect.connect().map_err(super::unavailable)?;
        let alone: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&super::SERVING_LOCK])
            .map_err(super::unavailable)?
            .get(0);
        if !alone {
            // A bigint advisory key is (classid, objid) = (high, low) 32 bits, objsubid 1.
            let servers: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
                       AND mode = 'ShareLock' AND objsubid = 1
                       AND classid = ($1::bigint >> 32)::oid
                       AND objid = ($1::bigint & 4294967295)::oid",
                    &[&super::SERVING_LOCK],
                )
                .map_err(super::unavailable)?
                .get(0);
            return Err(StoreError::Conflict(format!(
                "{servers} nbde-server process(es) serve this database: stop every replica \
                 first"
            )));
        }
        *self
            .excluding
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))? = Some(client);
        Ok(())
    }

    fn kek_id(&self) -> Result<Option<String>> {
        Ok(self
            .with(|c| c.query_opt("SELECT kek_id FROM key_encryption WHERE id = 1", &[]))?
            .map(|r| r.get(0)))
    }

    fn stored_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT 'signing'::text, k.id, o.name, NULL::text, k.jwk
                 FROM signing_keys k JOIN orgs o ON o.id = k.org_id
                 UNION ALL
                 SELECT 'exchange'::text, k.id, o.name, d.name, k.jwk
                 FROM exchange_keys k JOIN devices d ON d.id = k.device_id
                 JOIN orgs o ON o.id = d.org_id
                 ORDER BY 1 DESC, 2",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    family: parse_column(r.get(0), KeyFamily::parse)?,
                    row: r.get(1),
                    org: r.get(2),
                    device: r.get(3),
                    text: r.get(4),
                })
            })
            .collect()
    }

    fn reseal(&self, from: Option<&str>, to: &str, keys: &[Resealed]) -> Result<()> {
        self.try_with(|c| {
            let mut tx = c.transaction()?;
            let recorded: Option<String> = tx
                .query_opt(
                    "SELECT kek_id FROM key_encryption WHERE id = 1 FOR UPDATE",
                    &[],
                )?
                .map(|r| r.get(0));
            if recorded.as_deref() != from {
                return Ok(Err(changed_meanwhile()));
            }
            for key in keys {
                let table = match key.family {
                    KeyFamily::Signing => "signing_keys",
                    KeyFamily::Exchange => "exchange_keys",
                };
                let changed = tx.execute(
                    &format!("UPDATE {table} SET jwk = $1 WHERE id = $2 AND jwk = $3"),
                    &[&key.new, &key.row, &key.old],
                )?;
                if changed != 1 {
                    return Ok(Err(changed_meanwhile()));
                }
            }
            tx.execute(
                "INSERT INTO key_encryption (id, kek_id) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET kek_id = excluded.kek_id",
                &[&to],
            )?;
            let prefix = sealed_prefix(to);
            let left: i64 = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM signing_keys WHERE substr(jwk, 1, length($1)) <> $1)
                          + (SELECT count(*) FROM exchange_keys WHERE substr(jwk, 1, length($1)) <> $1)",
                    &[&prefix],
                )?
                .get(0);
            if left > 0 {
                return Ok(Err(StoreError::Conflict(format!(
                    "{left} key(s) would be left sealed otherwise"
                ))));
            }
            if !keys.is_empty() {
                erasure::mark_pending(&mut tx)?;
            }
            tx.commit()?;
            Ok(Ok(()))
        })?
        .map_err(|e| conflict_or(e, || "the store's key-encryption key changed meanwhile".into()))?
    }
}
