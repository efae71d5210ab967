//! The server's one scalar multiplication of a recovery, on AWS-LC instead of RustCrypto:
//! measured here on P-521 it is more than twice as fast, and that multiplication is most of
//! what a recovery costs the server (`cargo bench -p nbde-server --bench mul` prints both).
//! Only the server links it: the unlock binary in early boot stays on RustCrypto.
//!
//! Called through `aws-lc-sys` directly, each C object owned by a small guard that frees
//! it: the `openssl` crate could wrap AWS-LC too, but only by linking every user of that
//! crate in the server against it, and the passkey verifier (webauthn-rs) needs a real
//! OpenSSL. AWS-LC's symbols are prefixed (`aws_lc_0_41_0_*`), so both live side by side.
//!
//! Same inputs and outputs as `nbde_proto::exchange::server_exchange`: the point and the
//! scalar were checked when they were built, and the answer is checked again by
//! `EcPoint::from_coordinates`, so a wrong answer from either library cannot leave as a
//! point.

use std::sync::OnceLock;

use aws_lc_sys as ffi;
use nbde_proto::{Curve, EcPoint, EcScalar, Error, Result};

fn nid(curve: Curve) -> i32 {
    match curve {
        Curve::P256 => ffi::NID_X9_62_prime256v1,
        Curve::P384 => ffi::NID_secp384r1,
        Curve::P521 => ffi::NID_secp521r1,
    }
}

/// A built-in group: AWS-LC returns static, immutable data for a named curve (freeing it
/// is a no-op), so one pointer serves every thread for the life of the process.
struct Group(*const ffi::EC_GROUP);

// SAFETY: the group is never mutated or freed (see above); AWS-LC documents built-in
// groups as safe to share between threads.
unsafe impl Send for Group {}
// SAFETY: as for Send.
unsafe impl Sync for Group {}

fn group(curve: Curve) -> Result<*const ffi::EC_GROUP> {
    static GROUPS: [OnceLock<Option<Group>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match curve {
        Curve::P256 => &GROUPS[0],
        Curve::P384 => &GROUPS[1],
        Curve::P521 => &GROUPS[2],
    };
    slot.get_or_init(|| {
        // SAFETY: takes a plain integer; returns null or a static group.
        let g = unsafe { ffi::EC_GROUP_new_by_curve_name(nid(curve)) };
        (!g.is_null()).then_some(Group(g))
    })
    .as_ref()
    .map(|g| g.0)
    .ok_or_else(|| Error::Unsupported(format!("curve {} in AWS-LC", curve.name())))
}

/// Owns one AWS-LC object and frees it with `free` on drop.
struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// `ptr` fresh from an AWS-LC constructor, or an error if it is null (out of memory).
    fn new(ptr: *mut T, free: unsafe extern "C" fn(*mut T)) -> Result<Owned<T>> {
        if ptr.is_null() {
            fail("allocation")
        } else {
            Ok(Owned { ptr, free })
        }
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from the constructor paired with `free` and is freed once.
        unsafe { (self.free)(self.ptr) }
    }
}

/// A failed call: AWS-LC left its reasons on this thread's error queue, which would
/// otherwise grow with every hostile request.
fn fail<T>(what: &'static str) -> Result<T> {
    // SAFETY: clears the calling thread's queue; no arguments.
    unsafe { ffi::ERR_clear_error() };
    Err(Error::BadPoint(what))
}

/// A big number from big-endian bytes, cleared when freed (it may hold the secret).
fn bignum(bytes: &[u8]) -> Result<Owned<ffi::BIGNUM>> {
    // SAFETY: reads `bytes.len()` bytes from a live slice; null `ret` asks for a new BIGNUM.
    let bn = unsafe { ffi::BN_bin2bn(bytes.as_ptr(), bytes.len(), std::ptr::null_mut()) };
    Owned::new(bn, ffi::BN_clear_free)
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
    // SAFETY (every call below): `group` is a live static group; every other pointer is
    // owned by a guard that outlives the call; outputs are written into buffers of the
    // length passed with them.
    let ctx = Owned::new(unsafe { ffi::BN_CTX_new() }, ffi::BN_CTX_free)?;
    let (x, y) = (bignum(x)?, bignum(y)?);
    let point = Owned::new(unsafe { ffi::EC_POINT_new(group) }, ffi::EC_POINT_free)?;
    // The setter refuses coordinates off the curve; checked once more below, so the
    // promise does not rest on one library's setter.
    if unsafe { ffi::EC_POINT_set_affine_coordinates_GFp(group, point.ptr, x.ptr, y.ptr, ctx.ptr) }
        != 1
    {
        return fail("point");
    }
    if unsafe { ffi::EC_POINT_is_on_curve(group, point.ptr, ctx.ptr) } != 1
        || unsafe { ffi::EC_POINT_is_at_infinity(group, point.ptr) } != 0
    {
        return fail("point");
    }
    // AWS-LC's variable-base multiplication is constant-time; the scalar's copy is
    // cleared when `k` drops.
    let k = bignum(k)?;
    let product = Owned::new(unsafe { ffi::EC_POINT_new(group) }, ffi::EC_POINT_free)?;
    let none = std::ptr::null();
    if unsafe { ffi::EC_POINT_mul(group, product.ptr, none, point.ptr, k.ptr, ctx.ptr) } != 1 {
        return fail("multiplication");
    }
    if unsafe { ffi::EC_POINT_is_at_infinity(group, product.ptr) } != 0 {
        return fail("result is the identity");
    }
    let rx = Owned::new(unsafe { ffi::BN_new() }, ffi::BN_free)?;
    let ry = Owned::new(unsafe { ffi::BN_new() }, ffi::BN_free)?;
    if unsafe {
        ffi::EC_POINT_get_affine_coordinates_GFp(group, product.ptr, rx.ptr, ry.ptr, ctx.ptr)
    } != 1
    {
        return fail("point");
    }
    let len = curve.field_len();
    let (mut ox, mut oy) = (vec![0u8; len], vec![0u8; len]);
    if unsafe { ffi::BN_bn2bin_padded(ox.as_mut_ptr(), len, rx.ptr) } != 1
        || unsafe { ffi::BN_bn2bin_padded(oy.as_mut_ptr(), len, ry.ptr) } != 1
    {
        return fail("point");
    }
    Ok((ox, oy))
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
