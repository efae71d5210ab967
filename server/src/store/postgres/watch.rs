//! Changes made by other server processes: the schema's triggers `pg_notify` on the
//! `nbde_changes` channel whenever a table the key ring reads changes, and a thread with
//! its own connection LISTENs and calls back.
//!
//! Notifications sent while the listener was disconnected are lost, so it also calls back
//! on every (re)connect; it reconnects with a growing pause. A burst of notifications is
//! one call back.
//!
//! The tables the `/rec` policy snapshot reads notify on the same channel; for them only
//! `Freshness` counts a change (the key ring stays). Snapshots are cached only while the
//! listener listens, since no one else would say they went stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::describe;
use crate::store::{Result, StoreError};

/// How often a quiet listener wakes to see whether its store was closed, and pings the
/// database so a connection that died silently is noticed.
const WAKE: Duration = Duration::from_secs(1);
const PING_EVERY: u32 = 15;
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Tables whose changes make only the policy snapshots stale (migration 0008).
const POLICY_TABLES: [&str; 8] = [
    "device_sources",
    "netlist_entries",
    "device_netlists",
    "device_tags",
    "allow_once",
    "approval_groups",
    "group_tags",
    "unlock_requests",
];

/// A count of the changes that may make a cached policy snapshot stale, and whether the
/// listener is there to hear them.
#[derive(Clone, Default)]
pub(super) struct Freshness {
    changes: Arc<AtomicU64>,
    listening: Arc<AtomicBool>,
}

impl Freshness {
    /// The count a snapshot read from now on is good at, if snapshots may be cached at all.
    pub(super) fn current(&self) -> Option<u64> {
        // Listening is loaded first: a listener that stops bumps the count after saying so.
        let listening = self.listening.load(Ordering::Acquire);
        let changes = self.changes.load(Ordering::Acquire);
        listening.then_some(changes)
    }

    /// Every snapshot read so far is stale.
    pub(super) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
        self.changed();
    }
}

pub(super) fn start(
    connect: super::tls::Connect,
    closed: Arc<AtomicBool>,
    freshness: Freshness,
    on_change: Box<dyn Fn() + Send + Sync>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || {
            let mut pause = FIRST_PAUSE;
            while !closed.load(Ordering::Relaxed) {
                match connect.connect() {
                    Ok(mut client) => {
                        pause = FIRST_PAUSE;
                        let listened = listen(&mut client, &closed, &freshness, &*on_change);
                        freshness.set_listening(false);
                        if let Err(e) = listened {
                            tracing::warn!(error = %describe(&e), "change listener lost its connection");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "change listener cannot connect");
                    }
                }
                sleep_unless_closed(pause, &closed);
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        })
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(format!("change listener: {e}")))
}

fn sleep_unless_closed(pause: Duration, closed: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < pause && !closed.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// Listens until the connection fails or the store is closed.
fn listen(
    client: &mut Client,
    closed: &AtomicBool,
    freshness: &Freshness,
    on_change: &(dyn Fn() + Send + Sync),
) -> std::result::Result<(), postgres::Error> {
    // A rekey holds the lock exclusively: this server is seen serving from here on (and
    // waits while a rekey runs).
    client.execute(
        "SELECT pg_advisory_lock_shared($1)",
        &[&super::SERVING_LOCK],
    )?;
    client.batch_execute("LISTEN nbde_changes")?;
    // What changed while nobody listened is unknown: reload once now.
    freshness.set_listening(true);
    on_change();
    let mut quiet = 0;
    while !closed.load(Ordering::Relaxed) {
        let heard = {
            let mut notifications = client.notifications();
            let mut heard = Heard::default();
            let first = notifications.timeout_iter(WAKE).next()?;
            if let Some(first) = first {
                heard.add(first.payload());
                // Drain what else arrived, so a burst is one reload.
                while let Some(next) = notifications.iter().next()? {
                    heard.add(next.payload());
                }
            }
            heard
        };
        if heard.policy || heard.key_ring {
            quiet = 0;
            freshness.changed();
            if heard.key_ring {
                on_change();
            }
        } else {
            quiet += 1;
            if quiet >= PING_EVERY {
                quiet = 0;
                client.simple_query("")?;
            }
        }
        if client.is_closed() {
            return client.simple_query("").map(|_| ());
        }
    }
    Ok(())
}

/// What a burst of notifications changed.
#[derive(Default)]
struct Heard {
    policy: bool,
    key_ring: bool,
}

impl Heard {
    fn add(&mut self, table: &str) {
        if POLICY_TABLES.contains(&table) {
            self.policy = true;
        } else {
            self.key_ring = true;
        }
    }
}
