//! The server's one scalar multiplication of a recovery, on AWS-LC (through the `openssl`
//! crate's safe wrapper) instead of RustCrypto: measured here on P-521 it is more than
//! twice as fast, and that multiplication is most of what a recovery costs the server
//! (`cargo bench -p nbde-server --bench mul` prints both). Only the server links it: the
//! unlock binary in early boot stays on RustCrypto.
//!
//! Same inputs and outputs as `nbde_proto::exchange::server_exchange`: the point and the
//! scalar were checked when they were built, and the answer is checked again by
//! `EcPoint::from_coordinates`, so a wrong answer from either library cannot leave as a
//! point.

use std::sync::OnceLock;

use nbde_proto::{Curve, EcPoint, EcScalar, Error, Result};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcPoint as SslPoint};
use openssl::nid::Nid;

fn nid(curve: Curve) -> Nid {
    match curve {
        Curve::P256 => Nid::X9_62_PRIME256V1,
        Curve::P384 => Nid::SECP384R1,
        Curve::P521 => Nid::SECP521R1,
    }
}

/// The group of `curve`, built once: a named group is immutable and shared by threads.
fn group(curve: Curve) -> Result<&'static EcGroup> {
    static GROUPS: [OnceLock<Option<EcGroup>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match curve {
        Curve::P256 => &GROUPS[0],
        Curve::P384 => &GROUPS[1],
        Curve::P521 => &GROUPS[2],
    };
    slot.get_or_init(|| EcGroup::from_curve_name(nid(curve)).ok())
        .as_ref()
        .ok_or_else(|| Error::Unsupported(format!("curve {} in AWS-LC", curve.name())))
}

fn ssl_error(_: openssl::error::ErrorStack) -> Error {
    Error::BadPoint("point")
}

/// `s·x` for the server's secret `s` and the client's point `x`.
pub fn server_exchange(secret: &EcScalar, request: &EcPoint) -> Result<EcPoint> {
    let curve = request.curve();
    if secret.curve() != curve {
        return Err(Error::CurveMismatch);
    }
    let (x, y) = multiply(curve, secret.to_bytes(), request.x(), request.y())?;
    EcPoint::from_coordinates(curve, &x, &y)
}

/// `k·(x, y)` on `curve` as fixed-length coordinates; refuses a point off the curve, the
/// identity, and a product that is the identity (k ≡ 0 mod n).
fn multiply(curve: Curve, k: &[u8], x: &[u8], y: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let group = group(curve)?;
    let mut ctx = BigNumContext::new().map_err(ssl_error)?;
    let x = BigNum::from_slice(x).map_err(ssl_error)?;
    let y = BigNum::from_slice(y).map_err(ssl_error)?;
    let mut point = SslPoint::new(group).map_err(ssl_error)?;
    // The setter refuses coordinates off the curve; checked once more below, so the
    // promise does not rest on one library's setter.
    point
        .set_affine_coordinates_gfp(group, &x, &y, &mut ctx)
        .map_err(|_| Error::BadPoint("point"))?;
    if !point.is_on_curve(group, &mut ctx).map_err(ssl_error)? || point.is_infinity(group) {
        return Err(Error::BadPoint("point"));
    }
    // AWS-LC's OPENSSL_free overwrites what it frees, so the scalar's copy in this BigNum
    // does not outlive the call; its variable-base multiplication is constant-time.
    let k = BigNum::from_slice(k).map_err(ssl_error)?;
    let mut product = SslPoint::new(group).map_err(ssl_error)?;
    product
        .mul2(group, &point, &k, &mut ctx)
        .map_err(|_| Error::BadPoint("multiplication"))?;
    if product.is_infinity(group) {
        return Err(Error::BadPoint("result is the identity"));
    }
    let mut rx = BigNum::new().map_err(ssl_error)?;
    let mut ry = BigNum::new().map_err(ssl_error)?;
    product
        .affine_coordinates(group, &mut rx, &mut ry, &mut ctx)
        .map_err(ssl_error)?;
    let len = curve.field_len() as i32;
    Ok((
        rx.to_vec_padded(len).map_err(ssl_error)?,
        ry.to_vec_padded(len).map_err(ssl_error)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbde_proto::exchange;

    #[test]
    fn agrees_with_rustcrypto_on_every_curve() {
        for curve in Curve::ALL {
            for _ in 0..64 {
                let secret = curve.random_scalar().unwrap();
                let point = curve.random_scalar().unwrap().public_point();
                assert_eq!(
                    server_exchange(&secret, &point).unwrap(),
                    exchange::server_exchange(&secret, &point).unwrap(),
                    "{}",
                    curve.name()
                );
            }
        }
    }

    #[test]
    fn refuses_points_off_the_curve_and_the_identity() {
        for curve in Curve::ALL {
            let k = curve.random_scalar().unwrap();
            let p = curve.random_scalar().unwrap().public_point();
            let mut off = p.y().to_vec();
            *off.last_mut().unwrap() ^= 1;
            assert!(multiply(curve, k.to_bytes(), p.x(), &off).is_err());
            // (0, 0): how the identity is written where it has to be written as a pair;
            // b is not 0 on these curves, so it is not a point of them either.
            let zero = vec![0u8; curve.field_len()];
            assert!(multiply(curve, k.to_bytes(), &zero, &zero).is_err());
            // A product that is the identity: k = 0.
            assert!(multiply(curve, &zero, p.x(), p.y()).is_err());
            assert!(multiply(curve, k.to_bytes(), p.x(), p.y()).is_ok());
        }
    }

    #[test]
    fn refuses_another_curve() {
        let secret = Curve::P256.random_scalar().unwrap();
        let point = Curve::P384.random_scalar().unwrap().public_point();
        assert_eq!(server_exchange(&secret, &point), Err(Error::CurveMismatch));
    }
}
