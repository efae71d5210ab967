//! The PostgreSQL backend: one database shared by several server processes. Calls take a
//! connection from a small pool; the history writer and the change listener each own one.
//! This module and its children own all SQL for PostgreSQL.
//!
//! Pooling is r2d2 with r2d2_postgres: small, synchronous like the `postgres` crate, and it
//! already does what recovery needs (a connection found closed on return is dropped, one
//! is tested before it is handed out, and a checkout waits at most `CHECKOUT_TIMEOUT`).
//! TLS when the URL asks for it (`sslmode=require`, verified; see `tls`).

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
mod tls;
mod watch;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::Client;
use postgres::error::SqlState;
use r2d2_postgres::PostgresConnectionManager;

use super::{Result, StoreError};

const MIGRATIONS: [&str; 8] = [
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_console.sql"),
    include_str!("../../../migrations/postgres/0003_webhooks.sql"),
    include_str!("../../../migrations/postgres/0004_key_encryption.sql"),
    include_str!("../../../migrations/postgres/0005_liveness.sql"),
    include_str!("../../../migrations/postgres/0006_liveness_watch.sql"),
    include_str!("../../../migrations/postgres/0007_signing_key_statistics.sql"),
    include_str!("../../../migrations/postgres/0008_policy_notify.sql"),
];

/// Held (per transaction) while migrating, so replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6e62_6465_6d69_6772; // "nbdemigr"
/// Held shared by every serving replica (on its change listener's connection) and
/// exclusively by a rekey, which so refuses to run beside a replica.
const SERVING_LOCK: i64 = 0x6e62_6465_7365_7276; // "nbdeserv"

const POOL_SIZE: u32 = 8;
/// A call waits at most this long for a connection; then it answers Unavailable.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that vanished without closing (no RST) is given up after this long.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

type Manager = PostgresConnectionManager<tokio_postgres_rustls::MakeRustlsConnect>;
type Pool = r2d2::Pool<Manager>;

/// `url` with its password (URL userinfo or `password=` key) replaced, for messages.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***{}", &rest[at..]);
            }
        }
        if let Some(q) = rest.find('?') {
            return format!(
                "{scheme}://{}?{}",
                &rest[..q],
                redact_pairs(&rest[q + 1..], '&')
            );
        }
        return url.to_owned();
    }
    redact_pairs(url, ' ')
}

fn redact_pairs(text: &str, separator: char) -> String {
    text.split(separator)
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.trim() == "password" => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// The connection settings every connection of this backend gets.
fn connect_settings(url: &str) -> Result<tls::Connect> {
    let mut connect = tls::connect(url)?;
    connect
        .config
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("nbde-server");
    Ok(connect)
}

fn migrate(client: &mut Client) -> std::result::Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id BIGINT PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         )",
    )?;
    let version: i64 = tx
        .query_opt("SELECT version FROM schema_version", &[])?
        .map_or(0, |r| r.get(0));
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&(i as i64 + 1)],
        )?;
    }
    tx.commit()
}

/// A connection error with its cause (TLS and I/O errors keep theirs in `source`).
fn describe_connect(e: &postgres::Error) -> String {
    use std::error::Error;
    match (e.as_db_error(), e.source()) {
        (Some(_), _) => describe(e),
        (None, Some(cause)) => format!("postgres: {e}: {cause}"),
        (None, None) => format!("postgres: {e}"),
    }
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// A UNIQUE violation is the caller's conflict (`message`); anything else is the store's
/// failure.
fn conflict_or(e: postgres::Error, message: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(message())
    } else {
        unavailable(e)
    }
}

pub struct Postgres {
    pool: Pool,
    connect: tls::Connect,
    /// Set on drop: the change listener's thread ends at its next wake-up.
    closed: Arc<AtomicBool>,
    /// The session holding `SERVING_LOCK` exclusively, once `exclude_servers` took it.
    excluding: std::sync::Mutex<Option<Client>>,
    /// Counts the changes the change listener hears, and every pooled call of this
    /// process but the snapshot's own read.
    freshness: watch::Freshness,
    /// Used only while the change listener listens: no one else tells of changes.
    snapshots: std::sync::Mutex<crate::store::snapshot_cache::SnapshotCache>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// One connection to `url`, made as the backend makes its own (timeouts, TLS).
pub fn connect_once(url: &str) -> Result<Client> {
    connect_settings(url)?.connect().map_err(unavailable)
}

impl Postgres {
    /// Connects to the database at `url`, migrated to the newest schema.
    pub fn open(url: &str) -> Result<Postgres> {
        let connect = connect_settings(url)?;
        // One connection first, for its own error: the pool only says it timed out, where
        // an operator needs "no pg_hba.conf entry", "password authentication failed" or
        // "invalid peer certificate".
        drop(connect.connect().map_err(|e| {
            StoreError::Unavailable(format!(
                "database {}: {}",
                redact(url),
                describe_connect(&e)
            ))
        })?);
        let manager = PostgresConnectionManager::new(connect.config.clone(), connect.tls.clone());
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            // Connections are made as calls need them, so opening does not fill the pool.
            .min_idle(Some(1))
            .connection_timeout(CHECKOUT_TIMEOUT)
            // A connection that died while idle (the database restarted) is replaced
            // before a call gets it.
            .test_on_check_out(true)
            .build(manager)
            .map_err(|e| StoreError::Unavailable(format!("database {}: {e}", redact(url))))?;
        let store = Postgres {
            pool,
            connect,
            closed: Arc::new(AtomicBool::new(false)),
            excluding: std::sync::Mutex::new(None),
            freshness: watch::Freshness::default(),
            snapshots: std::sync::Mutex::default(),
        };
        store.with(migrate)?;
        // An erasure a previous run could not confirm is finished before anything else.
        erasure::erase_pending(&store)?;
        Ok(store)
    }

    fn client(&self) -> Result<r2d2::PooledConnection<Manager>> {
        self.pool
            .get()
            .map_err(|e| StoreError::Unavailable(format!("postgres: no connection: {e}")))
    }

    /// Runs `f` on a pooled connection; the inner result is the database's own, for the
    /// callers that tell a conflict from a failure. Counted as a change, whatever came of
    /// it: this process sees its own changes in `/rec` at once, as with SQLite, without
    /// waiting for its notification to come back. (`reading` is not counted.)
    fn try_with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<std::result::Result<T, postgres::Error>> {
        let mut client = self.client()?;
        let result = f(&mut client);
        self.freshness.changed();
        Ok(result)
    }

    /// `with` for a read that changes nothing (the `/rec` snapshot, the liveness checker's
    /// pace): not counted as a change.
    fn reading<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        f(&mut *self.client()?).map_err(unavailable)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.try_with(f)?.map_err(unavailable)
    }

    fn org_id_of(&self, name: &str) -> Result<i64> {
        self.with(|c| c.query_opt("SELECT id FROM orgs WHERE name = $1", &[&name]))?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound(format!("organisation {name:?}")))
    }

    /// (device id, org id) of `org/name`.
    fn device_row(&self, org: &str, name: &str) -> Result<(i64, i64)> {
        self.with(|c| {
            c.query_opt(
                "SELECT d.id, o.id FROM devices d JOIN orgs o ON o.id = d.org_id
                 WHERE o.name = $1 AND d.name = $2",
                &[&org, &name],
            )
        })?
        .map(|r| (r.get(0), r.get(1)))
        .ok_or_else(|| StoreError::NotFound(format!("device {org}/{name}")))
    }
}

/// Reads a column of text rows.
fn texts(rows: Vec<postgres::Row>) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

/// Reads (key, value) rows.
fn pairs(rows: Vec<postgres::Row>) -> Vec<(String, String)> {
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// A column that holds one of an enum's names; anything else is a damaged row.
fn parse_column<T>(text: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(text).ok_or_else(|| StoreError::Unavailable(format!("unexpected value {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://nbde:s3cret@db.example:5432/nbde"),
            "postgres://nbde:***@db.example:5432/nbde"
        );
        assert_eq!(
            redact("postgres://db/nbde?user=x&password=s3cret"),
            "postgres://db/nbde?user=x&password=***"
        );
        assert_eq!(
            redact("host=db password=s3cret user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(redact("postgres://db/nbde"), "postgres://db/nbde");
    }
}
