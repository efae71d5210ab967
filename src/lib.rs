//! nbde-unlock: Clevis-compatible pins, LUKS1 and LUKS2 bindings, and boot-time unlock.

pub mod bind;
pub mod boot;
pub mod error;
pub mod http;
pub mod inspect;
pub mod luks;
pub mod pin;
pub mod private;
pub mod tty;

pub use error::{Error, Result};
