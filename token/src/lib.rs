//! `libcryptsetup-token-clevis.so`: a libcryptsetup token handler for clevis tokens, so
//! that plain `cryptsetup open` and systemd-cryptsetup unlock a volume bound with clevis
//! (or nbde-unlock) without an agent. The recovery is nbde-unlock's own (`pin::recover`,
//! tang, sss and null); this file is the C surface: five entry points that libcryptsetup
//! looks up with `dlvsym(…, "CRYPTSETUP_TOKEN_1.0")`, none of which may unwind into C.

mod describe;
mod device;
mod race;

use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{c_char, c_int, c_void, size_t};
use libcryptsetup_rs_sys::crypt_device;

use device::Device;

// The versioned names are aliases of the `nbde_token_*` functions: rustc puts every
// exported Rust symbol in its own unversioned version script, where a second script cannot
// version it; an alias defined in assembly is outside rustc's list, so `token.map` gives
// it `CRYPTSETUP_TOKEN_1.0`.
std::arch::global_asm!(
    ".globl cryptsetup_token_open",
    ".set cryptsetup_token_open, nbde_token_open",
    ".globl cryptsetup_token_buffer_free",
    ".set cryptsetup_token_buffer_free, nbde_token_buffer_free",
    ".globl cryptsetup_token_validate",
    ".set cryptsetup_token_validate, nbde_token_validate",
    ".globl cryptsetup_token_dump",
    ".set cryptsetup_token_dump, nbde_token_dump",
    ".globl cryptsetup_token_version",
    ".set cryptsetup_token_version, nbde_token_version",
);

/// Runs `body`, turning a panic into `on_panic`: unwinding into libcryptsetup is undefined
/// behaviour, and a volume must fall back to its passphrase, not take the process down.
fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

#[unsafe(no_mangle)]
pub extern "C" fn nbde_token_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), " nbde\0")
        .as_ptr()
        .cast()
}

/// Recovers token `token`'s key and hands libcryptsetup a malloc'd copy (it frees it with
/// `cryptsetup_token_buffer_free`).
///
/// # Safety
/// libcryptsetup passes a live device handle and valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nbde_token_open(
    cd: *mut crypt_device,
    token: c_int,
    buffer: *mut *mut c_char,
    buffer_len: *mut size_t,
    _usrptr: *mut c_void,
) -> c_int {
    guard(-libc::EINVAL, || {
        if cd.is_null() || buffer.is_null() || buffer_len.is_null() || token < 0 {
            return -libc::EINVAL;
        }
        let device = Device::new(cd);
        let key = match race::key_for(device, token as u32) {
            Ok(key) => key,
            Err(refusal) => {
                device.log_error(&format!("clevis token {token}: {}", refusal.message));
                return -refusal.errno;
            }
        };
        // SAFETY: a fresh allocation of key.len() bytes (at least one, so malloc never
        // returns its zero-size pointer), filled before it is handed over.
        unsafe {
            let copy = libc::malloc(key.len().max(1)).cast::<u8>();
            if copy.is_null() {
                return -libc::ENOMEM;
            }
            std::ptr::copy_nonoverlapping(key.as_ptr(), copy, key.len());
            *buffer = copy.cast();
            *buffer_len = key.len();
        }
        0
    })
}

/// Wipes and frees a key handed out by `nbde_token_open`.
///
/// # Safety
/// `buffer` is null or came from `nbde_token_open` with this length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nbde_token_buffer_free(buffer: *mut c_void, buffer_len: size_t) {
    if buffer.is_null() {
        return;
    }
    // SAFETY: the caller's promise above; volatile writes so the wipe is not optimised
    // away before free.
    unsafe {
        let bytes = buffer.cast::<u8>();
        for i in 0..buffer_len {
            std::ptr::write_volatile(bytes.add(i), 0);
        }
        libc::free(buffer);
    }
}

/// Refuses a token that no recovery could use, at `cryptsetup token import` and before
/// every activation.
///
/// # Safety
/// `json` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nbde_token_validate(cd: *mut crypt_device, json: *const c_char) -> c_int {
    guard(-libc::EINVAL, || {
        // SAFETY: the caller's promise above.
        let Some(text) = (unsafe { device::c_text(json) }) else {
            return -libc::EINVAL;
        };
        match describe::parse(text) {
            Ok(_) => 0,
            Err(reason) => {
                if !cd.is_null() {
                    Device::new(cd).log_error(&format!("clevis token: {reason}"));
                }
                -libc::EINVAL
            }
        }
    })
}

/// The token's pin, servers and thumbprints in `cryptsetup luksDump`.
///
/// # Safety
/// `json` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nbde_token_dump(cd: *mut crypt_device, json: *const c_char) {
    guard((), || {
        // SAFETY: the caller's promise above.
        let (false, Some(text)) = (cd.is_null(), unsafe { device::c_text(json) }) else {
            return;
        };
        let device = Device::new(cd);
        for line in describe::dump_lines(text) {
            device.log_normal(&format!("\t{line}"));
        }
    })
}
