//! Keys generated at test time and real signed JWTs.
//!
//! Every algorithm the JWT filter must accept has a [`Key`] kind here: RS256/384/512 and
//! PS256/384/512 (RSA, 2048 bits unless asked otherwise), ES256 (P-256), ES384 (P-384), ES512
//! (P-521), EdDSA
//! (Ed25519) and HS256/384/512. A key signs compact JWS tokens and publishes itself as a JWK, so
//! tests can serve a JWKS, rotate keys, and forge tokens on purpose. Used by the JWT filter's
//! unit tests and by the Envoy integration harness. [`logs`] captures log lines for tests.

pub mod logs;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::{Value, json};

/// A signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256 (salt 32 bytes).
    PS256,
    /// RSASSA-PSS with SHA-384 (salt 48 bytes).
    PS384,
    /// RSASSA-PSS with SHA-512 (salt 64 bytes).
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// ECDSA on P-521 with SHA-512.
    ES512,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 and a 256-bit secret.
    HS256,
    /// HMAC with SHA-384 and a 384-bit secret.
    HS384,
    /// HMAC with SHA-512 and a 512-bit secret.
    HS512,
}

impl Alg {
    /// Every algorithm.
    pub const ALL: [Alg; 13] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    fn hmac_len(self) -> usize {
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }
}

enum Secret {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ec(p256::ecdsa::SigningKey),
    Ec384(p384::ecdsa::SigningKey),
    Ec521(p521::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
    Hmac(Vec<u8>),
}

/// RSA key generation is slow, so each process makes one key per size and hands out clones.
fn rsa_key(bits: usize) -> rsa::RsaPrivateKey {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KEYS: OnceLock<Mutex<HashMap<(usize, u32), rsa::RsaPrivateKey>>> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // A few distinct keys per size, so tests can tell keys apart (rotation, wrong key).
    let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 4;
    let keys = KEYS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut keys = keys.lock().unwrap_or_else(|e| e.into_inner());
    keys.entry((bits, slot))
        .or_insert_with(|| rsa::RsaPrivateKey::new(&mut OsRng, bits).expect("generate an RSA key"))
        .clone()
}

/// A freshly generated key with a `kid`.
pub struct Key {
    alg: Alg,
    kid: String,
    secret: Secret,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Base64url without padding, as JOSE uses it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Key {
    /// Generates a key for `alg` named `kid` (RSA keys: 2048 bits).
    pub fn generate(alg: Alg, kid: &str) -> Self {
        let secret = match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Secret::Rsa(Box::new(rsa_key(2048)))
            }
            Alg::ES256 => Secret::Ec(p256::ecdsa::SigningKey::random(&mut OsRng)),
            Alg::ES384 => Secret::Ec384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            Alg::ES512 => Secret::Ec521(p521::ecdsa::SigningKey::random(&mut OsRng)),
            Alg::EdDSA => Secret::Ed(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                let mut bytes = vec![0u8; alg.hmac_len()];
                OsRng.fill_bytes(&mut bytes);
                Secret::Hmac(bytes)
            }
        };
        Self {
            alg,
            kid: kid.to_owned(),
            secret,
        }
    }

    /// An RSA key of `bits` bits (to test that weak or huge keys are refused).
    pub fn rsa_with_bits(alg: Alg, kid: &str, bits: usize) -> Self {
        Self {
            alg,
            kid: kid.to_owned(),
            secret: Secret::Rsa(Box::new(rsa_key(bits))),
        }
    }

    /// An HMAC key with this exact secret (to test short secrets).
    pub fn hmac_with_secret(alg: Alg, kid: &str, secret: &[u8]) -> Self {
        Self {
            alg,
            kid: kid.to_owned(),
            secret: Secret::Hmac(secret.to_vec()),
        }
    }

    /// The same key material under another algorithm name (to forge algorithm confusion).
    pub fn as_alg(mut self, alg: Alg) -> Self {
        self.alg = alg;
        self
    }

    /// The raw HMAC secret, or for other keys the bytes an attacker would feed an HMAC in an
    /// algorithm-confusion attack (J2): the public JWK's JSON text.
    pub fn confusion_secret(&self) -> Vec<u8> {
        match &self.secret {
            Secret::Hmac(secret) => secret.clone(),
            _ => self.jwk().to_string().into_bytes(),
        }
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK: public parts only, except for HS256 whose JWK is the shared secret.
    pub fn jwk(&self) -> Value {
        let mut jwk = match &self.secret {
            Secret::Rsa(key) => {
                use rsa::traits::PublicKeyParts;
                json!({ "kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()) })
            }
            Secret::Ec(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64(point.x().expect("x coordinate")),
                    "y": b64(point.y().expect("y coordinate")),
                })
            }
            Secret::Ec384(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC", "crv": "P-384",
                    "x": b64(point.x().expect("x coordinate")),
                    "y": b64(point.y().expect("y coordinate")),
                })
            }
            Secret::Ec521(key) => {
                let point = p521::ecdsa::VerifyingKey::from(key).to_encoded_point(false);
                json!({
                    "kty": "EC", "crv": "P-521",
                    "x": b64(point.x().expect("x coordinate")),
                    "y": b64(point.y().expect("y coordinate")),
                })
            }
            Secret::Ed(key) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes()) })
            }
            Secret::Hmac(secret) => json!({ "kty": "oct", "k": b64(secret) }),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        jwk
    }

    /// Signs `claims` with the usual header: `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({ "alg": self.alg.name(), "typ": "JWT", "kid": self.kid }),
            claims,
        )
    }

    /// Signs `claims` under an arbitrary header (to forge `alg`, drop `kid`, and so on).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(&self.signature(input.as_bytes())))
    }

    /// The raw JWS signature of `input` under this key's algorithm.
    pub fn signature(&self, input: &[u8]) -> Vec<u8> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
        use sha2::{Sha256, Sha384, Sha512};
        fn hmac<D>(secret: &[u8], input: &[u8]) -> Vec<u8>
        where
            D: hmac::digest::Digest + hmac::digest::core_api::BlockSizeUser,
        {
            use hmac::Mac;
            let mut mac = <hmac::SimpleHmac<D> as hmac::digest::KeyInit>::new_from_slice(secret)
                .expect("any key size");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        match (&self.secret, self.alg) {
            (Secret::Rsa(key), alg) => {
                let key = (**key).clone();
                match alg {
                    Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(key)
                        .sign(input)
                        .to_vec(),
                    Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(key)
                        .sign(input)
                        .to_vec(),
                    Alg::PS256 => rsa::pss::SigningKey::<Sha256>::new(key)
                        .sign_with_rng(&mut OsRng, input)
                        .to_vec(),
                    Alg::PS384 => rsa::pss::SigningKey::<Sha384>::new(key)
                        .sign_with_rng(&mut OsRng, input)
                        .to_vec(),
                    Alg::PS512 => rsa::pss::SigningKey::<Sha512>::new(key)
                        .sign_with_rng(&mut OsRng, input)
                        .to_vec(),
                    _ => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                        .sign(input)
                        .to_vec(),
                }
            }
            (Secret::Ec(key), _) => {
                let signature: p256::ecdsa::Signature = key.sign(input);
                signature.to_bytes().to_vec()
            }
            (Secret::Ec384(key), _) => {
                let signature: p384::ecdsa::Signature = key.sign(input);
                signature.to_bytes().to_vec()
            }
            (Secret::Ec521(key), _) => {
                let signature: p521::ecdsa::Signature = key.sign(input);
                signature.to_bytes().to_vec()
            }
            (Secret::Ed(key), _) => key.sign(input).to_bytes().to_vec(),
            (Secret::Hmac(secret), Alg::HS384) => hmac::<Sha384>(secret, input),
            (Secret::Hmac(secret), Alg::HS512) => hmac::<Sha512>(secret, input),
            (Secret::Hmac(secret), _) => hmac::<Sha256>(secret, input),
        }
    }
}

/// A stand-in for the host's native `verify_signature` (Envoy's BoringSSL) in tests: RustCrypto
/// reading exactly what a filter hands the host, a DER `SubjectPublicKeyInfo` (RSA, P-256,
/// P-384 or P-521), a PKCS #1 v1.5 or DER ECDSA signature, and the digest's name. An ECDSA key
/// verifies only with its curve's own hash, as JWS uses them.
///
/// # Panics
/// On a key none of them reads: that is a bug in the filter's DER, which falling back to Wasm
/// would hide.
pub fn native_verify(digest: &str, spki: &[u8], signature: &[u8], message: &[u8]) -> bool {
    use p256::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use sha2::{Sha256, Sha384, Sha512};
    if let Some(key) = rsa_public_key(spki) {
        let Ok(signature) = rsa::pkcs1v15::Signature::try_from(signature) else {
            return false;
        };
        return match digest {
            "sha256" => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
                .verify(message, &signature)
                .is_ok(),
            "sha384" => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key)
                .verify(message, &signature)
                .is_ok(),
            "sha512" => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key)
                .verify(message, &signature)
                .is_ok(),
            other => panic!("digest {other:?} is not one a JWS algorithm uses"),
        };
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return digest == "sha256"
            && p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok());
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return digest == "sha384"
            && p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok());
    }
    if let Ok(key) = p521::PublicKey::from_public_key_der(spki) {
        let key = p521::ecdsa::VerifyingKey::from_affine(*key.as_affine())
            .expect("a decoded public key is not the identity");
        return digest == "sha512"
            && p521::ecdsa::Signature::from_der(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok());
    }
    panic!("the native verifier cannot read the key {spki:02x?}")
}

/// An RSA `SubjectPublicKeyInfo` up to 8192 bits, the filter's limit (`rsa`'s own DER reading
/// stops at 4096).
fn rsa_public_key(spki: &[u8]) -> Option<rsa::RsaPublicKey> {
    use rsa::pkcs1::der::Decode;
    let info = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(spki).ok()?;
    if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return None;
    }
    let key = rsa::pkcs1::RsaPublicKey::from_der(info.subject_public_key.as_bytes()?).ok()?;
    let n = rsa::BigUint::from_bytes_be(key.modulus.as_bytes());
    let e = rsa::BigUint::from_bytes_be(key.public_exponent.as_bytes());
    rsa::RsaPublicKey::new_with_max_size(n, e, 8192).ok()
}

/// The demo signing key of `envoy/gateway.yaml` and `envoy/jwt_auth.yaml` (EdDSA, kid `demo`).
///
/// Its public half is inlined in those examples, so anyone can mint tokens they accept: it
/// exists for `make run` and the tests, never for a real deployment.
pub fn demo_key() -> Key {
    const SEED: [u8; 32] = *b"proxy-wasm-filters demo key 0001";
    Key {
        alg: Alg::EdDSA,
        kid: "demo".to_owned(),
        secret: Secret::Ed(ed25519_dalek::SigningKey::from_bytes(&SEED)),
    }
}

/// The claims the demo provider accepts, valid for an hour from now.
pub fn demo_claims(sub: &str, scope: &str) -> Value {
    json!({
        "iss": "https://issuer.example", "aud": "api", "sub": sub, "scope": scope,
        "iat": now_secs(), "exp": now_secs() + 3600,
    })
}

/// A JWKS document holding these keys.
pub fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Seconds since the Unix epoch, for `iat`/`exp` claims.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(token: &str) -> (Value, Value, Vec<u8>) {
        let mut it = token.split('.');
        let dec = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let header = serde_json::from_slice(&dec(it.next().unwrap())).unwrap();
        let claims = serde_json::from_slice(&dec(it.next().unwrap())).unwrap();
        (header, claims, dec(it.next().unwrap()))
    }

    #[test]
    fn every_algorithm_signs_verifiable_tokens() {
        use rsa::signature::Verifier;
        let claims = json!({ "sub": "alice", "exp": now_secs() + 60 });
        for alg in [Alg::RS256, Alg::ES256, Alg::ES512, Alg::EdDSA, Alg::HS256] {
            let key = Key::generate(alg, "k1");
            let token = key.sign(&claims);
            let (header, got_claims, sig) = parts(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], "k1");
            assert_eq!(got_claims, claims);
            let input = token.rsplit_once('.').unwrap().0.as_bytes();
            match &key.secret {
                Secret::Ec384(_) => unreachable!("not in this test"),
                Secret::Ec521(k) => {
                    use p521::ecdsa::signature::Verifier as _;
                    assert_eq!(sig.len(), 132, "R and S, 66 bytes each");
                    let sig = p521::ecdsa::Signature::from_slice(&sig).unwrap();
                    p521::ecdsa::VerifyingKey::from(k)
                        .verify(input, &sig)
                        .unwrap();
                }
                Secret::Rsa(k) => {
                    let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k.to_public_key());
                    let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
                    vk.verify(input, &sig).unwrap();
                }
                Secret::Ec(k) => {
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    k.verifying_key().verify(input, &sig).unwrap();
                }
                Secret::Ed(k) => {
                    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
                    k.verifying_key().verify(input, &sig).unwrap();
                }
                Secret::Hmac(_) => assert_eq!(sig, key.signature(input)),
            }
            let jwk = key.jwk();
            assert_eq!(jwk["kid"], "k1");
            assert_eq!(jwk["alg"], alg.name());
        }
    }

    #[test]
    fn jwks_lists_every_key() {
        let a = Key::generate(Alg::EdDSA, "a");
        let b = Key::generate(Alg::HS256, "b");
        let doc: Value = serde_json::from_str(&jwks(&[&a, &b])).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
        assert_eq!(doc["keys"][1]["kty"], "oct");
    }
}
