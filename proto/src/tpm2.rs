//! `clevis.tpm2`: a key sealed in the machine's TPM, as `clevis encrypt tpm2` writes it.
//! Parsed here without touching a TPM; unsealing is `nbde-tpm2`'s (it links the TSS).

use serde_json::{Map, Value};

use crate::b64;
use crate::error::{Error, Result};

/// PCRs a TPM 2.0 has (0..=23 on PC platforms; three select octets).
pub const PCR_COUNT: u8 = 24;

/// The sealed key and how to reach it: the TPM recreates the primary key from `hash` and
/// `key` (the same template `tpm2_createprimary -g HASH -G KEY` uses), loads `public` and
/// `private` under it and unseals, through a PCR policy when `pcrs` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tpm2 {
    /// Name algorithm of the primary and sealed objects (`sha256`, …).
    pub hash: String,
    /// Primary key algorithm (`ecc`, `rsa`, …), as tpm2-tools spells it.
    pub key: String,
    /// The sealed object's public area, a marshalled `TPM2B_PUBLIC` (`jwk_pub`).
    pub public: Vec<u8>,
    /// The sealed object's private area, a marshalled `TPM2B_PRIVATE` (`jwk_priv`).
    pub private: Vec<u8>,
    /// The PCR policy the object is bound to, if any.
    pub pcrs: Option<PcrPolicy>,
}

/// PCR bank and indices, e.g. `sha256:0,7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrPolicy {
    pub bank: String,
    /// Ascending, without repeats.
    pub ids: Vec<u8>,
}

impl PcrPolicy {
    /// Parses clevis's `pcr_ids` (`"0,7"`, or a JSON array of numbers or strings).
    pub fn parse(bank: &str, ids: &Value) -> Result<PcrPolicy> {
        let items: Vec<String> = match ids {
            Value::String(text) => text
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            Value::Array(list) => list
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.trim().to_owned()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(Error::Invalid("pcr_ids")),
                })
                .collect::<Result<_>>()?,
            _ => return Err(Error::Invalid("pcr_ids")),
        };
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            let id: u8 = item.parse().map_err(|_| Error::Invalid("pcr_ids"))?;
            if id >= PCR_COUNT {
                return Err(Error::Invalid("pcr_ids (0 to 23)"));
            }
            parsed.push(id);
        }
        parsed.sort_unstable();
        parsed.dedup();
        if parsed.is_empty() {
            return Err(Error::Invalid("pcr_ids (empty)"));
        }
        if bank.is_empty() {
            return Err(Error::Invalid("pcr_bank"));
        }
        Ok(PcrPolicy {
            bank: bank.to_owned(),
            ids: parsed,
        })
    }

    /// The ids as clevis records them: `0,7`.
    pub fn ids_text(&self) -> String {
        let ids: Vec<String> = self.ids.iter().map(u8::to_string).collect();
        ids.join(",")
    }
}

fn text<'a>(tpm2: &'a Map<String, Value>, name: &str, path: &'static str) -> Result<&'a str> {
    tpm2.get(name)
        .and_then(Value::as_str)
        .ok_or(Error::Missing(path))
}

impl Tpm2 {
    /// Reads the `clevis.tpm2` member of a JWE header.
    pub fn parse(tpm2: &Map<String, Value>) -> Result<Tpm2> {
        let hash = text(tpm2, "hash", "clevis.tpm2.hash")?;
        let key = text(tpm2, "key", "clevis.tpm2.key")?;
        let public = b64::decode(
            text(tpm2, "jwk_pub", "clevis.tpm2.jwk_pub")?,
            "clevis.tpm2.jwk_pub",
        )?;
        let private = b64::decode(
            text(tpm2, "jwk_priv", "clevis.tpm2.jwk_priv")?,
            "clevis.tpm2.jwk_priv",
        )?;
        for (blob, what) in [
            (&public, "clevis.tpm2.jwk_pub (TPM2B size)"),
            (&private, "clevis.tpm2.jwk_priv (TPM2B size)"),
        ] {
            if !sized(blob) {
                return Err(Error::Invalid(what));
            }
        }
        let pcrs = match tpm2.get("pcr_ids") {
            None => None,
            Some(ids) => {
                let bank = text(tpm2, "pcr_bank", "clevis.tpm2.pcr_bank")?;
                Some(PcrPolicy::parse(bank, ids)?)
            }
        };
        Ok(Tpm2 {
            hash: hash.to_owned(),
            key: key.to_owned(),
            public,
            private,
            pcrs,
        })
    }

    /// The header member, as `clevis encrypt tpm2` writes it.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("hash".into(), self.hash.clone().into());
        map.insert("key".into(), self.key.clone().into());
        if let Some(pcrs) = &self.pcrs {
            map.insert("pcr_bank".into(), pcrs.bank.clone().into());
            map.insert("pcr_ids".into(), pcrs.ids_text().into());
        }
        map.insert("jwk_pub".into(), b64::encode(&self.public).into());
        map.insert("jwk_priv".into(), b64::encode(&self.private).into());
        Value::Object(map)
    }
}

/// Whether `blob` is a TPM2B: a big-endian u16 size, then exactly that many bytes.
fn sized(blob: &[u8]) -> bool {
    blob.len() >= 2 && usize::from(u16::from_be_bytes([blob[0], blob[1]])) == blob.len() - 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pcr_ids_as_clevis_accepts_them() {
        let p = PcrPolicy::parse("sha256", &json!("7, 0,7")).unwrap();
        assert_eq!(p.ids, vec![0, 7]);
        assert_eq!(p.ids_text(), "0,7");
        let p = PcrPolicy::parse("sha1", &json!([0, "7"])).unwrap();
        assert_eq!(p.ids_text(), "0,7");
        assert!(PcrPolicy::parse("sha1", &json!("24")).is_err());
        assert!(PcrPolicy::parse("sha1", &json!("x")).is_err());
        assert!(PcrPolicy::parse("sha1", &json!("")).is_err());
        assert!(PcrPolicy::parse("", &json!("1")).is_err());
    }

    #[test]
    fn header_round_trips_and_checks_sizes() {
        let member = json!({
            "hash": "sha256", "key": "ecc", "pcr_bank": "sha1", "pcr_ids": "0,7",
            "jwk_pub": b64::encode(&[0, 2, 9, 9]), "jwk_priv": b64::encode(&[0, 1, 5]),
        });
        let parsed = Tpm2::parse(member.as_object().unwrap()).unwrap();
        assert_eq!(parsed.public, vec![0, 2, 9, 9]);
        assert_eq!(parsed.to_value(), member);
        let mut bad = member.clone();
        bad["jwk_priv"] = b64::encode(&[0, 9, 5]).into();
        assert_eq!(
            Tpm2::parse(bad.as_object().unwrap()).unwrap_err(),
            Error::Invalid("clevis.tpm2.jwk_priv (TPM2B size)")
        );
        let mut no_bank = member;
        no_bank.as_object_mut().unwrap().remove("pcr_bank");
        assert_eq!(
            Tpm2::parse(no_bank.as_object().unwrap()).unwrap_err(),
            Error::Missing("clevis.tpm2.pcr_bank")
        );
    }
}
