//! The modules as Envoy sees them (the four filters and `gateway.wasm`): they load with two
//! workers, refuse invalid configuration with the field path in Envoy's log, report metrics,
//! and import only what Envoy provides.

use filter_tests::client;
use filter_tests::envoy::{Envoy, Mode, parse_prometheus};
use filter_tests::envoy_config::{Layout, TestEnvoyConfig};
use filter_tests::metric;
use filter_tests::upstream::Upstream;
use filter_tests::wasm::{self, FILTERS};

/// The series each module counts a request it lets through in: its family and labels.
pub(crate) fn pass_series(name: &str) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match name {
        "jwt_auth" => ("jwt_auth_requests_total", &[("outcome", "allowed")]),
        "rate_limit" => (
            "rate_limit_requests_total",
            &[("rule", "all"), ("outcome", "allowed")],
        ),
        "circuit_breaker" => (
            "circuit_breaker_calls_total",
            &[("breaker", "all"), ("outcome", "success")],
        ),
        _ => ("retry_policy_requests_total", &[("outcome", "granted")]),
    }
}

/// The `/stats` name of [`pass_series`].
pub(crate) fn pass_metric(name: &str) -> String {
    let (family, labels) = pass_series(name);
    metric(family, labels)
}

/// A configuration that lets every request through and counts it.
pub(crate) fn pass_config(name: &str) -> &'static str {
    match name {
        "rate_limit" => {
            r#"{"rules": [{"name": "all", "key": [{"rule": {}}], "limit": {"requests": 1000000, "per": "1s"}}]}"#
        }
        "circuit_breaker" => r#"{"breakers": [{"name": "all"}]}"#,
        "retry_policy" => r#"{"rules": [{"retry_on": ["connect-failure"]}]}"#,
        _ => "{}",
    }
}

/// Loads one module with two workers, sends requests on separate connections, and checks
/// they reached the upstream and were counted by the module's metric (one stat for all
/// workers' VMs). `gateway` loads the combined module with all four filters.
fn loads_with_two_workers(name: &str) {
    let upstream = Upstream::echo();
    let filters: Vec<&str> = if name == "gateway" {
        FILTERS.to_vec()
    } else {
        vec![name]
    };
    let layout = if name == "gateway" {
        Layout::GatewayModule
    } else {
        Layout::SeparateFilters
    };
    let mut config = TestEnvoyConfig::new(upstream.port()).layout(layout);
    for filter in &filters {
        config = config.filter(filter, pass_config(filter));
    }
    let envoy = Envoy::start(&config.render());
    for _ in 0..20 {
        let response = client::get("/hello").send(envoy.port("gateway"));
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["path"], "/hello");
    }
    assert_eq!(upstream.count(), 20);
    for filter in &filters {
        assert_eq!(envoy.stat_eventually(&pass_metric(filter), 20), Some(20));
    }
    // One VM per worker (and one on the main thread) ran on_vm_start.
    let started = envoy
        .log()
        .matches(&format!("{name} {} started", env!("CARGO_PKG_VERSION")))
        .count();
    assert!(
        started >= 2,
        "expected a VM per worker, saw {started} start banners"
    );
    assert_eq!(envoy.stat_eventually("server.concurrency", 2), Some(2));
}

#[test]
fn jwt_auth_loads_with_two_workers() {
    loads_with_two_workers("jwt_auth");
}

#[test]
fn rate_limit_loads_with_two_workers() {
    loads_with_two_workers("rate_limit");
}

#[test]
fn circuit_breaker_loads_with_two_workers() {
    loads_with_two_workers("circuit_breaker");
}

#[test]
fn retry_policy_loads_with_two_workers() {
    loads_with_two_workers("retry_policy");
}

#[test]
fn gateway_loads_with_two_workers() {
    loads_with_two_workers("gateway");
}

#[test]
fn invalid_configuration_is_refused_with_the_field_path() {
    let mode = Mode::from_env();
    for name in FILTERS {
        let config = TestEnvoyConfig::new(1)
            .filter(name, r#"{"limits": {"requests": 5}}"#)
            .render();
        let (status, log) = Envoy::start_expecting_refusal(&mode, &config);
        assert!(
            !status.success(),
            "Envoy exited successfully with an invalid {name} config"
        );
        let expected = format!("{name}: invalid configuration: limits: unknown field `limits`");
        let line = log.lines().find(|l| l.contains(&expected));
        assert!(
            line.is_some_and(|l| l.contains("[warning]")),
            "{expected:?} not in Envoy's log as a warning:\n{log}"
        );
    }
    // The gateway names the member, then the path inside it.
    let config = TestEnvoyConfig::new(1)
        .layout(Layout::GatewayModule)
        .filter("rate_limit", r#"{"limits": {"requests": 5}}"#)
        .render();
    let (status, log) = Envoy::start_expecting_refusal(&mode, &config);
    assert!(!status.success());
    let expected = "gateway: invalid configuration: rate_limit.limits: unknown field `limits`";
    assert!(
        log.contains(expected),
        "{expected:?} not in Envoy's log:\n{log}"
    );
}

#[test]
fn malformed_json_is_refused() {
    let config = TestEnvoyConfig::new(1).filter("rate_limit", "{,}").render();
    let (status, log) = Envoy::start_expecting_refusal(&Mode::from_env(), &config);
    assert!(!status.success());
    assert!(
        log.contains("rate_limit: invalid configuration: invalid JSON"),
        "{log}"
    );
}

both_modules! {
    /// The same names whether the filters run as separate modules or inside `gateway.wasm`.
    fn custom_metrics_reach_prometheus(layout) {
        let upstream = Upstream::echo();
        let mut config = TestEnvoyConfig::new(upstream.port()).layout(layout);
        for name in FILTERS {
            config = config.filter(name, pass_config(name));
        }
        let envoy = Envoy::start(&config.render());
        for _ in 0..3 {
            assert_eq!(client::get("/").send(envoy.port("gateway")).status, 200);
        }
        for name in FILTERS {
            envoy.stat_eventually(&pass_metric(name), 3);
        }
        let text = envoy.admin("/stats/prometheus").text();
        let samples = parse_prometheus(&text);
        for name in FILTERS {
            // Envoy strips the `wasmcustom.` namespace, adds no `envoy_` prefix, and the
            // configuration's `stats_tags` take the labels out of the name.
            let (family, labels) = pass_series(name);
            let sample = samples
                .iter()
                .find(|s| s.name == family && s.has(labels))
                .unwrap_or_else(|| panic!("{family}{labels:?} not in /stats/prometheus:\n{text}"));
            assert_eq!(sample.value, 3.0, "{sample:?}");
            assert!(text.contains(&format!("# TYPE {family} counter")), "{text}");
        }
    }

}

#[test]
fn modules_import_only_what_envoy_provides() {
    for name in FILTERS.into_iter().chain(["gateway"]) {
        let path = wasm::module(name);
        let imports = wasm::imports(&path);
        assert!(
            !imports.is_empty(),
            "{name}.wasm imports nothing: not a proxy-wasm module?"
        );
        let refused: Vec<_> = imports
            .iter()
            .filter(|(module, func)| !wasm::import_allowed(module, func))
            .collect();
        assert!(
            refused.is_empty(),
            "{name}.wasm imports what Envoy does not provide: {refused:?}"
        );
    }
}

/// Envoy accepts exactly the ABI versions 0.1.0, 0.2.0 and 0.2.1 (proxy-wasm-cpp-host); each
/// module declares 0.2.1, the one every Envoy from 1.36 to 1.40 (and Istio's) implements.
#[test]
fn modules_declare_proxy_wasm_abi_0_2_1() {
    for name in FILTERS.into_iter().chain(["gateway"]) {
        let declared: Vec<String> = wasm::exports(&wasm::module(name))
            .into_iter()
            .filter(|e| e.starts_with("proxy_abi_version_"))
            .collect();
        assert_eq!(declared, ["proxy_abi_version_0_2_1"], "{name}.wasm");
    }
}

#[test]
fn the_pinned_envoy_version_runs() {
    let mode = Mode::from_env();
    let version = mode.version();
    eprintln!("integration suite: {mode}, Envoy {version}");
    assert_eq!(version, filter_tests::envoy::pinned_version(), "{mode}");
}
