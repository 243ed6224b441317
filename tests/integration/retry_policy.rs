//! `retry_policy.wasm` in Envoy with two workers and scripted upstreams: the router retries
//! exactly as the filter's headers say, never a non-idempotent request, never what a client
//! asks for; the budget bounds an outage's retries; Retry-After is added, kept and capped.

use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig, example};
use filter_tests::grpc::{GrpcCall, GrpcServer, code};
use filter_tests::upstream::{Reply, Upstream};
use std::time::Duration;

fn gateway(layout: Layout, upstream: &Upstream, config: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .layout(layout)
            .filter("retry_policy", config)
            .render(),
    )
}

fn then_ok(failures: usize) -> Vec<Reply> {
    let mut script = vec![Reply::Status(503); failures];
    script.push(Reply::Echo);
    script
}

const RETRY_5XX: &str = r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 2}]}"#;

both_modules! {
    fn a_get_whose_first_attempt_fails_succeeds_with_exactly_two_attempts(layout) {
        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let r = client::get("/orders").send(envoy.port("gateway"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream.count(), 2);
        // The router consumed the retry headers: the upstream never sees them.
        assert!(
            upstream
                .received()
                .iter()
                .all(|q| q.header("x-envoy-retry-on").is_none())
        );
        assert_eq!(
            envoy.stat_eventually("wasmcustom.retry_policy.retries", 1),
            Some(1)
        );
    }
}

both_modules! {
    fn a_post_is_attempted_once_unless_it_carries_an_idempotency_key(layout) {
        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let port = envoy.port("gateway");
        let post = client::Request::new("POST", "/orders").body("{}");
        assert_eq!(post.send(port).status, 503);
        assert_eq!(upstream.count(), 1);

        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let keyed = client::Request::new("POST", "/orders")
            .header(
                "idempotency-key",
                "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
            )
            .body("{}");
        assert_eq!(keyed.send(envoy.port("gateway")).status, 200);
        assert_eq!(upstream.count(), 2);
        assert_eq!(
            envoy.stat_eventually("wasmcustom.retry_policy.given_retries", 1),
            Some(1)
        );
    }
}

both_modules! {
    fn a_client_asking_for_100_retries_gets_the_rule_s_number(layout) {
        let upstream = Upstream::start(vec![Reply::Status(503)]);
        // Internal clients: Envoy itself would keep and obey the client's retry headers.
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port()).layout(layout)
                .filter(
                    "retry_policy",
                    r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1}]}"#,
                )
                .internal_clients()
                .render(),
        );
        let r = client::get("/x")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-max-retries", "100")
            .send(envoy.port("gateway"));
        assert_eq!(r.status, 503);
        assert_eq!(upstream.count(), 2);
        // And on a POST, which no rule may retry, nothing the client sent makes it retried.
        let post = client::Request::new("POST", "/x")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-max-retries", "100")
            .body("{}");
        assert_eq!(post.send(envoy.port("gateway")).status, 503);
        assert_eq!(upstream.count(), 3);
    }
}

both_modules! {
    fn per_try_timeout_cuts_a_hung_attempt_and_the_retry_succeeds(layout) {
        let upstream = Upstream::start(vec![Reply::Hang, Reply::Echo]);
        let envoy = gateway(layout,
            &upstream,
            r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1, "per_try_timeout": "200ms"}]}"#,
        );
        let started = std::time::Instant::now();
        let r = client::get("/slow").send(envoy.port("gateway"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream.count(), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

both_modules! {
    fn the_budget_bounds_what_an_outage_costs_the_upstream(layout) {
        const REQUESTS: usize = 50;
        let with_budget = r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 2}],
                              "budget": {"retry_ratio": 0.2, "min_retries_per_second": 1}}"#;
        let down = Upstream::start(vec![Reply::Status(503)]);
        let envoy = gateway(layout, &down, with_budget);
        for _ in 0..REQUESTS {
            assert_eq!(client::get("/x").send(envoy.port("gateway")).status, 503);
        }
        // 20% of 50 plus the reserve of 1 per second over 10 s, plus the last grant's 2.
        let bound = REQUESTS + REQUESTS / 5 + 10 + 2;
        let seen = down.count();
        eprintln!("{REQUESTS} requests, {seen} reached the upstream with the budget on");
        assert!(
            seen <= bound,
            "the upstream saw {seen} requests, more than {bound}"
        );
        assert!(seen > REQUESTS, "no retries at all ({seen})");
        assert!(
            envoy
                .stat_when("wasmcustom.retry_policy.no_retries_budget", |n| n
                    .unwrap_or(0)
                    > 0)
                .unwrap_or(0)
                > 0
        );

        let down = Upstream::start(vec![Reply::Status(503)]);
        let envoy = gateway(layout, &down, RETRY_5XX);
        for _ in 0..REQUESTS {
            client::get("/x").send(envoy.port("gateway"));
        }
        assert_eq!(down.count(), REQUESTS * 3);
    }
}

both_modules! {
    fn retry_after_is_added_kept_and_capped(layout) {
        let full = |status: u16, retry_after: &str| Reply::Full {
            status,
            headers: vec![("retry-after".to_owned(), retry_after.to_owned())],
            body: String::new(),
        };
        let upstream = Upstream::start(vec![
            Reply::Status(503),
            full(503, "7"),
            full(429, "3600"),
            full(429, "Tue, 24 Nov 2099 00:00:00 GMT"),
            Reply::Status(500),
        ]);
        let envoy = gateway(layout,
            &upstream,
            r#"{"retry_after": {"default": "5s", "max": "60s", "jitter": "none"}}"#,
        );
        let port = envoy.port("gateway");
        let retry_after = || {
            client::get("/x")
                .send(port)
                .header("retry-after")
                .map(str::to_owned)
        };
        assert_eq!(retry_after().as_deref(), Some("5"));
        assert_eq!(retry_after().as_deref(), Some("7"));
        assert_eq!(retry_after().as_deref(), Some("60"));
        assert_eq!(retry_after().as_deref(), Some("60"));
        assert_eq!(retry_after(), None);
    }
}

both_modules! {
    fn a_half_open_probe_is_not_retried(layout) {
        let upstream = Upstream::start(vec![Reply::Status(503)]);
        // The breaker first: the retry policy reads the state it leaves.
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port()).layout(layout)
                .filter(
                    "circuit_breaker",
                    r#"{"breakers": [{"name": "b", "minimum_calls": 4, "open_duration": "1s", "half_open_calls": 1}]}"#,
                )
                .filter("retry_policy", r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1}]}"#)
                .render(),
        );
        let port = envoy.port("gateway");
        for _ in 0..4 {
            assert_eq!(client::get("/x").send(port).status, 503);
        }
        // Four requests, each retried once: eight attempts, and the breaker opened.
        assert_eq!(upstream.count(), 8);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(client::get("/x").send(port).status, 503);
        assert_eq!(upstream.count(), 9, "the probe went upstream once");
        assert_eq!(
            envoy.stat_eventually("wasmcustom.retry_policy.no_retries_half_open", 1),
            Some(1)
        );
    }
}

#[test]
fn the_example_retries_a_get_three_times_and_a_post_once() {
    let envoy = Envoy::start(&example("retry_policy.yaml"));
    let port = envoy.port("gateway");
    let r = client::get("/orders/1").send(port);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let retries = || envoy.stat("cluster.orders.upstream_rq_retry").unwrap_or(0);
    assert_eq!(retries(), 2);
    let post = client::Request::new("POST", "/orders")
        .body("{}")
        .send(port);
    assert_eq!(post.status, 503);
    assert_eq!(retries(), 2);
}

both_modules! {
    /// `grpc_retry_on` with a real gRPC upstream and client: Envoy retries a trailers-only
    /// UNAVAILABLE as the rule says, and the client sees the last attempt's answer. A gRPC
    /// call is a POST, so (as for any POST) only one carrying the idempotency key is retried.
    fn grpc_retry_on_retries_trailers_only_unavailable(layout) {
        let server = GrpcServer::start();
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(server.port())
                .upstream_http2()
                .layout(layout)
                .filter(
                    "retry_policy",
                    r#"{"rules": [{"match": {"prefix": "/test."}, "grpc_retry_on": ["unavailable"], "num_retries": 2}]}"#,
                )
                .render(),
        );
        let port = envoy.port("gateway");
        let call = |id: &str, reply: &str| {
            let outcome = GrpcCall::new(port, "/test.Echo/Unary")
                .header("idempotency-key", id)
                .id(id)
                .reply(reply)
                .run_one();
            outcome.assert_valid_grpc();
            outcome
        };

        // Down for good: three attempts, the client gets the last UNAVAILABLE.
        let down = call("down", "trailers-only:14");
        assert_eq!(down.code, code::UNAVAILABLE, "{down:#?}");
        assert_eq!(server.requests_with_id("down"), 3, "{}", server.log());
        // Fails once: the retry's OK is what the client gets.
        let flaky = call("flaky", "fail-first:1:14");
        assert_eq!((flaky.code, flaky.messages), (code::OK, 1), "{flaky:#?}");
        assert_eq!(server.requests_with_id("flaky"), 2, "{}", server.log());
        // A code the rule does not name, and a status in trailers after the headers (Envoy
        // judges the headers only: the answer is committed): one attempt each.
        let internal = call("internal", "trailers-only:13");
        assert_eq!(internal.code, code::INTERNAL);
        assert_eq!(server.requests_with_id("internal"), 1);
        let late = call("late", "trailers:14");
        assert_eq!(late.code, code::UNAVAILABLE);
        assert_eq!(server.requests_with_id("late"), 1);
        // Without the idempotency key: one attempt.
        let unkeyed = GrpcCall::new(port, "/test.Echo/Unary")
            .id("unkeyed")
            .reply("trailers-only:14")
            .run_one();
        assert_eq!(unkeyed.code, code::UNAVAILABLE);
        assert_eq!(server.requests_with_id("unkeyed"), 1);

        assert_eq!(
            envoy.stat_eventually("wasmcustom.retry_policy.retries", 3),
            Some(3)
        );
        assert_eq!(
            envoy.stat_eventually("wasmcustom.retry_policy.no_retries_method", 1),
            Some(1)
        );
    }
}
