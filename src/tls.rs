//! The TLS provider of the HTTPS client: ring's, cut to what reaching an unlock server
//! needs, with P-256 done by RustCrypto, which the binary carries anyway for the
//! McCallum-Relyea exchange.
//!
//! Why not ring's default provider: its P-256 code brings a 148 KiB table of precomputed
//! points, ChaCha20-Poly1305 about 50 KiB of assembly in several variants, and Ed25519
//! signature checks another 10 KiB. Without them nbde-unlock is 2 MiB or less
//! (bench/size.py). What a server meets: TLS 1.3 and 1.2 with AES-GCM (no
//! ChaCha20-Poly1305), key exchange X25519, P-256 or P-384, certificates signed with ECDSA
//! (P-256, P-384) or RSA (no Ed25519 certificates, which no public CA issues and no browser
//! accepts either).

use nbde_proto::{Curve, EcPoint, EcScalar};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, SharedSecret,
    SupportedKxGroup, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm, alg_id,
};
use rustls::sign::SigningKey;
use rustls::{Error, NamedGroup, PeerMisbehaved, SignatureScheme};
use sha2::Digest as _;
use std::sync::Arc;
use webpki::ring as ring_algs;

/// The provider the HTTPS client uses.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, &P256_KX, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &OsRandom,
        key_provider: &NoClientKeys,
    }
}

static ECDSA_P256_SHA256: &dyn SignatureVerificationAlgorithm = &EcdsaP256 {
    hash: Hash::Sha256,
    signature_alg_id: alg_id::ECDSA_SHA256,
};
static ECDSA_P256_SHA384: &dyn SignatureVerificationAlgorithm = &EcdsaP256 {
    hash: Hash::Sha384,
    signature_alg_id: alg_id::ECDSA_SHA384,
};

/// ring's table (`rustls::crypto::ring`'s) without Ed25519, with ECDSA P-256 taken from
/// RustCrypto.
static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        ECDSA_P256_SHA256,
        ECDSA_P256_SHA384,
        ring_algs::ECDSA_P384_SHA256,
        ring_algs::ECDSA_P384_SHA384,
        ring_algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        ring_algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        ring_algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        ring_algs::RSA_PKCS1_2048_8192_SHA256,
        ring_algs::RSA_PKCS1_2048_8192_SHA384,
        ring_algs::RSA_PKCS1_2048_8192_SHA512,
        ring_algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        ring_algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        ring_algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // In TLS 1.2 the scheme does not fix the curve; in TLS 1.3 it does.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[ring_algs::ECDSA_P384_SHA384, ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[ECDSA_P256_SHA256, ring_algs::ECDSA_P384_SHA256],
        ),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[ring_algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[ring_algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[ring_algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[ring_algs::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[ring_algs::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[ring_algs::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

#[derive(Debug)]
enum Hash {
    Sha256,
    Sha384,
}

/// ECDSA over P-256: a SEC1 public key, a DER signature.
#[derive(Debug)]
struct EcdsaP256 {
    hash: Hash,
    signature_alg_id: AlgorithmIdentifier,
}

impl SignatureVerificationAlgorithm for EcdsaP256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature =
            p256::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        let verified = match self.hash {
            Hash::Sha256 => key.verify_prehash(&sha2::Sha256::digest(message), &signature),
            Hash::Sha384 => key.verify_prehash(&sha2::Sha384::digest(message), &signature),
        };
        verified.map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature_alg_id
    }
}

/// Ephemeral ECDH over P-256 (secp256r1), uncompressed points only (RFC 8446 §4.2.8.2).
#[derive(Debug)]
struct P256Kx;

static P256_KX: P256Kx = P256Kx;

impl SupportedKxGroup for P256Kx {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let secret = Curve::P256.random_scalar().map_err(|_| GetRandomFailed)?;
        let public = secret.public_point();
        let pub_key = [&[0x04][..], public.x(), public.y()].concat();
        Ok(Box::new(P256Exchange { secret, pub_key }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

/// The client's half of one exchange; the scalar is zeroized when it drops.
struct P256Exchange {
    secret: EcScalar,
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for P256Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let invalid = || Error::from(PeerMisbehaved::InvalidKeyShare);
        let (tag, coordinates) = peer.split_first().ok_or_else(invalid)?;
        if *tag != 0x04 || coordinates.len() != 64 {
            return Err(invalid());
        }
        let (x, y) = coordinates.split_at(32);
        // Checked on the curve; the product is never the identity for a point of the
        // prime-order group and a nonzero scalar.
        let point = EcPoint::from_coordinates(Curve::P256, x, y).map_err(|_| invalid())?;
        let shared = point.mul(&self.secret).map_err(|_| invalid())?;
        Ok(SharedSecret::from(shared.x()))
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

#[derive(Debug)]
struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        getrandom::fill(buf).map_err(|_| GetRandomFailed)
    }
}

/// The client never authenticates with a certificate of its own.
#[derive(Debug)]
struct NoClientKeys;

impl KeyProvider for NoClientKeys {
    fn load_private_key(&self, _: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        Err(Error::General(
            "nbde-unlock has no client certificates".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;

    #[test]
    fn p256_exchange_agrees_with_ring() {
        for _ in 0..8 {
            let ours = P256_KX.start().unwrap();
            let ring = kx_group::SECP256R1.start().unwrap();
            let (ours_pub, ring_pub) = (ours.pub_key().to_vec(), ring.pub_key().to_vec());
            assert_eq!(ours_pub.len(), 65);
            let a = ours.complete(&ring_pub).unwrap();
            let b = ring.complete(&ours_pub).unwrap();
            assert_eq!(a.secret_bytes(), b.secret_bytes());
        }
    }

    #[test]
    fn p256_exchange_refuses_points_off_the_curve_and_other_encodings() {
        let ring_pub = kx_group::SECP256R1.start().unwrap().pub_key().to_vec();
        let mut off = ring_pub.clone();
        off[64] ^= 1;
        let compressed = [&[0x02][..], &ring_pub[1..33]].concat();
        let mut bad_x = ring_pub.clone();
        bad_x[1..33].fill(0xff); // x ≥ p
        for peer in [off, compressed, bad_x, vec![0x04], vec![], vec![0x04; 65]] {
            let err = P256_KX.start().unwrap().complete(&peer).err();
            assert!(
                matches!(
                    err,
                    Some(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare))
                ),
                "{peer:02x?}: {err:?}"
            );
        }
    }

    #[test]
    fn p256_signatures_verify_as_ring_verifies_them() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = key.verifying_key().to_sec1_point(false);
        let message = b"TLS 1.3, server CertificateVerify";
        for (ours, ring, digest) in [
            (
                ECDSA_P256_SHA256,
                ring_algs::ECDSA_P256_SHA256,
                sha2::Sha256::digest(message).to_vec(),
            ),
            (
                ECDSA_P256_SHA384,
                ring_algs::ECDSA_P256_SHA384,
                sha2::Sha384::digest(message).to_vec(),
            ),
        ] {
            let signature: p256::ecdsa::Signature = key.sign_prehash(&digest).unwrap();
            let der = signature.to_der();
            let der = der.as_bytes();
            assert!(
                ring.verify_signature(public.as_bytes(), message, der)
                    .is_ok()
            );
            assert!(
                ours.verify_signature(public.as_bytes(), message, der)
                    .is_ok()
            );
            let other = b"TLS 1.3, server CertificateVerify!";
            assert!(
                ring.verify_signature(public.as_bytes(), other, der)
                    .is_err()
            );
            assert!(
                ours.verify_signature(public.as_bytes(), other, der)
                    .is_err()
            );
            // The raw r‖s form is not DER: both refuse it.
            let raw = signature.to_bytes();
            assert!(
                ring.verify_signature(public.as_bytes(), message, &raw)
                    .is_err()
            );
            assert!(
                ours.verify_signature(public.as_bytes(), message, &raw)
                    .is_err()
            );
            assert_eq!(ours.public_key_alg_id(), ring.public_key_alg_id());
            assert_eq!(ours.signature_alg_id(), ring.signature_alg_id());
        }
    }
}
