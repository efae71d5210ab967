//! Private keys at rest: every organisation's signing key and every device's exchange key
//! is stored sealed under a key-encryption key (KEK) that lives outside the store (a file
//! or a systemd credential, see `file`), so a copied database or a backup of it alone
//! yields no private key.
//!
//! A sealed key is one line of text in the key's `jwk` column:
//!
//! ```text
//! nbde-sealed-v1.<KEK id>.<kid>.<nonce>.<ciphertext>
//! ```
//!
//! - KEK id: 16 hex digits, the first 8 bytes of SHA-256("nbde-kek-id-v1" ‖ KEK). It names
//!   the KEK without revealing it, so a wrong KEK is told as such instead of failing as a
//!   damaged key.
//! - kid: the RFC 7638 S256 thumbprint of the key (public, as advertised).
//! - nonce: 96 random bits, fresh for every sealing; ciphertext: AES-256-GCM of the JWK
//!   text with its tag, both base64url.
//!
//! The associated data binds the ciphertext to its place: the format, the key's family,
//! its organisation, its device and its kid. A sealed key copied into another row (another
//! org's signing key, another device's exchange key) does not open; the kid is checked
//! against the opened key, so it cannot be swapped within one device either.

pub mod file;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use nbde_proto::{Jwk, ThumbprintHash, b64};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const KEK_LEN: usize = 32;
const PREFIX: &str = "nbde-sealed-v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Where a private key belongs; part of what its sealing is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlot<'a> {
    /// An organisation's signing key.
    Signing { org: &'a str },
    /// A device's exchange key.
    Exchange { org: &'a str, device: &'a str },
}

impl KeySlot<'_> {
    fn associated_data(&self, kid: &str) -> Vec<u8> {
        let (family, org, device) = match self {
            KeySlot::Signing { org } => ("signing", *org, ""),
            KeySlot::Exchange { org, device } => ("exchange", *org, *device),
        };
        // NUL-separated: no name holds a NUL (they are URL path segments), so no two
        // slots give the same bytes.
        [PREFIX, family, org, device, kid].join("\0").into_bytes()
    }
}

impl std::fmt::Display for KeySlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySlot::Signing { org } => write!(f, "signing key of {org}"),
            KeySlot::Exchange { org, device } => write!(f, "exchange key of {org}/{device}"),
        }
    }
}

/// Why a stored key could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealError {
    /// Sealed under another KEK (its id).
    OtherKek(String),
    /// Plain JWK text, from before keys were sealed.
    NotSealed,
    /// Not a sealed key, or one that does not open under its own KEK id (damaged or moved
    /// from another row).
    Damaged(&'static str),
    Random,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealError::OtherKek(id) => write!(f, "sealed under another key-encryption key ({id})"),
            SealError::NotSealed => f.write_str("stored in plain text, not sealed"),
            SealError::Damaged(what) => write!(f, "damaged sealed key: {what}"),
            SealError::Random => f.write_str("no randomness for a nonce"),
        }
    }
}

impl std::error::Error for SealError {}

/// A sealed key's parts, parsed once from its stored text.
pub struct Sealed<'a> {
    pub kek_id: &'a str,
    pub kid: &'a str,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl<'a> Sealed<'a> {
    /// Whether `text` is a sealed key (of any KEK) rather than a plain JWK.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(PREFIX) && text.as_bytes().get(PREFIX.len()) == Some(&b'.')
    }

    pub fn parse(text: &'a str) -> Result<Sealed<'a>, SealError> {
        if !Sealed::is_sealed(text) {
            return Err(if text.starts_with('{') {
                SealError::NotSealed
            } else {
                SealError::Damaged("not a sealed key")
            });
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [_, kek_id, kid, nonce, ciphertext] = parts[..] else {
            return Err(SealError::Damaged("expected five dot-separated parts"));
        };
        let nonce = b64::decode(nonce, "nonce").map_err(|_| SealError::Damaged("nonce"))?;
        let ciphertext =
            b64::decode(ciphertext, "ciphertext").map_err(|_| SealError::Damaged("ciphertext"))?;
        if nonce.len() != NONCE_LEN || ciphertext.len() < TAG_LEN {
            return Err(SealError::Damaged("nonce or tag length"));
        }
        Ok(Sealed {
            kek_id,
            kid,
            nonce,
            ciphertext,
        })
    }
}

/// The key-encryption key. Never printed: `Debug` shows its id only.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<[u8; KEK_LEN]>,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// 32 fresh random bytes.
    pub fn generate() -> Result<Kek, SealError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        getrandom::fill(key.as_mut_slice()).map_err(|_| SealError::Random)?;
        Ok(Kek::from_key(key))
    }

    /// A KEK from its bytes; None unless there are exactly 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Kek> {
        let key: [u8; KEK_LEN] = bytes.try_into().ok()?;
        Some(Kek::from_key(Zeroizing::new(key)))
    }

    fn from_key(key: Zeroizing<[u8; KEK_LEN]>) -> Kek {
        let digest = Sha256::new()
            .chain_update(b"nbde-kek-id-v1")
            .chain_update(key.as_slice())
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Kek { key, id }
    }

    /// The KEK's public name, as recorded in the store and in every key sealed under it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bytes, for writing the KEK file only.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.key.as_slice()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.key.as_slice().try_into().expect("32-byte key"))
    }

    /// Seals the private JWK `jwk_text` for `slot`: the text to store.
    pub fn seal(&self, slot: &KeySlot<'_>, jwk_text: &str) -> Result<String, SealError> {
        let kid = serde_json::from_str(jwk_text)
            .ok()
            .and_then(|v| Jwk::from_value(v).ok())
            .and_then(|jwk| jwk.thumbprint(ThumbprintHash::S256).ok())
            .ok_or(SealError::Damaged("not a JWK"))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buffer = Zeroizing::new(jwk_text.as_bytes().to_vec());
        let tag = self
            .cipher()
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &slot.associated_data(&kid),
                buffer.as_mut_slice().into(),
            )
            .map_err(|_| SealError::Damaged("too large"))?;
        // The buffer now holds ciphertext only.
        let mut sealed = buffer.to_vec();
        sealed.extend_from_slice(&tag);
        Ok(format!(
            "{PREFIX}.{}.{kid}.{}.{}",
            self.id,
            b64::encode(&nonce),
            b64::encode(&sealed)
        ))
    }

    /// Opens a key sealed for `slot` under this KEK: the private JWK text.
    pub fn open(&self, slot: &KeySlot<'_>, stored: &str) -> Result<Zeroizing<String>, SealError> {
        let sealed = Sealed::parse(stored)?;
        if sealed.kek_id != self.id {
            return Err(SealError::OtherKek(sealed.kek_id.to_owned()));
        }
        let (body, tag) = sealed
            .ciphertext
            .split_at(sealed.ciphertext.len() - TAG_LEN);
        let nonce =
            Nonce::try_from(sealed.nonce.as_slice()).map_err(|_| SealError::Damaged("nonce"))?;
        let tag = Tag::try_from(tag).map_err(|_| SealError::Damaged("tag"))?;
        let mut plain = Zeroizing::new(body.to_vec());
        self.cipher()
            .decrypt_inout_detached(
                &nonce,
                &slot.associated_data(sealed.kid),
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| {
                SealError::Damaged("does not open (damaged, or moved from another row)")
            })?;
        let text = match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                return Err(SealError::Damaged("not UTF-8"));
            }
        };
        let kid = serde_json::from_str(&text)
            .ok()
            .and_then(|v| Jwk::from_value(v).ok())
            .and_then(|jwk| jwk.thumbprint(ThumbprintHash::S256).ok());
        if kid.as_deref() != Some(sealed.kid) {
            return Err(SealError::Damaged("the key does not match its kid"));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk() -> String {
        crate::keys::generate_exchange_key(nbde_proto::Curve::P256).unwrap()
    }

    const WEB1: KeySlot<'static> = KeySlot::Exchange {
        org: "acme",
        device: "web1",
    };

    #[test]
    fn a_sealed_key_opens_for_its_slot_only() {
        let kek = Kek::generate().unwrap();
        let text = jwk();
        let sealed = kek.seal(&WEB1, &text).unwrap();
        assert!(!sealed.contains("\"d\""), "{sealed}");
        assert_eq!(*kek.open(&WEB1, &sealed).unwrap(), text);
        for other in [
            KeySlot::Exchange {
                org: "acme",
                device: "web2",
            },
            KeySlot::Exchange {
                org: "other",
                device: "web1",
            },
            KeySlot::Signing { org: "acme" },
        ] {
            assert!(
                matches!(kek.open(&other, &sealed), Err(SealError::Damaged(_))),
                "{other}"
            );
        }
    }

    #[test]
    fn another_kek_is_named_not_mistaken_for_damage() {
        let kek = Kek::generate().unwrap();
        let other = Kek::generate().unwrap();
        let sealed = kek.seal(&WEB1, &jwk()).unwrap();
        assert_eq!(
            other.open(&WEB1, &sealed).unwrap_err(),
            SealError::OtherKek(kek.id().to_owned())
        );
        assert_eq!(other.open(&WEB1, &jwk()).unwrap_err(), SealError::NotSealed);
    }

    #[test]
    fn a_changed_kid_or_ciphertext_does_not_open() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal(&WEB1, &jwk()).unwrap();
        let parts: Vec<&str> = sealed.split('.').collect();
        let other_kid = kek.seal(&WEB1, &jwk()).unwrap();
        let other_kid = other_kid.split('.').nth(2).unwrap();
        let swapped = [parts[0], parts[1], other_kid, parts[3], parts[4]].join(".");
        assert!(kek.open(&WEB1, &swapped).is_err());
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            kek.open(&WEB1, &String::from_utf8(flipped).unwrap())
                .is_err()
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let kek = Kek::generate().unwrap();
        let text = jwk();
        assert_ne!(
            kek.seal(&WEB1, &text).unwrap(),
            kek.seal(&WEB1, &text).unwrap()
        );
    }
}
