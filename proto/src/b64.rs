//! Base64url without padding (RFC 4648 §5, as RFC 7515 §2 uses it).
//!
//! Strict on input: no padding, no whitespace, and the unused low bits of the last
//! character must be zero, so each byte string has exactly one encoding. jose accepts
//! the same set.

use crate::error::{Error, Result};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match *chunk {
            [a, b, c] => (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c),
            [a, b] => (u32::from(a) << 16) | (u32::from(b) << 8),
            [a] => u32::from(a) << 16,
            _ => unreachable!("chunks(3) yields 1 to 3 bytes"),
        };
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

fn value_of(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes `text`; `what` names the field in the error.
pub fn decode(text: &str, what: &'static str) -> Result<Vec<u8>> {
    let input = text.as_bytes();
    if input.len() % 4 == 1 {
        return Err(Error::Base64(what));
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for chunk in input.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value_of(c).ok_or(Error::Base64(what))? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = chunk.len() - 1;
        // Bits below the last whole byte must be zero, or two strings decode alike.
        let unused_mask = match keep {
            3 => 0,
            2 => 0xff,
            1 => 0xffff,
            _ => unreachable!("chunk length 1 was rejected above"),
        };
        if n & unused_mask != 0 {
            return Err(Error::Base64(what));
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let table = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in table {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded, "t").unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn url_alphabet_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = encode(&all);
        assert!(!text.contains('+') && !text.contains('/') && !text.contains('='));
        assert_eq!(decode(&text, "t").unwrap(), all);
    }

    #[test]
    fn rejects_padding_bad_length_and_noncanonical_bits() {
        for bad in [
            "Zg==",
            "Z",
            "Zm9vY",
            "Zh",
            "Zm9=",
            "a b",
            "+/+/",
            "Zm9vYmF\n",
        ] {
            assert!(decode(bad, "t").is_err(), "{bad:?} should be refused");
        }
    }
}
