//! Reading bindings without changing them: clevis's `list` wording, the pin config that
//! made a JWE (for regen and edit), and which bound tang keys a server no longer advertises.

use nbde_proto::{Jwe, Jws, KeySet, ThumbprintHash};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::http::{Client, http_url};
use crate::luks::Volume;
use crate::pin::{self, Context};

/// `SLOT: PIN 'CONFIG'` for each clevis binding of an active keyslot (only `slot`'s if
/// given), as `clevis luks list` prints it.
pub fn list(volume: &mut Volume, slot: Option<u32>) -> Result<Vec<String>> {
    let bindings: Vec<_> = volume
        .bindings()
        .into_iter()
        .filter(|b| b.active && slot.is_none_or(|s| s == b.slot))
        .collect();
    if let Some(slot) = slot
        && bindings.is_empty()
    {
        return Err(Error::Config(format!(
            "keyslot {slot} of {} has no clevis binding",
            volume.path().display()
        )));
    }
    Ok(bindings
        .into_iter()
        .map(|b| match &b.jwe {
            Ok(jwe) => format!("{}: {}", b.slot, describe(jwe)),
            Err(reason) => format!("{}: unreadable binding ({reason})", b.slot),
        })
        .collect())
}

fn clevis_member<'a>(jwe: &'a Jwe, pin: &str) -> Option<&'a Value> {
    jwe.header().get("clevis").and_then(|c| c.get(pin))
}

/// `PIN 'CONFIG'` in clevis's own wording.
pub fn describe(jwe: &Jwe) -> String {
    let Ok(pin_name) = pin::pin_of(jwe) else {
        return "unknown pin ''".into();
    };
    format!("{pin_name} '{}'", listed_config(jwe))
}

/// The config `list` shows: tang's url, tpm2's policy, sss's threshold and children.
pub fn listed_config(jwe: &Jwe) -> String {
    match pin::pin_of(jwe) {
        Ok("tang") => {
            let url = clevis_member(jwe, "tang")
                .and_then(|t| t.get("url"))
                .and_then(Value::as_str)
                .unwrap_or("");
            json!({ "url": url }).to_string()
        }
        Ok("tpm2") => {
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
            format!("{{{}}}", fields.join(","))
        }
        Ok("sss") => listed_sss(jwe),
        _ => String::new(),
    }
}

fn sss_children(jwe: &Jwe) -> impl Iterator<Item = Jwe> + '_ {
    clevis_member(jwe, "sss")
        .and_then(|s| s.get("jwe"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|child| child.as_str().and_then(|c| Jwe::parse_compact(c).ok()))
}

fn listed_sss(jwe: &Jwe) -> String {
    let t = clevis_member(jwe, "sss")
        .and_then(|s| s.get("t"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut by_pin: Vec<(&str, Vec<String>)> =
        vec![("tang", vec![]), ("tpm2", vec![]), ("sss", vec![])];
    for child in sss_children(jwe) {
        let Ok(name) = pin::pin_of(&child) else {
            continue;
        };
        if let Some((_, list)) = by_pin.iter_mut().find(|(pin, _)| *pin == name) {
            list.push(listed_config(&child));
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

/// The pin config that made `jwe`, for rebinding: tang keeps its url and CA file, and,
/// when `pinned`, stays pinned to the signing key it trusted before (the recorded `thp`,
/// or for a stock clevis binding the first signing key of its stored adv), with the old
/// keys allowed to vouch for it. sss keeps its threshold and children.
pub fn config_of(jwe: &Jwe, pinned: bool) -> Result<(String, Value)> {
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
            if pinned && let Some(thp) = thp {
                config.insert("thp".into(), thp.into());
                if let Some(old_keys) = old_keys {
                    config.insert("trusted_keys".into(), old_keys.to_value());
                }
            }
            Value::Object(config)
        }
        "null" => clevis_member(jwe, "null")
            .filter(|n| n.get("jwk").is_none())
            .map_or(json!({}), |_| json!({"fail": true})),
        "sss" => {
            let t = clevis_member(jwe, "sss")
                .and_then(|s| s.get("t"))
                .cloned()
                .unwrap_or(json!(1));
            let mut pins: Map<String, Value> = Map::new();
            for child in sss_children(jwe) {
                let (name, config) = config_of(&child, pinned)?;
                if let Value::Array(list) = pins.entry(name).or_insert_with(|| json!([])) {
                    list.push(config);
                }
            }
            json!({"t": t, "pins": pins})
        }
        other => return Err(Error::UnsupportedPin(other.to_owned())),
    };
    Ok((pin_name, config))
}

/// A tang server of a binding and the thumbprints of its bound keys that the server's
/// current advertisement no longer holds (the keys were rotated).
#[derive(Debug)]
pub struct Rotation {
    pub url: String,
    pub missing: Vec<String>,
}

fn tang_members(jwe: &Jwe, out: &mut Vec<Map<String, Value>>) {
    match pin::pin_of(jwe) {
        Ok("tang") => {
            if let Some(tang) = clevis_member(jwe, "tang").and_then(Value::as_object) {
                out.push(tang.clone());
            }
        }
        Ok("sss") => sss_children(jwe).for_each(|child| tang_members(&child, out)),
        _ => {}
    }
}

/// For each tang server of `slot`'s binding (through sss too), the bound keys it no longer
/// advertises, as `clevis luks report` compares them. A server that cannot be asked, or
/// whose advertisement does not verify, is an error: nothing can be said about it.
pub fn report(volume: &mut Volume, slot: u32, ctx: &Context) -> Result<Vec<Rotation>> {
    let jwe = volume.binding(slot)?.jwe.map_err(Error::Config)?;
    let mut servers = Vec::new();
    tang_members(&jwe, &mut servers);
    let mut rotations = Vec::new();
    for tang in servers {
        let url = tang.get("url").and_then(Value::as_str).unwrap_or_default();
        let cacert = tang.get("cacert").and_then(Value::as_str);
        let bound = tang
            .get("adv")
            .map(KeySet::from_value)
            .transpose()
            .map_err(Error::proto("clevis.tang.adv"))?
            .ok_or_else(|| Error::Config(format!("{url}: binding holds no keys")))?;
        let current = current_keys(url, cacert, ctx)?;
        let missing = bound
            .keys()
            .iter()
            .filter_map(|key| key.thumbprint(ThumbprintHash::S256).ok())
            .filter(|thp| !current.keys().iter().any(|k| k.matches_thumbprint(thp)))
            .collect();
        rotations.push(Rotation {
            url: url.to_owned(),
            missing,
        });
    }
    Ok(rotations)
}

fn current_keys(url: &str, cacert: Option<&str>, ctx: &Context) -> Result<KeySet> {
    let adv_url = format!("{}/adv", http_url(url)?.trim_end_matches('/'));
    let client = Client::new(ctx.timeouts, cacert, &adv_url)?;
    let body = client.get(&adv_url)?;
    let text = String::from_utf8_lossy(&body);
    let jws = Jws::parse(&text).map_err(|e| Error::Reply {
        url: adv_url.clone(),
        detail: e.to_string(),
    })?;
    KeySet::from_verified_adv(&jws).map_err(|e| Error::Reply {
        url: adv_url,
        detail: e.to_string(),
    })
}
