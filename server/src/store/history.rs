//! The decision history: one row per `/rec` request, committed before the answer leaves.
//!
//! A single writer thread owns its own connection and commits whatever rows are waiting in
//! one transaction (group commit), so a burst of requests shares one fsync while every
//! request still waits for its own row to be durable. When more requests are being handled
//! than there are cores, the server is saturated and a commit waits a little for their rows
//! (at most `LINGER`): the wait costs no throughput then, and each commit (its fsync, the
//! wakeups around it) is shared by more rows. Below saturation a row is committed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Result, StoreError};

pub use crate::api::HistoryEntry as Row;

/// Rows committed together at most.
const MAX_BATCH: usize = 512;

/// Longest a commit waits for the rows of other requests being handled. About two P-521
/// multiplications: at 16 connections on 2 cores, measured against no wait, 13 % more
/// recoveries a second, p99 5.2 ms instead of 6.9, 3 % less server CPU per recovery.
const LINGER: Duration = Duration::from_micros(300);

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
    /// `/rec` requests being handled: the writer's measure of saturation.
    handling: Arc<AtomicUsize>,
}

/// A `/rec` request being handled, counted until it drops.
pub struct Handling(Arc<AtomicUsize>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Writer {
    pub fn start(mut sink: Box<dyn HistorySink>, batching: Batching) -> Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let handling = Arc::new(AtomicUsize::new(0));
        let handled = handling.clone();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                yield_to_requests();
                while let Ok(first) = queue.recv() {
                    let batch = batching.collect(&handled, &queue, first);
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
        Ok(Writer { jobs, handling })
    }

    /// Counts a `/rec` request as being handled until the guard drops.
    pub fn handling(&self) -> Handling {
        self.handling.fetch_add(1, Ordering::AcqRel);
        Handling(self.handling.clone())
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

/// Puts the calling thread (the writer) under `SCHED_BATCH`: its wakeups no longer preempt
/// a request being handled. A row handed over while every core is busy (the handler hands
/// its row over before its multiplication) then waits for a core to come free instead of
/// interrupting the multiplication, and the commit takes the rows that came meanwhile.
/// With a core idle, nothing changes. Measured against the default policy at 16
/// connections: about 10 % less server CPU per recovery, the writer's switches per
/// recovery 0.4 instead of 1.1, the workers preempted 0.1 times per recovery instead of
/// 0.65; at 1 and 2 connections no difference.
fn yield_to_requests() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialized sched_param; pid 0 is the calling thread.
    let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0;
    if refused {
        // A seccomp filter may forbid it (the packaged unit allows it): slower, not wrong.
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "history writer keeps the default scheduling policy"
        );
    }
}

/// When a commit waits for more rows.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// How many requests the server works on at once (its cores).
    pub workers: usize,
    /// How long a commit waits at most while the server is saturated.
    pub linger: Duration,
}

impl Batching {
    /// A worker per core, as tokio's runtime has by default.
    pub fn per_core() -> Batching {
        Batching {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            linger: LINGER,
        }
    }

    /// The rows of the next commit: `first`, whatever is queued, and while more requests
    /// are being `handling` than there are rows and workers, what comes within the linger.
    fn collect(&self, handling: &AtomicUsize, queue: &mpsc::Receiver<Job>, first: Job) -> Vec<Job> {
        let mut batch = vec![first];
        let deadline = Instant::now() + self.linger;
        while batch.len() < MAX_BATCH {
            if let Ok(job) = queue.try_recv() {
                batch.push(job);
                continue;
            }
            if handling.load(Ordering::Acquire) <= batch.len().max(self.workers) {
                break;
            }
            match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Remembers the size of each committed batch.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl HistorySink for Sizes {
        fn write(&mut self, batch: &[&Entry]) -> Result<()> {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn writer(workers: usize, linger: Duration) -> (Writer, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let sink = Box::new(Sizes(sizes.clone()));
        let writer = Writer::start(sink, Batching { workers, linger }).unwrap();
        (writer, sizes)
    }

    fn row(reason: &str) -> Entry {
        Entry {
            org: Some("o".into()),
            device: Some("d".into()),
            peer: "192.0.2.1".into(),
            kid: None,
            decision: "allowed",
            reason: reason.into(),
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The linger in these tests is 30 s: well under it means the commit did not wait.
    fn assert_did_not_wait_for_the_linger(started: Instant) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the linger"
        );
    }

    /// The scheduling policy of this process's thread named `name`, from its `stat`.
    fn policy_of_thread(name: &str) -> Option<i32> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Field 41 (policy); the fields after the command's closing parenthesis start at 3.
            let after_comm = stat.rsplit_once(')')?.1;
            after_comm.split_whitespace().nth(41 - 3)?.parse().ok()
        })
    }

    #[test]
    fn the_writer_does_not_preempt_request_handlers() {
        let (writer, _sizes) = writer(2, LINGER);
        // The thread has started once it has committed a row.
        assert!(block_on(writer.record(row("started"))));
        assert_eq!(policy_of_thread("history-writer"), Some(libc::SCHED_BATCH));
    }

    #[test]
    fn below_saturation_a_row_is_committed_at_once() {
        let (writer, sizes) = writer(2, Duration::from_secs(30));
        let _handling = [writer.handling(), writer.handling()];
        let started = Instant::now();
        assert!(block_on(writer.record(row("alone"))));
        assert_did_not_wait_for_the_linger(started);
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }

    #[test]
    fn saturated_a_commit_waits_for_the_rows_being_handled() {
        let (writer, sizes) = writer(1, Duration::from_secs(30));
        let _handling = [writer.handling(), writer.handling(), writer.handling()];
        let started = Instant::now();
        let pending: Vec<Pending> = ["a", "b", "c"]
            .into_iter()
            .map(|r| {
                std::thread::sleep(Duration::from_millis(20));
                writer.submit(row(r))
            })
            .collect();
        // The third row is the last of the three requests being handled: no need to wait on.
        for p in pending {
            assert!(block_on(p.committed()));
        }
        assert_did_not_wait_for_the_linger(started);
        assert_eq!(*sizes.lock().unwrap(), [3]);
    }

    #[test]
    fn a_commit_waits_no_longer_than_the_linger() {
        let linger = Duration::from_millis(200);
        let (writer, sizes) = writer(1, linger);
        let _handling = [writer.handling(), writer.handling(), writer.handling()];
        let started = Instant::now();
        assert!(block_on(writer.record(row("only"))));
        let waited = started.elapsed();
        assert!(
            waited >= linger && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }
}
