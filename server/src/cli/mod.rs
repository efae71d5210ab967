//! The `nbde-server` command: `serve` and `init` run here; every admin verb is one call of
//! `nbde_server::client` and the printing of its answer.

mod args;
mod init;
mod print;

use std::collections::BTreeMap;

pub use args::Args;
use args::*;
use nbde_server::api::{
    AuditQuery, HistoryQuery, MaxSilence, Mode, Netlist, NewAccount, NewDevice, NewEscrowKey,
    NewGroup, OrgSettings, RequestQuery, SourceChange, Tags,
};
use nbde_server::client::Client;
use nbde_server::policy::Verdict;
use print::{device_line, output};

fn split_device(spec: &str) -> Result<(&str, &str), String> {
    spec.split_once('/')
        .filter(|(o, d)| !o.is_empty() && !d.is_empty())
        .ok_or_else(|| format!("{spec:?}: expected ORG/DEVICE"))
}

/// `--max-silence`: a duration, or "none".
fn max_silence(text: &str) -> Result<MaxSilence, String> {
    let max_silence = match text {
        "none" => None,
        _ => Some(nbde_server::liveness::parse_duration(text)?),
    };
    Ok(MaxSilence { max_silence })
}

fn key_values(list: &[String]) -> Result<BTreeMap<String, String>, String> {
    list.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{t:?}: expected KEY=VALUE"))
        })
        .collect()
}

pub fn run(args: Args) -> Result<(), String> {
    let client = || Client::from_env(args.server.clone(), args.cacert.clone());
    match args.command {
        Command::Serve(a) => init::serve(a),
        Command::Init(a) => init::init(a),
        Command::Migrate(a) => init::migrate(a),
        Command::Rekey(a) => init::rekey(a),
        Command::Org(OrgArgs { command }) => org(&client()?, command),
        Command::Device(DeviceArgs { command }) => device(&client()?, command),
        Command::Allow(AllowArgs { command }) => {
            let (spec, change, json) = match command {
                AllowCommand::Add(a) => (
                    a.device,
                    SourceChange {
                        add: a.cidrs,
                        rm: vec![],
                    },
                    a.json,
                ),
                AllowCommand::Rm(a) => (
                    a.device,
                    SourceChange {
                        add: vec![],
                        rm: a.cidrs,
                    },
                    a.json,
                ),
            };
            let (org, device) = split_device(&spec)?;
            output(&client()?.sources(org, device, &change)?, json, device_line);
            Ok(())
        }
        Command::Netlist(NetlistArgs { command }) => netlist(&client()?, command),
        Command::Webhook(WebhookArgs { command }) => webhook(&client()?, command),
        Command::AllowOnce(a) => {
            let (org, device) = split_device(&a.device)?;
            let v = client()?.device_verb(org, device, "allow-once")?;
            output(&v, a.json, |v| {
                format!(
                    "allow-once #{} for {}/{}",
                    print::number(v.allow_once),
                    v.org,
                    v.name
                )
            });
            Ok(())
        }
        Command::Group(GroupArgs { command }) => group(&client()?, command),
        Command::Requests(a) => {
            let query = RequestQuery {
                org: a.org,
                all: a.all,
            };
            output(&client()?.requests(&query)?, a.json, print::requests);
            Ok(())
        }
        Command::Approve(a) => decide(&client()?, a.id, Verdict::Approve, a.json),
        Command::Deny(a) => decide(&client()?, a.id, Verdict::Deny, a.json),
        Command::Defer(a) => decide(&client()?, a.id, Verdict::Defer, a.json),
        Command::Account(AccountArgs {
            command: AccountCommand::Add(a),
        }) => {
            let account = NewAccount {
                name: a.name,
                role: a.role,
            };
            let v = client()?.add_account(&a.org, &account)?;
            output(&v, a.json, |v| {
                format!(
                    "account {} is {} of {}; token (shown once):\n{}",
                    v.account,
                    v.role.as_str(),
                    v.org,
                    v.token
                )
            });
            Ok(())
        }
        Command::Token(TokenArgs { command }) => {
            let client = client()?;
            match command {
                TokenCommand::Add(a) => output(&client.add_token()?, a.json, |v| {
                    format!("token {} (shown once):\n{}", v.token_id, v.token)
                }),
                TokenCommand::Revoke(a) => output(&client.revoke_token(a.id)?, a.json, |v| {
                    format!("revoked token {}", v.revoked)
                }),
            }
            Ok(())
        }
        Command::Audit(a) => {
            let query = AuditQuery {
                org: a.org,
                limit: None,
            };
            output(&client()?.audit(&query)?, a.json, print::audit);
            Ok(())
        }
        Command::History(a) => {
            let mut query = HistoryQuery {
                limit: Some(i64::from(a.limit)),
                ..HistoryQuery::default()
            };
            if let Some(spec) = &a.device {
                let (org, device) = split_device(spec)?;
                query.org = Some(org.to_owned());
                query.device = Some(device.to_owned());
            }
            output(&client()?.history(&query)?, a.json, print::history);
            Ok(())
        }
    }
}

fn org(client: &Client, command: OrgCommand) -> Result<(), String> {
    match command {
        OrgCommand::Add(a) => {
            let v = client.add_org(&a.name)?;
            output(&v, a.json, |v| {
                format!("{}\tthp={}", v.name, v.thp.as_deref().unwrap_or(""))
            });
        }
        OrgCommand::Set(a) => {
            if a.require_source == a.any_source {
                return Err("give one of --require-source and --any-source".into());
            }
            let settings = OrgSettings {
                require_source: a.require_source,
            };
            output(&client.set_org(&a.org, &settings)?, a.json, |v| {
                format!("{}\trequire_source={}", v.name, v.require_source)
            });
        }
        OrgCommand::Liveness(a) => {
            let v = client.set_org_liveness(&a.org, &max_silence(&a.max_silence)?)?;
            output(&v, a.json, |v| {
                let setting = v.max_silence.map(nbde_server::liveness::human);
                format!(
                    "{}\tmax_silence={}",
                    v.org,
                    setting.as_deref().unwrap_or("none")
                )
            });
        }
        OrgCommand::List(a) => output(&client.orgs()?, a.json, |v| {
            v.orgs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }),
        OrgCommand::EscrowKey(a) => {
            let key = match &a.jwk {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let jwk = serde_json::from_str(&text)
                        .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
                    client.set_escrow_key(&a.org, &NewEscrowKey { jwk })?
                }
                None => client.escrow_key(&a.org)?,
            };
            output(&key, a.json, print::escrow_key);
        }
    }
    Ok(())
}

fn device(client: &Client, command: DeviceCommand) -> Result<(), String> {
    let (spec, verb, json) = match command {
        DeviceCommand::Add(a) => {
            let device = NewDevice {
                name: a.name,
                curve: a.curve,
            };
            let v = client.add_device(&a.org, &device)?;
            // The two lines an operator pastes into a clevis binding.
            output(&v, a.json, |v| {
                format!("url: {}\nthp: {}", v.url, v.thp.as_deref().unwrap_or(""))
            });
            return Ok(());
        }
        DeviceCommand::List(a) => {
            let orgs = match a.org {
                Some(org) => vec![org],
                None => client.orgs()?.orgs.into_iter().map(|o| o.name).collect(),
            };
            let mut devices = Vec::new();
            for org in orgs {
                devices.extend(client.devices(&org)?.devices);
            }
            let list = nbde_server::api::DeviceList { devices };
            output(&list, a.json, |l| {
                l.devices
                    .iter()
                    .map(device_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            return Ok(());
        }
        DeviceCommand::Tag(a) => {
            let (org, device) = split_device(&a.device)?;
            let tags = Tags {
                tags: key_values(&a.tags)?,
            };
            output(&client.tag(org, device, &tags)?, a.json, device_line);
            return Ok(());
        }
        DeviceCommand::Show(a) => {
            let (org, device) = split_device(&a.device)?;
            output(&client.device(org, device)?, a.json, print::device_detail);
            return Ok(());
        }
        DeviceCommand::Mode(a) => {
            let (org, device) = split_device(&a.device)?;
            let mode = Mode::parse(&a.mode).ok_or_else(|| {
                format!("mode {:?}: use managed, managed+user or sovereign", a.mode)
            })?;
            let v = client.report_mode(org, device, mode)?;
            output(&v, a.json, print::device_detail);
            return Ok(());
        }
        DeviceCommand::Liveness(a) => {
            let (org, device) = split_device(&a.device)?;
            let v = client.set_device_liveness(org, device, &max_silence(&a.max_silence)?)?;
            output(&v, a.json, print::device_detail);
            return Ok(());
        }
        DeviceCommand::Escrow(EscrowArgs { command }) => return escrow(client, command),
        DeviceCommand::Disable(a) => (a.device, "disable", a.json),
        DeviceCommand::Enable(a) => (a.device, "enable", a.json),
        DeviceCommand::Rotate(a) => (a.device, "rotate", a.json),
        DeviceCommand::Retire(a) => (a.device, "retire", a.json),
    };
    let (org, device) = split_device(&spec)?;
    output(&client.device_verb(org, device, verb)?, json, device_line);
    Ok(())
}

fn escrow(client: &Client, command: EscrowCommand) -> Result<(), String> {
    match command {
        EscrowCommand::Get(a) => {
            let (org, device) = split_device(&a.device)?;
            let blob = client.escrow(org, device)?;
            match &a.out {
                Some(path) => {
                    write_private(path, blob.jwe.as_bytes())?;
                    output(&blob.info, a.json, |i| {
                        format!("{}: {}", path.display(), print::escrow_line(i))
                    });
                }
                None => output(&blob, a.json, |b| b.jwe.clone()),
            }
        }
        EscrowCommand::Rm(a) => {
            let (org, device) = split_device(&a.device)?;
            output(&client.rm_escrow(org, device)?, a.json, |v| {
                format!("removed the header backup of {}", v.removed)
            });
        }
    }
    Ok(())
}

/// Writes `data` to `path`, readable by its owner only (also when the file existed).
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    // Before the content goes in: `mode` applies only to a file this call created.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(data).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn webhook(client: &Client, command: WebhookCommand) -> Result<(), String> {
    match command {
        WebhookCommand::Add(a) => output(&client.add_webhook(&a.org, &a.url)?, a.json, |v| {
            format!("webhook {} {}\n{}", v.id, v.url, v.secret)
        }),
        WebhookCommand::List(a) => output(&client.webhooks(&a.org)?, a.json, |v| {
            v.webhooks
                .iter()
                .map(|w| {
                    format!(
                        "{}\t{}\t{}",
                        w.id,
                        w.url,
                        nbde_server::api::utc(w.created_at)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        WebhookCommand::Rm(a) => output(&client.rm_webhook(&a.org, a.id)?, a.json, |v| {
            format!("removed webhook {}", v.removed)
        }),
    }
    Ok(())
}

fn netlist(client: &Client, command: NetlistCommand) -> Result<(), String> {
    match command {
        NetlistCommand::Add(a) => {
            let list = Netlist {
                name: a.name,
                cidrs: a.cidrs,
            };
            output(&client.add_netlist(&a.org, &list)?, a.json, |v| {
                format!("netlist {}", v.name)
            });
        }
        NetlistCommand::Rm(a) => output(&client.rm_netlist(&a.org, &a.name)?, a.json, |v| {
            format!("removed {}", v.removed)
        }),
        NetlistCommand::Attach(a) => {
            let (org, device) = split_device(&a.device)?;
            let v = client.netlist_attach(org, device, &a.name, true)?;
            output(&v, a.json, device_line);
        }
        NetlistCommand::Detach(a) => {
            let (org, device) = split_device(&a.device)?;
            let v = client.netlist_attach(org, device, &a.name, false)?;
            output(&v, a.json, device_line);
        }
        NetlistCommand::List(a) => output(&client.netlists(&a.org)?, a.json, print::netlists),
    }
    Ok(())
}

fn group(client: &Client, command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::Add(a) => {
            let group = NewGroup {
                name: a.name,
                tags: key_values(&a.tag)?,
                approvers: a.approver,
                window_seconds: a.window,
            };
            output(&client.add_group(&a.org, &group)?, a.json, |v| {
                format!("group {} (approval valid {} s)", v.name, v.window_seconds)
            });
        }
        GroupCommand::Rm(a) => output(&client.rm_group(&a.org, &a.name)?, a.json, |v| {
            format!("removed {}", v.removed)
        }),
        GroupCommand::List(a) => output(&client.groups(&a.org)?, a.json, print::groups),
    }
    Ok(())
}

fn decide(client: &Client, id: i64, verdict: Verdict, json: bool) -> Result<(), String> {
    output(&client.decide(id, verdict)?, json, |v| {
        format!("request {}: {}", v.id, v.action.as_str())
    });
    Ok(())
}
