//! The clevis `tpm2` pin: `nbde-tpm2 encrypt CONFIG` and `nbde-tpm2 decrypt` speak the
//! protocol of clevis's `clevis-encrypt-tpm2` and `clevis-decrypt-tpm2` (plaintext or JWE
//! on stdin, the other on stdout) and read and write the same JWEs.
//!
//! It is a program of its own, not part of `nbde-unlock`, because the TSS it links
//! (libtss2-esys) links OpenSSL's libcrypto: the unlock binary stays free of both, and an
//! initramfs carries this program and its libraries only when a volume has a tpm2 binding.

pub mod error;
pub mod tpm;

use nbde_proto::tpm2::{PcrPolicy, Tpm2};
use nbde_proto::{ClevisJwe, Jwe, Pin, b64};
use serde_json::{Value, json};
use zeroize::Zeroizing;

pub use error::Tpm2Error;
use tpm::Tpm;

/// A256GCM key length.
const KEY_LEN: usize = 32;
/// Members `clevis encrypt tpm2` reads from its config.
const CONFIG_MEMBERS: [&str; 5] = ["hash", "key", "pcr_bank", "pcr_ids", "pcr_digest"];

/// `clevis encrypt tpm2 CONFIG`, parsed once.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub hash: String,
    pub key: String,
    pub pcrs: Option<PcrPolicy>,
    /// The PCR values to seal to instead of the current ones (`pcr_digest`).
    pub pcr_values: Option<Vec<u8>>,
}

impl Config {
    /// Reads the config with clevis's defaults (sha256, ecc, bank sha1). Unlike clevis, a
    /// member it does not know is refused: a misspelt `pcr_ids` would otherwise seal
    /// without the policy the user asked for.
    pub fn parse(text: &str) -> Result<Config, Tpm2Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|_| Tpm2Error::Input("configuration is not JSON".into()))?;
        let Value::Object(config) = value else {
            return Err(Tpm2Error::Input(
                "configuration must be a JSON object".into(),
            ));
        };
        if let Some(unknown) = config
            .keys()
            .find(|k| !CONFIG_MEMBERS.contains(&k.as_str()))
        {
            return Err(Tpm2Error::Input(format!(
                "unknown configuration member {unknown:?} (known: {})",
                CONFIG_MEMBERS.join(", ")
            )));
        }
        let text = |name: &str, default: &str| -> Result<String, Tpm2Error> {
            match config.get(name) {
                None => Ok(default.to_owned()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(Tpm2Error::Input(format!("{name:?} must be a string"))),
            }
        };
        let hash = text("hash", "sha256")?;
        let key = text("key", "ecc")?;
        let bank = text("pcr_bank", "sha1")?;
        tpm::hashing_algorithm(&hash)?;
        tpm::hashing_algorithm(&bank)?;
        let pcrs = config
            .get("pcr_ids")
            .map(|ids| PcrPolicy::parse(&bank, ids))
            .transpose()
            .map_err(|e| Tpm2Error::Input(e.to_string()))?;
        let pcr_values = match config.get("pcr_digest") {
            None => None,
            Some(_) if pcrs.is_none() => {
                return Err(Tpm2Error::Input("pcr_digest without pcr_ids".into()));
            }
            Some(Value::String(digest)) => Some(
                b64::decode(digest, "pcr_digest").map_err(|e| Tpm2Error::Input(e.to_string()))?,
            ),
            Some(_) => return Err(Tpm2Error::Input("\"pcr_digest\" must be a string".into())),
        };
        Ok(Config {
            hash,
            key,
            pcrs,
            pcr_values,
        })
    }
}

/// Seals a fresh key in the TPM and encrypts `plaintext` under it.
pub fn encrypt(config: &Config, plaintext: &[u8]) -> Result<Jwe, Tpm2Error> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(&mut key[..]).map_err(|e| Tpm2Error::Tpm(format!("random: {e}")))?;
    // The JWK as `jose jwk gen -i '{"alg":"A256GCM"}'` prints it, with the newline the
    // clevis script's here-string adds: what stock clevis seals.
    let jwk = Zeroizing::new(format!(
        "{{\"alg\":\"A256GCM\",\"k\":\"{}\",\"key_ops\":[\"encrypt\",\"decrypt\"],\"kty\":\"oct\"}}\n",
        b64::encode(&key[..])
    ));
    let mut tpm = Tpm::open()?;
    let pcrs = config
        .pcrs
        .as_ref()
        .map(|pcrs| (pcrs, config.pcr_values.as_deref()));
    let (public, private) = tpm.seal(&config.hash, &config.key, pcrs, jwk.as_bytes())?;
    let binding = Tpm2 {
        hash: config.hash.clone(),
        key: config.key.clone(),
        public,
        private,
        pcrs: config.pcrs.clone(),
    };
    let header = json!({"clevis": {"pin": "tpm2", "tpm2": binding.to_value()}});
    let Value::Object(header) = header else {
        unreachable!("json! object")
    };
    Jwe::encrypt_dir(header, &key[..], plaintext).map_err(|e| Tpm2Error::Tpm(e.to_string()))
}

/// Unseals the key of a tpm2 JWE and decrypts it.
pub fn decrypt(jwe_text: &str) -> Result<Zeroizing<Vec<u8>>, Tpm2Error> {
    let clevis = ClevisJwe::from_compact(jwe_text.trim())
        .map_err(|e| Tpm2Error::Input(format!("not a clevis JWE: {e}")))?;
    let Pin::Tpm2(binding) = &clevis.pin else {
        return Err(Tpm2Error::Input(format!(
            "the JWE's pin is {}, not tpm2",
            clevis.name()
        )));
    };
    let sealed = Tpm::open()?.unseal(binding)?;
    let key = key_of(&sealed)?;
    clevis
        .jwe
        .decrypt(&key[..])
        .map_err(|e| Tpm2Error::Foreign(format!("the unsealed key does not open the JWE: {e}")))
}

#[derive(serde::Deserialize)]
struct SealedJwk {
    k: Zeroizing<String>,
}

/// The `k` of the sealed JWK.
fn key_of(sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Tpm2Error> {
    let invalid = || Tpm2Error::Foreign("the unsealed data is not a JWK with \"k\"".into());
    // Only `k` is read, straight into memory that is wiped; the other members are public.
    let jwk: SealedJwk = serde_json::from_slice(sealed.trim_ascii()).map_err(|_| invalid())?;
    let key = Zeroizing::new(b64::decode(&jwk.k, "k").map_err(|_| invalid())?);
    if key.len() != KEY_LEN {
        return Err(invalid());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_refusals() {
        let config = Config::parse("{}").unwrap();
        assert_eq!(
            (config.hash.as_str(), config.key.as_str()),
            ("sha256", "ecc")
        );
        assert!(config.pcrs.is_none());
        let config = Config::parse(r#"{"pcr_ids":[7,0]}"#).unwrap();
        let pcrs = config.pcrs.unwrap();
        assert_eq!(
            (pcrs.bank.as_str(), pcrs.ids_text()),
            ("sha1", "0,7".into())
        );
        for bad in [
            r#"{"pcr_id":"7"}"#,
            r#"{"hash":"md5"}"#,
            r#"{"pcr_bank":"sha256","pcr_ids":"25"}"#,
            r#"{"pcr_digest":"AAAA"}"#,
            "[]",
            "{",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sealed_jwk_is_read_as_jose_wrote_it() {
        let k = b64::encode(&[9u8; 32]);
        let sealed = format!(r#"{{"alg":"A256GCM","k":"{k}","kty":"oct"}}"#) + "\n";
        assert_eq!(&key_of(sealed.as_bytes()).unwrap()[..], &[9u8; 32]);
        assert!(key_of(b"{\"k\":\"AAAA\"}").is_err());
        assert!(key_of(b"not json").is_err());
    }
}
