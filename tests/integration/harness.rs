//! The harness itself, checked through a real Envoy: the upstream behaviours tests rely on
//! produce the failures Envoy really reports.

use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::TestEnvoyConfig;
use filter_tests::tokens::{Alg, Key, jwks};
use filter_tests::upstream::{Reply, Upstream};
use std::time::Duration;

#[test]
fn scripted_statuses_arrive_in_order_then_the_last_repeats() {
    let upstream = Upstream::start(vec![
        Reply::Status(503),
        Reply::Status(502),
        Reply::Status(200),
    ]);
    let envoy = Envoy::start(&TestEnvoyConfig::new(upstream.port()).render());
    let port = envoy.port("gateway");
    let statuses: Vec<u16> = (0..4).map(|_| client::get("/").send(port).status).collect();
    assert_eq!(statuses, [503, 502, 200, 200]);
}

#[test]
fn echo_shows_what_the_upstream_received() {
    let upstream = Upstream::echo();
    let envoy = Envoy::start(&TestEnvoyConfig::new(upstream.port()).render());
    let response = client::Request::new("POST", "/orders?id=7")
        .header("x-tenant", "acme")
        .body("{\"qty\":1}")
        .send(envoy.port("gateway"));
    let echo = response.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/orders?id=7");
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert_eq!(echo["body"], "{\"qty\":1}");
    assert_eq!(upstream.received()[0].header("x-tenant"), Some("acme"));
}

#[test]
fn slow_and_hanging_upstreams_hit_the_route_timeout() {
    let slow = Upstream::start(vec![Reply::Delay(
        Duration::from_secs(2),
        Box::new(Reply::Status(200)),
    )]);
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(slow.port())
            .route_timeout("0.3s")
            .render(),
    );
    let response = client::get("/").send(envoy.port("gateway"));
    assert_eq!(response.status, 504, "{}", response.text());

    let hanging = Upstream::start(vec![Reply::Hang]);
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(hanging.port())
            .route_timeout("0.3s")
            .render(),
    );
    let response = client::get("/").send(envoy.port("gateway"));
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(hanging.count(), 1);
}

#[test]
fn a_reset_connection_is_a_503_reset() {
    let upstream = Upstream::start(vec![Reply::Reset]);
    let envoy = Envoy::start(&TestEnvoyConfig::new(upstream.port()).render());
    let response = client::get("/").send(envoy.port("gateway"));
    assert_eq!(response.status, 503);
    assert!(response.text().contains("reset"), "{}", response.text());
}

#[test]
fn a_served_jwks_carries_every_generated_key() {
    let keys: Vec<Key> = [Alg::RS256, Alg::ES256, Alg::EdDSA, Alg::HS256]
        .into_iter()
        .map(|alg| Key::generate(alg, alg.name()))
        .collect();
    let document = jwks(&keys.iter().collect::<Vec<_>>());
    let upstream = Upstream::start(vec![Reply::Json(document)]);
    let envoy = Envoy::start(&TestEnvoyConfig::new(upstream.port()).render());
    let served = client::get("/.well-known/jwks.json")
        .send(envoy.port("gateway"))
        .json();
    let kids: Vec<&str> = served["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["RS256", "ES256", "EdDSA", "HS256"]);
}

#[test]
fn rate_limit_service_and_redis_start_listen_and_stop() {
    use filter_tests::rls::{Redis, RlsServer, Storage};
    use std::net::TcpStream;
    let limits = std::fs::read_to_string(filter_tests::repo_root().join("envoy/rls/limits.yaml"))
        .expect("read envoy/rls/limits.yaml");
    let redis = Redis::start();
    redis.flushall();
    let mut in_memory = RlsServer::start(&limits, Storage::Memory);
    let on_redis = RlsServer::start(&limits, Storage::Redis(redis.port()));
    for port in [in_memory.port(), on_redis.port()] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "port {port}"
        );
    }
    in_memory.kill();
    assert!(TcpStream::connect(("127.0.0.1", in_memory.port())).is_err());
}
