//! Changes made by other server processes: the schema's triggers `pg_notify` on the
//! `nbde_changes` channel whenever a table the key ring reads changes, and a thread with
//! its own connection LISTENs and calls back.
//!
//! Notifications sent while the listener was disconnected are lost, so it also calls back
//! on every (re)connect; it reconnects with a growing pause. A burst of notifications is
//! one call back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

pub(super) fn start(
    connect: super::tls::Connect,
    closed: Arc<AtomicBool>,
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
                        if let Err(e) = listen(&mut client, &closed, &*on_change) {
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
    on_change();
    let mut quiet = 0;
    while !closed.load(Ordering::Relaxed) {
        let got = {
            let mut notifications = client.notifications();
            let got = notifications.timeout_iter(WAKE).next()?.is_some();
            // Drain what else arrived, so a burst is one reload.
            while got && notifications.iter().next()?.is_some() {}
            got
        };
        if got {
            quiet = 0;
            on_change();
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
