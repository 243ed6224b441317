//! What `make dist` ships, fetched the ways a mesh fetches it: OCI images through a real
//! registry (both manifest formats Istio accepts), `docker load`, and Envoy's own remote
//! loading over HTTP with a sha256. Every module that comes back must be byte for byte the
//! one in `dist/SHA256SUMS`, and must run in Envoy.

use crate::modules::{pass_config, pass_metric};
use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Code, TestEnvoyConfig};
use filter_tests::oci::{self, DIST_MODULES, Format, Registry, listed_sha256, sha256_hex};
use filter_tests::upstream::{Reply, Upstream};
use filter_tests::wasm::{self, FILTERS};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn image_archive(module: &str) -> PathBuf {
    oci::dist_dir().join("images").join(format!("{module}.tar"))
}

#[test]
fn dist_holds_the_built_modules_and_their_checksums() {
    let dist = oci::dist_dir();
    for module in DIST_MODULES {
        let shipped = std::fs::read(dist.join(format!("{module}.wasm")))
            .unwrap_or_else(|e| panic!("dist/{module}.wasm: {e}"));
        let built = std::fs::read(wasm::module(module)).expect("read the built module");
        assert!(
            shipped == built,
            "dist/{module}.wasm is not the module built in this tree: run `make dist`"
        );
        assert_eq!(
            sha256_hex(&shipped),
            listed_sha256(&format!("{module}.wasm"))
        );
        let archive = std::fs::read(image_archive(module)).expect("read the image tarball");
        assert_eq!(
            sha256_hex(&archive),
            listed_sha256(&format!("images/{module}.tar"))
        );
    }
}

/// Starts Envoy on modules taken from files (the four filters as four entries, then
/// `gateway.wasm` as one), sends requests, and checks each filter counted them: the modules
/// load and run, not merely parse.
fn run_in_envoy(modules: &BTreeMap<&str, PathBuf>) {
    let upstream = Upstream::echo();
    let mut separate = TestEnvoyConfig::new(upstream.port());
    for filter in FILTERS {
        separate = separate.filter_from(
            filter,
            pass_config(filter),
            Code::File(modules[filter].clone()),
        );
    }
    let members: Vec<String> = FILTERS
        .iter()
        .map(|f| format!("\"{f}\": {}", pass_config(f)))
        .collect();
    let combined = TestEnvoyConfig::new(upstream.port()).filter_from(
        "gateway",
        &format!("{{{}}}", members.join(", ")),
        Code::File(modules["gateway"].clone()),
    );
    for gateway in [separate, combined] {
        let envoy = Envoy::start(&gateway.render());
        for _ in 0..5 {
            let response = client::get("/hello").send(envoy.port("gateway"));
            assert_eq!(response.status, 200, "{}", response.text());
        }
        for filter in FILTERS {
            let stat = pass_metric(filter);
            assert_eq!(envoy.stat_eventually(&stat, 5), Some(5), "{stat}");
        }
    }
}

#[test]
fn images_round_trip_through_a_registry_in_both_formats_istio_accepts() {
    let registry = Registry::start();
    let work = filter_tests::envoy::scratch_dir();
    let mut pulled_modules = BTreeMap::new();
    for module in DIST_MODULES {
        let expected = listed_sha256(&format!("{module}.wasm"));
        for (format, tag) in [(Format::Docker, "docker"), (Format::Oci, "oci")] {
            let reference = format!("{}/proxy-wasm-filters/{module}:{tag}", registry.host());
            oci::push(&image_archive(module), &reference, format);
            let image = oci::pull(&reference, &work.join(format!("{module}-{tag}")));
            // The compat layout: exactly one layer, holding the module as /plugin.wasm.
            assert_eq!(image.layer_types(), [format.layer_type()], "{reference}");
            let plugin = image
                .plugin_as_istio_finds_it()
                .unwrap_or_else(|why| panic!("{reference}: Istio would refuse it: {why}"));
            assert_eq!(sha256_hex(&plugin), expected, "{reference}: plugin.wasm");
            let path = work.join(format!("{module}-{tag}.wasm"));
            std::fs::write(&path, &plugin).expect("write the pulled module");
            if format == Format::Docker {
                pulled_modules.insert(module, path);
            }
        }
    }
    run_in_envoy(&pulled_modules);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn docker_load_gives_back_each_image_with_plugin_wasm_at_its_root() {
    let work = filter_tests::envoy::scratch_dir();
    for module in DIST_MODULES {
        let loaded = oci::run(
            Command::new("docker")
                .args(["load", "--input"])
                .arg(image_archive(module)),
        );
        let image = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .unwrap_or_else(|| panic!("docker load named no image:\n{loaded}"))
            .trim()
            .to_owned();
        let repo = std::env::var("IMAGE_REPO").unwrap_or_else(|_| "proxy-wasm-filters".into());
        assert_eq!(
            image,
            format!("{repo}/{module}:{}", env!("CARGO_PKG_VERSION"))
        );
        let layers = oci::run(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}} {{index .Config.Labels \"org.opencontainers.image.title\"}} \
             {{index .Config.Labels \"org.opencontainers.image.revision\"}}",
            &image,
        ]));
        let described: Vec<&str> = layers.split_whitespace().collect();
        assert_eq!(described.len(), 3, "{image}: {layers}");
        assert_eq!(
            described[..2],
            ["1", module],
            "{image}: one layer, its title"
        );
        // A FROM scratch image has no command; `docker create` needs one, never run.
        let container = oci::run(Command::new("docker").args(["create", &image, "/plugin.wasm"]));
        let container = container.trim().to_owned();
        let copy = Command::new("docker")
            .args(["cp", &format!("{container}:/plugin.wasm")])
            .arg(work.join(format!("{module}.wasm")))
            .output();
        let _ = Command::new("docker").args(["rm", &container]).output();
        let copy = copy.expect("run docker cp");
        assert!(
            copy.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&copy.stderr)
        );
        let plugin = std::fs::read(work.join(format!("{module}.wasm"))).expect("read plugin.wasm");
        assert_eq!(
            sha256_hex(&plugin),
            listed_sha256(&format!("{module}.wasm")),
            "{image}: /plugin.wasm"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// A module server, and a gateway whose rate_limit module Envoy fetches from it.
fn remote_gateway(module_server: &Upstream, upstream: &Upstream, sha256: &str) -> String {
    TestEnvoyConfig::new(upstream.port())
        .cluster("modules", module_server.port())
        .filter_from(
            "rate_limit",
            r#"{"rules": [{"name": "all", "key": [{"rule": {}}], "limit": {"requests": 2, "per": "1m"}}]}"#,
            Code::Remote {
                uri: format!("http://127.0.0.1:{}/modules/rate_limit.wasm", module_server.port()),
                cluster: "modules".to_owned(),
                sha256: sha256.to_owned(),
            },
        )
        .render()
}

#[test]
fn envoy_fetches_a_module_over_http_and_runs_it_when_its_sha256_matches() {
    let bytes = std::fs::read(oci::dist_dir().join("rate_limit.wasm")).expect("dist module");
    let sha256 = listed_sha256("rate_limit.wasm");
    let module_server = Upstream::start(vec![Reply::Bytes("application/wasm", bytes)]);
    let upstream = Upstream::echo();
    let envoy = Envoy::start(&remote_gateway(&module_server, &upstream, &sha256));
    let statuses: Vec<u16> = (0..3)
        .map(|_| client::get("/").send(envoy.port("gateway")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429], "the fetched module limits");
    assert!(
        module_server
            .received()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/modules/rate_limit.wasm"),
        "Envoy did not fetch the module"
    );
}

#[test]
fn envoy_refuses_a_fetched_module_whose_sha256_differs() {
    let bytes = std::fs::read(oci::dist_dir().join("rate_limit.wasm")).expect("dist module");
    // The checksum of another module: a real one, only not this one's.
    let wrong = listed_sha256("retry_policy.wasm");
    let module_server = Upstream::start(vec![Reply::Bytes("application/wasm", bytes)]);
    let upstream = Upstream::echo();
    let envoy = Envoy::start(&remote_gateway(&module_server, &upstream, &wrong));
    assert!(
        envoy.wait_for_log("failed to load", std::time::Duration::from_secs(20)),
        "Envoy did not report the module as failed"
    );
    // Fail closed: no request passes without the filter it was configured with.
    for _ in 0..3 {
        let response = client::get("/").send(envoy.port("gateway"));
        assert_eq!(response.status, 503, "{}", response.text());
    }
    assert_eq!(
        upstream.count(),
        0,
        "a request reached the upstream unfiltered"
    );
    assert!(module_server.count() >= 1, "Envoy never fetched the module");
    assert!(
        !envoy.log().contains("rate_limit 0.1.0 started"),
        "the module ran despite the wrong sha256"
    );
}
