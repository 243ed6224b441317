//! Signature verification: does this signature over this signing input hold for this key under
//! exactly this algorithm? Verify only, so no randomness and no clock; every malformed input is
//! a plain `false`, never a panic.
//!
//! The key type decides which algorithms it may be used with (`PublicKey::fits`), so an RSA
//! public key can never be fed to HMAC as a shared secret (the classic RS256→HS256 confusion).

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

use crate::alg::Alg;
use crate::der;
use crate::ecdsa::EcKey;
use crate::rsa_verify::{self, RsaKey};
use filter_core::signature::{Digest, NativeVerifier};

/// A verification key: an asymmetric public key, or an HMAC shared secret.
#[derive(Clone)]
pub enum PublicKey {
    /// RSA, for `RS*` and `PS*`.
    Rsa(RsaKey),
    /// ECDSA on P-256, P-384 or P-521, for `ES256`, `ES384` or `ES512` respectively.
    Ec(EcKey),
    /// Ed25519, for `EdDSA` only.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// An HMAC secret, for `HS*` when it is at least as long as the hash (RFC 7518 §3.2).
    Hmac(Vec<u8>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The modulus in decimal is a wall of digits that helps nobody reading a log.
            PublicKey::Rsa(key) => write!(f, "Rsa({} bits)", key.bits()),
            PublicKey::Ec(key) => key.fmt(f),
            PublicKey::Ed25519(key) => f.debug_tuple("Ed25519").field(key).finish(),
            // A secret must never reach a log: only its length.
            PublicKey::Hmac(secret) => write!(f, "Hmac(<{} bytes>)", secret.len()),
        }
    }
}

impl PublicKey {
    /// Whether this key may verify signatures of `alg`. A short HMAC secret fits nothing.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(_) => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            PublicKey::Ec(key) => alg == key.alg(),
            PublicKey::Ed25519(_) => alg == Alg::EdDSA,
            PublicKey::Hmac(secret) => alg.is_hmac() && secret.len() >= alg.hash_len(),
        }
    }
}

/// Whether `signature` is a valid `alg` signature of `signing_input` (the JWS
/// `header.payload` bytes) under `key`. False whenever the key does not fit `alg`.
///
/// RSA PKCS #1 v1.5 and ECDSA signatures go to the host's native verifier first (Envoy's
/// BoringSSL, several times faster than Wasm); when it cannot answer, they are checked here.
pub fn verify(
    alg: Alg,
    key: &PublicKey,
    signing_input: &[u8],
    signature: &[u8],
    native: &dyn NativeVerifier,
) -> bool {
    if !key.fits(alg) {
        return false;
    }
    match (alg, key) {
        (Alg::RS256 | Alg::RS384 | Alg::RS512, PublicKey::Rsa(key)) => native
            .verify(digest(alg), key.spki(), signature, signing_input)
            .unwrap_or_else(|| rsa_verify::verify_pkcs1(alg, key, signing_input, signature)),
        (Alg::PS256 | Alg::PS384 | Alg::PS512, PublicKey::Rsa(key)) => {
            rsa_verify::verify_pss(alg, key, signing_input, signature)
        }
        (Alg::ES256 | Alg::ES384 | Alg::ES512, PublicKey::Ec(key)) => {
            // JWS ECDSA signatures are the fixed-width `R‖S` (RFC 7518 §3.4): any other length
            // is refused before either verifier sees it. fits() made sure the curve is the
            // algorithm's, so the hash is too.
            if signature.len() != key.signature_len() {
                return false;
            }
            der::ecdsa_signature(signature)
                .and_then(|der| native.verify(digest(alg), key.spki(), &der, signing_input))
                .unwrap_or_else(|| key.verify(&rsa_verify::hash(alg, &[signing_input]), signature))
        }
        (Alg::EdDSA, PublicKey::Ed25519(key)) => eddsa(key, signing_input, signature),
        (Alg::HS256, PublicKey::Hmac(secret)) => {
            hmac_tag::<Hmac<Sha256>>(secret, signing_input, signature)
        }
        (Alg::HS384, PublicKey::Hmac(secret)) => {
            hmac_tag::<Hmac<Sha384>>(secret, signing_input, signature)
        }
        (Alg::HS512, PublicKey::Hmac(secret)) => {
            hmac_tag::<Hmac<Sha512>>(secret, signing_input, signature)
        }
        // fits() already refused every other pairing; staying false here keeps it that way
        // even if the two tables ever drift apart.
        _ => false,
    }
}

/// The digest an RSA or ECDSA algorithm signs.
fn digest(alg: Alg) -> Digest {
    match alg.hash_len() {
        48 => Digest::Sha384,
        64 => Digest::Sha512,
        _ => Digest::Sha256,
    }
}

/// `verify_strict` refuses non-canonical S and small-order keys or R, under which plain
/// Ed25519 verification would accept one signature for many messages.
fn eddsa(key: &ed25519_dalek::VerifyingKey, signing_input: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(signing_input, &signature).is_ok()
}

/// `verify_slice` compares in constant time and requires the full tag length, so a truncated
/// tag is not a shortcut.
fn hmac_tag<M>(secret: &[u8], signing_input: &[u8], signature: &[u8]) -> bool
where
    M: Mac + KeyInit,
{
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(signing_input);
    mac.verify_slice(signature).is_ok()
}

/// Keys generated once per test run and shared by the crypto and JWKS tests: RSA key
/// generation takes about a second each, unoptimised.
#[cfg(test)]
pub(crate) mod test_keys {
    use std::sync::OnceLock;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::rngs::OsRng;
    use rsa::RsaPrivateKey;

    /// A 2048-bit RSA key.
    pub(crate) fn rsa() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
    }

    /// Another 2048-bit RSA key, for "signed by someone else".
    pub(crate) fn rsa_other() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
    }

    /// The verifier's form of an `rsa` crate public key.
    pub(crate) fn fast(public: &rsa::RsaPublicKey) -> super::RsaKey {
        use rsa::traits::PublicKeyParts;
        super::RsaKey::from_be_bytes(&public.n().to_bytes_be(), &public.e().to_bytes_be()).unwrap()
    }

    /// The verifier's form of a `p256` crate public key.
    pub(crate) fn p256_public(key: &p256::ecdsa::VerifyingKey) -> super::PublicKey {
        let point = key.to_encoded_point(false);
        let key = crate::ecdsa::EcKey::p256(point.x().unwrap(), point.y().unwrap()).unwrap();
        super::PublicKey::Ec(key)
    }

    /// The verifier's form of a `p384` crate public key.
    pub(crate) fn p384_public(key: &p384::ecdsa::VerifyingKey) -> super::PublicKey {
        let point = key.to_encoded_point(false);
        let key = crate::ecdsa::EcKey::p384(point.x().unwrap(), point.y().unwrap()).unwrap();
        super::PublicKey::Ec(key)
    }

    /// The verifier's form of a `p521` crate public key.
    pub(crate) fn p521_public(key: &p521::ecdsa::VerifyingKey) -> super::PublicKey {
        let point = key.to_encoded_point(false);
        let key = crate::ecdsa::EcKey::p521(point.x().unwrap(), point.y().unwrap()).unwrap();
        super::PublicKey::Ec(key)
    }

    /// base64url without padding, as JOSE writes binary values.
    pub(crate) fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys;
    use super::*;
    use filter_core::signature::NoNativeVerifier;

    use rand::rngs::OsRng;
    use rsa::signature::Verifier as _;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;

    const INPUT: &[u8] = b"eyJhbGciOiJYWCJ9.eyJzdWIiOiJ0ZXN0In0";

    /// Every check below runs twice: verified here, and handed as DER to a stand-in for the
    /// host's native verifier (RustCrypto reading the DER, as BoringSSL does in Envoy). Both
    /// must agree, which tests the DER forms as hard as the verifier.
    fn verify(alg: Alg, key: &PublicKey, input: &[u8], signature: &[u8]) -> bool {
        let here = super::verify(alg, key, input, signature, &NoNativeVerifier);
        let native = super::verify(alg, key, input, signature, &DerVerifier);
        assert_eq!(here, native, "{alg}: Wasm and native verifiers disagree");
        here
    }

    /// A native verifier that takes exactly what Envoy's `verify_signature` takes.
    struct DerVerifier;

    impl NativeVerifier for DerVerifier {
        fn verify(&self, digest: Digest, spki: &[u8], sig: &[u8], message: &[u8]) -> Option<bool> {
            Some(testkit::native_verify(digest.name(), spki, sig, message))
        }
    }

    #[test]
    fn a_host_that_cannot_answer_leaves_the_check_to_wasm() {
        let key = PublicKey::Rsa(test_keys::fast(&test_keys::rsa().to_public_key()));
        let signature = rsa::pkcs1v15::SigningKey::<Sha256>::new(test_keys::rsa().clone())
            .sign(INPUT)
            .to_vec();
        let none = &NoNativeVerifier;
        assert!(super::verify(Alg::RS256, &key, INPUT, &signature, none));
        assert!(!super::verify(Alg::RS256, &key, b"other", &signature, none));
    }

    #[test]
    fn the_host_answer_is_final() {
        struct Says(bool);
        impl NativeVerifier for Says {
            fn verify(&self, _: Digest, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
                Some(self.0)
            }
        }
        let key = PublicKey::Rsa(test_keys::fast(&test_keys::rsa().to_public_key()));
        assert!(super::verify(Alg::RS256, &key, INPUT, b"x", &Says(true)));
        // Not asked for algorithms it does not serve.
        let secret = PublicKey::Hmac(vec![1; 32]);
        assert!(!super::verify(
            Alg::HS256,
            &secret,
            INPUT,
            b"x",
            &Says(true)
        ));
        // A short ECDSA signature is refused before the host sees it.
        let ec = p256::SecretKey::random(&mut OsRng).public_key();
        let point = p256::EncodedPoint::from(ec);
        let ec = PublicKey::Ec(EcKey::p256(point.x().unwrap(), point.y().unwrap()).unwrap());
        assert!(!super::verify(
            Alg::ES256,
            &ec,
            INPUT,
            &[1; 63],
            &Says(true)
        ));
        assert!(super::verify(Alg::ES256, &ec, INPUT, &[1; 64], &Says(true)));
    }

    fn flip_bit(bytes: &[u8], index: usize, bit: u8) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[index] ^= 1 << bit;
        out
    }

    /// `signature` verifies as `alg` under `key`, and nothing near it does.
    fn assert_only_this_verifies(alg: Alg, key: &PublicKey, signature: &[u8]) {
        assert!(verify(alg, key, INPUT, signature), "{alg} must verify");
        let last = signature.len() - 1;
        for (index, bit) in [(0, 0), (0, 7), (last / 2, 3), (last, 0), (last, 7)] {
            let bad = flip_bit(signature, index, bit);
            assert!(
                !verify(alg, key, INPUT, &bad),
                "{alg}: sig bit {index}/{bit}"
            );
        }
        for (index, bit) in [(0, 0), (INPUT.len() - 1, 1)] {
            let bad = flip_bit(INPUT, index, bit);
            assert!(
                !verify(alg, key, &bad, signature),
                "{alg}: input bit {index}"
            );
        }
        assert!(!verify(alg, key, b"", signature), "{alg}: empty input");
        assert!(
            !verify(alg, key, INPUT, &signature[..last]),
            "{alg}: truncated"
        );
        let mut longer = signature.to_vec();
        longer.push(0);
        assert!(!verify(alg, key, INPUT, &longer), "{alg}: extended");
        let mut zero_prefixed = vec![0];
        zero_prefixed.extend_from_slice(signature);
        assert!(
            !verify(alg, key, INPUT, &zero_prefixed),
            "{alg}: 0-prefixed"
        );
        assert!(!verify(alg, key, INPUT, b""), "{alg}: empty signature");
        for other in Alg::ALL.into_iter().filter(|other| *other != alg) {
            assert!(
                !verify(other, key, INPUT, signature),
                "{alg} signature must not verify as {other}"
            );
        }
    }

    fn rsa_public() -> PublicKey {
        PublicKey::Rsa(test_keys::fast(&test_keys::rsa().to_public_key()))
    }

    fn pkcs1_sign(alg: Alg, input: &[u8]) -> Vec<u8> {
        let key = test_keys::rsa().clone();
        match alg {
            Alg::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                .sign(input)
                .to_vec(),
            Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(key)
                .sign(input)
                .to_vec(),
            Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(key)
                .sign(input)
                .to_vec(),
            _ => panic!("not PKCS#1 v1.5: {alg}"),
        }
    }

    fn pss_sign(alg: Alg, salt_len: usize, input: &[u8]) -> Vec<u8> {
        let key = test_keys::rsa().clone();
        match alg {
            Alg::PS256 => rsa::pss::SigningKey::<Sha256>::new_with_salt_len(key, salt_len)
                .sign_with_rng(&mut OsRng, input)
                .to_vec(),
            Alg::PS384 => rsa::pss::SigningKey::<Sha384>::new_with_salt_len(key, salt_len)
                .sign_with_rng(&mut OsRng, input)
                .to_vec(),
            Alg::PS512 => rsa::pss::SigningKey::<Sha512>::new_with_salt_len(key, salt_len)
                .sign_with_rng(&mut OsRng, input)
                .to_vec(),
            _ => panic!("not PSS: {alg}"),
        }
    }

    fn hmac_sign(alg: Alg, secret: &[u8], input: &[u8]) -> Vec<u8> {
        fn tag<M: Mac + KeyInit>(secret: &[u8], input: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        match alg {
            Alg::HS256 => tag::<Hmac<Sha256>>(secret, input),
            Alg::HS384 => tag::<Hmac<Sha384>>(secret, input),
            Alg::HS512 => tag::<Hmac<Sha512>>(secret, input),
            _ => panic!("not HMAC: {alg}"),
        }
    }

    #[test]
    fn rsa_pkcs1_v1_5_signatures_verify_and_tampering_does_not() {
        let key = rsa_public();
        for alg in [Alg::RS256, Alg::RS384, Alg::RS512] {
            assert_only_this_verifies(alg, &key, &pkcs1_sign(alg, INPUT));
        }
    }

    #[test]
    fn rsa_signature_from_another_key_is_refused() {
        let other = PublicKey::Rsa(test_keys::fast(&test_keys::rsa_other().to_public_key()));
        assert!(!verify(
            Alg::RS256,
            &other,
            INPUT,
            &pkcs1_sign(Alg::RS256, INPUT)
        ));
        assert!(!verify(
            Alg::PS256,
            &other,
            INPUT,
            &pss_sign(Alg::PS256, 32, INPUT)
        ));
    }

    #[test]
    fn rsa_signature_at_or_above_the_modulus_is_refused() {
        let public = test_keys::rsa().to_public_key();
        let modulus = public.n().to_bytes_be();
        let key = PublicKey::Rsa(test_keys::fast(&public));
        assert!(!verify(Alg::RS256, &key, INPUT, &modulus));
        assert!(!verify(Alg::PS256, &key, INPUT, &modulus));
        let all_ones = vec![0xff; modulus.len()];
        assert!(!verify(Alg::RS256, &key, INPUT, &all_ones));
    }

    #[test]
    fn rsa_pss_signatures_verify_and_tampering_does_not() {
        let key = rsa_public();
        for alg in [Alg::PS256, Alg::PS384, Alg::PS512] {
            assert_only_this_verifies(alg, &key, &pss_sign(alg, alg.hash_len(), INPUT));
        }
    }

    #[test]
    fn rsa_pss_salt_length_must_equal_the_hash_length() {
        let public = test_keys::rsa().to_public_key();
        let key = PublicKey::Rsa(test_keys::fast(&public));
        for salt_len in [0, 20, 31, 33, 64] {
            let signature = pss_sign(Alg::PS256, salt_len, INPUT);
            // The signature is genuine for its own salt length: only the length is wrong.
            let lenient =
                rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public.clone(), salt_len);
            let parsed = rsa::pss::Signature::try_from(signature.as_slice()).unwrap();
            assert!(lenient.verify(INPUT, &parsed).is_ok(), "salt {salt_len}");
            assert!(
                !verify(Alg::PS256, &key, INPUT, &signature),
                "salt {salt_len}"
            );
        }
        let signature = pss_sign(Alg::PS512, 32, INPUT);
        assert!(!verify(Alg::PS512, &key, INPUT, &signature));
    }

    #[test]
    fn pkcs1_and_pss_signatures_are_not_interchangeable() {
        let key = rsa_public();
        assert!(!verify(
            Alg::PS256,
            &key,
            INPUT,
            &pkcs1_sign(Alg::RS256, INPUT)
        ));
        assert!(!verify(
            Alg::RS256,
            &key,
            INPUT,
            &pss_sign(Alg::PS256, 32, INPUT)
        ));
    }

    #[test]
    fn es256_signatures_verify_and_tampering_does_not() {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = test_keys::p256_public(signing.verifying_key());
        let signature: p256::ecdsa::Signature = signing.sign(INPUT);
        let raw = signature.to_bytes().to_vec();
        assert_eq!(raw.len(), 64);
        assert_only_this_verifies(Alg::ES256, &key, &raw);

        // DER is how OpenSSL writes ECDSA signatures; JWS never does.
        let der = signature.to_der().to_bytes().to_vec();
        assert!(!verify(Alg::ES256, &key, INPUT, &der));
        assert!(!verify(Alg::ES256, &key, INPUT, &raw[..63]));
        let mut long = raw.clone();
        long.push(0);
        assert!(!verify(Alg::ES256, &key, INPUT, &long));
    }

    #[test]
    fn es384_signatures_verify_and_tampering_does_not() {
        let signing = p384::ecdsa::SigningKey::random(&mut OsRng);
        let key = test_keys::p384_public(signing.verifying_key());
        let signature: p384::ecdsa::Signature = signing.sign(INPUT);
        let raw = signature.to_bytes().to_vec();
        assert_eq!(raw.len(), 96);
        assert_only_this_verifies(Alg::ES384, &key, &raw);
        let der = signature.to_der().to_bytes().to_vec();
        assert!(!verify(Alg::ES384, &key, INPUT, &der));
        assert!(!verify(Alg::ES384, &key, INPUT, &raw[..95]));
        // A P-256-sized signature is not an ES384 signature.
        assert!(!verify(Alg::ES384, &key, INPUT, &raw[..64]));
    }

    #[test]
    fn es512_signatures_verify_and_tampering_does_not() {
        let signing = p521::ecdsa::SigningKey::random(&mut OsRng);
        let key = test_keys::p521_public(&p521::ecdsa::VerifyingKey::from(&signing));
        let signature: p521::ecdsa::Signature = signing.sign(INPUT);
        let raw = signature.to_bytes().to_vec();
        assert_eq!(raw.len(), 132);
        assert_only_this_verifies(Alg::ES512, &key, &raw);
        let der = signature.to_der().to_bytes().to_vec();
        assert!(!verify(Alg::ES512, &key, INPUT, &der));
        // 2 x 64 bytes (the hash length) is not 2 x 66.
        assert!(!verify(Alg::ES512, &key, INPUT, &raw[..128]));
        assert!(!verify(Alg::ES512, &key, INPUT, &[0; 132]));
        assert!(!verify(Alg::ES512, &key, INPUT, &[0xff; 132]));
        let other = test_keys::p521_public(&p521::ecdsa::VerifyingKey::from(
            &p521::ecdsa::SigningKey::random(&mut OsRng),
        ));
        assert!(!verify(Alg::ES512, &other, INPUT, &raw));
    }

    #[test]
    fn ecdsa_zero_and_out_of_range_scalars_are_refused() {
        // CVE-2022-21449: r = s = 0 passed Java's check for every message and key.
        let p256_key =
            test_keys::p256_public(p256::ecdsa::SigningKey::random(&mut OsRng).verifying_key());
        let p384_key =
            test_keys::p384_public(p384::ecdsa::SigningKey::random(&mut OsRng).verifying_key());
        assert!(!verify(Alg::ES256, &p256_key, INPUT, &[0; 64]));
        assert!(!verify(Alg::ES384, &p384_key, INPUT, &[0; 96]));
        assert!(!verify(Alg::ES256, &p256_key, INPUT, &[0xff; 64]));
        assert!(!verify(Alg::ES384, &p384_key, INPUT, &[0xff; 96]));

        // r = s = n, the group order: zero modulo n, in another spelling.
        let n256: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let order_sig = [n256, n256].concat();
        assert!(!verify(Alg::ES256, &p256_key, INPUT, &order_sig));

        // One scalar valid, the other zero.
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key = test_keys::p256_public(signing.verifying_key());
        let signature: p256::ecdsa::Signature = signing.sign(INPUT);
        let mut zero_s = signature.to_bytes().to_vec();
        zero_s[32..].fill(0);
        assert!(!verify(Alg::ES256, &key, INPUT, &zero_s));
        let mut zero_r = signature.to_bytes().to_vec();
        zero_r[..32].fill(0);
        assert!(!verify(Alg::ES256, &key, INPUT, &zero_r));
    }

    #[test]
    fn ecdsa_signature_from_another_key_is_refused() {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let other =
            test_keys::p256_public(p256::ecdsa::SigningKey::random(&mut OsRng).verifying_key());
        let signature: p256::ecdsa::Signature = signing.sign(INPUT);
        assert!(!verify(Alg::ES256, &other, INPUT, &signature.to_bytes()));
    }

    #[test]
    fn eddsa_signatures_verify_and_tampering_does_not() {
        use ed25519_dalek::Signer as _;
        let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = PublicKey::Ed25519(signing.verifying_key());
        let signature = signing.sign(INPUT).to_bytes();
        assert_only_this_verifies(Alg::EdDSA, &key, &signature);

        let other =
            PublicKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key());
        assert!(!verify(Alg::EdDSA, &other, INPUT, &signature));
    }

    #[test]
    fn eddsa_non_canonical_s_is_refused() {
        use ed25519_dalek::Signer as _;
        // The group order L, little-endian: S + L verifies under lax implementations.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x10,
        ];
        let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let key = PublicKey::Ed25519(signing.verifying_key());
        let mut signature = signing.sign(INPUT).to_bytes();
        let mut carry = 0u16;
        for (s, l) in signature[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        assert!(!verify(Alg::EdDSA, &key, INPUT, &signature));
    }

    #[test]
    fn eddsa_small_order_key_is_refused_even_where_lax_verification_accepts() {
        // The identity point as key, R = identity and S = 0: the equation holds for every
        // message, which plain `verify` accepts and `verify_strict` must not.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let signature = ed25519_dalek::Signature::from_bytes(&forged);
        assert!(
            weak.verify(INPUT, &signature).is_ok(),
            "the forgery works when lax"
        );
        assert!(!verify(
            Alg::EdDSA,
            &PublicKey::Ed25519(weak),
            INPUT,
            &forged
        ));
        assert!(!verify(
            Alg::EdDSA,
            &PublicKey::Ed25519(weak),
            b"anything",
            &forged
        ));
    }

    #[test]
    fn hmac_tags_verify_and_tampering_does_not() {
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            let secret: Vec<u8> = (0..alg.hash_len()).map(|i| i as u8 ^ 0x5a).collect();
            let key = PublicKey::Hmac(secret.clone());
            assert_only_this_verifies(alg, &key, &hmac_sign(alg, &secret, INPUT));
            let other = PublicKey::Hmac(secret.iter().map(|b| b ^ 1).collect());
            assert!(!verify(alg, &other, INPUT, &hmac_sign(alg, &secret, INPUT)));
        }
    }

    #[test]
    fn hmac_secret_shorter_than_the_hash_never_verifies() {
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            let secret = vec![7u8; alg.hash_len() - 1];
            let key = PublicKey::Hmac(secret.clone());
            assert!(!key.fits(alg));
            // A correctly computed tag, refused for the key alone.
            assert!(!verify(alg, &key, INPUT, &hmac_sign(alg, &secret, INPUT)));
        }
        let empty = PublicKey::Hmac(Vec::new());
        assert!(Alg::ALL.into_iter().all(|alg| !empty.fits(alg)));

        // 32 bytes are enough for HS256 but not HS384/HS512.
        let key = PublicKey::Hmac(vec![1; 32]);
        assert!(key.fits(Alg::HS256));
        assert!(!key.fits(Alg::HS384));
        assert!(!key.fits(Alg::HS512));
    }

    #[test]
    fn hmac_truncated_tag_is_refused() {
        let secret = vec![3u8; 32];
        let key = PublicKey::Hmac(secret.clone());
        let tag = hmac_sign(Alg::HS256, &secret, INPUT);
        for len in [0, 1, 16, 31] {
            assert!(!verify(Alg::HS256, &key, INPUT, &tag[..len]), "{len} bytes");
        }
    }

    #[test]
    fn each_key_type_fits_only_its_algorithms() {
        let rsa = rsa_public();
        let p256 =
            test_keys::p256_public(p256::ecdsa::SigningKey::random(&mut OsRng).verifying_key());
        let p384 =
            test_keys::p384_public(p384::ecdsa::SigningKey::random(&mut OsRng).verifying_key());
        let p521 = test_keys::p521_public(&p521::ecdsa::VerifyingKey::from(
            &p521::ecdsa::SigningKey::random(&mut OsRng),
        ));
        let ed =
            PublicKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key());
        let hmac = PublicKey::Hmac(vec![0; 64]);
        for alg in Alg::ALL {
            let name = alg.name();
            assert_eq!(
                rsa.fits(alg),
                name.starts_with("RS") || name.starts_with("PS"),
                "{alg}"
            );
            assert_eq!(p256.fits(alg), alg == Alg::ES256, "{alg}");
            assert_eq!(p384.fits(alg), alg == Alg::ES384, "{alg}");
            assert_eq!(p521.fits(alg), alg == Alg::ES512, "{alg}");
            assert_eq!(ed.fits(alg), alg == Alg::EdDSA, "{alg}");
            assert_eq!(hmac.fits(alg), alg.is_hmac(), "{alg}");
        }
    }

    #[test]
    fn rsa_public_key_is_never_an_hmac_secret() {
        // J2: an HS256 "signature" keyed with the RSA public key's bytes, as an attacker who
        // downloaded the JWKS could compute, must not verify against the RSA key.
        let public = test_keys::rsa().to_public_key();
        let key = PublicKey::Rsa(test_keys::fast(&public));
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            assert!(!key.fits(alg));
            let forged = hmac_sign(alg, &public.n().to_bytes_be(), INPUT);
            assert!(!verify(alg, &key, INPUT, &forged));
        }
    }

    #[test]
    fn debug_never_shows_an_hmac_secret() {
        let shown = format!("{:?}", PublicKey::Hmac(vec![0xab; 40]));
        assert_eq!(shown, "Hmac(<40 bytes>)");
        assert!(!shown.contains("171"));
        assert_eq!(format!("{:?}", rsa_public()), "Rsa(2048 bits)");
    }
}
