//! Integration harness: the filters in a real Envoy, with real HTTP, real tokens and real
//! failures. No mocked Envoy here: that is what the unit tests beside the policy code are for.
//!
//! - [`access_log`]: Envoy's access log as the examples print it, with each filter's decision.
//! - [`envoy`]: starts Envoy (in Docker, or the native binary) with `--concurrency 2` on free
//!   ports, waits for `/ready`, prints its log when a test fails, and always stops it.
//! - [`envoy_config`]: builds Envoy configurations for tests and adapts the shipped examples.
//! - [`upstream`]: in-process upstream servers with programmable behaviour.
//! - [`client`]: a small HTTP/1.1 client that shows exactly what came back.
//! - [`tokens`]: keys generated at test time and real signed JWTs (RS256, ES256, EdDSA, HS256).
//! - [`wasm`]: where the built modules are, and what they import.
//! - [`fake_host`]: a fake proxy-wasm host (the built modules in the wasmi interpreter) that
//!   records every host call a module makes and the Wasm instructions it executes;
//!   [`host_calls`] runs the benchmark's allow paths in it (`make hostcalls`).
//! - [`bench_config`]: the benchmark's filter configurations, shared with [`host_calls`].
//! - [`oci`]: `dist/`, a local OCI registry and registry client, and Istio's image rules.
//! - [`k8s_schema`]: Kubernetes resources checked against a CRD's schema (the Istio manifests).
//! - [`grpc`]: a real gRPC upstream and a real gRPC client (`grpc-tool`: an `h2` server whose
//!   every answer shape a test chooses, and tonic's client).
//! - [`rls`]: a real rate limit service (`rls-server`, over Limitador) and Redis for global
//!   rules.
//! - [`prometheus`]: a real Prometheus scraping Envoy, queried in PromQL.

pub mod access_log;
pub mod bench_config;
pub mod client;
pub mod envoy;
pub mod envoy_config;
pub mod fake_host;
pub mod grpc;
pub mod host_calls;
pub mod k8s_schema;
pub mod oci;
pub mod prometheus;
pub mod rls;
pub mod server_process;
/// Keys generated per run and real signed JWTs (the `testkit` crate).
pub use testkit as tokens;
pub mod upstream;
pub mod wasm;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 for Envoy to bind later.
///
/// Not one the OS picks (`bind :0`): those come from the ephemeral range, which every
/// outgoing connection of every parallel test also draws from, so one could take the port
/// between this check and Envoy's bind. Ports are drawn at random below that range instead.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOW: u64 = 20_000;
    const HIGH: u64 = 32_000; // Linux's ephemeral range starts at 32768.
    let seed = RandomState::new();
    for attempt in 0u64..1000 {
        let port = LOW + seed.hash_one(attempt) % (HIGH - LOW);
        let port = u16::try_from(port).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("cannot find a free port in {LOW}..{HIGH}")
}

/// The `/stats` name of one series of our filters' metrics: the family with its filter prefix
/// and the labels in the order the filter defines them (the item's first, then the outcome),
/// e.g. `metric("circuit_breaker_calls_total", &[("breaker", "b"), ("outcome", "failure")])`
/// is `wasmcustom.breaker=.=b;.;outcome=.=failure;.;circuit_breaker_calls_total`.
pub fn metric(family: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::from("wasmcustom.");
    for (label, value) in labels {
        name.push_str(&format!("{label}=.={value};.;"));
    }
    name.push_str(family);
    name
}
