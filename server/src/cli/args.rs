//! The command line: one argument struct per verb (argh names a subcommand by its type).

use std::path::PathBuf;

use argh::FromArgs;

mod device;
mod webhook;
pub use device::*;
pub use webhook::*;

#[derive(FromArgs)]
/// nbde-server: a Tang-compatible server with per-device keys, unlock policy and history.
pub struct Args {
    /// admin API base URL (default $NBDE_SERVER, else http://127.0.0.1:7500)
    #[argh(option)]
    pub server: Option<String>,
    /// CA file to trust for an HTTPS admin API (default $NBDE_CACERT, else the system bundle)
    #[argh(option)]
    pub cacert: Option<PathBuf>,
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum Command {
    Serve(ServeArgs),
    Init(InitArgs),
    Migrate(MigrateArgs),
    Rekey(RekeyArgs),
    Org(OrgArgs),
    Device(DeviceArgs),
    History(HistoryArgs),
    Allow(AllowArgs),
    Netlist(NetlistArgs),
    AllowOnce(AllowOnceArgs),
    Group(GroupArgs),
    Requests(RequestsArgs),
    Approve(Approve),
    Deny(Deny),
    Defer(Defer),
    Account(AccountArgs),
    Token(TokenArgs),
    Audit(AuditArgs),
    Webhook(WebhookArgs),
}

#[derive(FromArgs)]
/// A device's own source allowlist (addresses and CIDRs, IPv4 and IPv6).
#[argh(subcommand, name = "allow")]
pub struct AllowArgs {
    #[argh(subcommand)]
    pub command: AllowCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum AllowCommand {
    Add(AllowAdd),
    Rm(AllowRm),
}

#[derive(FromArgs)]
/// Allow recoveries from these sources.
#[argh(subcommand, name = "add")]
pub struct AllowAdd {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// addresses or CIDRs
    #[argh(positional)]
    pub cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Remove sources from the allowlist.
#[argh(subcommand, name = "rm")]
pub struct AllowRm {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// addresses or CIDRs
    #[argh(positional)]
    pub cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Shared network-access lists of an organisation.
#[argh(subcommand, name = "netlist")]
pub struct NetlistArgs {
    #[argh(subcommand)]
    pub command: NetlistCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum NetlistCommand {
    Add(NetlistAdd),
    Rm(NetlistRm),
    Attach(NetlistAttach),
    Detach(NetlistDetach),
    List(NetlistList),
}

#[derive(FromArgs)]
/// Create a list or add entries to it.
#[argh(subcommand, name = "add")]
pub struct NetlistAdd {
    #[argh(positional)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// addresses or CIDRs
    #[argh(positional)]
    pub cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Remove a list (and detach it everywhere).
#[argh(subcommand, name = "rm")]
pub struct NetlistRm {
    #[argh(positional)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Attach a list to a device.
#[argh(subcommand, name = "attach")]
pub struct NetlistAttach {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    #[argh(positional)]
    pub name: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Detach a list from a device.
#[argh(subcommand, name = "detach")]
pub struct NetlistDetach {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    #[argh(positional)]
    pub name: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Show an organisation's lists.
#[argh(subcommand, name = "list")]
pub struct NetlistList {
    #[argh(positional)]
    pub org: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Allow the next qualifying unlock of a device once (also when disabled; skips approval).
#[argh(subcommand, name = "allow-once")]
pub struct AllowOnceArgs {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Approval groups: devices matching all of a group's tags need a human decision.
#[argh(subcommand, name = "group")]
pub struct GroupArgs {
    #[argh(subcommand)]
    pub command: GroupCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum GroupCommand {
    Add(GroupAdd),
    Rm(GroupRm),
    List(GroupList),
}

#[derive(FromArgs)]
/// Add a group.
#[argh(subcommand, name = "add")]
pub struct GroupAdd {
    #[argh(positional)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// a required tag KEY=VALUE (repeat)
    #[argh(option)]
    pub tag: Vec<String>,
    /// an approver account (repeat)
    #[argh(option)]
    pub approver: Vec<String>,
    /// seconds an approval stays valid (default 900)
    #[argh(option)]
    pub window: Option<i64>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Remove a group.
#[argh(subcommand, name = "rm")]
pub struct GroupRm {
    #[argh(positional)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Show an organisation's groups.
#[argh(subcommand, name = "list")]
pub struct GroupList {
    #[argh(positional)]
    pub org: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Manual unlock requests (pending ones unless --all).
#[argh(subcommand, name = "requests")]
pub struct RequestsArgs {
    /// only this organisation
    #[argh(option)]
    pub org: Option<String>,
    /// include decided requests
    #[argh(switch)]
    pub all: bool,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

macro_rules! decision_verb {
    ($type:ident, $name:literal, $doc:literal) => {
        #[derive(FromArgs)]
        #[doc = $doc]
        #[argh(subcommand, name = $name)]
        pub struct $type {
            /// the request id
            #[argh(positional)]
            pub id: i64,
            /// print JSON
            #[argh(switch)]
            pub json: bool,
        }
    };
}

decision_verb!(
    Approve,
    "approve",
    "Approve a request: one unlock within the group's window."
);
decision_verb!(Deny, "deny", "Deny a request; the device stays refused.");
decision_verb!(Defer, "defer", "Look at a request later; it stays pending.");

#[derive(FromArgs)]
/// Accounts.
#[argh(subcommand, name = "account")]
pub struct AccountArgs {
    #[argh(subcommand)]
    pub command: AccountCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum AccountCommand {
    Add(AccountAdd),
}

#[derive(FromArgs)]
/// Add an account with a role in an organisation; prints its first token as the last line.
#[argh(subcommand, name = "add")]
pub struct AccountAdd {
    #[argh(positional)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// owner, approver or viewer
    #[argh(option)]
    pub role: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Your bearer tokens.
#[argh(subcommand, name = "token")]
pub struct TokenArgs {
    #[argh(subcommand)]
    pub command: TokenCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum TokenCommand {
    Add(TokenAdd),
    Revoke(TokenRevoke),
}

#[derive(FromArgs)]
/// A new token for your account; printed as the last line.
#[argh(subcommand, name = "add")]
pub struct TokenAdd {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Revoke a token by id.
#[argh(subcommand, name = "revoke")]
pub struct TokenRevoke {
    #[argh(positional)]
    pub id: i64,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// The audit trail of admin changes, newest first.
#[argh(subcommand, name = "audit")]
pub struct AuditArgs {
    /// only this organisation
    #[argh(option)]
    pub org: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Run the server.
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {
    /// TOML configuration file
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// data directory (default ./nbde-data)
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// a PostgreSQL URL (postgres://user:password@host:port/dbname) instead of --data
    #[argh(option)]
    pub database: Option<String>,
    /// address to listen on (default 127.0.0.1:7500)
    #[argh(option)]
    pub listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for HTTPS
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS
    #[argh(option)]
    pub tls_key: Option<PathBuf>,
    /// allow plain HTTP on a non-loopback address
    #[argh(switch)]
    pub insecure_http: bool,
    /// also serve a tangd key directory at /adv and /rec
    #[argh(option)]
    pub tang_dir: Option<PathBuf>,
    /// base of the unlock URLs handed out (e.g. https://tang.example)
    #[argh(option)]
    pub public_url: Option<String>,
    /// the web console's origin as browsers reach it, for passkeys (e.g.
    /// https://nbde.example; default: the public URL)
    #[argh(option)]
    pub console_origin: Option<String>,
    /// the key-encryption key file (default: $CREDENTIALS_DIRECTORY/nbde-kek, else
    /// kek_file of the configuration, else DATA.kek beside the data directory)
    #[argh(option)]
    pub kek_file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Create the store and print the first owner token (as the last line).
#[argh(subcommand, name = "init")]
pub struct InitArgs {
    /// data directory (default ./nbde-data)
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// a PostgreSQL URL (postgres://user:password@host:port/dbname) instead of --data
    #[argh(option)]
    pub database: Option<String>,
    /// TOML configuration file (for its data directory or database)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// the key-encryption key file, made if there is none (default as for serve)
    #[argh(option)]
    pub kek_file: Option<PathBuf>,
    /// only make the key-encryption key file if there is none (a package's postinst)
    #[argh(switch)]
    pub kek_only: bool,
}

#[derive(FromArgs)]
/// Move a SQLite store (every table, every row) into an empty PostgreSQL database. Stop
/// the server first; the SQLite store is left as it was (but for keys it held in plain
/// text, which are sealed first). The keys move sealed: give the replicas the same KEK.
#[argh(subcommand, name = "migrate")]
pub struct MigrateArgs {
    /// the data directory of the SQLite store
    #[argh(option)]
    pub from: PathBuf,
    /// the PostgreSQL URL (postgres://user:password@host:port/dbname)
    #[argh(option)]
    pub to: String,
    /// the key-encryption key file of the SQLite store (default FROM.kek)
    #[argh(option)]
    pub kek_file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Seal every private key under a new key-encryption key, which replaces the file; the
/// old key no longer opens the store. Stop the server (every replica) first, and start it
/// (them) with the new file.
#[argh(subcommand, name = "rekey")]
pub struct RekeyArgs {
    /// data directory (default ./nbde-data)
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// a PostgreSQL URL (postgres://user:password@host:port/dbname) instead of --data
    #[argh(option)]
    pub database: Option<String>,
    /// TOML configuration file (for its data directory or database and its kek_file)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// the key-encryption key file to replace (default as for serve)
    #[argh(option)]
    pub kek_file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Organisations.
#[argh(subcommand, name = "org")]
pub struct OrgArgs {
    #[argh(subcommand)]
    pub command: OrgCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum OrgCommand {
    Add(OrgAdd),
    List(OrgList),
    Set(OrgSet),
    Liveness(OrgLivenessArgs),
    EscrowKey(OrgEscrowKey),
}

#[derive(FromArgs)]
/// The org's liveness check: its devices silent (no recovery asked) for longer than
/// --max-silence are disabled; a device's own setting wins.
#[argh(subcommand, name = "liveness")]
pub struct OrgLivenessArgs {
    #[argh(positional)]
    pub org: String,
    /// the longest silence (90s, 15m, 12h, 30d), or "none"
    #[argh(option)]
    pub max_silence: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// The organisation's escrow public key: set it from a JWK file, or show it.
#[argh(subcommand, name = "escrow-key")]
pub struct OrgEscrowKey {
    #[argh(positional)]
    pub org: String,
    /// a file holding the public JWK (EC P-256, P-384 or P-521; the private half stays
    /// with you)
    #[argh(option)]
    pub jwk: Option<PathBuf>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Organisation settings: whether devices without a source allowlist refuse.
#[argh(subcommand, name = "set")]
pub struct OrgSet {
    #[argh(positional)]
    pub org: String,
    /// devices with no allowlist or network-access list refuse
    #[argh(switch)]
    pub require_source: bool,
    /// devices with no allowlist accept any source (the default)
    #[argh(switch)]
    pub any_source: bool,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Add an organisation (with its own signing key).
#[argh(subcommand, name = "add")]
pub struct OrgAdd {
    #[argh(positional)]
    pub name: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// List organisations.
#[argh(subcommand, name = "list")]
pub struct OrgList {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Show the decision history, newest first.
#[argh(subcommand, name = "history")]
pub struct HistoryArgs {
    /// only this ORG/DEVICE
    #[argh(option)]
    pub device: Option<String>,
    /// at most this many rows (default 100)
    #[argh(option, default = "100")]
    pub limit: u32,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}
