//! Registered-claim checks (RFC 7519 §4.1, RFC 8725) and the scope and claim requirements.
//!
//! A claim of the wrong type is invalid, never treated as absent: `"exp": "1999999999"` fails
//! where a lenient library would skip the check (jsonwebtoken's gap, J15).

use crate::config::Provider;
use crate::json::{Json, Object};
use filter_core::time::Time;
use std::fmt;

/// Why a token's claims were refused (logged, never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// `iss` missing, not a string, or not the provider's issuer.
    Issuer,
    /// `aud` missing (while audiences are configured), malformed, or not accepted.
    Audience,
    /// `exp` missing while required.
    MissingExpiration,
    /// The token has expired.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future.
    IssuedInFuture,
    /// A time claim that is not a NumericDate.
    BadTime(&'static str),
    /// `sub` is not a string.
    BadSubject,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::Issuer => f.write_str("issuer not accepted"),
            ClaimError::Audience => f.write_str("audience not accepted"),
            ClaimError::MissingExpiration => f.write_str("no exp claim"),
            ClaimError::Expired => f.write_str("expired"),
            ClaimError::NotYetValid => f.write_str("not valid yet (nbf)"),
            ClaimError::IssuedInFuture => f.write_str("issued in the future (iat)"),
            ClaimError::BadTime(claim) => write!(f, "{claim} is not a NumericDate"),
            ClaimError::BadSubject => f.write_str("sub is not a string"),
        }
    }
}

/// The last second RFC 7519 NumericDates can sensibly name: 9999-12-31T23:59:59Z.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// A NumericDate claim: absent, or a finite number of seconds in `0..=9999-12-31`.
fn numeric_date(claims: &Object, name: &'static str) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(n)) => match n.as_f64() {
            v if (0.0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => Err(ClaimError::BadTime(name)),
        },
        Some(_) => Err(ClaimError::BadTime(name)),
    }
}

/// A token's time claims, read once: a verified token is checked against the clock on every
/// request, and its claims map is not searched again for that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeClaims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

/// Checks `iss`, `exp`, `nbf`, `iat`, `aud` and `sub` of a token whose signature was verified
/// with one of `provider`'s keys: [`check_static`] then [`check_times`].
pub fn check(provider: &Provider, claims: &Object, now: Time) -> Result<(), ClaimError> {
    check_times(provider, &check_static(provider, claims)?, now)
}

/// Everything about the claims that does not depend on the time: `iss`, `aud`, `sub`, and that
/// each time claim is a NumericDate. Gives the time claims for [`check_times`].
pub fn check_static(provider: &Provider, claims: &Object) -> Result<TimeClaims, ClaimError> {
    check_issuer(provider, claims)?;
    let times = TimeClaims {
        exp: numeric_date(claims, "exp")?,
        nbf: numeric_date(claims, "nbf")?,
        iat: numeric_date(claims, "iat")?,
    };
    if times.exp.is_none() && provider.require_expiration {
        return Err(ClaimError::MissingExpiration);
    }
    check_audience(provider, claims)?;
    match claims.get("sub") {
        None | Some(Json::String(_)) => Ok(times),
        Some(_) => Err(ClaimError::BadSubject),
    }
}

/// `exp`, `nbf` and `iat` against the clock, with the provider's skew.
pub fn check_times(provider: &Provider, times: &TimeClaims, now: Time) -> Result<(), ClaimError> {
    // Fractional seconds are compared as they are (J16): no rounding in anyone's favour.
    let now_s = now.as_nanos() as f64 / 1e9;
    let skew = provider.clock_skew.as_secs_f64();
    // RFC 7519 §4.1.4: now must be *before* exp (J17: exp == now is expired).
    if let Some(exp) = times.exp
        && now_s >= exp + skew
    {
        return Err(ClaimError::Expired);
    }
    // RFC 7519 §4.1.5: now must be after *or equal to* nbf.
    if let Some(nbf) = times.nbf
        && now_s + skew < nbf
    {
        return Err(ClaimError::NotYetValid);
    }
    if let Some(iat) = times.iat
        && iat > now_s + skew
    {
        return Err(ClaimError::IssuedInFuture);
    }
    Ok(())
}

/// `iss` must equal the provider's issuer byte for byte (no case or trailing-slash folding).
pub fn check_issuer(provider: &Provider, claims: &Object) -> Result<(), ClaimError> {
    match claims.get("iss") {
        Some(Json::String(iss)) if *iss == provider.issuer => Ok(()),
        _ => Err(ClaimError::Issuer),
    }
}

fn check_audience(provider: &Provider, claims: &Object) -> Result<(), ClaimError> {
    if provider.audiences.is_empty() {
        return Ok(());
    }
    let accepted = |aud: &str| provider.audiences.iter().any(|a| a == aud);
    match claims.get("aud") {
        Some(Json::String(aud)) if accepted(aud) => Ok(()),
        // A non-string element makes the whole claim invalid (CVE-2020-26160's lesson).
        Some(Json::Array(list))
            if !list.is_empty()
                && list.iter().all(Json::is_string)
                && list.iter().filter_map(Json::as_str).any(accepted) =>
        {
            Ok(())
        }
        _ => Err(ClaimError::Audience),
    }
}

/// The scopes a token grants: the space-separated `scope` claim (RFC 9068 §2.2.3), or an `scp`
/// array (or string) as some issuers send.
pub fn granted_scopes(claims: &Object) -> Vec<&str> {
    let mut scopes = Vec::new();
    if let Some(Json::String(s)) = claims.get("scope") {
        scopes.extend(s.split(' ').filter(|s| !s.is_empty()));
    }
    match claims.get("scp") {
        Some(Json::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty())),
        Some(Json::Array(list)) => scopes.extend(list.iter().filter_map(Json::as_str)),
        _ => {}
    }
    scopes
}

/// Whether the token grants every one of `required`.
pub fn has_scopes(claims: &Object, required: &[String]) -> bool {
    if required.is_empty() {
        return true;
    }
    let granted = granted_scopes(claims);
    required.iter().all(|r| granted.contains(&r.as_str()))
}

/// Whether the claim equals one of `accepted`, or (for an array claim) contains one of them.
/// Numbers and booleans compare by their text: an integer in plain decimal (`1`), any other
/// number as the token wrote it, `true` or `false`.
pub fn claim_matches(claims: &Object, claim: &str, accepted: &[String]) -> bool {
    let fits = |v: &Json| match v {
        Json::String(s) => accepted.iter().any(|a| a == s),
        Json::Number(n) => accepted.contains(&n.canonical()),
        Json::Bool(b) => {
            let text = if *b { "true" } else { "false" };
            accepted.iter().any(|a| a == text)
        }
        _ => false,
    };
    match lookup(claims, claim.split('.')) {
        Some(Json::Array(list)) => list.iter().any(fits),
        Some(v) => fits(v),
        None => false,
    }
}

/// The claim at a dotted path (`a.b.c` reaches into nested objects).
pub fn lookup<'a, 'p>(
    claims: &'a Object,
    path: impl IntoIterator<Item = &'p str>,
) -> Option<&'a Json> {
    let mut parts = path.into_iter();
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A claim as a header value: strings as they are, integers without decimals, booleans, and
/// arrays of those joined with `,`. Objects, and anything a header cannot carry (control
/// characters), give `None`: the header is then not set.
pub fn header_value(value: &Json) -> Option<String> {
    let scalar = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.canonical()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Json::Array(list) => {
            let parts: Option<Vec<String>> = list.iter().map(scalar).collect();
            parts?.join(",")
        }
        other => scalar(other)?,
    };
    // Header values may not carry CR, LF, NUL or other controls (RFC 9110 §5.5).
    let clean = text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    clean.then_some(text)
}
