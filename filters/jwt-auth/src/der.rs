//! The DER encodings Envoy's native `verify_signature` takes: a public key as a
//! `SubjectPublicKeyInfo` (RFC 5280 §4.1, RFC 3279, RFC 5480) and an ECDSA signature as an
//! `ECDSA-Sig-Value` (RFC 3279 §2.2.3), built from a JWK's parts and a JWS signature.

/// `rsaEncryption` (1.2.840.113549.1.1.1) followed by its NULL parameters.
const RSA_ALGORITHM: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7).
const P256_CURVE: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34).
const P384_CURVE: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `secp521r1` (1.3.132.0.35).
const P521_CURVE: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const SEQUENCE: u8 = 0x30;

/// The curve of an EC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

/// Appends tag, definite length and content.
fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = bytes.iter().skip_while(|b| **b == 0).count();
        out.push(0x80 | significant as u8);
        out.extend(bytes.iter().skip(bytes.len() - significant));
    }
    out.extend_from_slice(content);
}

/// A non-negative INTEGER from big-endian bytes: minimal, with a zero byte in front when the
/// top bit is set (DER integers are signed).
fn unsigned_integer(out: &mut Vec<u8>, be: &[u8]) {
    let digits = match be.iter().position(|b| *b != 0) {
        Some(first) => be.get(first..).unwrap_or_default(),
        None => &[0],
    };
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(out, INTEGER, &content);
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut algorithm_id = Vec::new();
    tlv(&mut algorithm_id, SEQUENCE, algorithm);
    // A BIT STRING whose first byte counts the unused bits of the last: none.
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut body = algorithm_id;
    tlv(&mut body, BIT_STRING, &bits);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(&mut out, SEQUENCE, &body);
    out
}

/// An RSA public key from its big-endian modulus and exponent.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut integers = Vec::with_capacity(n.len() + e.len() + 8);
    unsigned_integer(&mut integers, n);
    unsigned_integer(&mut integers, e);
    let mut rsa_public_key = Vec::with_capacity(integers.len() + 4);
    tlv(&mut rsa_public_key, SEQUENCE, &integers);
    spki(RSA_ALGORITHM, &rsa_public_key)
}

/// An EC public key from its big-endian affine coordinates (uncompressed point).
pub fn ec_public_key(curve: Curve, x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut algorithm = EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(match curve {
        Curve::P256 => P256_CURVE,
        Curve::P384 => P384_CURVE,
        Curve::P521 => P521_CURVE,
    });
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    spki(&algorithm, &point)
}

/// A JWS ECDSA signature (`R‖S`, two equal halves) as DER; `None` if it cannot be split evenly.
pub fn ecdsa_signature(jws: &[u8]) -> Option<Vec<u8>> {
    if jws.is_empty() || !jws.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = jws.split_at(jws.len() / 2);
    let mut integers = Vec::with_capacity(jws.len() + 6);
    unsigned_integer(&mut integers, r);
    unsigned_integer(&mut integers, s);
    let mut out = Vec::with_capacity(integers.len() + 3);
    tlv(&mut out, SEQUENCE, &integers);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rsa_key_matches_rustcrypto() {
        use rsa::pkcs8::EncodePublicKey;
        use rsa::traits::PublicKeyParts;
        let key = crate::crypto::test_keys::rsa().to_public_key();
        let ours = rsa_public_key(&key.n().to_bytes_be(), &key.e().to_bytes_be());
        let theirs = key.to_public_key_der().unwrap();
        assert_eq!(ours, theirs.as_bytes());
    }

    #[test]
    fn ec_keys_match_rustcrypto() {
        use p256::pkcs8::EncodePublicKey;
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng).public_key();
        let point = p256::EncodedPoint::from(key);
        let ours = ec_public_key(Curve::P256, point.x().unwrap(), point.y().unwrap());
        assert_eq!(ours, key.to_public_key_der().unwrap().as_bytes());

        let key = p384::SecretKey::random(&mut rand::rngs::OsRng).public_key();
        let point = p384::EncodedPoint::from(key);
        let ours = ec_public_key(Curve::P384, point.x().unwrap(), point.y().unwrap());
        assert_eq!(ours, key.to_public_key_der().unwrap().as_bytes());

        let key = p521::SecretKey::random(&mut rand::rngs::OsRng).public_key();
        let point = p521::EncodedPoint::from(key);
        let ours = ec_public_key(Curve::P521, point.x().unwrap(), point.y().unwrap());
        assert_eq!(ours, key.to_public_key_der().unwrap().as_bytes());
    }

    #[test]
    fn odd_or_empty_signatures_have_no_der_form() {
        assert_eq!(ecdsa_signature(&[]), None);
        assert_eq!(ecdsa_signature(&[1, 2, 3]), None);
    }

    #[test]
    fn zero_halves_become_integer_zero() {
        assert_eq!(
            ecdsa_signature(&[0; 64]).unwrap(),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
    }

    proptest! {
        #[test]
        fn ecdsa_signatures_match_rustcrypto(r in prop::array::uniform32(any::<u8>()),
                                             s in prop::array::uniform32(any::<u8>())) {
            let mut jws = r.to_vec();
            jws.extend_from_slice(&s);
            // RustCrypto only represents valid scalars (0 < r, s < n); compare on those.
            if let Ok(signature) = p256::ecdsa::Signature::from_slice(&jws) {
                let der = signature.to_der();
                prop_assert_eq!(ecdsa_signature(&jws).unwrap(), der.as_bytes());
            }
        }

        #[test]
        fn long_lengths_use_the_long_form(len in 0usize..70_000) {
            let mut out = Vec::new();
            tlv(&mut out, 0x04, &vec![7; len]);
            let header = out.len() - len;
            let expected = match len {
                0..=0x7f => 2,
                0x80..=0xff => 3,
                0x100..=0xffff => 4,
                _ => 5,
            };
            prop_assert_eq!(header, expected);
        }
    }
}
