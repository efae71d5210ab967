//! JSON Web Signatures (RFC 7515) with ES256/ES384/ES512, in the forms Tang serves:
//! flattened JSON with one signature, general JSON with several, and compact.

use ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::{Map, Value};

use crate::b64;
use crate::curve::Curve;
use crate::error::{Error, Result};
use crate::jwk::Jwk;

/// Largest JWS we parse. Tang advertisements are a few KiB; this leaves a wide margin
/// while bounding what a hostile server can make us hold.
pub const MAX_JWS_LEN: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct Signature {
    /// The protected header as it was encoded: the signature covers these exact bytes.
    pub protected: String,
    /// The decoded protected header.
    pub header: Map<String, Value>,
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Jws {
    /// The payload as it was encoded.
    pub payload: String,
    pub signatures: Vec<Signature>,
}

fn json_str<'a>(map: &'a Map<String, Value>, name: &'static str) -> Result<&'a str> {
    map.get(name)
        .and_then(Value::as_str)
        .ok_or(Error::Missing(name))
}

fn decode_header(protected: &str) -> Result<Map<String, Value>> {
    let bytes = b64::decode(protected, "protected")?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::Json("protected header")),
    }
}

fn parse_signature(obj: &Map<String, Value>) -> Result<Signature> {
    let protected = json_str(obj, "protected")?.to_owned();
    Ok(Signature {
        header: decode_header(&protected)?,
        signature: b64::decode(json_str(obj, "signature")?, "signature")?,
        protected,
    })
}

impl Jws {
    /// Parses a JWS in either JSON serialization.
    pub fn from_value(value: &Value) -> Result<Jws> {
        let obj = value.as_object().ok_or(Error::Json("JWS"))?;
        let payload = json_str(obj, "payload")?.to_owned();
        let signatures = match obj.get("signatures") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|s| parse_signature(s.as_object().ok_or(Error::Json("signatures"))?))
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(Error::Missing("signatures")),
            None => vec![parse_signature(obj)?],
        };
        if signatures.is_empty() {
            return Err(Error::Missing("signatures"));
        }
        Ok(Jws {
            payload,
            signatures,
        })
    }

    /// Parses JSON text in either JSON serialization, or the compact form.
    pub fn parse(text: &str) -> Result<Jws> {
        if text.len() > MAX_JWS_LEN {
            return Err(Error::TooLarge("JWS"));
        }
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            let value: Value = serde_json::from_str(trimmed).map_err(|_| Error::Json("JWS"))?;
            return Jws::from_value(&value);
        }
        let parts: Vec<&str> = trimmed.split('.').collect();
        let [protected, payload, signature] = parts[..] else {
            return Err(Error::Invalid("compact JWS: expected three parts"));
        };
        Ok(Jws {
            payload: payload.to_owned(),
            signatures: vec![Signature {
                header: decode_header(protected)?,
                signature: b64::decode(signature, "signature")?,
                protected: protected.to_owned(),
            }],
        })
    }

    pub fn payload_bytes(&self) -> Result<Vec<u8>> {
        b64::decode(&self.payload, "payload")
    }

    /// Whether any signature verifies under `key`. The header's `alg` must be the one
    /// that belongs to the key's curve, so a key cannot be used with a weaker hash.
    pub fn is_signed_by(&self, key: &Jwk) -> bool {
        let Ok(point) = key.point() else {
            return false;
        };
        self.signatures.iter().any(|sig| {
            sig.header.get("alg").and_then(Value::as_str) == Some(point.curve().signature_alg())
                && verify(
                    point.curve(),
                    point.x(),
                    point.y(),
                    signing_input(&sig.protected, &self.payload).as_bytes(),
                    &sig.signature,
                )
        })
    }

    /// Signs `payload` with each key; `headers[i]` is merged into key i's protected header
    /// (its `alg` is always set from the key). One key gives the flattened form, more
    /// give the general form, as tangd serves them.
    pub fn sign(payload: &[u8], keys: &[(&Jwk, Map<String, Value>)]) -> Result<Value> {
        let payload = b64::encode(payload);
        let mut signatures = Vec::with_capacity(keys.len());
        for (key, extra) in keys {
            let scalar = key.scalar()?;
            let mut header = Map::new();
            header.insert("alg".into(), scalar.curve().signature_alg().into());
            for (k, v) in extra {
                if k != "alg" {
                    header.insert(k.clone(), v.clone());
                }
            }
            let protected = b64::encode(
                serde_json::to_string(&header)
                    .map_err(|_| Error::Json("protected header"))?
                    .as_bytes(),
            );
            let sig = sign(
                scalar.curve(),
                scalar.to_bytes(),
                signing_input(&protected, &payload).as_bytes(),
            )?;
            let mut obj = Map::new();
            obj.insert("protected".into(), protected.into());
            obj.insert("signature".into(), b64::encode(&sig).into());
            signatures.push(Value::Object(obj));
        }
        let mut out = Map::new();
        out.insert("payload".into(), payload.into());
        match <[Value; 1]>::try_from(signatures) {
            Ok([Value::Object(one)]) => out.extend(one),
            Ok(_) => unreachable!("signatures are objects"),
            Err(many) => {
                if many.is_empty() {
                    return Err(Error::Missing("signing key"));
                }
                out.insert("signatures".into(), Value::Array(many));
            }
        }
        Ok(Value::Object(out))
    }
}

fn signing_input(protected: &str, payload: &str) -> String {
    format!("{protected}.{payload}")
}

macro_rules! on_curve {
    ($curve:expr, $module:ident => $body:expr) => {
        match $curve {
            Curve::P256 => {
                use p256 as $module;
                $body
            }
            Curve::P384 => {
                use p384 as $module;
                $body
            }
            Curve::P521 => {
                use p521 as $module;
                $body
            }
        }
    };
}

fn verify(curve: Curve, x: &[u8], y: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
    sec1.push(0x04);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    on_curve!(curve, c => {
        let Ok(key) = c::ecdsa::VerifyingKey::from_sec1_bytes(&sec1) else {
            return false;
        };
        let Ok(sig) = c::ecdsa::Signature::from_slice(signature) else {
            return false;
        };
        key.verify(message, &sig).is_ok()
    })
}

fn sign(curve: Curve, d: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    on_curve!(curve, c => {
        let key = c::ecdsa::SigningKey::from_slice(d).map_err(|_| Error::Invalid("d"))?;
        let sig: c::ecdsa::Signature = key.sign(message);
        Ok(sig.to_bytes().to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(curve: Curve) -> Jwk {
        Jwk::from_scalar(&curve.random_scalar().unwrap())
    }

    #[test]
    fn sign_then_verify_every_curve_both_forms() {
        for curve in Curve::ALL {
            let a = key(curve);
            let b = key(curve);
            let flat = Jws::sign(b"hello", &[(&a, Map::new())]).unwrap();
            assert!(flat.get("signatures").is_none());
            let jws = Jws::from_value(&flat).unwrap();
            assert!(jws.is_signed_by(&a.to_public()));
            assert!(!jws.is_signed_by(&b.to_public()));
            assert_eq!(jws.payload_bytes().unwrap(), b"hello");

            let general = Jws::sign(b"hi", &[(&a, Map::new()), (&b, Map::new())]).unwrap();
            let jws = Jws::parse(&general.to_string()).unwrap();
            assert_eq!(jws.signatures.len(), 2);
            assert!(jws.is_signed_by(&a) && jws.is_signed_by(&b));
        }
    }

    #[test]
    fn tampering_and_alg_confusion_fail() {
        let a = key(Curve::P256);
        let mut v = Jws::sign(b"hello", &[(&a, Map::new())]).unwrap();
        v["payload"] = b64::encode(b"hellO").into();
        assert!(!Jws::from_value(&v).unwrap().is_signed_by(&a));

        let mut v = Jws::sign(b"hello", &[(&a, Map::new())]).unwrap();
        v["protected"] = b64::encode(br#"{"alg":"ES512"}"#).into();
        assert!(!Jws::from_value(&v).unwrap().is_signed_by(&a));
    }

    #[test]
    fn compact_form_parses() {
        let a = key(Curve::P384);
        let v = Jws::sign(b"x", &[(&a, Map::new())]).unwrap();
        let compact = format!(
            "{}.{}.{}",
            v["protected"].as_str().unwrap(),
            v["payload"].as_str().unwrap(),
            v["signature"].as_str().unwrap()
        );
        assert!(Jws::parse(&compact).unwrap().is_signed_by(&a));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases = [
            "",
            "{}",
            "[]",
            "a.b",
            "a.b.c.d",
            r#"{"payload":"e30","signatures":[]}"#,
            r#"{"payload":"e30","signatures":[1]}"#,
            r#"{"payload":"e30","protected":"!!","signature":""}"#,
            r#"{"payload":"e30","protected":"W10","signature":""}"#,
        ];
        for case in cases {
            assert!(Jws::parse(case).is_err(), "{case:?}");
        }
        assert!(Jws::from_value(&json!({"payload": 1})).is_err());
    }
}
