//! Generated recovery keys, in systemd's form so either tool reads the other's: 32 random
//! bytes as modhex (16 letters that sit in the same place on most keyboard layouts), in
//! eight dash-separated groups of eight; the text itself is the passphrase. Its keyslot
//! is named by a `systemd-recovery` token, as `systemd-cryptenroll --recovery-key` does.

use zeroize::Zeroizing;

use crate::error::Result;
use crate::private::fill_random;

pub const TOKEN_TYPE: &str = "systemd-recovery";

const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";
const RAW_BYTES: usize = 32;

/// A fresh recovery key (256 bits).
pub fn generate() -> Result<Zeroizing<String>> {
    let mut raw = Zeroizing::new([0u8; RAW_BYTES]);
    fill_random(&mut raw[..])?;
    Ok(format(&raw[..]))
}

fn format(raw: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(raw.len() * 2 + raw.len() / 4));
    for (i, byte) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            text.push('-');
        }
        text.push(MODHEX[usize::from(byte >> 4)] as char);
        text.push(MODHEX[usize::from(byte & 0xf)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_keys_are_eight_groups_of_eight_modhex_letters() {
        let key = generate().unwrap();
        let groups: Vec<&str> = key.split('-').collect();
        assert_eq!(groups.len(), 8);
        assert!(groups.iter().all(|g| g.len() == 8));
        assert!(key.bytes().all(|b| b == b'-' || MODHEX.contains(&b)));
        assert_ne!(*key, *generate().unwrap());
        assert_eq!(&*format(&[0x01, 0x23, 0x45, 0x67, 0x89]), "cbdefghi-jk");
    }
}
