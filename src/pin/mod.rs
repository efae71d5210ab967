//! Clevis pins: each turns a config into a JWE at bind time and a JWE back into its
//! plaintext at unlock time.

pub mod null;
pub mod sss;
pub mod tang;
pub mod tpm2;

use nbde_proto::{ClevisJwe, Jwe, Pin};
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
const FOREIGN_PINS: [&str; 2] = ["tpm1", "pkcs11"];

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
        "tpm2" => tpm2::encrypt(config, plaintext),
        other => Err(unsupported(other)),
    }
}

/// Parses a Clevis JWE's pin once; what every recovery and inspection works on.
pub fn parse(jwe: Jwe) -> Result<ClevisJwe> {
    ClevisJwe::parse(jwe).map_err(Error::proto("JWE header"))
}

/// Recovers the plaintext of a Clevis JWE.
pub fn decrypt(jwe: &Jwe, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    recover(&parse(jwe.clone())?, ctx)
}

/// Recovers the plaintext of a parsed Clevis JWE. Only the exchange itself happens here
/// (tang: blind, POST, unblind, KDF, AES-GCM), so a retry redoes nothing else.
pub fn recover(clevis: &ClevisJwe, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    match &clevis.pin {
        Pin::Tang(tang) => tang::recover(tang, &clevis.jwe, ctx),
        Pin::Sss(sss) => sss::recover(sss, &clevis.jwe, ctx),
        Pin::Null(null) => null::recover(null, &clevis.jwe),
        Pin::Tpm2(_) => tpm2::recover(&clevis.jwe),
        Pin::Other { name, .. } => Err(unsupported(name)),
    }
}
