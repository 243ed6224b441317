//! Global rules: the calls to a rate limit service a request needs, and what each answer or
//! failure does to it, on a fake clock with the service's answers written by hand.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{Decision, GrpcCall, GrpcResult, LocalResponse, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, RecordedMetrics};
use filter_core::request::{Request, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use log::{Level, LevelFilter};
use prost::Message as _;
use rate_limit::reply::DECISION;
use rate_limit::rls::{self, RateLimitRequest, RateLimitResponse};
use rate_limit::{RateLimit, Stream};
use std::time::Duration;
use testkit::logs::capture;

const T0: u64 = 1_800_000_000_000_000_000;

fn filter(json: &str) -> RateLimit {
    RateLimit::new(parse(json.as_bytes()).unwrap()).unwrap()
}

fn config_error(json: &str) -> String {
    match parse::<<RateLimit as Filter>::Config>(json.as_bytes()) {
        Ok(config) => RateLimit::new(config).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

/// One service `rls` (cluster `ratelimit`, domain `api`, 50ms) with `service_extra` members,
/// a global rule `fleet` per `x-user-id`, and the top-level `extra` members.
fn per_user(service_extra: &str, extra: &str) -> RateLimit {
    filter(&format!(
        r#"{{"services": {{"rls": {{"cluster": "ratelimit", "domain": "api", "timeout": "50ms" {service_extra}}}}},
            "rules": [{{"name": "fleet", "global": {{"descriptor": [{{"key": "user", "value": {{"header": "x-user-id"}}}}]}}}}]
            {extra}}}"#
    ))
}

struct World {
    store: MemStore,
    metrics: RecordedMetrics,
}

impl World {
    fn new() -> Self {
        Self {
            store: MemStore::new(),
            metrics: RecordedMetrics::default(),
        }
    }

    fn env(&self, nanos: u64) -> Env<'_> {
        Env {
            now: Time::from_nanos(nanos).into(),
            store: &self.store,
            metrics: &self.metrics,
            verifier: &NoNativeVerifier,
            random: &filter_core::random::Fixed(0),
        }
    }

    /// Sends `request` at `T0`; if it calls, `service` answers each call after `delay`. Returns
    /// the calls, the final decision and the response's added header fields.
    fn send(
        &self,
        f: &RateLimit,
        request: &Request,
        delay: Duration,
        service: impl Fn(&GrpcCall) -> GrpcResult,
    ) -> (Vec<GrpcCall>, Decision, Vec<(String, String)>) {
        let mut stream = Stream::default();
        let mut decision = f.on_request(&mut stream, request, &self.env(T0));
        let mut calls = Vec::new();
        if let Decision::Call(made) = decision {
            let results = made.iter().map(&service).collect();
            let later = self.env(T0 + u64::try_from(delay.as_nanos()).unwrap());
            decision = f.on_call_response(&mut stream, request, results, &later);
            calls = made;
        }
        let added = if f.wants_response(&stream) {
            f.on_response(&mut stream, &Response::new(200), &self.env(T0))
                .set
                .into_iter()
                .map(|(n, v)| (n.into_owned(), v))
                .collect()
        } else {
            Vec::new()
        };
        (calls, decision, added)
    }

    /// The value of the metric named `name` in `f`.
    fn metric(&self, f: &RateLimit, name: &str) -> i64 {
        let names = f.metric_names();
        let at = names
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no metric {name} in {names:?}"));
        self.metrics.value(MetricId(at))
    }
}

fn user(id: &str) -> Request {
    Request::new("GET", "/api/orders").with_header("x-user-id", id)
}

fn decode(call: &GrpcCall) -> RateLimitRequest {
    RateLimitRequest::decode(call.message.as_slice()).unwrap()
}

fn answer(response: RateLimitResponse) -> GrpcResult {
    GrpcResult::Message(response.encode_to_vec())
}

fn status(
    code: i32,
    requests: u32,
    unit: i32,
    remaining: u32,
    reset_ms: i32,
) -> rls::DescriptorStatus {
    rls::DescriptorStatus {
        code,
        current_limit: Some(rls::RateLimit {
            name: String::new(),
            requests_per_unit: requests,
            unit,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(rls::Duration {
            seconds: i64::from(reset_ms / 1000),
            nanos: (reset_ms % 1000) * 1_000_000,
        }),
    }
}

fn ok() -> GrpcResult {
    answer(RateLimitResponse {
        overall_code: rls::CODE_OK,
        ..RateLimitResponse::default()
    })
}

fn over() -> GrpcResult {
    answer(RateLimitResponse {
        overall_code: rls::CODE_OVER_LIMIT,
        ..RateLimitResponse::default()
    })
}

fn reply(d: &Decision) -> &LocalResponse {
    match d {
        Decision::Respond(r) => r,
        other => panic!("not answered: {other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_global_rule_calls_its_service_with_the_descriptor() {
    let f = per_user("", "");
    let w = World::new();
    let (calls, decision, _) = w.send(&f, &user("alice"), Duration::ZERO, |_| ok());
    assert_eq!(decision, Decision::pass());
    let [call] = calls.as_slice() else {
        panic!("one call, got {calls:?}")
    };
    assert_eq!(call.cluster, "ratelimit");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, Duration::from_millis(50));
    assert_eq!(call.authority, None);
    let sent = decode(call);
    assert_eq!(sent.domain, "api");
    // The default addend of 1 is left unsaid, as Envoy's own filter leaves it.
    assert_eq!(sent.hits_addend, 0);
    assert_eq!(sent.descriptors.len(), 1);
    assert_eq!(sent.descriptors[0].hits_addend, None);
    let entries: Vec<(&str, &str)> = sent.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("user", "alice")]);
    assert_eq!(
        w.metric(
            &f,
            "service=.=rls;.;outcome=.=ok;.;rate_limit_service_calls_total"
        ),
        1
    );
    assert_eq!(
        w.metric(
            &f,
            "rule=.=fleet;.;outcome=.=allowed;.;rate_limit_requests_total"
        ),
        1
    );
}

#[test]
fn a_rule_whose_entry_is_missing_costs_no_call() {
    let f = per_user("", "");
    let w = World::new();
    let (calls, decision, _) = w.send(&f, &Request::new("GET", "/"), Duration::ZERO, |_| {
        panic!("no call expected")
    });
    assert!(calls.is_empty());
    assert_eq!(decision, Decision::pass());
}

#[test]
fn rules_share_a_call_per_service_and_domain() {
    let f = filter(
        r#"{"services": {"a": {"cluster": "c1", "domain": "api"}, "b": {"cluster": "c2", "domain": "api"}},
            "rules": [
              {"name": "one", "global": {"service": "a", "descriptor": [{"key": "k", "value": {"literal": "1"}}]}},
              {"name": "two", "global": {"service": "a", "hits_addend": 3, "descriptor": [{"key": "m", "value": {"method": {}}}, {"key": "p", "value": {"path": {}}}]}},
              {"name": "three", "global": {"service": "a", "domain": "other", "descriptor": [{"key": "k", "value": {"rule": {}}}]}},
              {"name": "four", "global": {"service": "b", "hits_addend": 2, "descriptor": [{"key": "ip", "value": {"client_ip": {}}}]}}
            ]}"#,
    );
    let w = World::new();
    let request = user("u").with_client_address("10.0.0.7:3456");
    let (calls, decision, _) = w.send(&f, &request, Duration::ZERO, |_| ok());
    assert_eq!(decision, Decision::pass());
    let sent: Vec<(String, RateLimitRequest)> = calls
        .iter()
        .map(|c| (c.cluster.clone(), decode(c)))
        .collect();
    assert_eq!(sent.len(), 3);
    // One and two: same service and domain, one call; different addends stay per descriptor.
    assert_eq!(
        (sent[0].0.as_str(), sent[0].1.domain.as_str()),
        ("c1", "api")
    );
    assert_eq!(sent[0].1.descriptors.len(), 2);
    assert_eq!(sent[0].1.hits_addend, 0);
    let addends: Vec<Option<u64>> = sent[0]
        .1
        .descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().map(|a| a.value))
        .collect();
    assert_eq!(addends, [Some(1), Some(3)]);
    let entries: Vec<(&str, &str)> = sent[0].1.descriptors[1]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("m", "GET"), ("p", "/api/orders")]);
    // Three: its own domain; the `rule` part reads as the rule's name.
    assert_eq!(sent[1].1.domain, "other");
    assert_eq!(sent[1].1.descriptors[0].entries[0].value, "three");
    // Four: another service; one addend for the whole request.
    assert_eq!(sent[2].0, "c2");
    assert_eq!(sent[2].1.hits_addend, 2);
    assert_eq!(sent[2].1.descriptors[0].hits_addend, None);
    assert_eq!(sent[2].1.descriptors[0].entries[0].value, "10.0.0.7");
}

#[test]
fn over_limit_answers_like_a_local_limit_with_the_service_statuses() {
    let f = per_user("", "");
    let w = World::new();
    let (_, decision, _) = w.send(&f, &user("alice"), Duration::ZERO, |_| {
        answer(RateLimitResponse {
            overall_code: rls::CODE_OVER_LIMIT,
            statuses: vec![status(rls::CODE_OVER_LIMIT, 10, 2, 0, 41_200)],
            response_headers_to_add: vec![rls::HeaderValue {
                key: "x-fleet".to_owned(),
                value: "over".to_owned(),
                raw_value: Vec::new(),
            }],
            ..RateLimitResponse::default()
        })
    });
    let r = reply(&decision);
    assert_eq!(r.status, 429);
    assert_eq!(header(&r.headers, "retry-after"), Some("42"));
    assert_eq!(
        header(&r.headers, "ratelimit-policy"),
        Some("\"fleet\";q=10;w=60")
    );
    assert_eq!(header(&r.headers, "ratelimit"), Some("\"fleet\";r=0;t=42"));
    assert_eq!(header(&r.headers, "x-fleet"), Some("over"));
    assert_eq!(
        header(&r.headers, "content-type"),
        Some("application/problem+json")
    );
    assert!(
        r.body.contains("\"violated-policies\":[\"fleet\"]"),
        "{}",
        r.body
    );
    assert_eq!(r.effective_grpc_status(), 8);
    assert_eq!(r.filter_state_value(DECISION), Some("limited:fleet"));
    assert_eq!(
        w.metric(
            &f,
            "service=.=rls;.;outcome=.=over_limit;.;rate_limit_service_calls_total"
        ),
        1
    );
    assert_eq!(
        w.metric(
            &f,
            "rule=.=fleet;.;outcome=.=limited;.;rate_limit_requests_total"
        ),
        1
    );
}

#[test]
fn over_limit_without_statuses_names_the_rule_and_promises_no_retry_after() {
    let f = per_user("", "");
    let w = World::new();
    let (_, decision, _) = w.send(&f, &user("alice"), Duration::ZERO, |_| over());
    let r = reply(&decision);
    assert_eq!(r.status, 429);
    assert_eq!(header(&r.headers, "retry-after"), None);
    assert_eq!(header(&r.headers, "ratelimit"), None);
    assert!(
        r.body.contains("\"violated-policies\":[\"fleet\"]"),
        "{}",
        r.body
    );
    assert_eq!(r.filter_state_value(DECISION), Some("limited:fleet"));
}

#[test]
fn ok_applies_the_service_header_fields_and_describes_the_limit() {
    let f = per_user("", "");
    let w = World::new();
    let (_, decision, added) = w.send(&f, &user("alice"), Duration::ZERO, |_| {
        answer(RateLimitResponse {
            overall_code: rls::CODE_OK,
            statuses: vec![status(rls::CODE_OK, 100, 1, 93, 250)],
            request_headers_to_add: vec![rls::HeaderValue {
                key: "x-quota-tier".to_owned(),
                value: String::new(),
                raw_value: b"gold".to_vec(),
            }],
            response_headers_to_add: vec![rls::HeaderValue {
                key: "x-served-by".to_owned(),
                value: "rls".to_owned(),
                raw_value: Vec::new(),
            }],
        })
    });
    match decision {
        Decision::Continue(edits) => {
            assert_eq!(
                edits.headers.set,
                [("x-quota-tier".into(), "gold".to_owned())]
            );
        }
        other => panic!("not passed: {other:?}"),
    }
    assert_eq!(
        header(&added, "ratelimit-policy"),
        Some("\"fleet\";q=100;w=1")
    );
    assert_eq!(header(&added, "ratelimit"), Some("\"fleet\";r=93;t=1"));
    assert_eq!(header(&added, "x-served-by"), Some("rls"));
}

#[test]
fn local_rules_run_first_and_a_refused_request_costs_no_call() {
    let f = filter(
        r#"{"services": {"rls": {"cluster": "ratelimit", "domain": "api"}},
            "rules": [
              {"name": "local", "key": [{"header": "x-user-id"}], "limit": {"requests": 1, "per": "1m"}},
              {"name": "fleet", "global": {"descriptor": [{"key": "user", "value": {"header": "x-user-id"}}]}}
            ]}"#,
    );
    let w = World::new();
    let (calls, decision, added) = w.send(&f, &user("a"), Duration::ZERO, |_| ok());
    assert_eq!((calls.len(), decision), (1, Decision::pass()));
    assert_eq!(
        header(&added, "ratelimit-policy"),
        Some("\"local\";q=1;w=60")
    );
    let (calls, decision, _) = w.send(&f, &user("a"), Duration::ZERO, |_| panic!("no call"));
    assert!(calls.is_empty());
    assert_eq!(reply(&decision).status, 429);
}

#[test]
fn a_global_refusal_gives_back_the_local_charge() {
    let f = filter(
        r#"{"services": {"rls": {"cluster": "ratelimit", "domain": "api"}},
            "rules": [
              {"name": "local", "key": [{"header": "x-user-id"}], "limit": {"requests": 1, "per": "1m"}},
              {"name": "fleet", "global": {"descriptor": [{"key": "user", "value": {"header": "x-user-id"}}]}}
            ]}"#,
    );
    let w = World::new();
    let (_, decision, _) = w.send(&f, &user("a"), Duration::ZERO, |_| over());
    assert_eq!(reply(&decision).status, 429);
    // The local rule's one request per minute is still there.
    let (calls, decision, _) = w.send(&f, &user("a"), Duration::ZERO, |_| ok());
    assert_eq!((calls.len(), decision), (1, Decision::pass()));
}

#[test]
fn shadow_mode_lets_an_over_limit_request_through_and_counts_it() {
    let f = per_user("", r#", "shadow": true"#);
    let w = World::new();
    let ((_, decision, _), lines) = capture(LevelFilter::Info, || {
        w.send(&f, &user("alice"), Duration::ZERO, |_| over())
    });
    assert_eq!(
        decision,
        Decision::Continue(RequestEdits::default().filter_state(DECISION, "shadow_limited:fleet"))
    );
    assert_eq!(
        w.metric(
            &f,
            "rule=.=fleet;.;outcome=.=shadow_limited;.;rate_limit_requests_total"
        ),
        1
    );
    assert_eq!(
        w.metric(
            &f,
            "rule=.=fleet;.;outcome=.=limited;.;rate_limit_requests_total"
        ),
        0
    );
    assert_eq!(
        testkit::logs::texts(&lines),
        ["rate_limit: shadow mode: would refuse GET /api/orders (over fleet)"]
    );
}

/// In shadow mode, the access log's decision names every rule that would have refused: the
/// local ones, then the global ones.
#[test]
fn shadow_mode_records_local_and_global_rules_that_would_refuse() {
    let f = filter(
        r#"{"services": {"rls": {"cluster": "ratelimit", "domain": "api"}}, "shadow": true,
            "rules": [
              {"name": "local", "key": [{"header": "x-user-id"}], "limit": {"requests": 1, "per": "1m"}},
              {"name": "fleet", "global": {"descriptor": [{"key": "user", "value": {"header": "x-user-id"}}]}}
            ]}"#,
    );
    let w = World::new();
    let (_, first, _) = w.send(&f, &user("a"), Duration::ZERO, |_| ok());
    assert_eq!(first, Decision::pass(), "a plain pass records nothing");
    let (_, second, _) = w.send(&f, &user("a"), Duration::ZERO, |_| over());
    assert_eq!(
        second,
        Decision::Continue(
            RequestEdits::default().filter_state(DECISION, "shadow_limited:local,fleet")
        )
    );
    let (_, third, _) = w.send(&f, &user("a"), Duration::ZERO, |_| ok());
    assert_eq!(
        third,
        Decision::Continue(RequestEdits::default().filter_state(DECISION, "shadow_limited:local"))
    );
}

/// Each kind of failure, how it arrives, and its metric.
fn failures() -> Vec<(&'static str, Duration, GrpcResult)> {
    vec![
        (
            "unreachable",
            Duration::ZERO,
            GrpcResult::NotSent("ParseFailure".to_owned()),
        ),
        (
            "unreachable",
            Duration::from_millis(3),
            GrpcResult::Status(14, String::new()),
        ),
        (
            "timeout",
            Duration::from_millis(50),
            GrpcResult::Status(14, String::new()),
        ),
        // Envoy's timer can fire before the wall clock shows the timeout gone (a busy
        // worker); its message says what happened.
        (
            "timeout",
            Duration::from_millis(40),
            GrpcResult::Status(14, "upstream request timeout{response_timeout}".to_owned()),
        ),
        (
            "unreachable",
            Duration::from_millis(40),
            GrpcResult::Status(
                14,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 remote connection failure"
                    .to_owned(),
            ),
        ),
        (
            "timeout",
            Duration::from_millis(10),
            GrpcResult::Status(4, String::new()),
        ),
        (
            "error",
            Duration::from_millis(1),
            GrpcResult::Status(13, String::new()),
        ),
        (
            "error",
            Duration::from_millis(1),
            GrpcResult::Status(12, String::new()),
        ),
        (
            "invalid_answer",
            Duration::ZERO,
            GrpcResult::Message(vec![0x08]),
        ),
        (
            "invalid_answer",
            Duration::ZERO,
            answer(RateLimitResponse::default()),
        ),
    ]
}

#[test]
fn every_failure_is_allowed_by_default_and_counted_by_kind() {
    for (kind, delay, result) in failures() {
        let f = per_user("", "");
        let w = World::new();
        let (_, decision, _) = w.send(&f, &user("alice"), delay, |_| result.clone());
        assert_eq!(decision, Decision::pass(), "{kind}");
        assert_eq!(
            w.metric(
                &f,
                &format!("service=.=rls;.;outcome=.={kind};.;rate_limit_service_calls_total")
            ),
            1,
            "{kind}"
        );
        assert_eq!(
            w.metric(
                &f,
                "rule=.=fleet;.;outcome=.=failed;.;rate_limit_requests_total"
            ),
            1,
            "{kind}"
        );
        assert_eq!(
            w.metric(
                &f,
                "service=.=rls;.;rate_limit_service_failure_denials_total"
            ),
            0,
            "{kind}"
        );
    }
}

#[test]
fn each_kind_of_failure_has_its_own_setting() {
    for denied in ["unreachable", "timeout", "error", "invalid_answer"] {
        for (kind, delay, result) in failures() {
            // A new filter each time: its clock never goes back.
            let f = per_user(&format!(r#", "on_failure": {{"{denied}": "deny"}}"#), "");
            let w = World::new();
            let (_, decision, _) = w.send(&f, &user("alice"), delay, |_| result.clone());
            if kind != denied {
                assert_eq!(decision, Decision::pass(), "{denied} denied, {kind} came");
                continue;
            }
            let r = reply(&decision);
            assert_eq!(r.status, 503, "{kind}");
            assert_eq!(r.effective_grpc_status(), 14);
            let decision = format!("service_failed:rls:{kind}");
            assert_eq!(r.filter_state_value(DECISION), Some(decision.as_str()));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!("rate limit service rls: {kind}: ")),
                "{detail}"
            );
            assert_eq!(
                w.metric(
                    &f,
                    "service=.=rls;.;rate_limit_service_failure_denials_total"
                ),
                1
            );
        }
    }
}

#[test]
fn a_timeout_says_how_long_it_waited() {
    let f = per_user(r#", "on_failure": {"timeout": "deny"}"#, "");
    let w = World::new();
    let (_, decision, _) = w.send(&f, &user("alice"), Duration::from_millis(51), |_| {
        GrpcResult::Status(14, String::new())
    });
    let body: serde_json::Value = serde_json::from_str(&reply(&decision).body).unwrap();
    assert_eq!(
        body["detail"],
        "rate limit service rls: timeout: no answer within 50ms"
    );
}

#[test]
fn an_outage_logs_one_warning_per_interval_not_one_per_request() {
    let f = per_user("", "");
    let w = World::new();
    let ((), lines) = capture(LevelFilter::Warn, || {
        for _ in 0..100 {
            w.send(&f, &user("alice"), Duration::ZERO, |_| {
                GrpcResult::Status(14, String::new())
            });
        }
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].level, Level::Warn);
    assert_eq!(
        lines[0].text,
        "rate_limit: rate limit service rls (cluster ratelimit): unreachable: gRPC status 14 (UNAVAILABLE); allowing the request"
    );
    assert_eq!(
        w.metric(
            &f,
            "service=.=rls;.;outcome=.=unreachable;.;rate_limit_service_calls_total"
        ),
        100
    );
}

#[test]
fn configuration_errors_name_the_field() {
    let service = r#""services": {"rls": {"cluster": "ratelimit", "domain": "api"}}"#;
    let rule =
        |global: &str| format!(r#"{{{service}, "rules": [{{"name": "g", "global": {global}}}]}}"#);
    let entry = r#"[{"key": "k", "value": {"literal": "v"}}]"#;
    let cases = [
        (rule(&format!(r#"{{"service": "nope", "descriptor": {entry}}}"#)), "rules[0].global.service: \"nope\" is not under services"),
        (rule(r#"{"descriptor": []}"#), "rules[0].global.descriptor: must list at least one entry"),
        (rule(&format!(r#"{{"descriptor": {entry}, "hits_addend": 0}}"#)), "rules[0].global.hits_addend: must be at least 1"),
        (rule(r#"{"descriptor": [{"key": "", "value": {"method": {}}}]}"#), "rules[0].global.descriptor[0].key: must not be empty"),
        (rule(r#"{"descriptor": [{"key": "k", "value": {"literal": ""}}]}"#), "rules[0].global.descriptor[0].value.literal: must not be empty"),
        (rule(&format!(r#"{{"descriptor": {entry}, "domain": ""}}"#)), "rules[0].global.domain: must not be empty"),
        (
            format!(r#"{{{service}, "rules": [{{"name": "g", "key": [{{"rule": {{}}}}], "global": {{"descriptor": {entry}}}}}]}}"#),
            "rules[0].key: a global rule has no key",
        ),
        (
            format!(r#"{{"rules": [{{"name": "g", "global": {{"descriptor": {entry}}}}}]}}"#),
            "rules[0].global: names no service, and there are none under services",
        ),
        (r#"{"rules": [{"name": "l", "key": [{"rule": {}}]}]}"#.to_owned(), "rules[0].limit: missing"),
        (r#"{"services": {"rls": {"cluster": "", "domain": "api"}}}"#.to_owned(), "services.rls.cluster: must be an Envoy cluster name"),
        (r#"{"services": {"rls": {"cluster": "c", "domain": "api", "timeout": "0s"}}}"#.to_owned(), "services.rls.timeout: must be from 1ms to 10s"),
        (r#"{"services": {"rls": {"cluster": "c", "domain": "api", "timeout": "11s"}}}"#.to_owned(), "services.rls.timeout: must be from 1ms to 10s"),
        (r#"{"services": {"rls": {"cluster": "c", "domain": "api", "on_failure": {"timeout": "maybe"}}}}"#.to_owned(), "services.rls.on_failure.timeout: unknown variant `maybe`, expected `allow` or `deny`"),
        (r#"{"services": {"rls": {"cluster": "c", "domain": "api", "on_failure": {"slow": "deny"}}}}"#.to_owned(), "services.rls.on_failure.slow: unknown field `slow`"),
        (r#"{"services": {"rls": {"cluster": "c"}}}"#.to_owned(), "services.rls: missing field `domain`"),
        (r#"{"services": {"a b": {"cluster": "c", "domain": "d"}}}"#.to_owned(), "services.a b: \"a b\": use 1 to 64 letters"),
        (r#"{"services": {"rls": {"cluster": "outbound|8081||rls.ns.svc", "domain": "d"}}}"#.to_owned(), "services.rls.authority: missing: the cluster name \"outbound|8081||rls.ns.svc\" is not a valid :authority"),
        (r#"{"services": {"rls": {"cluster": "c", "domain": "d", "authority": "a b"}}}"#.to_owned(), "services.rls.authority: \"a b\" is not a host name"),
    ];
    for (json, expected) in cases {
        let error = config_error(&json);
        assert!(
            error.starts_with(expected),
            "{json}\n  gave {error}\n  not {expected}"
        );
    }
}

#[test]
fn metrics_are_named_per_rule_and_per_service() {
    let f = per_user("", "");
    let names: Vec<String> = f.metric_names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "rule=.=fleet;.;outcome=.=allowed;.;rate_limit_requests_total",
            "rule=.=fleet;.;outcome=.=limited;.;rate_limit_requests_total",
            "rule=.=fleet;.;outcome=.=shadow_limited;.;rate_limit_requests_total",
            "rule=.=fleet;.;outcome=.=failed;.;rate_limit_requests_total",
            "service=.=rls;.;outcome=.=ok;.;rate_limit_service_calls_total",
            "service=.=rls;.;outcome=.=over_limit;.;rate_limit_service_calls_total",
            "service=.=rls;.;outcome=.=unreachable;.;rate_limit_service_calls_total",
            "service=.=rls;.;outcome=.=timeout;.;rate_limit_service_calls_total",
            "service=.=rls;.;outcome=.=error;.;rate_limit_service_calls_total",
            "service=.=rls;.;outcome=.=invalid_answer;.;rate_limit_service_calls_total",
            "service=.=rls;.;rate_limit_service_failure_denials_total",
        ]
    );
}

proptest::proptest! {
    /// Whatever bytes a service sends back, the filter decides without panicking.
    #[test]
    fn hostile_answers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let f = per_user("", "");
        let w = World::new();
        let (_, decision, _) = w.send(&f, &user("a"), Duration::ZERO, |_| GrpcResult::Message(bytes.clone()));
        proptest::prop_assert!(matches!(decision, Decision::Continue(_) | Decision::Respond(_)));
    }
}
