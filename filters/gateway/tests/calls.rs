//! A policy that holds a request for gRPC calls inside the gateway: the chain stops at it,
//! keeps the edits of the policies before it, and goes on after it once the answers are in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{Decision, GrpcResult, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::RecordedMetrics;
use filter_core::random::Fixed;
use filter_core::request::Request;
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use gateway::{Gateway, GatewayStream};
use prost::Message as _;
use rate_limit::rls;
use serde_json::json;

const NOW_SECS: u64 = 1_795_478_400;

fn gateway() -> Gateway {
    let jwks = testkit::jwks(&[&testkit::demo_key()]);
    let config = json!({
        "jwt_auth": {
            "providers": { "demo": {
                "issuer": "https://issuer.example", "audiences": ["api"], "algorithms": ["EdDSA"],
                "local_jwks": { "inline": jwks },
                "claim_to_headers": [ { "claim": "sub", "header": "x-user-id" } ] } },
            "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "demo" } } ],
        },
        "rate_limit": {
            "services": { "rls": { "cluster": "rls", "domain": "gateway" } },
            "rules": [ { "name": "fleet", "global": {
                "descriptor": [ { "key": "user", "value": { "header": "x-user-id" } } ] } } ],
        },
        "retry_policy": { "rules": [ { "retry_on": ["5xx"], "num_retries": 2 } ] },
    });
    Gateway::new(parse(config.to_string().as_bytes()).unwrap()).unwrap()
}

fn request() -> Request {
    let token = testkit::demo_key().sign(&json!({
        "iss": "https://issuer.example", "aud": "api", "sub": "alice",
        "iat": NOW_SECS, "exp": NOW_SECS + 3600,
    }));
    Request::new("GET", "/api").with_header("authorization", format!("Bearer {token}"))
}

fn answer(code: i32) -> GrpcResult {
    GrpcResult::Message(
        rls::RateLimitResponse {
            overall_code: code,
            ..rls::RateLimitResponse::default()
        }
        .encode_to_vec(),
    )
}

/// The request through the gateway, the service answering `result`.
fn send(g: &Gateway, result: GrpcResult) -> (Vec<rls::RateLimitRequest>, Decision) {
    let store = MemStore::new();
    let metrics = RecordedMetrics::default();
    let env = Env {
        now: Time::from_secs(NOW_SECS).into(),
        store: &store,
        metrics: &metrics,
        verifier: &NoNativeVerifier,
        random: &Fixed(0),
    };
    let mut stream = GatewayStream::default();
    let request = request();
    let Decision::Call(calls) = g.on_request(&mut stream, &request, &env) else {
        panic!("the gateway did not hold the request for its call");
    };
    let sent = calls
        .iter()
        .map(|c| rls::RateLimitRequest::decode(c.message.as_slice()).unwrap())
        .collect();
    (
        sent,
        g.on_call_response(&mut stream, &request, vec![result], &env),
    )
}

fn edits(decision: Decision) -> RequestEdits {
    match decision {
        Decision::Continue(edits) => edits,
        other => panic!("not passed: {other:?}"),
    }
}

#[test]
fn the_chain_goes_on_after_the_calling_policy_with_the_edits_before_it() {
    let (sent, decision) = send(&gateway(), answer(rls::CODE_OK));
    // rate_limit saw jwt_auth's x-user-id ...
    assert_eq!(sent[0].descriptors[0].entries[0].value, "alice");
    let edits = edits(decision);
    // ... jwt_auth's edits survive the wait, and retry_policy ran after the answer.
    assert_eq!(edits.headers.header("x-user-id"), Some(Some("alice")));
    assert_eq!(edits.headers.header("authorization"), Some(None));
    assert!(
        edits.headers.header("x-envoy-retry-on").is_some(),
        "{edits:?}"
    );
}

#[test]
fn a_refusal_after_the_call_ends_the_chain() {
    let (_, decision) = send(&gateway(), answer(rls::CODE_OVER_LIMIT));
    match decision {
        Decision::Respond(reply) => assert_eq!(reply.status, 429),
        other => panic!("not refused: {other:?}"),
    }
}
