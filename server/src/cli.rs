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
    println!(
        "{}/{}\t{}\t{}\tthp={}",
        d["org"].as_str().unwrap_or(""),
        d["name"].as_str().unwrap_or(""),
        d["state"].as_str().unwrap_or(""),
        d["url"].as_str().unwrap_or(""),
        d["thp"].as_str().unwrap_or(""),
    );
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
            };
            if json {
                print_json(&v);
            } else {
                print_device(&v);
            }
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
                        row["at"],
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

fn device_action(admin: &Admin, action: &str, spec: &str) -> Result<Value, String> {
    let (org, device) = split_device(spec)?;
    admin.call(
        "POST",
        &format!("/orgs/{org}/devices/{device}/{action}"),
        None,
    )
}
