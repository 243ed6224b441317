//! Finding a provider's token in a request, and taking it out again.
//!
//! RFC 6750 §2: a client must not send a token in more than one way, so a token found in two
//! places (or two `authorization` fields, or comma-joined credentials) is a malformed request
//! (400), not two chances to pass.

use crate::config::Source;
use filter_core::decision::HeaderEdits;
use filter_core::request::RequestView;
use std::borrow::Cow;

/// What a provider found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'r> {
    /// No token in any of its places.
    Nothing,
    /// Exactly one token.
    Token {
        /// The token text (borrowed from the request unless it had to be decoded).
        token: Cow<'r, str>,
        /// Where it was: the index of its source among those searched.
        source: usize,
    },
    /// Tokens in several places, or a credential that is not one token.
    Malformed,
}

/// The bytes of RFC 6750's `b64token` (before its trailing `=`s), as a table: the check runs
/// over every byte of every token on every request, cache hit or not.
const B64TOKEN_BYTES: [bool; 256] = b64token_table();

// Indexing in a const fn: an out-of-range index would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
const fn b64token_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
}

/// RFC 6750 `b64token`: what may follow `Bearer `.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| B64TOKEN_BYTES.get(usize::from(b)) == Some(&true))
}

/// Looks for a token in each of `sources`.
pub fn find<'r>(request: &'r dyn RequestView, sources: &[Source]) -> Found<'r> {
    find_known(request, sources, &|_| false)
}

/// [`find`], trusting the form of tokens `known` vouches for (ones the cache holds, which
/// passed the check when they were verified): the check reads every byte of a token of
/// several hundred, the largest cost of a cache hit.
pub fn find_known<'r>(
    request: &'r dyn RequestView,
    sources: &[Source],
    known: &dyn Fn(&str) -> bool,
) -> Found<'r> {
    let mut found: Option<(Cow<'r, str>, usize)> = None;
    for (at, source) in sources.iter().enumerate() {
        for candidate in candidates(request, source, known) {
            let Some(token) = candidate else {
                return Found::Malformed;
            };
            if found.is_some() {
                return Found::Malformed;
            }
            found = Some((token, at));
        }
    }
    match found {
        Some((token, source)) => Found::Token { token, source },
        None => Found::Nothing,
    }
}

/// The tokens `source` holds: `Some(token)` for each well-formed one, `None` for a value that
/// claims to carry a token but does not hold exactly one.
fn candidates<'r>(
    request: &'r dyn RequestView,
    source: &Source,
    known: &dyn Fn(&str) -> bool,
) -> Vec<Option<Cow<'r, str>>> {
    let well_formed = |token: &str| known(token) || is_b64token(token);
    match source {
        Source::Header { name, prefix } => request
            .header_values(name)
            .into_iter()
            .filter_map(|value| after_prefix(value, prefix))
            .map(|rest| well_formed(rest).then_some(Cow::Borrowed(rest)))
            .collect(),
        Source::Param(name) => query_pairs(request.path())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| well_formed(&v).then_some(Cow::Owned(v)))
            .collect(),
        Source::Cookie(name) => request
            .header_values("cookie")
            .into_iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(k, _)| k == name)
            .map(|(_, v)| well_formed(v).then_some(Cow::Borrowed(v)))
            .collect(),
    }
}

/// The credentials after a case-insensitive prefix and any further spaces (`Bearer   t`,
/// RFC 6750 §2.1 `1*SP`); `None` if the value does not start with the prefix (then it is not
/// this source's credential: `Basic ...` is no bearer token).
fn after_prefix<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = value.get(prefix.len()..)?;
    Some(rest.trim_start_matches(' ').trim_end())
}

/// The query string's `key=value` pairs, percent-decoded.
fn query_pairs(path: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The edits that take the token out of the request before it goes upstream (`forward:
/// false`): the header, the query parameter from `:path`, or the cookie from `cookie`.
pub fn removal(request: &dyn RequestView, source: &Source, edits: HeaderEdits) -> HeaderEdits {
    match source {
        Source::Header { name, .. } => edits.remove(name.clone()),
        Source::Param(name) => {
            let path = request.path();
            let Some((base, query)) = path.split_once('?') else {
                return edits;
            };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    percent_decode(key) != *name
                })
                .collect();
            let rebuilt = if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            edits.set(":path", rebuilt)
        }
        Source::Cookie(name) => {
            let kept: Vec<&str> = request
                .header_values("cookie")
                .into_iter()
                .flat_map(|header| header.split(';'))
                .map(str::trim)
                .filter(|pair| {
                    !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name)
                })
                .collect();
            if kept.is_empty() {
                edits.remove("cookie")
            } else {
                edits.set("cookie", kept.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::request::Request;

    fn bearer() -> Vec<Source> {
        vec![Source::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }]
    }

    fn token(t: &str) -> Found<'_> {
        Found::Token {
            token: t.into(),
            source: 0,
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_allows_several_spaces() {
        let r = |v: &str| Request::new("GET", "/").with_header("authorization", v);
        assert_eq!(find(&r("Bearer a.b.c"), &bearer()), token("a.b.c"));
        assert_eq!(find(&r("bearer a.b.c"), &bearer()), token("a.b.c"));
        assert_eq!(find(&r("BEARER    a.b.c"), &bearer()), token("a.b.c"));
    }

    #[test]
    fn other_schemes_are_no_token_and_junk_is_malformed() {
        let r = |v: &str| Request::new("GET", "/").with_header("authorization", v);
        assert_eq!(find(&r("Basic dXNlcjpwYXNz"), &bearer()), Found::Nothing);
        assert_eq!(find(&Request::new("GET", "/"), &bearer()), Found::Nothing);
        assert_eq!(
            find(&r("Bearer a.b.c, Bearer d.e.f"), &bearer()),
            Found::Malformed
        );
        assert_eq!(find(&r("Bearer a b"), &bearer()), Found::Malformed);
        assert_eq!(find(&r("Bearer "), &bearer()), Found::Malformed);
    }

    #[test]
    fn two_authorization_fields_or_two_places_are_malformed() {
        let two = Request::new("GET", "/")
            .with_header("authorization", "Bearer a.b.c")
            .with_header("authorization", "Bearer a.b.c");
        assert_eq!(find(&two, &bearer()), Found::Malformed);
        // Envoy hands repeated `authorization` fields over joined with a comma (the Envoy
        // integration suite sends two fields and checks the 400).
        let joined =
            Request::new("GET", "/").with_header("authorization", "Bearer a.b.c,Bearer a.b.c");
        assert_eq!(find(&joined, &bearer()), Found::Malformed);
        let sources = vec![bearer()[0].clone(), Source::Param("access_token".into())];
        let both = Request::new("GET", "/x?access_token=a.b.c")
            .with_header("authorization", "Bearer a.b.c");
        assert_eq!(find(&both, &sources), Found::Malformed);
    }

    #[test]
    fn params_and_cookies() {
        let sources = vec![
            Source::Param("access_token".into()),
            Source::Cookie("session_jwt".into()),
        ];
        let by_param = Request::new("GET", "/x?a=1&access_token=a.b.c&z");
        assert_eq!(
            find(&by_param, &sources),
            Found::Token {
                token: "a.b.c".into(),
                source: 0
            }
        );
        let by_cookie =
            Request::new("GET", "/x").with_header("cookie", "theme=dark; session_jwt=a.b.c");
        assert_eq!(
            find(&by_cookie, &sources),
            Found::Token {
                token: "a.b.c".into(),
                source: 1
            }
        );
        let twice = Request::new("GET", "/x?access_token=a.b.c&access_token=d.e.f");
        assert_eq!(find(&twice, &sources), Found::Malformed);
    }

    #[test]
    fn removal_takes_out_only_the_token() {
        let r = Request::new("GET", "/x?a=1&access_token=t.t.t&b=2")
            .with_header("cookie", "a=1; jwt=t.t.t; b=2");
        let edits = removal(
            &r,
            &Source::Param("access_token".into()),
            HeaderEdits::default(),
        );
        assert_eq!(edits.set, vec![(":path".into(), "/x?a=1&b=2".to_owned())]);
        let edits = removal(&r, &Source::Cookie("jwt".into()), HeaderEdits::default());
        assert_eq!(edits.set, vec![("cookie".into(), "a=1; b=2".to_owned())]);
        let only = Request::new("GET", "/x?access_token=t.t.t");
        let edits = removal(
            &only,
            &Source::Param("access_token".into()),
            HeaderEdits::default(),
        );
        assert_eq!(edits.set, vec![(":path".into(), "/x".to_owned())]);
        let edits = removal(&r, &bearer()[0], HeaderEdits::default());
        assert_eq!(edits.remove, vec!["authorization".to_owned()]);
    }

    proptest::proptest! {
        #[test]
        fn hostile_requests_never_panic(path in ".{0,60}", auth in ".{0,60}", cookie in ".{0,60}") {
            let sources = vec![bearer()[0].clone(), Source::Param("t".into()), Source::Cookie("c".into())];
            let r = Request::new("GET", path).with_header("authorization", auth).with_header("cookie", cookie);
            let _ = find(&r, &sources);
            for s in &sources {
                let _ = removal(&r, s, HeaderEdits::default());
            }
        }
    }
}
