//! The integration suite: every filter module in a real Envoy (`--concurrency 2`), real HTTP,
//! real upstream failures. One test binary; each test starts the Envoy it needs.
//!
//! The filters' scenarios run twice ([`both_modules!`]): against the separate filter modules,
//! and against `gateway.wasm` with the same configurations as its members.

/// Defines a scenario as a module of two tests, each handing the scenario its [`Layout`] (the
/// name in parentheses): `separate_filters` runs it with one Envoy filter entry per filter
/// module, `gateway_wasm` with the same filters as members of one `gateway.wasm` entry.
///
/// [`Layout`]: filter_tests::envoy_config::Layout
macro_rules! both_modules {
    ($(#[doc = $doc:literal])* fn $name:ident($layout:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use filter_tests::envoy_config::Layout;

            fn scenario($layout: Layout) $body

            #[test]
            fn separate_filters() {
                scenario(Layout::SeparateFilters);
            }

            #[test]
            fn gateway_wasm() {
                scenario(Layout::GatewayModule);
            }
        }
    };
}

mod access_log;
mod circuit_breaker;
mod dist;
mod examples;
mod global_rate_limit;
mod grpc_tool;
mod harness;
mod istio;
mod jwt_auth;
mod modules;
mod prometheus;
mod rate_limit;
mod retry_policy;
mod self_contained;
