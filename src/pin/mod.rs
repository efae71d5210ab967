//! Clevis pins: each turns a config into a JWE at bind time and a JWE back into its
//! plaintext at unlock time.

pub mod null;
pub mod sss;
pub mod tang;

use nbde_proto::Jwe;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::http::Timeouts;

/// What every pin may need besides its config.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    pub timeouts: Timeouts,
    /// Trust an advertisement without asking (clevis `-y`).
    pub assume_yes: bool,
}

/// Pins Clevis knows that this binary deliberately does not implement.
const FOREIGN_PINS: [&str; 3] = ["tpm2", "tpm1", "pkcs11"];

fn unsupported(pin: &str) -> Error {
    if FOREIGN_PINS.contains(&pin) {
        Error::UnsupportedPin(pin.to_owned())
    } else {
        Error::UnsupportedPin(format!("{pin} (unknown)"))
    }
}

/// Encrypts `plaintext` with `pin` configured by `config`.
pub fn encrypt(pin: &str, config: &Value, plaintext: &[u8], ctx: &Context) -> Result<Jwe> {
    match pin {
        "tang" => tang::encrypt(config, plaintext, ctx),
        "sss" => sss::encrypt(config, plaintext, ctx),
        "null" => null::encrypt(config, plaintext),
        other => Err(unsupported(other)),
    }
}

/// The pin named in a JWE's `clevis.pin` header member.
pub fn pin_of(jwe: &Jwe) -> Result<&str> {
    jwe.header()
        .get("clevis")
        .and_then(|c| c.get("pin"))
        .and_then(Value::as_str)
        .ok_or(Error::Proto {
            step: "JWE header",
            source: nbde_proto::Error::Missing("clevis.pin"),
        })
}

/// Recovers the plaintext of a Clevis JWE.
pub fn decrypt(jwe: &Jwe, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    match pin_of(jwe)? {
        "tang" => tang::decrypt(jwe, ctx),
        "sss" => sss::decrypt(jwe, ctx),
        "null" => null::decrypt(jwe),
        other => Err(unsupported(other)),
    }
}

/// `header.clevis.<pin>`, the pin's own header object.
fn pin_header<'a>(jwe: &'a Jwe, pin: &'static str, path: &'static str) -> Result<&'a Value> {
    jwe.header()
        .get("clevis")
        .and_then(|c| c.get(pin))
        .filter(|v| v.is_object())
        .ok_or(Error::Proto {
            step: "JWE header",
            source: nbde_proto::Error::Missing(path),
        })
}
