//! The clevis pin of a JWE, parsed once into types. Decrypt, list, report, regen, edit,
//! boot and the token plugin match on these instead of walking the header by JSON path, and
//! a retry repeats only the exchange itself: everything fixed (the pin walk, the stored key
//! set, every thumbprint, the epk) is read here, once.

use std::sync::Arc;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::adv::KeySet;
use crate::b64;
use crate::curve::EcPoint;
use crate::error::{Error, Result};
use crate::jwe::Jwe;
use crate::tpm2::Tpm2;

/// sss pins nest; a header nested deeper than this is not one clevis made.
const MAX_DEPTH: usize = 16;

/// A JWE and its parsed pin.
#[derive(Debug)]
pub struct ClevisJwe {
    pub jwe: Jwe,
    pub pin: Pin,
}

#[derive(Debug)]
pub enum Pin {
    Tang(Tang),
    Sss(Sss),
    Null(Null),
    /// A key sealed in this machine's TPM (unsealed by `nbde-tpm2`).
    Tpm2(Tpm2),
    /// A pin clevis has and nbde does not implement (`tpm1`, `pkcs11`) or an unknown one,
    /// with its header member (for `list`).
    Other {
        name: String,
        member: Value,
    },
}

/// `clevis.tang`: where to ask, and everything the exchange needs besides the answer.
#[derive(Debug)]
pub struct Tang {
    /// The url as recorded (clevis keeps a scheme-less url as given).
    pub url: String,
    /// The server exchange key's thumbprint (`kid` of the JWE).
    pub kid: String,
    /// The server's exchange key `S`, from the stored key set.
    pub server_key: EcPoint,
    /// The JWE's ephemeral public key `c·G`.
    pub epk: EcPoint,
    /// The key set the server advertised at bind time.
    pub adv: KeySet,
    /// A CA file for HTTPS (nbde records it; stock clevis ignores it).
    pub cacert: Option<String>,
    /// The signing key trusted at bind time (nbde records it).
    pub thp: Option<String>,
}

/// `clevis.sss`: Shamir over child pins, `threshold` of which must answer.
#[derive(Debug)]
pub struct Sss {
    pub prime: Vec<u8>,
    pub threshold: usize,
    /// Each child, or why it could not be read (a broken child is one failed share, so the
    /// others may still reach the threshold).
    pub children: Vec<std::result::Result<Arc<ClevisJwe>, Error>>,
}

/// `clevis.null`: the key in the header itself; none means the pin was bound to fail.
pub struct Null {
    pub key: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Null {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.key.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        write!(f, "Null {{ key: {key} }}")
    }
}

impl ClevisJwe {
    /// Parses the pin of `jwe`; errors name the header field that is wrong.
    pub fn parse(jwe: Jwe) -> Result<ClevisJwe> {
        parse_at(jwe, 0)
    }

    /// A compact JWE (as sss children and luksmeta slots hold them).
    pub fn from_compact(text: &str) -> Result<ClevisJwe> {
        ClevisJwe::parse(Jwe::parse_compact(text)?)
    }

    /// The pin's name, as clevis spells it.
    pub fn name(&self) -> &str {
        match &self.pin {
            Pin::Tang(_) => "tang",
            Pin::Sss(_) => "sss",
            Pin::Null(_) => "null",
            Pin::Tpm2(_) => "tpm2",
            Pin::Other { name, .. } => name,
        }
    }

    /// Every tang pin, through sss children, depth first.
    pub fn tang_pins(&self) -> Vec<&Tang> {
        match &self.pin {
            Pin::Tang(tang) => vec![tang],
            Pin::Sss(sss) => sss
                .children
                .iter()
                .flatten()
                .flat_map(|child| child.tang_pins())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether recovering may need the network (a tang pin anywhere).
    pub fn needs_network(&self) -> bool {
        !self.tang_pins().is_empty()
    }

    /// Whether the pin `name` appears anywhere in this binding, sss children included.
    pub fn uses(&self, name: &str) -> bool {
        self.name() == name
            || matches!(&self.pin, Pin::Sss(sss)
                if sss.children.iter().flatten().any(|child| child.uses(name)))
    }

    /// Whether this binding cannot open without a tang server: false for a lone tpm2 or
    /// null pin, and for an sss whose children that need no network reach its threshold
    /// by themselves (then the binding is a key local to the machine).
    pub fn requires_network(&self) -> bool {
        match &self.pin {
            Pin::Tang(_) => true,
            Pin::Sss(sss) => {
                let local = sss
                    .children
                    .iter()
                    .flatten()
                    .filter(|child| !child.requires_network())
                    .count();
                local < sss.threshold
            }
            Pin::Null(_) | Pin::Tpm2(_) | Pin::Other { .. } => false,
        }
    }
}

fn parse_at(jwe: Jwe, depth: usize) -> Result<ClevisJwe> {
    if depth > MAX_DEPTH {
        return Err(Error::Invalid("clevis.sss nesting depth"));
    }
    let clevis = jwe
        .header()
        .get("clevis")
        .and_then(Value::as_object)
        .ok_or(Error::Missing("clevis"))?;
    let name = clevis
        .get("pin")
        .and_then(Value::as_str)
        .ok_or(Error::Missing("clevis.pin"))?;
    let pin = match name {
        "tang" => Pin::Tang(parse_tang(&jwe, member(clevis, "tang", "clevis.tang")?)?),
        "sss" => Pin::Sss(parse_sss(member(clevis, "sss", "clevis.sss")?, depth)?),
        "null" => Pin::Null(parse_null(member(clevis, "null", "clevis.null")?)?),
        "tpm2" => Pin::Tpm2(Tpm2::parse(member(clevis, "tpm2", "clevis.tpm2")?)?),
        other => Pin::Other {
            name: other.to_owned(),
            member: clevis.get(other).cloned().unwrap_or(Value::Null),
        },
    };
    Ok(ClevisJwe { jwe, pin })
}

fn member<'a>(
    clevis: &'a Map<String, Value>,
    name: &str,
    path: &'static str,
) -> Result<&'a Map<String, Value>> {
    clevis
        .get(name)
        .and_then(Value::as_object)
        .ok_or(Error::Missing(path))
}

fn optional_str(
    map: &Map<String, Value>,
    name: &str,
    path: &'static str,
) -> Result<Option<String>> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::Missing(path)),
    }
}

fn parse_tang(jwe: &Jwe, tang: &Map<String, Value>) -> Result<Tang> {
    let url =
        optional_str(tang, "url", "clevis.tang.url")?.ok_or(Error::Missing("clevis.tang.url"))?;
    let adv = KeySet::from_value(tang.get("adv").ok_or(Error::Missing("clevis.tang.adv"))?)?;
    let kid = jwe.header_str("kid")?;
    // The kid goes into the request path: only thumbprint characters.
    if kid.is_empty()
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Invalid("kid"));
    }
    let server_key = adv
        .find(kid)
        .ok_or(Error::Missing("clevis.tang.adv key matching kid"))?
        .point()?;
    let epk = jwe.epk()?;
    if epk.curve() != server_key.curve() {
        return Err(Error::CurveMismatch);
    }
    Ok(Tang {
        url,
        kid: kid.to_owned(),
        server_key,
        epk,
        adv,
        cacert: optional_str(tang, "cacert", "clevis.tang.cacert")?,
        thp: optional_str(tang, "thp", "clevis.tang.thp")?,
    })
}

fn parse_sss(sss: &Map<String, Value>, depth: usize) -> Result<Sss> {
    let prime = sss
        .get("p")
        .and_then(Value::as_str)
        .ok_or(Error::Missing("clevis.sss.p"))?;
    let prime = b64::decode(prime, "clevis.sss.p")?;
    let threshold = sss
        .get("t")
        .and_then(Value::as_u64)
        .ok_or(Error::Missing("clevis.sss.t"))?;
    let children: Vec<_> = sss
        .get("jwe")
        .and_then(Value::as_array)
        .ok_or(Error::Missing("clevis.sss.jwe"))?
        .iter()
        .map(|child| {
            let text = child
                .as_str()
                .ok_or(Error::Missing("clevis.sss.jwe[] as compact JWE"))?;
            parse_at(Jwe::parse_compact(text)?, depth + 1).map(Arc::new)
        })
        .collect();
    if threshold < 1 || threshold > children.len() as u64 {
        return Err(Error::Invalid("clevis.sss.t"));
    }
    Ok(Sss {
        prime,
        threshold: threshold as usize,
        children,
    })
}

/// A256GCM key length.
const NULL_KEY_LEN: usize = 32;

fn parse_null(null: &Map<String, Value>) -> Result<Null> {
    let Some(jwk) = null.get("jwk") else {
        return Ok(Null { key: None });
    };
    let k = jwk
        .get("k")
        .and_then(Value::as_str)
        .ok_or(Error::Missing("clevis.null.jwk.k"))?;
    let key = Zeroizing::new(b64::decode(k, "clevis.null.jwk.k")?);
    if key.len() != NULL_KEY_LEN {
        return Err(Error::Invalid("clevis.null.jwk.k"));
    }
    Ok(Null { key: Some(key) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;
    use serde_json::json;

    fn header(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            unreachable!()
        };
        map
    }

    fn null_jwe(fail: bool) -> Jwe {
        let key = [7u8; 32];
        let member = if fail {
            json!({})
        } else {
            json!({"jwk": {"alg": "A256GCM", "k": b64::encode(&key), "kty": "oct"}})
        };
        Jwe::encrypt_dir(
            header(json!({"clevis": {"pin": "null", "null": member}, "enc": "A256GCM"})),
            &key,
            b"hi",
        )
        .unwrap()
    }

    fn tang_jwe(curve: Curve) -> (Jwe, String) {
        let server = curve.random_scalar().unwrap().public_point();
        let mut key = crate::jwk::Jwk::from_point(&server);
        key.set("key_ops", json!(["deriveKey"]));
        let kid = key.thumbprint(crate::jwk::ThumbprintHash::S256).unwrap();
        let adv = json!({"keys": [key.to_value()]});
        let h = header(json!({
            "clevis": {"pin": "tang", "tang": {"url": "tang.example:8080", "adv": adv}},
            "kid": kid,
        }));
        (Jwe::encrypt_ecdh_es(h, &server, b"secret").unwrap(), kid)
    }

    #[test]
    fn a_tang_pin_is_read_once_with_its_keys() {
        for curve in Curve::ALL {
            let (jwe, kid) = tang_jwe(curve);
            let parsed = ClevisJwe::parse(jwe).unwrap();
            let Pin::Tang(tang) = &parsed.pin else {
                panic!("not tang")
            };
            assert_eq!(tang.url, "tang.example:8080");
            assert_eq!(tang.kid, kid);
            assert_eq!(tang.epk.curve(), curve);
            assert_eq!(tang.server_key.curve(), curve);
            assert!(parsed.needs_network());
        }
    }

    #[test]
    fn sss_children_parse_once_and_a_broken_child_is_one_failure() {
        let (tang, _) = tang_jwe(Curve::P256);
        let children = json!([tang.to_compact(), null_jwe(false).to_compact(), "not a JWE"]);
        let h = header(json!({
            "clevis": {"pin": "sss", "sss": {"jwe": children, "p": b64::encode(&[5u8; 32]), "t": 2}},
        }));
        let jwe = Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap();
        let parsed = ClevisJwe::parse(jwe).unwrap();
        let Pin::Sss(sss) = &parsed.pin else {
            panic!("not sss")
        };
        assert_eq!(sss.threshold, 2);
        assert_eq!(sss.children.len(), 3);
        assert!(sss.children[2].is_err());
        assert_eq!(parsed.tang_pins().len(), 1);
        assert!(parsed.needs_network());
    }

    #[test]
    fn errors_name_the_field() {
        let h = header(json!({"clevis": {"pin": "tang", "tang": {"adv": {"keys": []}}}}));
        let jwe = Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap();
        assert_eq!(
            ClevisJwe::parse(jwe).unwrap_err(),
            Error::Missing("clevis.tang.url")
        );
        let h = header(json!({"clevis": {"pin": "sss", "sss": {"jwe": [], "p": "AQ", "t": 1}}}));
        let jwe = Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap();
        assert_eq!(
            ClevisJwe::parse(jwe).unwrap_err(),
            Error::Invalid("clevis.sss.t")
        );
        let null = ClevisJwe::parse(null_jwe(true)).unwrap();
        assert!(matches!(&null.pin, Pin::Null(Null { key: None })));
        assert!(!null.needs_network());
    }

    #[test]
    fn other_pins_are_named() {
        let h = header(json!({"clevis": {"pin": "tpm1", "tpm1": {"hash": "sha256"}}}));
        let jwe = Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap();
        let parsed = ClevisJwe::parse(jwe).unwrap();
        assert_eq!(parsed.name(), "tpm1");
        assert!(matches!(&parsed.pin, Pin::Other { member, .. } if member["hash"] == "sha256"));
        let h = header(json!({"clevis": {"pin": "tpm2", "tpm2": {"hash": "sha256"}}}));
        let jwe = Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap();
        assert_eq!(
            ClevisJwe::parse(jwe).unwrap_err(),
            Error::Missing("clevis.tpm2.key")
        );
    }

    fn tpm2_jwe() -> String {
        let member = json!({"hash": "sha256", "key": "ecc", "jwk_pub": "AAA", "jwk_priv": "AAA"});
        let h = header(json!({"clevis": {"pin": "tpm2", "tpm2": member}}));
        Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap().to_compact()
    }

    fn sss_over(threshold: u64, children: Vec<String>) -> ClevisJwe {
        let h = header(
            json!({"clevis": {"pin": "sss", "sss": {"jwe": children, "p": "AQ", "t": threshold}}}),
        );
        ClevisJwe::parse(Jwe::encrypt_dir(h, &[1u8; 32], b"x").unwrap()).unwrap()
    }

    #[test]
    fn a_tpm2_binding_is_managed_only_when_tang_is_needed_too() {
        let tpm2 = ClevisJwe::from_compact(&tpm2_jwe()).unwrap();
        assert!(matches!(&tpm2.pin, Pin::Tpm2(t) if t.hash == "sha256" && t.pcrs.is_none()));
        assert!(!tpm2.requires_network());
        let null = null_jwe(false).to_compact();
        // sss(null, tpm2) t=2: no server involved.
        assert!(!sss_over(2, vec![null.clone(), tpm2_jwe()]).requires_network());
        // A tang child: t=2 needs it, t=1 does not (the tpm2 alone opens).
        let tang = tang_jwe(Curve::P256).0.to_compact();
        let both = sss_over(2, vec![tang.clone(), tpm2_jwe()]);
        assert!(both.requires_network() && both.needs_network());
        let either = sss_over(1, vec![tang, tpm2_jwe()]);
        assert!(!either.requires_network() && either.needs_network());
        assert!(either.uses("tpm2") && either.uses("tang") && !either.uses("null"));
    }
}
