//! JSON Web Keys (RFC 7517/7518) as Tang and Clevis use them: EC keys on P-256/384/521,
//! with unknown members kept, and RFC 7638 thumbprints in every hash Tang accepts.

use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use crate::b64;
use crate::curve::{Curve, EcPoint, EcScalar};
use crate::error::{Error, Result};

/// Private members of any key type (RFC 7518 §6); stripped by [`Jwk::to_public`].
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A JWK: a JSON object whose unknown members survive a round trip.
#[derive(Clone, PartialEq)]
pub struct Jwk(Map<String, Value>);

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Print the public half only: a Debug of a private key must not leak it.
        write!(f, "Jwk({})", Value::Object(self.to_public().0))
    }
}

/// Hashes a thumbprint can be taken with (the `S1`…`S512` names are Tang's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThumbprintHash {
    S1,
    S224,
    S256,
    S384,
    S512,
}

impl ThumbprintHash {
    pub const ALL: [ThumbprintHash; 5] = [
        ThumbprintHash::S1,
        ThumbprintHash::S224,
        ThumbprintHash::S256,
        ThumbprintHash::S384,
        ThumbprintHash::S512,
    ];

    /// The hashes clevis accepts for a `thp` a user trusts (`CLEVIS_SUPPORTED_THP_ALGS`):
    /// a tang server finds a key by any hash, but clevis refuses the others at encrypt.
    pub const CLEVIS_TRUSTED: [ThumbprintHash; 2] = [ThumbprintHash::S1, ThumbprintHash::S256];

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            ThumbprintHash::S1 => Sha1::digest(data).to_vec(),
            ThumbprintHash::S224 => Sha224::digest(data).to_vec(),
            ThumbprintHash::S256 => Sha256::digest(data).to_vec(),
            ThumbprintHash::S384 => Sha384::digest(data).to_vec(),
            ThumbprintHash::S512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The hash whose digest has this many bytes; thumbprint lengths are all distinct.
    fn for_digest_len(len: usize) -> Option<ThumbprintHash> {
        Some(match len {
            20 => ThumbprintHash::S1,
            28 => ThumbprintHash::S224,
            32 => ThumbprintHash::S256,
            48 => ThumbprintHash::S384,
            64 => ThumbprintHash::S512,
            _ => return None,
        })
    }
}

impl Jwk {
    pub fn from_value(value: Value) -> Result<Jwk> {
        match value {
            Value::Object(map) => Ok(Jwk(map)),
            _ => Err(Error::Json("JWK")),
        }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// A string member; `Ok(None)` if absent, an error if present with another type.
    pub fn str_member(&self, name: &'static str) -> Result<Option<&str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::Missing(name)),
        }
    }

    fn required_str(&self, name: &'static str) -> Result<&str> {
        self.str_member(name)?.ok_or(Error::Missing(name))
    }

    pub fn set(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_owned(), value);
    }

    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// An EC public key JWK for `point`, with members in RFC 7638 order.
    pub fn from_point(point: &EcPoint) -> Jwk {
        let mut map = Map::new();
        map.insert("crv".into(), point.curve().name().into());
        map.insert("kty".into(), "EC".into());
        map.insert("x".into(), b64::encode(point.x()).into());
        map.insert("y".into(), b64::encode(point.y()).into());
        Jwk(map)
    }

    /// An EC private key JWK: the public members plus `d`.
    pub fn from_scalar(scalar: &EcScalar) -> Jwk {
        let mut jwk = Jwk::from_point(&scalar.public_point());
        jwk.set("d", b64::encode(scalar.to_bytes()).into());
        jwk
    }

    /// The curve of an EC key; any other key type is refused.
    pub fn curve(&self) -> Result<Curve> {
        match self.required_str("kty")? {
            "EC" => Curve::from_name(self.required_str("crv")?),
            other => Err(Error::Unsupported(format!("key type {other:?}"))),
        }
    }

    /// The public point, checked to be on the key's curve.
    pub fn point(&self) -> Result<EcPoint> {
        let curve = self.curve()?;
        let x = b64::decode(self.required_str("x")?, "x")?;
        let y = b64::decode(self.required_str("y")?, "y")?;
        EcPoint::from_coordinates(curve, &x, &y)
    }

    /// The private scalar `d`.
    pub fn scalar(&self) -> Result<EcScalar> {
        let curve = self.curve()?;
        let d = Zeroizing::new(b64::decode(self.required_str("d")?, "d")?);
        EcScalar::from_bytes(curve, &d)
    }

    /// The key without private members.
    pub fn to_public(&self) -> Jwk {
        let mut map = self.0.clone();
        for name in PRIVATE_MEMBERS {
            map.remove(name);
        }
        Jwk(map)
    }

    /// Whether the key may be used for `op` (a `key_ops` value such as `verify` or
    /// `deriveKey`). As `jose jwk use -r`: the key must say so, through `key_ops` or
    /// through `use` (`sig` covers sign/verify; `enc` covers the rest).
    pub fn allows(&self, op: &str) -> bool {
        if let Some(Value::Array(ops)) = self.0.get("key_ops")
            && ops.iter().any(|v| v.as_str() == Some(op))
        {
            return true;
        }
        match self.0.get("use").and_then(Value::as_str) {
            Some("sig") => matches!(op, "sign" | "verify"),
            Some("enc") => matches!(
                op,
                "encrypt" | "decrypt" | "wrapKey" | "unwrapKey" | "deriveKey" | "deriveBits"
            ),
            _ => false,
        }
    }

    /// The RFC 7638 canonical JSON: the required members in lexicographic order.
    fn thumbprint_input(&self) -> Result<String> {
        let members: &[&'static str] = match self.required_str("kty")? {
            "EC" => &["crv", "kty", "x", "y"],
            "RSA" => &["e", "kty", "n"],
            "oct" => &["k", "kty"],
            other => return Err(Error::Unsupported(format!("key type {other:?}"))),
        };
        let mut out = String::from("{");
        for (i, name) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = self.required_str(name)?;
            // serde_json escapes exactly as RFC 7638 §3.3 requires (no extra whitespace).
            out.push_str(&serde_json::to_string(name).map_err(|_| Error::Json("thumbprint"))?);
            out.push(':');
            out.push_str(&serde_json::to_string(value).map_err(|_| Error::Json("thumbprint"))?);
        }
        out.push('}');
        Ok(out)
    }

    /// The base64url thumbprint with `hash`.
    pub fn thumbprint(&self, hash: ThumbprintHash) -> Result<String> {
        Ok(b64::encode(
            &hash.digest(self.thumbprint_input()?.as_bytes()),
        ))
    }

    /// Whether `thp` is this key's thumbprint in any of the accepted hashes.
    pub fn matches_thumbprint(&self, thp: &str) -> bool {
        self.matches_thumbprint_of(thp, &ThumbprintHash::ALL)
    }

    /// Whether `thp` is this key's thumbprint under one of `hashes`.
    pub fn matches_thumbprint_of(&self, thp: &str, hashes: &[ThumbprintHash]) -> bool {
        let Ok(digest) = b64::decode(thp, "thumbprint") else {
            return false;
        };
        let Some(hash) = ThumbprintHash::for_digest_len(digest.len()) else {
            return false;
        };
        if !hashes.contains(&hash) {
            return false;
        }
        match self.thumbprint_input() {
            Ok(input) => hash.digest(input.as_bytes()) == digest,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1 (an RSA key: the same canonical form covers every kty).
        let jwk = Jwk::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::S256).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(jwk.matches_thumbprint("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
    }

    #[test]
    fn every_hash_matches_and_unknown_members_survive() {
        let scalar = Curve::P521.random_scalar().unwrap();
        let mut jwk = Jwk::from_scalar(&scalar);
        jwk.set("alg", "ECMR".into());
        jwk.set("x-extra", json!({"kept": true}));
        for hash in ThumbprintHash::ALL {
            let thp = jwk.thumbprint(hash).unwrap();
            assert!(jwk.matches_thumbprint(&thp), "{hash:?}");
            // Private and extra members do not change a thumbprint.
            assert!(jwk.to_public().matches_thumbprint(&thp));
        }
        assert!(!jwk.matches_thumbprint("AAAA"));
        assert!(!jwk.matches_thumbprint("not base64!"));
        let public = jwk.to_public();
        assert!(public.as_map().get("d").is_none());
        assert_eq!(public.as_map()["x-extra"], json!({"kept": true}));
        assert_eq!(jwk.scalar().unwrap().to_bytes(), scalar.to_bytes());
        assert_eq!(public.point().unwrap(), scalar.public_point());
    }

    #[test]
    fn key_use_rules_follow_jose() {
        let ops = |v: Value| Jwk::from_value(v).unwrap();
        assert!(ops(json!({"key_ops": ["verify"]})).allows("verify"));
        assert!(!ops(json!({"key_ops": ["verify"]})).allows("deriveKey"));
        assert!(ops(json!({"use": "sig"})).allows("verify"));
        assert!(ops(json!({"use": "enc"})).allows("deriveKey"));
        assert!(!ops(json!({})).allows("verify"));
    }

    #[test]
    fn debug_never_shows_the_private_scalar() {
        let jwk = Jwk::from_scalar(&Curve::P256.random_scalar().unwrap());
        let d = jwk.str_member("d").unwrap().unwrap().to_owned();
        assert!(!format!("{jwk:?}").contains(&d));
    }

    #[test]
    fn refuses_wrong_types_and_curves() {
        let bad = [
            json!({"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"}),
            json!({"kty": "OKP", "crv": "X25519", "x": "AA"}),
            json!({"kty": "EC", "crv": "P-256", "x": 5, "y": "AA"}),
            json!({"kty": "EC", "crv": "P-256"}),
        ];
        for v in bad {
            assert!(Jwk::from_value(v).unwrap().point().is_err());
        }
        assert!(Jwk::from_value(json!([1])).is_err());
    }
}
