//! The filter as the host drives it, on a fixed clock and the in-memory shared store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, RecordedMetrics};
use filter_core::random::Fixed;
use filter_core::request::{Request, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use retry_policy::{RETRY_HEADERS, RetryPolicy, Stream};

const NOW: u64 = 1_795_478_400; // Tue, 24 Nov 2026 00:00:00 GMT

struct World {
    filter: RetryPolicy,
    store: MemStore,
    metrics: RecordedMetrics,
}

impl World {
    fn new(json: &str) -> Self {
        Self {
            filter: RetryPolicy::new(parse(json.as_bytes()).unwrap()).unwrap(),
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
            random: &Fixed(0),
        }
    }

    /// The request's header edits, and the response's after `response`.
    fn call(&self, request: &Request, response: Response) -> (HeaderEdits, HeaderEdits) {
        let mut stream = Stream::default();
        let env = self.env(NOW);
        let Decision::Continue(edits) = self.filter.on_request(&mut stream, request, &env) else {
            panic!("the retry policy never answers a request itself")
        };
        let after = if self.filter.wants_response(&stream) {
            self.filter.on_response(&mut stream, &response, &env)
        } else {
            HeaderEdits::default()
        };
        (edits.headers, after)
    }

    fn metric(&self, id: usize) -> i64 {
        self.metrics.value(MetricId(id))
    }
}

fn set<'a>(edits: &'a HeaderEdits, name: &str) -> Option<&'a str> {
    edits
        .set
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An internal request: Envoy kept the client's `x-envoy-*` headers.
fn internal(method: &str, path: &str) -> Request {
    Request::new(method, path).with_header("x-envoy-internal", "true")
}

/// Every retry header is either set by us or removed: nothing a client sent survives.
fn covers_every_retry_header(edits: &HeaderEdits) -> bool {
    RETRY_HEADERS
        .iter()
        .all(|h| set(edits, h).is_some() || edits.remove.iter().any(|r| r == h))
}

const ORDERS: &str = r#"{"rules": [
    {"match": {"prefix": "/orders"}, "retry_on": ["5xx", "retriable-status-codes"],
     "retriable_status_codes": [409], "num_retries": 2, "per_try_timeout": "500ms"},
    {"match": {"prefix": "/"}, "retry_on": ["connect-failure"], "num_retries": 1}
]}"#;

#[test]
fn the_first_matching_rule_writes_envoy_s_retry_headers() {
    let w = World::new(ORDERS);
    let (edits, _) = w.call(&internal("GET", "/orders/1"), Response::new(200));
    assert_eq!(
        set(&edits, "x-envoy-retry-on"),
        Some("5xx,retriable-status-codes")
    );
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("2"));
    assert_eq!(set(&edits, "x-envoy-retriable-status-codes"), Some("409"));
    assert_eq!(
        set(&edits, "x-envoy-upstream-rq-per-try-timeout-ms"),
        Some("500")
    );
    assert!(covers_every_retry_header(&edits));
    let (edits, _) = w.call(&internal("GET", "/other"), Response::new(200));
    assert_eq!(set(&edits, "x-envoy-retry-on"), Some("connect-failure"));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("1"));
    assert!(covers_every_retry_header(&edits));
    // An external request: Envoy stripped the client's headers already; only ours are set.
    let (edits, _) = w.call(&Request::new("GET", "/other"), Response::new(200));
    assert!(edits.remove.is_empty());
    assert_eq!(edits.set.len(), 2);
    assert_eq!(w.metric(0), 3);
}

#[test]
fn non_idempotent_methods_get_no_retries_unless_they_carry_a_key() {
    let w = World::new(ORDERS);
    for method in ["POST", "PATCH", "CONNECT"] {
        let (edits, _) = w.call(&internal(method, "/orders"), Response::new(200));
        assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"), "{method}");
        assert_eq!(set(&edits, "x-envoy-retry-on"), None);
        assert!(covers_every_retry_header(&edits));
    }
    assert_eq!(w.metric(1), 3);
    let keyed = Request::new("POST", "/orders").with_header("idempotency-key", "8e03978e");
    let (edits, _) = w.call(&keyed, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("2"));
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        let (edits, _) = w.call(&Request::new(method, "/orders"), Response::new(200));
        assert_eq!(set(&edits, "x-envoy-max-retries"), Some("2"), "{method}");
    }
}

#[test]
fn without_a_rule_only_the_client_s_headers_go() {
    let w = World::new(r#"{"rules": [{"match": {"prefix": "/orders"}, "retry_on": ["5xx"]}]}"#);
    let (edits, _) = w.call(&internal("GET", "/other"), Response::new(200));
    assert!(edits.set.is_empty());
    assert_eq!(edits.remove.len(), RETRY_HEADERS.len());
    let (edits, _) = w.call(&Request::new("GET", "/other"), Response::new(200));
    assert!(edits.is_empty());
}

#[test]
fn grpc_codes_declare_a_grpc_call_retriable_on_them_alone() {
    let w = World::new(
        r#"{"rules": [{"retry_on": ["reset", "5xx"], "grpc_retry_on": ["unavailable"], "num_retries": 2}]}"#,
    );
    let grpc =
        Request::new("POST", "/shop.Orders/Get").with_header("content-type", "application/grpc");
    let (edits, _) = w.call(&grpc, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-retry-grpc-on"), Some("unavailable"));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("2"));
    // A reset or a 5xx may come after the server acted: not without an idempotency key.
    assert_eq!(set(&edits, "x-envoy-retry-on"), None);
    // With a key, every condition of the rule.
    let keyed = grpc.clone().with_header("idempotency-key", "k1");
    let (edits, _) = w.call(&keyed, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-retry-on"), Some("reset,5xx"));
    // A plain POST, or a gRPC call under a rule without gRPC codes: no retries.
    let (edits, _) = w.call(&Request::new("POST", "/x"), Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
    let w = World::new(r#"{"rules": [{"retry_on": ["reset"]}]}"#);
    let (edits, _) = w.call(&grpc, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
    // A half-open probe is never retried, gRPC or not.
    let w = World::new(r#"{"rules": [{"grpc_retry_on": ["unavailable"]}]}"#);
    let probe = grpc.with_filter_state("circuit_breaker.state", "half_open");
    let (edits, _) = w.call(&probe, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
}

#[test]
fn a_half_open_probe_is_not_retried() {
    let w = World::new(ORDERS);
    let probe =
        Request::new("GET", "/orders").with_filter_state("circuit_breaker.state", "half_open");
    let (edits, _) = w.call(&probe, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
    assert_eq!(w.metric(3), 1);
}

#[test]
fn the_budget_cuts_the_last_grant_then_stops_retries_and_counts_the_spell_once() {
    // No ratio, 1 retry per second of reserve: 10 retries per 10 s.
    let w = World::new(
        r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 3}],
            "budget": {"retry_ratio": 0, "min_retries_per_second": 1}}"#,
    );
    let get = Request::new("GET", "/");
    // Three requests retried three times each, then one with the single retry left.
    for (max, attempts) in [("3", 4), ("3", 4), ("3", 4), ("1", 2)] {
        let (edits, _) = w.call(&get, Response::new(503).with_attempts(attempts));
        assert_eq!(set(&edits, "x-envoy-max-retries"), Some(max));
    }
    assert_eq!(w.metric(5), 10);
    assert_eq!(w.metric(8), 1, "one grant cut short");
    for _ in 0..3 {
        let (edits, _) = w.call(&get, Response::new(200));
        assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
    }
    assert_eq!((w.metric(2), w.metric(4)), (3, 1));
}

#[test]
fn unused_retries_are_refunded_to_later_requests() {
    // 10 retries per 10 s; each request is answered at once, after one retry.
    let w = World::new(
        r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 3}],
            "budget": {"retry_ratio": 0, "min_retries_per_second": 1}}"#,
    );
    let get = Request::new("GET", "/");
    let given: Vec<String> = (0..10)
        .map(|_| {
            let (edits, _) = w.call(&get, Response::new(200).with_attempts(2));
            set(&edits, "x-envoy-max-retries").unwrap().to_owned()
        })
        .collect();
    // Each request used one of its three: ten requests were given retries, the last two
    // what was left.
    assert_eq!(given, ["3", "3", "3", "3", "3", "3", "3", "3", "2", "1"]);
    // Ten retries were used: the window's reserve is spent.
    let (edits, _) = w.call(&get, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
    // A response without an attempt count (Envoy made no attempt) refunds the whole grant.
    let w = World::new(
        r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 3}],
            "budget": {"retry_ratio": 0, "min_retries_per_second": 1}}"#,
    );
    for _ in 0..20 {
        let (edits, _) = w.call(&get, Response::new(404));
        assert_eq!(set(&edits, "x-envoy-max-retries"), Some("3"));
    }
}

#[test]
fn a_client_that_left_gets_its_unused_retries_refunded_by_envoy_s_attempt_count() {
    let config = r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 3}],
            "budget": {"retry_ratio": 0, "min_retries_per_second": 1}}"#;
    let get = Request::new("GET", "/");
    // Ten clients leave before any response; Envoy says each request made one attempt.
    let w = World::new(config);
    let env = w.env(NOW);
    for _ in 0..10 {
        let mut stream = Stream::default();
        let Decision::Continue(edits) = w.filter.on_request(&mut stream, &get, &env) else {
            panic!()
        };
        assert_eq!(set(&edits.headers, "x-envoy-max-retries"), Some("3"));
        assert!(w.filter.wants_end(&stream));
        w.filter
            .on_end(&mut stream, &Response::empty().with_attempts(1), &env);
        assert!(!w.filter.wants_end(&stream));
    }
    // Nothing was used: the reserve is whole.
    let (edits, _) = w.call(&get, Response::new(200).with_attempts(1));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("3"));
    // Without an attempt count the grant stays charged: never more retries than charged.
    let w = World::new(config);
    let env = w.env(NOW);
    for _ in 0..4 {
        let mut stream = Stream::default();
        w.filter.on_request(&mut stream, &get, &env);
        w.filter.on_end(&mut stream, &Response::empty(), &env);
    }
    let (edits, _) = w.call(&get, Response::new(200));
    assert_eq!(set(&edits, "x-envoy-max-retries"), Some("0"));
}

#[test]
fn retry_after_is_added_kept_or_capped() {
    let w = World::new(
        r#"{"retry_after": {"statuses": [429, 503], "default": "5s", "max": "60s", "jitter": "none"}}"#,
    );
    let get = Request::new("GET", "/");
    let header = |r: Response| set(&w.call(&get, r).1, "retry-after").map(str::to_owned);
    assert_eq!(header(Response::new(503)).as_deref(), Some("5"));
    assert_eq!(header(Response::new(429)).as_deref(), Some("5"));
    assert_eq!(header(Response::new(500)), None);
    assert_eq!(
        header(Response::new(503).with_header("retry-after", "7")),
        None
    );
    assert_eq!(
        header(Response::new(503).with_header("retry-after", "3600")).as_deref(),
        Some("60")
    );
    assert_eq!(
        header(Response::new(503).with_header("retry-after", "Tue, 24 Nov 2026 00:00:30 GMT")),
        None
    );
    assert_eq!(
        header(Response::new(503).with_header("retry-after", "later")).as_deref(),
        Some("5")
    );
}

/// The access log's `retry_policy.decision` of a whole call: why the request got fewer retries
/// than its rule gives, or `None` (nothing recorded).
fn decision(w: &World, request: &Request, response: Response) -> Option<String> {
    let mut stream = Stream::default();
    let env = w.env(NOW);
    let Decision::Continue(edits) = w.filter.on_request(&mut stream, request, &env) else {
        panic!("the retry policy never answers a request itself")
    };
    if w.filter.wants_response(&stream) {
        w.filter.on_response(&mut stream, &response, &env);
    }
    assert!(edits.filter_state.len() <= 1, "{edits:?}");
    edits
        .filter_state_value(retry_policy::DECISION)
        .map(str::to_owned)
}

#[test]
fn each_withheld_retry_records_why_and_a_full_grant_records_nothing() {
    let w = World::new(ORDERS);
    assert_eq!(
        decision(&w, &internal("GET", "/orders/1"), Response::new(200)),
        None
    );
    assert_eq!(
        decision(&w, &Request::new("POST", "/orders"), Response::new(200)).as_deref(),
        Some("not_idempotent")
    );
    let probe =
        Request::new("GET", "/orders").with_filter_state("circuit_breaker.state", "half_open");
    assert_eq!(
        decision(&w, &probe, Response::new(200)).as_deref(),
        Some("half_open_probe")
    );
    // No rule: the route's own policy, nothing recorded.
    let w = World::new(r#"{"rules": [{"match": {"prefix": "/orders"}, "retry_on": ["5xx"]}]}"#);
    assert_eq!(
        decision(&w, &Request::new("POST", "/other"), Response::new(200)),
        None
    );
    // 10 retries per 10 s: three full grants of 3, one cut to the 1 left, then none.
    let w = World::new(
        r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 3}],
            "budget": {"retry_ratio": 0, "min_retries_per_second": 1}}"#,
    );
    let get = Request::new("GET", "/");
    let seen: Vec<Option<String>> = [4, 4, 4, 2, 1]
        .into_iter()
        .map(|attempts| decision(&w, &get, Response::new(503).with_attempts(attempts)))
        .collect();
    assert_eq!(
        seen,
        [
            None,
            None,
            None,
            Some("budget_cut:1".to_owned()),
            Some("budget_exhausted".to_owned())
        ]
    );
}
