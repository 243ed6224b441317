//! RSA signature verification (RS256/384/512, PS256/384/512) written for speed inside Wasm.
//!
//! Verifying is one modular exponentiation by the public exponent (65537: 16 squarings and one
//! multiplication) of a 2048 to 8192-bit number, then a check of the encoded message. A general
//! big-integer library pays for allocation and generality on every step; this module keeps each
//! key's modulus in 32-bit limbs with its Montgomery constants computed once, when the key is
//! loaded, and multiplies with 64-bit accumulators, which Wasm has natively (its 64x64-bit
//! products are emulated, so 32-bit limbs are the fast width there).
//!
//! Only public data goes through here (signatures, keys, messages), so nothing needs to be
//! constant-time.

use crate::alg::Alg;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// An RSA public key, ready for fast verification.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaKey {
    /// The modulus, least significant limb first.
    n: Vec<u32>,
    /// `-n⁻¹ mod 2³²`, the Montgomery reduction constant.
    n0_inv: u32,
    /// `R² mod n` with `R = 2^(32·limbs)`, to enter Montgomery form.
    r2: Vec<u32>,
    /// The public exponent.
    e: u64,
    /// Modulus length in bits and bytes.
    bits: usize,
    len: usize,
    /// The key in DER, for the host's native verifier.
    spki: Vec<u8>,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.bits)
    }
}

impl RsaKey {
    /// A key from the big-endian modulus and exponent (a JWK's `n` and `e`); `None` if the
    /// modulus is even or zero, or the exponent is even, below 3, wider than 32 bits (real keys
    /// use 65537; a huge exponent only makes each verification cost more), or not below the
    /// modulus.
    pub fn from_be_bytes(n: &[u8], e: &[u8]) -> Option<RsaKey> {
        let n_bytes = strip_leading_zeros(n);
        let e_bytes = strip_leading_zeros(e);
        if e_bytes.len() > 4 || n_bytes.is_empty() {
            return None;
        }
        let e = e_bytes
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let n = limbs_from_be(n_bytes, n_bytes.len().div_ceil(4));
        let low = *n.first()?;
        if low & 1 == 0 || e < 3 || e & 1 == 0 {
            return None;
        }
        let top = *n.last()?;
        let bits = (n.len() - 1) * 32 + (32 - top.leading_zeros() as usize);
        if bits <= 64 && u128::from(e) >= limbs_value(&n) {
            return None;
        }
        let n0_inv = inverse_mod_2_32(low).wrapping_neg();
        let r2 = r_squared(&n);
        Some(RsaKey {
            n,
            n0_inv,
            r2,
            e,
            bits,
            len: n_bytes.len(),
            spki: crate::der::rsa_public_key(n_bytes, e_bytes),
        })
    }

    /// The key as a DER `SubjectPublicKeyInfo`.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// `signature^e mod n` as `len` big-endian bytes, or `None` if the signature is not exactly
    /// the modulus' length (RFC 8017 §8.2.2 step 1) or not below the modulus.
    fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.len {
            return None;
        }
        let s = limbs_from_be(signature, self.n.len());
        if !less_than(&s, &self.n) {
            return None;
        }
        let base = self.mont_mul(&s, &self.r2);
        let mut acc = base.clone();
        // Left to right over the exponent's bits, after its leading one, but the last. The
        // exponent is odd, so its last step is a multiplication by the base; multiplying by
        // the plain signature instead (acc·s·R⁻¹) also leaves Montgomery form: one product
        // instead of two.
        let top_bit = 63 - self.e.leading_zeros();
        for bit in (1..top_bit).rev() {
            acc = self.mont_sqr(&acc);
            if (self.e >> bit) & 1 == 1 {
                acc = self.mont_mul(&acc, &base);
            }
        }
        let m = self.mont_mul(&self.mont_sqr(&acc), &s);
        Some(limbs_to_be(&m, self.len))
    }

    /// Montgomery square `a²·R⁻¹ mod n`, for `a < n`. Sixteen of the seventeen products of a
    /// verification are squares; computing each cross product `aᵢ·aⱼ` once and doubling saves
    /// about a quarter of the work of [`RsaKey::mont_mul`].
    fn mont_sqr(&self, a: &[u32]) -> Vec<u32> {
        let s = self.n.len();
        // The full 2s-limb square, plus one limb for the reduction's last carry.
        let mut t = vec![0u32; 2 * s + 1];
        // Cross products aᵢ·aⱼ (i < j) at limb i + j.
        for (i, &ai) in a.iter().enumerate() {
            let ai = u64::from(ai);
            let mut carry = 0u64;
            for (tk, &aj) in t.iter_mut().skip(2 * i + 1).zip(a.iter().skip(i + 1)) {
                let v = u64::from(*tk) + ai * u64::from(aj) + carry;
                *tk = v as u32;
                carry = v >> 32;
            }
            // Row i ends at limb i + s - 1; limb i + s is still untouched here.
            if let Some(slot) = t.get_mut(i + s) {
                *slot = carry as u32;
            }
        }
        // Double the cross products, then add the squares aᵢ² at limb 2i.
        let mut bit = 0u32;
        for limb in t.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | bit;
            bit = next;
        }
        let mut carry = 0u64;
        for (pair, &ai) in t.chunks_mut(2).zip(a) {
            let sq = u64::from(ai) * u64::from(ai);
            for (limb, part) in pair.iter_mut().zip([sq & 0xffff_ffff, sq >> 32]) {
                let v = u64::from(*limb) + part + carry;
                *limb = v as u32;
                carry = v >> 32;
            }
        }
        // Montgomery reduction: clear one low limb per step by adding a multiple of n.
        for i in 0..s {
            let ti = t.get(i).copied().unwrap_or(0);
            let m = u64::from(ti.wrapping_mul(self.n0_inv));
            let mut carry = 0u64;
            for (tk, &nk) in t.iter_mut().skip(i).zip(&self.n) {
                let v = u64::from(*tk) + m * u64::from(nk) + carry;
                *tk = v as u32;
                carry = v >> 32;
            }
            for tk in t.iter_mut().skip(i + s) {
                if carry == 0 {
                    break;
                }
                let v = u64::from(*tk) + carry;
                *tk = v as u32;
                carry = v >> 32;
            }
        }
        let mut result: Vec<u32> = t.iter().skip(s).take(s).copied().collect();
        let top = t.get(2 * s).copied().unwrap_or(0);
        if top != 0 || !less_than(&result, &self.n) {
            sub_in_place(&mut result, &self.n);
        }
        result
    }

    /// Montgomery product `a·b·R⁻¹ mod n` (CIOS, one pass per limb of `b`), for `a, b < n`.
    fn mont_mul(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let s = self.n.len();
        let mut t = vec![0u32; s];
        let mut next = vec![0u32; s];
        let mut top: u64 = 0;
        let (Some(&a0), Some(&n0)) = (a.first(), self.n.first()) else {
            return t;
        };
        for &bi in b {
            let bi = u64::from(bi);
            let t0 = u64::from(t.first().copied().unwrap_or(0)) + u64::from(a0) * bi;
            let m = u64::from((t0 as u32).wrapping_mul(self.n0_inv));
            let mut carry_ab = t0 >> 32;
            let mut carry_mn = (u64::from(t0 as u32) + m * u64::from(n0)) >> 32;
            // Limb j of t + a·bi + m·n lands in limb j-1: the division by 2³² for free.
            for (out, ((&tj, &aj), &nj)) in
                next.iter_mut().zip(t.iter().zip(a).zip(&self.n).skip(1))
            {
                let ab = u64::from(tj) + u64::from(aj) * bi + carry_ab;
                carry_ab = ab >> 32;
                let mn = u64::from(ab as u32) + m * u64::from(nj) + carry_mn;
                carry_mn = mn >> 32;
                *out = mn as u32;
            }
            let sum = top + carry_ab + carry_mn;
            if let Some(last) = next.last_mut() {
                *last = sum as u32;
            }
            top = sum >> 32;
            std::mem::swap(&mut t, &mut next);
        }
        if top != 0 || !less_than(&t, &self.n) {
            sub_in_place(&mut t, &self.n);
        }
        t
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or(&[])
}

/// Big-endian bytes to `count` little-endian limbs (zero-extended).
fn limbs_from_be(bytes: &[u8], count: usize) -> Vec<u32> {
    let mut limbs = vec![0u32; count];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    }
    limbs
}

/// Little-endian limbs to `len` big-endian bytes.
fn limbs_to_be(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    out.resize(len, 0);
    out.reverse();
    out
}

fn limbs_value(limbs: &[u32]) -> u128 {
    limbs
        .iter()
        .rev()
        .fold(0u128, |acc, l| (acc << 32) | u128::from(*l))
}

/// `a < b` for equal-length limb vectors.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` (wrapping at the top; callers ensure the result is the intended residue).
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0i64;
    for (x, &y) in a.iter_mut().zip(b) {
        let d = i64::from(*x) - i64::from(y) - borrow;
        *x = d as u32;
        borrow = i64::from(d < 0);
    }
}

/// `x⁻¹ mod 2³²` for odd `x`, by Newton's iteration (each step doubles the correct bits).
fn inverse_mod_2_32(x: u32) -> u32 {
    let mut inv = x; // correct to 3 bits for odd x
    for _ in 0..4 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inv)));
    }
    inv
}

/// `R² mod n` with `R = 2^(32·limbs)`, by doubling 1 modulo n (once per key).
fn r_squared(n: &[u32]) -> Vec<u32> {
    let mut x = vec![0u32; n.len()];
    if let Some(first) = x.first_mut() {
        *first = 1;
    }
    for _ in 0..(64 * n.len()) {
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let next_carry = *limb >> 31;
            *limb = (*limb << 1) | carry;
            carry = next_carry;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

/// The DER `DigestInfo` prefix of each hash (RFC 8017 §9.2, note 1).
fn digest_info(alg: Alg) -> Option<&'static [u8]> {
    const SHA256: &[u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA384: &[u8] = &[
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    const SHA512: &[u8] = &[
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ];
    match alg {
        Alg::RS256 => Some(SHA256),
        Alg::RS384 => Some(SHA384),
        Alg::RS512 => Some(SHA512),
        _ => None,
    }
}

/// The digest of `parts`, concatenated, under the algorithm's hash (SHA-256/384/512 by its
/// width). Also the ECDSA verifier's digest.
pub(crate) fn hash(alg: Alg, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match alg.hash_len() {
        48 => run::<Sha384>(parts),
        64 => run::<Sha512>(parts),
        _ => run::<Sha256>(parts),
    }
}

/// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2): the expected encoding is rebuilt and compared whole,
/// never parsed, so no lenient ASN.1 reading can be fooled.
pub fn verify_pkcs1(alg: Alg, key: &RsaKey, message: &[u8], signature: &[u8]) -> bool {
    let (Some(prefix), Some(em)) = (digest_info(alg), key.public_op(signature)) else {
        return false;
    };
    let digest = hash(alg, &[message]);
    let t_len = prefix.len() + digest.len();
    let Some(padding) = key.len.checked_sub(t_len + 3) else {
        return false;
    };
    if padding < 8 {
        return false;
    }
    let mut expected = Vec::with_capacity(key.len);
    expected.extend_from_slice(&[0x00, 0x01]);
    expected.resize(2 + padding, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(prefix);
    expected.extend_from_slice(&digest);
    em == expected
}

/// RSASSA-PSS (RFC 8017 §9.1.2) with MGF1 over the same hash and a salt exactly as long as the
/// hash (RFC 7518 §3.5).
pub fn verify_pss(alg: Alg, key: &RsaKey, message: &[u8], signature: &[u8]) -> bool {
    let Some(m) = key.public_op(signature) else {
        return false;
    };
    let h_len = alg.hash_len();
    let s_len = h_len;
    let em_bits = key.bits - 1;
    let em_len = em_bits.div_ceil(8);
    // I2OSP(m, emLen): when emLen < k the extra leading byte of m must be zero.
    let Some((extra, em)) = m.split_at_checked(m.len() - em_len) else {
        return false;
    };
    if extra.iter().any(|b| *b != 0) || em_len < h_len + s_len + 2 {
        return false;
    }
    let Some((masked_db, rest)) = em.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    let Some((h, trailer)) = rest.split_at_checked(h_len) else {
        return false;
    };
    if trailer != [0xbc] {
        return false;
    }
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8
        .checked_shr(u32::try_from(unused_bits).unwrap_or(8))
        .unwrap_or(0);
    if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
        return false;
    }
    let mask = mgf1(alg, h, masked_db.len());
    let mut db: Vec<u8> = masked_db.iter().zip(&mask).map(|(a, b)| a ^ b).collect();
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    let zeros = em_len - h_len - s_len - 2;
    let Some((ps, rest)) = db.split_at_checked(zeros) else {
        return false;
    };
    let Some((separator, salt)) = rest.split_at_checked(1) else {
        return false;
    };
    if ps.iter().any(|b| *b != 0) || separator != [0x01] {
        return false;
    }
    let m_hash = hash(alg, &[message]);
    hash(alg, &[&[0u8; 8], &m_hash, salt]) == h
}

/// MGF1 (RFC 8017 §B.2.1) over the algorithm's hash.
fn mgf1(alg: Alg, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + alg.hash_len());
    let mut counter: u32 = 0;
    while out.len() < len {
        out.extend(hash(alg, &[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;

    fn key_pair(bits: usize) -> (rsa::RsaPrivateKey, RsaKey) {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).unwrap();
        let public = private.to_public_key();
        let key =
            RsaKey::from_be_bytes(&public.n().to_bytes_be(), &public.e().to_bytes_be()).unwrap();
        (private, key)
    }

    #[test]
    fn the_public_operation_matches_plain_modular_exponentiation_for_any_exponent() {
        let (private, _) = key_pair(1024);
        let n = private.n().clone();
        let n_bytes = n.to_bytes_be();
        for e in [3u32, 5, 17, 65537, 0x8000_0001, 0xffff_ffff] {
            let key = RsaKey::from_be_bytes(&n_bytes, &e.to_be_bytes()).unwrap();
            for seed in [2u32, 0xdead_beef, 65537] {
                let x = rsa::BigUint::from(seed).modpow(&rsa::BigUint::from(977u32), &n);
                let x_bytes = limbs_to_be(&limbs_from_be(&x.to_bytes_be(), key.n.len()), key.len);
                let expected = x.modpow(&rsa::BigUint::from(e), &n).to_bytes_be();
                let got = key.public_op(&x_bytes).unwrap();
                assert_eq!(strip_leading_zeros(&got), expected.as_slice(), "e = {e}");
            }
        }
    }

    fn sign(alg: Alg, private: &rsa::RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
        let k = private.clone();
        let mut rng = rand::rngs::OsRng;
        match alg {
            Alg::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(k)
                .sign(msg)
                .to_vec(),
            Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(k)
                .sign(msg)
                .to_vec(),
            Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(k)
                .sign(msg)
                .to_vec(),
            Alg::PS256 => rsa::pss::SigningKey::<Sha256>::new(k)
                .sign_with_rng(&mut rng, msg)
                .to_vec(),
            Alg::PS384 => rsa::pss::SigningKey::<Sha384>::new(k)
                .sign_with_rng(&mut rng, msg)
                .to_vec(),
            Alg::PS512 => rsa::pss::SigningKey::<Sha512>::new(k)
                .sign_with_rng(&mut rng, msg)
                .to_vec(),
            other => panic!("{other} is not an RSA algorithm"),
        }
    }

    fn verify(alg: Alg, key: &RsaKey, msg: &[u8], sig: &[u8]) -> bool {
        if digest_info(alg).is_some() {
            verify_pkcs1(alg, key, msg, sig)
        } else {
            verify_pss(alg, key, msg, sig)
        }
    }

    #[test]
    fn agrees_with_the_rsa_crate_on_every_algorithm_and_odd_sizes() {
        // 2049 and 3071 bits exercise moduli whose byte and limb lengths are not round, and
        // PSS encodings shorter than the modulus.
        for bits in [2048, 2049, 3071, 4096] {
            let (private, key) = key_pair(bits);
            assert_eq!(key.bits(), bits);
            for alg in [
                Alg::RS256,
                Alg::RS384,
                Alg::RS512,
                Alg::PS256,
                Alg::PS384,
                Alg::PS512,
            ] {
                let msg = format!("header.payload for {alg} at {bits} bits");
                let sig = sign(alg, &private, msg.as_bytes());
                assert!(verify(alg, &key, msg.as_bytes(), &sig), "{alg} {bits}");
                let mut bad = sig.clone();
                bad[sig.len() / 2] ^= 1;
                assert!(
                    !verify(alg, &key, msg.as_bytes(), &bad),
                    "{alg} {bits} flipped"
                );
                assert!(
                    !verify(alg, &key, b"other", &sig),
                    "{alg} {bits} other message"
                );
            }
        }
    }

    #[test]
    fn the_public_operation_matches_the_rsa_crates() {
        let (private, key) = key_pair(2048);
        let public = private.to_public_key();
        for seed in 0u8..20 {
            let mut input = vec![seed; 256];
            input[0] = seed % 0x7f;
            let ours = key.public_op(&input).unwrap();
            let theirs = rsa::BigUint::from_bytes_be(&input).modpow(public.e(), public.n());
            assert_eq!(
                ours,
                limbs_to_be(&limbs_from_be(&theirs.to_bytes_be(), 64), 256)
            );
        }
    }

    #[test]
    fn signatures_of_the_wrong_length_or_out_of_range_are_refused() {
        let (private, key) = key_pair(2048);
        let sig = sign(Alg::RS256, &private, b"m");
        assert!(!verify_pkcs1(Alg::RS256, &key, b"m", &sig[1..]));
        let mut longer = vec![0u8];
        longer.extend_from_slice(&sig);
        assert!(!verify_pkcs1(Alg::RS256, &key, b"m", &longer));
        // s >= n: the modulus itself.
        let n = limbs_to_be(&key.n, key.len);
        assert!(key.public_op(&n).is_none());
        assert!(key.public_op(&[0xff; 256]).is_none());
    }

    #[test]
    fn a_pss_salt_of_another_length_is_refused() {
        let (private, key) = key_pair(2048);
        for salt in [0, 20, 31, 33, 64] {
            let signer = rsa::pss::SigningKey::<Sha256>::new_with_salt_len(private.clone(), salt);
            let sig = signer.sign_with_rng(&mut rand::rngs::OsRng, b"m").to_vec();
            assert!(!verify_pss(Alg::PS256, &key, b"m", &sig), "salt {salt}");
        }
    }

    #[test]
    fn keys_are_validated() {
        assert!(
            RsaKey::from_be_bytes(&[0x10, 0x00], &[1, 0, 1]).is_none(),
            "even modulus"
        );
        assert!(
            RsaKey::from_be_bytes(&[0x10, 0x01], &[2]).is_none(),
            "even exponent"
        );
        assert!(
            RsaKey::from_be_bytes(&[0x10, 0x01], &[1]).is_none(),
            "exponent 1"
        );
        assert!(RsaKey::from_be_bytes(&[], &[3]).is_none(), "empty modulus");
        assert!(
            RsaKey::from_be_bytes(&[0x0f], &[0x11]).is_none(),
            "exponent above the modulus"
        );
        assert!(
            RsaKey::from_be_bytes(&[1; 9], &[1, 0, 0, 0, 1]).is_none(),
            "exponent over 32 bits"
        );
        assert_eq!(inverse_mod_2_32(3).wrapping_mul(3), 1);
    }

    proptest! {
        #[test]
        fn squaring_agrees_with_multiplying(seed in proptest::collection::vec(any::<u8>(), 256)) {
            static KEY: std::sync::OnceLock<RsaKey> = std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| key_pair(2048).1);
            let mut a = limbs_from_be(&seed, key.n.len());
            if !less_than(&a, &key.n) {
                sub_in_place(&mut a, &key.n);
            }
            prop_assert_eq!(key.mont_sqr(&a), key.mont_mul(&a, &a));
            let mut near_n = key.n.clone();
            sub_in_place(&mut near_n, &[1]);
            prop_assert_eq!(key.mont_sqr(&near_n), key.mont_mul(&near_n, &near_n));
        }

        #[test]
        fn arbitrary_signatures_never_panic(sig in proptest::collection::vec(any::<u8>(), 0..300)) {
            static KEY: std::sync::OnceLock<RsaKey> = std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| key_pair(2048).1);
            for alg in [Alg::RS256, Alg::PS256, Alg::PS512] {
                let _ = verify(alg, key, b"m", &sig);
            }
        }
    }
}
