//! Every configuration shipped in `envoy/` is valid for the pinned Envoy and really runs, so
//! the examples users copy cannot drift from the code.

use filter_tests::client;
use filter_tests::envoy::{Envoy, Mode};
use filter_tests::envoy_config::{example, examples};
use filter_tests::metric;
use filter_tests::tokens::{demo_claims, demo_key};

#[test]
fn every_example_passes_envoy_validate_mode() {
    let mode = Mode::from_env();
    let files = examples();
    assert!(
        files.len() >= 2,
        "expected the gateway and minimal examples, found {files:?}"
    );
    for file in files {
        let (ok, output) = mode.validate(&file);
        assert!(
            ok,
            "{} is refused by `envoy --mode validate` ({mode}):\n{output}",
            file.display()
        );
    }
}

/// Every example keeps `/public/` open, so this needs no token; the examples' protected
/// routes are exercised by the filters' own suites. Each example's `stats_config` turns our
/// filters' stats into labelled Prometheus series.
#[test]
fn every_example_starts_and_every_listener_answers() {
    for file in examples() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let envoy = Envoy::start(&example(name));
        assert!(!envoy.listeners().is_empty(), "{name} has no listener");
        for (listener, port) in envoy.listeners() {
            let response = client::get("/public/health").send(*port);
            assert_eq!(
                response.status,
                200,
                "{name}: listener {listener}: {}",
                response.text()
            );
        }
        assert_labelled_series(name, &envoy);
    }
}

/// Our filters' series in `/stats/prometheus` are families with labels: none is a flat name
/// with the labels folded in, which is what a configuration without the `stats_tags` shows.
fn assert_labelled_series(name: &str, envoy: &Envoy) {
    const FILTERS: [&str; 4] = [
        "jwt_auth_",
        "rate_limit_",
        "circuit_breaker_",
        "retry_policy_",
    ];
    let samples = envoy.prometheus();
    let ours: Vec<_> = samples
        .iter()
        .filter(|s| FILTERS.iter().any(|f| s.name.starts_with(f)))
        .collect();
    // The minimal example's empty configuration has no rule to count for.
    assert!(
        !ours.is_empty() || name == "minimal.yaml",
        "{name}: none of our metrics in /stats/prometheus"
    );
    for sample in &samples {
        // `<label>=.=<value>;.;` left in a name reads `<label>___<value>___` there.
        let folded = sample.name.contains("___");
        assert!(
            !folded,
            "{name}: {} is a flat name: labels were not extracted",
            sample.name
        );
    }
    for sample in ours {
        let labelled = sample.name.ends_with("_total") || !sample.labels.is_empty();
        assert!(labelled, "{name}: {sample:?}");
    }
}

/// `make test` runs the suite in Docker mode where Docker answers; this keeps the native path
/// honest on the same run.
#[test]
fn native_mode_smoke() {
    let envoy = Envoy::start_in(&Mode::native(), &example("gateway.yaml"));
    let token = demo_key().sign(&demo_claims("smoke", "read"));
    let response = client::get("/smoke")
        .header("authorization", &format!("Bearer {token}"))
        .send(envoy.port("gateway"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello from the demo upstream\n");
    assert_eq!(response.header("x-demo-user"), Some("smoke"));
    assert_eq!(
        envoy.stat_eventually(
            &metric("jwt_auth_requests_total", &[("outcome", "allowed")]),
            1
        ),
        Some(1)
    );
    assert_eq!(
        client::get("/smoke").send(envoy.port("gateway")).status,
        401
    );
}
