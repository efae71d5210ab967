//! The SQLite backend: one file in WAL mode, one connection for the admin and `/rec` calls
//! and one for the history writer. This module and its children own all SQL.

mod accounts;
mod approvals;
mod audit;
mod console;
mod devices;
mod erasure;
mod escrow;
mod liveness;
mod rec;
mod sealing;
mod sources;
mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{Result, StoreError};

const MIGRATIONS: [&str; 8] = [
    include_str!("../../../migrations/0001_init.sql"),
    include_str!("../../../migrations/0002_policy.sql"),
    include_str!("../../../migrations/0003_escrow.sql"),
    include_str!("../../../migrations/0004_console.sql"),
    include_str!("../../../migrations/0005_webhooks.sql"),
    include_str!("../../../migrations/0006_key_encryption.sql"),
    include_str!("../../../migrations/0007_liveness.sql"),
    include_str!("../../../migrations/0008_liveness_watch.sql"),
];

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection with the settings every connection needs.
fn connect(path: &Path) -> Result<Connection> {
    let conn = configure(Connection::open(path).map_err(unavailable)?).map_err(unavailable)?;
    let secure: i64 = conn
        .pragma_query_value(None, "secure_delete", |r| r.get(0))
        .map_err(unavailable)?;
    if secure != 1 {
        return Err(StoreError::Unavailable(
            "this SQLite cannot turn secure_delete on".into(),
        ));
    }
    Ok(conn)
}

fn configure(conn: Connection) -> rusqlite::Result<Connection> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed history row survives a power cut, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Per connection, so on every one: freed cells and pages are zeroed, not left behind
    // (what it does not cover, `erasure` does).
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Statement journals and VACUUM's copy stay in memory: a temporary file would put
    // page images outside the data directory, where no erasure reaches them.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Plans fixed at prepare time: otherwise SQLite re-prepares a cached statement whenever
    // a new value is bound to a parameter the planner looked at (most of the /rec
    // snapshot's queries), and re-parsing cost more per recovery than the reads themselves.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
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

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// A UNIQUE or PRIMARY KEY violation is the caller's conflict (`message`); anything else is
/// the store's failure.
fn conflict_or(e: rusqlite::Error, message: impl FnOnce() -> String) -> StoreError {
    const UNIQUE: i32 = 2067; // SQLITE_CONSTRAINT_UNIQUE
    const PRIMARY_KEY: i32 = 1555; // SQLITE_CONSTRAINT_PRIMARYKEY
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && matches!(f.extended_code, UNIQUE | PRIMARY_KEY) =>
        {
            StoreError::Conflict(message())
        }
        _ => unavailable(e),
    }
}

pub struct Sqlite {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The `/rec` snapshot's own connection: in WAL mode a reader never waits behind a
    /// writer's commit, so a snapshot costs a few page-cache reads and can run on the
    /// request's own thread.
    reader: Mutex<Connection>,
    /// Counts the uses of `conn`, through which every change of a device's policy goes
    /// (the history writer's connection writes only history rows): a `/rec` snapshot read
    /// at one count is good for as long as the count stays.
    changes: AtomicU64,
    snapshots: Mutex<crate::store::snapshot_cache::SnapshotCache>,
}

impl Sqlite {
    /// Opens (creating if needed) `nbde.sqlite` in `data_dir`, migrated to the newest schema.
    pub fn open(data_dir: &Path) -> Result<Sqlite> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("creating {}: {e}", data_dir.display()))
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Private keys live here.
            let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = data_dir.join("nbde.sqlite");
        let mut conn = connect(&path)?;
        migrate(&mut conn).map_err(unavailable)?;
        // An erasure a previous run could not confirm is finished before anything else.
        erasure::erase_pending(&mut conn)?;
        let reader = connect(&path)?;
        Ok(Sqlite {
            path,
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            changes: AtomicU64::new(0),
            snapshots: Mutex::new(crate::store::snapshot_cache::SnapshotCache::default()),
        })
    }

    /// Runs `f` on the shared connection; the inner result is the database's own, for the
    /// callers that tell a conflict from a failure.
    fn try_with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<rusqlite::Result<T>> {
        self.locked(|c| Ok(f(c)))
    }

    /// Runs `f` on the shared connection.
    fn locked<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = lock(&self.conn)?;
        let result = f(&mut conn);
        // Counted once `f` has committed and before its caller can answer anyone: a
        // snapshot cached before the change is read again by the next `/rec`.
        self.changes.fetch_add(1, Ordering::Release);
        result
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.try_with(f)?.map_err(unavailable)
    }

    /// Runs `f` on the `/rec` snapshot's reader connection.
    fn reading<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        f(&mut *lock(&self.reader)?).map_err(unavailable)
    }

    fn org_id_of(&self, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row("SELECT id FROM orgs WHERE name = ?1", params![name], |r| {
                r.get(0)
            })
            .optional()
        })?
        .ok_or_else(|| StoreError::NotFound(format!("organisation {name:?}")))
    }

    /// (device id, org id) of `org/name`.
    fn device_row(&self, org: &str, name: &str) -> Result<(i64, i64)> {
        self.with(|c| {
            c.query_row(
                "SELECT d.id, o.id FROM devices d JOIN orgs o ON o.id = d.org_id
                 WHERE o.name = ?1 AND d.name = ?2",
                params![org, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?
        .ok_or_else(|| StoreError::NotFound(format!("device {org}/{name}")))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))
}

/// Reads a column of text rows.
fn texts(stmt: &mut rusqlite::Statement<'_>, id: i64) -> rusqlite::Result<Vec<String>> {
    stmt.query_map(params![id], |r| r.get(0))?.collect()
}

/// Reads (key, value) rows.
fn pairs(stmt: &mut rusqlite::Statement<'_>, id: i64) -> rusqlite::Result<Vec<(String, String)>> {
    stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// A column that holds one of an enum's names; anything else is a damaged row.
fn parse_column<T>(text: String, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unexpected value {text:?}").into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    #[test]
    fn cached_statements_are_not_re_prepared_for_new_values() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("t.sqlite")).unwrap();
        conn.execute_batch(
            "CREATE TABLE r (id INTEGER PRIMARY KEY, device_id INTEGER, state TEXT);
             CREATE INDEX r_device ON r(device_id, id);
             INSERT INTO r (device_id, state) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        )
        .unwrap();
        // The shape of the /rec snapshot's queries that SQLite re-planned on every bind.
        let sql = "SELECT state FROM r WHERE device_id = ?1 ORDER BY id DESC LIMIT 1";
        for device in [1, 2, 3, 1] {
            let state: String = conn
                .prepare_cached(sql)
                .unwrap()
                .query_row(params![device], |r| r.get(0))
                .unwrap();
            assert_eq!(state, ["a", "b", "c"][device as usize - 1]);
        }
        let stmt = conn.prepare_cached(sql).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
