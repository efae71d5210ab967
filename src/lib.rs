//! nbde-unlock: Clevis-compatible pins, and (to come) LUKS2 binding and boot-time unlock.

pub mod error;
pub mod http;
pub mod pin;

pub use error::{Error, Result};
