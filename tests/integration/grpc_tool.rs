//! `grpc-tool` itself: each answer shape its server sends reaches tonic's client as the code a
//! real gRPC client makes of it, first directly (no Envoy), then through an Envoy with no
//! filters (what Envoy alone does to each shape, which the filter tests build on).

use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::TestEnvoyConfig;
use filter_tests::grpc::{GrpcCall, GrpcOutcome, GrpcServer, code, count_by_code};
use std::time::Duration;

const PATH: &str = "/test.Echo/Unary";

fn call(port: u16, reply: &str) -> GrpcOutcome {
    GrpcCall::new(port, PATH).reply(reply).run_one()
}

#[test]
fn each_reply_shape_gives_the_client_its_code() {
    let server = GrpcServer::start();
    let port = server.port();

    let ok = call(port, "ok");
    assert_eq!((ok.code, ok.messages), (code::OK, 1), "{ok:#?}");
    assert_eq!(ok.trailer("grpc-status"), Some("0"));
    ok.assert_valid_grpc();

    let trailers = call(port, "trailers:14");
    assert_eq!(trailers.code, code::UNAVAILABLE, "{trailers:#?}");
    assert_eq!(trailers.message, "grpc-tool trailers:14");
    assert!(!trailers.is_trailers_only());
    trailers.assert_valid_grpc();

    let only = call(port, "trailers-only:8,message=slow down 100%");
    assert_eq!(only.code, code::RESOURCE_EXHAUSTED, "{only:#?}");
    assert_eq!(only.message, "slow down 100%");
    assert_eq!(only.header("grpc-message"), Some("slow down 100%25"));
    assert!(only.is_trailers_only());
    only.assert_valid_grpc();

    let stream = GrpcCall::new(port, "/test.Echo/Stream")
        .streaming()
        .reply("stream:3:13")
        .run_one();
    assert_eq!(
        (stream.code, stream.messages),
        (code::INTERNAL, 3),
        "{stream:#?}"
    );
    stream.assert_valid_grpc();
    let stream = GrpcCall::new(port, "/test.Echo/Stream")
        .streaming()
        .reply("stream:5:0")
        .run_one();
    assert_eq!((stream.code, stream.messages), (code::OK, 5), "{stream:#?}");

    // No final status: tonic calls it a protocol error, as grpc-go does.
    for reply in ["no-status", "end-without-trailers"] {
        let o = call(port, reply);
        assert_eq!(o.code, code::UNKNOWN, "{reply}: {o:#?}");
        assert!(o.message.contains("missing grpc-status"), "{reply}: {o:#?}");
        assert!(!o.protocol_problems().is_empty(), "{reply}");
    }
    // RST_STREAM(INTERNAL_ERROR), after the headers or instead of them.
    for reply in ["reset", "reset-before-headers"] {
        let o = call(port, reply);
        assert_eq!(o.code, code::INTERNAL, "{reply}: {o:#?}");
        assert!(o.message.contains("h2 protocol error"), "{reply}: {o:#?}");
    }
    // A plain HTTP 503: the client maps the HTTP status.
    let http = call(port, "http:503");
    assert_eq!(http.code, code::UNAVAILABLE, "{http:#?}");
    assert_eq!(http.http_status, Some(503));
    assert!(!http.protocol_problems().is_empty());

    // The client's own deadline, and a delay before the trailers.
    let slow = call(port, "trailers:14,delay-ms=300");
    assert_eq!(slow.code, code::UNAVAILABLE);
    assert!(slow.elapsed >= Duration::from_millis(300), "{slow:#?}");
    let slow_start = call(port, "ok,headers-delay-ms=300");
    assert_eq!(slow_start.code, code::OK);
    assert!(
        slow_start.elapsed >= Duration::from_millis(300),
        "{slow_start:#?}"
    );
    let late = GrpcCall::new(port, PATH)
        .reply("ok,delay-ms=2000")
        .timeout(Duration::from_millis(300))
        .run_one();
    assert_eq!(late.code, code::DEADLINE_EXCEEDED, "{late:#?}");
    assert!(late.elapsed < Duration::from_millis(1500), "{late:#?}");

    // fail-first counts per x-grpc-id.
    let attempts: Vec<u32> = (0..3)
        .map(|_| {
            GrpcCall::new(port, PATH)
                .reply("fail-first:2:14")
                .id("a")
                .run_one()
                .code
        })
        .collect();
    assert_eq!(attempts, [14, 14, 0]);
    let other = GrpcCall::new(port, PATH)
        .reply("fail-first:2:14")
        .id("b")
        .run_one();
    assert_eq!(other.code, code::UNAVAILABLE);
    assert_eq!(server.requests_with_id("a"), 3);
    assert_eq!(server.requests_with_id("b"), 1);

    let bad = call(port, "trailers:99");
    assert_eq!(bad.code, code::INVALID_ARGUMENT, "{bad:#?}");
    assert!(bad.message.contains("0 to 16"), "{bad:#?}");

    assert_eq!(server.requests(), 18, "{}", server.log());
}

#[test]
fn many_calls_at_once_over_several_connections() {
    let server = GrpcServer::start();
    let outcomes = GrpcCall::new(server.port(), PATH)
        .reply("ok,delay-ms=200")
        .count(40)
        .concurrency(40)
        .connections(4)
        .run();
    let indexes: Vec<usize> = outcomes.iter().map(|o| o.index).collect();
    assert_eq!(indexes, (0..40).collect::<Vec<_>>());
    assert_eq!(count_by_code(&outcomes).get(&code::OK), Some(&40));
    // At once, not one after another (40 x 200 ms).
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap();
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    assert_eq!(server.requests(), 40);
}

#[test]
fn a_target_that_refuses_connections_is_unavailable() {
    let o = GrpcCall::new(filter_tests::free_port(), PATH).run_one();
    assert_eq!(o.code, code::UNAVAILABLE, "{o:#?}");
    assert_eq!(o.http_status, None);
    assert!(o.detail.unwrap_or_default().contains("Connection refused"));
}

#[test]
fn through_envoy_without_filters_each_shape_keeps_its_meaning() {
    let server = GrpcServer::start();
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(server.port())
            .upstream_http2()
            .render(),
    );
    let port = envoy.port("gateway");
    for (reply, expected) in [
        ("ok", code::OK),
        ("trailers:14", code::UNAVAILABLE),
        ("trailers-only:8", code::RESOURCE_EXHAUSTED),
    ] {
        let o = call(port, reply);
        assert_eq!(o.code, expected, "{reply}: {o:#?}");
        o.assert_valid_grpc();
    }
    // A unary OK without a message: the client's own INTERNAL.
    let o = call(port, "stream:0:0");
    assert_eq!(o.code, code::INTERNAL, "{o:#?}");
    assert_eq!(o.message, "Missing response message.");
    let stream = GrpcCall::new(port, "/test.Echo/Stream")
        .streaming()
        .reply("stream:3:0")
        .run_one();
    assert_eq!((stream.code, stream.messages), (code::OK, 3), "{stream:#?}");
    // Envoy relays a missing status as it came.
    let o = call(port, "no-status");
    assert_eq!(o.code, code::UNKNOWN, "{o:#?}");
    // An upstream reset after the headers: the client's stream ends without a status too
    // (Envoy 1.40 resets it with INTERNAL_ERROR; 1.36 ends it, which the client calls
    // UNKNOWN).
    let o = call(port, "reset");
    assert!([code::INTERNAL, code::UNKNOWN].contains(&o.code), "{o:#?}");
    assert_eq!(o.http_status, Some(200));
    assert!(!o.protocol_problems().is_empty(), "{o:#?}");
    // A reset before any headers: Envoy answers for the upstream (503, gRPC UNAVAILABLE).
    let o = call(port, "reset-before-headers");
    assert_eq!(o.code, code::UNAVAILABLE, "{o:#?}");
    o.assert_valid_grpc();
    // Envoy's answer, not the upstream's: no x-grpc-tool-request.
    assert_eq!(o.header("x-grpc-tool-request"), None, "{o:#?}");
    assert_eq!(server.requests(), 8, "{}", server.log());
}
