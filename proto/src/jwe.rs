//! JSON Web Encryption (RFC 7516) as Clevis writes it: a protected header only,
//! A256GCM content encryption, and either ECDH-ES (tang) or `dir` (sss) key management.
//! Compact form on pipes, flattened JSON in LUKS2 tokens.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::b64;
use crate::curve::{EcPoint, EcScalar};
use crate::error::{Error, Result};
use crate::jwk::Jwk;
use crate::kdf::concat_kdf;

/// Largest JWE we parse. A LUKS2 token area is 16 KiB at most per header; sss nests JWEs
/// inside headers, so allow well beyond that but stay bounded.
pub const MAX_JWE_LEN: usize = 1 << 20;
const IV_LEN: usize = 12;
const CEK_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub struct Jwe {
    /// The protected header exactly as encoded: it is the AAD.
    protected: String,
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn member<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<&'a str> {
    obj.get(name)
        .and_then(Value::as_str)
        .ok_or(Error::Missing(name))
}

impl Jwe {
    fn from_parts(
        protected: &str,
        encrypted_key: &str,
        iv: &str,
        ciphertext: &str,
        tag: &str,
    ) -> Result<Jwe> {
        let header_bytes = b64::decode(protected, "protected")?;
        let header = match serde_json::from_slice(&header_bytes) {
            Ok(Value::Object(map)) => map,
            _ => return Err(Error::Json("JWE protected header")),
        };
        Ok(Jwe {
            protected: protected.to_owned(),
            header,
            encrypted_key: b64::decode(encrypted_key, "encrypted_key")?,
            iv: b64::decode(iv, "iv")?,
            ciphertext: b64::decode(ciphertext, "ciphertext")?,
            tag: b64::decode(tag, "tag")?,
        })
    }

    /// Parses the compact form: exactly five dot-separated parts.
    pub fn parse_compact(text: &str) -> Result<Jwe> {
        Jwe::parse_large_compact(text, MAX_JWE_LEN)
    }

    /// Parses the compact form of a JWE of up to `max_len` bytes: for payloads larger than
    /// a pin's, such as an escrowed LUKS header.
    pub fn parse_large_compact(text: &str, max_len: usize) -> Result<Jwe> {
        if text.len() > max_len {
            return Err(Error::TooLarge("JWE"));
        }
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(Error::Invalid("compact JWE: expected five parts"));
        };
        Jwe::from_parts(protected, encrypted_key, iv, ciphertext, tag)
    }

    /// Parses the flattened JSON form. Shared unprotected headers and extra AAD change
    /// what is authenticated and Clevis never writes them, so they are refused.
    pub fn from_flattened(value: &Value) -> Result<Jwe> {
        let obj = value.as_object().ok_or(Error::Json("JWE"))?;
        for unsupported in ["unprotected", "header", "aad", "recipients"] {
            if obj.contains_key(unsupported) {
                return Err(Error::Unsupported(format!("JWE member {unsupported:?}")));
            }
        }
        let encrypted_key = match obj.get("encrypted_key") {
            None => "",
            Some(Value::String(s)) => s,
            Some(_) => return Err(Error::Missing("encrypted_key")),
        };
        Jwe::from_parts(
            member(obj, "protected")?,
            encrypted_key,
            member(obj, "iv")?,
            member(obj, "ciphertext")?,
            member(obj, "tag")?,
        )
    }

    /// Parses either form, telling them apart by the first character.
    pub fn parse(text: &str) -> Result<Jwe> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            if trimmed.len() > MAX_JWE_LEN {
                return Err(Error::TooLarge("JWE"));
            }
            let value: Value = serde_json::from_str(trimmed).map_err(|_| Error::Json("JWE"))?;
            Jwe::from_flattened(&value)
        } else {
            Jwe::parse_compact(trimmed)
        }
    }

    pub fn to_compact(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.protected,
            b64::encode(&self.encrypted_key),
            b64::encode(&self.iv),
            b64::encode(&self.ciphertext),
            b64::encode(&self.tag)
        )
    }

    /// The flattened JSON form with members in the order `jose` sorts them.
    pub fn to_flattened(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("ciphertext".into(), b64::encode(&self.ciphertext).into());
        obj.insert(
            "encrypted_key".into(),
            b64::encode(&self.encrypted_key).into(),
        );
        obj.insert("iv".into(), b64::encode(&self.iv).into());
        obj.insert("protected".into(), self.protected.clone().into());
        obj.insert("tag".into(), b64::encode(&self.tag).into());
        Value::Object(obj)
    }

    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }

    /// A string member of the protected header.
    pub fn header_str(&self, name: &'static str) -> Result<&str> {
        member(&self.header, name)
    }

    /// Encrypts `plaintext` under `cek` with A256GCM, `header` becoming the protected
    /// header (its `enc` is set here).
    pub fn encrypt(mut header: Map<String, Value>, cek: &[u8], plaintext: &[u8]) -> Result<Jwe> {
        header.insert("enc".into(), "A256GCM".into());
        let json = serde_json::to_string(&header).map_err(|_| Error::Json("JWE header"))?;
        let protected = b64::encode(json.as_bytes());
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|_| Error::Random)?;
        let cipher = Aes256Gcm::new_from_slice(cek).map_err(|_| Error::Invalid("CEK length"))?;
        let mut ciphertext = plaintext.to_vec();
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::from(iv),
                protected.as_bytes(),
                ciphertext.as_mut_slice().into(),
            )
            .map_err(|_| Error::TooLarge("plaintext"))?;
        Ok(Jwe {
            protected,
            header,
            encrypted_key: Vec::new(),
            iv: iv.to_vec(),
            ciphertext,
            tag: tag.to_vec(),
        })
    }

    /// Decrypts with the content encryption key `cek`.
    pub fn decrypt(&self, cek: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        match self.header_str("enc")? {
            "A256GCM" => {}
            other => return Err(Error::Unsupported(format!("JWE enc {other:?}"))),
        }
        if !self.encrypted_key.is_empty() {
            // ECDH-ES and dir both use the agreed key directly (RFC 7516 §5.1 step 6).
            return Err(Error::Invalid("encrypted_key must be empty"));
        }
        let nonce = Nonce::try_from(self.iv.as_slice()).map_err(|_| Error::Invalid("iv"))?;
        let tag = Tag::try_from(self.tag.as_slice()).map_err(|_| Error::Invalid("tag"))?;
        let cipher = Aes256Gcm::new_from_slice(cek).map_err(|_| Error::Invalid("CEK length"))?;
        let mut plaintext = Zeroizing::new(self.ciphertext.clone());
        cipher
            .decrypt_inout_detached(
                &nonce,
                self.protected.as_bytes(),
                plaintext.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(plaintext)
    }

    /// ECDH-ES key agreement (RFC 7518 §4.6) with `recipient`: a fresh ephemeral key
    /// goes into `epk`, and the CEK is derived from the shared x coordinate.
    pub fn encrypt_ecdh_es(
        mut header: Map<String, Value>,
        recipient: &EcPoint,
        plaintext: &[u8],
    ) -> Result<Jwe> {
        let ephemeral = recipient.curve().random_scalar()?;
        let shared = recipient.mul(&ephemeral)?;
        header.insert("alg".into(), "ECDH-ES".into());
        header.insert(
            "epk".into(),
            Jwk::from_point(&ephemeral.public_point()).to_value(),
        );
        Jwe::encrypt(header, &ecdh_es_cek(shared.x()), plaintext)
    }

    /// Decrypts an ECDH-ES JWE with the recipient's private key: the `epk` must be on the
    /// key's curve (a point off it or on another is refused before any multiplication).
    pub fn decrypt_ecdh_es(&self, recipient: &EcScalar) -> Result<Zeroizing<Vec<u8>>> {
        match self.header_str("alg")? {
            "ECDH-ES" => {}
            other => return Err(Error::Unsupported(format!("JWE alg {other:?}"))),
        }
        let epk = self.epk()?;
        if epk.curve() != recipient.curve() {
            return Err(Error::Invalid("epk curve (not the key's)"));
        }
        let shared = epk.mul(recipient)?;
        self.decrypt(&ecdh_es_cek(shared.x()))
    }

    /// The `epk` of an ECDH-ES header, checked to be a valid point.
    pub fn epk(&self) -> Result<EcPoint> {
        let epk = self.header.get("epk").ok_or(Error::Missing("epk"))?;
        Jwk::from_value(epk.clone())?.point()
    }

    /// Direct encryption (`alg: dir`) with a 256-bit key.
    pub fn encrypt_dir(
        mut header: Map<String, Value>,
        cek: &[u8],
        plaintext: &[u8],
    ) -> Result<Jwe> {
        if cek.len() != CEK_LEN {
            return Err(Error::Invalid("CEK length"));
        }
        header.insert("alg".into(), "dir".into());
        Jwe::encrypt(header, cek, plaintext)
    }
}

/// The A256GCM content key that ECDH-ES derives from the shared secret `z`
/// (the x coordinate of the shared point), with empty `apu` and `apv` as Clevis uses.
pub fn ecdh_es_cek(z: &[u8]) -> Zeroizing<Vec<u8>> {
    concat_kdf(z, "A256GCM", b"", b"", 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;
    use serde_json::json;

    fn header() -> Map<String, Value> {
        json!({"clevis": {"pin": "test"}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn ecdh_es_round_trip_every_curve_and_both_forms() {
        for curve in Curve::ALL {
            let recipient = curve.random_scalar().unwrap();
            let jwe = Jwe::encrypt_ecdh_es(header(), &recipient.public_point(), b"secret").unwrap();
            assert_eq!(jwe.header_str("alg").unwrap(), "ECDH-ES");
            let compact = jwe.to_compact();
            assert_eq!(compact.split('.').nth(1), Some(""), "empty encrypted key");
            let again = Jwe::parse(&compact).unwrap();
            assert_eq!(again, jwe);
            assert_eq!(Jwe::from_flattened(&jwe.to_flattened()).unwrap(), jwe);
            let z = jwe.epk().unwrap().mul(&recipient).unwrap();
            assert_eq!(&*again.decrypt(&ecdh_es_cek(z.x())).unwrap(), b"secret");
        }
    }

    #[test]
    fn wrong_key_or_changed_bytes_fail_to_decrypt() {
        let cek = [9u8; 32];
        let jwe = Jwe::encrypt_dir(header(), &cek, b"data").unwrap();
        assert_eq!(jwe.decrypt(&[8u8; 32]), Err(Error::Decrypt));
        let mut changed = jwe.clone();
        changed.ciphertext[0] ^= 1;
        assert_eq!(changed.decrypt(&cek), Err(Error::Decrypt));
        // The protected header is authenticated too.
        let mut parts: Vec<String> = jwe.to_compact().split('.').map(String::from).collect();
        parts[0] = b64::encode(br#"{"alg":"dir","enc":"A256GCM"}"#);
        let forged = Jwe::parse_compact(&parts.join(".")).unwrap();
        assert_eq!(forged.decrypt(&cek), Err(Error::Decrypt));
        assert_eq!(&*jwe.decrypt(&cek).unwrap(), b"data");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases = [
            "",
            "a.b.c.d",
            "a.b.c.d.e.f",
            "!.a.b.c.d",
            "W10....",
            "{}",
            r#"{"protected":"e30","iv":"","ciphertext":"","tag":"","aad":"x"}"#,
            r#"{"protected":"e30","iv":"","ciphertext":"","tag":5}"#,
        ];
        for case in cases {
            assert!(Jwe::parse(case).is_err(), "{case:?}");
        }
        // Parses, but the header has no enc and the iv is empty: decrypt says so.
        let empty = Jwe::parse("e30....").unwrap();
        assert_eq!(empty.decrypt(&[0u8; 32]), Err(Error::Missing("enc")));
        let odd = Jwe::parse(&format!("{}....", b64::encode(br#"{"enc":"A256GCM"}"#))).unwrap();
        assert_eq!(odd.decrypt(&[0u8; 32]), Err(Error::Invalid("iv")));
    }
}
