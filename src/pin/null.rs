//! The null pin (Debian's clevis ships it, clevis's own sss tests use it): the key is kept
//! in the JWE header itself, so it protects nothing; `{"fail":true}` leaves the key out so
//! decryption fails. Useful for tests and for sss policies that need a child that always
//! (or never) answers.

use nbde_proto::clevis::Null;
use nbde_proto::{Jwe, b64};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A256GCM key length.
const KEY_LEN: usize = 32;

pub fn encrypt(config: &Value, plaintext: &[u8]) -> Result<Jwe> {
    let config = config
        .as_object()
        .ok_or_else(|| Error::Config("null: config must be a JSON object".into()))?;
    let fail = match config.get("fail") {
        None => false,
        Some(Value::Bool(fail)) => *fail,
        Some(_) => return Err(Error::Config("null: \"fail\" must be true or false".into())),
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    crate::private::fill_random(&mut key[..])?;
    let mut member = Map::new();
    if !fail {
        member.insert(
            "jwk".into(),
            json!({
                "alg": "A256GCM",
                "k": b64::encode(&key[..]),
                "key_ops": ["encrypt", "decrypt"],
                "kty": "oct",
            }),
        );
    }
    let header = json!({"clevis": {"pin": "null", "null": member}, "enc": "A256GCM"});
    let Value::Object(header) = header else {
        unreachable!("json! object")
    };
    Jwe::encrypt_dir(header, &key[..], plaintext).map_err(Error::proto("encrypt"))
}

pub fn recover(null: &Null, jwe: &Jwe) -> Result<Zeroizing<Vec<u8>>> {
    let key = null
        .key
        .as_ref()
        .ok_or_else(|| Error::Config("null pin: bound to fail (no key in the JWE)".into()))?;
    jwe.decrypt(key).map_err(Error::proto("decrypt"))
}
