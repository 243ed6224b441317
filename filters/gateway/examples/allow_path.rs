//! The gateway's allow path in a loop, natively, for a profiler (`make profile` runs it under
//! callgrind): the benchmark's four policies (`make bench`: a cached RS256 token whose `sub`
//! becomes `x-user-id`, a per-user limit never reached, a closed breaker, one retry rule), the
//! same request again and again, through the same calls the host layer makes. No host here: a
//! profile of our own code only (the host calls are counted by `make hostcalls`).
//!
//! `cargo run --release -p gateway --example allow_path -- [REQUESTS] [POLICY]`, where POLICY
//! is `gateway` (default) or one of the four policies alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a profiling fixture: a panic is how it fails"
)]

use filter_core::config::parse;
use filter_core::decision::Decision;
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, Metrics};
use filter_core::random::SplitMix;
use filter_core::request::{EditedRequest, Request, RequestView, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::{MemStore, Remembering};
use filter_core::time::Time;
use serde_json::{Value, json};
use std::cell::Cell;
use testkit::{Alg, Key};

/// Counters summed in memory, as the host layer keeps them between flushes.
struct CellMetrics(Vec<Cell<i64>>);

impl Metrics for CellMetrics {
    fn add(&self, id: MetricId, delta: i64) {
        if let Some(cell) = self.0.get(id.0) {
            cell.set(cell.get() + delta);
        }
    }
    fn record(&self, id: MetricId, value: u64) {
        if let Some(cell) = self.0.get(id.0) {
            cell.set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
}

fn configs(jwks: &str) -> Value {
    json!({
        "jwt_auth": {
            "providers": { "idp": {
                "issuer": "https://issuer.example",
                "audiences": ["api"],
                "algorithms": ["RS256"],
                "local_jwks": { "inline": jwks },
                "claim_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
            } },
            "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
            "token_cache_size": 1000,
        },
        "rate_limit": { "rules": [ {
            "name": "bench",
            "key": [ { "header": "x-user-id" } ],
            "limit": { "requests": 1_000_000_000u64, "per": "1s" },
        } ] },
        "circuit_breaker": { "breakers": [ { "name": "bench" } ] },
        "retry_policy": { "rules": [ { "retry_on": ["5xx", "reset"], "num_retries": 2 } ] },
    })
}

fn run<F: Filter>(config: &Value, request: &Request, requests: u64) {
    let filter = F::new(parse(config.to_string().as_bytes()).unwrap()).unwrap();
    let metrics = CellMetrics(
        (0..filter.metric_names().len())
            .map(|_| Cell::new(0))
            .collect(),
    );
    let mem = MemStore::new();
    let store = Remembering::new(&mem, 1);
    let random = SplitMix::new(7);
    let start = Time::from_secs(testkit::now_secs());
    let response = Response::new(200)
        .with_header("content-type", "text/plain")
        .with_header("content-length", "2")
        .with_attempts(1)
        .with_code_details("via_upstream");
    let mut allowed = 0u64;
    for i in 0..requests {
        let env = Env {
            now: start.plus(std::time::Duration::from_micros(i * 30)).into(),
            store: &store,
            metrics: &metrics,
            verifier: &NoNativeVerifier,
            random: &random,
        };
        let mut stream = F::Stream::default();
        let decision = filter.on_request(&mut stream, request, &env);
        let Decision::Continue(edits) = decision else {
            panic!("request {i} was not let through: {decision:?}");
        };
        // What the upstream sees, as the host layer would have applied it.
        let seen = EditedRequest::new(request, &edits);
        std::hint::black_box(seen.header("x-user-id"));
        if filter.wants_response(&stream) {
            std::hint::black_box(filter.on_response(&mut stream, &response, &env));
        }
        if filter.wants_end(&stream) {
            filter.on_end(&mut stream, &response, &env);
        }
        allowed += 1;
    }
    eprintln!("{allowed} requests let through");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let requests: u64 = args.next().map_or(100_000, |n| n.parse().unwrap());
    let policy = args.next().unwrap_or_else(|| "gateway".to_owned());
    let key = Key::generate(Alg::RS256, "bench");
    let now = testkit::now_secs();
    let token = key.sign(&json!({
        "iss": "https://issuer.example", "aud": "api", "sub": "user-42",
        "iat": now, "exp": now + 3600,
    }));
    let request = Request::new("GET", "/")
        .with_header(":authority", "localhost")
        .with_header("user-agent", "wrk")
        .with_header("accept", "*/*")
        .with_header("authorization", format!("Bearer {token}"))
        .with_client_address("127.0.0.1:5555");
    let all = configs(&testkit::jwks(&[&key]));
    match policy.as_str() {
        "gateway" => run::<gateway::Gateway>(&all, &request, requests),
        "jwt_auth" => run::<jwt_auth::JwtAuth>(&all["jwt_auth"], &request, requests),
        "rate_limit" => {
            // Alone, the benchmark keys one bucket for all (no x-user-id without jwt_auth).
            let config = json!({ "rules": [ {
                "name": "bench", "key": [ { "rule": {} } ],
                "limit": { "requests": 1_000_000_000u64, "per": "1s" } } ] });
            run::<rate_limit::RateLimit>(&config, &request, requests);
        }
        "circuit_breaker" => {
            run::<circuit_breaker::CircuitBreaker>(&all["circuit_breaker"], &request, requests);
        }
        "retry_policy" => {
            run::<retry_policy::RetryPolicy>(&all["retry_policy"], &request, requests);
        }
        other => panic!("unknown policy {other}: gateway, jwt_auth, rate_limit, ..."),
    }
}
