//! Accounts, their bearer tokens (stored as hashes) and their roles in organisations.

use rusqlite::{OptionalExtension, params};

use super::{Sqlite, conflict_or, parse_column};
use crate::api::Role;
use crate::store::{Account, Accounts, Result, StoreError, now};

/// An account from a row of (id, name, is_admin).
fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        is_admin: r.get(2)?,
    })
}

impl Accounts for Sqlite {
    fn account_count(&self) -> Result<i64> {
        self.with(|c| c.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0)))
    }

    fn add_account(&self, name: &str, is_admin: bool) -> Result<i64> {
        self.try_with(|c| {
            c.execute(
                "INSERT INTO accounts (name, is_admin, created_at) VALUES (?1, ?2, ?3)",
                params![name, is_admin, now()],
            )?;
            Ok(c.last_insert_rowid())
        })?
        .map_err(|e| conflict_or(e, || format!("account {name:?} exists")))
    }

    fn account_id(&self, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT id FROM accounts WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
        })?
        .ok_or_else(|| StoreError::NotFound(format!("account {name:?}")))
    }

    fn account_by_id(&self, id: i64) -> Result<Option<Account>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, name, is_admin FROM accounts WHERE id = ?1",
                params![id],
                account_row,
            )
            .optional()
        })
    }

    fn members(&self, org: &str) -> Result<Vec<(String, Role)>> {
        let org_id = self.org_id_of(org)?;
        let rows: Vec<(String, String)> = self.with(|c| {
            c.prepare(
                "SELECT a.name, m.role FROM memberships m JOIN accounts a ON a.id = m.account_id
                 WHERE m.org_id = ?1 ORDER BY a.name",
            )?
            .query_map(params![org_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, role)| Role::parse(&role).map(|r| (name, r)))
            .collect())
    }

    fn add_token(&self, account_id: i64, hash: &[u8]) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (account_id, hash, created_at) VALUES (?1, ?2, ?3)",
                params![account_id, hash, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    fn account_by_token(&self, hash: &[u8]) -> Result<Option<Account>> {
        self.with(|c| {
            c.query_row(
                "SELECT a.id, a.name, a.is_admin FROM tokens t JOIN accounts a ON a.id = t.account_id
                 WHERE t.hash = ?1 AND t.revoked_at IS NULL",
                params![hash],
                account_row,
            )
            .optional()
        })
    }

    fn revoke_token(&self, id: i64, account: Option<i64>) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE tokens SET revoked_at = ?1
                 WHERE id = ?2 AND revoked_at IS NULL AND (?3 IS NULL OR account_id = ?3)",
                params![now(), id, account],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("token {id}")))
        }
    }

    fn add_member(&self, account: i64, org: &str, role: Role) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO memberships (account_id, org_id, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account_id, org_id) DO UPDATE SET role = excluded.role",
                params![account, org_id, role.as_str()],
            )
            .map(|_| ())
        })
    }

    fn memberships(&self, account: i64) -> Result<Vec<(String, Role)>> {
        self.with(|c| {
            c.prepare(
                "SELECT o.name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id
                 WHERE m.account_id = ?1",
            )?
            .query_map(params![account], |r| {
                Ok((r.get(0)?, parse_column(r.get(1)?, Role::parse)?))
            })?
            .collect()
        })
    }
}
