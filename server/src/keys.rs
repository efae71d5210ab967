//! Key material in memory: organisations' signing keys, devices' exchange keys, and the
//! signed advertisements built from them. Advertisements are signed once per key change,
//! never on a request path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use nbde_proto::{Curve, Jwk, Jws, ThumbprintHash};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Result};
use crate::store::{DeviceState, Store};

/// A new org signing key: P-521, `"alg":"ES512"`, `"key_ops":["sign","verify"]`, the
/// members `tangd-keygen` writes.
pub fn new_signing_key() -> Result<Jwk> {
    let mut jwk = Jwk::from_scalar(&random(Curve::P521)?);
    jwk.set("alg", "ES512".into());
    jwk.set("key_ops", json!(["sign", "verify"]));
    Ok(jwk)
}

/// A new exchange key on `curve`: `"alg":"ECMR"`, `"key_ops":["deriveKey"]`.
pub fn new_exchange_key(curve: Curve) -> Result<Jwk> {
    let mut jwk = Jwk::from_scalar(&random(curve)?);
    jwk.set("alg", "ECMR".into());
    jwk.set("key_ops", json!(["deriveKey"]));
    Ok(jwk)
}

/// A new private key as JWK text: an org signing key (ES512) or a device exchange key.
pub fn generate_signing_key() -> Result<String> {
    Ok(new_signing_key()?.to_value().to_string())
}

pub fn generate_exchange_key(curve: Curve) -> Result<String> {
    Ok(new_exchange_key(curve)?.to_value().to_string())
}

fn random(curve: Curve) -> Result<nbde_proto::EcScalar> {
    curve
        .random_scalar()
        .map_err(|e| ApiError::Internal(format!("key generation: {e}")))
}

fn parse_jwk(text: &str) -> Result<Jwk> {
    serde_json::from_str(text)
        .ok()
        .and_then(|v| Jwk::from_value(v).ok())
        .ok_or_else(|| ApiError::Internal("stored key is not a JWK".into()))
}

/// The public half as Tang advertises it: no private members, `key_ops` limited to the
/// public operation.
pub fn advertised_form(jwk: &Jwk) -> Jwk {
    let mut public = jwk.to_public();
    if jwk.allows("sign") || jwk.allows("verify") {
        public.set("key_ops", json!(["verify"]));
    } else if jwk.allows("deriveKey") {
        public.set("key_ops", json!(["deriveKey"]));
    }
    public
}

/// Signs `{"keys": advertised}` with each of `signers`, as tangd does: flattened with one
/// signer, general with more; header `{"alg":…,"cty":"jwk-set+json"}`.
pub fn sign_adv(advertised: &[Jwk], signers: &[&Jwk]) -> Result<String> {
    let payload = json!({"keys": advertised.iter().map(Jwk::to_value).collect::<Vec<_>>()});
    let mut header = Map::new();
    header.insert("cty".into(), "jwk-set+json".into());
    let keys: Vec<(&Jwk, Map<String, Value>)> =
        signers.iter().map(|k| (*k, header.clone())).collect();
    Jws::sign(payload.to_string().as_bytes(), &keys)
        .map(|v| v.to_string())
        .map_err(|e| ApiError::Internal(format!("signing adv: {e}")))
}

pub struct OrgKeys {
    pub name: String,
    pub require_source: bool,
    pub signing: Vec<Jwk>,
}

pub struct DeviceKeys {
    pub org: Arc<OrgKeys>,
    pub name: String,
    pub state: DeviceState,
    /// (private key, advertised), oldest first.
    pub exchange: Vec<(Jwk, bool)>,
    adv: OnceLock<std::result::Result<String, String>>,
}

impl DeviceKeys {
    /// The signed advertisement, built on first use and kept until the keys change.
    pub fn adv(&self) -> Result<&str> {
        self.adv
            .get_or_init(|| {
                let mut advertised: Vec<Jwk> =
                    self.org.signing.iter().map(advertised_form).collect();
                advertised.extend(
                    self.exchange
                        .iter()
                        .filter(|(_, shown)| *shown)
                        .map(|(k, _)| advertised_form(k)),
                );
                let signers: Vec<&Jwk> = self.org.signing.iter().collect();
                sign_adv(&advertised, &signers).map_err(|e| e.to_string())
            })
            .as_deref()
            .map_err(|e| ApiError::Internal(e.clone()))
    }

    /// Whether `kid` names one of the org's signing keys (any thumbprint hash).
    pub fn is_signing_kid(&self, kid: &str) -> bool {
        self.org.signing.iter().any(|k| k.matches_thumbprint(kid))
    }

    /// The exchange key (advertised or rotated out) named by `kid`.
    pub fn exchange_key(&self, kid: &str) -> Option<&Jwk> {
        self.exchange
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.matches_thumbprint(kid))
    }

    /// The S256 thumbprint of the org's first signing key: the `thp` clients pin.
    pub fn thp(&self) -> Option<String> {
        self.org
            .signing
            .first()?
            .thumbprint(ThumbprintHash::S256)
            .ok()
    }
}

/// Everything the tang routes need, loaded from the store.
#[derive(Default)]
pub struct KeyRing {
    pub orgs: HashMap<String, Arc<OrgKeys>>,
    pub devices: HashMap<(String, String), Arc<DeviceKeys>>,
}

impl KeyRing {
    pub fn load(store: &Store) -> Result<KeyRing> {
        let mut ring = KeyRing::default();
        for org in store.orgs()? {
            let signing = org
                .signing_keys
                .iter()
                .map(|k| parse_jwk(k))
                .collect::<Result<Vec<_>>>()?;
            ring.orgs.insert(
                org.name.clone(),
                Arc::new(OrgKeys {
                    name: org.name,
                    require_source: org.require_source,
                    signing,
                }),
            );
        }
        for device in store.devices()? {
            let Some(org) = ring.orgs.get(&device.org).cloned() else {
                continue;
            };
            let exchange = device
                .exchange_keys
                .iter()
                .map(|(k, shown)| Ok((parse_jwk(k)?, *shown)))
                .collect::<Result<Vec<_>>>()?;
            ring.devices.insert(
                (device.org.clone(), device.name.clone()),
                Arc::new(DeviceKeys {
                    org,
                    name: device.name,
                    state: device.state,
                    exchange,
                    adv: OnceLock::new(),
                }),
            );
        }
        Ok(ring)
    }

    pub fn device(&self, org: &str, name: &str) -> Option<Arc<DeviceKeys>> {
        self.devices
            .get(&(org.to_owned(), name.to_owned()))
            .cloned()
    }
}
