//! `rate_limit.wasm` in Envoy with two workers: exact limits across workers, keys, header
//! fields, `Retry-After`, shadow mode and the memory bound.

use filter_tests::client::{self, Response};
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig, example};
use filter_tests::grpc::{GrpcCall, GrpcServer, code, codes};
use filter_tests::metric;
use filter_tests::tokens::{demo_claims, demo_key};
use filter_tests::upstream::Upstream;
use std::time::Duration;

fn gateway(layout: Layout, upstream: &Upstream, config: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .layout(layout)
            .filter("rate_limit", config)
            .render(),
    )
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
}

both_modules! {
    fn a_burst_of_five_admits_exactly_five_from_64_connections_on_two_workers(layout) {
        let upstream = Upstream::echo();
        let envoy = gateway(layout,
            &upstream,
            r#"{"rules": [{"name": "all", "key": [{"rule": {}}], "limit": {"requests": 5, "per": "1h"}}]}"#,
        );
        let port = envoy.port("gateway");
        let statuses = client::all_at_once(64, || client::get("/x").send(port).status);
        let passed = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((passed, limited), (5, 59), "{statuses:?}");
        assert_eq!(upstream.count(), 5);
        assert_eq!(
            envoy.stat_eventually(&metric("rate_limit_requests_total", &[("rule", "all"), ("outcome", "limited")]), 59),
            Some(59)
        );
    }
}

both_modules! {
    fn header_fields_on_200_and_429_and_retry_after_is_honoured(layout) {
        let upstream = Upstream::echo();
        let envoy = gateway(layout,
            &upstream,
            r#"{"rules": [{"name": "per-user", "key": [{"header": "x-user-id"}], "limit": {"requests": 2, "per": "2s"}}]}"#,
        );
        let port = envoy.port("gateway");
        let send = || client::get("/api").header("x-user-id", "alice").send(port);
        let first = send();
        assert_eq!(first.status, 200);
        assert_eq!(header(&first, "ratelimit-policy"), "\"per-user\";q=2;w=2");
        assert_eq!(header(&first, "ratelimit"), "\"per-user\";r=1;t=1");
        let second = send();
        assert_eq!(second.status, 200);
        assert_eq!(header(&second, "ratelimit"), "\"per-user\";r=0;t=2");
        let refused = send();
        assert_eq!(refused.status, 429, "{}", refused.text());
        assert_eq!(header(&refused, "cache-control"), "no-store");
        assert_eq!(header(&refused, "content-type"), "application/problem+json");
        assert_eq!(header(&refused, "ratelimit-policy"), "\"per-user\";q=2;w=2");
        let retry_after: u64 = header(&refused, "retry-after").parse().expect("seconds");
        assert_eq!(retry_after, 1);
        assert_eq!(refused.json()["violated-policies"][0], "per-user");
        // The client that waits as told gets through.
        std::thread::sleep(Duration::from_secs(retry_after));
        assert_eq!(send().status, 200);
        assert_eq!(upstream.count(), 3);
    }
}

both_modules! {
    fn clients_are_told_apart_by_address_or_by_header(layout) {
        let upstream = Upstream::echo();
        let envoy = gateway(layout,
            &upstream,
            r#"{"trusted_proxies": 1, "rules": [
                {"name": "per-ip", "match": {"prefix": "/ip"}, "key": [{"client_ip": {}}], "limit": {"requests": 1, "per": "1h"}},
                {"name": "per-user", "match": {"prefix": "/user"}, "key": [{"header": "x-user-id"}], "limit": {"requests": 1, "per": "1h"}}
            ]}"#,
        );
        let port = envoy.port("gateway");
        let via = |xff: &str| {
            client::get("/ip")
                .header("x-forwarded-for", xff)
                .send(port)
                .status
        };
        assert_eq!(via("1.1.1.1"), 200);
        // A forged entry left of the trusted proxy's changes nothing.
        assert_eq!(via("9.9.9.9, 1.1.1.1"), 429);
        assert_eq!(via("2.2.2.2"), 200);
        // No x-forwarded-for: the peer (127.0.0.1) is the key.
        assert_eq!(client::get("/ip").send(port).status, 200);
        assert_eq!(client::get("/ip").send(port).status, 429);

        let as_user = |id: &str| {
            client::get("/user")
                .header("x-user-id", id)
                .send(port)
                .status
        };
        assert_eq!(as_user("alice"), 200);
        assert_eq!(as_user("alice"), 429);
        assert_eq!(as_user("bob"), 200);
        // Without the header the rule does not apply, and nothing else limits /user.
        for _ in 0..3 {
            let r = client::get("/user").send(port);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("ratelimit"), None);
        }
    }
}

both_modules! {
    fn shadow_mode_lets_everything_through_and_counts_what_it_would_refuse(layout) {
        let upstream = Upstream::echo();
        let envoy = gateway(layout,
            &upstream,
            r#"{"shadow": true, "rules": [{"name": "trial", "key": [{"rule": {}}], "limit": {"requests": 1, "per": "1h"}}]}"#,
        );
        let port = envoy.port("gateway");
        for _ in 0..3 {
            assert_eq!(client::get("/x").send(port).status, 200);
        }
        assert_eq!(upstream.count(), 3);
        assert_eq!(
            envoy.stat_eventually(&metric("rate_limit_requests_total", &[("rule", "trial"), ("outcome", "shadow_limited")]), 2),
            Some(2)
        );
        assert_eq!(envoy.stat(&metric("rate_limit_requests_total", &[("rule", "trial"), ("outcome", "limited")])), Some(0));
        assert!(
            envoy.wait_for_log(
                "rate_limit: shadow mode: would refuse GET /x (over trial)",
                Duration::from_secs(5)
            ),
            "{}",
            envoy.log()
        );
    }
}

/// Bytes Envoy's allocator has handed out (shared data lives there).
fn allocated(envoy: &Envoy) -> u64 {
    envoy.admin("/memory").json()["allocated"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("/memory reports `allocated`")
}

#[test]
fn memory_stays_flat_past_max_keys_with_200000_clients() {
    let upstream = Upstream::echo();
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .filter(
                "rate_limit",
                r#"{"max_keys": 1000, "rules": [{"name": "per-client", "key": [{"header": "x-client"}], "limit": {"requests": 100, "per": "1s"}}]}"#,
            )
            .direct_response()
            .render(),
    );
    let port = envoy.port("gateway");
    // The table fills within the first keys (1000 keys in 125 buckets); then 180,000 more.
    client::send_distinct_keys(port, "x-client", 0..20_000);
    let at_bound = allocated(&envoy);
    client::send_distinct_keys(port, "x-client", 20_000..200_000);
    let after = allocated(&envoy);
    let growth = after.saturating_sub(at_bound);
    // One shared-data key per client would have added 180,000 keys (tens of MB).
    assert!(
        growth < 2 * 1024 * 1024,
        "Envoy's heap grew by {growth} bytes over 180,000 new clients ({at_bound} -> {after})"
    );
    assert_eq!(
        envoy.stat_eventually(
            &metric(
                "rate_limit_requests_total",
                &[("rule", "per-client"), ("outcome", "allowed")]
            ),
            200_000
        ),
        Some(200_000)
    );
    eprintln!("heap: {at_bound} bytes after 20,000 clients, {after} after 200,000");
}

#[test]
fn the_example_limits_each_user_then_each_address() {
    let envoy = Envoy::start(&example("rate_limit.yaml"));
    let port = envoy.port("gateway");
    let as_alice = || {
        client::get("/api/orders")
            .header("x-user-id", "alice")
            .send(port)
    };
    for _ in 0..5 {
        assert_eq!(as_alice().status, 200);
    }
    let refused = as_alice();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["violated-policies"][0], "per-user");
    assert_eq!(header(&refused, "retry-after"), "12");
    // Both rules describe themselves on every response.
    let bob = client::get("/api/orders")
        .header("x-user-id", "bob")
        .send(port);
    assert_eq!(bob.status, 200);
    assert_eq!(
        header(&bob, "ratelimit-policy"),
        "\"per-user\";q=5;w=60, \"per-ip\";q=10;w=1"
    );
    // 10 per second per address: some request of the next eleven is refused by per-ip.
    let refused_by_ip = (0..11)
        .map(|_| client::get("/other").send(port))
        .find(|r| r.status == 429)
        .expect("per-ip refuses within 11 requests");
    assert_eq!(refused_by_ip.json()["violated-policies"][0], "per-ip");
}

/// In the gateway, jwt_auth turns the token's `sub` into `x-user-id`, which rate_limit keys on:
/// a client cannot dodge its limit by sending another `x-user-id`.
#[test]
fn the_gateway_limits_each_user_by_the_subject_of_their_token() {
    let envoy = Envoy::start(&example("gateway.yaml"));
    let port = envoy.port("gateway");
    let carol = format!("Bearer {}", demo_key().sign(&demo_claims("carol", "read")));
    let send = |auth: &str, forged: &str| {
        client::get("/hello")
            .header("authorization", auth)
            .header("x-user-id", forged)
            .send(port)
            .status
    };
    for i in 0..5 {
        assert_eq!(send(&carol, &format!("someone-{i}")), 200);
    }
    assert_eq!(send(&carol, "someone-else"), 429);
    let dave = format!("Bearer {}", demo_key().sign(&demo_claims("dave", "read")));
    assert_eq!(send(&dave, "carol"), 200);
}

both_modules! {
    /// A real gRPC client (tonic) over its limit: the refusal is a trailers-only gRPC answer
    /// it reads as RESOURCE_EXHAUSTED, with a message, and the upstream never sees it.
    fn a_grpc_caller_over_its_limit_gets_a_valid_resource_exhausted(layout) {
        let server = GrpcServer::start();
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(server.port())
                .upstream_http2()
                .layout(layout)
                .filter(
                    "rate_limit",
                    r#"{"rules": [{"name": "per-user", "key": [{"header": "x-user-id"}], "limit": {"requests": 2, "per": "1h"}}]}"#,
                )
                .render(),
        );
        let outcomes = GrpcCall::new(envoy.port("gateway"), "/test.Echo/Unary")
            .header("x-user-id", "alice")
            .count(3)
            .run();
        assert_eq!(codes(&outcomes), [code::OK, code::OK, code::RESOURCE_EXHAUSTED], "{outcomes:#?}");
        let refused = &outcomes[2];
        refused.assert_valid_grpc();
        assert!(refused.is_trailers_only(), "{refused:#?}");
        // Envoy sends the reply's body as grpc-message: the problem document naming the rule.
        assert!(refused.message.contains("\"violated-policies\":[\"per-user\"]"), "{refused:#?}");
        // The refusal's metadata: when to come back, and the limit.
        assert!(refused.header("retry-after").is_some(), "{refused:#?}");
        assert_eq!(refused.header("ratelimit-policy"), Some("\"per-user\";q=2;w=3600"));
        // The allowed calls came back from the upstream with the limit's fields added.
        outcomes[0].assert_valid_grpc();
        assert_eq!(outcomes[0].header("ratelimit"), Some("\"per-user\";r=1;t=1800"));
        assert_eq!(server.requests(), 2, "{}", server.log());
    }
}

both_modules! {
    /// Envoy answers a local reply as gRPC only for `application/grpc` and
    /// `application/grpc+...`: a gRPC-Web or otherwise similar request over its limit keeps
    /// its HTTP 429 instead of getting a 200 without `grpc-status`.
    fn a_grpc_web_caller_over_its_limit_gets_429_not_200(layout) {
        let upstream = Upstream::echo();
        let envoy = gateway(layout,
            &upstream,
            r#"{"rules": [{"name": "all", "key": [{"rule": {}}], "limit": {"requests": 1, "per": "1h"}}]}"#,
        );
        let port = envoy.port("gateway");
        assert_eq!(client::get("/x").send(port).status, 200);
        for content_type in ["application/grpc-web+proto", "application/grpc-web-text", "application/GRPC"] {
            let r = client::Request::new("POST", "/pkg.S/M")
                .header("content-type", content_type)
                .body(vec![0u8, 0, 0, 0, 0])
                .send(port);
            assert_eq!(r.status, 429, "{content_type}: {:?}", r.headers);
            assert_eq!(r.header("grpc-status"), None, "{content_type}");
        }
        let grpc = client::Request::new("POST", "/pkg.S/M")
            .header("content-type", "application/grpc+proto")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
            .send(port);
        assert_eq!((grpc.status, grpc.header("grpc-status")), (200, Some("8")));
    }
}
