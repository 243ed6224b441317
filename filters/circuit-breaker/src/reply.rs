//! The one table from a breaker's refusal to HTTP.
//!
//! | Case | Status | Headers | gRPC |
//! |---|---|---|---|
//! | open, or half-open with every probe out | the fallback's (503) | `Retry-After` (open time left, whole seconds rounded up, at least 1), `x-circuit-breaker`, `x-circuit-breaker-state`, `Cache-Control: no-store`, the fallback's | 14 `UNAVAILABLE` |
//! | `mode: forced_open` | the same | the same without `Retry-After` | 14 |
//!
//! Without a configured fallback the body is `application/problem+json` naming the breaker and
//! its state.
//!
//! Filter state `circuit_breaker.decision`, for the access log, says `<state>:<breaker>` on a
//! refusal (`open:orders`, `half_open:orders`, `forced_open:orders`), `shadow_<state>:<breaker>`
//! on a request shadow mode let through instead, and `probe:<breaker>` on a half-open probe. A
//! request a closed breaker lets through sets nothing.

use crate::config::Breaker;
use filter_core::decision::{LocalResponse, grpc};
use std::time::Duration;

/// The filter state holding the decision, read as `wasm.circuit_breaker.decision`.
pub const DECISION: &str = "circuit_breaker.decision";

/// `circuit_breaker.decision` for a request shadow mode lets through although the breaker,
/// in `state`, would refuse it.
pub fn shadow_decision(breaker: &Breaker, state: &str) -> String {
    format!("shadow_{state}:{}", breaker.name)
}

/// `circuit_breaker.decision` for a request a half-open breaker lets through as a probe.
pub fn probe_decision(breaker: &Breaker) -> String {
    format!("probe:{}", breaker.name)
}

/// The answer to a request the breaker refuses, in `state`; `retry_after` when the breaker
/// knows when it may let calls through again.
pub fn refused(breaker: &Breaker, state: &str, retry_after: Option<Duration>) -> LocalResponse {
    let status = breaker.fallback.as_ref().map_or(503, |f| f.status);
    let mut reply = LocalResponse::new(status)
        .grpc_status(grpc::UNAVAILABLE)
        .header("x-circuit-breaker", breaker.name.clone())
        .header("x-circuit-breaker-state", state);
    if let Some(wait) = retry_after {
        let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
        reply = reply.header("retry-after", secs.to_string());
    }
    let reply = match &breaker.fallback {
        Some(fallback) => {
            let mut reply = reply.body(fallback.body.clone());
            for (name, value) in &fallback.headers {
                reply = reply.header(name.clone(), value.clone());
            }
            reply
        }
        None => reply
            .header("content-type", "application/problem+json")
            .body(format!(
                "{{\"type\":\"about:blank\",\"title\":\"circuit open\",\"status\":{status},\
                 \"breaker\":\"{}\",\"state\":\"{state}\"}}",
                breaker.name
            )),
    };
    reply
        .detail(format!("breaker {} is {state}", breaker.name))
        .filter_state(DECISION, format!("{state}:{}", breaker.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;
    use filter_core::config::parse;

    fn breaker(json: &str) -> Breaker {
        let config: CircuitBreakerConfig = parse(json.as_bytes()).unwrap();
        config.compile().unwrap().remove(0)
    }

    fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_default_refusal_is_a_503_problem_with_retry_after_rounded_up() {
        let b = breaker(r#"{"breakers": [{"name": "orders"}]}"#);
        let r = refused(&b, "open", Some(Duration::from_millis(29_001)));
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("30"));
        assert_eq!(header(&r, "x-circuit-breaker"), Some("orders"));
        assert_eq!(header(&r, "x-circuit-breaker-state"), Some("open"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert!(r.body.contains("\"breaker\":\"orders\""));
        assert_eq!(r.effective_grpc_status(), 14);
        assert_eq!(r.filter_state_value(DECISION), Some("open:orders"));
        let forced = refused(&b, "forced_open", None);
        assert_eq!(header(&forced, "retry-after"), None);
        assert_eq!(
            forced.filter_state_value(DECISION),
            Some("forced_open:orders")
        );
        assert_eq!(shadow_decision(&b, "open"), "shadow_open:orders");
        assert_eq!(probe_decision(&b), "probe:orders");
    }

    #[test]
    fn a_fallback_replaces_status_headers_and_body_but_keeps_the_breaker_headers() {
        let b = breaker(
            r#"{"breakers": [{"name": "orders", "fallback": {"status": 200,
                "headers": {"Content-Type": "application/json"}, "body": "{\"items\":[]}"}}]}"#,
        );
        let r = refused(&b, "half_open", Some(Duration::from_secs(1)));
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(r.body, "{\"items\":[]}");
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_eq!(header(&r, "x-circuit-breaker-state"), Some("half_open"));
        assert_eq!(r.effective_grpc_status(), 14);
        assert_eq!(r.filter_state_value(DECISION), Some("half_open:orders"));
    }
}
