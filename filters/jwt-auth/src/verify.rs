//! One token against one provider, in the reference order (semantics §4.b), stopping at the
//! first failure: parse, header policy, issuer, key selection, signature, claims.
//!
//! The unverified `iss` is checked before any signature work: a token meant for another
//! provider costs a string comparison, not an RSA operation, and a key can only ever verify
//! tokens of the issuer it belongs to (RFC 8725 §3.8, J21).

use crate::claims::{self, ClaimError, TimeClaims};
use crate::config::Provider;
use crate::crypto;
use crate::json::Object;
use crate::jwks::KeySet;
use crate::token::{self, TokenError};
use filter_core::signature::NativeVerifier;
use filter_core::time::Time;
use std::fmt;

/// How many keys a token without `kid` may be tried against (CPU bound for kid-less tokens).
const MAX_KEYS_TRIED: usize = 3;

/// A token whose signature and claims were verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The claims.
    pub claims: Object,
    /// The payload segment as it came (base64url JSON), for `forward_payload_header`.
    pub payload_b64: String,
    /// The outcome of the claim checks that do not depend on the time, made once with the
    /// signature check so that a cache hit only compares times.
    pub static_claims: Result<TimeClaims, ClaimError>,
}

/// Why a token was refused (logged at debug level; the client only learns "invalid_token").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not a well-formed JWS, or a header we refuse.
    Token(TokenError),
    /// A known algorithm this provider does not allow.
    AlgorithmNotAllowed(&'static str),
    /// `typ` is not the required one, or not a JWT type at all.
    Type,
    /// No key of this provider fits the token's `kid` and `alg`.
    NoKey,
    /// No fitting key verified the signature.
    Signature,
    /// A registered claim was refused.
    Claims(ClaimError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Token(e) => write!(f, "malformed token: {e}"),
            Failure::AlgorithmNotAllowed(alg) => write!(f, "algorithm {alg} not allowed"),
            Failure::Type => f.write_str("typ not accepted"),
            Failure::NoKey => f.write_str("no key matches kid and alg"),
            Failure::Signature => f.write_str("bad signature"),
            Failure::Claims(e) => write!(f, "claims: {e}"),
        }
    }
}

impl Failure {
    /// The failure's code in the access log (`jwt_auth.decision` is `invalid_token:<code>`):
    /// fixed words, never anything taken from the token.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Token(_) => "malformed",
            Failure::AlgorithmNotAllowed(_) => "alg_not_allowed",
            Failure::Type => "typ_not_accepted",
            Failure::NoKey => "unknown_key",
            Failure::Signature => "signature",
            Failure::Claims(e) => e.reason(),
        }
    }
}

/// Verifies `token` for `provider` (whose current keys are `keys`) at `now`:
/// [`verify_signature`] then [`check_claims`].
pub fn verify(
    provider: &Provider,
    keys: &KeySet,
    token: &str,
    now: Time,
    native: &dyn NativeVerifier,
) -> Result<Verified, Failure> {
    let verified = verify_signature(provider, keys, token, native)?;
    check_claims(provider, &verified, now)?;
    Ok(verified)
}

/// The registered-claim checks, which depend on the time and so run on every request, even for
/// a token whose signature was verified before.
pub fn check_claims(provider: &Provider, verified: &Verified, now: Time) -> Result<(), Failure> {
    let times = verified
        .static_claims
        .as_ref()
        .map_err(|e| Failure::Claims(e.clone()))?;
    claims::check_times(provider, times, now).map_err(Failure::Claims)
}

/// Everything about a token that does not depend on the time: its form, header, issuer and
/// signature. The result may be cached for as long as the provider's keys stay the same.
/// Signatures go to the host's `native` verifier when it has one.
pub fn verify_signature(
    provider: &Provider,
    keys: &KeySet,
    token: &str,
    native: &dyn NativeVerifier,
) -> Result<Verified, Failure> {
    let parsed = token::parse(token, provider.max_token_bytes).map_err(Failure::Token)?;
    let alg = parsed.header.alg;
    if !provider.algorithms.contains(&alg) {
        return Err(Failure::AlgorithmNotAllowed(alg.name()));
    }
    let typ_ok = match (&provider.require_typ, parsed.header.typ.as_deref()) {
        (Some(required), Some(typ)) => token::normalise_typ(typ) == *required,
        (Some(_), None) => false,
        (None, Some(typ)) => token::typ_is_acceptable_default(typ),
        (None, None) => true,
    };
    if !typ_ok {
        return Err(Failure::Type);
    }
    claims::check_issuer(provider, &parsed.claims).map_err(Failure::Claims)?;
    let input = parsed.signing_input.as_bytes();
    let mut tried = 0;
    let mut verified = false;
    for jwk in keys
        .candidates(alg, parsed.header.kid.as_deref())
        .filter(|jwk| jwk.alg.is_none_or(|a| provider.algorithms.contains(&a)))
        .take(MAX_KEYS_TRIED)
    {
        tried += 1;
        if crypto::verify(alg, &jwk.key, input, &parsed.signature, native) {
            verified = true;
            break;
        }
    }
    if tried == 0 {
        return Err(Failure::NoKey);
    }
    if !verified {
        return Err(Failure::Signature);
    }
    let payload_b64 = parsed
        .signing_input
        .split_once('.')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    let static_claims = claims::check_static(provider, &parsed.claims);
    Ok(Verified {
        claims: parsed.claims,
        payload_b64,
        static_claims,
    })
}
