//! The McCallum-Relyea exchange that Tang performs, with the client's blinding.
//!
//! At encryption time the client made `c`, stored `epk = c·G`, and keyed the JWE with
//! `c·S` (S = the server's exchange key, s its secret). To recover, the client sends
//! `x = epk + e·G` for a fresh `e`; the server answers `y = s·x`; the client removes
//! the blinding: `y − e·S = s·c·G = c·S`. The server learns nothing about `c·S`, and an
//! eavesdropper sees only blinded points.

use zeroize::Zeroizing;

use crate::curve::{EcPoint, EcScalar};
use crate::error::{Error, Result};

/// A recovery request in flight: the point to send, and the secret to unblind with.
#[derive(Debug)]
pub struct Blinded {
    request: EcPoint,
    ephemeral: EcScalar,
}

impl Blinded {
    /// The blinded point `x` to POST to `/rec/{kid}`.
    pub fn request(&self) -> &EcPoint {
        &self.request
    }

    /// Removes the blinding from the server's `reply` (`y = s·x`), given the server's
    /// public exchange key `server_key` (S). Returns the x coordinate of `c·S`, the ECDH-ES
    /// shared secret `Z`.
    pub fn unblind(&self, reply: &EcPoint, server_key: &EcPoint) -> Result<Zeroizing<Vec<u8>>> {
        if reply.curve() != self.request.curve() || server_key.curve() != self.request.curve() {
            return Err(Error::CurveMismatch);
        }
        // Both e·S and c·S = y − e·S give the shared secret away: secret points.
        let blinding = SecretPoint(server_key.mul(&self.ephemeral)?);
        let shared = SecretPoint(reply.sub(&blinding.0)?);
        Ok(Zeroizing::new(shared.0.x().to_vec()))
    }
}

/// A point that reveals the shared secret: zeroized when dropped, never printed.
pub struct SecretPoint(EcPoint);

impl Drop for SecretPoint {
    fn drop(&mut self) {
        self.0.zeroize_coordinates();
    }
}

impl std::fmt::Debug for SecretPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPoint({}, <redacted>)", self.0.curve().name())
    }
}

/// Client step 1: blind the JWE's `epk` with a fresh random scalar.
pub fn blind(epk: &EcPoint) -> Result<Blinded> {
    let ephemeral = epk.curve().random_scalar()?;
    let request = epk.add(&epk.curve().mul_base(&ephemeral)?)?;
    Ok(Blinded { request, ephemeral })
}

/// Server step: `y = s·x`. `x` was validated when it was built (on its curve, not the
/// identity); here it must also be on the server key's curve.
pub fn server_exchange(server_secret: &EcScalar, request: &EcPoint) -> Result<EcPoint> {
    if request.curve() != server_secret.curve() {
        return Err(Error::CurveMismatch);
    }
    request.mul(server_secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;

    #[test]
    fn blinded_recovery_gives_the_ecdh_secret_on_every_curve() {
        for curve in Curve::ALL {
            let server = curve.random_scalar().unwrap();
            let server_key = server.public_point();
            let client = curve.random_scalar().unwrap();
            let epk = client.public_point();
            let expected = server_key.mul(&client).unwrap();

            let blinded = blind(&epk).unwrap();
            assert_ne!(blinded.request(), &epk, "the server never sees epk itself");
            let reply = server_exchange(&server, blinded.request()).unwrap();
            let z = blinded.unblind(&reply, &server_key).unwrap();
            assert_eq!(&*z, expected.x());

            // Two recoveries send unlinkable requests.
            assert_ne!(blind(&epk).unwrap().request(), blinded.request());
        }
    }

    #[test]
    fn secret_points_are_never_printed() {
        let point = Curve::P256.random_scalar().unwrap().public_point();
        let x = crate::b64::encode(point.x());
        let text = format!("{:?}", SecretPoint(point));
        assert!(!text.contains(&x) && text.contains("redacted"), "{text}");
    }

    #[test]
    fn mixed_curves_are_refused() {
        let server = Curve::P521.random_scalar().unwrap();
        let epk = Curve::P256.random_scalar().unwrap().public_point();
        let blinded = blind(&epk).unwrap();
        assert_eq!(
            server_exchange(&server, blinded.request()),
            Err(Error::CurveMismatch)
        );
        let reply = Curve::P384.random_scalar().unwrap().public_point();
        assert_eq!(
            blinded.unblind(&reply, &server.public_point()),
            Err(Error::CurveMismatch)
        );
    }
}
