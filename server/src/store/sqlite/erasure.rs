//! Destroyed means gone: after exchange keys or an escrow blob are deleted (or keys' texts
//! are replaced by sealing or rekeying them), no copy of them may stay in any file of the
//! data directory (database, WAL, free pages).
//!
//! `secure_delete` (set on every connection in `connect`) zeroes a deleted cell and a freed
//! page, overflow pages of a large blob included. It does not cover one case: when a b-tree
//! page is rebuilt (`rebuildPage` in SQLite's btree.c, the fallback of `editPage` while
//! rebalancing), the cells are packed again and the bytes of their old places stay in the
//! page's unused gap. A copy of a row that was live then survives its later deletion; with
//! churn of escrow rows of different sizes this shows up within a few thousand changes. So
//! an erasure runs VACUUM, which rewrites the database from its live rows only, and then a
//! truncating checkpoint, which copies that clean image into the database file (cutting
//! off the pages past its end) and empties the WAL that held every older page image.
//!
//! The -shm file is only the WAL's index (page numbers, frame numbers, salts) and there is
//! no rollback journal in WAL mode. Statement journals and VACUUM's temporary copy stay in
//! memory (`temp_store`), so no page image is written outside the data directory; the cost
//! is that VACUUM holds a copy of the live database in memory while it runs.
//!
//! Blocks a filesystem or a disk freed when the WAL was truncated are out of reach of any
//! file-level erasure; an encrypted data directory covers those.

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, Transaction};

use super::{BUSY_TIMEOUT, unavailable};
use crate::store::{Result, StoreError};

/// How long an erasure may wait for other connections (a reader holding an old snapshot
/// keeps the WAL from being emptied) before it reports that it could not confirm.
const BUDGET: Duration = Duration::from_secs(5);
/// What one attempt waits for a lock before it yields.
const ATTEMPT_WAIT: Duration = Duration::from_millis(100);
const PAUSE: Duration = Duration::from_millis(20);

/// Called in the transaction that deletes key material or a blob.
pub(super) fn mark_pending(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("INSERT OR IGNORE INTO erasure_pending (id) VALUES (1)", [])
        .map(|_| ())
}

fn is_pending(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM erasure_pending)", [], |r| {
        r.get(0)
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Erases if a deletion is pending; a no-op otherwise. Unavailable if the erasure could
/// not be confirmed within the budget (the mark stays, so the next call tries again).
pub(super) fn erase_pending(conn: &mut Connection) -> Result<()> {
    if !is_pending(conn).map_err(unavailable)? {
        return Ok(());
    }
    // Short waits per attempt, so the budget bounds the whole erasure.
    conn.busy_timeout(ATTEMPT_WAIT).map_err(unavailable)?;
    let erased = erase_within(conn, Instant::now() + BUDGET);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    erased?;
    // Cleared only now: a crash or a failure before this point erases again on the next
    // try. The pages this writes hold no deleted data: they come from the clean image.
    conn.execute("DELETE FROM erasure_pending", [])
        .map_err(unavailable)?;
    Ok(())
}

fn erase_within(conn: &Connection, deadline: Instant) -> Result<()> {
    let mut vacuumed = false;
    loop {
        if !vacuumed {
            match conn.execute_batch("VACUUM") {
                Ok(()) => vacuumed = true,
                Err(e) if is_busy(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        if vacuumed {
            match checkpoint(conn) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if is_busy(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        if Instant::now() >= deadline {
            let step = if vacuumed { "checkpoint" } else { "VACUUM" };
            return Err(StoreError::Unavailable(format!(
                "deleted, but its erasure from disk is not confirmed: the {step} found the \
                 database busy for {BUDGET:?}"
            )));
        }
        std::thread::sleep(PAUSE);
    }
}

/// A truncating checkpoint; true once it completed: every WAL frame is in the database
/// file and the WAL is empty.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, checkpointed): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && log == checkpointed)
}
