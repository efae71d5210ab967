//! Tang advertisements: a JWS over `{"keys":[…]}` that every signing key in it signed.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::jwk::{Jwk, ThumbprintHash};
use crate::jws::Jws;

/// The key set of an advertisement (the JWS payload), as stored in a Clevis JWE header.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Reads `{"keys":[…]}` without checking any signature: for the copy that a JWE header
    /// carries, which the JWE's own tag authenticates.
    pub fn from_value(value: &Value) -> Result<KeySet> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(Error::Missing("keys"))?;
        let keys = keys
            .iter()
            .map(|k| Jwk::from_value(k.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(KeySet { keys })
    }

    /// Verifies an advertisement: the payload is a key set with at least one signing key,
    /// and every signing key in it signed the JWS (as `jose jws ver -a` with the keys that
    /// `jose jwk use -r -u verify` selects). A server cannot slip in a key it did not sign
    /// with, and a stripped signature fails.
    pub fn from_verified_adv(jws: &Jws) -> Result<KeySet> {
        let payload = jws.payload_bytes()?;
        let value: Value =
            serde_json::from_slice(&payload).map_err(|_| Error::Json("adv payload"))?;
        let set = KeySet::from_value(&value)?;
        let mut signers = set.signing_keys().peekable();
        if signers.peek().is_none() {
            return Err(Error::Missing("adv signing key"));
        }
        for key in signers {
            if !jws.is_signed_by(key) {
                return Err(Error::BadSignature);
            }
        }
        Ok(set)
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn signing_keys(&self) -> impl Iterator<Item = &Jwk> {
        self.keys.iter().filter(|k| k.allows("verify"))
    }

    /// The exchange key Clevis binds to: the first key that allows `deriveKey`.
    pub fn exchange_key(&self) -> Result<&Jwk> {
        self.keys
            .iter()
            .find(|k| k.allows("deriveKey"))
            .ok_or(Error::Missing("adv exchange key"))
    }

    /// The key whose thumbprint (any accepted hash) is `thp`.
    pub fn find(&self, thp: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.matches_thumbprint(thp))
    }

    /// Whether one of the signing keys has the thumbprint `thp` (the `thp` a user trusts),
    /// taken with a hash clevis accepts there (S1 or S256).
    pub fn is_signed_with_thumbprint(&self, thp: &str) -> bool {
        self.signing_keys()
            .any(|k| k.matches_thumbprint_of(thp, &ThumbprintHash::CLEVIS_TRUSTED))
    }

    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "keys".into(),
            Value::Array(self.keys.iter().map(Jwk::to_value).collect()),
        );
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;
    use serde_json::json;

    fn key(ops: &[&str]) -> Jwk {
        let mut k = Jwk::from_scalar(&Curve::P521.random_scalar().unwrap());
        k.set("key_ops", json!(ops));
        k
    }

    fn adv(signers: &[&Jwk], advertised: &[&Jwk]) -> Jws {
        let payload = json!({"keys": advertised.iter().map(|k| k.to_public().to_value()).collect::<Vec<_>>()});
        let keys: Vec<_> = signers.iter().map(|k| (*k, Map::new())).collect();
        Jws::from_value(&Jws::sign(payload.to_string().as_bytes(), &keys).unwrap()).unwrap()
    }

    #[test]
    fn every_signing_key_must_sign() {
        let sig_a = key(&["sign", "verify"]);
        let sig_b = key(&["sign", "verify"]);
        let exc = key(&["deriveKey"]);
        let good = adv(&[&sig_a, &sig_b], &[&sig_a, &sig_b, &exc]);
        let set = KeySet::from_verified_adv(&good).unwrap();
        assert_eq!(
            set.exchange_key().unwrap().point().unwrap(),
            exc.point().unwrap()
        );
        let thp = sig_b.thumbprint(ThumbprintHash::S256).unwrap();
        assert!(set.is_signed_with_thumbprint(&thp));
        let exc_thp = exc.thumbprint(ThumbprintHash::S1).unwrap();
        assert!(!set.is_signed_with_thumbprint(&exc_thp));
        assert!(set.find(&exc_thp).is_some());
        // clevis trusts a thp taken with S1 or S256 only, though a server finds keys by any.
        assert!(set.is_signed_with_thumbprint(&sig_a.thumbprint(ThumbprintHash::S1).unwrap()));
        for hash in [
            ThumbprintHash::S224,
            ThumbprintHash::S384,
            ThumbprintHash::S512,
        ] {
            let thp = sig_a.thumbprint(hash).unwrap();
            assert!(!set.is_signed_with_thumbprint(&thp), "{hash:?}");
            assert!(set.find(&thp).is_some(), "{hash:?}");
        }

        let missing_one = adv(&[&sig_a], &[&sig_a, &sig_b, &exc]);
        assert_eq!(
            KeySet::from_verified_adv(&missing_one),
            Err(Error::BadSignature)
        );
        let unsigned = adv(&[&exc], &[&exc]);
        assert_eq!(
            KeySet::from_verified_adv(&unsigned),
            Err(Error::Missing("adv signing key"))
        );
    }
}
