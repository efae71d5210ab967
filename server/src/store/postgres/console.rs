//! The web console's sessions (by the hash of the cookie value) and accounts' passkeys.

use super::Postgres;
use crate::store::{Account, Console, ConsoleSession, Result, StoreError, StoredPasskey, now};

impl Console for Postgres {
    fn session_add(&self, hash: &[u8], account: Option<i64>, csrf: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO console_sessions (hash, account_id, csrf, created_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $4)",
                &[&hash, &account, &csrf, &now()],
            )
        })?;
        Ok(())
    }

    fn session(&self, hash: &[u8]) -> Result<Option<ConsoleSession>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT s.csrf, s.created_at, s.last_seen_at, s.ceremony, a.id, a.name, a.is_admin
                 FROM console_sessions s LEFT JOIN accounts a ON a.id = s.account_id
                 WHERE s.hash = $1",
                &[&hash],
            )
        })?;
        Ok(row.map(|r| ConsoleSession {
            account: r.get::<_, Option<i64>>(4).map(|id| Account {
                id,
                name: r.get(5),
                is_admin: r.get(6),
            }),
            csrf: r.get(0),
            created_at: r.get(1),
            last_seen_at: r.get(2),
            ceremony: r.get(3),
        }))
    }

    fn session_touch(&self, hash: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE console_sessions SET last_seen_at = $1 WHERE hash = $2",
                &[&now(), &hash],
            )
        })?;
        Ok(())
    }

    fn session_ceremony(&self, hash: &[u8], ceremony: Option<&str>) -> Result<Option<String>> {
        // One statement: the old value as the row was before this update.
        let row = self.with(|c| {
            c.query_opt(
                "UPDATE console_sessions s SET ceremony = $1
                 FROM (SELECT hash, ceremony FROM console_sessions WHERE hash = $2 FOR UPDATE) old
                 WHERE s.hash = old.hash
                 RETURNING old.ceremony",
                &[&ceremony, &hash],
            )
        })?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn session_rm(&self, hash: &[u8]) -> Result<()> {
        self.with(|c| c.execute("DELETE FROM console_sessions WHERE hash = $1", &[&hash]))?;
        Ok(())
    }

    fn sessions_expire(&self, idle_before: i64, created_before: i64) -> Result<usize> {
        let n = self.with(|c| {
            c.execute(
                "DELETE FROM console_sessions WHERE last_seen_at < $1 OR created_at < $2",
                &[&idle_before, &created_before],
            )
        })?;
        Ok(n as usize)
    }

    fn passkey_add(&self, account: i64, name: &str, credential: &str) -> Result<i64> {
        self.with(|c| {
            c.query_one(
                "INSERT INTO passkeys (account_id, name, credential, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&account, &name, &credential, &now()],
            )
            .map(|r| r.get(0))
        })
    }

    fn passkeys(&self, account: i64) -> Result<Vec<StoredPasskey>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT id, name, credential, created_at, last_used_at FROM passkeys
                 WHERE account_id = $1 ORDER BY id",
                &[&account],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| StoredPasskey {
                id: r.get(0),
                name: r.get(1),
                credential: r.get(2),
                created_at: r.get(3),
                last_used_at: r.get(4),
            })
            .collect())
    }

    fn passkey_used(&self, id: i64, credential: &str) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE passkeys SET credential = $1, last_used_at = $2 WHERE id = $3",
                &[&credential, &now(), &id],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("passkey {id}")))
        }
    }
}
