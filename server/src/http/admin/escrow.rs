//! Header escrow the server cannot open: an organisation's escrow public key, and each
//! device's LUKS header backup, encrypted on the machine to that key (ECDH-ES, A256GCM).
//! The server checks the envelope (the protected header names the org's key) and keeps the
//! blob; only the customer, with the private half kept offline, can open it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use nbde_proto::{Jwk, ThumbprintHash, b64};
use serde_json::Value;

use super::{Caller, audited, run};
use crate::api::{EscrowBlob, EscrowInfo, EscrowKey, NewEscrow, NewEscrowKey, Removed, Role};
use crate::error::{ApiError, Result};
use crate::http::AppState;
use crate::policy::DeviceState;
use crate::store::{EscrowKeyRow, NewEscrowRow};

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// The public key to store and its S256 thumbprint: an EC public key on P-256, P-384 or
/// P-521 for ECDH-ES, reduced to its public members.
fn escrow_public_key(value: Value) -> Result<(Jwk, String)> {
    let given = Jwk::from_value(value).map_err(|_| bad("escrow key: expected a JWK object"))?;
    if given.as_map().contains_key("d") || given.to_public() != given {
        return Err(bad(
            "escrow key: give the public half only (no \"d\"); the private half stays with you",
        ));
    }
    let point = given.point().map_err(|e| {
        bad(format!(
            "escrow key: an EC public key on P-256, P-384 or P-521: {e}"
        ))
    })?;
    match given.str_member("alg") {
        Ok(None | Some("ECDH-ES")) => {}
        _ => return Err(bad("escrow key: \"alg\", if given, must be \"ECDH-ES\"")),
    }
    let mut stored = Jwk::from_point(&point);
    stored.set("alg", "ECDH-ES".into());
    let kid = stored
        .thumbprint(ThumbprintHash::S256)
        .map_err(|e| ApiError::Internal(format!("thumbprint: {e}")))?;
    Ok((stored, kid))
}

fn is_base64url(part: &str) -> bool {
    part.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks the envelope of an upload: a compact JWE, ECDH-ES (direct, so no encrypted key)
/// with A256GCM, encrypted to the org's current escrow key. The content is not ours to see.
fn check_envelope(jwe: &str, key: &EscrowKeyRow) -> Result<()> {
    let parts: Vec<&str> = jwe.split('.').collect();
    let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
        return Err(bad("escrow: expected a compact JWE (five base64url parts)"));
    };
    if !parts.iter().all(|p| is_base64url(p)) {
        return Err(bad("escrow: a JWE part is not base64url"));
    }
    if iv.is_empty() || ciphertext.is_empty() || tag.is_empty() {
        return Err(bad("escrow: the JWE has no iv, ciphertext or tag"));
    }
    let header = b64::decode(protected, "protected")
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(Value::is_object)
        .ok_or_else(|| bad("escrow: the protected header is not base64url JSON"))?;
    let member = |name: &str| header.get(name).and_then(Value::as_str);
    if member("alg") != Some("ECDH-ES") || member("enc") != Some("A256GCM") {
        return Err(bad(
            "escrow: the protected header must say \"alg\":\"ECDH-ES\", \"enc\":\"A256GCM\"",
        ));
    }
    if !encrypted_key.is_empty() {
        return Err(bad("escrow: ECDH-ES (direct) has an empty encrypted key"));
    }
    match member("kid") {
        Some(kid) if kid == key.kid => {}
        Some(kid) => {
            return Err(bad(format!(
                "escrow: encrypted to another key (kid {kid}); the organisation's escrow key \
                 is {}",
                key.kid
            )));
        }
        None => return Err(bad("escrow: the protected header names no \"kid\"")),
    }
    let curve = serde_json::from_str(&key.jwk)
        .ok()
        .and_then(|v| Jwk::from_value(v).ok())
        .and_then(|k| k.curve().ok())
        .ok_or_else(|| ApiError::Internal("stored escrow key is not a JWK".into()))?;
    let epk = header
        .get("epk")
        .cloned()
        .and_then(|v| Jwk::from_value(v).ok())
        .and_then(|k| k.point().ok());
    match epk {
        Some(point) if point.curve() == curve => Ok(()),
        _ => Err(bad(format!(
            "escrow: the protected header needs an \"epk\" on {}",
            curve.name()
        ))),
    }
}

/// A LUKS UUID as cryptsetup prints it: 8-4-4-4-12 hex digits.
fn check_uuid(uuid: &str) -> Result<()> {
    let ok = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!("escrow: uuid {uuid:?} is not a UUID")))
    }
}

pub(crate) async fn set_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(body): Json<NewEscrowKey>,
) -> Result<Json<EscrowKey>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        let (jwk, kid) = escrow_public_key(body.jwk)?;
        let row = EscrowKeyRow {
            kid,
            jwk: jwk.to_value().to_string(),
        };
        s.store.set_escrow_key(&org, &row)?;
        audited(s, &caller, Some(&org), "org escrow-key", &org)?;
        Ok(EscrowKey {
            org,
            kid: row.kid,
            jwk: jwk.to_value(),
        })
    })
    .await
}

pub(crate) async fn key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<EscrowKey>> {
    run(state, move |s| {
        caller.require(&org, Role::Viewer)?;
        let row = s
            .store
            .escrow_key(&org)?
            .ok_or_else(|| ApiError::NotFound(format!("escrow key of {org:?}")))?;
        let jwk = serde_json::from_str(&row.jwk)
            .map_err(|_| ApiError::Internal("stored escrow key is not JSON".into()))?;
        Ok(EscrowKey {
            org,
            kid: row.kid,
            jwk,
        })
    })
    .await
}

pub(crate) async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
    Json(body): Json<NewEscrow>,
) -> Result<Json<EscrowInfo>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        let key = s.store.escrow_key(&org)?.ok_or_else(|| {
            ApiError::Conflict(format!(
                "organisation {org:?} has no escrow key: its owner sets one first \
                 (nbde-server org escrow-key {org} --jwk FILE)"
            ))
        })?;
        // Refused before the envelope is looked at; the store checks it again.
        let ring = s.key_ring();
        match ring.device(&org, &device) {
            None => return Err(ApiError::NotFound(format!("device {org}/{device}"))),
            Some(d) if d.state == DeviceState::Retired => {
                return Err(ApiError::Conflict(format!(
                    "device {org}/{device} is retired: it keeps no header backup"
                )));
            }
            Some(_) => {}
        }
        check_uuid(&body.uuid)?;
        let jwe = body.jwe.trim();
        check_envelope(jwe, &key)?;
        let upload = NewEscrowRow {
            uuid: &body.uuid,
            kid: &key.kid,
            jwe,
            by: caller.name(),
        };
        let stored = s.store.put_escrow(&org, &device, &upload)?;
        let target = format!("{org}/{device}");
        audited(s, &caller, Some(&org), "device escrow put", &target)?;
        // A replaced backup is erased from disk like a deleted one.
        s.store.erase_destroyed()?;
        Ok(stored)
    })
    .await
}

pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
) -> Result<Json<EscrowBlob>> {
    run(state, move |s| {
        // Owners only: a viewer sees that a backup exists (the device view), not the blob.
        caller.require(&org, Role::Owner)?;
        let blob = s
            .store
            .escrow(&org, &device)?
            .ok_or_else(|| ApiError::NotFound(format!("header backup of {org}/{device}")))?;
        // Handing a backup out is worth a trail row, though nothing changed.
        let target = format!("{org}/{device}");
        audited(s, &caller, Some(&org), "device escrow get", &target)?;
        Ok(blob)
    })
    .await
}

pub(crate) async fn rm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((org, device)): Path<(String, String)>,
) -> Result<Json<Removed>> {
    run(state, move |s| {
        caller.require(&org, Role::Owner)?;
        s.store.rm_escrow(&org, &device)?;
        let target = format!("{org}/{device}");
        audited(s, &caller, Some(&org), "device escrow rm", &target)?;
        s.store.erase_destroyed()?;
        Ok(Removed { removed: target })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_checked_by_shape() {
        assert!(check_uuid("0b9e4a7c-1f2d-4e5a-9c3b-8d7e6f5a4b3c").is_ok());
        assert!(check_uuid("0B9E4A7C-1F2D-4E5A-9C3B-8D7E6F5A4B3C").is_ok());
        for bad in [
            "",
            "0b9e4a7c1f2d4e5a9c3b8d7e6f5a4b3c",
            "0b9e4a7c-1f2d-4e5a-9c3b-8d7e6f5a4b3",
            "0b9e4a7c-1f2d-4e5a-9c3b-8d7e6f5a4b3g",
            "0b9e4a7c-1f2d4-e5a-9c3b-8d7e6f5a4b3c",
        ] {
            assert!(check_uuid(bad).is_err(), "{bad:?}");
        }
    }
}
