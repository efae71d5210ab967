//! Shamir's secret sharing over a random 256-bit prime field, as Clevis's sss pin does it.
//!
//! The secret is the polynomial's constant term, used directly as the A256GCM key of the
//! outer JWE. Each share is `x ‖ y` (32 bytes each, big-endian), encrypted by a child pin.

use crypto_bigint::{NonZero, RandomMod, U256};
use crypto_primes::{Flavor, random_prime};
use getrandom::SysRng;
use getrandom::rand_core::UnwrapErr;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Bytes in the prime, the secret, and each share coordinate.
pub const FIELD_LEN: usize = 32;
/// Bytes in one share: `x ‖ y`.
pub const SHARE_LEN: usize = 2 * FIELD_LEN;

/// A random polynomial of degree `t − 1` over GF(p). Coefficients are zeroized on drop.
pub struct Polynomial {
    prime: NonZero<U256>,
    coefficients: Vec<U256>,
}

impl Drop for Polynomial {
    fn drop(&mut self) {
        for c in &mut self.coefficients {
            c.zeroize();
        }
    }
}

impl std::fmt::Debug for Polynomial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Polynomial(t={}, <redacted>)", self.coefficients.len())
    }
}

fn random_below(modulus: &NonZero<U256>) -> Result<U256> {
    U256::try_random_mod_vartime(&mut SysRng, modulus).map_err(|_| Error::Random)
}

fn to_bytes(n: &U256) -> [u8; FIELD_LEN] {
    let mut out = [0u8; FIELD_LEN];
    out.copy_from_slice(&n.to_be_bytes());
    out
}

fn from_bytes(bytes: &[u8], what: &'static str) -> Result<U256> {
    if bytes.len() != FIELD_LEN {
        return Err(Error::Invalid(what));
    }
    Ok(U256::from_be_slice(bytes))
}

impl Polynomial {
    /// A fresh prime of exactly 256 bits and `threshold` random coefficients below it.
    pub fn generate(threshold: usize) -> Result<Polynomial> {
        if threshold == 0 {
            return Err(Error::Invalid("t"));
        }
        let prime: U256 = random_prime(&mut UnwrapErr(SysRng), Flavor::Any, 256);
        let prime = NonZero::new(prime)
            .into_option()
            .ok_or(Error::Invalid("p"))?;
        let coefficients = (0..threshold)
            .map(|_| random_below(&prime))
            .collect::<Result<Vec<_>>>()?;
        Ok(Polynomial {
            prime,
            coefficients,
        })
    }

    /// The prime, big-endian, for the JWE header's `p`.
    pub fn prime(&self) -> [u8; FIELD_LEN] {
        to_bytes(&self.prime)
    }

    /// The secret: the constant term, the outer JWE's key.
    pub fn secret(&self) -> Zeroizing<[u8; FIELD_LEN]> {
        Zeroizing::new(to_bytes(&self.coefficients[0]))
    }

    /// A new share at a random non-zero x.
    pub fn share(&self) -> Result<Zeroizing<[u8; SHARE_LEN]>> {
        let x = loop {
            let x = random_below(&self.prime)?;
            if x != U256::ZERO {
                break x;
            }
        };
        // Horner: y = (((e[t−1])·x + e[t−2])·x + …) + e[0]
        let mut y = Zeroizing::new(U256::ZERO);
        for c in self.coefficients.iter().rev() {
            *y = y.mul_mod(&x, &self.prime).add_mod(c, &self.prime);
        }
        let mut out = Zeroizing::new([0u8; SHARE_LEN]);
        out[..FIELD_LEN].copy_from_slice(&to_bytes(&x));
        out[FIELD_LEN..].copy_from_slice(&to_bytes(&y));
        Ok(out)
    }
}

/// Recovers the secret from `shares` (each `x ‖ y`) by Lagrange interpolation at 0.
/// With fewer than `t` shares this gives a wrong value, which the outer JWE's tag catches.
pub fn recover(prime: &[u8], shares: &[&[u8]]) -> Result<Zeroizing<[u8; FIELD_LEN]>> {
    let p = from_bytes(prime, "p")?;
    if p <= U256::ONE || !bool::from(p.is_odd()) {
        return Err(Error::Invalid("p"));
    }
    let p = NonZero::new(p).into_option().ok_or(Error::Invalid("p"))?;
    let mut points = Vec::with_capacity(shares.len());
    for share in shares {
        if share.len() != SHARE_LEN {
            return Err(Error::Invalid("share length"));
        }
        let x = from_bytes(&share[..FIELD_LEN], "share x")?;
        let y = Zeroizing::new(from_bytes(&share[FIELD_LEN..], "share y")?);
        if x >= *p || *y >= *p {
            return Err(Error::Invalid("share outside the field"));
        }
        points.push((x, y));
    }
    let mut secret = Zeroizing::new(U256::ZERO);
    for (i, (xi, yi)) in points.iter().enumerate() {
        // l_i(0) = Π_{j≠i} (0 − x_j) / (x_i − x_j)
        let mut numerator = U256::ONE;
        let mut denominator = U256::ONE;
        for (j, (xj, _)) in points.iter().enumerate() {
            if i == j {
                continue;
            }
            numerator = numerator.mul_mod(&U256::ZERO.sub_mod(xj, &p), &p);
            denominator = denominator.mul_mod(&xi.sub_mod(xj, &p), &p);
        }
        let inverse = denominator
            .invert_mod(&p)
            .into_option()
            .ok_or(Error::Invalid("shares with the same x"))?;
        let term = Zeroizing::new(yi.mul_mod(&numerator.mul_mod(&inverse, &p), &p));
        *secret = secret.add_mod(&term, &p);
    }
    Ok(Zeroizing::new(to_bytes(&secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_t_of_n_shares_recover_the_secret() {
        for t in 1..=4 {
            let poly = Polynomial::generate(t).unwrap();
            assert_eq!(poly.prime()[0] & 0x80, 0x80, "p has exactly 256 bits");
            let shares: Vec<_> = (0..5).map(|_| poly.share().unwrap()).collect();
            for start in 0..=(5 - t) {
                let subset: Vec<&[u8]> = shares[start..start + t].iter().map(|s| &s[..]).collect();
                assert_eq!(
                    *recover(&poly.prime(), &subset).unwrap(),
                    *poly.secret(),
                    "t={t}"
                );
            }
            if t > 1 {
                let short: Vec<&[u8]> = shares[..t - 1].iter().map(|s| &s[..]).collect();
                assert_ne!(*recover(&poly.prime(), &short).unwrap(), *poly.secret());
            }
        }
    }

    #[test]
    fn malformed_shares_and_primes_are_refused() {
        let poly = Polynomial::generate(2).unwrap();
        let a = poly.share().unwrap();
        assert!(
            recover(&poly.prime(), &[&a[..], &a[..]]).is_err(),
            "same x twice"
        );
        assert!(recover(&poly.prime(), &[&a[..10]]).is_err());
        assert!(recover(&[0u8; 32], &[&a[..]]).is_err());
        assert!(recover(&[0u8; 31], &[&a[..]]).is_err());
        assert!(recover(&[0xffu8; 32][..], &[&[0xffu8; 64][..]]).is_err());
    }
}
