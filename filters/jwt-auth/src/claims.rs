//! Registered-claim checks (RFC 7519 §4.1, RFC 8725) and the scope and claim requirements.
//!
//! A claim of the wrong type is invalid, never treated as absent: `"exp": "1999999999"` fails
//! where a lenient library would skip the check (jsonwebtoken's gap, J15).

use crate::config::Provider;
use crate::json::{Json, Number, Object};
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

impl ClaimError {
    /// The failure's code in the access log (`jwt_auth.decision` is `invalid_token:<code>`):
    /// fixed words, never a claim's value.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimError::Issuer => "issuer",
            ClaimError::Audience => "audience",
            ClaimError::MissingExpiration => "no_expiration",
            ClaimError::Expired => "expired",
            ClaimError::NotYetValid => "not_yet_valid",
            ClaimError::IssuedInFuture => "issued_in_future",
            ClaimError::BadTime(_) | ClaimError::BadSubject => "malformed_claim",
        }
    }
}

/// The last second RFC 7519 NumericDates can sensibly name: 9999-12-31T23:59:59Z.
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A NumericDate claim: absent, or a number of seconds in `0..=9999-12-31`, given as the
/// instant in whole nanoseconds rounded up (see [`TimeClaims`]).
fn numeric_date(claims: &Object, name: &'static str) -> Result<Option<u128>, ClaimError> {
    let seconds = match claims.get(name) {
        None => return Ok(None),
        Some(Json::Number(n)) => *n,
        Some(_) => return Err(ClaimError::BadTime(name)),
    };
    match seconds {
        Number::Unsigned(s) if s <= MAX_NUMERIC_DATE => Ok(Some(u128::from(s) * NANOS_PER_SECOND)),
        // MAX_NUMERIC_DATE is far below 2^53, so it converts to f64 exactly.
        Number::Float(s) if (0.0..=MAX_NUMERIC_DATE as f64).contains(&s) => Ok(Some(ceil_nanos(s))),
        _ => Err(ClaimError::BadTime(name)),
    }
}

/// `seconds` (finite, not negative) in nanoseconds, rounded up, computed from the float's exact
/// binary value: `0.1` is a little more than 100 ms, so it gives 100,000,001.
fn ceil_nanos(seconds: f64) -> u128 {
    const MANTISSA_BITS: u32 = 52;
    let bits = seconds.to_bits();
    let fraction = bits & ((1 << MANTISSA_BITS) - 1);
    // The exponent field is 11 bits, so it always fits.
    let biased = i32::try_from((bits >> MANTISSA_BITS) & 0x7ff).unwrap_or(0);
    // seconds = mantissa * 2^exponent exactly (subnormals have no implicit leading 1).
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << MANTISSA_BITS), biased - 1075)
    };
    // At most 53 + 30 bits.
    let scaled = u128::from(mantissa) * NANOS_PER_SECOND;
    if exponent >= 0 {
        // Only floats of 2^52 s and more get here; the callers' range check keeps them out.
        let shift = exponent.unsigned_abs();
        return scaled
            .checked_shl(shift)
            .filter(|shifted| shifted.checked_shr(shift) == Some(scaled))
            .unwrap_or(u128::MAX);
    }
    let shift = exponent.unsigned_abs();
    let floor = scaled.checked_shr(shift).unwrap_or(0);
    let exact = floor.checked_shl(shift).unwrap_or(0) == scaled;
    floor + u128::from(!exact)
}

/// A token's time claims, read once: a verified token is checked against the clock on every
/// request, and its claims map is not searched again for that.
///
/// Each is an instant in nanoseconds rounded up. The clock and the skew are whole nanoseconds,
/// and a whole number `n` is before a real `t` exactly when it is before `t` rounded up, so the
/// comparisons below are exact for integer and fractional claims alike (J16): no rounding in
/// anyone's favour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeClaims {
    exp: Option<u128>,
    nbf: Option<u128>,
    iat: Option<u128>,
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
    let now = u128::from(now.as_nanos());
    let skew = provider.clock_skew.as_nanos();
    // RFC 7519 §4.1.4: now must be *before* exp (J17: exp == now is expired).
    if let Some(exp) = times.exp
        && now >= exp.saturating_add(skew)
    {
        return Err(ClaimError::Expired);
    }
    // RFC 7519 §4.1.5: now must be after *or equal to* nbf.
    if let Some(nbf) = times.nbf
        && now.saturating_add(skew) < nbf
    {
        return Err(ClaimError::NotYetValid);
    }
    if let Some(iat) = times.iat
        && now.saturating_add(skew) < iat
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
/// number as serde_json writes it (`1.5`, `1000.0`), `true` or `false`.
pub fn claim_matches(claims: &Object, claim: &str, accepted: &[String]) -> bool {
    let fits = |v: &Json| match v {
        Json::String(s) => accepted.iter().any(|a| a == s),
        Json::Number(n) => accepted.contains(&n.to_string()),
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

/// A claim as a header value: strings as they are, numbers as [`Number`] displays them, booleans, and
/// arrays of those joined with `,`. Objects, and anything a header cannot carry (control
/// characters), give `None`: the header is then not set.
pub fn header_value(value: &Json) -> Option<String> {
    let scalar = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u128 = 1_000_000_000;

    fn date(value: Json) -> Result<Option<u128>, ClaimError> {
        numeric_date(&Object::from([("exp", value)]), "exp")
    }

    #[test]
    fn integer_dates_are_exact() {
        assert_eq!(date(Json::Number(Number::Unsigned(0))), Ok(Some(0)));
        assert_eq!(
            date(Json::Number(Number::Unsigned(1_700_000_000))),
            Ok(Some(1_700_000_000 * SECOND))
        );
        assert_eq!(
            date(Json::Number(Number::Unsigned(MAX_NUMERIC_DATE))),
            Ok(Some(u128::from(MAX_NUMERIC_DATE) * SECOND))
        );
        for bad in [
            Json::Number(Number::Unsigned(MAX_NUMERIC_DATE + 1)),
            Json::Number(Number::Unsigned(u64::MAX)),
            Json::Number(Number::Negative(-1)),
            Json::Number(Number::Float(-0.5)),
            Json::Number(Number::Float(MAX_NUMERIC_DATE as f64 + 0.5)),
            Json::Number(Number::Float(1e300)),
            Json::String("1700000000".into()),
            Json::Null,
            Json::Bool(true),
        ] {
            assert_eq!(
                date(bad.clone()),
                Err(ClaimError::BadTime("exp")),
                "{bad:?}"
            );
        }
        assert_eq!(date(Json::Number(Number::Float(-0.0))), Ok(Some(0)));
        assert_eq!(
            numeric_date(&Object::default(), "exp"),
            Ok(None),
            "absent is not an error"
        );
    }

    #[test]
    fn fractional_dates_round_up_from_their_exact_value() {
        assert_eq!(ceil_nanos(0.0), 0);
        assert_eq!(ceil_nanos(0.5), SECOND / 2);
        assert_eq!(
            ceil_nanos(1_700_000_000.5),
            1_700_000_000 * SECOND + SECOND / 2
        );
        assert_eq!(ceil_nanos(1_700_000_000.0), 1_700_000_000 * SECOND);
        // 0.1 is 0.1000000000000000055511151231257827... exactly.
        assert_eq!(ceil_nanos(0.1), 100_000_001);
        // 0.25 is exact.
        assert_eq!(ceil_nanos(0.25), 250_000_000);
        // The smallest positive float is above zero nanoseconds.
        assert_eq!(ceil_nanos(f64::from_bits(1)), 1);
        assert_eq!(ceil_nanos(f64::MIN_POSITIVE), 1);
        // 1700000000.1 is 1700000000.099999904632568359375 exactly.
        assert_eq!(
            ceil_nanos(1_700_000_000.1),
            1_700_000_000 * SECOND + 99_999_905
        );
        assert_eq!(
            ceil_nanos(MAX_NUMERIC_DATE as f64),
            u128::from(MAX_NUMERIC_DATE) * SECOND
        );
    }

    proptest! {
        /// Against a slower exact reference: the float's dyadic value scaled by 10^9 and
        /// rounded up, computed with the numerator and denominator as integers.
        #[test]
        fn ceil_nanos_is_exact(seconds in 0.0..=MAX_NUMERIC_DATE as f64) {
            let bits = seconds.to_bits();
            let exponent = i32::try_from((bits >> 52) & 0x7ff).unwrap();
            let mantissa = bits & ((1 << 52) - 1);
            let (mantissa, exponent) = if exponent == 0 {
                (mantissa, -1074)
            } else {
                (mantissa | (1 << 52), exponent - 1075)
            };
            // In range the exponent is negative and at least -1074; shift the mantissa right
            // instead, keeping the bits that fall off to decide the rounding.
            let shift = u32::try_from(-exponent).unwrap();
            let numerator = u128::from(mantissa) * SECOND;
            let expected = if shift >= 128 {
                u128::from(numerator > 0)
            } else {
                numerator.div_ceil(1u128 << shift)
            };
            prop_assert_eq!(ceil_nanos(seconds), expected);
            // And the rounding is never more than a nanosecond.
            let approx = seconds * 1e9;
            prop_assert!((ceil_nanos(seconds) as f64 - approx).abs() <= 1.0 + approx * 1e-15);
        }
    }
}
