//! ECDSA verification: P-256 and P-384 (ES256, ES384) written small for Wasm here, P-521
//! (ES512) through RustCrypto's `p521`.
//!
//! Verifying needs far less than a general curve library: Montgomery arithmetic modulo the
//! field prime and the group order in 32-bit limbs (Wasm multiplies 32x32->64 natively),
//! Jacobian point doubling and addition, and one double-scalar multiplication. Only public data
//! comes through here (keys, signatures, digests), so nothing needs to be constant-time.
//!
//! Checks, per SEC 1 §4.1.4 and RFC 7518 §3.4: the signature is exactly `R‖S` of the curve's
//! width; `0 < r, s < n` (which stops the all-zero "psychic signature", CVE-2022-21449); a key is
//! a point on the curve with coordinates below the prime; the sum point is not the identity.

use crate::alg::Alg;
use crate::der;

/// Numbers as little-endian 32-bit limbs: 8 for P-256, 12 for P-384.
type Limbs<const L: usize> = [u32; L];

/// Big-endian hex to limbs. Only used to build the constants below, so it runs at compile
/// time, where an out-of-range index would fail the build rather than panic.
#[allow(clippy::indexing_slicing)]
const fn hex<const L: usize>(text: &str) -> Limbs<L> {
    let mut limbs = [0u32; L];
    let mut rest = text.as_bytes();
    let mut digits_left = 8 * L;
    while let [digit, tail @ ..] = rest {
        let value = match *digit {
            b'0'..=b'9' => *digit - b'0',
            b'a'..=b'f' => *digit - b'a' + 10,
            _ => 0,
        };
        digits_left = digits_left.saturating_sub(1);
        let (limb, shift) = (digits_left / 8, (digits_left % 8) * 4);
        if limb < L {
            limbs[limb] |= (value as u32) << shift;
        }
        rest = tail;
    }
    limbs
}

/// The parameters of a short Weierstrass curve `y² = x³ - 3x + b` of prime order `n`.
struct Params<const L: usize> {
    p: Limbs<L>,
    n: Limbs<L>,
    b: Limbs<L>,
    gx: Limbs<L>,
    gy: Limbs<L>,
}

// NIST SP 800-186 §3.2.1.3 and §3.2.1.4.
const P256: Params<8> = Params {
    p: hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
    n: hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
    b: hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
    gx: hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"),
    gy: hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"),
};

const P384: Params<12> = Params {
    p: hex(concat!(
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "fffffffffffffffeffffffff0000000000000000ffffffff"
    )),
    n: hex(concat!(
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "c7634d81f4372ddf581a0db248b0a77aecec196accc52973"
    )),
    b: hex(concat!(
        "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe814112",
        "0314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef"
    )),
    gx: hex(concat!(
        "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b98",
        "59f741e082542a385502f25dbf55296c3a545e3872760ab7"
    )),
    gy: hex(concat!(
        "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147c",
        "e9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
    )),
};

/// Arithmetic modulo an odd `m < 2^(32·L)`, on residues in Montgomery form (`x·R mod m`,
/// `R = 2^(32·L)`) unless a method says otherwise.
#[derive(Clone, PartialEq, Eq)]
struct Modulus<const L: usize> {
    m: Limbs<L>,
    /// `-m⁻¹ mod 2³²`.
    m0_inv: u32,
    /// `R² mod m`, to enter Montgomery form.
    r2: Limbs<L>,
}

impl<const L: usize> Modulus<L> {
    fn new(m: Limbs<L>) -> Self {
        let low = m.first().copied().unwrap_or(1);
        let mut inv = low; // Newton's iteration: each step doubles the correct low bits.
        for _ in 0..4 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(inv)));
        }
        // R² mod m by doubling 1 modulo m, 2·32·L times.
        let mut r2 = small(1);
        for _ in 0..(64 * L) {
            let twice = r2;
            let carry = add_in_place(&mut r2, &twice);
            if carry || !less_than(&r2, &m) {
                sub_in_place(&mut r2, &m);
            }
        }
        Modulus {
            m,
            m0_inv: inv.wrapping_neg(),
            r2,
        }
    }

    /// Montgomery product `a·b·R⁻¹ mod m` (CIOS), for `a, b < m`.
    fn mul(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut t = [0u32; L];
        let mut top = 0u64;
        for &bi in b {
            let bi = u64::from(bi);
            let mut carry = 0u64;
            for (tj, &aj) in t.iter_mut().zip(a) {
                let v = u64::from(*tj) + u64::from(aj) * bi + carry;
                *tj = v as u32;
                carry = v >> 32;
            }
            let high = top + carry;
            // Add q·m, which clears limb 0, then shift down one limb. (Plain zips: under
            // opt-level "z" a zip of skips is left as a call per limb, six times slower.)
            let q = u64::from(t.first().copied().unwrap_or(0).wrapping_mul(self.m0_inv));
            let mut carry = 0u64;
            for (tj, &mj) in t.iter_mut().zip(&self.m) {
                let v = u64::from(*tj) + q * u64::from(mj) + carry;
                *tj = v as u32;
                carry = v >> 32;
            }
            t.rotate_left(1);
            let v = high + carry;
            if let Some(last) = t.last_mut() {
                *last = v as u32;
            }
            top = v >> 32;
        }
        if top != 0 || !less_than(&t, &self.m) {
            sub_in_place(&mut t, &self.m);
        }
        t
    }

    fn sqr(&self, a: &Limbs<L>) -> Limbs<L> {
        self.mul(a, a)
    }

    fn add(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut sum = *a;
        if add_in_place(&mut sum, b) || !less_than(&sum, &self.m) {
            sub_in_place(&mut sum, &self.m);
        }
        sum
    }

    fn sub(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut difference = *a;
        if sub_in_place(&mut difference, b) {
            add_in_place(&mut difference, &self.m);
        }
        difference
    }

    /// A plain number below `m` into Montgomery form.
    fn enter(&self, a: &Limbs<L>) -> Limbs<L> {
        self.mul(a, &self.r2)
    }

    /// Out of Montgomery form.
    fn leave(&self, a: &Limbs<L>) -> Limbs<L> {
        self.mul(a, &small(1))
    }

    /// `a⁻¹` by Fermat (`a^(m-2)`, `m` prime); zero stays zero.
    fn invert(&self, a: &Limbs<L>) -> Limbs<L> {
        let mut exponent = self.m;
        sub_in_place(&mut exponent, &small(2));
        let mut acc = self.enter(&small(1));
        for limb in exponent.iter().rev() {
            for bit in (0..32).rev() {
                acc = self.sqr(&acc);
                if (limb >> bit) & 1 == 1 {
                    acc = self.mul(&acc, a);
                }
            }
        }
        acc
    }
}

fn small<const L: usize>(value: u32) -> Limbs<L> {
    let mut limbs = [0u32; L];
    if let Some(first) = limbs.first_mut() {
        *first = value;
    }
    limbs
}

#[inline(always)]
fn is_zero<const L: usize>(a: &Limbs<L>) -> bool {
    a.iter().fold(0, |any, limb| any | limb) == 0
}

#[inline(always)]
fn less_than<const L: usize>(a: &Limbs<L>, b: &Limbs<L>) -> bool {
    let mut borrow = 0u64;
    for (&x, &y) in a.iter().zip(b) {
        borrow = u64::from(x).wrapping_sub(u64::from(y) + borrow) >> 63;
    }
    borrow != 0
}

/// `a += b`; true if it carried out of the top limb.
#[inline(always)]
fn add_in_place<const L: usize>(a: &mut Limbs<L>, b: &Limbs<L>) -> bool {
    let mut carry = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let v = u64::from(*x) + u64::from(y) + carry;
        *x = v as u32;
        carry = v >> 32;
    }
    carry != 0
}

/// `a -= b`; true if it borrowed past the top limb.
#[inline(always)]
fn sub_in_place<const L: usize>(a: &mut Limbs<L>, b: &Limbs<L>) -> bool {
    let mut borrow = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let v = u64::from(*x).wrapping_sub(u64::from(y) + borrow);
        *x = v as u32;
        borrow = v >> 63;
    }
    borrow != 0
}

/// Exactly `4·L` big-endian bytes to limbs.
fn from_be<const L: usize>(bytes: &[u8]) -> Option<Limbs<L>> {
    if bytes.len() != 4 * L {
        return None;
    }
    let mut limbs = [0u32; L];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    }
    Some(limbs)
}

/// A point in Jacobian coordinates (`x = X/Z²`, `y = Y/Z³`), in Montgomery form; `Z = 0` is the
/// identity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Point<const L: usize> {
    x: Limbs<L>,
    y: Limbs<L>,
    z: Limbs<L>,
}

/// A curve ready for verification: its field and order arithmetic and its generator.
#[derive(Clone, PartialEq, Eq)]
struct Curve<const L: usize> {
    field: Modulus<L>,
    order: Modulus<L>,
    b: Limbs<L>,
    generator: Point<L>,
}

impl<const L: usize> Curve<L> {
    fn new(params: &Params<L>) -> Self {
        let field = Modulus::new(params.p);
        let generator = Point {
            x: field.enter(&params.gx),
            y: field.enter(&params.gy),
            z: field.enter(&small(1)),
        };
        Curve {
            b: field.enter(&params.b),
            order: Modulus::new(params.n),
            generator,
            field,
        }
    }

    /// The affine point `(x, y)` given as big-endian coordinates, if it is on the curve.
    fn point(&self, x: &[u8], y: &[u8]) -> Option<Point<L>> {
        let (x, y) = (from_be::<L>(x)?, from_be::<L>(y)?);
        if !less_than(&x, &self.field.m) || !less_than(&y, &self.field.m) {
            return None;
        }
        let f = &self.field;
        let (x, y) = (f.enter(&x), f.enter(&y));
        // y² = x³ - 3x + b
        let x3 = f.mul(&f.sqr(&x), &x);
        let three_x = f.add(&f.add(&x, &x), &x);
        let rhs = f.add(&f.sub(&x3, &three_x), &self.b);
        (f.sqr(&y) == rhs).then(|| Point {
            x,
            y,
            z: f.enter(&small(1)),
        })
    }

    /// `2P` (dbl-2001-b, for a = -3). The identity doubles to itself (its Z stays 0).
    fn double(&self, p: &Point<L>) -> Point<L> {
        let f = &self.field;
        let delta = f.sqr(&p.z);
        let gamma = f.sqr(&p.y);
        let beta = f.mul(&p.x, &gamma);
        let t = f.mul(&f.sub(&p.x, &delta), &f.add(&p.x, &delta));
        let alpha = f.add(&f.add(&t, &t), &t);
        let beta2 = f.add(&beta, &beta);
        let beta4 = f.add(&beta2, &beta2);
        let x = f.sub(&f.sqr(&alpha), &f.add(&beta4, &beta4));
        let yz = f.add(&p.y, &p.z);
        let z = f.sub(&f.sub(&f.sqr(&yz), &gamma), &delta);
        let gamma2 = f.sqr(&gamma);
        let gamma4 = f.add(&gamma2, &gamma2);
        let gamma8 = f.add(&gamma4, &gamma4);
        let y = f.sub(&f.mul(&alpha, &f.sub(&beta4, &x)), &f.add(&gamma8, &gamma8));
        Point { x, y, z }
    }

    /// `P + Q`, with every special case: either is the identity, `P = Q`, `P = -Q`.
    fn add(&self, p: &Point<L>, q: &Point<L>) -> Point<L> {
        if is_zero(&p.z) {
            return *q;
        }
        if is_zero(&q.z) {
            return *p;
        }
        let f = &self.field;
        let pz2 = f.sqr(&p.z);
        let qz2 = f.sqr(&q.z);
        let u1 = f.mul(&p.x, &qz2);
        let u2 = f.mul(&q.x, &pz2);
        let s1 = f.mul(&p.y, &f.mul(&q.z, &qz2));
        let s2 = f.mul(&q.y, &f.mul(&p.z, &pz2));
        let h = f.sub(&u2, &u1);
        let r = f.sub(&s2, &s1);
        if is_zero(&h) {
            return if is_zero(&r) {
                self.double(p)
            } else {
                Point {
                    x: [0; L],
                    y: [0; L],
                    z: [0; L],
                }
            };
        }
        let h2 = f.sqr(&h);
        let h3 = f.mul(&h, &h2);
        let v = f.mul(&u1, &h2);
        let x = f.sub(&f.sub(&f.sqr(&r), &h3), &f.add(&v, &v));
        let y = f.sub(&f.mul(&r, &f.sub(&v, &x)), &f.mul(&s1, &h3));
        let z = f.mul(&f.mul(&p.z, &q.z), &h);
        Point { x, y, z }
    }

    /// `u1·G + u2·Q` by Shamir's trick: one doubling per bit, one addition per bit set in
    /// either scalar.
    fn double_mul(&self, u1: &Limbs<L>, u2: &Limbs<L>, q: &Point<L>) -> Point<L> {
        let g = &self.generator;
        let g_plus_q = self.add(g, q);
        let mut acc = Point {
            x: [0; L],
            y: [0; L],
            z: [0; L],
        };
        for (a, b) in u1.iter().rev().zip(u2.iter().rev()) {
            for bit in (0..32).rev() {
                acc = self.double(&acc);
                let addend = match ((a >> bit) & 1, (b >> bit) & 1) {
                    (1, 1) => &g_plus_q,
                    (1, _) => g,
                    (_, 1) => q,
                    _ => continue,
                };
                acc = self.add(&acc, addend);
            }
        }
        acc
    }

    /// Whether `signature` (`R‖S`, big-endian, `4·L` bytes each) signs `digest` under `key`.
    /// The digest is as wide as the order (SHA-256 for P-256, SHA-384 for P-384), so it is
    /// used whole, reduced once below `n`.
    fn verify(&self, key: &Point<L>, digest: &[u8], signature: &[u8]) -> bool {
        let (r, s) = signature.split_at(signature.len() / 2);
        let (Some(r), Some(s), Some(mut e)) = (from_be::<L>(r), from_be::<L>(s), from_be(digest))
        else {
            return false;
        };
        let n = &self.order;
        let in_range = |v: &Limbs<L>| !is_zero(v) && less_than(v, &n.m);
        if signature.len() != 8 * L || !in_range(&r) || !in_range(&s) {
            return false;
        }
        if !less_than(&e, &n.m) {
            sub_in_place(&mut e, &n.m);
        }
        let w = n.invert(&n.enter(&s));
        let u1 = n.leave(&n.mul(&n.enter(&e), &w));
        let u2 = n.leave(&n.mul(&n.enter(&r), &w));
        let sum = self.double_mul(&u1, &u2, key);
        if is_zero(&sum.z) {
            return false;
        }
        let f = &self.field;
        let z_inv = f.invert(&sum.z);
        let mut x = f.leave(&f.mul(&sum.x, &f.sqr(&z_inv)));
        // x < p < 2n, so one subtraction reduces it modulo n.
        if !less_than(&x, &n.m) {
            sub_in_place(&mut x, &n.m);
        }
        x == r
    }
}

/// A P-256, P-384 or P-521 public key, checked to be on its curve.
#[derive(Clone)]
pub struct EcKey {
    key: OnCurve,
    /// The key in DER, for the host's native verifier.
    spki: Vec<u8>,
}

#[derive(Clone)]
enum OnCurve {
    P256(Box<(Curve<8>, Point<8>)>),
    P384(Box<(Curve<12>, Point<12>)>),
    /// P-521's 66-byte field does not fit the 32-bit-limb code above without a third set of
    /// constants and a slower reduction; RustCrypto's curve crate is well kept and verify-only.
    P521(Box<p521::ecdsa::VerifyingKey>),
}

/// The SPKI holds the curve and both coordinates, so equal SPKIs mean equal keys.
impl PartialEq for EcKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for EcKey {}

impl std::fmt::Debug for EcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EcKey({:?})", self.alg())
    }
}

impl EcKey {
    /// A P-256 key from its 32-byte big-endian coordinates; `None` if not on the curve.
    pub fn p256(x: &[u8], y: &[u8]) -> Option<EcKey> {
        let curve = Curve::new(&P256);
        let point = curve.point(x, y)?;
        Some(EcKey {
            key: OnCurve::P256(Box::new((curve, point))),
            spki: der::ec_public_key(der::Curve::P256, x, y),
        })
    }

    /// A P-384 key from its 48-byte big-endian coordinates; `None` if not on the curve.
    pub fn p384(x: &[u8], y: &[u8]) -> Option<EcKey> {
        let curve = Curve::new(&P384);
        let point = curve.point(x, y)?;
        Some(EcKey {
            key: OnCurve::P384(Box::new((curve, point))),
            spki: der::ec_public_key(der::Curve::P384, x, y),
        })
    }

    /// A P-521 key from its 66-byte big-endian coordinates; `None` if not on the curve (or a
    /// coordinate is not below the prime).
    pub fn p521(x: &[u8], y: &[u8]) -> Option<EcKey> {
        const COORDINATE_LEN: usize = 66;
        if x.len() != COORDINATE_LEN || y.len() != COORDINATE_LEN {
            return None;
        }
        let point = p521::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
        let key = p521::ecdsa::VerifyingKey::from_encoded_point(&point).ok()?;
        Some(EcKey {
            key: OnCurve::P521(Box::new(key)),
            spki: der::ec_public_key(der::Curve::P521, x, y),
        })
    }

    /// The key as a DER `SubjectPublicKeyInfo`.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The one algorithm this key verifies: ES256 on P-256, ES384 on P-384, ES512 on P-521.
    pub fn alg(&self) -> Alg {
        match self.key {
            OnCurve::P256(_) => Alg::ES256,
            OnCurve::P384(_) => Alg::ES384,
            OnCurve::P521(_) => Alg::ES512,
        }
    }

    /// The length of a JWS signature under this key: `R‖S`, each as wide as the curve's order
    /// (RFC 7518 §3.4), so 64, 96 or 132 bytes.
    pub fn signature_len(&self) -> usize {
        match self.key {
            OnCurve::P256(_) => 64,
            OnCurve::P384(_) => 96,
            OnCurve::P521(_) => 132,
        }
    }

    /// Whether `signature` is a JWS ECDSA signature of `digest` (SHA-256 for a P-256 key,
    /// SHA-384 for P-384, SHA-512 for P-521) under this key.
    pub fn verify(&self, digest: &[u8], signature: &[u8]) -> bool {
        use p521::ecdsa::signature::hazmat::PrehashVerifier;
        match &self.key {
            OnCurve::P256(key) => key.0.verify(&key.1, digest, signature),
            OnCurve::P384(key) => key.0.verify(&key.1, digest, signature),
            // from_slice takes exactly 132 bytes and refuses r or s outside 1..n.
            OnCurve::P521(key) => p521::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer, hazmat::PrehashSigner};
    use proptest::prelude::*;
    use rand::rngs::OsRng;
    use sha2::{Digest, Sha256, Sha384};

    fn p256_key(signing: &p256::ecdsa::SigningKey) -> EcKey {
        let point = signing.verifying_key().to_encoded_point(false);
        EcKey::p256(point.x().unwrap(), point.y().unwrap()).unwrap()
    }

    fn p384_key(signing: &p384::ecdsa::SigningKey) -> EcKey {
        let point = signing.verifying_key().to_encoded_point(false);
        EcKey::p384(point.x().unwrap(), point.y().unwrap()).unwrap()
    }

    #[test]
    fn the_generators_are_on_their_curves() {
        let be = |limbs: &[u32]| -> Vec<u8> {
            limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect()
        };
        assert!(EcKey::p256(&be(&P256.gx), &be(&P256.gy)).is_some());
        assert!(EcKey::p384(&be(&P384.gx), &be(&P384.gy)).is_some());
        assert!(EcKey::p256(&be(&P256.gx), &be(&P256.gx)).is_none());
    }

    #[test]
    fn montgomery_arithmetic_round_trips_and_inverts() {
        let field = Modulus::new(P256.p);
        let a = field.enter(&P256.gx);
        assert_eq!(field.leave(&a), P256.gx);
        let one = field.enter(&small(1));
        assert_eq!(field.mul(&a, &field.invert(&a)), one);
        let order = Modulus::new(P384.n);
        let b = order.enter(&P384.gy);
        assert_eq!(order.mul(&b, &order.invert(&b)), order.enter(&small(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn p256_agrees_with_rustcrypto(message in proptest::collection::vec(any::<u8>(), 0..64), flip in 0usize..512) {
            let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
            let key = p256_key(&signing);
            let signature: p256::ecdsa::Signature = signing.sign(&message);
            let bytes = signature.to_bytes();
            let digest = Sha256::digest(&message);
            prop_assert!(key.verify(&digest, &bytes));
            let mut tampered = bytes.to_vec();
            tampered[flip / 8] ^= 1 << (flip % 8);
            prop_assert!(!key.verify(&digest, &tampered));
            let mut other = digest.to_vec();
            other[flip / 16] ^= 1 << (flip % 8);
            prop_assert!(!key.verify(&other, &bytes));
        }

        #[test]
        fn p384_agrees_with_rustcrypto(message in proptest::collection::vec(any::<u8>(), 0..64), flip in 0usize..768) {
            let signing = p384::ecdsa::SigningKey::random(&mut OsRng);
            let key = p384_key(&signing);
            let signature: p384::ecdsa::Signature = signing.sign(&message);
            let bytes = signature.to_bytes();
            let digest = Sha384::digest(&message);
            prop_assert!(key.verify(&digest, &bytes));
            let mut tampered = bytes.to_vec();
            tampered[flip / 8] ^= 1 << (flip % 8);
            prop_assert!(!key.verify(&digest, &tampered));
        }
    }

    #[test]
    fn a_digest_at_or_above_the_order_is_reduced_as_the_standard_says() {
        // The all-ones digest exceeds n on P-256; RustCrypto signs it reduced, so must we verify it.
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let digest = [0xffu8; 32];
        let signature: p256::ecdsa::Signature = signing.sign_prehash(&digest).unwrap();
        assert!(p256_key(&signing).verify(&digest, &signature.to_bytes()));
    }

    #[test]
    fn out_of_range_and_degenerate_signatures_are_refused() {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = p256_key(&signing);
        let digest = Sha256::digest(b"input");
        let be_n: Vec<u8> = P256.n.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
        let signature: p256::ecdsa::Signature = signing.sign(b"input");
        let good = signature.to_bytes();
        for bad in [
            vec![0u8; 64],
            vec![0xffu8; 64],
            [be_n.as_slice(), &good[32..]].concat(),
            [&good[..32], be_n.as_slice()].concat(),
            good[..63].to_vec(),
            [&good[..], &[0]].concat(),
        ] {
            assert!(!key.verify(&digest, &bad));
        }
        assert!(key.verify(&digest, &good));
    }

    #[test]
    fn points_off_the_curve_or_outside_the_field_are_refused() {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        let mut y_off = y.clone();
        y_off[31] ^= 1;
        assert!(EcKey::p256(&x, &y_off).is_none());
        assert!(EcKey::p256(&[0xff; 32], &y).is_none());
        assert!(EcKey::p256(&x[1..], &y).is_none());
        assert!(EcKey::p384(&x, &y).is_none());
        assert!(EcKey::p256(&x, &y).is_some());
    }
}
