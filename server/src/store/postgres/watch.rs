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
//! listener vouches for them: another thread sends a heartbeat through the pool on a
//! channel only this process listens to, and PostgreSQL delivers notifications in the
//! order their transactions committed, so hearing a heartbeat sent at `t` means every
//! change committed before `t` was heard too. A cached snapshot is served only until
//! `TRUSTED_FOR` after the send time of the latest heartbeat heard: a listener whose
//! connection died without a word (no RST, a hung proxy) stops the cache within that,
//! where waiting for TCP to notice would take seconds or forever. With no heartbeat for
//! `GIVE_UP_AFTER`, the listener drops its connection and makes a new one.
//!
//! While the listener does not listen, another thread reloads the key ring every
//! `DEAF_RELOAD_EVERY`: the listener may be stuck in a new connection's handshake for as
//! long as a proxy that takes connections and never answers holds it, and a device added,
//! rekeyed or retired elsewhere would not be known here until then. (Policy needs no such
//! help: snapshots are not cached while nothing vouches for them.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::{Pool, describe};
use crate::store::{Result, StoreError};

/// How often a quiet listener wakes to see whether its store was closed.
const WAKE: Duration = Duration::from_secs(1);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// How often the heartbeat is sent.
const BEAT_EVERY: Duration = Duration::from_millis(100);
/// How long after its send time a heartbeat heard vouches for cached snapshots: with the
/// notifications' own delay, a change is in force on every replica within a second.
const TRUSTED_FOR: Duration = Duration::from_millis(600);
/// No heartbeat heard for this long: the listener's connection is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3);
/// While the listener does not listen, the key ring is reloaded this long after it
/// stopped and after each reload ends.
const DEAF_RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How often the thread that reloads for a deaf listener looks.
const DEAF_CHECK_EVERY: Duration = Duration::from_millis(100);

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

/// Microseconds on this process's monotonic clock.
fn clock_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A count of the changes that may make a cached policy snapshot stale, and until when
/// the listener vouches that it would have heard them.
#[derive(Clone, Default)]
pub(super) struct Freshness {
    changes: Arc<AtomicU64>,
    /// `clock_us` of the latest heartbeat heard's send time plus `TRUSTED_FOR`; 0 while the
    /// listener is not listening.
    vouched_until: Arc<AtomicU64>,
}

impl Freshness {
    /// The count a snapshot read from now on is good at, if snapshots may be cached at all.
    pub(super) fn current(&self) -> Option<u64> {
        // Vouched-for time is loaded first: a listener that stops bumps the count after
        // withdrawing it.
        let vouched_until = self.vouched_until.load(Ordering::Acquire);
        let changes = self.changes.load(Ordering::Acquire);
        (clock_us() < vouched_until).then_some(changes)
    }

    /// Every snapshot read so far is stale.
    pub(super) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// A heartbeat sent at `sent` was heard: every change committed before it was too.
    fn vouch(&self, sent: u64) {
        let until = sent.saturating_add(TRUSTED_FOR.as_micros() as u64);
        self.vouched_until.fetch_max(until, Ordering::AcqRel);
    }

    /// The listener stopped listening: nothing it heard vouches any more.
    fn deaf(&self) {
        self.vouched_until.store(0, Ordering::Release);
        self.changed();
    }
}

pub(super) fn start(
    mut connect: super::tls::Connect,
    pool: Pool,
    closed: Arc<AtomicBool>,
    freshness: Freshness,
    on_change: Box<dyn Fn() + Send + Sync>,
) -> Result<()> {
    // Named apart from the pool's sessions in `pg_stat_activity`.
    connect
        .config
        .application_name("nbde-server change listener");
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|e| StoreError::Unavailable(format!("change listener: {e}")))?;
    let listener = Arc::new(Listener {
        // Only this process listens here: other replicas are not woken by its heartbeats.
        heartbeat: format!("nbde_heartbeat_{:016x}", u64::from_le_bytes(nonce)),
        closed,
        freshness,
        on_change,
        deaf_since: AtomicU64::new(clock_us().max(1)),
    });
    let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(run)
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("{name}: {e}")))
    };
    let beating = listener.clone();
    spawn(
        "store-heartbeat",
        Box::new(move || beat(&pool, &beating.heartbeat, &beating.closed)),
    )?;
    let reloading = listener.clone();
    spawn(
        "store-deaf-reload",
        Box::new(move || reloading.reload_while_deaf()),
    )?;
    spawn("store-watch", Box::new(move || listener.run(&connect)))
}

/// The change listener's state, shared with the threads that beat and reload for it.
struct Listener {
    /// The channel of this process's heartbeat.
    heartbeat: String,
    closed: Arc<AtomicBool>,
    freshness: Freshness,
    on_change: Box<dyn Fn() + Send + Sync>,
    /// `clock_us` when the listener last stopped listening; 0 while it listens.
    deaf_since: AtomicU64,
}

impl Listener {
    /// Connects and listens, again and again with a growing pause, until the store closes.
    fn run(&self, connect: &super::tls::Connect) {
        let mut pause = FIRST_PAUSE;
        let mut given_up: Option<Session> = None;
        while !self.closed.load(Ordering::Relaxed) {
            match connect.connect() {
                Ok(mut client) => {
                    pause = FIRST_PAUSE;
                    if let Some(session) = given_up.take() {
                        session.end(&mut client);
                    }
                    let session = Session::of(&mut client);
                    let listened = match &session {
                        Ok(_) => self.listen(&mut client),
                        Err(e) => Err(e.clone()),
                    };
                    self.deaf_since.store(clock_us().max(1), Ordering::Release);
                    self.freshness.deaf();
                    if let Err(error) = listened {
                        tracing::warn!(%error, "change listener lost its connection");
                        given_up = session.ok();
                        // Dropping a client waits for its connection to close, which a
                        // silent one may never do: another thread waits instead.
                        let _ = std::thread::Builder::new()
                            .name("store-watch-drop".into())
                            .spawn(move || drop(client));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "change listener cannot connect");
                }
            }
            sleep_unless_closed(pause, &self.closed);
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Reloads the key ring while the listener is deaf: `DEAF_RELOAD_EVERY` after it
    /// stopped listening and after each reload ends, until it listens again.
    fn reload_while_deaf(&self) {
        let every = DEAF_RELOAD_EVERY.as_micros() as u64;
        let mut reloaded = 0;
        let mut told_of = 0;
        while !self.closed.load(Ordering::Relaxed) {
            sleep_unless_closed(DEAF_CHECK_EVERY, &self.closed);
            let since = self.deaf_since.load(Ordering::Acquire);
            if since == 0 || clock_us().saturating_sub(since.max(reloaded)) < every {
                continue;
            }
            if told_of != since {
                told_of = since;
                tracing::warn!(
                    every = ?DEAF_RELOAD_EVERY,
                    "change listener not listening: the key ring is reloaded without it"
                );
            }
            (self.on_change)();
            reloaded = clock_us();
        }
    }

    /// Listens until the connection fails, no heartbeat comes, or the store is closed.
    fn listen(&self, client: &mut Client) -> std::result::Result<(), String> {
        let Listener {
            heartbeat,
            closed,
            freshness,
            on_change,
            deaf_since,
        } = self;
        let failed = |e: postgres::Error| describe(&e);
        // A rekey holds the lock exclusively: this server is seen serving from here on (and
        // waits while a rekey runs).
        client
            .execute(
                "SELECT pg_advisory_lock_shared($1)",
                &[&super::SERVING_LOCK],
            )
            .map_err(failed)?;
        client
            .batch_execute(&format!("LISTEN nbde_changes; LISTEN {heartbeat}"))
            .map_err(failed)?;
        // A heartbeat sent before this session listened vouches for nothing it missed.
        let listening_since = clock_us();
        // What changed while nobody listened is unknown: reload once now.
        freshness.changed();
        on_change();
        deaf_since.store(0, Ordering::Release);
        let mut last_beat = Instant::now();
        while !closed.load(Ordering::Relaxed) {
            let heard = {
                let mut notifications = client.notifications();
                let mut heard = Heard::default();
                let first = notifications.timeout_iter(WAKE).next().map_err(failed)?;
                if let Some(first) = first {
                    heard.add(heartbeat, &first);
                    // Drain what else arrived, so a burst is one reload.
                    while let Some(next) = notifications.iter().next().map_err(failed)? {
                        heard.add(heartbeat, &next);
                    }
                }
                heard
            };
            // Counted before vouching: they came before the heartbeat.
            if heard.policy || heard.key_ring {
                freshness.changed();
            }
            if let Some(sent) = heard.beat_sent.filter(|&sent| sent >= listening_since) {
                freshness.vouch(sent);
                last_beat = Instant::now();
            }
            if heard.key_ring {
                let reloading = Instant::now();
                on_change();
                // Not silence: the heartbeats wait unread while the key ring reloads, which
                // can take longer than `GIVE_UP_AFTER` for many devices.
                last_beat += reloading.elapsed();
            }
            if last_beat.elapsed() > GIVE_UP_AFTER {
                return Err(format!("no heartbeat heard for {GIVE_UP_AFTER:?}"));
            }
            if client.is_closed() {
                return client.simple_query("").map(|_| ()).map_err(failed);
            }
        }
        Ok(())
    }
}

fn sleep_unless_closed(pause: Duration, closed: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < pause && !closed.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// Sends a heartbeat on `channel` every `BEAT_EVERY` until the store is closed; its payload
/// is its send time. A failed one is simply missing: the listener notices.
fn beat(pool: &Pool, channel: &str, closed: &AtomicBool) {
    while !closed.load(Ordering::Relaxed) {
        let sent = clock_us().to_string();
        if let Ok(mut client) = pool.get() {
            let _ = client.execute("SELECT pg_notify($1, $2)", &[&channel, &sent]);
        }
        sleep_unless_closed(BEAT_EVERY, closed);
    }
}

/// A listener's session on the database, named by its backend's pid and start time (a
/// pid alone may have been reused by then).
struct Session {
    pid: i32,
    started_us: i64,
}

impl Session {
    /// The session `client` is connected to.
    fn of(client: &mut Client) -> std::result::Result<Session, String> {
        let this = client
            .query_one(
                "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| describe(&e))?;
        Ok(Session {
            pid: this.get(0),
            started_us: this.get(1),
        })
    }

    /// Ends this session if it is still there: given up because it went silent, it may
    /// live on in the database, holding the serving lock and its place in the notification
    /// queue, until the database's own TCP notices.
    fn end(&self, client: &mut Client) {
        let ended = client.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::bigint = $2",
            &[&self.pid, &self.started_us],
        );
        match ended {
            Ok(rows) if !rows.is_empty() => {
                tracing::info!(
                    pid = self.pid,
                    "ended the change listener's given-up session"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %describe(&e), "cannot end the change listener's given-up session");
            }
        }
    }
}

/// What a burst of notifications changed, and the latest own heartbeat's send time.
#[derive(Default)]
struct Heard {
    policy: bool,
    key_ring: bool,
    beat_sent: Option<u64>,
}

impl Heard {
    fn add(&mut self, heartbeat: &str, notification: &postgres::Notification) {
        // A heartbeat's payload is its send time; a change's, the table changed.
        let payload = notification.payload();
        if notification.channel() == heartbeat {
            let sent = payload.parse().ok();
            self.beat_sent = self.beat_sent.max(sent);
        } else if POLICY_TABLES.contains(&payload) {
            self.policy = true;
        } else {
            self.key_ring = true;
        }
    }
}
