//! The decision history: one row per `/rec` request, committed before the answer leaves.
//!
//! A single writer thread owns its own connection and commits whatever rows are waiting in
//! one transaction (group commit), so a burst of requests shares one fsync while every
//! request still waits for its own row to be durable.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Result, StoreError};

pub use crate::api::HistoryEntry as Row;

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

/// Commits a batch of rows in one transaction; owned by the writer thread.
pub trait HistorySink: Send {
    fn write(&mut self, batch: &[&Entry]) -> Result<()>;
}

type Job = (Entry, oneshot::Sender<bool>);

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub fn start(mut sink: Box<dyn HistorySink>) -> Result<Writer> {
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
                    let rows: Vec<&Entry> = batch.iter().map(|(e, _)| e).collect();
                    let committed = sink.write(&rows);
                    if let Err(e) = &committed {
                        tracing::error!(error = %e, rows = batch.len(), "history write failed");
                    }
                    for (_, reply) in batch {
                        let _ = reply.send(committed.is_ok());
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("history writer: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Queues `entry` for the next commit and returns at once, so the caller can compute
    /// its answer while the row is written; the answer waits on `Pending::committed`.
    pub fn submit(&self, entry: Entry) -> Pending {
        let (reply, committed) = oneshot::channel();
        // A writer that is gone drops the reply: `committed` then says false.
        let _ = self.jobs.send((entry, reply));
        Pending(committed)
    }

    /// Records `entry`; true once it is committed. False means the server must not take part.
    pub async fn record(&self, entry: Entry) -> bool {
        self.submit(entry).committed().await
    }
}

/// A row handed to the writer.
pub struct Pending(oneshot::Receiver<bool>);

impl Pending {
    /// True once the row is committed; false if it cannot be (the server must not take part).
    pub async fn committed(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}
