//! nbde-unlock: Clevis-compatible pins, LUKS2 binding, and (to come) boot-time unlock.

pub mod bind;
pub mod boot;
pub mod error;
pub mod http;
pub mod luks;
pub mod pin;
pub mod tty;

pub use error::{Error, Result};
