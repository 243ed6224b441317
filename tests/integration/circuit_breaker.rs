//! `circuit_breaker.wasm` in Envoy with two workers and scripted upstreams: trips on failures,
//! timeouts, refused connections and slow calls; answers from the fallback while open; probes
//! and recovers; never trips on 4xx; shadow mode; gRPC.

use filter_tests::client::{self, Response};
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig, example};
use filter_tests::grpc::{GrpcCall, GrpcOutcome, GrpcServer, code, codes};
use filter_tests::metric;
use filter_tests::upstream::{Reply, Upstream};
use std::time::Duration;

/// A breaker `b` that trips after 4 calls at 50% failures, stays open `open`, and probes with 2
/// calls; `extra` adds fields.
fn config(open: &str, extra: &str) -> String {
    format!(
        r#"{{"breakers": [{{"name": "b", "minimum_calls": 4, "failure_rate_threshold": 50,
            "open_duration": "{open}", "half_open_calls": 2, "half_open_timeout": "5s",
            "fallback": {{"status": 503, "headers": {{"content-type": "application/json"}},
                          "body": "{{\"error\":\"b is unavailable\"}}"}} {extra} }}]}}"#
    )
}

/// [`config`] with `open_duration` given as JSON (a backoff object).
fn config_with_open(open: &str) -> String {
    config("30s", "").replace(
        r#""open_duration": "30s""#,
        &format!(r#""open_duration": {open}"#),
    )
}

fn gateway(layout: Layout, upstream_port: u16, config: &str, route_timeout: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(upstream_port)
            .layout(layout)
            .filter("circuit_breaker", config)
            .route_timeout(route_timeout)
            .render(),
    )
}

fn get(port: u16) -> Response {
    client::get("/orders").send(port)
}

fn is_fallback(r: &Response) -> bool {
    r.header("x-circuit-breaker") == Some("b")
}

fn failures(n: usize) -> Vec<Reply> {
    vec![Reply::Status(503); n]
}

both_modules! {
    fn failures_trip_it_then_the_upstream_gets_nothing_and_clients_get_the_fallback(layout) {
        let mut script = failures(4);
        script.push(Reply::Echo);
        let upstream = Upstream::start(script);
        let envoy = gateway(layout, upstream.port(), &config("30s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            let r = get(port);
            assert_eq!(r.status, 503);
            assert!(!is_fallback(&r), "the upstream's own 503s pass through");
        }
        for _ in 0..10 {
            let r = get(port);
            assert!(is_fallback(&r), "{:?}", r.headers);
            assert_eq!(r.status, 503);
            assert_eq!(r.header("x-circuit-breaker-state"), Some("open"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.text(), "{\"error\":\"b is unavailable\"}");
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((29..=30).contains(&retry), "retry-after {retry}");
        }
        assert_eq!(upstream.count(), 4);
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_rejected_total", &[("breaker", "b")]), 10),
            Some(10)
        );
        assert_eq!(envoy.stat(&metric("circuit_breaker_state", &[("breaker", "b")])), Some(1));
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_transitions_total", &[("breaker", "b"), ("state", "open")]), 1),
            Some(1)
        );
        assert!(envoy.wait_for_log(
            "circuit_breaker: breaker b: closed -> open",
            Duration::from_secs(5)
        ));
    }
}

both_modules! {
    fn it_recovers_when_the_upstream_heals_and_reopens_when_it_does_not(layout) {
        // Heals: 4 failures, then healthy.
        let mut script = failures(4);
        script.push(Reply::Echo);
        let healing = Upstream::start(script);
        let envoy = gateway(layout, healing.port(), &config("1s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            get(port);
        }
        assert!(is_fallback(&get(port)));
        std::thread::sleep(Duration::from_millis(1100));
        // Two probes succeed: closed again, and everything flows.
        for _ in 0..5 {
            let r = get(port);
            assert_eq!(r.status, 200, "{:?}", r.headers);
        }
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_transitions_total", &[("breaker", "b"), ("state", "closed")]), 1),
            Some(1)
        );
        assert_eq!(envoy.stat(&metric("circuit_breaker_state", &[("breaker", "b")])), Some(0));

        // Never heals: the first probe fails and it opens again.
        let broken = Upstream::start(failures(1));
        let envoy = gateway(layout, broken.port(), &config("1s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            get(port);
        }
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(get(port).status, 503);
        let r = get(port);
        assert!(is_fallback(&r));
        assert_eq!(r.header("x-circuit-breaker-state"), Some("open"));
        assert_eq!(broken.count(), 5);
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_transitions_total", &[("breaker", "b"), ("state", "open")]), 2),
            Some(2)
        );
    }
}

both_modules! {
    fn half_open_lets_exactly_the_probes_through_from_both_workers(layout) {
        let mut script = failures(4);
        script.push(Reply::Delay(
            Duration::from_millis(500),
            Box::new(Reply::Echo),
        ));
        let upstream = Upstream::start(script);
        let envoy = gateway(layout, upstream.port(), &config("1s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            get(port);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let responses = client::all_at_once(12, || get(port));
        let probes = responses.iter().filter(|r| r.status == 200).count();
        let refused: Vec<&Response> = responses.iter().filter(|r| is_fallback(r)).collect();
        assert_eq!((probes, refused.len()), (2, 10));
        assert!(
            refused
                .iter()
                .all(|r| r.header("x-circuit-breaker-state") == Some("half_open"))
        );
        assert_eq!(upstream.count(), 6);
    }
}

both_modules! {
    fn a_refused_connection_and_a_hung_upstream_both_trip_it(layout) {
        // Nothing listens on the port of a stopped server: connect failures.
        let gone = Upstream::echo();
        let port_of_nothing = gone.port();
        drop(gone);
        let envoy = gateway(layout, port_of_nothing, &config("30s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            let r = get(port);
            assert_eq!(r.status, 503);
            assert!(!is_fallback(&r));
        }
        assert!(is_fallback(&get(port)));

        let hung = Upstream::start(vec![Reply::Hang]);
        let envoy = gateway(layout, hung.port(), &config("30s", ""), "0.2s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            assert_eq!(get(port).status, 504);
        }
        let r = get(port);
        assert!(is_fallback(&r), "{:?}", r.headers);
    }
}

both_modules! {
    fn slow_calls_trip_it_whatever_their_status(layout) {
        let upstream = Upstream::start(vec![Reply::Delay(
            Duration::from_millis(150),
            Box::new(Reply::Echo),
        )]);
        let envoy = gateway(layout,
            upstream.port(),
            &config(
                "30s",
                r#", "slow_call_duration": "100ms", "slow_call_rate_threshold": 75"#,
            ),
            "15s",
        );
        let port = envoy.port("gateway");
        for _ in 0..4 {
            assert_eq!(get(port).status, 200);
        }
        assert!(is_fallback(&get(port)));
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_slow_calls_total", &[("breaker", "b")]), 4),
            Some(4)
        );
    }
}

both_modules! {
    fn client_errors_never_trip_it(layout) {
        let upstream = Upstream::start(vec![
            Reply::Status(404),
            Reply::Status(429),
            Reply::Status(400),
        ]);
        let envoy = gateway(layout, upstream.port(), &config("30s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..20 {
            let r = get(port);
            assert!(!is_fallback(&r));
        }
        assert_eq!(upstream.count(), 20);
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "b"), ("outcome", "success")]), 20),
            Some(20)
        );
        assert_eq!(envoy.stat(&metric("circuit_breaker_transitions_total", &[("breaker", "b"), ("state", "open")])), Some(0));
    }
}

both_modules! {
    fn shadow_mode_reports_but_refuses_nothing(layout) {
        let upstream = Upstream::start(failures(1));
        let envoy = gateway(layout,
            upstream.port(),
            &config("30s", r#", "mode": "shadow""#),
            "15s",
        );
        let port = envoy.port("gateway");
        for _ in 0..10 {
            let r = get(port);
            assert_eq!(r.status, 503);
            assert!(!is_fallback(&r));
        }
        assert_eq!(upstream.count(), 10);
        assert_eq!(
            envoy.stat_eventually(&metric("circuit_breaker_shadow_rejected_total", &[("breaker", "b")]), 6),
            Some(6)
        );
        assert_eq!(envoy.stat(&metric("circuit_breaker_state", &[("breaker", "b")])), Some(1));
    }
}

both_modules! {
    fn grpc_callers_get_unavailable(layout) {
        let upstream = Upstream::start(failures(1));
        let envoy = gateway(layout, upstream.port(), &config("30s", ""), "15s");
        let port = envoy.port("gateway");
        for _ in 0..4 {
            get(port);
        }
        let r = client::Request::new("POST", "/orders.Orders/Get")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .send(port);
        assert_eq!(r.status, 200, "{:?}", r.headers);
        assert_eq!(r.header("grpc-status"), Some("14"));
        assert_eq!(r.header("x-circuit-breaker"), Some("b"));
    }
}

#[test]
fn the_example_opens_after_ten_failures_for_the_whole_cluster() {
    let envoy = Envoy::start(&example("circuit_breaker.yaml"));
    let port = envoy.port("gateway");
    for _ in 0..10 {
        let r = client::get("/orders/1").send(port);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-circuit-breaker"), None);
    }
    let r = client::get("/orders/1").send(port);
    assert_eq!(r.header("x-circuit-breaker"), Some("orders"));
    assert_eq!(
        r.text(),
        "{\"error\":\"orders is unavailable, try again later\"}"
    );
    // The breaker guards the cluster, so healthy paths of it wait too.
    let other = client::get("/public/health").send(port);
    assert_eq!(other.header("x-circuit-breaker-state"), Some("open"));
}

#[test]
fn the_gateway_s_flaky_route_opens_its_own_breaker_only() {
    let envoy = Envoy::start(&example("gateway.yaml"));
    let port = envoy.port("gateway");
    for _ in 0..5 {
        assert_eq!(client::get("/public/flaky").send(port).status, 503);
    }
    let r = client::get("/public/flaky").send(port);
    assert_eq!(r.header("x-circuit-breaker"), Some("flaky"));
    assert_eq!(client::get("/public/other").send(port).status, 200);
}

both_modules! {
    fn later_filters_see_that_a_request_is_a_half_open_probe(layout) {
        let mut script = failures(4);
        script.push(Reply::Echo);
        let upstream = Upstream::start(script);
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port()).layout(layout)
                .filter("circuit_breaker", &config("1s", ""))
                .route_request_header(
                    "x-breaker-state",
                    "%FILTER_STATE(wasm.circuit_breaker.state:PLAIN)%",
                )
                .render(),
        );
        let port = envoy.port("gateway");
        for _ in 0..4 {
            get(port);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let probe = get(port);
        assert_eq!(probe.status, 200);
        assert_eq!(
            probe.json()["headers"]["x-breaker-state"],
            "half_open",
            "{}",
            probe.text()
        );
        // The second probe closes it; a request in the closed state carries no breaker state.
        get(port);
        let closed = get(port);
        assert_ne!(closed.json()["headers"]["x-breaker-state"], "half_open");
    }
}

/// A gRPC breaker `g`: trips after `minimum_calls` calls at 50% failures, opens `open`, probes
/// with 1 call.
fn grpc_config(open: &str, minimum_calls: u32) -> String {
    format!(
        r#"{{"breakers": [{{"name": "g", "minimum_calls": {minimum_calls}, "failure_rate_threshold": 50,
            "open_duration": {open}, "half_open_calls": 1, "half_open_timeout": "5s" }}]}}"#
    )
}

fn grpc_gateway(layout: Layout, server: &GrpcServer, config: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(server.port())
            .upstream_http2()
            .layout(layout)
            .filter("circuit_breaker", config)
            .route_timeout("15s")
            .render(),
    )
}

const UNARY: &str = "/shop.Orders/Get";

/// A call the breaker refused: Envoy's own answer (no `x-grpc-tool-request`), valid gRPC,
/// UNAVAILABLE, naming the breaker.
#[track_caller]
fn assert_refused_by_breaker(o: &GrpcOutcome) {
    o.assert_valid_grpc();
    assert_eq!(o.code, code::UNAVAILABLE, "{o:#?}");
    assert!(o.is_trailers_only(), "{o:#?}");
    assert_eq!(o.header("x-circuit-breaker"), Some("g"), "{o:#?}");
    assert_eq!(o.header("x-grpc-tool-request"), None, "{o:#?}");
}

both_modules! {
    /// UNAVAILABLE in the trailers of a unary call trips the breaker after the configured
    /// calls; a real gRPC client then reads UNAVAILABLE from the breaker, the server sees
    /// nothing more; a healthy probe closes it.
    fn grpc_unavailable_in_trailers_trips_it_and_a_healthy_probe_closes_it(layout) {
        let server = GrpcServer::start();
        let envoy = grpc_gateway(layout, &server, &grpc_config(r#""3s""#, 4));
        let port = envoy.port("gateway");
        let failed = GrpcCall::new(port, UNARY).reply("trailers:14").count(4).run();
        assert_eq!(codes(&failed), [code::UNAVAILABLE; 4], "{failed:#?}");
        for o in &failed {
            assert!(!o.is_trailers_only(), "the status came in trailers: {o:#?}");
            assert_eq!(o.trailer("grpc-status"), Some("14"));
        }
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "failure")]), 4), Some(4));
        let refused = GrpcCall::new(port, UNARY).count(5).run();
        for o in &refused {
            assert_refused_by_breaker(o);
        }
        assert_eq!(server.requests(), 4, "{}", server.log());
        std::thread::sleep(Duration::from_millis(3100));
        let probe = GrpcCall::new(port, UNARY).run_one();
        probe.assert_valid_grpc();
        assert_eq!(probe.code, code::OK, "{probe:#?}");
        let after = GrpcCall::new(port, UNARY).count(3).run();
        assert_eq!(codes(&after), [code::OK; 3], "{after:#?}");
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_transitions_total", &[("breaker", "g"), ("state", "closed")]), 1), Some(1));
        assert_eq!(envoy.stat(&metric("circuit_breaker_state", &[("breaker", "g")])), Some(0));
    }
}

both_modules! {
    /// Trailers-only failures count at the headers; INVALID_ARGUMENT never counts as a
    /// failure; a streaming call that fails at its end counts once.
    fn grpc_calls_count_once_by_their_code(layout) {
        let server = GrpcServer::start();
        let envoy = grpc_gateway(layout, &server, &grpc_config(r#""30s""#, 1000));
        let port = envoy.port("gateway");
        let invalid = GrpcCall::new(port, UNARY).reply("trailers:3").count(6).concurrency(3).run();
        assert_eq!(codes(&invalid), [code::INVALID_ARGUMENT; 6]);
        let only = GrpcCall::new(port, UNARY).reply("trailers-only:13").count(3).run();
        assert_eq!(codes(&only), [code::INTERNAL; 3]);
        let streams = GrpcCall::new(port, "/shop.Orders/Watch")
            .streaming()
            .reply("stream:3:14")
            .count(4)
            .run();
        for o in &streams {
            assert_eq!((o.code, o.messages), (code::UNAVAILABLE, 3), "{o:#?}");
        }
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "success")]), 6), Some(6));
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "failure")]), 7), Some(7));
        // Give a second count a chance to show up: it must not.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(envoy.stat(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "failure")])), Some(7));
        assert_eq!(envoy.stat(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "ignored")])), Some(0));
    }
}

both_modules! {
    /// A stream that ends without a status, or is reset, is a failure; a call its client
    /// cancelled is nothing.
    fn grpc_calls_without_a_status_fail_unless_their_client_cancelled(layout) {
        let server = GrpcServer::start();
        let envoy = grpc_gateway(layout, &server, &grpc_config(r#""30s""#, 1000));
        let port = envoy.port("gateway");
        for shape in ["no-status", "end-without-trailers", "reset"] {
            let o = GrpcCall::new(port, UNARY).reply(shape).run_one();
            assert_ne!(o.code, code::OK, "{shape}: {o:#?}");
        }
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "failure")]), 3), Some(3));
        // The client gives up after 200 ms; the server would answer OK after 2 s.
        let cancelled = GrpcCall::new(port, UNARY)
            .reply("trailers:0,delay-ms=2000")
            .timeout(Duration::from_millis(200))
            .count(2)
            .run();
        assert_eq!(codes(&cancelled), [code::DEADLINE_EXCEEDED; 2], "{cancelled:#?}");
        assert_eq!(envoy.stat_eventually(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "ignored")]), 2), Some(2));
        assert_eq!(envoy.stat(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "failure")])), Some(3));
        assert_eq!(envoy.stat(&metric("circuit_breaker_calls_total", &[("breaker", "g"), ("outcome", "success")])), Some(0));
    }
}

both_modules! {
    /// With a backoff, each failed probe opens it for longer: the Retry-After values the
    /// clients see grow 1, 2, 4, and the gauge shows the interval.
    fn consecutive_failed_probes_make_the_open_interval_grow(layout) {
        let upstream = Upstream::start(vec![Reply::Status(503); 20]);
        let envoy = gateway(
            layout,
            upstream.port(),
            &config_with_open(
                r#"{"initial": "1s", "multiplier": 2, "max": "10s", "jitter": 0}"#,
            ),
            "15s",
        );
        let port = envoy.port("gateway");
        for _ in 0..4 {
            assert!(!is_fallback(&get(port)));
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = get(port);
            assert!(is_fallback(&r), "{:?}", r.headers);
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            seen.push((wait, envoy.stat(&metric("circuit_breaker_open_interval_milliseconds", &[("breaker", "b")]))));
            std::thread::sleep(Duration::from_millis(wait * 1000 + 50));
            // The probe fails (1 of the 2 probes is already 50%): open again, for longer.
            assert!(!is_fallback(&get(port)));
        }
        assert_eq!(seen, [(1, Some(1000)), (2, Some(2000)), (4, Some(4000))]);
    }
}
