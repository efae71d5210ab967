//! The Concat KDF of NIST SP 800-56A §5.8.1 as JWA uses it for ECDH-ES (RFC 7518 §4.6.2),
//! with SHA-256 and empty PartyUInfo/PartyVInfo, as Clevis writes them.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Derives `key_bits` bits for `alg` (the `enc` value in direct key agreement) from the
/// shared secret `z` (the x coordinate of the shared point, fixed length).
pub fn concat_kdf(
    z: &[u8],
    alg: &str,
    apu: &[u8],
    apv: &[u8],
    key_bits: u32,
) -> Zeroizing<Vec<u8>> {
    let key_len = key_bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(key_len + 32));
    let mut round: u32 = 1;
    while out.len() < key_len {
        let mut h = Sha256::new();
        h.update(round.to_be_bytes());
        h.update(z);
        for field in [alg.as_bytes(), apu, apv] {
            h.update((field.len() as u32).to_be_bytes());
            h.update(field);
        }
        h.update(key_bits.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        round += 1;
    }
    out.truncate(key_len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;
    use crate::curve::{Curve, EcPoint, EcScalar};

    /// RFC 7518 Appendix C: Alice's ephemeral key, Bob's key, "A128GCM", apu "Alice",
    /// apv "Bob" gives the CEK VqqN6vgjbSBcIijNcacQGg.
    #[test]
    fn rfc7518_appendix_c() {
        let d = |s| b64::decode(s, "t").unwrap();
        let alice_d = d("0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo");
        let bob = EcPoint::from_coordinates(
            Curve::P256,
            &d("weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ"),
            &d("e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck"),
        )
        .unwrap();
        let alice = EcScalar::from_bytes(Curve::P256, &alice_d).unwrap();
        assert_eq!(
            b64::encode(alice.public_point().x()),
            "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0"
        );
        let z = bob.mul(&alice).unwrap();
        assert_eq!(
            z.x(),
            [
                158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
                110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196
            ]
        );
        let cek = concat_kdf(z.x(), "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(b64::encode(&cek), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn longer_keys_take_more_rounds() {
        let z = [7u8; 66];
        let long = concat_kdf(&z, "X", b"", b"", 512);
        assert_eq!(long.len(), 64);
        assert_eq!(&long[..32], &concat_kdf(&z, "X", b"", b"", 512)[..32]);
        assert_ne!(&long[..32], &concat_kdf(&z, "X", b"", b"", 256)[..]);
    }
}
