//! The filter as the host drives it (request, response, stream end), on a fake clock and the
//! in-memory shared store: modes, outcome classification, and what later filters see.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

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
        let json = format!(
            r#"{{"breakers": [{{"name": "b", "minimum_calls": 2, "open_duration": "10s", "half_open_calls": 1 {breaker}}}]}}"#
        );
        Self {
            filter: CircuitBreaker::new(parse(json.as_bytes()).unwrap()).unwrap(),
            store: MemStore::new(),
            metrics: RecordedMetrics::default(),
        }
    }

    fn env(&self, secs: u64) -> Env<'_> {
        Env {
            now: Time::from_secs(secs),
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
            self.filter.on_end(&mut stream, &self.env(secs));
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
            filter_core::decision::RequestEdits::default().filter_state(FILTER_STATE, "half_open")
        )
    );
    assert!(
        refusal(&w.call(T0 + 10, Response::new(200))).is_some(),
        "no permit left"
    );
    w.filter.on_end(&mut probe, &w.env(T0 + 10));
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
            filter_core::decision::RequestEdits::default().filter_state(FILTER_STATE, "open")
        )
    );
    // The passed request was not recorded: enforce mode would never have sent it.
    assert_eq!(w.metric(BreakerMetric::Failure), 2);
    assert_eq!(w.metric(BreakerMetric::ShadowRejected), 1);
}
