//! The kernel keyring, for the passphrase a `luks2-keyring` token names (`bind -e`).

use std::ffi::CString;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// keyctl(2) operation that copies a key's payload out (linux/keyctl.h).
const KEYCTL_READ: libc::c_long = 11;

/// Largest passphrase read from the keyring; cryptsetup's own limit is far lower.
const MAX_KEY: usize = 8192;

/// The payload of the `user` key `description`, searched in the caller's keyrings.
pub(super) fn read_user_key(description: &str) -> Result<Zeroizing<Vec<u8>>> {
    let missing = || Error::Config(format!("no key {description:?} in the kernel keyring"));
    let key_type = CString::new("user").expect("no NUL");
    let description_c = CString::new(description).map_err(|_| missing())?;
    // SAFETY: both strings are NUL-terminated and live across the call; no callout info,
    // no destination keyring.
    let serial = unsafe {
        libc::syscall(
            libc::SYS_request_key,
            key_type.as_ptr(),
            description_c.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_long,
        )
    };
    if serial < 0 {
        return Err(missing());
    }
    let mut buffer = Zeroizing::new(vec![0u8; MAX_KEY]);
    // SAFETY: the buffer is MAX_KEY bytes long and writable for the call's duration.
    let length = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            serial,
            buffer.as_mut_ptr(),
            MAX_KEY,
        )
    };
    if length < 0 {
        return Err(Error::io(format!("reading key {description:?}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let length = length as usize;
    if length > MAX_KEY {
        return Err(Error::Config(format!("key {description:?} is too long")));
    }
    buffer.truncate(length);
    Ok(buffer)
}
