//! The LUKS verbs: bind, unbind, list, pass, open, report, regen. Each header change runs
//! under a header backup that is restored if a later step fails, and the steps are ordered
//! so that a kill at any point leaves the old keys working.

use std::sync::mpsc;

use nbde_proto::{Jwe, Jws, KeySet, ThumbprintHash, b64};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::http::Client;
use crate::luks::{HeaderBackup, Volume};
use crate::pin::{self, Context};

/// Bytes of randomness in a bound key; base64url of it is the passphrase (as clevis ≥ 20).
const BOUND_KEY_BYTES: usize = 40;

/// A fresh passphrase for a bound keyslot: 40 random bytes, base64url (54 characters).
pub fn new_bound_key() -> Result<Zeroizing<Vec<u8>>> {
    let mut raw = Zeroizing::new([0u8; BOUND_KEY_BYTES]);
    getrandom::fill(&mut raw[..])
        .map_err(|_| Error::Config("random number generator failed".into()))?;
    Ok(Zeroizing::new(b64::encode(&raw[..]).into_bytes()))
}

/// Runs `change` on the header; if it fails, puts the header back as it was.
fn with_backup<T>(volume: &mut Volume, change: impl FnOnce(&mut Volume) -> Result<T>) -> Result<T> {
    let backup = HeaderBackup::take(volume)?;
    match change(volume) {
        Ok(value) => Ok(value),
        Err(error) => match volume.restore_header(backup.file()) {
            Ok(()) => Err(error),
            Err(restore) => Err(Error::Luks {
                step: "restore header after a failed change",
                detail: format!("{error}; then: {restore}"),
            }),
        },
    }
}

/// Binds `pin`/`config` to a new keyslot: the existing key authorizes the new slot.
pub fn bind(
    volume: &mut Volume,
    slot: Option<u32>,
    existing_key: &[u8],
    pin_name: &str,
    config: &Value,
    ctx: &Context,
) -> Result<u32> {
    if let Some(slot) = slot
        && volume.active_keyslots().contains(&slot)
    {
        return Err(Error::Config(format!("keyslot {slot} is in use")));
    }
    // Check the existing key first: a wrong one should fail before any network or header work.
    volume.test_key(None, existing_key)?;
    let key = new_bound_key()?;
    // The network part, before the header is touched.
    let jwe = pin::encrypt(pin_name, config, &key, ctx)?;
    bind_jwe(volume, slot, existing_key, &key, &jwe)
}

fn bind_jwe(
    volume: &mut Volume,
    slot: Option<u32>,
    existing_key: &[u8],
    key: &[u8],
    jwe: &Jwe,
) -> Result<u32> {
    with_backup(volume, |volume| {
        volume.remove_orphan_tokens()?;
        let slot = volume.add_bound_keyslot(slot, existing_key, key)?;
        volume.add_clevis_token(slot, jwe)?;
        // Read back what a later unlock will read.
        volume.test_key(Some(slot), key)?;
        let token = volume.clevis_token_for(slot)?;
        match token.jwe {
            Ok(stored) if stored == *jwe => Ok(slot),
            _ => Err(Error::Luks {
                step: "verify token",
                detail: "the token read back differs from the one written".into(),
            }),
        }
    })
}

/// Removes the binding of `slot`: its clevis token and the keyslot. Refuses to remove the
/// last keyslot that opens the volume.
pub fn unbind(volume: &mut Volume, slot: u32) -> Result<()> {
    let active = volume.active_keyslots();
    if !active.contains(&slot) {
        return Err(Error::Config(format!("keyslot {slot} is not in use")));
    }
    if active.len() == 1 {
        return Err(Error::Config(format!(
            "keyslot {slot} is the last one that opens {}; add another key first",
            volume.path().display()
        )));
    }
    let tokens: Vec<u32> = volume
        .clevis_tokens()
        .into_iter()
        .filter(|t| t.keyslots.contains(&slot))
        .map(|t| t.token)
        .collect();
    with_backup(volume, |volume| {
        // Slot first: a kill after it leaves an orphan token, which the next bind removes.
        volume.destroy_keyslot(slot)?;
        for token in tokens {
            volume.remove_token(token)?;
        }
        Ok(())
    })
}

/// Recovers the passphrase of the clevis binding of `slot`.
pub fn recover_slot_key(
    volume: &mut Volume,
    slot: u32,
    ctx: &Context,
) -> Result<Zeroizing<Vec<u8>>> {
    let token = volume.clevis_token_for(slot)?;
    let jwe = token.jwe.map_err(Error::Config)?;
    pin::decrypt(&jwe, ctx)
}

/// Recovers any clevis binding and activates the volume as `name` through that binding's
/// own keyslot. All tokens are tried at once; the first key that opens its slot wins.
pub fn open(volume: &mut Volume, name: &str, ctx: &Context) -> Result<u32> {
    let tokens = volume.clevis_tokens();
    if tokens.is_empty() {
        return Err(Error::Config(format!(
            "{}: no clevis binding",
            volume.path().display()
        )));
    }
    let (sender, receiver) = mpsc::channel();
    let mut failures = Vec::new();
    let mut pending = 0;
    for token in tokens {
        match token.jwe {
            Ok(jwe) if !token.keyslots.is_empty() => {
                let sender = sender.clone();
                let ctx = *ctx;
                pending += 1;
                std::thread::spawn(move || {
                    let _ = sender.send((token.keyslots, pin::decrypt(&jwe, &ctx)));
                });
            }
            Ok(_) => failures.push(Error::Config(format!(
                "token {} has no keyslot",
                token.token
            ))),
            Err(reason) => failures.push(Error::Config(reason)),
        }
    }
    drop(sender);
    for _ in 0..pending {
        let Ok((slots, result)) = receiver.recv() else {
            break;
        };
        match result {
            Ok(key) => {
                for slot in slots {
                    match volume.activate(name, slot, &key) {
                        Ok(()) => return Ok(slot),
                        Err(e) => failures.push(e),
                    }
                }
            }
            Err(e) => failures.push(e),
        }
    }
    Err(Error::Threshold {
        needed: 1,
        succeeded: 0,
        failures,
    })
}

/// `SLOT: PIN 'CONFIG'` for each clevis binding, as `clevis luks list` prints it.
pub fn list(volume: &mut Volume) -> Vec<String> {
    let mut lines: Vec<(u32, String)> = Vec::new();
    for token in volume.clevis_tokens() {
        let description = match &token.jwe {
            Ok(jwe) => describe(jwe),
            Err(reason) => format!("unreadable token ({reason})"),
        };
        for &slot in &token.keyslots {
            lines.push((slot, format!("{slot}: {description}")));
        }
    }
    lines.sort_by_key(|(slot, _)| *slot);
    lines.into_iter().map(|(_, line)| line).collect()
}

fn clevis_member<'a>(jwe: &'a Jwe, pin: &str) -> Option<&'a Value> {
    jwe.header().get("clevis").and_then(|c| c.get(pin))
}

/// `PIN 'CONFIG'` in clevis's own wording.
fn describe(jwe: &Jwe) -> String {
    let Ok(pin_name) = pin::pin_of(jwe) else {
        return "unknown pin ''".into();
    };
    match pin_name {
        "tang" => {
            let url = clevis_member(jwe, "tang")
                .and_then(|t| t.get("url"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("tang '{{\"url\":\"{url}\"}}'")
        }
        "tpm2" => {
            let tpm2 = clevis_member(jwe, "tpm2");
            let fields: Vec<String> = ["hash", "key", "pcr_bank", "pcr_ids", "pcr_digest"]
                .iter()
                .filter_map(|k| {
                    let v = tpm2?.get(*k)?;
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    Some(format!("\"{k}\":\"{text}\""))
                })
                .collect();
            format!("tpm2 '{{{}}}'", fields.join(","))
        }
        "sss" => format!("sss '{}'", describe_sss(jwe)),
        other => format!("unknown pin '{other}'"),
    }
}

fn describe_sss(jwe: &Jwe) -> String {
    let sss = clevis_member(jwe, "sss");
    let t = sss
        .and_then(|s| s.get("t"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut by_pin: Vec<(&str, Vec<String>)> =
        vec![("tang", vec![]), ("tpm2", vec![]), ("sss", vec![])];
    let children = sss.and_then(|s| s.get("jwe")).and_then(Value::as_array);
    for child in children.into_iter().flatten() {
        let Some(child) = child.as_str().and_then(|c| Jwe::parse_compact(c).ok()) else {
            continue;
        };
        let described = describe(&child);
        let Some((name, config)) = described.split_once(' ') else {
            continue;
        };
        if let Some((_, list)) = by_pin.iter_mut().find(|(pin, _)| *pin == name) {
            list.push(config.trim_matches('\'').to_owned());
        }
    }
    let mut parts = Vec::new();
    for (name, configs) in by_pin {
        match (name, configs.len()) {
            (_, 0) => {}
            // One nested sss is an object, as clevis prints it.
            ("sss", 1) => parts.push(format!("\"sss\":{}", configs[0])),
            (name, _) => parts.push(format!("\"{name}\":[{}]", configs.join(","))),
        }
    }
    format!("{{\"t\":{t},\"pins\":{{{}}}}}", parts.join(","))
}

/// One tang server's state in a report.
#[derive(Debug)]
pub struct TangStatus {
    pub url: String,
    pub kid: String,
    pub advertised: std::result::Result<bool, String>,
}

fn tang_bindings(jwe: &Jwe, out: &mut Vec<(String, String, Option<String>)>) {
    match pin::pin_of(jwe) {
        Ok("tang") => {
            let tang = clevis_member(jwe, "tang");
            let url = tang.and_then(|t| t.get("url")).and_then(Value::as_str);
            let cacert = tang.and_then(|t| t.get("cacert")).and_then(Value::as_str);
            if let (Some(url), Ok(kid)) = (url, jwe.header_str("kid")) {
                out.push((url.to_owned(), kid.to_owned(), cacert.map(str::to_owned)));
            }
        }
        Ok("sss") => {
            let children = clevis_member(jwe, "sss")
                .and_then(|s| s.get("jwe"))
                .and_then(Value::as_array);
            for child in children.into_iter().flatten() {
                if let Some(child) = child.as_str().and_then(|c| Jwe::parse_compact(c).ok()) {
                    tang_bindings(&child, out);
                }
            }
        }
        _ => {}
    }
}

/// Whether each tang server of `slot`'s binding still advertises the key it was bound to.
pub fn report(volume: &mut Volume, slot: u32, ctx: &Context) -> Result<Vec<TangStatus>> {
    let jwe = volume.clevis_token_for(slot)?.jwe.map_err(Error::Config)?;
    let mut bindings = Vec::new();
    tang_bindings(&jwe, &mut bindings);
    Ok(bindings
        .into_iter()
        .map(|(url, kid, cacert)| {
            let advertised = current_keys(&url, cacert.as_deref(), ctx)
                .map(|keys| {
                    keys.keys()
                        .iter()
                        .any(|k| k.allows("deriveKey") && k.matches_thumbprint(&kid))
                })
                .map_err(|e| e.to_string());
            TangStatus {
                url,
                kid,
                advertised,
            }
        })
        .collect())
}

fn current_keys(url: &str, cacert: Option<&str>, ctx: &Context) -> Result<KeySet> {
    let adv_url = format!("{}/adv", url.trim_end_matches('/'));
    let client = Client::new(ctx.timeouts, cacert, &adv_url)?;
    let body = client.get(&adv_url)?;
    let text = String::from_utf8_lossy(&body);
    let jws = Jws::parse(&text).map_err(Error::proto("advertisement"))?;
    KeySet::from_verified_adv(&jws).map_err(Error::proto("advertisement"))
}

/// The pin config that made `jwe`, for rebinding: tang keeps its url and CA file, and,
/// unless `trust_anew`, stays pinned to the signing key it trusted before (the recorded
/// `thp`, or for a stock clevis binding the first signing key of its stored adv), with the
/// old keys allowed to vouch for it. sss keeps its threshold and children.
pub fn config_of(jwe: &Jwe, trust_anew: bool) -> Result<(String, Value)> {
    let pin_name = pin::pin_of(jwe)?.to_owned();
    let config = match pin_name.as_str() {
        "tang" => {
            let tang = clevis_member(jwe, "tang")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let mut config = Map::new();
            for member in ["url", "cacert"] {
                if let Some(v) = tang.get(member) {
                    config.insert(member.into(), v.clone());
                }
            }
            let old_keys = tang.get("adv").and_then(|adv| KeySet::from_value(adv).ok());
            let recorded = tang.get("thp").and_then(Value::as_str).map(str::to_owned);
            let thp = recorded.or_else(|| {
                let first = old_keys.as_ref()?.signing_keys().next()?;
                first.thumbprint(ThumbprintHash::S256).ok()
            });
            if !trust_anew && let Some(thp) = thp {
                config.insert("thp".into(), thp.into());
                if let Some(old_keys) = old_keys {
                    config.insert("trusted_keys".into(), old_keys.to_value());
                }
            }
            Value::Object(config)
        }
        "sss" => {
            let sss = clevis_member(jwe, "sss");
            let t = sss.and_then(|s| s.get("t")).cloned().unwrap_or(json!(1));
            let mut pins: Map<String, Value> = Map::new();
            let children = sss.and_then(|s| s.get("jwe")).and_then(Value::as_array);
            for child in children.into_iter().flatten() {
                let child = child
                    .as_str()
                    .ok_or_else(|| Error::Config("sss child is not a compact JWE".into()))
                    .and_then(|c| Jwe::parse_compact(c).map_err(Error::proto("sss child JWE")))?;
                let (name, config) = config_of(&child, trust_anew)?;
                match pins.entry(name).or_insert_with(|| Value::Array(vec![])) {
                    Value::Array(list) => list.push(config),
                    _ => unreachable!("inserted as array"),
                }
            }
            json!({"t": t, "pins": pins})
        }
        other => return Err(Error::UnsupportedPin(other.to_owned())),
    };
    Ok((pin_name, config))
}

/// Rebinds `slot` to the servers' current keys with the same config: a new key in a new
/// slot, then the old binding removed. At every point one binding works.
pub fn regen(volume: &mut Volume, slot: u32, ctx: &Context) -> Result<u32> {
    let token = volume.clevis_token_for(slot)?;
    let old_jwe = token.jwe.map_err(Error::Config)?;
    let old_key = pin::decrypt(&old_jwe, ctx)?;
    volume.test_key(Some(slot), &old_key)?;
    let (pin_name, config) = config_of(&old_jwe, ctx.assume_yes)?;
    let key = new_bound_key()?;
    let jwe = pin::encrypt(&pin_name, &config, &key, ctx)?;
    let new_slot = bind_jwe(volume, None, &old_key, &key, &jwe)?;
    unbind(volume, slot)?;
    Ok(new_slot)
}
