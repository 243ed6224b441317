//! The strict parser for compact JWS tokens (RFC 7515 §7.1): three base64url segments,
//! decoded and checked before any key is looked up or any signature verified.
//!
//! Everything that could make two parsers disagree about a token is refused rather than
//! interpreted: characters outside base64url (so a JSON-serialized JWS never reaches us),
//! padding and non-canonical base64, duplicate JSON members, unknown algorithms (`none`
//! included), critical extensions, nested or encrypted tokens, and keys carried in the token
//! itself (RFC 8725 §3.10). Errors name the reason and never echo the token.

use crate::alg::Alg;
use crate::json::{self, Json, JsonError, Limits, Object};
use std::fmt;

/// The largest decoded header or claims set we accept, in bytes.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// The longest `kid` we accept, in bytes.
pub const MAX_KID_BYTES: usize = 256;

/// Header parameters that put a key, or where to fetch one, in the attacker's hands.
const EMBEDDED_KEY_PARAMS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];
/// Header parameters that only make sense for JWE.
const JWE_PARAMS: [&str; 2] = ["zip", "enc"];

/// Which segment of the token an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The protected header (first segment).
    Header,
    /// The claims set (second segment).
    Payload,
    /// The signature (third segment).
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        })
    }
}

/// Why a token was refused. Never carries token text, so it is safe to log and to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than the configured maximum.
    TooLong,
    /// A character outside `[A-Za-z0-9_.-]`.
    BadCharset,
    /// Five segments: a JWE, which this filter does not decrypt.
    NotJws,
    /// Neither three segments (JWS) nor five (JWE).
    BadSegmentCount,
    /// A segment is empty (an unsecured token has an empty signature).
    EmptySegment,
    /// A segment is not strict, canonical, unpadded base64url.
    BadBase64(Part),
    /// The decoded header or payload is larger than [`MAX_JSON_BYTES`].
    TooLarge(Part),
    /// The decoded header or payload is not an acceptable JSON object.
    BadJson(Part, JsonError),
    /// `alg` is missing, not a string, or not exactly one of the supported names.
    UnsupportedAlg,
    /// `crit` is present: we understand no extensions (RFC 7515 §4.1.11).
    Crit,
    /// `cty` is present: nested tokens are not supported.
    Cty,
    /// `zip` or `enc` is present: those belong to JWE.
    JweHeader,
    /// `jku`, `x5u`, `jwk` or `x5c` is present: keys are never taken from the token.
    EmbeddedKey,
    /// `kid` is not a string of 1 to [`MAX_KID_BYTES`] bytes.
    BadKid,
    /// `typ` is not a string.
    BadTyp,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::TooLong => f.write_str("token too long"),
            TokenError::BadCharset => f.write_str("token has characters outside base64url"),
            TokenError::NotJws => f.write_str("token is a JWE, not a JWS"),
            TokenError::BadSegmentCount => f.write_str("token does not have three segments"),
            TokenError::EmptySegment => f.write_str("token has an empty segment"),
            TokenError::BadBase64(part) => write!(f, "{part} is not canonical base64url"),
            TokenError::TooLarge(part) => write!(f, "{part} larger than {MAX_JSON_BYTES} bytes"),
            TokenError::BadJson(part, e) => write!(f, "{part}: {e}"),
            TokenError::UnsupportedAlg => f.write_str("unsupported or missing alg"),
            TokenError::Crit => f.write_str("crit header not supported"),
            TokenError::Cty => f.write_str("cty header not supported"),
            TokenError::JweHeader => f.write_str("JWE header parameter in a JWS"),
            TokenError::EmbeddedKey => f.write_str("key embedded in the header"),
            TokenError::BadKid => write!(f, "kid must be a string of 1 to {MAX_KID_BYTES} bytes"),
            TokenError::BadTyp => f.write_str("typ must be a string"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The JOSE header parameters the filter acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The algorithm, one the filter supports.
    pub alg: Alg,
    /// The key id, 1 to [`MAX_KID_BYTES`] bytes.
    pub kid: Option<String>,
    /// The media type as sent; judging its value is the caller's policy.
    pub typ: Option<String>,
}

/// A structurally valid compact JWS. Nothing here is verified yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Token<'a> {
    /// `header_b64.payload_b64`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The checked header.
    pub header: Header,
    /// The claims set, duplicate-free.
    pub claims: Object,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Parses a compact JWS no longer than `max_bytes`, stopping at the first problem.
pub fn parse(token: &str, max_bytes: usize) -> Result<Token<'_>, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLong);
    }
    if !token.bytes().all(is_base64url_or_dot) {
        return Err(TokenError::BadCharset);
    }
    match token.split('.').count() {
        3 => {}
        5 => return Err(TokenError::NotJws),
        _ => return Err(TokenError::BadSegmentCount),
    }
    // Three segments, so both splits succeed; the fallbacks only keep this panic-free.
    let (signing_input, signature_b64) =
        token.rsplit_once('.').ok_or(TokenError::BadSegmentCount)?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(TokenError::BadSegmentCount)?;
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(TokenError::EmptySegment);
    }

    let header_bytes = decode_json_segment(header_b64, Part::Header)?;
    let payload_bytes = decode_json_segment(payload_b64, Part::Payload)?;
    let signature = decode_segment(signature_b64, Part::Signature)?;

    let header_map = json::parse_object(&header_bytes, Limits::JWT)
        .map_err(|e| TokenError::BadJson(Part::Header, e))?;
    let claims = json::parse_object(&payload_bytes, Limits::JWT)
        .map_err(|e| TokenError::BadJson(Part::Payload, e))?;
    let header = check_header(&header_map)?;

    Ok(Token {
        signing_input,
        header,
        claims,
        signature,
    })
}

/// `typ` is a media type: compared case-insensitively, with the `application/` prefix optional
/// (RFC 7515 §4.1.9). Both the configured `require_typ` and a token's `typ` go through this.
pub fn normalise_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    lower
        .strip_prefix("application/")
        .map(str::to_owned)
        .unwrap_or(lower)
}

/// Whether `typ` marks an OAuth access token (RFC 9068 §2.1).
pub fn typ_is_access_token(typ: &str) -> bool {
    normalise_typ(typ) == "at+jwt"
}

/// Whether `typ` is acceptable when the configuration asks for nothing specific: "a JWT"
/// (RFC 7519 §5.1) or "an access token" (RFC 9068).
pub fn typ_is_acceptable_default(typ: &str) -> bool {
    matches!(normalise_typ(typ).as_str(), "jwt" | "at+jwt")
}

fn is_base64url_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Decodes a header or payload, refusing oversized ones before allocating for them.
fn decode_json_segment(segment: &str, part: Part) -> Result<Vec<u8>, TokenError> {
    // Unpadded base64 yields 3 bytes per 4 characters; a remainder of 2 or 3 adds 1 or 2.
    let decoded_len = (segment.len() / 4) * 3 + (segment.len() % 4).saturating_sub(1);
    if decoded_len > MAX_JSON_BYTES {
        return Err(TokenError::TooLarge(part));
    }
    decode_segment(segment, part)
}

/// Strict base64url: the URL-safe alphabet only, no padding, and canonical trailing bits
/// (a last character whose unused bits are set is refused), so each token has exactly one
/// spelling.
fn decode_segment(segment: &str, part: Part) -> Result<Vec<u8>, TokenError> {
    crate::base64url::decode(segment).ok_or(TokenError::BadBase64(part))
}

fn check_header(header: &Object) -> Result<Header, TokenError> {
    let alg = match header.get("alg") {
        Some(Json::String(name)) => Alg::from_name(name).ok_or(TokenError::UnsupportedAlg)?,
        _ => return Err(TokenError::UnsupportedAlg),
    };
    // Any value, even `[]`, is refused: a sender that writes `crit` expects it honoured.
    if header.contains_key("crit") {
        return Err(TokenError::Crit);
    }
    if header.contains_key("cty") {
        return Err(TokenError::Cty);
    }
    if JWE_PARAMS.iter().any(|p| header.contains_key(p)) {
        return Err(TokenError::JweHeader);
    }
    if EMBEDDED_KEY_PARAMS.iter().any(|p| header.contains_key(p)) {
        return Err(TokenError::EmbeddedKey);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Json::String(kid)) if (1..=MAX_KID_BYTES).contains(&kid.len()) => Some(kid.clone()),
        Some(_) => return Err(TokenError::BadKid),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Json::String(typ)) => Some(typ.clone()),
        Some(_) => return Err(TokenError::BadTyp),
    };
    Ok(Header { alg, kid, typ })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;
    use serde_json::json;

    const MAX: usize = 8192;
    /// base64url of "sig".
    const SIG: &str = "c2ln";

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn b64_bytes(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token from raw header and payload JSON text, with the signature "sig".
    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{SIG}", b64(header), b64(payload))
    }

    fn with_header(header: &str) -> Result<Header, TokenError> {
        parse(&token(header, r#"{"sub":"a"}"#), MAX).map(|t| t.header)
    }

    #[test]
    fn parses_a_valid_token() {
        let text = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"alice","exp":1700000000}"#,
        );
        let t = parse(&text, MAX).unwrap();
        assert_eq!(
            t.header,
            Header {
                alg: Alg::RS256,
                kid: Some("k1".into()),
                typ: Some("JWT".into()),
            }
        );
        assert_eq!(t.claims.get("sub").and_then(Json::as_str), Some("alice"));
        assert_eq!(
            t.claims.get("exp").and_then(|v| match v {
                Json::Number(n) => n.as_u64(),
                _ => None,
            }),
            Some(1_700_000_000)
        );
        assert_eq!(t.signature, b"sig");
        let (input, sig) = text.rsplit_once('.').unwrap();
        assert_eq!(t.signing_input, input);
        assert_eq!(sig, SIG);
    }

    #[test]
    fn every_supported_alg_parses_and_optional_fields_may_be_absent() {
        for alg in Alg::ALL {
            let h = with_header(&format!(r#"{{"alg":"{alg}"}}"#)).unwrap();
            assert_eq!(
                h,
                Header {
                    alg,
                    kid: None,
                    typ: None
                }
            );
        }
    }

    #[test]
    fn unknown_header_parameters_are_ignored() {
        assert!(with_header(r#"{"alg":"ES256","x-custom":{"a":[1]}}"#).is_ok());
    }

    #[test]
    fn too_long_is_checked_before_anything_else() {
        let text = token(r#"{"alg":"RS256"}"#, "{}");
        assert!(parse(&text, text.len()).is_ok());
        assert_eq!(parse(&text, text.len() - 1), Err(TokenError::TooLong));
        // Even garbage is refused for length first.
        assert_eq!(parse(&"!".repeat(11), 10), Err(TokenError::TooLong));
        // A huge token.
        let huge = "A".repeat(10 * 1024 * 1024);
        assert_eq!(parse(&huge, MAX), Err(TokenError::TooLong));
    }

    #[test]
    fn characters_outside_base64url_are_refused() {
        let good = token(r#"{"alg":"RS256"}"#, "{}");
        for bad in [
            format!("{good}="),
            format!("{good}=="),
            format!("+{good}"),
            format!("/{good}"),
            format!(" {good}"),
            format!("{good}\n"),
            format!("{good}\t"),
            good.replacen('.', " .", 1),
            format!("{good}é"),
            format!("{good}\0"),
            r#"{"payload":"x","signatures":[]}"#.to_owned(),
            "Bearer abc.def.ghi".to_owned(),
        ] {
            assert_eq!(parse(&bad, MAX), Err(TokenError::BadCharset), "{bad:?}");
        }
    }

    #[test]
    fn segment_counts() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64("{}");
        assert_eq!(
            parse(&format!("{h}.{p}.{SIG}.{SIG}"), MAX),
            Err(TokenError::BadSegmentCount)
        );
        assert_eq!(
            parse(&format!("{h}.{p}.{SIG}.{SIG}.{SIG}"), MAX),
            Err(TokenError::NotJws)
        );
        // A JWE with direct encryption has an empty key segment: still "not a JWS".
        assert_eq!(
            parse(&format!("{h}..{SIG}.{SIG}.{SIG}"), MAX),
            Err(TokenError::NotJws)
        );
        for bad in [
            "",
            "abc",
            &format!("{h}.{p}"),
            &format!("{h}.{p}.{SIG}.{SIG}.{SIG}.{SIG}"),
        ] {
            assert_eq!(parse(bad, MAX), Err(TokenError::BadSegmentCount), "{bad:?}");
        }
    }

    #[test]
    fn empty_segments_are_refused() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64("{}");
        // An empty signature is the unsecured JWS shape.
        for bad in [
            format!("{h}.{p}."),
            format!("{h}..{SIG}"),
            format!(".{p}.{SIG}"),
            "..".to_owned(),
        ] {
            assert_eq!(parse(&bad, MAX), Err(TokenError::EmptySegment), "{bad:?}");
        }
    }

    #[test]
    fn base64_must_be_strict_even_below_the_charset_check() {
        // The charset check already stops these in `parse`; the decoder refuses them too.
        for bad in [
            "c2ln=", "c2lnZQ==", "ab+c", "ab/c", "c2 ln", "c2ln\n", " c2ln",
        ] {
            assert_eq!(
                decode_segment(bad, Part::Signature),
                Err(TokenError::BadBase64(Part::Signature)),
                "{bad:?}"
            );
        }
        assert_eq!(decode_segment("c2ln", Part::Signature), Ok(b"sig".to_vec()));
    }

    #[test]
    fn base64_length_one_mod_four_is_refused() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64("{}");
        assert_eq!(
            parse(&format!("{h}.{p}.c2lnA"), MAX),
            Err(TokenError::BadBase64(Part::Signature))
        );
        assert_eq!(
            parse(&format!("{h}A.{p}.{SIG}"), MAX),
            Err(TokenError::BadBase64(Part::Header))
        );
    }

    #[test]
    fn non_canonical_last_character_is_refused() {
        // "AA" is one zero byte with four unused zero bits; "AB".."AP" set them.
        assert_eq!(decode_segment("AA", Part::Signature), Ok(vec![0]));
        for bad in ["AB", "AP", "AAB", "AAD"] {
            assert_eq!(
                decode_segment(bad, Part::Signature),
                Err(TokenError::BadBase64(Part::Signature)),
                "{bad}"
            );
        }
        assert_eq!(decode_segment("AAA", Part::Signature), Ok(vec![0, 0]));
        // In a token: "c2lo" would be canonical "sih"; "c2k" is "si" and "c2l" is a
        // non-canonical spelling of the same two bytes.
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64("{}");
        assert!(parse(&format!("{h}.{p}.c2k"), MAX).is_ok());
        assert_eq!(
            parse(&format!("{h}.{p}.c2l"), MAX),
            Err(TokenError::BadBase64(Part::Signature))
        );
        // The same in the header: alter the canonical last character of a 2-mod-4 segment.
        let header = b64(r#"{"alg":"ES256"} "#);
        assert_eq!(header.len() % 4, 2, "{header}");
        let mut altered = header.clone();
        let last = altered.pop().unwrap();
        let (i, _) = base64_alphabet()
            .char_indices()
            .find(|(_, c)| *c == last)
            .unwrap();
        altered.push(base64_alphabet().chars().nth(i + 1).unwrap());
        assert!(parse(&format!("{header}.{p}.{SIG}"), MAX).is_ok());
        assert_eq!(
            parse(&format!("{altered}.{p}.{SIG}"), MAX),
            Err(TokenError::BadBase64(Part::Header))
        );
    }

    fn base64_alphabet() -> &'static str {
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    }

    #[test]
    fn decoded_json_is_limited_to_16_kib() {
        let big = |n: usize| format!(r#"{{"alg":"RS256","pad":"{}"}}"#, "a".repeat(n));
        let overhead = big(0).len();
        let at_limit = big(MAX_JSON_BYTES - overhead);
        assert_eq!(at_limit.len(), MAX_JSON_BYTES);
        assert!(parse(&token(&at_limit, "{}"), 1 << 20).is_ok());
        let over = big(MAX_JSON_BYTES - overhead + 1);
        assert_eq!(
            parse(&token(&over, "{}"), 1 << 20),
            Err(TokenError::TooLarge(Part::Header))
        );
        let payload = format!(r#"{{"pad":"{}"}}"#, "a".repeat(MAX_JSON_BYTES));
        assert_eq!(
            parse(&token(r#"{"alg":"RS256"}"#, &payload), 1 << 20),
            Err(TokenError::TooLarge(Part::Payload))
        );
    }

    #[test]
    fn header_and_payload_must_be_strict_json_objects() {
        let hdr = r#"{"alg":"RS256"}"#;
        assert_eq!(
            parse(&token(r#"{"alg":"RS256","alg":"none"}"#, "{}"), MAX),
            Err(TokenError::BadJson(
                Part::Header,
                JsonError::DuplicateMember
            ))
        );
        assert_eq!(
            parse(&token(r#"{"alg":"RS256","\u0061lg":"RS256"}"#, "{}"), MAX),
            Err(TokenError::BadJson(
                Part::Header,
                JsonError::DuplicateMember
            ))
        );
        assert_eq!(
            parse(&token(hdr, r#"{"exp":1,"exp":2}"#), MAX),
            Err(TokenError::BadJson(
                Part::Payload,
                JsonError::DuplicateMember
            ))
        );
        assert_eq!(
            parse(&token(hdr, "[]"), MAX),
            Err(TokenError::BadJson(Part::Payload, JsonError::NotObject))
        );
        assert_eq!(
            parse(&token(hdr, "{} {}"), MAX),
            Err(TokenError::BadJson(Part::Payload, JsonError::TrailingData))
        );
        assert!(matches!(
            parse(&token(hdr, r#"{"sub":"\ud800"}"#), MAX),
            Err(TokenError::BadJson(Part::Payload, JsonError::Syntax { .. }))
        ));
        let deep = format!(
            "{}{}",
            r#"{"a":"#.repeat(16),
            "{}".to_owned() + &"}".repeat(16)
        );
        assert_eq!(
            parse(&token(hdr, &deep), MAX),
            Err(TokenError::BadJson(Part::Payload, JsonError::TooDeep))
        );
        let members: Vec<String> = (0..65).map(|i| format!(r#""c{i}":0"#)).collect();
        assert_eq!(
            parse(&token(hdr, &format!("{{{}}}", members.join(","))), MAX),
            Err(TokenError::BadJson(
                Part::Payload,
                JsonError::TooManyMembers
            ))
        );
        // Non-UTF-8 payload.
        let text = format!(
            "{}.{}.{SIG}",
            b64(hdr),
            b64_bytes(b"{\"sub\":\"\xff\xfe\"}")
        );
        assert_eq!(
            parse(&text, MAX),
            Err(TokenError::BadJson(Part::Payload, JsonError::NotUtf8))
        );
        // Header JSON is checked before the payload.
        assert_eq!(
            parse(&token("[]", "[]"), MAX),
            Err(TokenError::BadJson(Part::Header, JsonError::NotObject))
        );
    }

    #[test]
    fn alg_must_be_exactly_a_supported_name() {
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"nOnE"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"none "}"#,
            r#"{"alg":" none"}"#,
            r#"{"alg":"\u006eone"}"#,
            r#"{"alg":"rs256"}"#,
            r#"{"alg":"RS256 "}"#,
            r#"{"alg":"RS256\u0000"}"#,
            r#"{"alg":"ES521"}"#,
            r#"{"alg":""}"#,
            r#"{"alg":null}"#,
            r#"{"alg":["RS256"]}"#,
            r#"{"alg":{"RS256":1}}"#,
            r#"{"alg":256}"#,
            r#"{"kid":"k"}"#,
            "{}",
        ] {
            assert_eq!(
                with_header(header),
                Err(TokenError::UnsupportedAlg),
                "{header}"
            );
        }
        // An escaped spelling of a supported name is the same name.
        assert_eq!(
            with_header(r#"{"alg":"\u0052S256"}"#).unwrap().alg,
            Alg::RS256
        );
    }

    #[test]
    fn crit_in_any_form_is_refused() {
        for crit in [r#"[]"#, r#"["exp"]"#, r#"["x"]"#, r#""x""#, "null", "{}"] {
            let header = format!(r#"{{"alg":"RS256","crit":{crit}}}"#);
            assert_eq!(with_header(&header), Err(TokenError::Crit), "{header}");
        }
    }

    #[test]
    fn cty_zip_enc_are_refused() {
        assert_eq!(
            with_header(r#"{"alg":"RS256","cty":"JWT"}"#),
            Err(TokenError::Cty)
        );
        assert_eq!(
            with_header(r#"{"alg":"RS256","cty":null}"#),
            Err(TokenError::Cty)
        );
        assert_eq!(
            with_header(r#"{"alg":"RS256","zip":"DEF"}"#),
            Err(TokenError::JweHeader)
        );
        assert_eq!(
            with_header(r#"{"alg":"RS256","enc":"A128GCM"}"#),
            Err(TokenError::JweHeader)
        );
    }

    #[test]
    fn embedded_keys_are_refused() {
        for param in [
            r#""jku":"https://evil.example/jwks""#,
            r#""x5u":"https://evil.example/cert""#,
            r#""jwk":{"kty":"oct","k":"AAAA"}"#,
            r#""x5c":["MIIB"]"#,
            r#""jwk":null"#,
        ] {
            let header = format!(r#"{{"alg":"HS256",{param}}}"#);
            assert_eq!(
                with_header(&header),
                Err(TokenError::EmbeddedKey),
                "{header}"
            );
        }
    }

    #[test]
    fn kid_must_be_a_short_non_empty_string() {
        let kid = |k: &str| with_header(&format!(r#"{{"alg":"RS256","kid":{k}}}"#));
        assert_eq!(kid(r#""a""#).unwrap().kid.as_deref(), Some("a"));
        let max = "k".repeat(MAX_KID_BYTES);
        assert_eq!(kid(&format!(r#""{max}""#)).unwrap().kid, Some(max));
        // 256 bytes of 2-byte characters is 128 characters; 129 of them exceed the limit.
        assert!(kid(&format!(r#""{}""#, "é".repeat(128))).is_ok());
        assert_eq!(
            kid(&format!(r#""{}""#, "é".repeat(129))),
            Err(TokenError::BadKid)
        );
        assert_eq!(
            kid(&format!(r#""{}""#, "k".repeat(300))),
            Err(TokenError::BadKid)
        );
        assert_eq!(
            kid(&format!(r#""{}""#, "k".repeat(257))),
            Err(TokenError::BadKid)
        );
        for bad in [r#""""#, "1", "null", r#"["a"]"#, r#"{"a":1}"#, "true"] {
            assert_eq!(kid(bad), Err(TokenError::BadKid), "{bad}");
        }
    }

    #[test]
    fn typ_must_be_a_string_and_is_passed_through() {
        let typ = |t: &str| with_header(&format!(r#"{{"alg":"RS256","typ":{t}}}"#));
        assert_eq!(typ(r#""at+JWT""#).unwrap().typ.as_deref(), Some("at+JWT"));
        // Policy on the value is the caller's: an odd one still parses.
        assert_eq!(typ(r#""weird""#).unwrap().typ.as_deref(), Some("weird"));
        for bad in ["1", "null", r#"["JWT"]"#, r#"{}"#, "false"] {
            assert_eq!(typ(bad), Err(TokenError::BadTyp), "{bad}");
        }
    }

    #[test]
    fn typ_helpers() {
        for yes in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            assert!(typ_is_access_token(yes), "{yes}");
            assert!(typ_is_acceptable_default(yes), "{yes}");
        }
        for yes in ["JWT", "jwt", "Jwt", "application/jwt"] {
            assert!(!typ_is_access_token(yes), "{yes}");
            assert!(typ_is_acceptable_default(yes), "{yes}");
        }
        for no in [
            "",
            "at+jwt ",
            "at-jwt",
            "JWS",
            "jose",
            "application/jose+json",
            "JWT2",
        ] {
            assert!(!typ_is_access_token(no), "{no}");
            assert!(!typ_is_acceptable_default(no), "{no}");
        }
    }

    #[test]
    fn header_checks_run_in_order() {
        // alg first, then crit, cty, JWE fields, embedded keys, kid, typ.
        let h = |s: &str| with_header(s);
        assert_eq!(
            h(r#"{"alg":"none","crit":[]}"#),
            Err(TokenError::UnsupportedAlg)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","crit":[],"cty":"x"}"#),
            Err(TokenError::Crit)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","cty":"x","zip":"DEF"}"#),
            Err(TokenError::Cty)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","enc":"x","jwk":{}}"#),
            Err(TokenError::JweHeader)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","jku":"x","kid":1}"#),
            Err(TokenError::EmbeddedKey)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","kid":1,"typ":1}"#),
            Err(TokenError::BadKid)
        );
    }

    #[test]
    fn errors_never_echo_the_token() {
        let marker = "SECRETMARKER";
        let cases = [
            format!("{marker}!"),
            format!("{marker}.{marker}.{marker}"),
            token(&format!(r#"{{"alg":"{marker}"}}"#), "{}"),
            token(
                r#"{"alg":"RS256"}"#,
                &format!(r#"{{"{marker}":1,"{marker}":2}}"#),
            ),
            token(r#"{"alg":"RS256"}"#, &format!(r#"{{"{marker}" 1}}"#)),
        ];
        for text in cases {
            let err = parse(&text, MAX).unwrap_err();
            assert!(!err.to_string().contains(marker), "{err}");
            assert!(!format!("{err:?}").contains(marker), "{err:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(s in any::<String>()) {
            let _ = parse(&s, MAX);
        }

        #[test]
        fn never_panics_on_base64url_shaped_strings(s in "[A-Za-z0-9_.-]{0,300}") {
            let _ = parse(&s, MAX);
        }

        #[test]
        fn never_panics_on_arbitrary_segments(
            h in proptest::collection::vec(any::<u8>(), 0..256),
            p in proptest::collection::vec(any::<u8>(), 0..256),
            s in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let text = format!("{}.{}.{}", b64_bytes(&h), b64_bytes(&p), b64_bytes(&s));
            let _ = parse(&text, MAX);
        }

        #[test]
        fn never_panics_on_json_like_segments(
            h in r#"[{}\[\]":,\\a-z0-9 ]{0,64}"#,
            p in r#"[{}\[\]":,\\a-z0-9 ]{0,64}"#,
        ) {
            let _ = parse(&token(&h, &p), MAX);
            let _ = parse(&token(&format!(r#"{{"alg":"ES256",{h}}}"#), &p), MAX);
        }

        #[test]
        fn valid_tokens_round_trip(
            sub in "[ -~]{0,40}",
            exp in any::<u32>(),
            kid in "[a-zA-Z0-9]{1,20}",
            sig in proptest::collection::vec(any::<u8>(), 1..128),
        ) {
            let header = json!({"alg": "EdDSA", "kid": kid}).to_string();
            let payload = json!({"sub": sub, "exp": exp}).to_string();
            let text = format!("{}.{}.{}", b64(&header), b64(&payload), b64_bytes(&sig));
            let t = parse(&text, MAX).unwrap();
            prop_assert_eq!(t.header.alg, Alg::EdDSA);
            prop_assert_eq!(t.header.kid, Some(kid));
            prop_assert_eq!(t.claims.get("sub").and_then(Json::as_str), Some(sub.as_str()));
            prop_assert_eq!(t.signature, sig);
        }
    }
}
