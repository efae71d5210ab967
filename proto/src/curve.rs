//! The three NIST curves Tang uses, behind one byte-oriented interface.
//!
//! Every point that leaves this module was checked when it was built: on its curve and
//! not the identity. Coordinates are fixed-length big-endian, as JWK requires
//! (RFC 7518 §6.2.1.2), so P-521 coordinates are always 66 bytes.

use std::fmt;

use elliptic_curve::group::{Curve as _, Group as _};
use elliptic_curve::point::AffineCoordinates;
use elliptic_curve::{
    AffinePoint, CurveArithmetic, FieldBytes, Generate, NonZeroScalar, ProjectivePoint,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub const ALL: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

    /// The curve named by a JWK `crv` member.
    pub fn from_name(name: &str) -> Result<Curve> {
        match name {
            "P-256" => Ok(Curve::P256),
            "P-384" => Ok(Curve::P384),
            "P-521" => Ok(Curve::P521),
            other => Err(Error::Unsupported(format!("curve {other:?}"))),
        }
    }

    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Bytes in one coordinate or scalar.
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The JWS algorithm that signs with a key on this curve.
    pub fn signature_alg(self) -> &'static str {
        match self {
            Curve::P256 => "ES256",
            Curve::P384 => "ES384",
            Curve::P521 => "ES512",
        }
    }

    /// A fresh random secret scalar in [1, n).
    pub fn random_scalar(self) -> Result<EcScalar> {
        dispatch!(self, random_scalar_on())
    }

    /// `k·G`.
    pub fn mul_base(self, k: &EcScalar) -> Result<EcPoint> {
        if k.curve != self {
            return Err(Error::CurveMismatch);
        }
        dispatch!(self, mul_base_on(k))
    }
}

/// Calls a function generic over the RustCrypto curve type for the runtime `Curve`.
macro_rules! dispatch {
    ($curve:expr, $f:ident ( $($arg:expr),* )) => {
        match $curve {
            Curve::P256 => $f::<p256::NistP256>(Curve::P256, $($arg),*),
            Curve::P384 => $f::<p384::NistP384>(Curve::P384, $($arg),*),
            Curve::P521 => $f::<p521::NistP521>(Curve::P521, $($arg),*),
        }
    };
}
use dispatch;

/// A point on `curve`, neither off the curve nor the identity.
#[derive(Clone, PartialEq, Eq)]
pub struct EcPoint {
    curve: Curve,
    x: Vec<u8>,
    y: Vec<u8>,
}

impl fmt::Debug for EcPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EcPoint({}, x={})",
            self.curve.name(),
            crate::b64::encode(&self.x)
        )
    }
}

impl EcPoint {
    /// Builds a point from fixed-length big-endian coordinates, refusing anything
    /// off the curve, the identity, or coordinates of the wrong length.
    pub fn from_coordinates(curve: Curve, x: &[u8], y: &[u8]) -> Result<EcPoint> {
        if x.len() != curve.field_len() || y.len() != curve.field_len() {
            return Err(Error::BadPoint("coordinate length"));
        }
        dispatch!(curve, check_point_on(x, y))?;
        Ok(EcPoint {
            curve,
            x: x.to_vec(),
            y: y.to_vec(),
        })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    pub fn x(&self) -> &[u8] {
        &self.x
    }

    pub fn y(&self) -> &[u8] {
        &self.y
    }

    /// Overwrites the coordinates with zeros (for points that are secrets).
    pub(crate) fn zeroize_coordinates(&mut self) {
        use zeroize::Zeroize;
        self.x.zeroize();
        self.y.zeroize();
    }

    /// `k·self`. Fails only if the curves differ (a valid scalar on a valid point of
    /// prime order never gives the identity).
    pub fn mul(&self, k: &EcScalar) -> Result<EcPoint> {
        if k.curve != self.curve {
            return Err(Error::CurveMismatch);
        }
        dispatch!(self.curve, mul_on(self, k))
    }

    /// `self + other`; the identity is an error, as no caller can use it.
    pub fn add(&self, other: &EcPoint) -> Result<EcPoint> {
        if other.curve != self.curve {
            return Err(Error::CurveMismatch);
        }
        dispatch!(self.curve, add_on(self, other, false))
    }

    /// `self − other`; the identity is an error.
    pub fn sub(&self, other: &EcPoint) -> Result<EcPoint> {
        if other.curve != self.curve {
            return Err(Error::CurveMismatch);
        }
        dispatch!(self.curve, add_on(self, other, true))
    }
}

/// A secret scalar in [1, n), zeroized on drop, never printed.
#[derive(Clone)]
pub struct EcScalar {
    curve: Curve,
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for EcScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcScalar({}, <redacted>)", self.curve.name())
    }
}

impl EcScalar {
    /// Reads a fixed-length big-endian scalar; zero and values ≥ n are refused.
    pub fn from_bytes(curve: Curve, bytes: &[u8]) -> Result<EcScalar> {
        if bytes.len() != curve.field_len() {
            return Err(Error::Invalid("private key length"));
        }
        dispatch!(curve, check_scalar_on(bytes))?;
        Ok(EcScalar {
            curve,
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The big-endian bytes; the caller keeps them secret.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn public_point(&self) -> EcPoint {
        // A scalar in [1, n) times G is never the identity.
        self.curve
            .mul_base(self)
            .expect("scalar built for its own curve")
    }
}

fn field_bytes<C: CurveArithmetic>(bytes: &[u8]) -> Result<FieldBytes<C>> {
    FieldBytes::<C>::try_from(bytes).map_err(|_| Error::Invalid("field element length"))
}

fn affine_of<C: CurveArithmetic>(point: &EcPoint) -> Result<AffinePoint<C>> {
    let x = field_bytes::<C>(&point.x)?;
    let y = field_bytes::<C>(&point.y)?;
    Option::from(AffinePoint::<C>::from_coordinates(&x, &y)).ok_or(Error::BadPoint("point"))
}

fn scalar_of<C: CurveArithmetic>(k: &EcScalar) -> Result<NonZeroScalar<C>> {
    let repr = Zeroizing::new(field_bytes::<C>(&k.bytes)?);
    Option::from(NonZeroScalar::<C>::from_repr(*repr)).ok_or(Error::Invalid("private key"))
}

fn point_from<C: CurveArithmetic>(curve: Curve, p: ProjectivePoint<C>) -> Result<EcPoint> {
    if bool::from(p.is_identity()) {
        return Err(Error::BadPoint("result is the identity"));
    }
    let affine = p.to_affine();
    Ok(EcPoint {
        curve,
        x: affine.x().to_vec(),
        y: affine.y().to_vec(),
    })
}

fn check_point_on<C: CurveArithmetic>(curve: Curve, x: &[u8], y: &[u8]) -> Result<()> {
    // Coordinates ≥ p are refused by from_repr inside from_coordinates; the identity
    // has no affine coordinates, so every point that passes is a real non-identity point.
    let probe = EcPoint {
        curve,
        x: x.to_vec(),
        y: y.to_vec(),
    };
    affine_of::<C>(&probe).map(|_| ())
}

fn check_scalar_on<C: CurveArithmetic>(curve: Curve, bytes: &[u8]) -> Result<()> {
    let probe = EcScalar {
        curve,
        bytes: Zeroizing::new(bytes.to_vec()),
    };
    scalar_of::<C>(&probe).map(|_| ())
}

fn random_scalar_on<C: CurveArithmetic>(curve: Curve) -> Result<EcScalar> {
    let k = NonZeroScalar::<C>::try_generate().map_err(|_| Error::Random)?;
    let repr: Zeroizing<FieldBytes<C>> = Zeroizing::new(k.into());
    Ok(EcScalar {
        curve,
        bytes: Zeroizing::new(repr.to_vec()),
    })
}

fn mul_base_on<C: CurveArithmetic>(curve: Curve, k: &EcScalar) -> Result<EcPoint> {
    let k = scalar_of::<C>(k)?;
    point_from::<C>(curve, ProjectivePoint::<C>::mul_by_generator(&*k))
}

fn mul_on<C: CurveArithmetic>(curve: Curve, p: &EcPoint, k: &EcScalar) -> Result<EcPoint> {
    let p = ProjectivePoint::<C>::from(affine_of::<C>(p)?);
    let k = scalar_of::<C>(k)?;
    point_from::<C>(curve, p * *k)
}

fn add_on<C: CurveArithmetic>(
    curve: Curve,
    a: &EcPoint,
    b: &EcPoint,
    negate_b: bool,
) -> Result<EcPoint> {
    let a = ProjectivePoint::<C>::from(affine_of::<C>(a)?);
    let b = ProjectivePoint::<C>::from(affine_of::<C>(b)?);
    point_from::<C>(curve, if negate_b { a - b } else { a + b })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_agrees_on_every_curve() {
        for curve in Curve::ALL {
            let a = curve.random_scalar().unwrap();
            let b = curve.random_scalar().unwrap();
            let ag = a.public_point();
            let bg = b.public_point();
            // a·(b·G) == b·(a·G): the identity the whole exchange rests on.
            assert_eq!(bg.mul(&a).unwrap(), ag.mul(&b).unwrap());
            // (aG + bG) − bG == aG
            assert_eq!(ag.add(&bg).unwrap().sub(&bg).unwrap(), ag);
            assert_eq!(ag.x().len(), curve.field_len());
            // P − P is the identity, which is refused.
            assert!(ag.sub(&ag).is_err());
        }
    }

    #[test]
    fn refuses_points_off_the_curve_and_bad_lengths() {
        for curve in Curve::ALL {
            let p = curve.random_scalar().unwrap().public_point();
            let mut y = p.y().to_vec();
            *y.last_mut().unwrap() ^= 1;
            assert_eq!(
                EcPoint::from_coordinates(curve, p.x(), &y),
                Err(Error::BadPoint("point"))
            );
            assert!(EcPoint::from_coordinates(curve, &p.x()[1..], p.y()).is_err());
            let zeros = vec![0u8; curve.field_len()];
            assert!(EcPoint::from_coordinates(curve, &zeros, &zeros).is_err());
            let ones = vec![0xffu8; curve.field_len()];
            assert!(EcPoint::from_coordinates(curve, &ones, &ones).is_err());
        }
    }

    #[test]
    fn refuses_mixed_curves_and_zero_scalars() {
        let k = Curve::P256.random_scalar().unwrap();
        let p = Curve::P384.random_scalar().unwrap().public_point();
        assert_eq!(p.mul(&k), Err(Error::CurveMismatch));
        assert!(EcScalar::from_bytes(Curve::P256, &[0u8; 32]).is_err());
        assert!(EcScalar::from_bytes(Curve::P256, &[0xffu8; 32]).is_err());
    }
}
