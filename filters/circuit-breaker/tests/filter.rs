//! The filter as the host drives it (request, response, stream end), on a fake clock and the
//! in-memory shared store: modes, outcome classification, and what later filters see.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use circuit_breaker::reply::DECISION;
use circuit_breaker::{BreakerMetric, CircuitBreaker, FILTER_STATE, Stream};
use filter_core::config::parse;
use filter_core::decision::{Decision, LocalResponse};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{PerItem, RecordedMetrics};
use filter_core::request::{Request, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use log::{Level, LevelFilter};
use testkit::logs::{Line, capture, texts};

const T0: u64 = 1_800_000_000;

struct World {
    filter: CircuitBreaker,
    store: MemStore,
    metrics: RecordedMetrics,
}

impl World {
    fn new(breaker: &str) -> Self {
        Self::with_minimum_calls(2, breaker)
    }

    /// A breaker that only counts (it would trip after 1000 calls).
    fn counting(breaker: &str) -> Self {
        Self::with_minimum_calls(1000, breaker)
    }

    fn with_minimum_calls(minimum_calls: u32, breaker: &str) -> Self {
        // 10 s open unless the test sets its own.
        let open = if breaker.contains("open_duration") {
            ""
        } else {
            r#", "open_duration": "10s""#
        };
        let json = format!(
            r#"{{"breakers": [{{"name": "b", "minimum_calls": {minimum_calls}, "half_open_calls": 1 {open} {breaker}}}]}}"#
        );
        Self {
            filter: CircuitBreaker::new(parse(json.as_bytes()).unwrap()).unwrap(),
            store: MemStore::new(),
            metrics: RecordedMetrics::default(),
        }
    }

    fn env(&self, secs: u64) -> Env<'_> {
        Env {
            now: Time::from_secs(secs).into(),
            store: &self.store,
            metrics: &self.metrics,
            verifier: &NoNativeVerifier,
            random: &filter_core::random::Fixed(0),
        }
    }

    fn request(&self, stream: &mut Stream, secs: u64) -> Decision {
        self.filter
            .on_request(stream, &Request::new("GET", "/x"), &self.env(secs))
    }

    /// A whole call at `secs` answered with `response`.
    fn call(&self, secs: u64, response: Response) -> Decision {
        let mut stream = Stream::default();
        let d = self.request(&mut stream, secs);
        if self.filter.wants_response(&stream) {
            self.filter
                .on_response(&mut stream, &response, &self.env(secs));
        }
        if self.filter.wants_end(&stream) {
            self.filter.on_end(&mut stream, &response, &self.env(secs));
        }
        d
    }

    /// Metric `which` of breaker 0.
    fn metric(&self, which: BreakerMetric) -> i64 {
        self.metrics.value(which.id(0))
    }
}

fn refusal(d: &Decision) -> Option<&LocalResponse> {
    match d {
        Decision::Respond(r) => Some(r),
        _ => None,
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn upstream_failures_trip_it_but_other_filters_replies_do_not() {
    let ((), lines) = capture(LevelFilter::Info, upstream_failures_trip_it);
    // The operator's line: the change of state, at info; refusals are debug lines.
    assert_eq!(
        lines,
        [Line {
            level: Level::Info,
            text: "circuit_breaker: breaker b: closed -> open".to_owned()
        }]
    );
}

fn upstream_failures_trip_it() {
    let w = World::new("");
    // A later filter's own 503 (not the upstream's) counts as nothing.
    for _ in 0..3 {
        w.call(T0, Response::new(503).with_code_details("direct_response"));
    }
    assert_eq!(w.metric(BreakerMetric::Ignored), 3);
    assert!(refusal(&w.call(T0, Response::new(200))).is_none());
    // Envoy's reply for a refused connection is the upstream failing.
    let refused_connection = Response::new(503)
        .with_code_details("upstream_reset_before_response_started{connection_failure}");
    w.call(T0, refused_connection);
    assert_eq!(
        (
            w.metric(BreakerMetric::Success),
            w.metric(BreakerMetric::Failure)
        ),
        (1, 1)
    );
    assert_eq!(
        w.metric(BreakerMetric::ToOpen),
        1,
        "1 failure of 2 calls is 50%"
    );
    let d = w.call(T0 + 3, Response::new(200));
    let r = refusal(&d).expect("open");
    assert_eq!(header(r, "retry-after"), Some("7"));
}

#[test]
fn a_probe_whose_client_left_hands_its_permit_back() {
    let ((), lines) = capture(LevelFilter::Debug, a_probe_whose_client_left);
    assert_eq!(
        texts(&lines),
        [
            "circuit_breaker: breaker b: closed -> open",
            "circuit_breaker: breaker b: open -> half_open",
            "circuit_breaker: refused with 503: breaker b is half_open",
            "circuit_breaker: breaker b: half_open -> closed",
        ]
    );
}

fn a_probe_whose_client_left() {
    let w = World::new("");
    for _ in 0..2 {
        w.call(T0, Response::new(500));
    }
    // Half-open at T0 + 10: the only probe's client goes away before any response.
    let mut probe = Stream::default();
    let d = w.request(&mut probe, T0 + 10);
    assert_eq!(
        d,
        Decision::Continue(
            filter_core::decision::RequestEdits::default()
                .filter_state(FILTER_STATE, "half_open")
                .filter_state(DECISION, "probe:b")
        )
    );
    assert!(
        refusal(&w.call(T0 + 10, Response::new(200))).is_some(),
        "no permit left"
    );
    w.filter
        .on_end(&mut probe, &Response::empty(), &w.env(T0 + 10));
    // The permit is back: the next request probes, succeeds, and closes it.
    assert!(refusal(&w.call(T0 + 10, Response::new(200))).is_none());
    assert!(refusal(&w.call(T0 + 10, Response::new(200))).is_none());
}

#[test]
fn forced_open_refuses_without_retry_after_and_disabled_records_nothing() {
    let w = World::new(r#", "mode": "forced_open""#);
    let d = w.call(T0, Response::new(200));
    let r = refusal(&d).unwrap();
    assert_eq!(header(r, "x-circuit-breaker-state"), Some("forced_open"));
    assert_eq!(header(r, "retry-after"), None);
    assert_eq!(r.filter_state_value(DECISION), Some("forced_open:b"));
    assert_eq!(w.metric(BreakerMetric::Rejected), 1);

    let w = World::new(r#", "mode": "disabled""#);
    for _ in 0..5 {
        assert_eq!(w.call(T0, Response::new(500)), Decision::pass());
    }
    assert_eq!(w.metric(BreakerMetric::Failure), 0);
    assert_eq!(w.store.key_count(), 0);
}

#[test]
fn shadow_mode_lets_refusals_through_and_says_so_to_later_filters() {
    let w = World::new(r#", "mode": "shadow""#);
    for _ in 0..2 {
        w.call(T0, Response::new(500));
    }
    let d = w.call(T0 + 1, Response::new(500));
    assert_eq!(
        d,
        Decision::Continue(
            filter_core::decision::RequestEdits::default()
                .filter_state(FILTER_STATE, "open")
                .filter_state(DECISION, "shadow_open:b")
        )
    );
    // The passed request was not recorded: enforce mode would never have sent it.
    assert_eq!(w.metric(BreakerMetric::Failure), 2);
    assert_eq!(w.metric(BreakerMetric::ShadowRejected), 1);
}

/// The access log's `circuit_breaker.decision`: each refusal names the state and the breaker;
/// a closed breaker's pass records nothing (no host call).
#[test]
fn each_refusal_records_its_decision_and_a_closed_pass_records_none() {
    let w = World::new("");
    assert_eq!(w.call(T0, Response::new(500)), Decision::pass());
    w.call(T0, Response::new(500));
    let d = w.call(T0 + 1, Response::new(200));
    let r = refusal(&d).expect("open");
    assert_eq!(r.filter_state, [(DECISION.into(), "open:b".to_owned())]);
    // Half-open at T0 + 10: the probe is let through, the next request finds no permit.
    let mut probe = Stream::default();
    let d = w.request(&mut probe, T0 + 10);
    let Decision::Continue(edits) = d else {
        panic!("the probe passes: {d:?}")
    };
    assert_eq!(edits.filter_state_value(DECISION), Some("probe:b"));
    let d = w.call(T0 + 10, Response::new(200));
    let r = refusal(&d).expect("no permit left");
    assert_eq!(r.filter_state_value(DECISION), Some("half_open:b"));
}

/// A gRPC call as the host drives it: request at `start`, response headers, trailers (if any)
/// and the stream's end at `end`, with `ending` telling how it ended.
struct GrpcCall {
    headers: Response,
    trailers: Option<Response>,
    ending: Response,
}

impl GrpcCall {
    /// The upstream's headers without a status, then `grpc-status: code` in the trailers.
    fn trailers(code: &str) -> Self {
        Self {
            headers: upstream_grpc_headers(),
            trailers: Some(Response::empty().with_header("grpc-status", code)),
            ending: Response::empty(),
        }
    }

    /// One HEADERS frame carrying the status.
    fn trailers_only(code: &str) -> Self {
        Self {
            headers: upstream_grpc_headers().with_header("grpc-status", code),
            trailers: None,
            ending: Response::empty(),
        }
    }

    /// Headers, then the stream ends with `flags` and no trailers.
    fn unfinished(flags: u64) -> Self {
        Self {
            headers: upstream_grpc_headers(),
            trailers: None,
            ending: Response::empty().with_flags(flags),
        }
    }
}

fn upstream_grpc_headers() -> Response {
    Response::new(200)
        .with_header("content-type", "application/grpc")
        .with_code_details("via_upstream")
}

impl World {
    fn grpc(&self, start: u64, end: u64, call: &GrpcCall) -> Decision {
        let mut stream = Stream::default();
        let request = Request::new("POST", "/shop.Orders/Get")
            .with_header("content-type", "application/grpc+proto");
        let d = self
            .filter
            .on_request(&mut stream, &request, &self.env(start));
        if self.filter.wants_response(&stream) {
            self.filter
                .on_response(&mut stream, &call.headers, &self.env(start));
        }
        if let Some(trailers) = call
            .trailers
            .as_ref()
            .filter(|_| self.filter.wants_trailers(&stream))
        {
            self.filter
                .on_trailers(&mut stream, trailers, &self.env(end));
        }
        if self.filter.wants_end(&stream) {
            self.filter
                .on_end(&mut stream, &call.ending, &self.env(end));
        }
        assert!(!self.filter.wants_end(&stream), "settled by the end");
        d
    }

    /// (success, failure, ignored, slow) so far.
    fn outcomes(&self) -> (i64, i64, i64, i64) {
        (
            self.metric(BreakerMetric::Success),
            self.metric(BreakerMetric::Failure),
            self.metric(BreakerMetric::Ignored),
            self.metric(BreakerMetric::Slow),
        )
    }
}

#[test]
fn a_grpc_status_in_the_trailers_is_recorded_once_when_the_trailers_come() {
    let w = World::counting("");
    let mut stream = Stream::default();
    let request = Request::new("POST", "/s/M").with_header("content-type", "application/grpc");
    w.filter.on_request(&mut stream, &request, &w.env(T0));
    w.filter
        .on_response(&mut stream, &upstream_grpc_headers(), &w.env(T0));
    assert_eq!(
        w.outcomes(),
        (0, 0, 0, 0),
        "nothing known before the status"
    );
    assert!(w.filter.wants_trailers(&stream));
    assert!(!w.filter.wants_response(&stream));
    let trailers = Response::empty().with_header("grpc-status", "14");
    w.filter.on_trailers(&mut stream, &trailers, &w.env(T0));
    assert_eq!(w.outcomes(), (0, 1, 0, 0));
    // Recorded: the stream's end has nothing left to settle.
    assert!(!w.filter.wants_end(&stream));
    assert!(!w.filter.wants_trailers(&stream));
    w.filter.on_end(&mut stream, &Response::empty(), &w.env(T0));
    assert_eq!(w.outcomes(), (0, 1, 0, 0));
}

#[test]
fn grpc_codes_count_as_configured_wherever_the_status_arrives() {
    let w = World::counting("");
    for code in ["14", "4", "13", "2", "8"] {
        w.grpc(T0, T0, &GrpcCall::trailers(code));
        w.grpc(T0, T0, &GrpcCall::trailers_only(code));
    }
    assert_eq!(w.outcomes(), (0, 10, 0, 0));
    // Client errors and OK say the upstream works.
    for code in ["0", "3", "5", "7", "16", "1"] {
        w.grpc(T0, T0, &GrpcCall::trailers(code));
        w.grpc(T0, T0, &GrpcCall::trailers_only(code));
    }
    assert_eq!(w.outcomes(), (12, 10, 0, 0));
    // A status that is not a number reads as UNKNOWN, a failure by default.
    w.grpc(T0, T0, &GrpcCall::trailers("fourteen"));
    assert_eq!(w.outcomes(), (12, 11, 0, 0));

    let w = World::counting(r#", "failure_grpc_statuses": ["INVALID_ARGUMENT", 14]"#);
    w.grpc(T0, T0, &GrpcCall::trailers("3"));
    w.grpc(T0, T0, &GrpcCall::trailers("14"));
    w.grpc(T0, T0, &GrpcCall::trailers("13"));
    w.grpc(T0, T0, &GrpcCall::trailers("fourteen"));
    assert_eq!(w.outcomes(), (2, 2, 0, 0));
}

#[test]
fn a_grpc_call_without_a_status_fails_unless_its_client_left() {
    use filter_core::request::response_flags as f;
    let w = World::counting("");
    // Trailers without grpc-status; a stream that just ended; an upstream reset mid-stream.
    w.grpc(
        T0,
        T0,
        &GrpcCall {
            trailers: Some(Response::empty().with_header("x-other", "1")),
            ..GrpcCall::unfinished(0)
        },
    );
    w.grpc(T0, T0, &GrpcCall::unfinished(0));
    w.grpc(T0, T0, &GrpcCall::unfinished(f::UPSTREAM_REMOTE_RESET));
    w.grpc(T0, T0, &GrpcCall::unfinished(f::UPSTREAM_REQUEST_TIMEOUT));
    assert_eq!(w.outcomes(), (0, 4, 0, 0));
    // The client cancelled (reset or closed its connection): nothing to learn.
    w.grpc(T0, T0, &GrpcCall::unfinished(f::DOWNSTREAM_REMOTE_RESET));
    w.grpc(
        T0,
        T0,
        &GrpcCall::unfinished(f::DOWNSTREAM_CONNECTION_TERMINATION),
    );
    assert_eq!(w.outcomes(), (0, 4, 2, 0));
    // Both at once: the upstream failed first.
    w.grpc(
        T0,
        T0,
        &GrpcCall::unfinished(f::UPSTREAM_REMOTE_RESET | f::DOWNSTREAM_REMOTE_RESET),
    );
    assert_eq!(w.outcomes(), (0, 5, 2, 0));
}

#[test]
fn envoys_own_grpc_replies_count_by_who_failed() {
    let w = World::counting("");
    let envoy = |details: &str| GrpcCall {
        headers: Response::new(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "14")
            .with_code_details(details),
        trailers: None,
        ending: Response::empty(),
    };
    w.grpc(
        T0,
        T0,
        &envoy("upstream_reset_before_response_started{connection_failure}"),
    );
    w.grpc(T0, T0, &envoy("response_timeout"));
    assert_eq!(w.outcomes(), (0, 2, 0, 0));
    // Another filter's answer (a rate limiter's, say) never reached the upstream.
    w.grpc(T0, T0, &envoy("wasm_local_reply"));
    assert_eq!(w.outcomes(), (0, 2, 1, 0));
    // A plain HTTP error from a gRPC upstream counts as HTTP does.
    let http = |status| GrpcCall {
        headers: Response::new(status).with_code_details("via_upstream"),
        trailers: None,
        ending: Response::empty(),
    };
    w.grpc(T0, T0, &http(503));
    w.grpc(T0, T0, &http(404));
    assert_eq!(w.outcomes(), (1, 3, 1, 0));
}

#[test]
fn a_grpc_call_is_timed_to_its_trailers() {
    let w = World::counting(r#", "slow_call_duration": "5s""#);
    // Headers at once, the status 6 s later: a slow stream.
    w.grpc(T0, T0 + 6, &GrpcCall::trailers("0"));
    w.grpc(T0, T0 + 4, &GrpcCall::trailers("0"));
    assert_eq!(w.outcomes(), (2, 0, 0, 1));
}

#[test]
fn grpc_failures_trip_it_and_grpc_callers_get_unavailable() {
    let w = World::new("");
    w.grpc(T0, T0, &GrpcCall::trailers("14"));
    w.grpc(T0, T0, &GrpcCall::trailers_only("14"));
    assert_eq!(w.metric(BreakerMetric::ToOpen), 1);
    let d = w.grpc(T0 + 1, T0 + 1, &GrpcCall::trailers("0"));
    let r = refusal(&d).expect("open");
    assert_eq!(r.effective_grpc_status(), 14);
    assert_eq!(header(r, "retry-after"), Some("9"));
}

#[test]
fn retry_after_grows_with_each_failed_probe_and_the_gauge_shows_the_interval() {
    let w = World::new(r#", "open_duration": {"initial": "2s", "max": "7s", "jitter": 0}"#);
    for _ in 0..2 {
        w.call(T0, Response::new(500));
    }
    let mut now = T0;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let d = w.call(now, Response::new(200));
        let r = refusal(&d).expect("open");
        seen.push((
            header(r, "retry-after").unwrap().to_owned(),
            w.metric(BreakerMetric::OpenIntervalMs),
        ));
        let wait: u64 = header(r, "retry-after").unwrap().parse().unwrap();
        now += wait;
        // The probe fails: open again, for longer.
        w.call(now, Response::new(503));
    }
    assert_eq!(
        seen,
        [
            ("2".to_owned(), 2000),
            ("4".to_owned(), 4000),
            ("7".to_owned(), 7000),
            ("7".to_owned(), 7000),
        ]
    );
}
