//! Every configuration shipped in `envoy/` is valid for the pinned Envoy and really runs, so
//! the examples users copy cannot drift from the code.

use filter_tests::client;
use filter_tests::envoy::{Envoy, Mode};
use filter_tests::envoy_config::{example, examples};
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
/// routes are exercised by the filters' own suites.
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
        envoy.stat_eventually("wasmcustom.jwt_auth.allowed", 1),
        Some(1)
    );
    assert_eq!(
        client::get("/smoke").send(envoy.port("gateway")).status,
        401
    );
}
