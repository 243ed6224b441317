//! The lines an operator relies on, captured from the `log` crate: a key server that fails is
//! a warning with its reason (throttled), keys loaded or rotated are info lines, refusals are
//! debug lines; and no line, at any level, carries a token or a secret.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{CalloutResult, Decision};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::RecordedMetrics;
use filter_core::request::Request;
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use jwt_auth::{JwtAuth, JwtStream};
use log::{Level, LevelFilter};
use serde_json::{Value, json};
use testkit::logs::{Line, capture, texts};
use testkit::{Alg, Key, b64, jwks};

/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

struct World {
    filter: JwtAuth,
    store: MemStore,
    metrics: RecordedMetrics,
}

impl World {
    fn new(config: Value) -> Self {
        Self {
            filter: JwtAuth::new(parse(config.to_string().as_bytes()).unwrap()).unwrap(),
            store: MemStore::new(),
            metrics: RecordedMetrics::default(),
        }
    }

    fn env(&self, secs: u64) -> Env<'_> {
        Env {
            now: Time::from_secs(secs).into(),
            store: &self.store,
            metrics: &self.metrics,
            verifier: &NoNativeVerifier,
            random: &filter_core::random::Fixed(0),
        }
    }

    /// Ticks at `secs` and answers every fetch the tick starts with `answer`.
    fn tick(&self, secs: u64, answer: impl Fn() -> CalloutResult) {
        let env = self.env(secs);
        for callout in self.filter.on_tick(&env) {
            self.filter.on_callout_response(callout.tag, answer(), &env);
        }
    }

    fn request(&self, request: &Request, secs: u64) -> Decision {
        self.filter
            .on_request(&mut JwtStream::default(), request, &self.env(secs))
    }
}

fn remote_config() -> Value {
    json!({
        "providers": { "idp": {
            "issuer": "https://issuer.example",
            "algorithms": ["EdDSA"],
            "remote_jwks": { "cluster": "jwks", "path": "/jwks.json", "timeout": "1s" },
        } },
        "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
    })
}

fn status(code: u16) -> CalloutResult {
    CalloutResult::Response {
        status: Some(code),
        headers: vec![],
        body: vec![],
    }
}

fn keys(keys: &[&Key]) -> CalloutResult {
    CalloutResult::Response {
        status: Some(200),
        headers: vec![],
        body: jwks(keys).into_bytes(),
    }
}

#[test]
fn a_failing_key_server_is_a_warning_with_its_reason_once_a_minute() {
    let w = World::new(remote_config());
    // The key server answers 500 for 70 s; holding no key, the provider retries every second.
    let ((), lines) = capture(LevelFilter::Info, || {
        for s in 0..70 {
            w.tick(NOW + s, || status(500));
        }
    });
    assert_eq!(w.metrics.value(filter_core::metrics::MetricId(9)), 70);
    assert_eq!(
        lines,
        [
            Line {
                level: Level::Warn,
                text: "jwt_auth: provider idp: fetching keys from cluster jwks failed: \
                       the key server answered 500"
                    .to_owned(),
            },
            Line {
                level: Level::Warn,
                text: "jwt_auth: provider idp: fetching keys from cluster jwks failed: \
                       the key server answered 500 (59 similar lines dropped in the last 60s)"
                    .to_owned(),
            },
        ]
    );
}

#[test]
fn transport_failures_and_bad_documents_say_why() {
    for (answer, why) in [
        (
            CalloutResult::Failed("no response (timed out, reset or refused)".to_owned()),
            "no response (timed out, reset or refused)",
        ),
        (
            CalloutResult::Response {
                status: Some(200),
                headers: vec![],
                body: b"<html>".to_vec(),
            },
            "JWKS is not valid JSON",
        ),
    ] {
        let w = World::new(remote_config());
        let ((), lines) = capture(LevelFilter::Warn, || w.tick(NOW, || answer.clone()));
        assert_eq!(
            texts(&lines),
            [format!(
                "jwt_auth: provider idp: fetching keys from cluster jwks failed: {why}"
            )]
        );
    }
}

#[test]
fn keys_loaded_and_rotated_are_info_lines_and_an_unchanged_refresh_is_silent() {
    let w = World::new(remote_config());
    let (k1, k2) = (
        Key::generate(Alg::EdDSA, "k1"),
        Key::generate(Alg::EdDSA, "k2"),
    );
    let ((), lines) = capture(LevelFilter::Info, || {
        w.tick(NOW, || keys(&[&k1]));
        // Refreshed at 80% of the default cache duration (10 min): the same keys, then new ones.
        w.tick(NOW + 480, || keys(&[&k1]));
        w.tick(NOW + 960, || keys(&[&k1, &k2]));
    });
    assert_eq!(
        lines,
        [
            Line {
                level: Level::Info,
                text: "jwt_auth: provider idp: keys loaded (kid k1)".to_owned()
            },
            Line {
                level: Level::Info,
                text: "jwt_auth: provider idp: key set rotated (kid now k1, k2)".to_owned()
            },
        ]
    );
}

#[test]
fn refusals_are_debug_lines_off_by_default() {
    let w = World::new(json!({
        "providers": { "idp": {
            "issuer": "https://issuer.example",
            "algorithms": ["HS256"],
            "local_jwks": { "inline": jwks(&[&Key::generate(Alg::HS256, "k1")]) },
        } },
        "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
    }));
    let no_token = Request::new("GET", "/");
    let (_, at_info) = capture(LevelFilter::Info, || w.request(&no_token, NOW));
    assert_eq!(at_info, []);
    let (_, at_debug) = capture(LevelFilter::Debug, || w.request(&no_token, NOW));
    assert_eq!(
        at_debug,
        [Line {
            level: Level::Debug,
            text: "jwt_auth: refused with 401: no token".to_owned()
        }]
    );
}

/// Every form in which a credential could leak into a line: the token, each of its segments, the
/// raw secret and its base64url (the JWK's `k`).
fn assert_no_secret(lines: &[Line], token: &str, secret: &[u8]) {
    let mut needles: Vec<String> = token.split('.').map(str::to_owned).collect();
    needles.push(token.to_owned());
    needles.push(b64(secret));
    needles.push(String::from_utf8_lossy(secret).into_owned());
    for line in lines {
        for needle in &needles {
            assert!(
                needle.len() < 8 || !line.text.contains(needle.as_str()),
                "a log line carries a credential ({needle}): {line}"
            );
        }
    }
}

#[test]
fn no_line_carries_a_token_or_a_secret() {
    // A printable secret, so that a leak of its raw bytes would show in a line too.
    let secret = b"correct-horse-battery-staple-0123456789-abcdef".to_vec();
    let key = Key::hmac_with_secret(Alg::HS256, "k1", &secret);
    let impostor = Key::hmac_with_secret(
        Alg::HS256,
        "k1",
        b"another-secret-of-enough-length-9876543210",
    );
    let config = json!({
        "providers": {
            "idp": {
                "issuer": "https://issuer.example",
                "audiences": ["api"],
                "algorithms": ["HS256"],
                "local_jwks": { "inline": jwks(&[&key]) },
            },
            "far": {
                "issuer": "https://far.example",
                "algorithms": ["EdDSA"],
                "remote_jwks": { "cluster": "jwks", "path": "/jwks.json", "timeout": "1s" },
            },
        },
        "rules": [
            { "match": { "prefix": "/admin" }, "requires": { "provider": "idp", "scopes": ["admin"] } },
            { "match": { "prefix": "/far" }, "requires": { "provider": "far" } },
            { "match": { "prefix": "/" }, "requires": { "provider": "idp" } },
        ],
    });
    let w = World::new(config);
    let claims = |extra: Value| {
        let mut c = json!({ "iss": "https://issuer.example", "aud": "api", "sub": "alice",
                            "exp": NOW + 600, "iat": NOW - 10, "scope": "read" });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let good = key.sign(&claims(json!({})));
    let tokens = [
        good.clone(),
        key.sign(&claims(json!({ "exp": NOW - 3600 }))),
        key.sign(&claims(json!({ "aud": "elsewhere" }))),
        key.sign(&claims(json!({ "iss": "https://evil.example" }))),
        impostor.sign(&claims(json!({}))),
        key.sign_with_header(
            &json!({ "alg": "HS256", "kid": "unknown" }),
            &claims(json!({})),
        ),
        key.sign_with_header(
            &json!({ "alg": "HS256", "kid": "k1", "crit": ["x"] }),
            &claims(json!({})),
        ),
        // The token cut short, and with junk after it.
        good[..good.len() - 5].to_owned(),
        format!("{good}.{good}"),
    ];
    for token in &tokens {
        let ((), lines) = capture(LevelFilter::Trace, || {
            for path in ["/", "/admin", "/far"] {
                let bearer = Request::new("GET", path)
                    .with_header("authorization", format!("Bearer {token}"));
                w.request(&bearer, NOW);
                let basic = Request::new("GET", path)
                    .with_header("authorization", format!("Basic {token}"));
                w.request(&basic, NOW);
                let twice = Request::new("GET", format!("{path}?access_token={token}"))
                    .with_header("authorization", format!("Bearer {token}"));
                w.request(&twice, NOW);
            }
        });
        assert!(!lines.is_empty(), "refusals are logged at debug level");
        assert_no_secret(&lines, token, &secret);
    }
    // A key server that answers with the secret in a body it should not have: every failure
    // line names what was wrong, never the body.
    let leaky_bodies = [
        format!(r#"{{"keys": "{}"}}"#, b64(&secret)),
        jwks(&[&key]),
        format!("not json {}", String::from_utf8_lossy(&secret)),
    ];
    let ((), lines) = capture(LevelFilter::Trace, || {
        for (i, body) in leaky_bodies.iter().enumerate() {
            // Past the previous failure's backoff (at most 8 s here) and its line's throttle.
            w.tick(NOW + 100 * i as u64, || CalloutResult::Response {
                status: Some(200),
                headers: vec![("www-authenticate".to_owned(), good.clone())],
                body: body.clone().into_bytes(),
            });
        }
    });
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_no_secret(&lines, &good, &secret);
}
