//! The whole JWT pipeline through the `Filter` trait, on a fixed clock: configuration,
//! extraction, verification, claims, rules, and the responses (the J1 to J39 checklist cases
//! that do not need a network; the remote-JWKS cases live in the Envoy integration suite).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{Decision, HeaderEdits, LocalResponse};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::RecordedMetrics;
use filter_core::request::Request;
use filter_core::store::MemStore;
use filter_core::time::Time;
use jwt_auth::JwtAuth;
use serde_json::{Value, json};
use testkit::{Alg, Key, b64, jwks};

/// 2026-01-01T00:00:00Z: the fake "now" of every test.
const NOW: u64 = 1_767_225_600;

struct Setup {
    filter: JwtAuth,
}

fn filter(config: Value) -> JwtAuth {
    JwtAuth::new(parse(config.to_string().as_bytes()).expect("config parses"))
        .unwrap_or_else(|e| panic!("config refused: {e}"))
}

fn config_error(config: Value) -> String {
    let parsed = parse(config.to_string().as_bytes());
    match parsed {
        Err(e) => e.to_string(),
        Ok(c) => JwtAuth::new(c)
            .expect_err("config should be refused")
            .to_string(),
    }
}

/// One provider `idp` with `keys`, and one rule protecting everything.
fn provider(keys: &[&Key], algorithms: &[&str]) -> Value {
    json!({
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "algorithms": algorithms,
        "local_jwks": { "inline": jwks(keys) },
    })
}

fn protect_all(provider: Value) -> Setup {
    Setup {
        filter: filter(json!({
            "providers": { "idp": provider },
            "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
        })),
    }
}

fn claims() -> Value {
    json!({ "iss": "https://issuer.example", "aud": "api", "sub": "alice", "exp": NOW + 600, "iat": NOW - 10 })
}

impl Setup {
    fn run_at(&self, request: &Request, now: Time) -> Decision {
        let metrics = RecordedMetrics::default();
        let env = Env {
            now: now.into(),
            store: &MemStore::new(),
            metrics: &metrics,
            verifier: &filter_core::signature::NoNativeVerifier,
            random: &filter_core::random::Fixed(0),
        };
        self.filter
            .on_request(&mut jwt_auth::JwtStream::default(), request, &env)
    }

    fn run(&self, request: &Request) -> Decision {
        self.run_at(request, Time::from_secs(NOW))
    }

    fn bearer(&self, token: &str) -> Decision {
        self.run(&get("/").with_header("authorization", format!("Bearer {token}")))
    }
}

fn get(path: &str) -> Request {
    Request::new("GET", path)
}

fn passed(d: &Decision) -> &HeaderEdits {
    match d {
        Decision::Continue(edits) => &edits.headers,
        Decision::Respond(r) => panic!("refused with {} ({}): {:?}", r.status, r.detail, r.headers),
        Decision::Wait | Decision::Call(_) => panic!("held, not let through"),
    }
}

fn refused(d: &Decision) -> &LocalResponse {
    match d {
        Decision::Respond(r) => r,
        Decision::Continue(edits) => panic!("let through: {edits:?}"),
        Decision::Wait | Decision::Call(_) => panic!("held, not answered"),
    }
}

fn challenge(r: &LocalResponse) -> &str {
    r.headers
        .iter()
        .find(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .expect("a WWW-Authenticate header")
}

fn assert_invalid(d: &Decision) {
    let r = refused(d);
    assert_eq!(r.status, 401, "{}", r.detail);
    assert!(
        challenge(r).contains("error=\"invalid_token\""),
        "{}",
        challenge(r)
    );
}

/// Signs with an arbitrary header and payload (both given as raw JSON text).
fn sign_raw(key: &Key, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    format!("{input}.{}", b64(&key.signature(input.as_bytes())))
}

// === algorithms ===

#[test]
fn every_supported_algorithm_verifies() {
    for alg in testkit::Alg::ALL {
        let key = Key::generate(alg, "k1");
        let setup = protect_all(provider(&[&key], &[alg.name()]));
        let d = setup.bearer(&key.sign(&claims()));
        passed(&d);
    }
}

#[test]
fn j1_none_in_any_spelling_is_refused() {
    let key = Key::generate(Alg::RS256, "k1");
    let setup = protect_all(provider(&[&key], &["RS256"]));
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "nOnE", "none ", "\\u006eone"] {
        let header = b64(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").as_bytes());
        assert_invalid(&setup.bearer(&format!("{header}.{payload}.")));
        // Even with something in the signature segment.
        assert_invalid(&setup.bearer(&format!("{header}.{payload}.AAAA")));
    }
    assert!(
        config_error(json!({ "providers": { "idp": provider(&[&key], &["none"]) } }))
            .contains("providers.idp.algorithms[0]: unknown algorithm \"none\"")
    );
}

#[test]
fn j2_hmac_signed_with_the_public_key_is_refused() {
    let rsa = Key::generate(Alg::RS256, "k1");
    let forged = Key::hmac_with_secret(Alg::HS256, "k1", &rsa.confusion_secret());
    // The provider allows only RS256...
    let setup = protect_all(provider(&[&rsa], &["RS256"]));
    assert_invalid(&setup.bearer(&forged.sign(&claims())));
    // ...and even allowing HS256 cannot make an RSA key an HMAC secret.
    let setup = protect_all(provider(&[&rsa], &["RS256", "HS256"]));
    assert_invalid(&setup.bearer(&forged.sign(&claims())));
}

#[test]
fn j3_the_allowlist_binds_keys_without_alg() {
    let key = Key::generate(Alg::RS256, "k1");
    let mut jwk = key.jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let doc = json!({ "keys": [jwk] }).to_string();
    let setup = protect_all(json!({
        "issuer": "https://issuer.example", "audiences": ["api"], "algorithms": ["PS256"],
        "local_jwks": { "inline": doc },
    }));
    // Signed RS256 with the right key, but RS256 is not allowed: refused.
    assert_invalid(&setup.bearer(&key.sign(&claims())));
    // The same key under the allowed algorithm passes.
    passed(&setup.bearer(&key.as_alg(Alg::PS256).sign(&claims())));
}

#[test]
fn j4_j5_bad_ecdsa_signatures_are_refused() {
    let key = Key::generate(Alg::ES256, "k1");
    let setup = protect_all(provider(&[&key], &["ES256"]));
    let token = key.sign(&claims());
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_invalid(&setup.bearer(&format!("{input}.{}", b64(&[0u8; 64]))));
    assert_invalid(&setup.bearer(&format!("{input}.{}", b64(&[0u8; 63]))));
    let mut long = key.signature(input.as_bytes());
    long.push(0);
    assert_invalid(&setup.bearer(&format!("{input}.{}", b64(&long))));
}

#[test]
fn j6_embedded_keys_and_key_urls_are_refused() {
    let key = Key::generate(Alg::ES256, "k1");
    let setup = protect_all(provider(&[&key], &["ES256"]));
    for extra in [
        json!({ "jwk": key.jwk() }),
        json!({ "jku": "https://attacker.example/jwks" }),
        json!({ "x5u": "https://attacker.example/cert" }),
        json!({ "x5c": ["MIIB"] }),
    ] {
        let mut header = json!({ "alg": "ES256", "kid": "k1" });
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_invalid(&setup.bearer(&key.sign_with_header(&header, &claims())));
    }
}

#[test]
fn j7_hostile_kids_are_opaque_and_bounded() {
    let key = Key::generate(Alg::EdDSA, "k1");
    let setup = protect_all(provider(&[&key], &["EdDSA"]));
    for kid in ["../../dev/null", "' OR 1=1 --", &"k".repeat(300), "k1\u{0}"] {
        let header = json!({ "alg": "EdDSA", "kid": kid });
        assert_invalid(&setup.bearer(&key.sign_with_header(&header, &claims())));
    }
}

#[test]
fn j9_short_hmac_secrets_are_a_configuration_error() {
    let short = Key::hmac_with_secret(Alg::HS256, "k1", b"0123456789");
    let err = config_error(json!({ "providers": { "idp": provider(&[&short], &["HS256"]) } }));
    assert!(
        err.starts_with("providers.idp.local_jwks.inline: "),
        "{err}"
    );
    assert!(err.contains("HMAC secret is 10 bytes"), "{err}");
    // 32 bytes suit HS256 but not HS512: with HS512 allowed, the configuration is refused too.
    let k32 = Key::hmac_with_secret(Alg::HS256, "k1", &[7; 32]);
    let mut jwk = k32.jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let doc = json!({ "keys": [jwk] }).to_string();
    let err = config_error(
        json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["HS256", "HS512"],
        "local_jwks": { "inline": doc } } } }),
    );
    assert!(
        err.contains("shorter than the 64 bytes HS512 needs"),
        "{err}"
    );
}

#[test]
fn j10_j11_jwe_and_json_serialization_are_refused() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    assert_invalid(&setup.bearer("eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aGVsbG8.d29ybGQ.dGFn"));
    let r = setup.run(&get("/").with_header("authorization", "Bearer {\"payload\":\"x\"}"));
    // Not a b64token at all: the request is malformed.
    assert_eq!(refused(&r).status, 400);
}

#[test]
fn j13_crit_is_refused_in_every_form() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    for crit in [json!([]), json!(["exp"]), json!(["x-unknown"]), json!("x")] {
        let header = json!({ "alg": "HS256", "kid": "k1", "crit": crit });
        assert_invalid(&setup.bearer(&key.sign_with_header(&header, &claims())));
    }
}

#[test]
fn j14_duplicate_members_are_refused() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    let payload = claims().to_string();
    let token = sign_raw(&key, r#"{"alg":"HS256","alg":"none","kid":"k1"}"#, &payload);
    assert_invalid(&setup.bearer(&token));
    let dup_exp = payload.replacen('{', &format!("{{\"exp\":{},", NOW - 100), 1);
    assert_invalid(&setup.bearer(&sign_raw(&key, r#"{"alg":"HS256","kid":"k1"}"#, &dup_exp)));
}

#[test]
fn j15_time_claims_of_the_wrong_type_are_invalid_not_absent() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    for claim in ["exp", "nbf", "iat"] {
        for bad in [
            json!("1999999999"),
            json!(true),
            json!(null),
            json!([1]),
            json!({}),
            json!(-1),
            json!(253_402_300_800u64),
        ] {
            let mut c = claims();
            c[claim] = bad.clone();
            assert_invalid(&setup.bearer(&key.sign(&c)));
        }
    }
    // 1e400 is not even representable.
    let raw = format!(
        r#"{{"iss":"https://issuer.example","aud":"api","exp":1e400,"iat":{}}}"#,
        NOW
    );
    assert_invalid(&setup.bearer(&sign_raw(&key, r#"{"alg":"HS256","kid":"k1"}"#, &raw)));
}

#[test]
fn j16_j17_time_boundaries_are_exact() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["clock_skew"] = json!("0s");
    let setup = protect_all(p);
    let at = |secs: f64| {
        let mut c = claims();
        c["exp"] = json!(secs);
        key.sign(&c)
    };
    // exp == now: expired (now must be strictly before exp).
    assert_invalid(&setup.bearer(&at(NOW as f64)));
    // A fractional exp just after now is still valid; no rounding.
    passed(&setup.bearer(&at(NOW as f64 + 0.5)));
    assert_invalid(&setup.bearer(&at(NOW as f64 - 0.5)));
    // nbf == now: valid (after or equal).
    let mut c = claims();
    c["nbf"] = json!(NOW);
    passed(&setup.bearer(&key.sign(&c)));
    c["nbf"] = json!(NOW + 1);
    assert_invalid(&setup.bearer(&key.sign(&c)));
}

#[test]
fn j18_missing_exp_is_refused_unless_allowed() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid(&protect_all(provider(&[&key], &["HS256"])).bearer(&key.sign(&c)));
    let mut p = provider(&[&key], &["HS256"]);
    p["require_expiration"] = json!(false);
    passed(&protect_all(p).bearer(&key.sign(&c)));
}

#[test]
fn j19_audience_is_required_and_exact() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    for aud in [
        json!(null),
        json!([]),
        json!([""]),
        json!([123]),
        json!("API"),
        json!(["other", 1, "api"]),
    ] {
        let mut c = claims();
        if aud.is_null() {
            c.as_object_mut().unwrap().remove("aud");
        } else {
            c["aud"] = aud;
        }
        assert_invalid(&setup.bearer(&key.sign(&c)));
    }
    let mut c = claims();
    c["aud"] = json!(["other", "api"]);
    passed(&setup.bearer(&key.sign(&c)));
}

#[test]
fn j20_issuer_is_byte_exact() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    for iss in [
        "https://issuer.example/",
        "HTTPS://issuer.example",
        "https://issuer.example ",
    ] {
        let mut c = claims();
        c["iss"] = json!(iss);
        assert_invalid(&setup.bearer(&key.sign(&c)));
    }
}

#[test]
fn j21_a_key_only_verifies_its_own_issuer() {
    let a = Key::generate(Alg::ES256, "a");
    let b = Key::generate(Alg::ES256, "b");
    let mut pa = provider(&[&a], &["ES256"]);
    pa["issuer"] = json!("https://a.example");
    let mut pb = provider(&[&b], &["ES256"]);
    pb["issuer"] = json!("https://b.example");
    let setup = Setup {
        filter: filter(json!({
            "providers": { "a": pa, "b": pb },
            "rules": [ { "match": {}, "requires": { "any": [ { "provider": "a" }, { "provider": "b" } ] } } ],
        })),
    };
    let mut c = claims();
    c["iss"] = json!("https://a.example");
    passed(&setup.bearer(&a.sign(&c)));
    // Claims issuer A, signed by B's key (with B's kid): refused by both.
    assert_invalid(&setup.bearer(&b.sign(&c)));
}

#[test]
fn j22_require_typ() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["require_typ"] = json!("at+jwt");
    let setup = protect_all(p);
    let with_typ = |typ: Option<&str>| {
        let mut header = json!({ "alg": "HS256", "kid": "k1" });
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        key.sign_with_header(&header, &claims())
    };
    passed(&setup.bearer(&with_typ(Some("at+jwt"))));
    passed(&setup.bearer(&with_typ(Some("application/AT+JWT"))));
    assert_invalid(&setup.bearer(&with_typ(Some("JWT"))));
    assert_invalid(&setup.bearer(&with_typ(None)));
    // Without require_typ, an unrelated type is still refused.
    let setup = protect_all(provider(&[&key], &["HS256"]));
    assert_invalid(&setup.bearer(&with_typ(Some("secevent+jwt"))));
    passed(&setup.bearer(&with_typ(Some("jwt"))));
}

#[test]
fn j23_weak_rsa_keys_are_never_used() {
    let weak = Key::rsa_with_bits(Alg::RS256, "weak", 1024);
    let err = config_error(json!({ "providers": { "idp": provider(&[&weak], &["RS256"]) } }));
    assert!(err.contains("no key can verify"), "{err}");
    let strong = Key::generate(Alg::RS256, "strong");
    let setup = protect_all(provider(&[&weak, &strong], &["RS256"]));
    assert_invalid(&setup.bearer(&weak.sign(&claims())));
    passed(&setup.bearer(&strong.sign(&claims())));
}

#[test]
fn j25_j27_oversized_and_non_canonical_tokens_are_refused() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    let mut c = claims();
    c["padding"] = json!("x".repeat(9000));
    assert_invalid(&setup.bearer(&key.sign(&c)));
    let token = key.sign(&claims());
    let (head, sig) = token.rsplit_once('.').unwrap();
    assert_invalid(&setup.bearer(&format!("{head}.{sig}=")));
}

#[test]
fn j28_two_credentials_are_a_bad_request() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["from_headers"] = json!([{ "name": "authorization", "value_prefix": "Bearer " }]);
    p["from_params"] = json!(["access_token"]);
    let setup = protect_all(p);
    let t = key.sign(&claims());
    let r = setup.run(
        &get(&format!("/?access_token={t}")).with_header("authorization", format!("Bearer {t}")),
    );
    let r = refused(&r);
    assert_eq!(r.status, 400);
    assert!(challenge(r).contains("error=\"invalid_request\""));
}

#[test]
fn j29_j30_bearer_scheme_handling() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    let t = key.sign(&claims());
    passed(&setup.run(&get("/").with_header("authorization", format!("bearer {t}"))));
    passed(&setup.run(&get("/").with_header("authorization", format!("Bearer   {t}"))));
    let basic = setup.run(&get("/").with_header("authorization", "Basic dXNlcjpwYXNz"));
    let r = refused(&basic);
    assert_eq!(r.status, 401);
    assert_eq!(challenge(r), "Bearer realm=\"api\"");
}

#[test]
fn j31_missing_scope_is_403_with_the_scope() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = Setup {
        filter: filter(json!({
            "providers": { "idp": provider(&[&key], &["HS256"]) },
            "rules": [ { "match": { "prefix": "/admin" }, "requires": { "provider": "idp", "scopes": ["admin"] } } ],
            "realm": "shop",
        })),
    };
    let mut c = claims();
    c["scope"] = json!("read write");
    let d = setup
        .run(&get("/admin/users").with_header("authorization", format!("Bearer {}", key.sign(&c))));
    let r = refused(&d);
    assert_eq!(r.status, 403);
    assert!(challenge(r).starts_with("Bearer realm=\"shop\", error=\"insufficient_scope\""));
    assert!(challenge(r).ends_with("scope=\"admin\""));
    c["scope"] = json!("read admin");
    passed(&setup.run(
        &get("/admin/users").with_header("authorization", format!("Bearer {}", key.sign(&c))),
    ));
    // `scp` arrays count too.
    let mut c = claims();
    c["scp"] = json!(["admin"]);
    passed(
        &setup.run(&get("/admin").with_header("authorization", format!("Bearer {}", key.sign(&c)))),
    );
}

#[test]
fn j35_identity_headers_cannot_be_spoofed_even_on_public_routes() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["claim_to_headers"] = json!([{ "claim": "sub", "header": "X-User-Id" }]);
    p["forward_payload_header"] = json!("x-jwt-payload");
    let setup = Setup {
        filter: filter(json!({
            "providers": { "idp": p },
            "rules": [
                { "match": { "prefix": "/public" } },
                { "match": { "prefix": "/" }, "requires": { "provider": "idp" } },
            ],
        })),
    };
    let forged = get("/public/x")
        .with_header("x-user-id", "admin")
        .with_header("x-jwt-payload", "e30");
    let edits = passed(&setup.run(&forged)).clone();
    assert_eq!(edits.remove, ["x-user-id", "x-jwt-payload"]);
    assert!(edits.set.is_empty());
    let t = key.sign(&claims());
    let edits = passed(
        &setup.run(
            &get("/x")
                .with_header("x-user-id", "admin")
                .with_header("authorization", format!("Bearer {t}")),
        ),
    )
    .clone();
    // Set, which replaces every forged field (the Envoy suite forges two), so not removed too.
    assert!(!edits.remove.iter().any(|n| n == "x-user-id"));
    assert!(
        edits
            .set
            .contains(&("x-user-id".into(), "alice".to_owned()))
    );
    let payload = t.split('.').nth(1).unwrap().to_owned();
    assert!(edits.set.contains(&("x-jwt-payload".into(), payload)));
}

#[test]
fn j36_clock_skew_is_the_leeway() {
    let key = Key::generate(Alg::HS256, "k1");
    let setup = protect_all(provider(&[&key], &["HS256"]));
    let mut c = claims();
    c["exp"] = json!(NOW - 30);
    passed(&setup.bearer(&key.sign(&c)));
    c["exp"] = json!(NOW - 61);
    assert_invalid(&setup.bearer(&key.sign(&c)));
    let err = config_error(
        json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["HS256"],
        "local_jwks": { "inline": jwks(&[&key]) }, "clock_skew": "301s" } } }),
    );
    assert_eq!(err, "providers.idp.clock_skew: must be at most 300s");
}

#[test]
fn j39_tokens_leave_the_request_unless_forwarded() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["from_params"] = json!(["access_token"]);
    p["from_cookies"] = json!(["session_jwt"]);
    let setup = protect_all(p);
    let t = key.sign(&claims());
    let edits = passed(&setup.run(&get(&format!("/a?x=1&access_token={t}")))).clone();
    assert_eq!(edits.set, [(":path".into(), "/a?x=1".to_owned())]);
    let edits = passed(
        &setup.run(&get("/a").with_header("cookie", format!("session_jwt={t}; theme=dark"))),
    )
    .clone();
    assert_eq!(edits.set, [("cookie".into(), "theme=dark".to_owned())]);
    let edits = passed(&setup.bearer(&t)).clone();
    assert_eq!(edits.remove, ["authorization"]);
    let mut p = provider(&[&key], &["HS256"]);
    p["forward"] = json!(true);
    let edits = passed(&protect_all(p).bearer(&t)).clone();
    assert!(edits.is_empty());
}

// === rules ===

fn routed() -> (Key, Setup) {
    let key = Key::generate(Alg::HS256, "k1");
    let mut partner = provider(&[&key], &["HS256"]);
    partner["issuer"] = json!("https://partner.example");
    let setup = Setup {
        filter: filter(json!({
            "providers": { "idp": provider(&[&key], &["HS256"]), "partner": partner },
            "rules": [
                { "match": { "prefix": "/public" } },
                { "match": { "prefix": "/optional" }, "requires": { "provider": "idp", "allow_missing": true } },
                { "match": { "prefix": "/ops" }, "requires": { "provider": "idp", "claims": { "role": ["admin", "ops"] } } },
                { "match": { "prefix": "/both" }, "requires": { "all": [ { "provider": "idp" }, { "provider": "partner" } ] } },
                { "match": { "prefix": "/api" }, "requires": { "any": [ { "provider": "idp" }, { "provider": "partner" } ] } },
            ],
        })),
    };
    (key, setup)
}

#[test]
fn the_first_matching_rule_decides_and_unmatched_requests_pass() {
    let (_, setup) = routed();
    passed(&setup.run(&get("/public/x")));
    passed(&setup.run(&get("/elsewhere")));
    assert_eq!(refused(&setup.run(&get("/api/x"))).status, 401);
}

#[test]
fn allow_missing_lets_no_token_through_but_not_a_bad_one() {
    let (key, setup) = routed();
    passed(&setup.run(&get("/optional")));
    let mut c = claims();
    c["exp"] = json!(NOW - 3600);
    assert_invalid(
        &setup.run(
            &get("/optional").with_header("authorization", format!("Bearer {}", key.sign(&c))),
        ),
    );
}

#[test]
fn claim_requirements_accept_equal_or_contained_values() {
    let (key, setup) = routed();
    let with = |role: Value| {
        let mut c = claims();
        c["role"] = role;
        setup.run(&get("/ops").with_header("authorization", format!("Bearer {}", key.sign(&c))))
    };
    passed(&with(json!("ops")));
    passed(&with(json!(["viewer", "admin"])));
    assert_eq!(refused(&with(json!("viewer"))).status, 403);
    assert_eq!(refused(&with(json!(null))).status, 403);
}

#[test]
fn any_passes_with_either_issuer() {
    let (key, setup) = routed();
    let mut c = claims();
    passed(
        &setup.run(&get("/api").with_header("authorization", format!("Bearer {}", key.sign(&c)))),
    );
    c["iss"] = json!("https://partner.example");
    passed(
        &setup.run(&get("/api").with_header("authorization", format!("Bearer {}", key.sign(&c)))),
    );
    c["iss"] = json!("https://nobody.example");
    assert_invalid(
        &setup.run(&get("/api").with_header("authorization", format!("Bearer {}", key.sign(&c)))),
    );
}

#[test]
fn all_needs_every_provider() {
    let (key, setup) = routed();
    // Both providers read the same header, so one token cannot satisfy two issuers.
    let d = setup
        .run(&get("/both").with_header("authorization", format!("Bearer {}", key.sign(&claims()))));
    assert_invalid(&d);
}

#[test]
fn claims_become_headers() {
    let key = Key::generate(Alg::HS256, "k1");
    let mut p = provider(&[&key], &["HS256"]);
    p["claim_to_headers"] = json!([
        { "claim": "sub", "header": "x-user" },
        { "claim": "n", "header": "x-n" },
        { "claim": "flag", "header": "x-flag" },
        { "claim": "groups", "header": "x-groups" },
        { "claim": "org.team", "header": "x-team" },
        { "claim": "obj", "header": "x-obj" },
        { "claim": "evil", "header": "x-evil" },
    ]);
    let setup = protect_all(p);
    let mut c = claims();
    c["n"] = json!(1337);
    c["flag"] = json!(true);
    c["groups"] = json!(["a", "b"]);
    c["org"] = json!({ "team": "core" });
    c["obj"] = json!({ "k": "v" });
    c["evil"] = json!("x\r\nset-cookie: a=b");
    let edits = passed(&setup.bearer(&key.sign(&c))).clone();
    let set: std::collections::BTreeMap<_, _> = edits.set.into_iter().collect();
    assert_eq!(set.get("x-user").map(String::as_str), Some("alice"));
    assert_eq!(set.get("x-n").map(String::as_str), Some("1337"));
    assert_eq!(set.get("x-flag").map(String::as_str), Some("true"));
    assert_eq!(set.get("x-groups").map(String::as_str), Some("a,b"));
    assert_eq!(set.get("x-team").map(String::as_str), Some("core"));
    assert!(!set.contains_key("x-obj"));
    assert!(
        !set.contains_key("x-evil"),
        "a header value with CR LF must never be set"
    );
}

// === configuration ===

#[test]
fn configuration_errors_name_the_field() {
    let key = Key::generate(Alg::HS256, "k1");
    let p = provider(&[&key], &["HS256"]);
    let cases = [
        (
            json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["HS256"] } } }),
            "providers.idp: give exactly one of `local_jwks` and `remote_jwks`",
        ),
        (
            json!({ "providers": { "idp": { "issuer": "i", "algorithms": [] , "local_jwks": { "inline": jwks(&[&key]) } } } }),
            "providers.idp.algorithms: must list at least one algorithm",
        ),
        (
            json!({ "providers": { "idp": p.clone() }, "rules": [ { "match": {}, "requires": { "provider": "nope" } } ] }),
            "rules[0].requires.provider: no provider named \"nope\" (providers: idp)",
        ),
        (
            json!({ "providers": { "idp": p.clone() }, "rules": [ { "match": {}, "requires": { "any": [] } } ] }),
            "rules[0].requires.any: must list at least one requirement",
        ),
        (
            json!({ "providers": { "idp": p.clone() }, "rules": [ { "match": {}, "requires": { "provider": "idp", "any": [] } } ] }),
            "rules[0].requires: give exactly one of `provider`, `any` and `all`",
        ),
        (
            json!({ "providers": { "idp": p.clone() }, "realm": "a\"b" }),
            "realm: must be non-empty printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)",
        ),
        (
            json!({ "providers": { "idp": p.clone() }, "rules": [ { "match": { "prefix": "x" } } ] }),
            "rules[0].match.prefix: must start with '/', got \"x\"",
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config_error(config), expected);
    }
    let err = config_error(
        json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["HS256"], "local_jwks": { "inline": "{" } } } }),
    );
    assert!(
        err.starts_with("providers.idp.local_jwks.inline: "),
        "{err}"
    );
    let err =
        config_error(json!({ "providers": { "idp": { "issuer": "i", "algorithm": ["HS256"] } } }));
    assert!(
        err.starts_with("providers.idp.algorithm: unknown field"),
        "{err}"
    );
}

// === Envoy's own jwt_authn vectors ===

#[test]
fn envoy_jwt_authn_vectors_get_the_same_answer() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/envoy-jwt-authn/envoy-jwt-authn.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "Envoy's jwt_authn vectors are missing at {}: {e}",
            path.display()
        )
    });
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let p = &vectors["provider"];
    let setup = protect_all(json!({
        "issuer": p["issuer"], "audiences": p["audiences"], "algorithms": p["algorithms"],
        "local_jwks": { "inline": vectors["jwks"].to_string() },
    }));
    let tokens = vectors["tokens"].as_array().unwrap();
    assert!(tokens.len() >= 9);
    for t in tokens {
        let name = t["name"].as_str().unwrap();
        let d = setup.bearer(t["token"].as_str().unwrap());
        match (t["expect"].as_str().unwrap(), &d) {
            ("allow", Decision::Continue(_)) => {}
            ("deny", Decision::Respond(r)) => assert_eq!(r.status, 401, "{name}: {}", r.detail),
            (expect, _) => panic!("{name}: expected {expect}, got {d:?} ({})", t["why"]),
        }
    }
}

// === verified-token cache ===

#[test]
fn cached_tokens_skip_the_signature_but_never_outlive_exp() {
    use filter_core::metrics::MetricId;
    let key = Key::generate(Alg::ES256, "k1");
    let setup = protect_all(provider(&[&key], &["ES256"]));
    let token = key.sign(&claims());
    let request = get("/").with_header("authorization", format!("Bearer {token}"));
    let metrics = RecordedMetrics::default();
    let store = MemStore::new();
    let at = |secs: u64| Env {
        now: Time::from_secs(secs).into(),
        store: &store,
        metrics: &metrics,
        verifier: &filter_core::signature::NoNativeVerifier,
        random: &filter_core::random::Fixed(0),
    };
    let (allowed, hits, misses) = (MetricId(0), MetricId(6), MetricId(7));
    passed(
        &setup
            .filter
            .on_request(&mut jwt_auth::JwtStream::default(), &request, &at(NOW)),
    );
    passed(
        &setup
            .filter
            .on_request(&mut jwt_auth::JwtStream::default(), &request, &at(NOW + 1)),
    );
    assert_eq!((metrics.value(hits), metrics.value(misses)), (1, 1));
    // exp is NOW + 600 with 60 s of skew: the cached verification does not keep it alive.
    assert_invalid(&setup.filter.on_request(
        &mut jwt_auth::JwtStream::default(),
        &request,
        &at(NOW + 661),
    ));
    assert_eq!(metrics.value(hits), 2);
    assert_eq!(metrics.value(allowed), 2);
    // A token with a flipped signature bit is a different token: a miss, and refused.
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = base64_decode(sig);
    bytes[0] ^= 1;
    let forged = format!("{input}.{}", b64(&bytes));
    let forged_request = get("/").with_header("authorization", format!("Bearer {forged}"));
    assert_invalid(&setup.filter.on_request(
        &mut jwt_auth::JwtStream::default(),
        &forged_request,
        &at(NOW),
    ));
    assert_eq!(metrics.value(misses), 2);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[test]
fn token_cache_size_is_validated() {
    let key = Key::generate(Alg::HS256, "k1");
    let err = config_error(
        json!({ "providers": { "idp": provider(&[&key], &["HS256"]) }, "token_cache_size": 1_000_000 }),
    );
    assert_eq!(err, "token_cache_size: must be at most 100000, got 1000000");
    let off = filter(
        json!({ "providers": { "idp": provider(&[&key], &["HS256"]) }, "token_cache_size": 0,
        "rules": [ { "match": {}, "requires": { "provider": "idp" } } ] }),
    );
    let setup = Setup { filter: off };
    passed(&setup.bearer(&key.sign(&claims())));
}

// === remote JWKS (the fetch itself runs in Envoy: tests/integration/jwt_auth.rs) ===

fn remote_filter() -> JwtAuth {
    filter(json!({
        "providers": { "idp": {
            "issuer": "https://issuer.example", "audiences": ["api"], "algorithms": ["EdDSA", "ES256"],
            "remote_jwks": { "cluster": "keys", "path": "/jwks.json", "timeout": "2s" },
        } },
        "rules": [ { "match": {}, "requires": { "provider": "idp" } } ],
    }))
}

fn jwks_answer(keys: &[&Key]) -> filter_core::decision::CalloutResult {
    filter_core::decision::CalloutResult::Response {
        status: Some(200),
        headers: vec![],
        body: jwks(keys).into_bytes(),
    }
}

#[test]
fn requests_wait_for_the_first_keys_then_get_503() {
    use jwt_auth::JwtStream;
    let f = remote_filter();
    let store = MemStore::new();
    let metrics = RecordedMetrics::default();
    let env = |secs: u64| Env {
        now: Time::from_secs(secs).into(),
        store: &store,
        metrics: &metrics,
        verifier: &filter_core::signature::NoNativeVerifier,
        random: &filter_core::random::Fixed(0),
    };
    let key = Key::generate(Alg::EdDSA, "k1");
    let request = get("/").with_header("authorization", format!("Bearer {}", key.sign(&claims())));
    // No token: nothing to wait for.
    assert_eq!(
        refused(&f.on_request(&mut JwtStream::default(), &get("/"), &env(NOW))).status,
        401
    );
    let mut stream = JwtStream::default();
    assert_eq!(
        f.on_request(&mut stream, &request, &env(NOW)),
        Decision::Wait
    );
    assert_eq!(
        f.on_request(&mut stream, &request, &env(NOW + 2)),
        Decision::Wait
    );
    // Timeout (2 s) plus a second, and still no keys: 503 with Retry-After, when the
    // provider fetches again after a failure (failed_refetch_duration, 1 s by default).
    let r = f.on_request(&mut stream, &request, &env(NOW + 3));
    let r = refused(&r);
    assert_eq!(r.status, 503);
    assert!(
        r.headers
            .contains(&("retry-after".to_owned(), "1".to_owned()))
    );
    // Keys arrive: a waiting request passes on its next decision.
    let mut stream = JwtStream::default();
    assert_eq!(
        f.on_request(&mut stream, &request, &env(NOW)),
        Decision::Wait
    );
    let callouts = f.on_tick(&env(NOW));
    assert_eq!(callouts.len(), 1);
    f.on_callout_response(callouts[0].tag, jwks_answer(&[&key]), &env(NOW));
    passed(&f.on_request(&mut stream, &request, &env(NOW + 1)));
}

#[test]
fn a_new_kid_is_accepted_after_one_refetch_and_random_kids_cause_no_storm() {
    use jwt_auth::JwtStream;
    let f = remote_filter();
    let store = MemStore::new();
    let metrics = RecordedMetrics::default();
    let env = |secs: u64| Env {
        now: Time::from_secs(secs).into(),
        store: &store,
        metrics: &metrics,
        verifier: &filter_core::signature::NoNativeVerifier,
        random: &filter_core::random::Fixed(0),
    };
    let old = Key::generate(Alg::EdDSA, "old");
    let new = Key::generate(Alg::ES256, "new");
    let callouts = f.on_tick(&env(NOW));
    f.on_callout_response(callouts[0].tag, jwks_answer(&[&old]), &env(NOW));
    let bearer =
        |k: &Key| get("/").with_header("authorization", format!("Bearer {}", k.sign(&claims())));
    passed(&f.on_request(&mut JwtStream::default(), &bearer(&old), &env(NOW)));
    // The issuer rotated: a token with the new kid waits for a refetch...
    let mut stream = JwtStream::default();
    assert_eq!(
        f.on_request(&mut stream, &bearer(&new), &env(NOW + 1)),
        Decision::Wait
    );
    assert_eq!(
        f.on_request(&mut stream, &bearer(&new), &env(NOW + 1)),
        Decision::Wait,
        "until the keys change"
    );
    let callouts = f.on_tick(&env(NOW + 1));
    assert_eq!(
        callouts.len(),
        1,
        "the kid miss asked for a fetch before the refresh time"
    );
    f.on_callout_response(callouts[0].tag, jwks_answer(&[&old, &new]), &env(NOW + 1));
    passed(&f.on_request(&mut stream, &bearer(&new), &env(NOW + 1)));
    // Unknown kids within the cooldown: refused at once, no fetch.
    let stranger = Key::generate(Alg::EdDSA, "stranger");
    for s in 2..10 {
        assert_invalid(&f.on_request(&mut JwtStream::default(), &bearer(&stranger), &env(NOW + s)));
        assert!(f.on_tick(&env(NOW + s)).is_empty());
    }
}

#[test]
fn remote_keys_cannot_carry_hmac_secrets() {
    let err = config_error(
        json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["RS256", "HS256"],
        "remote_jwks": { "cluster": "keys", "path": "/jwks.json" } } } }),
    );
    assert!(
        err.starts_with("providers.idp.algorithms[1]: HMAC algorithms need a shared secret"),
        "{err}"
    );
    let err = config_error(
        json!({ "providers": { "idp": { "issuer": "i", "algorithms": ["RS256"],
        "remote_jwks": { "cluster": "keys", "path": "jwks.json" } } } }),
    );
    assert_eq!(
        err,
        "providers.idp.remote_jwks.path: must start with '/', got \"jwks.json\""
    );
}

#[test]
fn while_the_key_server_fails_nothing_waits_and_a_good_fetch_restores_everything() {
    use filter_core::decision::CalloutResult;
    use jwt_auth::JwtStream;
    let f = remote_filter();
    let store = MemStore::new();
    let metrics = RecordedMetrics::default();
    // Milliseconds after NOW.
    let env = |ms: u64| Env {
        now: Time::from_nanos((NOW * 1000 + ms) * 1_000_000).into(),
        store: &store,
        metrics: &metrics,
        verifier: &filter_core::signature::NoNativeVerifier,
        random: &filter_core::random::Fixed(0),
    };
    let broken = || CalloutResult::Response {
        status: Some(500),
        headers: vec![],
        body: vec![],
    };
    let old = Key::generate(Alg::EdDSA, "old");
    let new = Key::generate(Alg::ES256, "new");
    let bearer =
        |k: &Key| get("/").with_header("authorization", format!("Bearer {}", k.sign(&claims())));
    let fetch = |ms: u64| {
        let callouts = f.on_tick(&env(ms));
        assert_eq!(callouts.len(), 1, "a fetch at {ms} ms");
        callouts[0].tag
    };
    // Cold start: a token waits for the first fetch; it fails, and the held request gets its 503
    // at its next decision (the next tick) instead of after the 3 s wait limit.
    let mut held = JwtStream::default();
    assert_eq!(
        f.on_request(&mut held, &bearer(&old), &env(0)),
        Decision::Wait
    );
    let tag = fetch(0);
    f.on_callout_response(tag, broken(), &env(50));
    assert_eq!(
        refused(&f.on_request(&mut held, &bearer(&old), &env(100))).status,
        503
    );
    // New requests are not held at all while the key server is known to fail.
    let r = f.on_request(&mut JwtStream::default(), &bearer(&old), &env(200));
    assert_eq!(refused(&r).status, 503);
    // Without keys the next try is 1 s after the failure, not a backoff's 2 s or more.
    assert!(f.on_tick(&env(1000)).is_empty());
    let tag = fetch(1100);
    f.on_callout_response(tag, jwks_answer(&[&old]), &env(1150));
    // A good fetch: everything normal at once.
    passed(&f.on_request(&mut JwtStream::default(), &bearer(&old), &env(1150)));
    let mut held = JwtStream::default();
    assert_eq!(
        f.on_request(&mut held, &bearer(&new), &env(2000)),
        Decision::Wait,
        "kid miss"
    );
    // The kid-miss refetch fails: 401 at the next decision, not after the wait limit.
    let tag = fetch(2000);
    f.on_callout_response(tag, broken(), &env(2050));
    assert_invalid(&f.on_request(&mut held, &bearer(&new), &env(2100)));
    // Past the kid-miss cooldown (30 s), the key server still known to fail: an unknown kid is
    // refused at once, and asks for the refetch the backoff allows (its 2 s are long past).
    let mut stream = JwtStream::default();
    assert_invalid(&f.on_request(&mut stream, &bearer(&new), &env(40_000)));
    let tag = fetch(40_000);
    f.on_callout_response(tag, jwks_answer(&[&old, &new]), &env(40_050));
    passed(&f.on_request(&mut JwtStream::default(), &bearer(&new), &env(40_100)));
    passed(&f.on_request(&mut JwtStream::default(), &bearer(&old), &env(40_100)));
}

// === the access log's decision ===

/// Every refusal records `jwt_auth.decision` from a fixed vocabulary, naming the check a token
/// failed but never any part of the token; a request let through records nothing.
#[test]
fn each_refusal_records_a_fixed_decision_and_never_the_token() {
    use jwt_auth::reply::DECISION;
    let key = Key::generate(Alg::ES256, "k1");
    let stranger = Key::generate(Alg::ES256, "k1");
    let other_kid = Key::generate(Alg::ES256, "k2");
    let setup = Setup {
        filter: filter(json!({
            "providers": { "idp": provider(&[&key], &["ES256"]) },
            "rules": [
                { "match": { "prefix": "/admin" }, "requires": { "provider": "idp", "scopes": ["admin"] } },
                { "match": { "prefix": "/" }, "requires": { "provider": "idp" } },
            ],
        })),
    };
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        key.sign(&c)
    };
    let valid = key.sign(&claims());
    let cases: Vec<(&str, String)> = vec![
        (
            "invalid_token:expired",
            with(&|c| c["exp"] = json!(NOW - 120)),
        ),
        (
            "invalid_token:not_yet_valid",
            with(&|c| c["nbf"] = json!(NOW + 600)),
        ),
        (
            "invalid_token:issued_in_future",
            with(&|c| c["iat"] = json!(NOW + 600)),
        ),
        (
            "invalid_token:issuer",
            with(&|c| c["iss"] = json!("https://elsewhere.example")),
        ),
        (
            "invalid_token:audience",
            with(&|c| c["aud"] = json!("other")),
        ),
        (
            "invalid_token:no_expiration",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "invalid_token:malformed_claim",
            with(&|c| c["exp"] = json!("tomorrow")),
        ),
        ("invalid_token:signature", stranger.sign(&claims())),
        ("invalid_token:unknown_key", other_kid.sign(&claims())),
        (
            "invalid_token:alg_not_allowed",
            Key::generate(Alg::ES384, "k1").sign(&claims()),
        ),
        (
            "invalid_token:malformed",
            "bm90.YSB0b2tlbg.c2lnbmVk".to_owned(),
        ),
    ];
    for (expected, token) in &cases {
        let d = setup.bearer(token);
        let r = refused(&d);
        assert_eq!(r.filter_state, [(DECISION.into(), (*expected).to_owned())]);
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!expected.contains(part), "{expected} carries the token");
        }
    }
    let missing = setup.run(&get("/"));
    assert_eq!(
        refused(&missing).filter_state_value(DECISION),
        Some("missing")
    );
    let two = setup.run(
        &get("/")
            .with_header("authorization", format!("Bearer {valid}"))
            .with_header("authorization", format!("Bearer {valid}")),
    );
    assert_eq!(
        refused(&two).filter_state_value(DECISION),
        Some("invalid_request")
    );
    let scope = setup.run(&get("/admin").with_header("authorization", format!("Bearer {valid}")));
    assert_eq!(
        refused(&scope).filter_state_value(DECISION),
        Some("insufficient_scope")
    );
    match setup.bearer(&valid) {
        Decision::Continue(edits) => assert!(edits.filter_state.is_empty(), "{edits:?}"),
        other => panic!("a valid token is let through: {other:?}"),
    }
}
