//! The store's interface, by table family: one trait per family, and `Backend` for a
//! store that has them all. `Store` holds a backend behind that interface, so the HTTP
//! layer and the tests never name one. SQLite (`sqlite`, one file, one server process) is
//! the default; PostgreSQL (`postgres`) lets several server processes share one database.
//!
//! Every call blocks (a backend may wait on fsync or the network): async code calls it
//! through `spawn_blocking`.
//!
//! Destroyed means gone: a change that deletes exchange keys or an escrow blob leaves an
//! erasure pending, and `erase_destroyed` removes every copy the backend left on disk.

pub mod claim;
pub mod history;
pub mod migrate;
pub mod postgres;
pub mod sealing;
pub mod snapshot_cache;
pub mod sqlite;

use std::path::{Path, PathBuf};

use crate::api::{
    AuditEntry, DeviceMode, EscrowBlob, EscrowInfo, Group, HistoryEntry, Mode, Request, Role,
};
use crate::net::Cidr;
use crate::policy::{DeviceState, Effect, Snapshot, Verdict};
use history::{Entry, HistorySink};
use sealing::{SealedJwk, SealedKeys};

/// What a store call can fail with; the HTTP layer maps each to a status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The name is taken, or the row's state does not allow the change.
    Conflict(String),
    NotFound(String),
    /// The backend failed (I/O, locking, unreadable rows); the text is for the log only.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(m) => write!(f, "conflict: {m}"),
            StoreError::NotFound(m) => write!(f, "not found: {m}"),
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct OrgRow {
    pub id: i64,
    pub name: String,
    pub require_source: bool,
    /// Signing keys as stored (sealed, see `sealing`), oldest first.
    pub signing_keys: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub id: i64,
    pub org: String,
    pub name: String,
    pub state: DeviceState,
    /// (key as stored, sealed; advertised), oldest first.
    pub exchange_keys: Vec<(String, bool)>,
}

/// An organisation's escrow public key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscrowKeyRow {
    /// The RFC 7638 S256 thumbprint.
    pub kid: String,
    /// The public JWK text.
    pub jwk: String,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub is_admin: bool,
}

/// A header backup to store: checked by the caller against the org's escrow key `kid`.
#[derive(Clone, Copy, Debug)]
pub struct NewEscrowRow<'a> {
    pub uuid: &'a str,
    pub kid: &'a str,
    pub jwe: &'a str,
    /// The uploading account.
    pub by: &'a str,
}

/// Who may decide a request: its org, the approvers of the groups its device matches, and
/// the longest window among those groups.
#[derive(Clone, Debug)]
pub struct RequestScope {
    pub org: String,
    pub approvers: Vec<i64>,
    pub window: i64,
}

/// Organisations, their signing keys, devices and their exchange keys. Keys come and go
/// sealed: `Store` seals them (see `sealing`), and a backend adds one only while the
/// store's KEK id is the one it is sealed under (Conflict otherwise).
pub trait Devices {
    fn add_org(&self, name: &str, signing_key: SealedJwk<'_>) -> Result<i64>;
    /// Every org with its signing keys, by name.
    fn orgs(&self) -> Result<Vec<OrgRow>>;
    fn org_id(&self, name: &str) -> Result<i64>;
    fn add_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<i64>;
    /// Every device with its exchange keys, by org and name.
    fn devices(&self) -> Result<Vec<DeviceRow>>;
    /// One device with its exchange keys; None if there is none. A backend overrides this
    /// reading of every device, so an admin change to one device reads only that one.
    fn device_with_keys(&self, org: &str, name: &str) -> Result<Option<DeviceRow>> {
        Ok(self
            .devices()?
            .into_iter()
            .find(|d| d.org == org && d.name == name))
    }
    /// Retiring deletes the exchange keys and the escrow blob (an erasure is then pending);
    /// a retired device stays retired (Conflict).
    fn set_device_state(&self, org: &str, name: &str, state: DeviceState) -> Result<()>;
    /// A new advertised exchange key; older ones stop being advertised but still recover.
    fn rotate_device(&self, org: &str, name: &str, exchange_key: SealedJwk<'_>) -> Result<()>;
    /// Records the mode the device's machine reported, by account `by`. `Sovereign`
    /// retires the device in the same transaction, as retiring does, and may be reported
    /// again; a managed mode of a retired device is a Conflict.
    fn report_mode(&self, org: &str, name: &str, mode: Mode, by: &str) -> Result<()>;
    /// The last mode report, None if there was none.
    fn device_mode(&self, org: &str, name: &str) -> Result<Option<DeviceMode>>;
    /// Erases from disk every copy of what was deleted since the last erasure (exchange
    /// keys, escrow blobs). Unavailable if that cannot be confirmed: the deletion stays
    /// committed and the erasure pending, for the next call or the next open.
    fn erase_destroyed(&self) -> Result<()>;
    /// Calls `on_change` whenever another process may have changed what the key ring
    /// reads (orgs, signing keys, devices, exchange keys), and once on every (re)connect,
    /// as changes made while disconnected are not told. A no-op for a backend only one
    /// process uses.
    fn watch(&self, on_change: Box<dyn Fn() + Send + Sync>) -> Result<()>;
}

/// Organisations' escrow public keys and devices' encrypted header backups.
pub trait Escrow {
    /// Sets the org's escrow public key, replacing the one it had.
    fn set_escrow_key(&self, org: &str, key: &EscrowKeyRow) -> Result<()>;
    fn escrow_key(&self, org: &str) -> Result<Option<EscrowKeyRow>>;
    /// Stores the device's backup, replacing the one it had (an erasure is then pending).
    /// Conflict if the device is retired or `kid` is no longer the org's escrow key.
    fn put_escrow(&self, org: &str, device: &str, upload: &NewEscrowRow<'_>) -> Result<EscrowInfo>;
    fn escrow_info(&self, org: &str, device: &str) -> Result<Option<EscrowInfo>>;
    fn escrow(&self, org: &str, device: &str) -> Result<Option<EscrowBlob>>;
    /// Deletes the device's backup (an erasure is then pending); NotFound if it has none.
    fn rm_escrow(&self, org: &str, device: &str) -> Result<()>;
}

/// Source allowlists, the org's require-source setting, network-access lists and tags.
pub trait Sources {
    fn set_require_source(&self, org: &str, required: bool) -> Result<()>;
    fn change_sources(&self, org: &str, device: &str, cidrs: &[Cidr], add: bool) -> Result<()>;
    /// The device's own entries and the names of its attached lists, sorted.
    fn sources(&self, org: &str, device: &str) -> Result<(Vec<String>, Vec<String>)>;
    /// Sets (or replaces the value of) each tag.
    fn set_tags(&self, org: &str, device: &str, tags: &[(String, String)]) -> Result<()>;
    fn tags(&self, org: &str, device: &str) -> Result<Vec<(String, String)>>;
    /// Creates the list if needed and adds the entries.
    fn netlist_add(&self, org: &str, name: &str, cidrs: &[Cidr]) -> Result<()>;
    /// Removes the list and detaches it everywhere.
    fn netlist_rm(&self, org: &str, name: &str) -> Result<()>;
    fn netlists(&self, org: &str) -> Result<Vec<(String, Vec<String>)>>;
    fn netlist_attach(&self, org: &str, device: &str, name: &str, attach: bool) -> Result<()>;
}

/// Allow-once allowances, approval groups and manual unlock requests.
pub trait Approvals {
    fn allow_once(&self, org: &str, device: &str, by: &str) -> Result<i64>;
    fn group_add(
        &self,
        org: &str,
        name: &str,
        tags: &[(String, String)],
        approvers: &[String],
        window: i64,
    ) -> Result<()>;
    fn group_rm(&self, org: &str, name: &str) -> Result<()>;
    fn groups(&self, org: &str) -> Result<Vec<Group>>;
    /// Requests of `orgs` (all if None), oldest first.
    fn requests(&self, orgs: Option<&[String]>, only_pending: bool) -> Result<Vec<Request>>;
    fn request_scope(&self, id: i64) -> Result<RequestScope>;
    /// Conflict if the request's state does not allow `verdict`.
    fn decide_request(&self, id: i64, verdict: Verdict, by: &str, window: i64) -> Result<()>;
}

/// Accounts, their bearer tokens (hashed) and their roles in orgs.
pub trait Accounts {
    fn account_count(&self) -> Result<i64>;
    fn add_account(&self, name: &str, is_admin: bool) -> Result<i64>;
    fn account_id(&self, name: &str) -> Result<i64>;
    fn account_by_id(&self, id: i64) -> Result<Option<Account>>;
    /// The accounts with a role in `org`, by name.
    fn members(&self, org: &str) -> Result<Vec<(String, Role)>>;
    fn add_token(&self, account_id: i64, hash: &[u8]) -> Result<i64>;
    /// The account a live token belongs to.
    fn account_by_token(&self, hash: &[u8]) -> Result<Option<Account>>;
    /// Revokes a token of `account` (any account's if None).
    fn revoke_token(&self, id: i64, account: Option<i64>) -> Result<()>;
    /// Gives `account` `role` in `org`, replacing the role it had there.
    fn add_member(&self, account: i64, org: &str, role: Role) -> Result<()>;
    fn memberships(&self, account: i64) -> Result<Vec<(String, Role)>>;
}

/// A console session as stored (by the hash of its cookie value).
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    /// None while a passkey sign-in is under way.
    pub account: Option<Account>,
    pub csrf: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// A WebAuthn ceremony in progress (webauthn-rs state, JSON).
    pub ceremony: Option<String>,
}

/// A passkey of an account; `credential` is webauthn-rs's `Passkey`, JSON.
#[derive(Clone, Debug)]
pub struct StoredPasskey {
    pub id: i64,
    pub name: String,
    pub credential: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// The web console's sessions and the accounts' passkeys.
pub trait Console {
    fn session_add(&self, hash: &[u8], account: Option<i64>, csrf: &str) -> Result<()>;
    /// The session with its account, whatever its age: the caller applies the expiry.
    fn session(&self, hash: &[u8]) -> Result<Option<ConsoleSession>>;
    fn session_touch(&self, hash: &[u8]) -> Result<()>;
    /// Sets (or clears) the ceremony in progress; returns the one it replaced.
    fn session_ceremony(&self, hash: &[u8], ceremony: Option<&str>) -> Result<Option<String>>;
    fn session_rm(&self, hash: &[u8]) -> Result<()>;
    /// Deletes sessions idle since before `idle_before` or created before `created_before`.
    fn sessions_expire(&self, idle_before: i64, created_before: i64) -> Result<usize>;
    fn passkey_add(&self, account: i64, name: &str, credential: &str) -> Result<i64>;
    fn passkeys(&self, account: i64) -> Result<Vec<StoredPasskey>>;
    /// Stores a credential's new state (its counter) after a sign-in.
    fn passkey_used(&self, id: i64, credential: &str) -> Result<()>;
}

/// An organisation's webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    /// Signs the notifications; never shown after the hook is added.
    pub secret: String,
    pub created_at: i64,
}

/// Where an organisation is told of requests waiting for approval.
pub trait Webhooks {
    fn webhook_add(&self, org: &str, url: &str, secret: &str) -> Result<i64>;
    fn webhooks(&self, org: &str) -> Result<Vec<Webhook>>;
    fn webhook_rm(&self, org: &str, id: i64) -> Result<()>;
}

/// A device the liveness check disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Silenced {
    pub org: String,
    pub device: String,
    /// Seconds since its last sign of life (request, creation or enabling), or since
    /// servers began watching, if later.
    pub silent_for: i64,
    pub max_silence: i64,
}

impl Silenced {
    /// The history row's and the audit row's reason.
    pub fn reason(&self) -> String {
        format!(
            "disabled: silent for {} (max_silence {})",
            crate::liveness::human(self.silent_for),
            crate::liveness::human(self.max_silence)
        )
    }
}

/// The liveness check: `max_silence` per org and per device (the device's wins), and the
/// disabling of devices silent for longer.
pub trait Liveness {
    fn set_org_max_silence(&self, org: &str, seconds: Option<i64>) -> Result<()>;
    fn set_device_max_silence(&self, org: &str, device: &str, seconds: Option<i64>) -> Result<()>;
    /// (the device's own, its org's).
    fn max_silence(&self, org: &str, device: &str) -> Result<(Option<i64>, Option<i64>)>;
    /// The shortest max_silence set anywhere: the check's pace. None if none is set.
    fn shortest_max_silence(&self) -> Result<Option<i64>>;
    /// Records a check at `now` by this server; returns since when servers have checked
    /// with no gap longer than `gap` seconds between two checks: `now` on the first check
    /// and after a longer gap (no server ran, so no device could ask).
    fn watched_since(&self, now: i64, gap: i64) -> Result<i64>;
    /// Disables every active device whose last sign of life (newest history row, creation,
    /// enabling, or `watched_since` if later) is more than its max_silence before `now`;
    /// each in a transaction of its own whose UPDATE is guarded by the same condition, with
    /// its history and audit rows, so that of several replicas checking at once exactly one
    /// disables a device.
    fn disable_silent(&self, now: i64, watched_since: i64) -> Result<Vec<Silenced>>;
}

/// What applying a decision's effect did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Another request won the race (the guard failed): decide again.
    Lost,
    /// Applied, with its history row.
    Done,
    /// Applied, and a new pending unlock request was made (its id): approvers are told.
    NewRequest(i64),
}

/// The trail of admin changes.
pub trait Audit {
    fn audit_in(&self, org: Option<&str>, account: &str, action: &str, target: &str) -> Result<()>;
    /// The newest `limit` rows of `orgs` (all if None), newest first.
    fn audit_log(&self, orgs: Option<&[String]>, limit: i64) -> Result<Vec<AuditEntry>>;
}

/// The `/rec` path: the policy's snapshot, the decision's effect, the decision history.
pub trait Rec {
    /// Everything the policy needs about device `device_id`, read in one go.
    fn snapshot(&self, device_id: i64) -> Result<Option<Snapshot>>;
    /// Whether `snapshot` reads a local file (no network round trip, never waits behind a
    /// commit): then it runs on the request's thread instead of a blocking-pool hop, which
    /// costs more than the read.
    fn snapshot_is_local(&self) -> bool {
        false
    }
    /// The snapshot of `device_id` if this process holds one known to be current; never
    /// waits. A miss is answered by `snapshot`.
    fn cached_snapshot(&self, _device_id: i64) -> Option<Snapshot> {
        None
    }
    /// Applies the effect and writes the history row together.
    fn apply_effect(&self, device_id: i64, effect: &Effect, entry: &Entry) -> Result<Applied>;
    /// `apply_effect`; false if the effect's guard failed (another request won the race).
    fn apply(&self, device_id: i64, effect: &Effect, entry: &Entry) -> Result<bool> {
        Ok(self.apply_effect(device_id, effect, entry)? != Applied::Lost)
    }
    /// The newest `limit` history rows, newest first.
    fn history(
        &self,
        org: Option<&str>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<HistoryEntry>>;
    /// A writer of history rows with its own connection, for the group-commit thread.
    fn history_sink(&self) -> Result<Box<dyn HistorySink>>;
    fn healthy(&self) -> bool;
}

pub trait Backend:
    Devices
    + Liveness
    + SealedKeys
    + Escrow
    + Sources
    + Approvals
    + Accounts
    + Console
    + Webhooks
    + Audit
    + Rec
    + Send
    + Sync
{
}

impl<
    T: Devices
        + Liveness
        + SealedKeys
        + Escrow
        + Sources
        + Approvals
        + Accounts
        + Console
        + Webhooks
        + Audit
        + Rec
        + Send
        + Sync,
> Backend for T
{
}

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A data directory holding the SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/dbname`) or
    /// key=value string. It may hold a password: show it through `Display`, which hides it.
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else is not a
    /// database location.
    pub fn database(url: &str) -> std::result::Result<Location, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Location::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "{}: not a database URL (postgres://user@host:port/dbname)",
                postgres::redact(url)
            ))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(dir) => write!(f, "{}", dir.display()),
            Location::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// The store the server runs on: any backend, called through the family traits, and the
/// KEK its private keys are sealed under once `unlock` is given it (`sealing`: adding and
/// reading keys goes through `Store`'s own calls, which seal and open).
pub struct Store(Box<dyn Backend>, std::sync::OnceLock<crate::kek::Kek>);

impl Store {
    /// Opens (creating if needed) the SQLite store in `data_dir`, locked: `unlock` gives
    /// it its KEK.
    pub fn open(data_dir: &Path) -> Result<Store> {
        Ok(Store::new(sqlite::Sqlite::open(data_dir)?))
    }

    /// Opens (creating or migrating if needed) the store at `location`, locked.
    pub fn open_location(location: &Location) -> Result<Store> {
        match location {
            Location::Sqlite(dir) => Store::open(dir),
            Location::Postgres(url) => Ok(Store::new(postgres::Postgres::open(url)?)),
        }
    }

    pub fn new(backend: impl Backend + 'static) -> Store {
        Store(Box::new(backend), std::sync::OnceLock::new())
    }

    pub fn audit(&self, account: &str, action: &str, target: &str) -> Result<()> {
        self.audit_in(None, account, action, target)
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
