//! The web console's sessions (by the hash of the cookie value) and accounts' passkeys.

use rusqlite::{OptionalExtension, params};

use super::Sqlite;
use crate::store::{Account, Console, ConsoleSession, Result, StoreError, StoredPasskey, now};

impl Console for Sqlite {
    fn session_add(&self, hash: &[u8], account: Option<i64>, csrf: &str) -> Result<()> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO console_sessions (hash, account_id, csrf, created_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![hash, account, csrf, t],
            )
        })?;
        Ok(())
    }

    fn session(&self, hash: &[u8]) -> Result<Option<ConsoleSession>> {
        self.with(|c| {
            c.query_row(
                "SELECT s.csrf, s.created_at, s.last_seen_at, s.ceremony, a.id, a.name, a.is_admin
                 FROM console_sessions s LEFT JOIN accounts a ON a.id = s.account_id
                 WHERE s.hash = ?1",
                params![hash],
                |r| {
                    let account = match r.get::<_, Option<i64>>(4)? {
                        Some(id) => Some(Account {
                            id,
                            name: r.get(5)?,
                            is_admin: r.get(6)?,
                        }),
                        None => None,
                    };
                    Ok(ConsoleSession {
                        account,
                        csrf: r.get(0)?,
                        created_at: r.get(1)?,
                        last_seen_at: r.get(2)?,
                        ceremony: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    fn session_touch(&self, hash: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE console_sessions SET last_seen_at = ?1 WHERE hash = ?2",
                params![now(), hash],
            )
        })?;
        Ok(())
    }

    fn session_ceremony(&self, hash: &[u8], ceremony: Option<&str>) -> Result<Option<String>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let old: Option<Option<String>> = tx
                .query_row(
                    "SELECT ceremony FROM console_sessions WHERE hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "UPDATE console_sessions SET ceremony = ?1 WHERE hash = ?2",
                params![ceremony, hash],
            )?;
            tx.commit()?;
            Ok(old.flatten())
        })
    }

    fn session_rm(&self, hash: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM console_sessions WHERE hash = ?1",
                params![hash],
            )
        })?;
        Ok(())
    }

    fn sessions_expire(&self, idle_before: i64, created_before: i64) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM console_sessions WHERE last_seen_at < ?1 OR created_at < ?2",
                params![idle_before, created_before],
            )
        })
    }

    fn passkey_add(&self, account: i64, name: &str, credential: &str) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO passkeys (account_id, name, credential, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![account, name, credential, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    fn passkeys(&self, account: i64) -> Result<Vec<StoredPasskey>> {
        self.with(|c| {
            c.prepare(
                "SELECT id, name, credential, created_at, last_used_at FROM passkeys
                 WHERE account_id = ?1 ORDER BY id",
            )?
            .query_map(params![account], |r| {
                Ok(StoredPasskey {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    credential: r.get(2)?,
                    created_at: r.get(3)?,
                    last_used_at: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn passkey_used(&self, id: i64, credential: &str) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE passkeys SET credential = ?1, last_used_at = ?2 WHERE id = ?3",
                params![credential, now(), id],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("passkey {id}")))
        }
    }
}
