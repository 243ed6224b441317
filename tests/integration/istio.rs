//! The Istio manifests in `envoy/istio/`: valid for Istio's CRD schemas (vendored in
//! `tests/vendor/istio/`), consistent with each other, and with plugin configurations that
//! really run in Envoy, chained in the order Istio chains them.

use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{TestEnvoyConfig, yaml_files};
use filter_tests::k8s_schema::{Crd, documents};
use filter_tests::oci::DIST_MODULES;
use filter_tests::rls::{RlsServer, Storage};
use filter_tests::tokens::{Alg, Key, jwks, now_secs};
use filter_tests::upstream::{Reply, Upstream};
use serde_json::{Value, json};

/// Every document of every file in `envoy/istio/`, with its file name.
fn manifests() -> Vec<(String, Value)> {
    yaml_files(&filter_tests::repo_root().join("envoy").join("istio"))
        .iter()
        .flat_map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            documents(path)
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .collect()
}

fn of_kind(kind: &str) -> Vec<(String, Value)> {
    manifests()
        .into_iter()
        .filter(|(_, doc)| doc["kind"] == kind)
        .collect()
}

/// The WasmPlugin for a module (the one whose image is that module's).
fn plugin_for(module: &str) -> Value {
    let suffix = format!("/{module}:{}", env!("CARGO_PKG_VERSION"));
    of_kind("WasmPlugin")
        .into_iter()
        .map(|(_, doc)| doc)
        .find(|doc| {
            doc["spec"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with(&suffix))
        })
        .unwrap_or_else(|| panic!("no WasmPlugin in envoy/istio/ pulls {module} (…{suffix})"))
}

/// Each WasmPlugin manifest tells how to get labelled metrics in Istio, with every label our
/// filters use (a WasmPlugin cannot set the proxy's stat tags itself).
#[test]
fn every_plugin_manifest_lists_every_metric_label_as_an_extra_stat_tag() {
    let expected = format!(
        "sidecar.istio.io/extraStatTags: {}",
        filter_core::metrics::LABELS.join(",")
    );
    for path in yaml_files(&filter_tests::repo_root().join("envoy").join("istio")) {
        let text = std::fs::read_to_string(&path).expect("read the manifest");
        if text.contains("kind: WasmPlugin") {
            assert!(
                text.contains(&expected),
                "{} does not say `{expected}`",
                path.display()
            );
        }
    }
}

fn crds() -> Vec<Crd> {
    let dir = filter_tests::repo_root().join("tests/vendor/istio");
    ["wasmplugin-crd.yaml", "serviceentry-crd.yaml"]
        .iter()
        .map(|f| Crd::load(&dir.join(f)))
        .collect()
}

#[test]
fn every_istio_manifest_matches_istios_crd_schema() {
    let crds = crds();
    let all = manifests();
    assert!(!all.is_empty(), "envoy/istio/ holds no manifest");
    for (file, doc) in &all {
        let (api_version, kind) = (
            doc["apiVersion"].as_str().unwrap_or_default(),
            doc["kind"].as_str().unwrap_or_default(),
        );
        if kind == "DestinationRule" {
            // Its CRD is not vendored (over 100 KB); the consistency test checks its fields.
            assert_eq!(api_version, "networking.istio.io/v1", "{file}");
            continue;
        }
        let crd = crds
            .iter()
            .find(|c| c.serves(api_version, kind))
            .unwrap_or_else(|| panic!("{file}: no vendored CRD serves {api_version} {kind}"));
        let violations = crd.violations(doc);
        assert!(violations.is_empty(), "{file}: {violations:#?}");
    }
}

/// The CEL rules of the CRDs that concern our manifests, which the schema check does not
/// evaluate.
#[test]
fn the_crds_cel_rules_hold_for_every_manifest() {
    for (file, doc) in of_kind("WasmPlugin") {
        let spec = &doc["spec"];
        let url = spec["url"].as_str().unwrap_or_default();
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        assert!(
            ["", "oci", "http", "https", "file"].contains(&scheme),
            "{file}: url scheme {scheme}"
        );
        let selectors = ["selector", "targetRef", "targetRefs"]
            .iter()
            .filter(|k| !spec[**k].is_null())
            .count();
        assert!(selectors <= 1, "{file}: only one of targetRefs or selector");
        for (key, value) in spec["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert!(
                !key.is_empty() && !key.contains('*'),
                "{file}: label key {key}"
            );
            assert!(
                !value.as_str().unwrap_or("*").contains('*'),
                "{file}: label {key}"
            );
        }
    }
    for (file, doc) in of_kind("ServiceEntry") {
        let spec = &doc["spec"];
        for host in spec["hosts"].as_array().into_iter().flatten() {
            assert_ne!(host, "*", "{file}: hostname cannot be wildcard");
        }
        let mut numbers: Vec<u64> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["number"].as_u64())
            .collect();
        let count = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            count,
            "{file}: port number cannot be duplicated"
        );
        assert!(
            spec["workloadSelector"].is_null() || spec["endpoints"].is_null(),
            "{file}: only one of WorkloadSelector or Endpoints"
        );
    }
}

fn phase_rank(plugin: &Value) -> usize {
    match plugin["spec"]["phase"].as_str() {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        // UNSPECIFIED_PHASE: at the end of the chain, before the router.
        _ => 3,
    }
}

#[test]
fn each_module_has_a_plugin_in_the_phase_and_failure_mode_that_fits_it() {
    let phase = |m: &str| plugin_for(m)["spec"]["phase"].clone();
    let fail = |m: &str| plugin_for(m)["spec"]["failStrategy"].clone();
    let priority = |m: &str| plugin_for(m)["spec"]["priority"].as_i64().unwrap_or(0);
    for module in DIST_MODULES {
        let plugin = plugin_for(module);
        assert!(
            plugin["spec"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("oci://")),
            "{module}: pulled as an OCI image"
        );
    }
    // Authentication first, and never bypassed.
    assert_eq!(phase("jwt_auth"), "AUTHN");
    assert_eq!(fail("jwt_auth"), "FAIL_CLOSE");
    assert_eq!(phase("gateway"), "AUTHN");
    assert_eq!(fail("gateway"), "FAIL_CLOSE");
    // Limits after authentication (they key on its x-user-id), before authorization.
    assert_eq!(phase("rate_limit"), "AUTHZ");
    // The breaker and then the retry policy, after both.
    assert_eq!(phase("circuit_breaker"), "STATS");
    assert_eq!(phase("retry_policy"), "STATS");
    assert!(
        priority("circuit_breaker") > priority("retry_policy"),
        "the breaker must run first (higher priority) so a half-open probe is never retried"
    );
}

/// The ServiceEntry port (and its host) the cluster name `outbound|<port>||<host>` refers to.
fn service_entry_port(cluster: &str) -> (Value, Value) {
    let parts: Vec<&str> = cluster.split('|').collect();
    let [direction, port, subset, host] = parts[..] else {
        panic!("{cluster} is not an Istio cluster name");
    };
    assert_eq!((direction, subset), ("outbound", ""), "{cluster}");
    let (file, entry) = of_kind("ServiceEntry")
        .into_iter()
        .find(|(_, doc)| {
            doc["spec"]["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == host))
        })
        .unwrap_or_else(|| panic!("no ServiceEntry registers {host}, which {cluster} names"));
    let port_entry = entry["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["number"].as_u64().map(|n| n.to_string()).as_deref() == Some(port))
        .cloned()
        .unwrap_or_else(|| panic!("{file}: {host} has no port {port}, which {cluster} names"));
    (port_entry, Value::from(host))
}

#[test]
fn the_key_server_the_plugins_call_is_registered_and_reached_over_tls() {
    let jwks_clusters: Vec<String> = [
        plugin_for("jwt_auth")["spec"]["pluginConfig"].clone(),
        plugin_for("gateway")["spec"]["pluginConfig"]["jwt_auth"].clone(),
    ]
    .iter()
    .flat_map(|config| {
        config["providers"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, p)| p["remote_jwks"]["cluster"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    })
    .collect();
    assert_eq!(
        jwks_clusters.len(),
        2,
        "both plugins fetch their keys remotely"
    );
    for cluster in jwks_clusters {
        let (port, host) = service_entry_port(&cluster);
        // Plain HTTP from the module to the sidecar ...
        assert_eq!(port["protocol"], "HTTP", "{cluster}");
        assert_eq!(
            port["targetPort"], 443,
            "{cluster}: the key server listens on 443"
        );
        // ... and TLS from the sidecar to the key server, checking its name.
        let (_, rule) = of_kind("DestinationRule")
            .into_iter()
            .find(|(_, doc)| doc["spec"]["host"] == host)
            .unwrap_or_else(|| panic!("no DestinationRule originates TLS to {host}"));
        let setting = rule["spec"]["trafficPolicy"]["portLevelSettings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["port"]["number"] == port["number"])
            .unwrap_or_else(|| panic!("the DestinationRule for {host} has no setting for {port}"));
        assert_eq!(setting["tls"]["mode"], "SIMPLE");
        assert_eq!(setting["tls"]["sni"], host);
    }
}

/// A key server standing in for the one the manifests name, and a token it vouches for.
struct Issuer {
    key: Key,
    server: Upstream,
}

impl Issuer {
    fn start() -> Issuer {
        let key = Key::generate(Alg::RS256, "istio-test");
        let server = Upstream::start(vec![Reply::Json(jwks(&[&key]))]);
        Issuer { key, server }
    }

    fn token(&self, config: &Value, sub: &str, scope: &str) -> String {
        let provider = &config["providers"]["example"];
        self.key.sign(&json!({
            "iss": provider["issuer"], "aud": provider["audiences"][0], "sub": sub,
            "scope": scope, "exp": now_secs() + 600,
        }))
    }
}

/// Checks a chain built from the manifests: open paths open, the rest behind a token from
/// the key server reached through the manifests' cluster, limits announced.
fn exercise(envoy: &Envoy, issuer: &Issuer, jwt_config: &Value, upstream: &Upstream) {
    let port = envoy.port("gateway");
    let open = client::get("/healthz").send(port);
    assert_eq!(open.status, 200, "{}", open.text());
    let anonymous = client::get("/api/orders").send(port);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let token = issuer.token(jwt_config, "alice", "read");
    let signed_in = client::get("/api/orders")
        .header("authorization", &format!("Bearer {token}"))
        .send(port);
    assert_eq!(signed_in.status, 200, "{}", signed_in.text());
    assert!(
        signed_in.header("ratelimit-policy").is_some(),
        "the rate limit ran: {:?}",
        signed_in.headers
    );
    let seen = upstream.received();
    let last = seen.last().expect("the upstream saw the request");
    assert_eq!(last.header("x-user-id"), Some("alice"));
    assert!(
        issuer.server.count() >= 1,
        "the keys came from the key server"
    );
}

/// A gateway whose routes go to `upstream` and whose key-server cluster, named as Istio names
/// it, reaches `issuer`.
fn istio_like_gateway(upstream: &Upstream, issuer: &Issuer, jwt_config: &Value) -> TestEnvoyConfig {
    let cluster = jwt_config["providers"]["example"]["remote_jwks"]["cluster"]
        .as_str()
        .expect("the example provider fetches its keys");
    TestEnvoyConfig::new(upstream.port()).cluster(cluster, issuer.server.port())
}

#[test]
fn the_four_plugins_run_in_envoy_chained_as_istio_chains_them() {
    let mut plugins: Vec<(String, Value)> =
        ["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"]
            .iter()
            .map(|m| ((*m).to_owned(), plugin_for(m)))
            .collect();
    // Istio's order: by phase, then by priority, highest first.
    plugins.sort_by_key(|(_, p)| (phase_rank(p), -p["spec"]["priority"].as_i64().unwrap_or(0)));
    let order: Vec<&str> = plugins.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        order,
        ["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"]
    );

    let jwt_config = plugin_for("jwt_auth")["spec"]["pluginConfig"].clone();
    let issuer = Issuer::start();
    let upstream = Upstream::echo();
    let mut gateway = istio_like_gateway(&upstream, &issuer, &jwt_config);
    for (module, plugin) in &plugins {
        // Istio hands pluginConfig to the module as JSON text.
        gateway = gateway.filter(module, &plugin["spec"]["pluginConfig"].to_string());
    }
    let envoy = Envoy::start(&gateway.render());
    exercise(&envoy, &issuer, &jwt_config, &upstream);
}

#[test]
fn the_gateway_plugin_runs_in_envoy() {
    let config = plugin_for("gateway")["spec"]["pluginConfig"].clone();
    let issuer = Issuer::start();
    let upstream = Upstream::echo();
    let gateway = istio_like_gateway(&upstream, &issuer, &config["jwt_auth"])
        .filter("gateway", &config.to_string());
    let envoy = Envoy::start(&gateway.render());
    exercise(&envoy, &issuer, &config["jwt_auth"], &upstream);
}

/// The WasmPlugin with global rules: its service is registered as gRPC (HTTP/2) under the
/// cluster name it calls, and its configuration limits a fleet in a real Envoy whose cluster
/// of that name reaches a real rate limit service.
#[test]
fn the_global_rate_limit_plugin_calls_a_registered_grpc_service() {
    let (file, plugin) = of_kind("WasmPlugin")
        .into_iter()
        .find(|(_, doc)| doc["metadata"]["name"] == "rate-limit-global")
        .expect("a WasmPlugin named rate-limit-global");
    let config = plugin["spec"]["pluginConfig"].clone();
    let clusters: Vec<String> = config["services"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, s)| s["cluster"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(clusters.len(), 1, "{file}");
    let cluster = &clusters[0];
    let (port, _) = service_entry_port(cluster);
    assert_eq!(port["protocol"], "GRPC", "{file}: {cluster} must be HTTP/2");

    let rls = RlsServer::start(
        "- namespace: gateway\n  max_value: 3\n  seconds: 60\n  conditions: []\n  variables: [\"descriptors[0].user\"]\n",
        Storage::Memory,
    );
    let upstream = Upstream::start(vec![Reply::Echo]);
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .grpc_cluster(cluster, rls.port())
            .filter("rate_limit", &config.to_string())
            .render(),
    );
    let send = || {
        client::get("/api/orders")
            .header("x-user-id", "mesh-user")
            .send(envoy.port("gateway"))
            .status
    };
    let statuses: Vec<u16> = (0..5).map(|_| send()).collect();
    let clusters = envoy.admin("/clusters").text();
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "{clusters}\n{}",
        rls.log()
    );
}
