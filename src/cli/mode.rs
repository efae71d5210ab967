//! `mode` and `header`: a volume's mode and its transitions, and the header in escrow.
//! Messages go to standard error; a generated recovery key and `--json` to standard output.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use nbde_unlock::admin::{self, Admin, DeviceUrl};
use nbde_unlock::http::Timeouts;
use nbde_unlock::luks::{Format, UserKeyCost, Volume};
use nbde_unlock::mode::transition::{self, NewUserKey, Told};
use nbde_unlock::mode::{Mode, Survey, unique};
use nbde_unlock::{Error, Result, escrow, tty};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::args::{HeaderArgs, HeaderCommand, ModeArgs};
use super::luks::KeySource;
use super::{context, parse_config, timeouts, write_stdout};

/// The server base that replaces the bindings' (`--server`, else `$NBDE_SERVER`).
fn server_override(flag: &Option<String>) -> Option<String> {
    flag.clone().or_else(|| std::env::var("NBDE_SERVER").ok())
}

/// Every nbde-server device the volume is bound to, or was before it became sovereign.
fn bound_devices(survey: &Survey, server: Option<&str>) -> Vec<DeviceUrl> {
    let mut urls = survey.network_servers();
    if let Some(marker) = &survey.marker {
        urls.extend(marker.servers.iter().map(|s| s.url.clone()));
    }
    let devices = urls
        .iter()
        .filter_map(|u| transition::device_of(u, server))
        .collect();
    unique(devices)
}

pub fn mode(a: ModeArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let token = admin::operator_token(a.token.clone());
    let server = server_override(&a.server);
    if a.words.len() > 3 || a.words.len() == 2 {
        eprintln!("mode: give MODE, or managed+user PIN CONFIG");
        return Ok(ExitCode::from(2));
    }
    let Some(target) = a.words.first().map(String::as_str) else {
        return show(&mut volume, &a, token, server.as_deref());
    };
    let Some(target) = Mode::parse(target) else {
        eprintln!("mode: {target:?} is not a mode: managed, managed+user or sovereign");
        return Ok(ExitCode::from(2));
    };
    if target != Mode::ManagedUser && a.words.len() > 1 {
        eprintln!("mode: only managed+user takes PIN CONFIG");
        return Ok(ExitCode::from(2));
    }
    let outcome = match target {
        Mode::Sovereign => sovereign(&mut volume, &a, token.as_ref(), server.as_deref())?,
        Mode::ManagedUser => managed_user(&mut volume, &a)?,
        Mode::Managed => managed(&mut volume, &a)?,
        Mode::Unmanaged => unreachable!("Mode::parse does not give it"),
    };
    if target != Mode::Sovereign {
        let urls = Survey::of(&mut volume).network_servers();
        let told = transition::tell(
            &urls,
            target,
            token.as_ref(),
            server.as_deref(),
            timeouts(a.timeout),
        );
        report_told(&told, target);
    }
    let survey = Survey::of(&mut volume);
    eprintln!("{}: mode {}", a.device.display(), survey.mode.as_str());
    Ok(outcome)
}

/// Prints the mode; with a token, also what the server holds for the device.
fn show(
    volume: &mut Volume,
    a: &ModeArgs,
    token: Option<Zeroizing<String>>,
    server: Option<&str>,
) -> Result<ExitCode> {
    let survey = Survey::of(volume);
    let mut servers = Vec::new();
    for device in bound_devices(&survey, server) {
        let entry = match &token {
            None => json!({"device": device.url(), "escrow": "unknown (no operator token)"}),
            Some(token) => match Admin::new(&device.base, token.clone(), timeouts(a.timeout))
                .and_then(|admin| admin.device(&device))
            {
                Ok(view) => json!({
                    "device": device.url(),
                    "state": view.get("state"),
                    "reported_mode": view.get("mode"),
                    "escrow": view.get("escrow").cloned().unwrap_or(Value::Null),
                }),
                Err(e) => json!({"device": device.url(), "escrow": format!("unknown ({e})")}),
            },
        };
        servers.push(entry);
    }
    if a.json {
        let mut out = survey.to_json();
        out["device"] = json!(a.device.display().to_string());
        out["servers"] = json!(servers);
        write_stdout(format!("{out:#}\n").as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("{}\n", a.device.display());
    for line in survey.describe() {
        out.push_str(&format!("  {line}\n"));
    }
    for s in &servers {
        let escrow = match &s["escrow"] {
            Value::Null => "none".to_owned(),
            Value::String(text) => text.clone(),
            record => format!(
                "stored {} bytes at {} by {}",
                record["size"], record["uploaded_at"], record["uploaded_by"]
            ),
        };
        let state = s["state"]
            .as_str()
            .map_or(String::new(), |st| format!("device {st}, "));
        out.push_str(&format!(
            "  server {}: {state}header escrow: {escrow}\n",
            s["device"].as_str().unwrap_or("")
        ));
    }
    write_stdout(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn user_key(a: &ModeArgs) -> Result<Zeroizing<Vec<u8>>> {
    KeySource::from_option(a.key.as_deref()).read_asking("Enter the user key: ")
}

fn sovereign(
    volume: &mut Volume,
    a: &ModeArgs,
    token: Option<&Zeroizing<String>>,
    server: Option<&str>,
) -> Result<ExitCode> {
    if volume.format() == Format::Luks1 {
        return Err(Error::Config(format!(
            "{}: the sovereign marker is a LUKS2 token; convert the volume first (cryptsetup convert --type luks2)",
            a.device.display()
        )));
    }
    let key = user_key(a)?;
    // Refusals first: no user key, a wrong one, a server that cannot be told.
    transition::prove_user_key(volume, &key)?;
    let survey = Survey::of(volume);
    let mut urls = survey.network_servers();
    if let Some(marker) = &survey.marker {
        urls.extend(
            marker
                .servers
                .iter()
                .filter(|s| !s.told)
                .map(|s| s.url.clone()),
        );
    }
    if let Some(token) = token {
        transition::check_servers(&urls, token, server, timeouts(a.timeout))?;
    }
    let marker = transition::become_sovereign(volume, &key, now())?;
    let pending: Vec<String> = marker
        .servers
        .iter()
        .filter(|s| !s.told)
        .map(|s| s.url.clone())
        .collect();
    let told = transition::tell(
        &pending,
        Mode::Sovereign,
        token,
        server,
        timeouts(a.timeout),
    );
    report_told(&told, Mode::Sovereign);
    let marker = transition::record_told(volume, &told)?;
    if !marker.all_told() {
        eprintln!("{}: sovereign, server not told", a.device.display());
    }
    let failed = told.iter().any(|(_, t)| matches!(t, Told::Failed(_)));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report_told(told: &[(String, Told)], mode: Mode) {
    for (url, outcome) in told {
        match outcome {
            Told::Done if mode == Mode::Sovereign => {
                eprintln!("{url}: server told; the device's keys are destroyed")
            }
            Told::Done => eprintln!("{url}: server told: mode {}", mode.as_str()),
            Told::NotNbde => eprintln!("{url}: not an nbde-server device; nothing to tell"),
            Told::NoToken { command } => {
                eprintln!("{url}: server not told (no operator token); run:\n  {command}")
            }
            Told::Failed(e) => eprintln!("{url}: server not told: {e}"),
        }
    }
}

/// A new passphrase: `-k` (file or a line of standard input), else asked twice.
fn new_passphrase(a: &ModeArgs) -> Result<Zeroizing<Vec<u8>>> {
    let source = KeySource::from_option(a.key.as_deref());
    if a.key.is_some() || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return source.read_asking("");
    }
    let first = tty::passphrase("Enter a new user passphrase: ")?;
    let again = tty::passphrase("Enter it again: ")?;
    if first != again {
        return Err(Error::Config("the passphrases differ".into()));
    }
    Ok(first)
}

fn managed_user(volume: &mut Volume, a: &ModeArgs) -> Result<ExitCode> {
    let ctx = context(a.timeout, a.yes);
    let survey = Survey::of(volume);
    match survey.mode {
        Mode::Sovereign | Mode::Unmanaged => {
            let (Some(pin), Some(config)) = (a.words.get(1), a.words.get(2)) else {
                eprintln!(
                    "mode managed+user: {} has no network binding; give PIN CONFIG for one, as for bind",
                    a.device.display()
                );
                return Ok(ExitCode::from(2));
            };
            let config = parse_config(config)?;
            let key = user_key(a)?;
            let slot = transition::bind_network(volume, &key, pin, &config, &ctx)?;
            eprintln!("{}: bound keyslot {slot} to {pin}", a.device.display());
        }
        Mode::ManagedUser if !a.recovery_key => {
            if a.key.is_some() {
                let slot = transition::prove_user_key(volume, &user_key(a)?)?;
                eprintln!("{}: the user key opens keyslot {slot}", a.device.display());
            } else {
                eprintln!(
                    "{}: already has a user key (keyslot {:?})",
                    a.device.display(),
                    survey.user_slots()
                );
            }
        }
        Mode::Managed | Mode::ManagedUser => {
            let new_key = if a.recovery_key {
                NewUserKey::recovery()?
            } else {
                NewUserKey::Passphrase(new_passphrase(a)?)
            };
            let cost = UserKeyCost {
                time_ms: a.iter_time,
                memory_kib: a.pbkdf_memory,
            };
            let slot = transition::enrol_user_key(volume, &new_key, &cost, &ctx)?;
            if let NewUserKey::RecoveryKey(text) = &new_key {
                eprintln!("recovery key for keyslot {slot}; it is shown once, keep it offline:");
                let mut line = Zeroizing::new(text.as_bytes().to_vec());
                line.push(b'\n');
                write_stdout(&line)?;
                let _ = std::io::stdout().flush();
            }
            eprintln!(
                "{}: user key enrolled in keyslot {slot} and proven",
                a.device.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn managed(volume: &mut Volume, a: &ModeArgs) -> Result<ExitCode> {
    if Survey::of(volume).mode == Mode::Sovereign {
        return Err(Error::Config(format!(
            "{} is sovereign: bind it again first (`mode managed+user PIN CONFIG`)",
            a.device.display()
        )));
    }
    if !a.force {
        return Err(Error::Config(format!(
            "mode managed removes every user key of {}, leaving only the network to open it: add --force",
            a.device.display()
        )));
    }
    let removed = transition::remove_user_keys(volume, &context(a.timeout, a.yes))?;
    eprintln!(
        "{}: the network opened it; removed user keyslot(s) {removed:?}",
        a.device.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The device the header verbs talk about: `--url`, else the first nbde-server binding.
fn escrow_device(
    url: &Option<String>,
    server: Option<&str>,
    volume: Option<&mut Volume>,
) -> Result<DeviceUrl> {
    if let Some(url) = url {
        return transition::device_of(url, server)
            .ok_or_else(|| Error::Config(format!("{url} is not BASE/o/ORG/d/DEVICE")));
    }
    let found = volume.and_then(|v| bound_devices(&Survey::of(v), server).into_iter().next());
    found.ok_or_else(|| {
        Error::Config(
            "no nbde-server binding names the device; give --url BASE/o/ORG/d/DEVICE".into(),
        )
    })
}

fn admin_for(device: &DeviceUrl, token: Option<String>, timeouts: Timeouts) -> Result<Admin> {
    let token = admin::operator_token(token)
        .ok_or_else(|| Error::Config("set NBDE_TOKEN (or --token) to an owner's token".into()))?;
    Admin::new(&device.base, token, timeouts)
}

pub fn header(a: HeaderArgs) -> Result<ExitCode> {
    match a.command {
        HeaderCommand::Escrow(a) => {
            let mut volume = Volume::open(&a.device)?;
            let server = server_override(&a.server);
            let device = escrow_device(&a.url, server.as_deref(), Some(&mut volume))?;
            let admin = admin_for(&device, a.token, timeouts(a.timeout))?;
            let record = escrow::escrow(&mut volume, &admin, &device)?;
            eprintln!(
                "{}: header sealed to escrow key {} and stored for {} ({} bytes)",
                a.device.display(),
                record["kid"].as_str().unwrap_or("?"),
                device.spec(),
                record["size"]
            );
        }
        HeaderCommand::Restore(a) => {
            let text = std::fs::read(&a.escrow_key)
                .map(Zeroizing::new)
                .map_err(Error::io(a.escrow_key.display().to_string()))?;
            let key = serde_json::from_slice(&text)
                .ok()
                .and_then(|v| nbde_proto::Jwk::from_value(v).ok())
                .ok_or_else(|| Error::Config(format!("{} is not a JWK", a.escrow_key.display())))?;
            let server = server_override(&a.server);
            let mut volume = Volume::open(&a.device).ok();
            let device = escrow_device(&a.url, server.as_deref(), volume.as_mut())?;
            drop(volume);
            let admin = admin_for(&device, a.token, timeouts(a.timeout))?;
            let uuid = escrow::restore(&a.device, &admin, &device, &key)?;
            eprintln!(
                "{}: header of volume {uuid} restored from escrow",
                a.device.display()
            );
        }
        HeaderCommand::Keygen(a) => {
            use std::os::unix::fs::OpenOptionsExt;
            let curve = nbde_proto::Curve::from_name(&a.curve).map_err(Error::proto("curve"))?;
            let (private, public) = escrow::generate_key(curve)?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&a.private)
                .and_then(|mut f| f.write_all(private.as_bytes()))
                .map_err(Error::io(a.private.display().to_string()))?;
            write_stdout(format!("{public}\n").as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
