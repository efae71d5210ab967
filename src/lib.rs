//! nbde-unlock: Clevis-compatible pins, LUKS1 and LUKS2 bindings, and boot-time unlock.

pub mod admin;
pub mod bind;
pub mod boot;
pub mod error;
pub mod escrow;
pub mod http;
pub mod inspect;
pub mod luks;
pub mod mode;
pub mod pin;
pub mod private;
pub mod tls;
pub mod tty;

pub use error::{Error, Result};
