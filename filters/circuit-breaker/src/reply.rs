//! The one table from a breaker's refusal to HTTP.
//!
//! | Case | Status | Headers | gRPC |
//! |---|---|---|---|
//! | open, or half-open with every probe out | the fallback's (503) | `Retry-After` (open time left, whole seconds rounded up, at least 1), `x-circuit-breaker`, `x-circuit-breaker-state`, `Cache-Control: no-store`, the fallback's | 14 `UNAVAILABLE` |
//! | `mode: forced_open` | the same | the same without `Retry-After` | 14 |
//!
//! Without a configured fallback the body is `application/problem+json` naming the breaker and
//! its state.

use crate::config::Breaker;
use filter_core::decision::{LocalResponse, grpc};
use std::time::Duration;

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
    reply.detail(format!("breaker {} is {state}", breaker.name))
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
        let forced = refused(&b, "forced_open", None);
        assert_eq!(header(&forced, "retry-after"), None);
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
    }
}
