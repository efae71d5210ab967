use std::path::PathBuf;

use argh::FromArgs;
use nbde_server::config::{self, Config};
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::store::Store;
use serde_json::{Value, json};

#[derive(FromArgs)]
/// nbde-server: a Tang-compatible server with per-device keys, unlock policy and history.
pub struct Args {
    /// admin API base URL (default $NBDE_SERVER, else http://127.0.0.1:7500)
    #[argh(option)]
    server: Option<String>,
    /// CA file to trust for an HTTPS admin API (default $NBDE_CACERT, else the system bundle)
    #[argh(option)]
    cacert: Option<PathBuf>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(ServeArgs),
    Init(InitArgs),
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
}

#[derive(FromArgs)]
/// A device's own source allowlist (addresses and CIDRs, IPv4 and IPv6).
#[argh(subcommand, name = "allow")]
struct AllowArgs {
    #[argh(subcommand)]
    command: AllowCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum AllowCommand {
    Add(AllowAdd),
    Rm(AllowRm),
}

#[derive(FromArgs)]
/// Allow recoveries from these sources.
#[argh(subcommand, name = "add")]
struct AllowAdd {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    /// addresses or CIDRs
    #[argh(positional)]
    cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Remove sources from the allowlist.
#[argh(subcommand, name = "rm")]
struct AllowRm {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    /// addresses or CIDRs
    #[argh(positional)]
    cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Shared network-access lists of an organisation.
#[argh(subcommand, name = "netlist")]
struct NetlistArgs {
    #[argh(subcommand)]
    command: NetlistCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum NetlistCommand {
    Add(NetlistAdd),
    Rm(NetlistRm),
    Attach(NetlistAttach),
    Detach(NetlistDetach),
    List(NetlistList),
}

#[derive(FromArgs)]
/// Create a list or add entries to it.
#[argh(subcommand, name = "add")]
struct NetlistAdd {
    #[argh(positional)]
    org: String,
    #[argh(positional)]
    name: String,
    /// addresses or CIDRs
    #[argh(positional)]
    cidrs: Vec<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Remove a list (and detach it everywhere).
#[argh(subcommand, name = "rm")]
struct NetlistRm {
    #[argh(positional)]
    org: String,
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Attach a list to a device.
#[argh(subcommand, name = "attach")]
struct NetlistAttach {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Detach a list from a device.
#[argh(subcommand, name = "detach")]
struct NetlistDetach {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Show an organisation's lists.
#[argh(subcommand, name = "list")]
struct NetlistList {
    #[argh(positional)]
    org: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Allow the next qualifying unlock of a device once (also when disabled; skips approval).
#[argh(subcommand, name = "allow-once")]
struct AllowOnceArgs {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Approval groups: devices matching all of a group's tags need a human decision.
#[argh(subcommand, name = "group")]
struct GroupArgs {
    #[argh(subcommand)]
    command: GroupCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum GroupCommand {
    Add(GroupAdd),
    Rm(GroupRm),
    List(GroupList),
}

#[derive(FromArgs)]
/// Add a group.
#[argh(subcommand, name = "add")]
struct GroupAdd {
    #[argh(positional)]
    org: String,
    #[argh(positional)]
    name: String,
    /// a required tag KEY=VALUE (repeat)
    #[argh(option)]
    tag: Vec<String>,
    /// an approver account (repeat)
    #[argh(option)]
    approver: Vec<String>,
    /// seconds an approval stays valid (default 900)
    #[argh(option)]
    window: Option<i64>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Remove a group.
#[argh(subcommand, name = "rm")]
struct GroupRm {
    #[argh(positional)]
    org: String,
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Show an organisation's groups.
#[argh(subcommand, name = "list")]
struct GroupList {
    #[argh(positional)]
    org: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Manual unlock requests (pending ones unless --all).
#[argh(subcommand, name = "requests")]
struct RequestsArgs {
    /// only this organisation
    #[argh(option)]
    org: Option<String>,
    /// include decided requests
    #[argh(switch)]
    all: bool,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

macro_rules! decision_verb {
    ($type:ident, $name:literal, $doc:literal) => {
        #[derive(FromArgs)]
        #[doc = $doc]
        #[argh(subcommand, name = $name)]
        struct $type {
            /// the request id
            #[argh(positional)]
            id: i64,
            /// print JSON
            #[argh(switch)]
            json: bool,
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
struct AccountArgs {
    #[argh(subcommand)]
    command: AccountCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum AccountCommand {
    Add(AccountAdd),
}

#[derive(FromArgs)]
/// Add an account with a role in an organisation; prints its first token as the last line.
#[argh(subcommand, name = "add")]
struct AccountAdd {
    #[argh(positional)]
    org: String,
    #[argh(positional)]
    name: String,
    /// owner, approver or viewer
    #[argh(option)]
    role: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Your bearer tokens.
#[argh(subcommand, name = "token")]
struct TokenArgs {
    #[argh(subcommand)]
    command: TokenCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum TokenCommand {
    Add(TokenAdd),
    Revoke(TokenRevoke),
}

#[derive(FromArgs)]
/// A new token for your account; printed as the last line.
#[argh(subcommand, name = "add")]
struct TokenAdd {
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Revoke a token by id.
#[argh(subcommand, name = "revoke")]
struct TokenRevoke {
    #[argh(positional)]
    id: i64,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// The audit trail of admin changes, newest first.
#[argh(subcommand, name = "audit")]
struct AuditArgs {
    /// only this organisation
    #[argh(option)]
    org: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Run the server.
#[argh(subcommand, name = "serve")]
struct ServeArgs {
    /// TOML configuration file
    #[argh(option)]
    config: Option<PathBuf>,
    /// data directory (default ./nbde-data)
    #[argh(option)]
    data: Option<PathBuf>,
    /// address to listen on (default 127.0.0.1:7500)
    #[argh(option)]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for HTTPS
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// allow plain HTTP on a non-loopback address
    #[argh(switch)]
    insecure_http: bool,
    /// also serve a tangd key directory at /adv and /rec
    #[argh(option)]
    tang_dir: Option<PathBuf>,
    /// base of the unlock URLs handed out (e.g. https://tang.example)
    #[argh(option)]
    public_url: Option<String>,
}

#[derive(FromArgs)]
/// Create the store and print the first owner token (as the last line).
#[argh(subcommand, name = "init")]
struct InitArgs {
    /// data directory (default ./nbde-data)
    #[argh(option)]
    data: Option<PathBuf>,
    /// TOML configuration file (for its data directory)
    #[argh(option)]
    config: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Organisations.
#[argh(subcommand, name = "org")]
struct OrgArgs {
    #[argh(subcommand)]
    command: OrgCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum OrgCommand {
    Add(OrgAdd),
    List(OrgList),
    Set(OrgSet),
}

#[derive(FromArgs)]
/// Organisation settings: whether devices without a source allowlist refuse.
#[argh(subcommand, name = "set")]
struct OrgSet {
    #[argh(positional)]
    org: String,
    /// devices with no allowlist or network-access list refuse
    #[argh(switch)]
    require_source: bool,
    /// devices with no allowlist accept any source (the default)
    #[argh(switch)]
    any_source: bool,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Add an organisation (with its own signing key).
#[argh(subcommand, name = "add")]
struct OrgAdd {
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// List organisations.
#[argh(subcommand, name = "list")]
struct OrgList {
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Devices.
#[argh(subcommand, name = "device")]
struct DeviceArgs {
    #[argh(subcommand)]
    command: DeviceCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum DeviceCommand {
    Add(DeviceAdd),
    List(DeviceList),
    Disable(DeviceDisable),
    Enable(DeviceEnable),
    Rotate(DeviceRotate),
    Retire(DeviceRetire),
    Tag(DeviceTag),
}

#[derive(FromArgs)]
/// Set tags on a device (KEY=VALUE…); approval groups match them.
#[argh(subcommand, name = "tag")]
struct DeviceTag {
    /// ORG/DEVICE
    #[argh(positional)]
    device: String,
    /// KEY=VALUE
    #[argh(positional)]
    tags: Vec<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Add a device: prints its unlock URL and the thp to pin.
#[argh(subcommand, name = "add")]
struct DeviceAdd {
    /// the organisation
    #[argh(option)]
    org: String,
    #[argh(positional)]
    name: String,
    /// exchange key curve: P-256, P-384 or P-521 (default)
    #[argh(option)]
    curve: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// List devices.
#[argh(subcommand, name = "list")]
struct DeviceList {
    /// only this organisation
    #[argh(option)]
    org: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// One struct per device action verb: argh names a subcommand by its type.
macro_rules! device_action {
    ($type:ident, $name:literal, $doc:literal) => {
        #[derive(FromArgs)]
        #[doc = $doc]
        #[argh(subcommand, name = $name)]
        struct $type {
            /// ORG/DEVICE
            #[argh(positional)]
            device: String,
            /// print JSON
            #[argh(switch)]
            json: bool,
        }
    };
}

device_action!(
    DeviceDisable,
    "disable",
    "Refuse every recovery of a device."
);
device_action!(
    DeviceEnable,
    "enable",
    "Take part in a device's recoveries again."
);
device_action!(
    DeviceRotate,
    "rotate",
    "Advertise a new exchange key; the old ones still recover until the device is retired."
);
device_action!(
    DeviceRetire,
    "retire",
    "Destroy a device's exchange keys: its managed unlock path is gone for good."
);

#[derive(FromArgs)]
/// Show the decision history, newest first.
#[argh(subcommand, name = "history")]
struct HistoryArgs {
    /// only this ORG/DEVICE
    #[argh(option)]
    device: Option<String>,
    /// at most this many rows (default 100)
    #[argh(option, default = "100")]
    limit: u32,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

struct Admin {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Admin {
    fn new(server: Option<String>, cacert: Option<PathBuf>) -> Result<Admin, String> {
        let base = server
            .or_else(|| std::env::var("NBDE_SERVER").ok())
            .unwrap_or_else(|| format!("http://{}", config::DEFAULT_LISTEN));
        let token = std::env::var("NBDE_TOKEN")
            .map_err(|_| "set NBDE_TOKEN to an admin token".to_string())?;
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots(
                cacert,
            )?)))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Admin {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/admin/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match body {
            Some(body) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes()),
            None if method == "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            None => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut response = result.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let detail = value
                .get("detail")
                .and_then(Value::as_str)
                .or_else(|| value.get("type").and_then(Value::as_str))
                .unwrap_or(text.trim());
            return Err(format!("HTTP {status}: {detail}"));
        }
        Ok(value)
    }
}

/// The CA file given (flag or $NBDE_CACERT), else the system bundle.
fn roots(cacert: Option<PathBuf>) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let named = cacert.or_else(|| std::env::var_os("NBDE_CACERT").map(PathBuf::from));
    let pem = match &named {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
    };
    Ok(ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect())
}

fn split_device(spec: &str) -> Result<(&str, &str), String> {
    spec.split_once('/')
        .filter(|(o, d)| !o.is_empty() && !d.is_empty())
        .ok_or_else(|| format!("{spec:?}: expected ORG/DEVICE"))
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn print_device(d: &Value) {
    println!("{}", device_line(d));
}

fn init(args: InitArgs) -> Result<(), String> {
    let config = Config::load(args.config.as_deref())?;
    let data = args.data.unwrap_or_else(|| config.data());
    let store = Store::open(&data).map_err(|e| e.to_string())?;
    if store.account_count().map_err(|e| e.to_string())? > 0 {
        return Err(format!("{} is already initialised", data.display()));
    }
    let account = store
        .add_account("owner", true)
        .map_err(|e| e.to_string())?;
    let token = new_token().map_err(|e| e.to_string())?;
    store
        .add_token(account, &token_hash(&token))
        .map_err(|e| e.to_string())?;
    store
        .audit("owner", "init", &data.display().to_string())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "nbde-server: store created in {}; the owner token follows (shown once):",
        data.display()
    );
    println!("{token}");
    Ok(())
}

pub fn run(args: Args) -> Result<(), String> {
    match args.command {
        Command::Serve(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("NBDE_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let mut config = Config::load(a.config.as_deref())?;
            config.data = a.data.or(config.data);
            config.listen = a.listen.or(config.listen);
            config.tls_cert = a.tls_cert.or(config.tls_cert);
            config.tls_key = a.tls_key.or(config.tls_key);
            config.insecure_http |= a.insecure_http;
            config.tang_dir = a.tang_dir.or(config.tang_dir);
            config.public_url = a.public_url.or(config.public_url);
            nbde_server::serve::run(config)
        }
        Command::Init(a) => init(a),
        Command::Org(OrgArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            match command {
                OrgCommand::Add(a) => {
                    let v = admin.call("POST", "/orgs", Some(json!({"name": a.name})))?;
                    if a.json {
                        print_json(&v);
                    } else {
                        println!(
                            "{}\tthp={}",
                            v["name"].as_str().unwrap_or(""),
                            v["thp"].as_str().unwrap_or("")
                        );
                    }
                }
                OrgCommand::Set(a) => {
                    if a.require_source == a.any_source {
                        return Err("give one of --require-source and --any-source".into());
                    }
                    let v = admin.call(
                        "POST",
                        &format!("/orgs/{}/settings", a.org),
                        Some(json!({"require_source": a.require_source})),
                    )?;
                    output(&v, a.json, |v| {
                        format!(
                            "{}\trequire_source={}",
                            v["name"].as_str().unwrap_or(""),
                            v["require_source"]
                        )
                    });
                }
                OrgCommand::List(a) => {
                    let v = admin.call("GET", "/orgs", None)?;
                    if a.json {
                        print_json(&v);
                    } else {
                        for o in v["orgs"].as_array().into_iter().flatten() {
                            println!("{}", o["name"].as_str().unwrap_or(""));
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Device(DeviceArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let (v, json) = match command {
                DeviceCommand::Add(a) => {
                    let mut body = json!({"name": a.name});
                    if let Some(curve) = a.curve {
                        body["curve"] = curve.into();
                    }
                    let v = admin.call("POST", &format!("/orgs/{}/devices", a.org), Some(body))?;
                    if !a.json {
                        println!("url: {}", v["url"].as_str().unwrap_or(""));
                        println!("thp: {}", v["thp"].as_str().unwrap_or(""));
                        return Ok(());
                    }
                    (v, true)
                }
                DeviceCommand::List(a) => {
                    let orgs: Vec<String> = match a.org {
                        Some(org) => vec![org],
                        None => admin.call("GET", "/orgs", None)?["orgs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|o| o["name"].as_str().map(str::to_owned))
                            .collect(),
                    };
                    let mut devices = Vec::new();
                    for org in orgs {
                        let v = admin.call("GET", &format!("/orgs/{org}/devices"), None)?;
                        devices.extend(v["devices"].as_array().cloned().unwrap_or_default());
                    }
                    if !a.json {
                        devices.iter().for_each(print_device);
                        return Ok(());
                    }
                    (json!({"devices": devices}), true)
                }
                DeviceCommand::Disable(a) => (device_action(&admin, "disable", &a.device)?, a.json),
                DeviceCommand::Enable(a) => (device_action(&admin, "enable", &a.device)?, a.json),
                DeviceCommand::Rotate(a) => (device_action(&admin, "rotate", &a.device)?, a.json),
                DeviceCommand::Retire(a) => (device_action(&admin, "retire", &a.device)?, a.json),
                DeviceCommand::Tag(a) => {
                    let (org, device) = split_device(&a.device)?;
                    let mut tags = serde_json::Map::new();
                    for t in &a.tags {
                        let (k, v) = t
                            .split_once('=')
                            .ok_or_else(|| format!("{t:?}: expected KEY=VALUE"))?;
                        tags.insert(k.into(), v.into());
                    }
                    (
                        admin.call(
                            "POST",
                            &format!("/orgs/{org}/devices/{device}/tags"),
                            Some(json!({"tags": tags})),
                        )?,
                        a.json,
                    )
                }
            };
            if json {
                print_json(&v);
            } else {
                print_device(&v);
            }
            Ok(())
        }
        Command::Allow(AllowArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let (spec, body, json) = match command {
                AllowCommand::Add(a) => (a.device, json!({"add": a.cidrs}), a.json),
                AllowCommand::Rm(a) => (a.device, json!({"rm": a.cidrs}), a.json),
            };
            let (org, device) = split_device(&spec)?;
            let v = admin.call(
                "POST",
                &format!("/orgs/{org}/devices/{device}/sources"),
                Some(body),
            )?;
            output(&v, json, device_line);
            Ok(())
        }
        Command::Netlist(NetlistArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            match command {
                NetlistCommand::Add(a) => {
                    let v = admin.call(
                        "POST",
                        &format!("/orgs/{}/netlists", a.org),
                        Some(json!({"name": a.name, "cidrs": a.cidrs})),
                    )?;
                    output(&v, a.json, |v| {
                        format!("netlist {}", v["name"].as_str().unwrap_or(""))
                    });
                }
                NetlistCommand::Rm(a) => {
                    let v = admin.call(
                        "POST",
                        &format!("/orgs/{}/netlists/{}/rm", a.org, a.name),
                        None,
                    )?;
                    output(&v, a.json, |v| {
                        format!("removed {}", v["removed"].as_str().unwrap_or(""))
                    });
                }
                NetlistCommand::Attach(a) => {
                    netlist_attach(&admin, &a.device, &a.name, "attach", a.json)?
                }
                NetlistCommand::Detach(a) => {
                    netlist_attach(&admin, &a.device, &a.name, "detach", a.json)?
                }
                NetlistCommand::List(a) => {
                    let v = admin.call("GET", &format!("/orgs/{}/netlists", a.org), None)?;
                    output(&v, a.json, |v| {
                        v["netlists"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|l| {
                                format!("{}\t{}", l["name"].as_str().unwrap_or(""), l["cidrs"])
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
            }
            Ok(())
        }
        Command::AllowOnce(a) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let v = device_action(&admin, "allow-once", &a.device)?;
            output(&v, a.json, |v| {
                format!(
                    "allow-once #{} for {}/{}",
                    v["allow_once"],
                    v["org"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        Command::Group(GroupArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            match command {
                GroupCommand::Add(a) => {
                    let mut tags = serde_json::Map::new();
                    for t in &a.tag {
                        let (k, v) = t
                            .split_once('=')
                            .ok_or_else(|| format!("{t:?}: expected KEY=VALUE"))?;
                        tags.insert(k.into(), v.into());
                    }
                    let mut body = json!({"name": a.name, "tags": tags, "approvers": a.approver});
                    if let Some(w) = a.window {
                        body["window_seconds"] = w.into();
                    }
                    let v = admin.call("POST", &format!("/orgs/{}/groups", a.org), Some(body))?;
                    output(&v, a.json, |v| {
                        format!(
                            "group {} (approval valid {} s)",
                            v["name"].as_str().unwrap_or(""),
                            v["window_seconds"]
                        )
                    });
                }
                GroupCommand::Rm(a) => {
                    let v = admin.call(
                        "POST",
                        &format!("/orgs/{}/groups/{}/rm", a.org, a.name),
                        None,
                    )?;
                    output(&v, a.json, |v| {
                        format!("removed {}", v["removed"].as_str().unwrap_or(""))
                    });
                }
                GroupCommand::List(a) => {
                    let v = admin.call("GET", &format!("/orgs/{}/groups", a.org), None)?;
                    output(&v, a.json, |v| {
                        v["groups"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|g| {
                                format!(
                                    "{}\ttags={}\tapprovers={}",
                                    g["name"].as_str().unwrap_or(""),
                                    g["tags"],
                                    g["approvers"]
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
            }
            Ok(())
        }
        Command::Requests(a) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let mut query = String::from("/requests?");
            if let Some(org) = &a.org {
                query.push_str(&format!("org={org}&"));
            }
            if a.all {
                query.push_str("all=true");
            }
            let v = admin.call("GET", &query, None)?;
            output(&v, a.json, |v| {
                v["requests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "{}\t{}/{}\t{}\t{}",
                            r["id"],
                            r["org"].as_str().unwrap_or(""),
                            r["device"].as_str().unwrap_or(""),
                            r["peer"].as_str().unwrap_or(""),
                            r["state"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        Command::Approve(a) => decide(args.server, args.cacert, a.id, "approve", a.json),
        Command::Deny(a) => decide(args.server, args.cacert, a.id, "deny", a.json),
        Command::Defer(a) => decide(args.server, args.cacert, a.id, "defer", a.json),
        Command::Account(AccountArgs {
            command: AccountCommand::Add(a),
        }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let v = admin.call(
                "POST",
                &format!("/orgs/{}/accounts", a.org),
                Some(json!({"name": a.name, "role": a.role})),
            )?;
            output(&v, a.json, |v| {
                format!(
                    "account {} is {} of {}; token (shown once):\n{}",
                    v["account"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or(""),
                    v["org"].as_str().unwrap_or(""),
                    v["token"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        Command::Token(TokenArgs { command }) => {
            let admin = Admin::new(args.server, args.cacert)?;
            match command {
                TokenCommand::Add(a) => {
                    let v = admin.call("POST", "/tokens", None)?;
                    output(&v, a.json, |v| {
                        format!(
                            "token {} (shown once):\n{}",
                            v["token_id"],
                            v["token"].as_str().unwrap_or("")
                        )
                    });
                }
                TokenCommand::Revoke(a) => {
                    let v = admin.call("POST", &format!("/tokens/{}/revoke", a.id), None)?;
                    output(&v, a.json, |v| format!("revoked token {}", v["revoked"]));
                }
            }
            Ok(())
        }
        Command::Audit(a) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let query = match &a.org {
                Some(org) => format!("/audit?org={org}"),
                None => "/audit".into(),
            };
            let v = admin.call("GET", &query, None)?;
            output(&v, a.json, |v| {
                v["audit"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "{}\t{}\t{}\t{}",
                            utc(&r["at"]),
                            r["account"].as_str().unwrap_or(""),
                            r["action"].as_str().unwrap_or(""),
                            r["target"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        Command::History(a) => {
            let admin = Admin::new(args.server, args.cacert)?;
            let mut query = format!("/history?limit={}", a.limit);
            if let Some(spec) = &a.device {
                let (org, device) = split_device(spec)?;
                query.push_str(&format!("&org={org}&device={device}"));
            }
            let v = admin.call("GET", &query, None)?;
            if a.json {
                print_json(&v);
            } else {
                for row in v["history"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}/{}\t{}\t{}\t{}",
                        utc(&row["at"]),
                        row["org"].as_str().unwrap_or("-"),
                        row["device"].as_str().unwrap_or("-"),
                        row["peer"].as_str().unwrap_or(""),
                        row["decision"].as_str().unwrap_or(""),
                        row["reason"].as_str().unwrap_or(""),
                    );
                }
            }
            Ok(())
        }
    }
}

/// `at` (Unix seconds) as RFC 3339 UTC, for people reading history and audit lines.
fn utc(at: &Value) -> String {
    let Some(seconds) = at.as_i64() else {
        return at.to_string();
    };
    let (days, rem) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Prints `value` as JSON, or the text `describe` makes of it.
fn output(value: &Value, json: bool, describe: impl Fn(&Value) -> String) {
    if json {
        print_json(value);
    } else {
        let text = describe(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

fn device_line(d: &Value) -> String {
    format!(
        "{}/{}\t{}\t{}\tthp={}\tsource: {}",
        d["org"].as_str().unwrap_or(""),
        d["name"].as_str().unwrap_or(""),
        d["state"].as_str().unwrap_or(""),
        d["url"].as_str().unwrap_or(""),
        d["thp"].as_str().unwrap_or(""),
        d["source"].as_str().unwrap_or(""),
    )
}

fn netlist_attach(
    admin: &Admin,
    spec: &str,
    name: &str,
    action: &str,
    json: bool,
) -> Result<(), String> {
    let (org, device) = split_device(spec)?;
    let v = admin.call(
        "POST",
        &format!("/orgs/{org}/devices/{device}/netlists/{name}/{action}"),
        None,
    )?;
    output(&v, json, device_line);
    Ok(())
}

fn decide(
    server: Option<String>,
    cacert: Option<PathBuf>,
    id: i64,
    action: &str,
    json: bool,
) -> Result<(), String> {
    let admin = Admin::new(server, cacert)?;
    let v = admin.call("POST", &format!("/requests/{id}/{action}"), None)?;
    output(&v, json, |v| {
        format!(
            "request {}: {}",
            v["id"],
            v["action"].as_str().unwrap_or("")
        )
    });
    Ok(())
}

fn device_action(admin: &Admin, action: &str, spec: &str) -> Result<Value, String> {
    let (org, device) = split_device(spec)?;
    admin.call(
        "POST",
        &format!("/orgs/{org}/devices/{device}/{action}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::utc;
    use serde_json::json;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(utc(&json!(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(&json!(1_795_353_946)), "2026-11-22T13:25:46Z");
        assert_eq!(utc(&json!("x")), "\"x\"");
    }
}
