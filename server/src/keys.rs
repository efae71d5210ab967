//! Key material in memory: organisations' signing keys, devices' exchange keys, and the
//! signed advertisements built from them. Keys are opened (they are sealed at rest, see
//! `kek`), parsed, indexed by every thumbprint a client may name them by, and
//! advertisements signed when the ring is loaded after a key change, so a request only
//! looks things up.

use std::collections::HashMap;
use std::sync::Arc;

use nbde_proto::{Curve, EcScalar, Jwk, Jws, ThumbprintHash};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Result};
use crate::kek::{Kek, KeySlot};
use crate::policy::DeviceState;
use crate::store::{DeviceRow, OrgRow, Store};

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

/// Opens a stored (sealed) key of `slot` and parses it.
fn open_jwk(kek: &Kek, slot: &KeySlot<'_>, stored: &str) -> Result<Jwk> {
    let text = kek
        .open(slot, stored)
        .map_err(|e| ApiError::Internal(format!("{slot}: {e}")))?;
    serde_json::from_str(&text)
        .ok()
        .and_then(|v| Jwk::from_value(v).ok())
        .ok_or_else(|| ApiError::Internal(format!("{slot}: not a JWK")))
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

/// Every thumbprint of `jwk`, one per accepted hash. Base64url is strict (one text per
/// digest), so comparing texts is comparing digests.
pub fn kids(jwk: &Jwk) -> impl Iterator<Item = String> + '_ {
    ThumbprintHash::ALL
        .into_iter()
        .filter_map(|hash| jwk.thumbprint(hash).ok())
}

/// A private exchange key, parsed once.
pub struct ExchangeKey {
    /// None for a key whose private scalar does not parse: naming it answers an error.
    pub secret: Option<EcScalar>,
}

impl ExchangeKey {
    pub fn new(jwk: &Jwk) -> ExchangeKey {
        ExchangeKey {
            secret: jwk.scalar().ok(),
        }
    }
}

pub struct OrgKeys {
    pub name: String,
    pub require_source: bool,
    pub signing: Vec<Jwk>,
    /// Every thumbprint of every signing key.
    signing_kids: HashMap<String, usize>,
    /// The stored texts, to tell whether a reload changed them.
    source: Vec<String>,
    thp: Option<String>,
}

impl OrgKeys {
    fn load(kek: &Kek, org: OrgRow) -> Result<OrgKeys> {
        let slot = KeySlot::Signing { org: &org.name };
        let signing = org
            .signing_keys
            .iter()
            .map(|k| open_jwk(kek, &slot, k))
            .collect::<Result<Vec<_>>>()?;
        let signing_kids = signing
            .iter()
            .enumerate()
            .flat_map(|(i, k)| kids(k).map(move |kid| (kid, i)))
            .collect();
        let thp = signing
            .first()
            .and_then(|k| k.thumbprint(ThumbprintHash::S256).ok());
        Ok(OrgKeys {
            name: org.name,
            require_source: org.require_source,
            signing,
            signing_kids,
            source: org.signing_keys,
            thp,
        })
    }

    /// The S256 thumbprint of the first signing key: the `thp` clients pin.
    pub fn thp(&self) -> Option<&str> {
        self.thp.as_deref()
    }
}

/// A device's exchange keys with everything derived from them; shared between rings as
/// long as neither they nor the org's signing keys change.
struct ExchangeSet {
    /// The stored (text, advertised) pairs and the org's signing texts they were signed with.
    source: (Vec<(String, bool)>, Vec<String>),
    keys: Vec<ExchangeKey>,
    by_kid: HashMap<String, usize>,
    /// The signed advertisement; None once the device has no key left.
    adv: Option<String>,
    /// S256 thumbprint of the newest advertised key.
    kid: Option<String>,
    curve: Option<Curve>,
}

impl ExchangeSet {
    fn load(
        kek: &Kek,
        org: &OrgKeys,
        device: &str,
        stored: Vec<(String, bool)>,
    ) -> Result<ExchangeSet> {
        let slot = KeySlot::Exchange {
            org: &org.name,
            device,
        };
        let parsed = stored
            .iter()
            .map(|(k, shown)| Ok((open_jwk(kek, &slot, k)?, *shown)))
            .collect::<Result<Vec<_>>>()?;
        let adv = if parsed.is_empty() {
            None
        } else {
            let mut advertised: Vec<Jwk> = org.signing.iter().map(advertised_form).collect();
            advertised.extend(
                parsed
                    .iter()
                    .filter(|(_, shown)| *shown)
                    .map(|(k, _)| advertised_form(k)),
            );
            let signers: Vec<&Jwk> = org.signing.iter().collect();
            Some(sign_adv(&advertised, &signers)?)
        };
        let kid = parsed
            .iter()
            .rev()
            .find(|(_, shown)| *shown)
            .and_then(|(k, _)| k.thumbprint(ThumbprintHash::S256).ok());
        Ok(ExchangeSet {
            source: (stored, org.source.clone()),
            by_kid: parsed
                .iter()
                .enumerate()
                .flat_map(|(i, (k, _))| kids(k).map(move |kid| (kid, i)))
                .collect(),
            keys: parsed.iter().map(|(k, _)| ExchangeKey::new(k)).collect(),
            curve: parsed.last().and_then(|(k, _)| k.curve().ok()),
            kid,
            adv,
        })
    }
}

pub struct DeviceKeys {
    /// The store's id: the `/rec` path reads the policy by it, not by name again.
    pub id: i64,
    pub org: Arc<OrgKeys>,
    pub name: String,
    pub state: DeviceState,
    set: Arc<ExchangeSet>,
}

impl DeviceKeys {
    /// A device's keys from its row; the derived set of `previous` is reused if neither
    /// its keys nor the org's signing keys changed.
    fn load(
        kek: &Kek,
        org: Arc<OrgKeys>,
        row: DeviceRow,
        previous: Option<&Arc<DeviceKeys>>,
    ) -> Result<Arc<DeviceKeys>> {
        let DeviceRow {
            id,
            name,
            state,
            exchange_keys,
            ..
        } = row;
        let kept = previous
            .map(|d| d.set.clone())
            .filter(|set| set.source.0 == exchange_keys && set.source.1 == org.source);
        let set = match kept {
            Some(set) => set,
            None => Arc::new(ExchangeSet::load(kek, &org, &name, exchange_keys)?),
        };
        Ok(Arc::new(DeviceKeys {
            id,
            org,
            name,
            state,
            set,
        }))
    }

    /// The signed advertisement; None once the device is retired.
    pub fn adv(&self) -> Option<&str> {
        self.set.adv.as_deref()
    }

    /// Whether `kid` names one of the org's signing keys (any thumbprint hash).
    pub fn is_signing_kid(&self, kid: &str) -> bool {
        self.org.signing_kids.contains_key(kid)
    }

    /// The exchange key (advertised or rotated out) named by `kid`.
    pub fn exchange_key(&self, kid: &str) -> Option<&ExchangeKey> {
        self.set.by_kid.get(kid).map(|&i| &self.set.keys[i])
    }

    pub fn has_keys(&self) -> bool {
        !self.set.keys.is_empty()
    }

    pub fn exchange_count(&self) -> usize {
        self.set.keys.len()
    }

    pub fn thp(&self) -> Option<&str> {
        self.org.thp()
    }

    /// The S256 thumbprint of the advertised exchange key.
    pub fn kid(&self) -> Option<&str> {
        self.set.kid.as_deref()
    }

    /// The curve of the newest exchange key.
    pub fn curve(&self) -> Option<Curve> {
        self.set.curve
    }
}

type OrgDevices = HashMap<String, Arc<DeviceKeys>>;

/// Everything the tang routes need, loaded from the store.
#[derive(Clone, Default)]
pub struct KeyRing {
    pub orgs: HashMap<String, Arc<OrgKeys>>,
    /// org → device name → keys; an org's map is shared by the rings a change to another
    /// org's device makes.
    devices: HashMap<String, Arc<OrgDevices>>,
}

impl KeyRing {
    /// Loads the ring, reusing from `previous` the signed advertisements of devices whose
    /// keys did not change: a reload after an admin change signs only what changed.
    pub fn load(store: &Store, previous: Option<&KeyRing>) -> Result<KeyRing> {
        let kek = store.kek()?;
        let mut ring = KeyRing::default();
        for org in store.orgs()? {
            let keys = OrgKeys::load(kek, org)?;
            ring.orgs.insert(keys.name.clone(), Arc::new(keys));
        }
        let mut devices: HashMap<String, OrgDevices> = HashMap::new();
        for device in store.devices()? {
            let Some(org) = ring.orgs.get(&device.org).cloned() else {
                continue;
            };
            let kept = previous.and_then(|p| p.device(&device.org, &device.name));
            let keys = DeviceKeys::load(kek, org, device, kept)?;
            devices
                .entry(keys.org.name.clone())
                .or_default()
                .insert(keys.name.clone(), keys);
        }
        ring.devices = devices
            .into_iter()
            .map(|(org, map)| (org, Arc::new(map)))
            .collect();
        Ok(ring)
    }

    /// This ring with `org/name` replaced by `row` (removed if None): what an admin change
    /// to one device needs, without reading or comparing every other device. None if the
    /// org is not in this ring (the caller then loads the whole ring).
    pub fn with_device(
        &self,
        kek: &Kek,
        org: &str,
        name: &str,
        row: Option<DeviceRow>,
    ) -> Result<Option<KeyRing>> {
        let Some(org_keys) = self.orgs.get(org).cloned() else {
            return Ok(None);
        };
        let mut ring = self.clone();
        let map = Arc::make_mut(ring.devices.entry(org.to_owned()).or_default());
        match row {
            Some(row) => {
                let keys = DeviceKeys::load(kek, org_keys, row, self.device(org, name))?;
                map.insert(name.to_owned(), keys);
            }
            None => {
                map.remove(name);
            }
        }
        Ok(Some(ring))
    }

    pub fn device(&self, org: &str, name: &str) -> Option<&Arc<DeviceKeys>> {
        self.devices.get(org)?.get(name)
    }

    /// The names of `org`'s devices, sorted.
    pub fn device_names(&self, org: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .devices
            .get(org)
            .into_iter()
            .flat_map(|d| d.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names
    }
}
