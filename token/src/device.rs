//! The crypt device libcryptsetup lends for one call: its tokens and its log.

use std::ffi::{CStr, CString};

use libc::c_char;
use libcryptsetup_rs_sys as sys;
use serde_json::Value;

/// LUKS2 has 32 tokens.
const TOKENS: i32 = 32;

/// A device handle valid for the duration of one call from libcryptsetup; never kept,
/// never sent to another thread.
#[derive(Clone, Copy)]
pub struct Device(*mut sys::crypt_device);

/// The text behind a C string, if it is one and UTF-8.
///
/// # Safety
/// `text` is null or NUL-terminated.
pub unsafe fn c_text<'a>(text: *const c_char) -> Option<&'a str> {
    if text.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(text) }.to_str().ok()
}

impl Device {
    pub fn new(cd: *mut sys::crypt_device) -> Device {
        Device(cd)
    }

    fn log(self, level: i32, message: &str) {
        // Messages never hold a NUL; if one did, it is dropped rather than truncated.
        if let Ok(line) = CString::new(format!("{message}\n")) {
            // SAFETY: a live handle and a NUL-terminated message.
            unsafe { sys::crypt_log(self.0, level, line.as_ptr()) };
        }
    }

    pub fn log_error(self, message: &str) {
        self.log(sys::CRYPT_LOG_ERROR as i32, message);
    }

    pub fn log_normal(self, message: &str) {
        self.log(sys::CRYPT_LOG_NORMAL as i32, message);
    }

    pub fn log_debug(self, message: &str) {
        self.log(sys::CRYPT_LOG_DEBUG, message);
    }

    /// Every token's JSON text, by id.
    pub fn tokens(self) -> Vec<(u32, String)> {
        let mut found = Vec::new();
        for id in 0..TOKENS {
            let mut json: *const c_char = std::ptr::null();
            // SAFETY: a live handle; libcryptsetup owns the returned string until the
            // next call on the device, so it is copied at once.
            let r = unsafe { sys::crypt_token_json_get(self.0, id, &mut json) };
            if r >= 0
                && let Some(text) = unsafe { c_text(json) }
            {
                found.push((id as u32, text.to_owned()));
            }
        }
        found
    }

    /// The tokens' JSON, parsed.
    pub fn token_values(self) -> Vec<(u32, Value)> {
        self.tokens()
            .into_iter()
            .filter_map(|(id, text)| serde_json::from_str(&text).ok().map(|v| (id, v)))
            .collect()
    }

    /// What tells this volume from another in the same process: its UUID, else its path.
    pub fn identity(self) -> String {
        // SAFETY: a live handle; both return NULL or a string owned by the device.
        let uuid = unsafe { c_text(sys::crypt_get_uuid(self.0)) };
        let path = unsafe { c_text(sys::crypt_get_device_name(self.0)) };
        format!("{}|{}", uuid.unwrap_or(""), path.unwrap_or(""))
    }
}
