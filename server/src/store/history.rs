//! The decision history: one row per `/rec` request, committed before the answer leaves.
//!
//! A single writer thread owns its own connection and commits whatever rows are waiting in
//! one transaction (group commit), so a burst of requests shares one fsync while every
//! request still waits for its own row to be durable.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::params;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{ApiError, Result};

/// Rows committed together at most.
const MAX_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct Entry {
    pub org: Option<String>,
    pub device: Option<String>,
    pub peer: String,
    pub kid: Option<String>,
    pub decision: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub at: i64,
    pub org: Option<String>,
    pub device: Option<String>,
    pub peer: String,
    pub kid: Option<String>,
    pub decision: String,
    pub reason: String,
}

type Job = (Entry, oneshot::Sender<bool>);

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub fn start(db: &Path) -> Result<Writer> {
        let mut conn =
            super::connect(db).map_err(|e| ApiError::Internal(format!("history store: {e}")))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let committed = write_batch(&mut conn, &batch);
                    if let Err(e) = &committed {
                        tracing::error!(error = %e, rows = batch.len(), "history write failed");
                    }
                    for (_, reply) in batch {
                        let _ = reply.send(committed.is_ok());
                    }
                }
            })
            .map_err(|e| ApiError::Internal(format!("history writer: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Records `entry`; true once it is committed. False means the server must not take part.
    pub async fn record(&self, entry: Entry) -> bool {
        let (reply, committed) = oneshot::channel();
        if self.jobs.send((entry, reply)).is_err() {
            return false;
        }
        committed.await.unwrap_or(false)
    }
}

fn write_batch(conn: &mut rusqlite::Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO history (at, org, device, peer, kid, decision, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let at = super::now();
        for (e, _) in batch {
            insert.execute(params![
                at, e.org, e.device, e.peer, e.kid, e.decision, e.reason
            ])?;
        }
    }
    tx.commit()
}
