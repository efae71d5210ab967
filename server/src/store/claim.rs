//! One process at a time on a SQLite data directory. The key ring lives in the serving
//! process's memory and a SQLite store tells no other process of a change (`watch` is a
//! no-op there), so a second `serve` on the same directory would answer from devices and
//! keys it never reloads, and a `rekey` or `migrate --from` beside a running server would
//! work on a store that moves under it. Each holds an exclusive lock on
//! `DATA/nbde.lock` while it runs, which the kernel releases when the process ends however
//! it ends; the file holds the holder's pid, for the message of whoever is refused.
//! PostgreSQL is shared by design: its replicas hear each other's changes.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use super::Location;

/// Held while this process may read or change a SQLite data directory; released when
/// dropped. Holds nothing for PostgreSQL.
#[must_use = "the claim ends when it is dropped"]
pub struct DataDirClaim {
    _lock: Option<File>,
}

const LOCK_FILE: &str = "nbde.lock";

impl Location {
    /// Claims a SQLite data directory (made, private, if it is not there yet) for this
    /// process; refused while another process holds it.
    pub fn claim(&self) -> Result<DataDirClaim, String> {
        let Location::Sqlite(dir) = self else {
            return Ok(DataDirClaim { _lock: None });
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                // The pid is only for others' messages: a failure to write it loses nothing.
                let _ = file
                    .set_len(0)
                    .and_then(|()| writeln!(file, "{}", std::process::id()));
                Ok(DataDirClaim { _lock: Some(file) })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                Err(format!(
                    "{} is in use by another nbde-server process{holder}: stop it first \
                     (one process at a time on a SQLite data directory)",
                    dir.display()
                ))
            }
            Err(TryLockError::Error(e)) => Err(format!("locking {}: {e}", path.display())),
        }
    }
}
