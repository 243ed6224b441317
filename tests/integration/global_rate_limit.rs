//! Global rules of `rate_limit.wasm` in real Envoys (two workers each) against a real rate
//! limit service: Limitador's counting behind Envoy's RLS protocol (`tests/rls-server`), with
//! counters in memory or in Redis; and every kind of service failure, each decided by its own
//! setting, within its timeout.

use filter_tests::client::{self, Response};
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig};
use filter_tests::free_port;
use filter_tests::upstream::Upstream;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A `rate_limit` configuration with one service `rls` (cluster `rls`, domain `gateway`)
/// whose extra members are `service_extra`, and a global rule `fleet` per `x-user-id`.
fn fleet_config(service_extra: &str) -> String {
    format!(
        r#"{{"services": {{"rls": {{"cluster": "rls", "domain": "gateway" {service_extra}}}}},
            "rules": [{{"name": "fleet", "global": {{"descriptor": [{{"key": "user", "value": {{"header": "x-user-id"}}}}]}}}}]}}"#
    )
}

/// An Envoy whose `rls` cluster reaches `127.0.0.1:rls_port`, with `config` for rate_limit.
fn envoy_with_service(layout: Layout, upstream: &Upstream, rls_port: u16, config: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .layout(layout)
            .grpc_cluster("rls", rls_port)
            .filter("rate_limit", config)
            .render(),
    )
}

fn as_user(port: u16, user: &str) -> Response {
    client::get("/api")
        .header("x-user-id", user)
        .timeout(Duration::from_secs(10))
        .send(port)
}

/// The problem `detail` of a refusal.
fn detail(r: &Response) -> String {
    r.json()["detail"].as_str().unwrap_or_default().to_owned()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    free_port()
}

both_modules! {
    fn an_unreachable_service_is_decided_by_its_setting_at_once(layout) {
        let upstream = Upstream::echo();
        let port = closed_port();
        let deny = envoy_with_service(layout, &upstream, port,
            &fleet_config(r#", "timeout": "2s", "on_failure": {"unreachable": "deny"}"#));
        let started = Instant::now();
        let refused = as_user(deny.port("gateway"), "alice");
        // Refused connections are known at once: no waiting for the 2 s timeout.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert!(detail(&refused).starts_with("rate limit service rls: unreachable: "), "{}", refused.text());
        assert_eq!(upstream.count(), 0);
        assert_eq!(deny.stat_eventually("wasmcustom.rate_limit.service.rls.unreachable", 1), Some(1));
        assert_eq!(deny.stat_eventually("wasmcustom.rate_limit.service.rls.failure_denied", 1), Some(1));
        drop(deny);

        let allow = envoy_with_service(layout, &upstream, port, &fleet_config(r#", "timeout": "2s""#));
        let passed = as_user(allow.port("gateway"), "alice");
        assert_eq!(passed.status, 200, "{}", passed.text());
        assert_eq!(upstream.count(), 1);
        assert_eq!(allow.stat_eventually("wasmcustom.rate_limit.service.rls.unreachable", 1), Some(1));
        assert!(allow.wait_for_log("rate limit service rls (cluster rls): unreachable", Duration::from_secs(2)),
            "no warning in {}", allow.log());
    }
}

both_modules! {
    fn a_cluster_envoy_does_not_have_is_unreachable_not_a_crash(layout) {
        let upstream = Upstream::echo();
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port())
                .layout(layout)
                .filter("rate_limit", &fleet_config(r#", "on_failure": {"unreachable": "deny"}"#))
                .render(),
        );
        for _ in 0..3 {
            let refused = as_user(envoy.port("gateway"), "alice");
            assert_eq!(refused.status, 503, "{}", refused.text());
            assert!(detail(&refused).contains("unreachable"), "{}", refused.text());
        }
        assert_eq!(envoy.stat_eventually("wasmcustom.rate_limit.service.rls.unreachable", 3), Some(3));
    }
}

both_modules! {
    fn a_service_that_never_answers_times_out_within_its_timeout(layout) {
        let upstream = Upstream::echo();
        // Accepts connections and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent_port = silent.local_addr().expect("addr").port();
        let held = std::thread::spawn(move || {
            let mut open = Vec::new();
            for stream in silent.incoming().take(4) {
                open.push(stream);
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        let envoy = envoy_with_service(layout, &upstream, silent_port,
            &fleet_config(r#", "timeout": "300ms", "on_failure": {"timeout": "deny"}"#));
        let started = Instant::now();
        let refused = as_user(envoy.port("gateway"), "alice");
        let waited = started.elapsed();
        assert_eq!(refused.status, 503, "{} after {waited:?}; {}", refused.text(), envoy.log());
        assert_eq!(detail(&refused), "rate limit service rls: timeout: no answer within 300ms");
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500), "{waited:?}");
        assert_eq!(envoy.stat_eventually("wasmcustom.rate_limit.service.rls.timeout", 1), Some(1));
        assert_eq!(upstream.count(), 0);
        drop(held);
    }
}
