//! Reading bindings without changing them: clevis's `list` wording, the pin config that
//! made a JWE (for regen and edit), and which bound tang keys a server no longer advertises.

use nbde_proto::clevis::Sss;
use nbde_proto::tpm2::Tpm2;
use nbde_proto::{ClevisJwe, Jws, KeySet, Pin, ThumbprintHash};
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
        .map(|b| match b.jwe.map(ClevisJwe::parse) {
            Ok(Ok(clevis)) => format!("{}: {}", b.slot, describe(&clevis)),
            Ok(Err(e)) => format!("{}: unreadable binding ({e})", b.slot),
            Err(reason) => format!("{}: unreadable binding ({reason})", b.slot),
        })
        .collect())
}

/// `PIN 'CONFIG'` in clevis's own wording.
pub fn describe(clevis: &ClevisJwe) -> String {
    format!("{} '{}'", clevis.name(), listed_config(clevis))
}

/// The config `list` shows: tang's url, tpm2's policy, sss's threshold and children.
pub fn listed_config(clevis: &ClevisJwe) -> String {
    match &clevis.pin {
        Pin::Tang(tang) => json!({ "url": tang.url }).to_string(),
        Pin::Null(null) if null.key.is_none() => json!({"fail": true}).to_string(),
        Pin::Null(_) => "{}".into(),
        Pin::Tpm2(tpm2) => tpm2_config(tpm2).to_string(),
        Pin::Other { .. } => "{}".into(),
        Pin::Sss(sss) => listed_sss(sss),
    }
}

/// The config that made a tpm2 binding, members in clevis's order (`list` prints it, a
/// rebind seals to the same policy again).
fn tpm2_config(tpm2: &Tpm2) -> Value {
    let mut config = Map::new();
    config.insert("hash".into(), tpm2.hash.clone().into());
    config.insert("key".into(), tpm2.key.clone().into());
    if let Some(pcrs) = &tpm2.pcrs {
        config.insert("pcr_bank".into(), pcrs.bank.clone().into());
        config.insert("pcr_ids".into(), pcrs.ids_text().into());
    }
    Value::Object(config)
}

fn listed_sss(sss: &Sss) -> String {
    let mut by_pin: Vec<(&str, Vec<String>)> =
        vec![("tang", vec![]), ("tpm2", vec![]), ("sss", vec![])];
    for child in sss.children.iter().flatten() {
        if let Some((_, list)) = by_pin.iter_mut().find(|(pin, _)| *pin == child.name()) {
            list.push(listed_config(child));
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
    format!(
        "{{\"t\":{},\"pins\":{{{}}}}}",
        sss.threshold,
        parts.join(",")
    )
}

/// The pin config that made `clevis`, for rebinding: tang keeps its url and CA file, and,
/// when `pinned`, stays pinned to the signing key it trusted before (the recorded `thp`,
/// or for a stock clevis binding the first signing key of its stored adv), with the old
/// keys allowed to vouch for it. sss keeps its threshold and children.
pub fn config_of(clevis: &ClevisJwe, pinned: bool) -> Result<(String, Value)> {
    let config = match &clevis.pin {
        Pin::Tang(tang) => {
            let mut config = Map::new();
            config.insert("url".into(), tang.url.clone().into());
            if let Some(cacert) = &tang.cacert {
                config.insert("cacert".into(), cacert.clone().into());
            }
            let thp = tang.thp.clone().or_else(|| {
                let first = tang.adv.signing_keys().next()?;
                first.thumbprint(ThumbprintHash::S256).ok()
            });
            if pinned && let Some(thp) = thp {
                config.insert("thp".into(), thp.into());
                config.insert("trusted_keys".into(), tang.adv.to_value());
            }
            Value::Object(config)
        }
        Pin::Null(null) if null.key.is_none() => json!({"fail": true}),
        Pin::Null(_) => json!({}),
        Pin::Tpm2(tpm2) => tpm2_config(tpm2),
        Pin::Sss(sss) => {
            let mut pins: Map<String, Value> = Map::new();
            for child in &sss.children {
                let child = child
                    .as_ref()
                    .map_err(|e| Error::proto("sss child JWE")(e.clone()))?;
                let (name, config) = config_of(child, pinned)?;
                if let Value::Array(list) = pins.entry(name).or_insert_with(|| json!([])) {
                    list.push(config);
                }
            }
            json!({"t": sss.threshold, "pins": pins})
        }
        Pin::Other { name, .. } => return Err(Error::UnsupportedPin(name.clone())),
    };
    Ok((clevis.name().to_owned(), config))
}

/// A tang server of a binding and the thumbprints of its bound keys that the server's
/// current advertisement no longer holds (the keys were rotated).
#[derive(Debug)]
pub struct Rotation {
    pub url: String,
    pub missing: Vec<String>,
}

/// For each tang server of `slot`'s binding (through sss too), the bound keys it no longer
/// advertises, as `clevis luks report` compares them. A server that cannot be asked, or
/// whose advertisement does not verify, is an error: nothing can be said about it.
pub fn report(volume: &mut Volume, slot: u32, ctx: &Context) -> Result<Vec<Rotation>> {
    let jwe = volume.binding(slot)?.jwe.map_err(Error::Config)?;
    let clevis = pin::parse(jwe)?;
    let mut rotations = Vec::new();
    for tang in clevis.tang_pins() {
        let current = current_keys(&tang.url, tang.cacert.as_deref(), ctx)?;
        let missing = tang
            .adv
            .keys()
            .iter()
            .filter_map(|key| key.thumbprint(ThumbprintHash::S256).ok())
            .filter(|thp| !current.keys().iter().any(|k| k.matches_thumbprint(thp)))
            .collect();
        rotations.push(Rotation {
            url: tang.url.clone(),
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
