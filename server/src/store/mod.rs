//! The embedded store: one SQLite file in WAL mode. This module owns all SQL.

pub mod history;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{ApiError, Result};

const MIGRATIONS: [&str; 2] = [
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_policy.sql"),
];

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens a connection with the settings every connection needs.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed history row survives a power cut, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Active,
    Disabled,
    Retired,
}

impl DeviceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceState::Active => "active",
            DeviceState::Disabled => "disabled",
            DeviceState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> DeviceState {
        match s {
            "active" => DeviceState::Active,
            "disabled" => DeviceState::Disabled,
            _ => DeviceState::Retired,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub id: i64,
    pub org: String,
    pub name: String,
    pub state: DeviceState,
    /// (JWK text, advertised), oldest first.
    pub exchange_keys: Vec<(String, bool)>,
}

#[derive(Clone, Debug)]
pub struct OrgRow {
    pub id: i64,
    pub name: String,
    pub require_source: bool,
    /// Signing key JWK texts, oldest first.
    pub signing_keys: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub is_admin: bool,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn db_error(e: rusqlite::Error) -> ApiError {
    ApiError::Internal(format!("store: {e}"))
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", data_dir.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Private keys live here.
            let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = data_dir.join("nbde.sqlite");
        let mut conn = connect(&path).map_err(db_error)?;
        migrate(&mut conn).map_err(db_error)?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| ApiError::Internal("store lock poisoned".into()))?;
        f(&mut conn).map_err(db_error)
    }

    pub fn healthy(&self) -> bool {
        self.with(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .is_ok()
    }

    // ---- accounts and tokens ----

    pub fn account_count(&self) -> Result<i64> {
        self.with(|c| c.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0)))
    }

    pub fn add_account(&self, name: &str, is_admin: bool) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO accounts (name, is_admin, created_at) VALUES (?1, ?2, ?3)",
                params![name, is_admin, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .map_err(|e| conflict_or(e, format!("account {name:?} exists")))
    }

    pub fn add_token(&self, account_id: i64, hash: &[u8]) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (account_id, hash, created_at) VALUES (?1, ?2, ?3)",
                params![account_id, hash, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// The account a live token belongs to.
    pub fn account_by_token(&self, hash: &[u8]) -> Result<Option<Account>> {
        self.with(|c| {
            c.query_row(
                "SELECT a.id, a.name, a.is_admin FROM tokens t JOIN accounts a ON a.id = t.account_id
                 WHERE t.hash = ?1 AND t.revoked_at IS NULL",
                params![hash],
                |r| {
                    Ok(Account {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        is_admin: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    // ---- organisations ----

    pub fn add_org(&self, name: &str, signing_jwk: &str) -> Result<i64> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO orgs (name, created_at) VALUES (?1, ?2)",
                params![name, now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO signing_keys (org_id, jwk, created_at) VALUES (?1, ?2, ?3)",
                params![id, signing_jwk, now()],
            )?;
            tx.commit()?;
            Ok(id)
        })
        .map_err(|e| conflict_or(e, format!("organisation {name:?} exists")))
    }

    pub fn orgs(&self) -> Result<Vec<OrgRow>> {
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
                    org.signing_keys = keys
                        .query_map(params![org.id], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    Ok(org)
                })
                .collect()
        })
    }

    pub fn org_id(&self, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row("SELECT id FROM orgs WHERE name = ?1", params![name], |r| {
                r.get(0)
            })
            .optional()
        })?
        .ok_or_else(|| ApiError::NotFound(format!("organisation {name:?}")))
    }

    // ---- devices ----

    pub fn add_device(&self, org: &str, name: &str, exchange_jwk: &str) -> Result<i64> {
        let org_id = self.org_id(org)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO devices (org_id, name, state, created_at) VALUES (?1, ?2, 'active', ?3)",
                params![org_id, name, now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at) VALUES (?1, ?2, 1, ?3)",
                params![id, exchange_jwk, now()],
            )?;
            tx.commit()?;
            Ok(id)
        })
        .map_err(|e| conflict_or(e, format!("device {org}/{name} exists")))
    }

    pub fn devices(&self) -> Result<Vec<DeviceRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT d.id, o.name, d.name, d.state FROM devices d JOIN orgs o ON o.id = d.org_id
                 ORDER BY o.name, d.name",
            )?;
            let devices = stmt
                .query_map([], |r| {
                    Ok(DeviceRow {
                        id: r.get(0)?,
                        org: r.get(1)?,
                        name: r.get(2)?,
                        state: DeviceState::parse(&r.get::<_, String>(3)?),
                        exchange_keys: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut keys = c.prepare(
                "SELECT jwk, advertised FROM exchange_keys WHERE device_id = ?1 ORDER BY id",
            )?;
            devices
                .into_iter()
                .map(|mut d| {
                    d.exchange_keys = keys
                        .query_map(params![d.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok(d)
                })
                .collect()
        })
    }

    /// (device id, org id) of `org/name`.
    pub(crate) fn device_row(&self, org: &str, name: &str) -> Result<(i64, i64)> {
        self.with(|c| {
            c.query_row(
                "SELECT d.id, o.id FROM devices d JOIN orgs o ON o.id = d.org_id WHERE o.name = ?1 AND d.name = ?2",
                params![org, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?
        .ok_or_else(|| ApiError::NotFound(format!("device {org}/{name}")))
    }

    /// Changes a device's lifecycle state. Retiring deletes its exchange keys; a retired
    /// device stays retired.
    pub fn set_device_state(&self, org: &str, name: &str, state: DeviceState) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if device_is_retired(&tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            tx.execute(
                "UPDATE devices SET state = ?1 WHERE id = ?2",
                params![state.as_str(), id],
            )?;
            if state == DeviceState::Retired {
                // The managed unlock path is gone for good: no key, no way back.
                tx.execute(
                    "DELETE FROM exchange_keys WHERE device_id = ?1",
                    params![id],
                )?;
            }
            tx.commit().map(Ok)
        })?
    }

    /// Adds a new advertised exchange key; older ones stop being advertised but still recover.
    pub fn rotate_device(&self, org: &str, name: &str, exchange_jwk: &str) -> Result<()> {
        let (id, _) = self.device_row(org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if device_is_retired(&tx, id)? {
                return Ok(Err(retired(org, name)));
            }
            tx.execute("UPDATE exchange_keys SET advertised = 0 WHERE device_id = ?1", params![id])?;
            tx.execute(
                "INSERT INTO exchange_keys (device_id, jwk, advertised, created_at) VALUES (?1, ?2, 1, ?3)",
                params![id, exchange_jwk, now()],
            )?;
            tx.commit().map(Ok)
        })?
    }

    // ---- history and audit ----

    pub fn history(
        &self,
        org: Option<&str>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<history::Row>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at, org, device, peer, kid, decision, reason FROM history
                 WHERE (?1 IS NULL OR org = ?1) AND (?2 IS NULL OR device = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![org, device, limit], |r| {
                    Ok(history::Row {
                        at: r.get(0)?,
                        org: r.get(1)?,
                        device: r.get(2)?,
                        peer: r.get(3)?,
                        kid: r.get(4)?,
                        decision: r.get(5)?,
                        reason: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn audit(&self, account: &str, action: &str, target: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, account, action, target) VALUES (?1, ?2, ?3, ?4)",
                params![now(), account, action, target],
            )
            .map(|_| ())
        })
    }
}

fn device_is_retired(tx: &rusqlite::Transaction<'_>, id: i64) -> rusqlite::Result<bool> {
    let state: String = tx.query_row(
        "SELECT state FROM devices WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    Ok(state == "retired")
}

fn retired(org: &str, name: &str) -> ApiError {
    ApiError::Conflict(format!("device {org}/{name} is retired"))
}

pub(crate) fn conflict_or(e: ApiError, message: String) -> ApiError {
    match &e {
        ApiError::Internal(text) if text.contains("UNIQUE constraint failed") => {
            ApiError::Conflict(message)
        }
        _ => e,
    }
}
