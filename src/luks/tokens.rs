//! LUKS2 tokens: `{"type":"clevis","keyslots":["N"],"jwe":{…}}`, the flattened JWE.

use libcryptsetup_rs::{CryptDevice, TokenInput};
use nbde_proto::Jwe;
use serde_json::{Value, json};

use super::{Binding, Store, luks_error};
use crate::error::{Error, Result};

/// LUKS2 has 32 tokens.
const TOKENS: u32 = 32;

/// One binding per (clevis token, keyslot it names); `active` is filled in by the caller.
pub(super) fn bindings(device: &mut CryptDevice) -> Vec<Binding> {
    let mut found = Vec::new();
    for token in 0..TOKENS {
        let Ok(json) = device.token_handle().json_get(token) else {
            continue;
        };
        if json.get("type").and_then(Value::as_str) != Some("clevis") {
            continue;
        }
        let slots: Vec<u32> = json
            .get("keyslots")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|s| s.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        for slot in slots {
            let jwe = match json.get("jwe") {
                Some(jwe) => Jwe::from_flattened(jwe).map_err(|e| format!("token {token}: {e}")),
                None => Err(format!("token {token}: no \"jwe\" member")),
            };
            found.push(Binding {
                slot,
                active: false,
                store: Store::Token(token),
                jwe,
            });
        }
    }
    found
}

/// Writes a clevis token for `slot`, at `token_id` if given (which must be free).
pub(super) fn add(
    device: &mut CryptDevice,
    slot: u32,
    jwe: &Jwe,
    token_id: Option<u32>,
) -> Result<()> {
    let token = json!({
        "type": "clevis",
        "keyslots": [slot.to_string()],
        "jwe": jwe.to_flattened(),
    });
    let input = match token_id {
        Some(id) => {
            if device.token_handle().json_get(id).is_ok() {
                return Err(Error::Config(format!("token {id} is in use")));
            }
            TokenInput::ReplaceToken(id, &token)
        }
        None => TokenInput::AddToken(&token),
    };
    device
        .token_handle()
        .json_set(input)
        .map(|_| ())
        .map_err(luks_error("write token"))
}

/// Takes `slot` out of `token`; the token goes when it names no other keyslot.
/// libcryptsetup already takes a destroyed keyslot out of its tokens, so the slot may be
/// gone from the token by now.
pub(super) fn release(device: &mut CryptDevice, token: u32, slot: u32) -> Result<()> {
    let Ok(json) = device.token_handle().json_get(token) else {
        return Ok(());
    };
    let slot = slot.to_string();
    let listed: Vec<&str> = json
        .get("keyslots")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if listed.iter().any(|s| *s != slot) {
        if !listed.contains(&slot.as_str()) {
            return Ok(());
        }
        let number = slot.parse().expect("formatted from a u32");
        device
            .token_handle()
            .unassign_keyslot(token, Some(number))
            .map_err(luks_error("unassign token from keyslot"))
    } else {
        remove(device, token)
    }
}

pub(super) fn remove(device: &mut CryptDevice, token: u32) -> Result<()> {
    device
        .token_handle()
        .json_set(TokenInput::RemoveToken(token))
        .map(|_| ())
        .map_err(luks_error("remove token"))
}

/// Removes clevis tokens that name no keyslot: libcryptsetup leaves them so when their
/// keyslot is destroyed (by an interrupted unbind, or by hand).
pub(super) fn remove_slotless(device: &mut CryptDevice) -> Result<()> {
    for token in 0..TOKENS {
        let Ok(json) = device.token_handle().json_get(token) else {
            continue;
        };
        let slotless = json
            .get("keyslots")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if json.get("type").and_then(Value::as_str) == Some("clevis") && slotless {
            remove(device, token)?;
        }
    }
    Ok(())
}

/// The kernel keyring description a `luks2-keyring` token names.
pub(super) fn keyring_description(device: &mut CryptDevice, token: u32) -> Result<String> {
    let json = device
        .token_handle()
        .json_get(token)
        .map_err(|_| Error::Config(format!("token {token} does not exist")))?;
    match json.get("type").and_then(Value::as_str) {
        Some("luks2-keyring") => json
            .get("key_description")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Config(format!("token {token} has no key_description"))),
        other => Err(Error::Config(format!(
            "token {token} is of type {}; only a luks2-keyring token can give the existing passphrase",
            other.unwrap_or("(none)")
        ))),
    }
}

/// Every token of the header with its JSON, by id.
pub(super) fn all(device: &mut CryptDevice) -> Vec<(u32, Value)> {
    (0..TOKENS)
        .filter_map(|token| {
            device
                .token_handle()
                .json_get(token)
                .ok()
                .map(|json| (token, json))
        })
        .collect()
}

/// Writes `json` as token `id` (replacing what is there), or as a new token; returns its id.
pub(super) fn write(device: &mut CryptDevice, id: Option<u32>, json: &Value) -> Result<u32> {
    let input = match id {
        Some(id) => TokenInput::ReplaceToken(id, json),
        None => TokenInput::AddToken(json),
    };
    device
        .token_handle()
        .json_set(input)
        .map_err(luks_error("write token"))
}
