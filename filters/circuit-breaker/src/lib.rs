//! Circuit breaker (`circuit_breaker.wasm`).
//!
//! Not implemented yet: the behaviour arrives with issue #5. Until then this module loads,
//! validates its (empty) configuration strictly, counts requests in `circuit_breaker.requests`, and lets
//! every request through unchanged.
#![deny(unsafe_code)]

use filter_core::config::ConfigError;
use filter_core::decision::Decision;
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricDef, MetricId, MetricKind};
use filter_core::request::RequestView;
use serde::Deserialize;

/// The configuration: no fields yet, and unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct CircuitBreaker;

const REQUESTS: MetricId = MetricId(0);

impl Filter for CircuitBreaker {
    const NAME: &'static str = "circuit_breaker";
    type Config = Config;
    type Stream = ();
    const METRICS: &'static [MetricDef] = &[MetricDef {
        name: "requests",
        kind: MetricKind::Counter,
    }];

    fn new(_config: Config) -> Result<Self, ConfigError> {
        Ok(CircuitBreaker)
    }

    fn on_request(&self, _stream: &mut (), _request: &dyn RequestView, env: &Env<'_>) -> Decision {
        env.metrics.add(REQUESTS, 1);
        Decision::pass()
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::CircuitBreaker);
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::parse_json;
    use filter_core::metrics::RecordedMetrics;
    use filter_core::request::Request;
    use filter_core::store::MemStore;
    use filter_core::time::Time;

    #[test]
    fn passes_and_counts_requests() {
        let filter = CircuitBreaker::new(parse_json(b"{}").unwrap()).unwrap();
        let metrics = RecordedMetrics::default();
        let env = Env {
            now: Time::from_secs(1),
            store: &MemStore::new(),
            metrics: &metrics,
            verifier: &filter_core::signature::NoNativeVerifier,
            log: &filter_core::log::NoLog,
        };
        let decision = filter.on_request(&mut (), &Request::new("GET", "/"), &env);
        assert_eq!(decision, Decision::pass());
        assert_eq!(metrics.value(REQUESTS), 1);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse_json::<Config>(br#"{"surprise": 1}"#).unwrap_err();
        assert_eq!(err.path(), "surprise");
    }
}
