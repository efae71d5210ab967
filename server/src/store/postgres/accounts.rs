//! Accounts, their bearer tokens (stored as hashes) and their roles in organisations.

use super::{Postgres, conflict_or, parse_column};
use crate::api::Role;
use crate::store::{Account, Accounts, Result, StoreError, now};

impl Accounts for Postgres {
    fn account_count(&self) -> Result<i64> {
        self.with(|c| {
            c.query_one("SELECT count(*) FROM accounts", &[])
                .map(|r| r.get(0))
        })
    }

    fn add_account(&self, name: &str, is_admin: bool) -> Result<i64> {
        self.try_with(|c| {
            c.query_one(
                "INSERT INTO accounts (name, is_admin, created_at) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&name, &is_admin, &now()],
            )
            .map(|r| r.get(0))
        })?
        .map_err(|e| conflict_or(e, || format!("account {name:?} exists")))
    }

    fn account_id(&self, name: &str) -> Result<i64> {
        self.with(|c| c.query_opt("SELECT id FROM accounts WHERE name = $1", &[&name]))?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound(format!("account {name:?}")))
    }

    fn account_by_id(&self, id: i64) -> Result<Option<Account>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT id, name, is_admin FROM accounts WHERE id = $1",
                &[&id],
            )
        })?;
        Ok(row.map(|r| Account {
            id: r.get(0),
            name: r.get(1),
            is_admin: r.get(2),
        }))
    }

    fn members(&self, org: &str) -> Result<Vec<(String, Role)>> {
        let org_id = self.org_id_of(org)?;
        let rows = self.with(|c| {
            c.query(
                "SELECT a.name, m.role FROM memberships m JOIN accounts a ON a.id = m.account_id
                 WHERE m.org_id = $1 ORDER BY a.name",
                &[&org_id],
            )
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| Role::parse(r.get::<_, &str>(1)).map(|role| (r.get(0), role)))
            .collect())
    }

    fn add_token(&self, account_id: i64, hash: &[u8]) -> Result<i64> {
        self.with(|c| {
            c.query_one(
                "INSERT INTO tokens (account_id, hash, created_at) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&account_id, &hash, &now()],
            )
            .map(|r| r.get(0))
        })
    }

    fn account_by_token(&self, hash: &[u8]) -> Result<Option<Account>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT a.id, a.name, a.is_admin FROM tokens t JOIN accounts a ON a.id = t.account_id
                 WHERE t.hash = $1 AND t.revoked_at IS NULL",
                &[&hash],
            )
        })?;
        Ok(row.map(|r| Account {
            id: r.get(0),
            name: r.get(1),
            is_admin: r.get(2),
        }))
    }

    fn revoke_token(&self, id: i64, account: Option<i64>) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE tokens SET revoked_at = $1
                 WHERE id = $2 AND revoked_at IS NULL AND ($3::bigint IS NULL OR account_id = $3)",
                &[&now(), &id, &account],
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
                "INSERT INTO memberships (account_id, org_id, role) VALUES ($1, $2, $3)
                 ON CONFLICT (account_id, org_id) DO UPDATE SET role = excluded.role",
                &[&account, &org_id, &role.as_str()],
            )
            .map(|_| ())
        })
    }

    fn memberships(&self, account: i64) -> Result<Vec<(String, Role)>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT o.name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id
                 WHERE m.account_id = $1",
                &[&account],
            )
        })?;
        rows.iter()
            .map(|r| Ok((r.get(0), parse_column(r.get(1), Role::parse)?)))
            .collect()
    }
}
