//! A clevis token read once into types — `{"type":"clevis","keyslots":["N",…],"jwe":{…}}`
//! — for `validate` (refuse what no recovery could use) and `dump` (what `luksDump` shows).

use nbde_proto::{ClevisJwe, Jwe, Pin, ThumbprintHash};
use serde_json::Value;

/// A clevis token that a recovery can use: its parsed pin (its keyslots are checked,
/// and libcryptsetup itself tries them with the key).
pub struct ClevisToken {
    pub pin: ClevisJwe,
}

/// Reads a token's JSON text; the error says what is wrong in the words of its fields.
pub fn parse(text: &str) -> Result<ClevisToken, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    from_value(&json)
}

pub fn from_value(json: &Value) -> Result<ClevisToken, String> {
    if json.get("type").and_then(Value::as_str) != Some("clevis") {
        return Err("\"type\" is not \"clevis\"".into());
    }
    let listed = json
        .get("keyslots")
        .and_then(Value::as_array)
        .ok_or("\"keyslots\" is not a list")?;
    for slot in listed {
        slot.as_str()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|n| *n < 32)
            .ok_or_else(|| format!("keyslot {slot} is not a keyslot number"))?;
    }
    if listed.is_empty() {
        return Err("\"keyslots\" names no keyslot".into());
    }
    let jwe = json.get("jwe").ok_or("no \"jwe\" member")?;
    let jwe = Jwe::from_flattened(jwe).map_err(|e| format!("\"jwe\": {e}"))?;
    // A pin this handler does not recover (tpm1, pkcs11, …) is still a valid clevis token: stock
    // `clevis luks bind` imports it through this very check.
    let pin = ClevisJwe::parse(jwe).map_err(|e| format!("\"jwe\" header: {e}"))?;
    Ok(ClevisToken { pin })
}

/// The lines `luksDump` shows under the token: the pin, then each server with the
/// thumbprints that identify its keys, sss children indented.
pub fn dump_lines(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(token) => {
            let mut lines = Vec::new();
            pin_lines(&token.pin, 0, &mut lines);
            lines
        }
        Err(reason) => vec![format!("clevis:     unusable: {reason}")],
    }
}

fn pin_lines(pin: &ClevisJwe, depth: usize, lines: &mut Vec<String>) {
    let indent = "  ".repeat(depth);
    match &pin.pin {
        Pin::Tang(tang) => {
            lines.push(format!("{indent}clevis pin: tang"));
            lines.push(format!("{indent}tang url:   {}", tang.url));
            let signing: Vec<String> = tang
                .adv
                .signing_keys()
                .filter_map(|k| k.thumbprint(ThumbprintHash::S256).ok())
                .collect();
            let thp = tang.thp.clone().unwrap_or_else(|| signing.join(", "));
            lines.push(format!("{indent}tang thp:   {thp}"));
            lines.push(format!("{indent}tang kid:   {}", tang.kid));
            if let Some(cacert) = &tang.cacert {
                let shown = if cacert.trim_start().starts_with("-----BEGIN") {
                    "pinned in the binding (PEM)"
                } else {
                    cacert
                };
                lines.push(format!("{indent}tang CA:    {shown}"));
            }
        }
        Pin::Sss(sss) => {
            lines.push(format!(
                "{indent}clevis pin: sss, {} of {}",
                sss.threshold,
                sss.children.len()
            ));
            for child in &sss.children {
                match child {
                    Ok(child) => pin_lines(child, depth + 1, lines),
                    Err(e) => lines.push(format!("{indent}  unusable child: {e}")),
                }
            }
        }
        Pin::Null(_) => lines.push(format!("{indent}clevis pin: null")),
        Pin::Tpm2(tpm2) => {
            let policy = match &tpm2.pcrs {
                Some(pcrs) => format!("PCRs {}:{}", pcrs.bank, pcrs.ids_text()),
                None => "no PCR policy".into(),
            };
            lines.push(format!(
                "{indent}clevis pin: tpm2 ({} {}, {policy})",
                tpm2.key, tpm2.hash
            ));
        }
        Pin::Other { name, .. } => lines.push(format!("{indent}clevis pin: {name} (not handled)")),
    }
}
