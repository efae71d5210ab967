//! `nbde-server migrate --from DATA_DIR --to postgres://…`: moves a SQLite store into an
//! empty PostgreSQL database, every table and every row with its id (so history, audit and
//! request ids keep meaning the same), in one PostgreSQL transaction: a move that fails
//! half way leaves the target empty. Private keys move sealed, with the id of their KEK:
//! the same KEK opens the moved store, so bindings made before the move recover after it.
//! A SQLite store from before keys were sealed is sealed first, in place.

use std::path::Path;

use postgres::types::ToSql;
use rusqlite::types::Value as SqliteValue;

use super::postgres::redact;
use super::{Location, Store};
use crate::kek::file::{KekSource, open_store};

/// Every table, parents before children (foreign keys are checked row by row).
/// `erasure_pending` is not moved: opening the SQLite store finishes a pending erasure.
/// `liveness_watch` is not moved: the new store's servers start watching anew (silence is
/// counted from their first check, never earlier).
const TABLES: [&str; 24] = [
    "orgs",
    "signing_keys",
    "devices",
    "exchange_keys",
    "history",
    "accounts",
    "memberships",
    "tokens",
    "audit",
    "device_sources",
    "netlists",
    "netlist_entries",
    "device_netlists",
    "device_tags",
    "allow_once",
    "approval_groups",
    "group_tags",
    "group_approvers",
    "unlock_requests",
    "escrow_keys",
    "device_escrow",
    "passkeys",
    "webhooks",
    "key_encryption",
];

/// Tables of the SQLite schema that hold nothing to move (sessions: signing in again is
/// cheaper than carrying live cookies across a move).
const NOT_MOVED: [&str; 3] = ["erasure_pending", "console_sessions", "liveness_watch"];

/// Rows moved, by table.
pub type Moved = Vec<(&'static str, usize)>;

pub fn sqlite_to_postgres(data_dir: &Path, url: &str, kek: &KekSource) -> Result<Moved, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    // Opening brings each side to the newest schema (and finishes a pending SQLite
    // erasure, so nothing destroyed is copied); the KEK must open the SQLite store, whose
    // plain keys, if it has any, are sealed now.
    if !data_dir.join("nbde.sqlite").exists() {
        return Err(format!("{}: no nbde.sqlite here", data_dir.display()));
    }
    drop(
        open_store(&Location::Sqlite(data_dir.to_owned()), kek)
            .map_err(|e| fail(&data_dir.display().to_string(), &e))?,
    );
    drop(
        Store::open_location(&Location::Postgres(url.to_owned()))
            .map_err(|e| fail(&redact(url), &e))?,
    );

    let mut source = rusqlite::Connection::open_with_flags(
        data_dir.join("nbde.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| fail("sqlite", &e))?;
    check_tables_known(&source)?;
    let mut target = super::postgres::connect_once(url).map_err(|e| fail(&redact(url), &e))?;
    let mut tx = target.transaction().map_err(|e| fail("postgres", &e))?;
    for table in TABLES {
        let occupied: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| fail(table, &e))?;
        if occupied {
            return Err(format!(
                "{}: table {table} is not empty; migrate moves a store into an empty database",
                redact(url)
            ));
        }
    }
    // One read transaction: a consistent snapshot even if a server still writes.
    let read = source.transaction().map_err(|e| fail("sqlite", &e))?;
    let mut moved = Vec::new();
    for table in TABLES {
        let count = copy_table(&read, &mut tx, table)?;
        moved.push((table, count));
    }
    read.finish().map_err(|e| fail("sqlite", &e))?;
    tx.commit().map_err(|e| fail("postgres commit", &e))?;
    // The moved store opens with the same KEK (every key checked when a server loads it).
    drop(open_store(&Location::Postgres(url.to_owned()), kek).map_err(|e| fail(&redact(url), &e))?);
    Ok(moved)
}

fn check_tables_known(source: &rusqlite::Connection) -> Result<(), String> {
    let mut stmt = source
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    match names
        .iter()
        .find(|n| !TABLES.contains(&n.as_str()) && !NOT_MOVED.contains(&n.as_str()))
    {
        Some(unknown) => Err(format!(
            "the SQLite store has a table this migrate does not know ({unknown}): use the nbde-server that matches it"
        )),
        None => Ok(()),
    }
}

/// A PostgreSQL column's type, as far as the schema uses them.
#[derive(Clone, Copy)]
enum ColumnType {
    Integer,
    Boolean,
    Text,
    Bytes,
}

fn target_columns(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<Vec<(String, ColumnType)>, String> {
    let rows = tx
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1
             ORDER BY ordinal_position",
            &[&table],
        )
        .map_err(|e| format!("{table}: {e}"))?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let kind = match r.get::<_, String>(1).as_str() {
                "bigint" | "integer" | "smallint" => ColumnType::Integer,
                "boolean" => ColumnType::Boolean,
                "text" => ColumnType::Text,
                "bytea" => ColumnType::Bytes,
                other => return Err(format!("{table}.{name}: unexpected type {other}")),
            };
            Ok((name, kind))
        })
        .collect()
}

fn convert(
    table: &str,
    column: &str,
    kind: ColumnType,
    value: SqliteValue,
) -> Result<Box<dyn ToSql + Sync>, String> {
    let mismatch = |v: &SqliteValue| format!("{table}.{column}: unexpected value type {v:?}");
    Ok(match (kind, value) {
        (ColumnType::Integer, SqliteValue::Null) => Box::new(None::<i64>),
        (ColumnType::Integer, SqliteValue::Integer(i)) => Box::new(Some(i)),
        (ColumnType::Boolean, SqliteValue::Null) => Box::new(None::<bool>),
        (ColumnType::Boolean, SqliteValue::Integer(i)) => Box::new(Some(i != 0)),
        (ColumnType::Text, SqliteValue::Null) => Box::new(None::<String>),
        (ColumnType::Text, SqliteValue::Text(t)) => Box::new(Some(t)),
        (ColumnType::Bytes, SqliteValue::Null) => Box::new(None::<Vec<u8>>),
        (ColumnType::Bytes, SqliteValue::Blob(b)) => Box::new(Some(b)),
        (_, other) => return Err(mismatch(&other)),
    })
}

fn copy_table(
    source: &rusqlite::Transaction<'_>,
    tx: &mut postgres::Transaction<'_>,
    table: &'static str,
) -> Result<usize, String> {
    let columns = target_columns(tx, table)?;
    let mut source_columns: Vec<String> = source
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("{table}: {e}"))?;
    let mut target_names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    source_columns.sort();
    target_names.sort();
    if source_columns != target_names {
        return Err(format!(
            "{table}: columns differ (SQLite {source_columns:?}, PostgreSQL {target_names:?})"
        ));
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let list = names.join(", ");
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            placeholders.join(", ")
        ))
        .map_err(|e| format!("{table}: {e}"))?;
    let mut select = source
        .prepare(&format!("SELECT {list} FROM {table} ORDER BY rowid"))
        .map_err(|e| format!("{table}: {e}"))?;
    let mut rows = select.query([]).map_err(|e| format!("{table}: {e}"))?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(|e| format!("{table}: {e}"))? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, (name, kind)) in columns.iter().enumerate() {
            let value: SqliteValue = row.get(i).map_err(|e| format!("{table}.{name}: {e}"))?;
            values.push(convert(table, name, *kind, value)?);
        }
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        tx.execute(&insert, &params)
            .map_err(|e| format!("{table} row {}: {e}", count + 1))?;
        count += 1;
    }
    if names.contains(&"id") {
        // Identity columns were given explicit ids: the next generated one follows them.
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                               COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
            ),
            &[],
        )
        .map_err(|e| format!("{table}: {e}"))?;
    }
    Ok(count)
}
