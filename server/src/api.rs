//! The admin API's vocabulary: the bodies the handlers under `/admin/v1` accept and answer,
//! and that `client` sends and reads. One type per shape, so the server, the CLI and the
//! web console to come cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{DeviceState, RequestState, Verdict};

/// An account's role in one organisation; ordered by what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, and decides the requests of the groups it approves for.
    Approver,
    /// Does everything in its org.
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "approver" => Some(Role::Approver),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }
}

// ---- organisations ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewOrg {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgCreated {
    pub name: String,
    /// The S256 thumbprint of the org's signing key: what clients pin.
    pub thp: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Org {
    pub name: String,
    pub require_source: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgList {
    pub orgs: Vec<Org>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgSettings {
    pub require_source: bool,
}

/// A liveness setting, of an org or a device: the longest silence (no `/rec` request),
/// in seconds, before the device is disabled; null for none (a device's null falls back to
/// its org's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MaxSilence {
    pub max_silence: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgLiveness {
    pub org: String,
    pub max_silence: Option<i64>,
}

// ---- devices ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewDevice {
    pub name: String,
    /// P-256, P-384 or P-521 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
}

/// A device as the admin API shows it, after any change to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub org: String,
    pub name: String,
    pub state: DeviceState,
    /// The unlock URL to bind with.
    pub url: String,
    pub thp: Option<String>,
    /// The S256 thumbprint of the advertised exchange key.
    pub kid: Option<String>,
    pub curve: Option<String>,
    pub exchange_keys: usize,
    /// In words: any source, restricted, or refused for want of one.
    pub source: String,
    pub sources: Vec<String>,
    pub netlists: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// The allowance an allow-once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_once: Option<i64>,
    /// The volume's mode as its machine last reported it; null if never reported.
    #[serde(default)]
    pub mode: Option<DeviceMode>,
    /// The encrypted header backup held for the device (not its content); null if none.
    #[serde(default)]
    pub escrow: Option<EscrowInfo>,
    /// The liveness check in force: the device's max_silence, else its org's (seconds);
    /// null if none.
    #[serde(default)]
    pub max_silence: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tags {
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub rm: Vec<String>,
}

// ---- volume modes and header escrow ----

/// How a machine's volume is unlocked, as the machine reports it. `Sovereign` means the
/// managed path is gone: the server destroys the device's keys and escrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "managed")]
    Managed,
    #[serde(rename = "managed+user")]
    ManagedUser,
    #[serde(rename = "sovereign")]
    Sovereign,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "managed" => Some(Mode::Managed),
            "managed+user" => Some(Mode::ManagedUser),
            "sovereign" => Some(Mode::Sovereign),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Managed => "managed",
            Mode::ManagedUser => "managed+user",
            Mode::Sovereign => "sovereign",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeReport {
    /// managed, managed+user or sovereign; checked by the server so the caller learns which.
    pub mode: String,
}

/// The last mode report of a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMode {
    pub mode: Mode,
    /// Unix seconds.
    pub reported_at: i64,
    /// The account that reported it.
    pub reported_by: String,
}

/// The largest escrow request or answer: a LUKS2 header backup is 16 MiB before the
/// machine compresses it, and base64url and JSON add a third.
pub const MAX_ESCROW_BODY: usize = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEscrowKey {
    /// An EC public key (P-256, P-384 or P-521) whose private half the customer keeps.
    pub jwk: serde_json::Value,
}

/// An organisation's escrow public key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EscrowKey {
    pub org: String,
    /// The RFC 7638 S256 thumbprint: the `kid` an upload's protected header names.
    pub kid: String,
    /// The public members as stored.
    pub jwk: serde_json::Value,
}

/// A header backup encrypted on the machine to the org's escrow key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEscrow {
    /// Compact JWE: ECDH-ES, A256GCM, `kid` of the org's escrow key.
    pub jwe: String,
    /// The LUKS UUID of the volume.
    pub uuid: String,
}

/// What the server tells about a stored header backup without handing it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowInfo {
    pub uuid: String,
    pub kid: String,
    /// Bytes of the JWE text.
    pub size: i64,
    /// Unix seconds.
    pub uploaded_at: i64,
    pub uploaded_by: String,
}

/// A stored header backup with its content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EscrowBlob {
    #[serde(flatten)]
    pub info: EscrowInfo,
    pub jwe: String,
}

// ---- network-access lists ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Netlist {
    pub name: String,
    pub cidrs: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetlistList {
    pub netlists: Vec<Netlist>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

// ---- approval groups and requests ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupCreated {
    pub name: String,
    pub window_seconds: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Required (key, value) pairs, by key.
    pub tags: Vec<(String, String)>,
    pub approvers: Vec<String>,
    pub window_seconds: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupList {
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: i64,
    pub org: String,
    pub device: String,
    pub peer: String,
    pub created_at: i64,
    pub state: RequestState,
    pub decided_by: Option<String>,
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<Request>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestQuery {
    pub org: Option<String>,
    /// Decided requests too.
    #[serde(default)]
    pub all: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decided {
    pub id: i64,
    pub action: Verdict,
}

// ---- accounts and tokens ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewAccount {
    pub name: String,
    /// owner, approver or viewer; checked by the server so the caller learns which.
    pub role: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountCreated {
    pub account: String,
    pub org: String,
    pub role: Role,
    pub token_id: i64,
    /// Shown once; only its hash is stored.
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token_id: i64,
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: i64,
}

// ---- history and audit ----

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub org: Option<String>,
    pub device: Option<String>,
    pub limit: Option<i64>,
}

/// One `/rec` decision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix seconds.
    pub at: i64,
    pub org: Option<String>,
    pub device: Option<String>,
    pub peer: String,
    pub kid: Option<String>,
    pub decision: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryList {
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    pub org: Option<String>,
    pub limit: Option<i64>,
}

/// One admin change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    pub account: String,
    pub action: String,
    pub target: String,
    pub org: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditList {
    pub audit: Vec<AuditEntry>,
}

/// `at` (Unix seconds) as RFC 3339 UTC, for people reading history and audit lines (the
/// CLI's and the console's).
pub fn utc(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string())
}

// ---- webhooks ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewWebhook {
    /// Where to POST: an http or https URL.
    pub url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookCreated {
    pub id: i64,
    pub url: String,
    /// Signs every notification (see `webhooks`); shown this once.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}
