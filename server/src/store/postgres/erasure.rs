//! Destroyed means gone: after exchange keys or an escrow blob are deleted (or keys'
//! texts are replaced by sealing or rekeying them), no copy of them may stay in any file of
//! the cluster that PostgreSQL itself keeps.
//!
//! Where copies live, and what removes each:
//! - The table files: a DELETE only marks the row version dead, and plain VACUUM frees its
//!   space without overwriting it. `VACUUM (FULL)` rewrites the table (and its TOAST table
//!   and indexes) into new files holding live rows only; the old files are truncated to
//!   zero at commit and unlinked at the next checkpoint. VACUUM FULL keeps a dead row
//!   version that some open snapshot could still see, so the erasure first waits until no
//!   transaction older than the deleting one is left (`horizon_passed`).
//! - The WAL: the insert of every key and blob is in it, and so is any full-page image of
//!   a page that held one. `pg_switch_wal()` ends the segment that holds them and a
//!   `CHECKPOINT` then removes every segment before its redo point; with `wal_recycle =
//!   off` removal unlinks the file, where the default renames it for reuse with the old
//!   bytes inside. The erasure refuses to confirm with recycling on, and checks in
//!   `pg_wal` that no segment up to the switch is left (`wal_keep_size`, a replication
//!   slot or a pending archive keeps them).
//! - pg_statistic: ANALYZE copies sampled values there; the schema sets the statistics
//!   target of the key and blob columns to 0, so none are sampled. Signing keys got theirs
//!   only in migration 4; migration 7 drops what ANALYZE sampled of them before.
//!
//! Out of reach, and so not confirmed or not covered:
//! - Archived WAL (`archive_mode` on): the copies are wherever archive_command put them.
//!   The erasure answers Unavailable (the erasure stays pending) while archiving is on.
//! - Streaming replicas and base backups hold their own copies; they are not checked.
//! - Server logs, if statements are logged with their parameters (off by default).
//! - Blocks the filesystem or the disk freed when files were truncated or unlinked; an
//!   encrypted data directory covers those.
//!
//! It needs a role that may run CHECKPOINT (pg_checkpoint), call pg_switch_wal() and
//! pg_ls_waldir() (pg_monitor) and see other sessions' transactions (pg_read_all_stats).

use std::time::{Duration, Instant};

use postgres::{Client, Transaction};

use super::{Postgres, unavailable};
use crate::store::{Result, StoreError};

/// How long an erasure waits for older transactions to end before it reports that it
/// could not confirm.
const BUDGET: Duration = Duration::from_secs(5);
const PAUSE: Duration = Duration::from_millis(50);

/// Called in the transaction that deletes key material or a blob: records its id, so the
/// erasure knows which snapshots could still see the deleted rows.
pub(super) fn mark_pending(tx: &mut Transaction<'_>) -> std::result::Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO erasure_pending (id, through_xid)
         VALUES (1, pg_current_xact_id()::text::bigint)
         ON CONFLICT (id) DO UPDATE
         SET through_xid = greatest(erasure_pending.through_xid, excluded.through_xid)",
        &[],
    )
    .map(|_| ())
}

fn not_confirmed(why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "deleted, but its erasure from disk is not confirmed: {why}"
    ))
}

/// Erases if a deletion is pending; a no-op otherwise. Unavailable if the erasure could
/// not be confirmed (the mark stays, so the next call tries again).
pub(super) fn erase_pending(store: &Postgres) -> Result<()> {
    let through: Option<i64> = store
        .with(|c| c.query_opt("SELECT through_xid FROM erasure_pending", &[]))?
        .map(|r| r.get(0));
    let Some(through) = through else {
        return Ok(());
    };
    // Its own connection: the session settings below stay out of the pool.
    let mut c = store.connect.connect().map_err(unavailable)?;
    c.batch_execute("SET lock_timeout = '5s'")
        .map_err(unavailable)?;
    check_settings(&mut c)?;
    let deadline = Instant::now() + BUDGET;
    while !horizon_passed(&mut c, through).map_err(unavailable)? {
        if Instant::now() >= deadline {
            return Err(not_confirmed(format!(
                "a transaction older than the deletion was still open after {BUDGET:?}"
            )));
        }
        std::thread::sleep(PAUSE);
    }
    c.batch_execute("VACUUM (FULL) signing_keys, exchange_keys, device_escrow")
        .map_err(unavailable)?;
    // Every WAL record of the deleted rows is before this point.
    let last_dirty: String = c
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .map_err(unavailable)?
        .get(0);
    c.batch_execute("SELECT pg_switch_wal(); CHECKPOINT")
        .map_err(unavailable)?;
    // Segment names are timeline, log, segment: compare the position part.
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_ls_waldir()
             WHERE name ~ '^[0-9A-F]{24}$' AND substr(name, 9) <= substr($1, 9)",
            &[&last_dirty],
        )
        .map_err(unavailable)?
        .get(0);
    if left > 0 {
        return Err(not_confirmed(format!(
            "{left} WAL segment(s) up to {last_dirty} are still in pg_wal after a checkpoint \
             (wal_keep_size, a replication slot or archiving keeps them)"
        )));
    }
    // Cleared only now, and only up to what this erasure covered: a deletion committed
    // meanwhile raised `through_xid` and stays pending.
    c.execute(
        "DELETE FROM erasure_pending WHERE through_xid <= $1",
        &[&through],
    )
    .map_err(unavailable)?;
    Ok(())
}

/// Settings under which the steps above cannot confirm anything.
fn check_settings(c: &mut Client) -> Result<()> {
    let row = c
        .query_one(
            "SELECT current_setting('wal_recycle'), current_setting('archive_mode'),
                    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')",
            &[],
        )
        .map_err(unavailable)?;
    let (recycle, archive, sees_all): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    if recycle != "off" {
        return Err(not_confirmed(
            "wal_recycle is on, so old WAL segments are renamed with their contents: set \
             wal_recycle = off",
        ));
    }
    if archive != "off" {
        return Err(not_confirmed(
            "archive_mode is on: archived WAL segments keep copies no erasure reaches",
        ));
    }
    if !sees_all {
        return Err(not_confirmed(
            "the database role cannot see other sessions' transactions: grant it \
             pg_read_all_stats (and pg_checkpoint, pg_monitor)",
        ));
    }
    Ok(())
}

/// True once no session, prepared transaction or replication slot holds a transaction id
/// or snapshot at or before `through` (the newest deleting transaction): VACUUM FULL then
/// drops every deleted row version. Ages are compared against the next transaction id,
/// which only errs towards waiting.
fn horizon_passed(c: &mut Client, through: i64) -> std::result::Result<bool, postgres::Error> {
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM (
                 SELECT backend_xid AS x FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid()
                   AND (datname = current_database() OR datname IS NULL)
                 UNION ALL
                 SELECT backend_xmin FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid()
                   AND (datname = current_database() OR datname IS NULL)
                 UNION ALL
                 SELECT transaction FROM pg_prepared_xacts WHERE database = current_database()
                 UNION ALL
                 SELECT xmin FROM pg_replication_slots
                 UNION ALL
                 SELECT catalog_xmin FROM pg_replication_slots
             ) held
             WHERE x IS NOT NULL
               AND age(x)::bigint >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint - $1",
            &[&through],
        )?
        .get(0);
    Ok(held == 0)
}
