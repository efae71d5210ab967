//! Clevis and Tang on the wire: base64url, JWK, JWS, JWE, the McCallum-Relyea exchange
//! and Shamir sharing. Pure functions and types; no I/O, no async.

pub mod adv;
pub mod b64;
pub mod clevis;
pub mod curve;
pub mod error;
pub mod exchange;
pub mod jwe;
pub mod jwk;
pub mod jws;
pub mod kdf;
pub mod sss;
pub mod tpm2;

pub use adv::KeySet;
pub use clevis::{ClevisJwe, Pin};
pub use curve::{Curve, EcPoint, EcScalar};
pub use error::{Error, Result};
pub use jwe::Jwe;
pub use jwk::{Jwk, ThumbprintHash};
pub use jws::Jws;
