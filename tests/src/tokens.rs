//! Keys generated at test time and real signed JWTs.
//!
//! Every algorithm the JWT filter must accept has a [`Key`] kind here: RS256 (RSA-2048),
//! ES256 (P-256), EdDSA (Ed25519) and HS256. A key signs compact JWS tokens and publishes
//! itself as a JWK, so tests can serve a JWKS, rotate keys, and forge tokens on purpose.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::{Value, json};

/// A signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 and a 256-bit secret.
    HS256,
}

impl Alg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }
}

enum Secret {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ec(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
    Hmac(Vec<u8>),
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
    /// Generates a key for `alg` named `kid`.
    pub fn generate(alg: Alg, kid: &str) -> Self {
        let secret = match alg {
            Alg::RS256 => Secret::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("generate an RSA key"),
            )),
            Alg::ES256 => Secret::Ec(p256::ecdsa::SigningKey::random(&mut OsRng)),
            Alg::EdDSA => Secret::Ed(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            Alg::HS256 => {
                let mut bytes = vec![0u8; 32];
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

    /// The raw JWS signature of `input`.
    pub fn signature(&self, input: &[u8]) -> Vec<u8> {
        use rsa::signature::{SignatureEncoding, Signer};
        match &self.secret {
            Secret::Rsa(key) => {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**key).clone());
                signer.sign(input).to_vec()
            }
            Secret::Ec(key) => {
                let signature: p256::ecdsa::Signature = key.sign(input);
                signature.to_bytes().to_vec()
            }
            Secret::Ed(key) => key.sign(input).to_bytes().to_vec(),
            Secret::Hmac(secret) => {
                use hmac::Mac;
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key size");
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }
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
        for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA, Alg::HS256] {
            let key = Key::generate(alg, "k1");
            let token = key.sign(&claims);
            let (header, got_claims, sig) = parts(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], "k1");
            assert_eq!(got_claims, claims);
            let input = token.rsplit_once('.').unwrap().0.as_bytes();
            match &key.secret {
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
