//! JSON Web Key Sets (RFC 7517): turn a provider's published key document into verification
//! keys, and pick the keys a token may be checked against.
//!
//! The document as a whole must be sane (size, JSON, a bounded `keys` array) or it is an error.
//! A single key that is unknown, malformed, weak or private is skipped with a reason, not fatal
//! (RFC 7517 §5): providers publish encryption keys and new key types next to the ones we use,
//! and one odd key must not take every token of that issuer down.

use std::fmt;

use crate::json::{self, Json, Limits, Object};
use filter_core::config::quoted;

use crate::alg::Alg;
use crate::crypto::PublicKey;
use crate::ecdsa::EcKey;
use crate::rsa_verify::RsaKey;

/// The largest JWKS document accepted, in bytes. Real sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most entries a `keys` array may hold.
pub const MAX_KEYS: usize = 100;
/// RSA moduli below this are factorable in practice (J23).
pub const MIN_RSA_BITS: usize = 2048;
/// RSA moduli above this make every verification a CPU cost an attacker chooses (J24).
pub const MAX_RSA_BITS: usize = 8192;

/// Members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Larger than [`MAX_JWKS_BYTES`].
    TooLarge,
    /// Not valid JSON.
    NotJson,
    /// Not an object with a `keys` array.
    NoKeysArray,
    /// More than [`MAX_KEYS`] entries in `keys`.
    TooManyKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge => write!(f, "JWKS is larger than {MAX_JWKS_BYTES} bytes"),
            JwksError::NotJson => f.write_str("JWKS is not valid JSON"),
            JwksError::NoKeysArray => {
                f.write_str("JWKS is not a JSON object with a \"keys\" array")
            }
            JwksError::TooManyKeys => write!(f, "JWKS has more than {MAX_KEYS} keys"),
        }
    }
}

impl std::error::Error for JwksError {}

/// A usable verification key from a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// `kid`, matched exactly against a token's `kid`.
    pub kid: Option<String>,
    /// `alg`: when present, the key verifies this algorithm only.
    pub alg: Option<Alg>,
    /// The key itself.
    pub key: PublicKey,
}

/// A JWKS entry that was skipped, and why (for the operator's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// Position in the `keys` array.
    pub index: usize,
    /// The entry's `kid`, when it is a string.
    pub kid: Option<String>,
    /// What was wrong with it.
    pub reason: String,
    /// Whether it was an HMAC secret (`kty: oct`): a bad one in configuration is an error
    /// rather than a key to skip, since a weak shared secret can be brute-forced (J9).
    pub is_secret: bool,
}

/// The keys of one JWKS document, in document order.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Keys that can verify something.
    pub keys: Vec<Jwk>,
    /// Entries skipped, with reasons.
    pub ignored: Vec<IgnoredKey>,
}

impl KeySet {
    /// The keys a token signed with `alg` (and carrying `kid`, if any) may be verified with,
    /// in document order. A token `kid` only ever matches a key with that exact `kid`.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |jwk| {
            jwk.key.fits(alg)
                && jwk.alg.is_none_or(|bound| bound == alg)
                && kid.is_none_or(|kid| jwk.kid.as_deref() == Some(kid))
        })
    }
}

/// Parses a JWKS document. Errors concern the document; bad individual keys land in
/// [`KeySet::ignored`]. `oct` (HMAC) keys are returned like any other: whether a shared secret
/// is acceptable from this source is the caller's decision.
pub fn parse_jwks(doc: &[u8]) -> Result<KeySet, JwksError> {
    if doc.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let value = json::parse(doc, Limits::JWKS).map_err(|_| JwksError::NotJson)?;
    let entries = value
        .as_object()
        .and_then(|doc| doc.get("keys"))
        .and_then(Json::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    if entries.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let mut set = KeySet::default();
    for (index, entry) in entries.iter().enumerate() {
        match parse_jwk(entry) {
            Ok(jwk) => set.keys.push(jwk),
            Err(reason) => set.ignored.push(IgnoredKey {
                index,
                kid: member(entry, "kid")
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                reason,
                is_secret: member(entry, "kty").and_then(Json::as_str) == Some("oct"),
            }),
        }
    }
    Ok(set)
}

/// The member `name` of `entry`, if it is an object that has one.
fn member<'a>(entry: &'a Json, name: &str) -> Option<&'a Json> {
    entry.as_object().and_then(|obj| obj.get(name))
}

/// One JWKS entry, or the reason it is skipped.
fn parse_jwk(entry: &Json) -> Result<Jwk, String> {
    let Some(obj) = entry.as_object() else {
        return Err("not a JSON object".to_owned());
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(Json::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("\"kid\" is not a string".to_owned()),
    };
    let kty = match obj.get("kty") {
        None => return Err("\"kty\" is missing".to_owned()),
        Some(Json::String(kty)) => kty.as_str(),
        Some(_) => return Err("\"kty\" is not a string".to_owned()),
    };
    if let Some(key_use) = obj.get("use")
        && key_use.as_str() != Some("sig")
    {
        return Err(format!("\"use\" is {}, not \"sig\"", short(key_use)));
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("\"key_ops\" does not include \"verify\"".to_owned());
        }
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Json::String(name)) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            None => return Err(format!("unsupported \"alg\" {}", short_str(name))),
        },
        Some(_) => return Err("\"alg\" is not a string".to_owned()),
    };
    if kty != "oct"
        && let Some(member) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(m))
    {
        // A provider that publishes its private key has a compromised key: never trust it.
        return Err(format!("private key member \"{member}\" in a public key"));
    }
    let key = match kty {
        "RSA" => rsa_key(obj)?,
        "EC" => ec_key(obj)?,
        "OKP" => okp_key(obj)?,
        "oct" => oct_key(obj)?,
        other => return Err(format!("unsupported \"kty\" {}", short_str(other))),
    };
    if let Some(alg) = alg
        && !key.fits(alg)
    {
        return Err(format!("\"alg\" {alg} does not fit this {kty} key"));
    }
    Ok(Jwk { kid, alg, key })
}

fn rsa_key(obj: &Object) -> Result<PublicKey, String> {
    let n = b64_member(obj, "n")?;
    let e = b64_member(obj, "e")?;
    // An even modulus or exponent is not an RSA key; the last byte carries the parity.
    if n.last().is_none_or(|byte| byte & 1 == 0) {
        return Err("RSA modulus is even".to_owned());
    }
    if e.last().is_none_or(|byte| byte & 1 == 0) {
        return Err("RSA exponent is even".to_owned());
    }
    // The size is checked before any arithmetic: a huge modulus is a CPU cost an attacker
    // would choose (J24), and setting a key up does work proportional to its size squared.
    let significant = n.iter().position(|b| *b != 0).map_or(0, |i| n.len() - i);
    let top = n.get(n.len() - significant).copied().unwrap_or(0);
    let bits = significant.saturating_sub(1) * 8 + (8 - top.leading_zeros() as usize);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "RSA modulus is {bits} bits, outside {MIN_RSA_BITS}..={MAX_RSA_BITS}"
        ));
    }
    if e.iter().rev().skip(1).all(|b| *b == 0) && e.last().is_some_and(|b| *b < 3) {
        return Err("RSA exponent is below 3".to_owned());
    }
    RsaKey::from_be_bytes(&n, &e)
        .map(PublicKey::Rsa)
        .ok_or_else(|| {
            "invalid RSA key (exponent wider than 32 bits, or not below the modulus)".to_owned()
        })
}

fn ec_key(obj: &Object) -> Result<PublicKey, String> {
    let crv = str_member(obj, "crv")?;
    let x = b64_member(obj, "x")?;
    let y = b64_member(obj, "y")?;
    let coordinate_len = match crv {
        "P-256" => 32,
        "P-384" => 48,
        "P-521" => 66,
        other => return Err(format!("unsupported EC \"crv\" {}", short_str(other))),
    };
    // RFC 7518 §6.2.1.2: coordinates are full-length, leading zeros included.
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(format!(
            "{crv} coordinates must be {coordinate_len} bytes (x {}, y {})",
            x.len(),
            y.len()
        ));
    }
    // The point must be on the curve with coordinates below the prime (an off-curve point
    // leaks the verifier's secrets in ECDH, and is never a real key here).
    let key = match coordinate_len {
        32 => EcKey::p256(&x, &y),
        48 => EcKey::p384(&x, &y),
        _ => EcKey::p521(&x, &y),
    };
    key.map(PublicKey::Ec)
        .ok_or_else(|| format!("point is not on {crv}"))
}

fn okp_key(obj: &Object) -> Result<PublicKey, String> {
    let crv = str_member(obj, "crv")?;
    if crv != "Ed25519" {
        return Err(format!("unsupported OKP \"crv\" {}", short_str(crv)));
    }
    let x = b64_member(obj, "x")?;
    let Ok(bytes) = <[u8; 32]>::try_from(x.as_slice()) else {
        return Err(format!("Ed25519 \"x\" must be 32 bytes, not {}", x.len()));
    };
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "\"x\" is not an Ed25519 point".to_owned())?;
    // A small-order key admits signatures that verify for many messages.
    if key.is_weak() {
        return Err("weak (small-order) Ed25519 key".to_owned());
    }
    Ok(PublicKey::Ed25519(key))
}

fn oct_key(obj: &Object) -> Result<PublicKey, String> {
    let k = b64_member(obj, "k")?;
    if k.is_empty() {
        return Err("\"k\" is empty".to_owned());
    }
    // Shorter than the smallest HMAC hash it could never verify anything (RFC 7518 §3.2);
    // saying so here beats a silent "no matching key" later.
    if k.len() < Alg::HS256.hash_len() {
        return Err(format!(
            "HMAC secret is {} bytes, below the {} bytes HS256 needs",
            k.len(),
            Alg::HS256.hash_len()
        ));
    }
    Ok(PublicKey::Hmac(k))
}

fn str_member<'a>(obj: &'a Object, name: &str) -> Result<&'a str, String> {
    match obj.get(name) {
        None => Err(format!("\"{name}\" is missing")),
        Some(Json::String(value)) => Ok(value),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

/// A base64url member, strictly: no padding, no standard-alphabet characters, no stray bits.
fn b64_member(obj: &Object, name: &str) -> Result<Vec<u8>, String> {
    crate::base64url::decode(str_member(obj, name)?)
        .ok_or_else(|| format!("\"{name}\" is not unpadded base64url"))
}

/// A JSON value for a log line, cut short: the reason must not carry a 200 KiB string.
fn short(value: &Json) -> String {
    match value {
        Json::String(text) => short_str(text),
        Json::Array(_) => "an array".to_owned(),
        Json::Object(_) => "an object".to_owned(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        Json::Null => "null".to_owned(),
    }
}

fn short_str(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    quoted(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_keys;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn verify(alg: Alg, key: &PublicKey, input: &[u8], signature: &[u8]) -> bool {
        crate::crypto::verify(
            alg,
            key,
            input,
            signature,
            &filter_core::signature::NoNativeVerifier,
        )
    }

    use rand::rngs::OsRng;
    use rsa::RsaPrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;
    use serde_json::{Value, json};
    use sha2::Sha256;

    use test_keys::b64;

    const ENVOY_KID: &str = "62a93512c9ee4c7f8067b5a216dade2763d32a47";
    const ENVOY_JWK: &str = r#"{"kty":"RSA","alg":"RS256","use":"sig","kid":"62a93512c9ee4c7f8067b5a216dade2763d32a47","n":"up97uqrF9MWOPaPkwSaBeuAPLOr9FKcaWGdVEGzQ4f3Zq5WKVZowx9TCBxmImNJ1qmUi13pB8otwM_l5lfY1AFBMxVbQCUXntLovhDaiSvYp4wGDjFzQiYA-pUq8h6MUZBnhleYrkU7XlCBwNVyN8qNMkpLA7KFZYz-486GnV2NIJJx_4BGa3HdKwQGxi2tjuQsQvao5W4xmSVaaEWopBwMy2QmlhSFQuPUpTaywTqUcUq_6SfAHhZ4IDa_FxEd2c2z8gFGtfst9cY3lRYf-c_ZdboY3mqN9Su3-j3z5r2SHWlhB_LNAjyWlBGsvbGPlTqDziYQwZN4aGsqVKQb9Vw","e":"AQAB"}"#;
    /// Envoy's `GoodToken` (test/extensions/filters/http/jwt_authn/test_common.h), signed by
    /// the private half of `ENVOY_JWK`: a signature we did not make ourselves.
    const ENVOY_GOOD_TOKEN: &str = concat!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUu",
        "Y29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MjAwMTAwMTAwMSwiY",
        "XVkIjoiZXhhbXBsZV9zZXJ2aWNlIn0.cuui_Syud76B0tqvjESE8IZbX7vzG6xA-M",
        "Daof1qEFNIoCFT_YQPkseLSUSR2Od3TJcNKk-dKjvUEL1JW3kGnyC1dBx4f3-Xxro",
        "yL23UbR2eS8TuxO9ZcNCGkjfvH5O4mDb6cVkFHRDEolGhA7XwNiuVgkGJ5Wkrvshi",
        "h6nqKXcPNaRx9lOaRWg2PkE6ySNoyju7rNfunXYtVxPuUIkl0KMq3WXWRb_cb8a_Z",
        "EprqSZUzi_ZzzYzqBNVhIJujcNWij7JRra2sXXiSAfKjtxHQoxrX8n4V1ySWJ3_1T",
        "H_cJcdfS_RKP7YgXRWC0L16PNF5K7iqRqmjKALNe83ZFnFIw",
    );

    // ---- JWK builders from generated keys ----

    fn rsa_jwk(key: &RsaPrivateKey) -> Value {
        let public = key.to_public_key();
        json!({
            "kty": "RSA",
            "n": b64(&public.n().to_bytes_be()),
            "e": b64(&public.e().to_bytes_be()),
        })
    }

    fn p256_pair() -> (p256::ecdsa::SigningKey, Value) {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(point.x().unwrap()),
            "y": b64(point.y().unwrap()),
        });
        (signing, jwk)
    }

    fn p384_pair() -> (p384::ecdsa::SigningKey, Value) {
        let signing = p384::ecdsa::SigningKey::random(&mut OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-384",
            "x": b64(point.x().unwrap()),
            "y": b64(point.y().unwrap()),
        });
        (signing, jwk)
    }

    fn ed25519_pair() -> (ed25519_dalek::SigningKey, Value) {
        let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64(signing.verifying_key().as_bytes()),
        });
        (signing, jwk)
    }

    fn oct_jwk(secret: &[u8]) -> Value {
        json!({ "kty": "oct", "k": b64(secret) })
    }

    /// `jwk` with `extra` members merged in (`null` removes a member).
    fn with(jwk: &Value, extra: Value) -> Value {
        let mut out = jwk.clone();
        for (name, value) in extra.as_object().unwrap() {
            if value.is_null() {
                out.as_object_mut().unwrap().remove(name);
            } else {
                out[name] = value.clone();
            }
        }
        out
    }

    fn parse(keys: &[Value]) -> KeySet {
        let doc = json!({ "keys": keys });
        parse_jwks(doc.to_string().as_bytes()).unwrap()
    }

    /// Parses a single-entry JWKS and returns why the entry was ignored.
    fn ignored_reason(jwk: Value) -> String {
        let set = parse(std::slice::from_ref(&jwk));
        assert!(set.keys.is_empty(), "{jwk} should be ignored");
        assert_eq!(set.ignored.len(), 1);
        set.ignored[0].reason.clone()
    }

    fn assert_ignored(jwk: Value, reason_contains: &str) {
        let reason = ignored_reason(jwk.clone());
        assert!(
            reason.contains(reason_contains),
            "{jwk}: reason {reason:?} lacks {reason_contains:?}"
        );
    }

    fn assert_usable(jwk: Value) -> Jwk {
        let set = parse(std::slice::from_ref(&jwk));
        assert!(set.ignored.is_empty(), "{jwk}: {:?}", set.ignored);
        assert_eq!(set.keys.len(), 1);
        set.keys.into_iter().next().unwrap()
    }

    /// An odd number with exactly `bits` bits, standing in for a modulus of that size: size
    /// limits apply before any arithmetic, so a fake modulus tests them as well as a real one.
    fn fake_modulus(bits: usize) -> String {
        let mut bytes = vec![0x5a_u8; bits.div_ceil(8)];
        let top_bits = bits - 8 * (bytes.len() - 1);
        bytes[0] = 0xff >> (8 - top_bits);
        bytes[0] |= 1 << (top_bits - 1);
        *bytes.last_mut().unwrap() |= 1;
        let n = rsa::BigUint::from_bytes_be(&bytes);
        assert_eq!(n.bits(), bits);
        b64(&bytes)
    }

    // ---- the real-world key ----

    #[test]
    fn envoy_test_suite_key_parses_and_verifies_its_token() {
        let set = parse_jwks(format!(r#"{{"keys":[{ENVOY_JWK}]}}"#).as_bytes()).unwrap();
        assert!(set.ignored.is_empty(), "{:?}", set.ignored);
        let jwk = &set.keys[0];
        assert_eq!(jwk.kid.as_deref(), Some(ENVOY_KID));
        assert_eq!(jwk.alg, Some(Alg::RS256));
        assert!(matches!(&jwk.key, PublicKey::Rsa(key) if key.bits() == 2048));

        let found: Vec<_> = set.candidates(Alg::RS256, Some(ENVOY_KID)).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(set.candidates(Alg::RS256, None).count(), 1);
        assert_eq!(set.candidates(Alg::PS256, Some(ENVOY_KID)).count(), 0);
        assert_eq!(set.candidates(Alg::RS256, Some("other")).count(), 0);

        let (input, signature) = ENVOY_GOOD_TOKEN.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert!(verify(
            Alg::RS256,
            &found[0].key,
            input.as_bytes(),
            &signature
        ));
        let mut tampered = input.as_bytes().to_vec();
        tampered[40] ^= 1;
        assert!(!verify(Alg::RS256, &found[0].key, &tampered, &signature));
        assert!(!verify(
            Alg::RS384,
            &found[0].key,
            input.as_bytes(),
            &signature
        ));
    }

    // ---- every key type, end to end ----

    #[test]
    fn generated_keys_of_every_type_parse_and_verify() {
        let input = b"header.payload";
        let rsa = test_keys::rsa();
        let (p256, p256_jwk) = p256_pair();
        let (p384, p384_jwk) = p384_pair();
        let (ed, ed_jwk) = ed25519_pair();
        let secret = [9u8; 48];
        let set = parse(&[
            with(&rsa_jwk(rsa), json!({"kid": "rsa"})),
            with(&p256_jwk, json!({"kid": "p256"})),
            with(&p384_jwk, json!({"kid": "p384"})),
            with(&ed_jwk, json!({"kid": "ed"})),
            with(&oct_jwk(&secret), json!({"kid": "oct"})),
        ]);
        assert!(set.ignored.is_empty(), "{:?}", set.ignored);
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["rsa", "p256", "p384", "ed", "oct"]);

        let rs256 = rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa.clone())
            .sign(input)
            .to_vec();
        let es256: p256::ecdsa::Signature = p256.sign(input);
        let es384: p384::ecdsa::Signature = p384.sign(input);
        let eddsa = ed25519_dalek::Signer::sign(&ed, input).to_bytes().to_vec();
        let hs384 = {
            use hmac::{Hmac, Mac};
            let mut mac = Hmac::<sha2::Sha384>::new_from_slice(&secret).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        };
        let cases: [(Alg, &str, Vec<u8>); 5] = [
            (Alg::RS256, "rsa", rs256),
            (Alg::ES256, "p256", es256.to_bytes().to_vec()),
            (Alg::ES384, "p384", es384.to_bytes().to_vec()),
            (Alg::EdDSA, "ed", eddsa),
            (Alg::HS384, "oct", hs384),
        ];
        for (alg, kid, signature) in cases {
            let found: Vec<_> = set.candidates(alg, Some(kid)).collect();
            assert_eq!(found.len(), 1, "{alg} {kid}");
            assert!(verify(alg, &found[0].key, input, &signature), "{alg}");
            // With no kid, exactly the one key of that type is tried.
            let any: Vec<_> = set.candidates(alg, None).collect();
            assert_eq!(any.len(), 1, "{alg}");
            assert_eq!(any[0].kid.as_deref(), Some(kid));
        }
    }

    #[test]
    fn use_sig_and_key_ops_verify_are_accepted() {
        let (_, jwk) = ed25519_pair();
        assert_usable(with(&jwk, json!({"use": "sig"})));
        assert_usable(with(&jwk, json!({"key_ops": ["verify"]})));
        assert_usable(with(&jwk, json!({"key_ops": ["sign", "verify"]})));
        assert_usable(with(
            &jwk,
            json!({"alg": "EdDSA", "use": "sig", "kid": "k1"}),
        ));
        // Unknown members are ignored, per RFC 7517 §4.
        assert_usable(with(&jwk, json!({"x5t": "abc", "ext": true})));
    }

    // ---- document errors ----

    #[test]
    fn oversized_document_is_refused_before_parsing() {
        let mut doc = br#"{"keys":[]}"#.to_vec();
        doc.resize(MAX_JWKS_BYTES, b' ');
        assert!(parse_jwks(&doc).is_ok());
        doc.push(b' ');
        assert_eq!(parse_jwks(&doc).unwrap_err(), JwksError::TooLarge);
    }

    #[test]
    fn non_json_is_refused() {
        let docs: [&[u8]; 6] = [
            b"",
            b"not json",
            br#"{"keys":[]"#,
            br#"{"keys":[]} trailing"#,
            b"\xff\xfe",
            br#"{"keys":["\ud800"]}"#,
        ];
        for doc in docs {
            assert_eq!(parse_jwks(doc).unwrap_err(), JwksError::NotJson, "{doc:?}");
        }
        // Nesting beyond the reader's depth limit is an error, not a stack overflow.
        let deep = format!(
            r#"{{"keys":[{}{}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(parse_jwks(deep.as_bytes()).unwrap_err(), JwksError::NotJson);
    }

    #[test]
    fn document_without_a_keys_array_is_refused() {
        for doc in [
            "{}",
            "[]",
            "null",
            "42",
            r#""keys""#,
            r#"{"keys":null}"#,
            r#"{"keys":{}}"#,
            r#"{"keys":"[]"}"#,
            r#"{"Keys":[]}"#,
            r#"[{"keys":[]}]"#,
        ] {
            assert_eq!(
                parse_jwks(doc.as_bytes()).unwrap_err(),
                JwksError::NoKeysArray,
                "{doc}"
            );
        }
    }

    #[test]
    fn too_many_keys_are_refused() {
        let entries = |count: usize| {
            let keys: Vec<Value> = (0..count).map(|_| json!({})).collect();
            json!({ "keys": keys }).to_string()
        };
        let set = parse_jwks(entries(MAX_KEYS).as_bytes()).unwrap();
        assert_eq!(set.ignored.len(), MAX_KEYS);
        assert_eq!(
            parse_jwks(entries(MAX_KEYS + 1).as_bytes()).unwrap_err(),
            JwksError::TooManyKeys
        );
    }

    #[test]
    fn empty_key_array_is_an_empty_set() {
        let set = parse_jwks(br#"{"keys":[]}"#).unwrap();
        assert!(set.keys.is_empty() && set.ignored.is_empty());
        assert_eq!(set.candidates(Alg::RS256, None).count(), 0);
    }

    #[test]
    fn errors_display_their_cause() {
        assert_eq!(
            JwksError::TooLarge.to_string(),
            "JWKS is larger than 262144 bytes"
        );
        assert_eq!(JwksError::NotJson.to_string(), "JWKS is not valid JSON");
        assert!(
            JwksError::NoKeysArray
                .to_string()
                .contains("\"keys\" array")
        );
        assert_eq!(
            JwksError::TooManyKeys.to_string(),
            "JWKS has more than 100 keys"
        );
    }

    // ---- ignored entries ----

    #[test]
    fn ignored_entries_keep_their_index_and_kid_and_do_not_stop_the_rest() {
        let (_, ed) = ed25519_pair();
        let set = parse(&[
            json!(42),
            with(&ed, json!({"kid": "good-1"})),
            with(&ed, json!({"kid": "enc", "use": "enc"})),
            with(&ed, json!({"kid": 7})),
            with(&ed, json!({"kid": "good-2"})),
        ]);
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("good-1"), Some("good-2")]);
        let ignored: Vec<_> = set
            .ignored
            .iter()
            .map(|i| (i.index, i.kid.as_deref()))
            .collect();
        assert_eq!(ignored, [(0, None), (2, Some("enc")), (3, None)]);
        assert!(set.ignored[2].reason.contains("kid"));
    }

    #[test]
    fn entries_that_are_not_objects_are_ignored() {
        for entry in [json!(null), json!(1), json!("RSA"), json!([]), json!(true)] {
            assert_ignored(entry, "not a JSON object");
        }
    }

    #[test]
    fn missing_or_unknown_kty_is_ignored() {
        let (_, ed) = ed25519_pair();
        assert_ignored(with(&ed, json!({"kty": null})), "\"kty\" is missing");
        assert_ignored(with(&ed, json!({"kty": 1})), "\"kty\" is not a string");
        for kty in ["okp", "rsa", "ec", "OCT", "XYZ", ""] {
            assert_ignored(with(&ed, json!({"kty": kty})), "unsupported \"kty\"");
        }
        assert_ignored(json!({}), "\"kty\" is missing");
    }

    #[test]
    fn use_other_than_sig_is_ignored() {
        let (_, ed) = ed25519_pair();
        for key_use in [
            json!("enc"),
            json!("SIG"),
            json!(""),
            json!(null),
            json!(["sig"]),
        ] {
            // `null` removes the member in `with`, so build that case by hand.
            let jwk = if key_use.is_null() {
                let mut jwk = ed.clone();
                jwk["use"] = Value::Null;
                jwk
            } else {
                with(&ed, json!({ "use": key_use }))
            };
            assert_ignored(jwk, "\"use\"");
        }
    }

    #[test]
    fn key_ops_without_verify_is_ignored() {
        let (_, ed) = ed25519_pair();
        for ops in [
            json!([]),
            json!(["sign"]),
            json!(["encrypt", "wrapKey"]),
            json!(["Verify"]),
            json!("verify"),
            json!({"verify": true}),
        ] {
            assert_ignored(with(&ed, json!({ "key_ops": ops })), "key_ops");
        }
    }

    #[test]
    fn unknown_alg_is_ignored() {
        let (_, ed) = ed25519_pair();
        for alg in ["none", "None", "RS1", "ES521", "Ed25519", "eddsa", ""] {
            assert_ignored(with(&ed, json!({ "alg": alg })), "unsupported \"alg\"");
        }
        assert_ignored(with(&ed, json!({"alg": 256})), "\"alg\" is not a string");
    }

    #[test]
    fn alg_incompatible_with_the_key_is_ignored() {
        let rsa = rsa_jwk(test_keys::rsa());
        let (_, p256) = p256_pair();
        let (_, p384) = p384_pair();
        let (_, ed) = ed25519_pair();
        let oct = oct_jwk(&[1; 32]);
        let cases = [
            (&rsa, "ES256"),
            (&rsa, "HS256"),
            (&rsa, "EdDSA"),
            (&p256, "ES384"),
            (&p256, "RS256"),
            (&p384, "ES256"),
            (&ed, "ES256"),
            (&ed, "HS512"),
            (&oct, "RS256"),
            (&oct, "EdDSA"),
            // 32 bytes are too short for HS384 / HS512.
            (&oct, "HS384"),
            (&oct, "HS512"),
        ];
        for (jwk, alg) in cases {
            assert_ignored(with(jwk, json!({ "alg": alg })), "does not fit");
        }
        for (jwk, alg) in [
            (&rsa, "PS512"),
            (&p256, "ES256"),
            (&p384, "ES384"),
            (&oct, "HS256"),
        ] {
            let parsed = assert_usable(with(jwk, json!({ "alg": alg })));
            assert_eq!(parsed.alg, Alg::from_name(alg));
        }
    }

    #[test]
    fn non_string_kid_is_ignored() {
        let (_, ed) = ed25519_pair();
        for kid in [json!(1), json!(["a"]), json!({"a": 1}), json!(true)] {
            assert_ignored(with(&ed, json!({ "kid": kid })), "\"kid\" is not a string");
        }
        let mut null_kid = ed.clone();
        null_kid["kid"] = Value::Null;
        assert_ignored(null_kid, "\"kid\" is not a string");
    }

    #[test]
    fn private_key_members_make_an_asymmetric_key_ignored() {
        let rsa = rsa_jwk(test_keys::rsa());
        for member in PRIVATE_MEMBERS {
            assert_ignored(with(&rsa, json!({ member: "AQAB" })), member);
        }
        let (_, p256) = p256_pair();
        assert_ignored(
            with(&p256, json!({"d": "AQAB"})),
            "private key member \"d\"",
        );
        let (_, ed) = ed25519_pair();
        assert_ignored(with(&ed, json!({"d": "AQAB"})), "private key member \"d\"");
    }

    #[test]
    fn rsa_modulus_size_is_bounded() {
        // J23: a real 1024-bit key.
        let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        assert_ignored(rsa_jwk(&small), "1024 bits");

        let jwk = |bits: usize| json!({"kty": "RSA", "n": fake_modulus(bits), "e": "AQAB"});
        assert_ignored(jwk(2047), "2047 bits");
        assert_usable(jwk(2048));
        assert_usable(jwk(4096));
        // Larger than rsa's own default limit of 4096, still allowed.
        assert_usable(jwk(8192));
        // J24: beyond 8192 bits, every verification costs more than anyone needs to pay.
        assert_ignored(jwk(8193), "8193 bits");
        assert_ignored(jwk(16384), "16384 bits");
    }

    #[test]
    fn rsa_leading_zero_in_modulus_is_tolerated() {
        // Some libraries emit a sign byte; the value, and its bit length, are unchanged.
        let public = test_keys::rsa().to_public_key();
        let mut n = vec![0];
        n.extend(public.n().to_bytes_be());
        let jwk = json!({"kty": "RSA", "n": b64(&n), "e": "AQAB"});
        let parsed = assert_usable(jwk);
        assert!(
            matches!(parsed.key, PublicKey::Rsa(key) if key == crate::crypto::test_keys::fast(&public))
        );
    }

    #[test]
    fn rsa_bad_exponents_and_moduli_are_ignored() {
        let rsa = rsa_jwk(test_keys::rsa());
        assert_ignored(with(&rsa, json!({"e": "AQAA"})), "exponent is even"); // 65536
        assert_ignored(with(&rsa, json!({"e": "Ag"})), "exponent is even"); // 2
        assert_ignored(with(&rsa, json!({"e": "AQ"})), "exponent is below 3"); // 1
        assert_ignored(with(&rsa, json!({"e": "AA"})), "exponent is even"); // 0
        assert_ignored(with(&rsa, json!({"e": ""})), "exponent is even");
        assert_usable(with(&rsa, json!({"e": "Aw"}))); // 3
        // Above rsa's 2^33 - 1 cap.
        assert_ignored(
            with(&rsa, json!({"e": b64(&[1, 0, 0, 0, 0, 1])})),
            "invalid RSA key",
        );
        assert_ignored(with(&rsa, json!({"e": null})), "\"e\" is missing");
        assert_ignored(with(&rsa, json!({"n": null})), "\"n\" is missing");
        assert_ignored(with(&rsa, json!({"n": 12345})), "\"n\" is not a string");
        assert_ignored(with(&rsa, json!({"n": ""})), "modulus is even");
        let mut even = test_keys::rsa().to_public_key().n().to_bytes_be();
        *even.last_mut().unwrap() &= 0xfe;
        assert_ignored(with(&rsa, json!({"n": b64(&even)})), "modulus is even");
    }

    #[test]
    fn base64url_is_strict() {
        let rsa = rsa_jwk(test_keys::rsa());
        let n = rsa["n"].as_str().unwrap().to_owned();
        let standard = n.replace('-', "+").replace('_', "/");
        assert_ne!(standard, n, "the key should contain a - or _");
        for bad in [
            format!("{n}="),
            format!("{n}=="),
            standard,
            format!("{n} "),
            format!(" {n}"),
            format!("{n}\n"),
            format!("{n}."),
        ] {
            assert_ignored(with(&rsa, json!({ "n": bad })), "not unpadded base64url");
        }
        // "AQAB" is 65537; "AQAC" has the same leading bits; "AR" has stray low bits.
        assert_ignored(with(&rsa, json!({"e": "AR"})), "not unpadded base64url");
        assert_ignored(with(&rsa, json!({"e": "AQAB="})), "not unpadded base64url");
    }

    #[test]
    fn p521_keys_import_with_full_width_coordinates() {
        let signing = p521::ecdsa::SigningKey::random(&mut OsRng);
        let point = p521::ecdsa::VerifyingKey::from(&signing).to_encoded_point(false);
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        let jwk = json!({ "kty": "EC", "crv": "P-521", "x": b64(&x), "y": b64(&y) });
        let key = assert_usable(jwk.clone()).key;
        assert!(key.fits(Alg::ES512));
        assert!(!key.fits(Alg::ES256) && !key.fits(Alg::ES384));
        assert!(
            assert_usable(with(&jwk, json!({"alg": "ES512"})))
                .key
                .fits(Alg::ES512)
        );
        assert_ignored(with(&jwk, json!({"alg": "ES384"})), "does not fit");
        // 66 bytes exactly: the top 7 bits of the first byte are always zero, and still sent.
        assert_ignored(with(&jwk, json!({"x": b64(&x[1..])})), "must be 66 bytes");
        let mut y_off = y.clone();
        y_off[65] ^= 1;
        assert_ignored(
            with(&jwk, json!({"y": b64(&y_off)})),
            "point is not on P-521",
        );
        // A coordinate at or above the prime 2^521 - 1 is not a field element.
        let mut p = vec![0xff; 66];
        p[0] = 0x01;
        assert_ignored(with(&jwk, json!({"x": b64(&p)})), "point is not on P-521");
    }

    #[test]
    fn ec_keys_are_validated() {
        let (_, p256) = p256_pair();
        let (_, p384) = p384_pair();
        assert!(assert_usable(p256.clone()).key.fits(Alg::ES256));
        assert!(assert_usable(p384.clone()).key.fits(Alg::ES384));

        for crv in ["secp256k1", "p-256", "P-512", "Ed25519", ""] {
            assert_ignored(with(&p256, json!({ "crv": crv })), "unsupported EC \"crv\"");
        }
        assert_ignored(with(&p256, json!({"crv": null})), "\"crv\" is missing");
        assert_ignored(with(&p256, json!({"crv": 256})), "\"crv\" is not a string");
        assert_ignored(with(&p256, json!({"x": null})), "\"x\" is missing");
        assert_ignored(with(&p256, json!({"y": null})), "\"y\" is missing");

        // Curve and coordinate size must agree.
        assert_ignored(with(&p256, json!({"crv": "P-384"})), "must be 48 bytes");
        assert_ignored(with(&p384, json!({"crv": "P-256"})), "must be 32 bytes");
        assert_ignored(with(&p384, json!({"crv": "P-521"})), "must be 66 bytes");
        // A short coordinate (leading zero dropped) is refused, RFC 7518 §6.2.1.2.
        let x = URL_SAFE_NO_PAD.decode(p256["x"].as_str().unwrap()).unwrap();
        assert_ignored(with(&p256, json!({"x": b64(&x[1..])})), "must be 32 bytes");
        let mut long = vec![0];
        long.extend(&x);
        assert_ignored(with(&p256, json!({"x": b64(&long)})), "must be 32 bytes");

        // Off the curve.
        let mut y = URL_SAFE_NO_PAD.decode(p256["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        assert_ignored(with(&p256, json!({"y": b64(&y)})), "point is not on P-256");
        let mut y = URL_SAFE_NO_PAD.decode(p384["y"].as_str().unwrap()).unwrap();
        y[47] ^= 1;
        assert_ignored(with(&p384, json!({"y": b64(&y)})), "point is not on P-384");
        // Coordinates that are not field elements, and the all-zero point.
        assert_ignored(
            with(&p256, json!({"x": b64(&[0xff; 32]), "y": b64(&[0xff; 32])})),
            "point is not on P-256",
        );
        assert_ignored(
            with(&p256, json!({"x": b64(&[0; 32]), "y": b64(&[0; 32])})),
            "point is not on P-256",
        );
    }

    #[test]
    fn okp_keys_are_validated() {
        let (_, ed) = ed25519_pair();
        for crv in ["X25519", "Ed448", "ed25519", ""] {
            assert_ignored(with(&ed, json!({ "crv": crv })), "unsupported OKP \"crv\"");
        }
        assert_ignored(with(&ed, json!({"crv": null})), "\"crv\" is missing");
        assert_ignored(with(&ed, json!({"x": null})), "\"x\" is missing");
        assert_ignored(with(&ed, json!({"x": b64(&[1; 31])})), "32 bytes, not 31");
        assert_ignored(with(&ed, json!({"x": b64(&[1; 33])})), "32 bytes, not 33");

        // Small-order points: the identity, and a point of order 2 (y = -1).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_ignored(with(&ed, json!({"x": b64(&identity)})), "weak");
        let mut minus_one = [0xff_u8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        assert_ignored(with(&ed, json!({"x": b64(&minus_one)})), "weak");

        // The first small y that is not the y of any curve point.
        let not_a_point = (2u8..)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                bytes
            })
            .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
            .unwrap();
        assert_ignored(
            with(&ed, json!({"x": b64(&not_a_point)})),
            "not an Ed25519 point",
        );
    }

    #[test]
    fn oct_keys_need_a_usable_secret() {
        let parsed = assert_usable(oct_jwk(&[5; 32]));
        assert!(matches!(&parsed.key, PublicKey::Hmac(secret) if secret == &[5; 32]));
        assert_ignored(json!({"kty": "oct", "k": ""}), "\"k\" is empty");
        assert_ignored(json!({"kty": "oct"}), "\"k\" is missing");
        assert_ignored(json!({"kty": "oct", "k": 5}), "\"k\" is not a string");
        assert_ignored(
            json!({"kty": "oct", "k": "c2VjcmV0="}),
            "not unpadded base64url",
        );
        assert_ignored(oct_jwk(&[5; 31]), "31 bytes");
        // The ignore reason never repeats the secret.
        let reason = ignored_reason(json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}));
        assert!(!reason.contains("c2VjcmV0"), "{reason}");
    }

    #[test]
    fn long_values_are_cut_short_in_reasons() {
        let (_, ed) = ed25519_pair();
        let reason = ignored_reason(with(&ed, json!({"use": "x".repeat(100_000)})));
        assert!(reason.len() < 100, "{reason}");
        let reason = ignored_reason(with(&ed, json!({"kty": "é".repeat(1000)})));
        assert!(reason.len() < 100, "{reason}");
    }

    // ---- candidate selection ----

    #[test]
    fn kid_selects_exactly_the_key_with_that_kid() {
        let (_, a) = ed25519_pair();
        let (_, b) = ed25519_pair();
        let (_, c) = ed25519_pair();
        let set = parse(&[
            with(&a, json!({"kid": "a"})),
            with(&b, json!({"kid": "b"})),
            c,
            with(&a, json!({"kid": "B"})),
        ]);
        let kids = |kid: Option<&str>| -> Vec<Option<String>> {
            set.candidates(Alg::EdDSA, kid)
                .map(|jwk| jwk.kid.clone())
                .collect()
        };
        assert_eq!(kids(Some("b")), [Some("b".to_owned())]);
        assert_eq!(kids(Some("B")), [Some("B".to_owned())]);
        // A token kid never falls back to a kid-less key, nor to any key.
        assert!(kids(Some("c")).is_empty());
        assert!(kids(Some("")).is_empty());
        // No kid in the token: every fitting key, in document order.
        assert_eq!(
            kids(None),
            [
                Some("a".to_owned()),
                Some("b".to_owned()),
                None,
                Some("B".to_owned())
            ]
        );
    }

    #[test]
    fn duplicate_kids_are_all_candidates_in_order() {
        let (_, a) = ed25519_pair();
        let (_, b) = ed25519_pair();
        let set = parse(&[with(&a, json!({"kid": "k"})), with(&b, json!({"kid": "k"}))]);
        let found: Vec<_> = set.candidates(Alg::EdDSA, Some("k")).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(
            format!("{:?}", found[0].key),
            format!("{:?}", set.keys[0].key)
        );
    }

    #[test]
    fn key_alg_binds_the_key_to_that_algorithm() {
        // J3: a key published for RS256 is not a PS256 or RS512 key.
        let rsa = rsa_jwk(test_keys::rsa());
        let set = parse(&[
            with(&rsa, json!({"kid": "bound", "alg": "RS256"})),
            with(&rsa, json!({"kid": "free"})),
        ]);
        let kids = |alg: Alg| -> Vec<&str> {
            set.candidates(alg, None)
                .map(|jwk| jwk.kid.as_deref().unwrap())
                .collect()
        };
        assert_eq!(kids(Alg::RS256), ["bound", "free"]);
        for alg in [Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512] {
            assert_eq!(kids(alg), ["free"], "{alg}");
        }
        for alg in [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::HS256] {
            assert!(kids(alg).is_empty(), "{alg}");
        }
        assert_eq!(set.candidates(Alg::PS256, Some("bound")).count(), 0);
    }

    #[test]
    fn curve_binds_the_key_to_its_algorithm() {
        let (_, p256) = p256_pair();
        let (_, p384) = p384_pair();
        let set = parse(&[
            with(&p256, json!({"kid": "k"})),
            with(&p384, json!({"kid": "k"})),
        ]);
        let es256: Vec<_> = set.candidates(Alg::ES256, Some("k")).collect();
        assert_eq!(es256.len(), 1);
        assert!(es256[0].key.fits(Alg::ES256));
        let es384: Vec<_> = set.candidates(Alg::ES384, Some("k")).collect();
        assert_eq!(es384.len(), 1);
        assert!(es384[0].key.fits(Alg::ES384));
        assert_eq!(set.candidates(Alg::EdDSA, Some("k")).count(), 0);
    }

    #[test]
    fn hmac_candidates_respect_the_secret_length() {
        let set = parse(&[
            with(&oct_jwk(&[1; 32]), json!({"kid": "short"})),
            with(&oct_jwk(&[2; 64]), json!({"kid": "long"})),
        ]);
        let kids = |alg: Alg| -> Vec<&str> {
            set.candidates(alg, None)
                .map(|jwk| jwk.kid.as_deref().unwrap())
                .collect()
        };
        assert_eq!(kids(Alg::HS256), ["short", "long"]);
        assert_eq!(kids(Alg::HS384), ["long"]);
        assert_eq!(kids(Alg::HS512), ["long"]);
        assert!(kids(Alg::RS256).is_empty());
    }

    // ---- hostile input ----

    /// Strings that make a key object likely to get past the early checks.
    fn interesting_string() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let envoy: Value = serde_json::from_str(ENVOY_JWK).unwrap();
        let envoy_n = envoy["n"].as_str().unwrap().to_owned();
        prop_oneof![
            proptest::sample::select(vec![
                "RSA", "EC", "OKP", "oct", "sig", "enc", "verify", "sign", "RS256", "PS384",
                "ES256", "ES384", "EdDSA", "HS256", "HS512", "none", "P-256", "P-384", "Ed25519",
                "X25519", "AQAB", "AQ", "Aw", "", "=",
            ])
            .prop_map(str::to_owned),
            Just(envoy_n),
            proptest::collection::vec(any::<u8>(), 0..70).prop_map(|bytes| b64(&bytes)),
            ".{0,12}",
        ]
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            3 => interesting_string().prop_map(Value::String),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
            1 => proptest::collection::vec(interesting_string(), 0..3)
                .prop_map(Value::from),
            1 => Just(json!({"nested": [1, {"k": "v"}]})),
        ]
    }

    fn key_object() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let member = proptest::sample::select(vec![
            "kty", "kid", "use", "key_ops", "alg", "crv", "n", "e", "x", "y", "k", "d", "p", "oth",
            "x5c", "zz",
        ]);
        prop_oneof![
            4 => proptest::collection::btree_map(member, json_value(), 0..10).prop_map(|map| {
                Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
            1 => json_value(),
        ]
    }

    proptest::proptest! {
        #[test]
        fn parse_jwks_never_panics_on_bytes(doc in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_jwks(&doc);
        }

        #[test]
        fn parse_jwks_never_panics_on_json_text(doc in r#"[{}\[\]",:a-z0-9 \\]{0,200}"#) {
            let _ = parse_jwks(doc.as_bytes());
        }

        #[test]
        fn parse_jwks_accounts_for_every_key_object(entries in proptest::collection::vec(key_object(), 0..6)) {
            let doc = json!({ "keys": entries }).to_string();
            let set = parse_jwks(doc.as_bytes()).unwrap();
            proptest::prop_assert_eq!(set.keys.len() + set.ignored.len(), entries.len());
            let mut indexes: Vec<_> = set.ignored.iter().map(|i| i.index).collect();
            indexes.dedup();
            proptest::prop_assert_eq!(indexes.len(), set.ignored.len());
            for alg in Alg::ALL {
                for jwk in set.candidates(alg, None) {
                    proptest::prop_assert!(jwk.key.fits(alg));
                    proptest::prop_assert!(jwk.alg.is_none_or(|bound| bound == alg));
                }
            }
        }
    }
}
