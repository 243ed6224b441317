//! The filter as the host drives it, on a fake clock and the in-memory shared store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use filter_core::config::parse;
use filter_core::decision::{Decision, LocalResponse, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{PerItem, RecordedMetrics};
use filter_core::request::{Request, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::{Cas, MemStore, SharedStore, StoreError, Written};
use filter_core::time::Time;
use log::{Level, LevelFilter};
use rate_limit::reply::DECISION;
use rate_limit::{RateLimit, RuleMetric, Stream};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use testkit::logs::{Line, capture, texts};

const T0: u64 = 1_800_000_000;

fn filter(json: &str) -> RateLimit {
    RateLimit::new(parse(json.as_bytes()).unwrap()).unwrap()
}

/// One rule named `r` keyed on `x-user-id`, with `limit` and the top-level `extra` fields.
fn one_rule(limit: &str, extra: &str) -> RateLimit {
    filter(&format!(
        r#"{{"rules": [{{"name": "r", "key": [{{"header": "x-user-id"}}], "limit": {limit}}}] {extra}}}"#
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

    fn env_with<'a>(&'a self, store: &'a dyn SharedStore, nanos: u64) -> Env<'a> {
        Env {
            now: Time::from_nanos(nanos).into(),
            store,
            metrics: &self.metrics,
            verifier: &NoNativeVerifier,
            random: &filter_core::random::Fixed(0),
        }
    }

    /// Sends a request at `secs` (fractional seconds as nanoseconds) and returns the decision
    /// and the header fields the response would get.
    fn send(
        &self,
        f: &RateLimit,
        request: &Request,
        nanos: u64,
    ) -> (Decision, Vec<(String, String)>) {
        self.send_via(f, request, nanos, &self.store)
    }

    fn send_via(
        &self,
        f: &RateLimit,
        request: &Request,
        nanos: u64,
        store: &dyn SharedStore,
    ) -> (Decision, Vec<(String, String)>) {
        let mut stream = Stream::default();
        let env = self.env_with(store, nanos);
        let decision = f.on_request(&mut stream, request, &env);
        let edits = if f.wants_response(&stream) {
            f.on_response(&mut stream, &Response::new(200), &env)
                .set
                .into_iter()
                .map(|(n, v)| (n.into_owned(), v))
                .collect()
        } else {
            Vec::new()
        };
        (decision, edits)
    }
}

fn user(id: &str) -> Request {
    Request::new("GET", "/api").with_header("x-user-id", id)
}

fn secs(s: u64) -> u64 {
    s * 1_000_000_000
}

fn refused(d: &Decision) -> Option<&LocalResponse> {
    match d {
        Decision::Respond(r) => Some(r),
        _ => None,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The value of metric `which` of the `rule`-th rule.
fn metric(w: &World, rule: usize, which: RuleMetric) -> i64 {
    w.metrics.value(which.id(rule))
}

#[test]
fn a_burst_of_five_admits_five_then_retry_after_is_exact() {
    let f = one_rule(r#"{"requests": 5, "per": "1m"}"#, "");
    let w = World::new();
    let now = secs(T0);
    // One every 12 s: after the k-th, k are spent and the bucket is full 12·k s later.
    for k in 1..=5u64 {
        let (d, h) = w.send(&f, &user("alice"), now);
        assert_eq!(d, Decision::pass());
        let expected = format!("\"r\";r={};t={}", 5 - k, 12 * k);
        assert_eq!(header(&h, "ratelimit"), Some(expected.as_str()));
        assert_eq!(header(&h, "ratelimit-policy"), Some("\"r\";q=5;w=60"));
    }
    let (d, _) = w.send(&f, &user("alice"), now);
    let reply = refused(&d).expect("the sixth is refused");
    assert_eq!(reply.status, 429);
    let retry: u64 = header(&reply.headers, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 12);
    // Honouring Retry-After works; a nanosecond earlier does not.
    assert!(refused(&w.send(&f, &user("alice"), now + secs(retry) - 1).0).is_some());
    assert_eq!(
        w.send(&f, &user("alice"), now + secs(retry)).0,
        Decision::pass()
    );
    // Another user has a bucket of their own.
    assert_eq!(w.send(&f, &user("bob"), now).0, Decision::pass());
    assert_eq!(metric(&w, 0, RuleMetric::Allowed), 7);
    assert_eq!(metric(&w, 0, RuleMetric::Limited), 2);
}

#[test]
fn a_rule_whose_key_is_missing_does_not_apply() {
    let f = one_rule(r#"{"requests": 1, "per": "1h"}"#, "");
    let w = World::new();
    for _ in 0..3 {
        let (d, h) = w.send(&f, &Request::new("GET", "/"), secs(T0));
        assert_eq!(d, Decision::pass());
        assert!(h.is_empty());
    }
    assert_eq!(w.store.key_count(), 0);
}

#[test]
fn all_or_nothing_a_refusal_charges_no_rule() {
    let f = filter(
        r#"{"rules": [
            {"name": "wide", "key": [{"header": "x-user-id"}], "limit": {"requests": 100, "per": "1h"}},
            {"name": "strict", "match": {"prefix": "/api"}, "key": [{"header": "x-user-id"}], "limit": {"requests": 1, "per": "1h"}}
        ]}"#,
    );
    let w = World::new();
    let now = secs(T0);
    let (_, h) = w.send(&f, &user("a"), now);
    assert_eq!(
        header(&h, "ratelimit"),
        Some("\"wide\";r=99;t=36, \"strict\";r=0;t=3600")
    );
    for _ in 0..5 {
        let (d, _) = w.send(&f, &user("a"), now);
        let reply = refused(&d).unwrap();
        assert!(reply.body.contains("\"violated-policies\":[\"strict\"]"));
        assert_eq!(
            reply.filter_state,
            [(DECISION.into(), "limited:strict".to_owned())]
        );
        assert_eq!(header(&reply.headers, "retry-after"), Some("3600"));
    }
    // The five refusals cost `wide` nothing: a path only `wide` counts still sees 98 left.
    let (_, h) = w.send(
        &f,
        &Request::new("GET", "/other").with_header("x-user-id", "a"),
        now,
    );
    assert_eq!(header(&h, "ratelimit"), Some("\"wide\";r=98;t=72"));
    assert_eq!(metric(&w, 0, RuleMetric::Allowed), 2);
    assert_eq!(metric(&w, 1, RuleMetric::Limited), 5);
}

/// A store that loses the compare-and-swap race on chosen writes, as if another worker wrote
/// first.
struct Racy<'a> {
    inner: &'a MemStore,
    writes: Cell<usize>,
    lose: &'a dyn Fn(usize, &str) -> bool,
}

impl SharedStore for Racy<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
        let n = self.writes.get();
        self.writes.set(n + 1);
        if (self.lose)(n, key) {
            // Another worker's write lands first (it changes nothing, but moves the CAS).
            if let Some((current, _)) = self.inner.get(key)? {
                self.inner.set(key, &current, None)?;
            }
            return Ok(Written::CasMismatch);
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_lost_race_on_the_second_rule_undoes_the_first_and_tries_again() {
    let f = filter(
        r#"{"rules": [
            {"name": "a", "key": [{"header": "x-user-id"}], "limit": {"requests": 3, "per": "1h"}},
            {"name": "b", "key": [{"header": "x-user-id"}], "limit": {"requests": 3, "per": "1h"}}
        ]}"#,
    );
    let w = World::new();
    let lose_first_b = |n: usize, key: &str| n == 1 && key.starts_with("rl1/b/");
    let racy = Racy {
        inner: &w.store,
        writes: Cell::new(0),
        lose: &lose_first_b,
    };
    let (d, h) = w.send_via(&f, &user("u"), secs(T0), &racy);
    assert_eq!(d, Decision::pass());
    // Charged exactly once on both rules, despite `a` being written twice.
    assert_eq!(
        header(&h, "ratelimit"),
        Some("\"a\";r=2;t=1200, \"b\";r=2;t=1200")
    );
    let (_, h) = w.send(&f, &user("u"), secs(T0));
    assert_eq!(
        header(&h, "ratelimit"),
        Some("\"a\";r=1;t=2400, \"b\";r=1;t=2400")
    );
}

#[test]
fn a_store_that_stays_contended_follows_on_contention() {
    let always = |_: usize, _: &str| true;
    for (extra, expect_pass) in [("", true), (r#", "on_contention": "deny""#, false)] {
        let f = one_rule(r#"{"requests": 1, "per": "1h"}"#, extra);
        let w = World::new();
        let racy = Racy {
            inner: &w.store,
            writes: Cell::new(0),
            lose: &always,
        };
        let (d, h) = w.send_via(&f, &user("u"), secs(T0), &racy);
        if expect_pass {
            assert_eq!(d, Decision::pass());
        } else {
            let reply = refused(&d).unwrap();
            assert_eq!(reply.status, 503);
            assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
            assert_eq!(reply.filter_state_value(DECISION), Some("contended"));
        }
        assert!(h.is_empty());
        assert_eq!(metric(&w, 0, RuleMetric::Contention), 1);
        assert_eq!(racy.writes.get(), rate_limit::MAX_ATTEMPTS as usize);
    }
}

#[test]
fn shadow_mode_counts_and_logs_but_refuses_nothing() {
    let f = one_rule(r#"{"requests": 1, "per": "1h"}"#, r#", "shadow": true"#);
    let w = World::new();
    let ((), lines) = capture(LevelFilter::Info, || {
        assert_eq!(w.send(&f, &user("u"), secs(T0)).0, Decision::pass());
        let (d, h) = w.send(&f, &user("u"), secs(T0));
        // Let through, with the refusal it would have been in the access log's decision.
        assert_eq!(
            d,
            Decision::Continue(RequestEdits::default().filter_state(DECISION, "shadow_limited:r"))
        );
        assert_eq!(header(&h, "ratelimit"), Some("\"r\";r=0;t=3600"));
    });
    assert_eq!(metric(&w, 0, RuleMetric::ShadowLimited), 1);
    assert_eq!(metric(&w, 0, RuleMetric::Limited), 0);
    assert_eq!(
        lines,
        [Line {
            level: Level::Info,
            text: "rate_limit: shadow mode: would refuse GET /api (over r)".to_owned()
        }]
    );
}

#[test]
fn a_flood_in_shadow_mode_logs_one_line_per_interval_with_the_count_dropped() {
    let f = one_rule(r#"{"requests": 1, "per": "1h"}"#, r#", "shadow": true"#);
    let w = World::new();
    let ((), lines) = capture(LevelFilter::Info, || {
        assert_eq!(w.send(&f, &user("u"), secs(T0)).0, Decision::pass());
        // A would-be refusal every 200 ms for 10 s, then a few spread out.
        for k in 0..=50 {
            w.send(&f, &user("u"), secs(T0) + k * 200_000_000);
        }
        for s in [25, 26, 40] {
            w.send(&f, &user("u"), secs(T0 + s));
        }
    });
    assert_eq!(metric(&w, 0, RuleMetric::ShadowLimited), 54);
    assert_eq!(
        texts(&lines),
        [
            "rate_limit: shadow mode: would refuse GET /api (over r)",
            "rate_limit: shadow mode: would refuse GET /api (over r) \
             (49 similar lines dropped in the last 10s)",
            "rate_limit: shadow mode: would refuse GET /api (over r)",
            "rate_limit: shadow mode: would refuse GET /api (over r) \
             (1 similar line dropped in the last 15s)",
        ]
    );
}

#[test]
fn refusals_are_debug_lines_off_by_default() {
    let f = one_rule(r#"{"requests": 1, "per": "1h"}"#, "");
    let w = World::new();
    let send_three = || {
        for _ in 0..3 {
            w.send(&f, &user("u"), secs(T0));
        }
    };
    // One allowed, two refused, and not a line at info.
    let ((), at_info) = capture(LevelFilter::Info, send_three);
    assert_eq!(at_info, []);
    assert_eq!(metric(&w, 0, RuleMetric::Limited), 2);
    let ((), at_debug) = capture(LevelFilter::Debug, send_three);
    assert_eq!(
        at_debug,
        vec![
            Line {
                level: Level::Debug,
                text: "rate_limit: refused GET /api: over r".to_owned()
            };
            3
        ]
    );
}

#[test]
fn legacy_and_no_header_fields() {
    let f = one_rule(
        r#"{"requests": 2, "per": "10s"}"#,
        r#", "headers": "legacy""#,
    );
    let w = World::new();
    let (_, h) = w.send(&f, &user("u"), secs(T0));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("5"));
    let f = one_rule(r#"{"requests": 2, "per": "10s"}"#, r#", "headers": "none""#);
    let (_, h) = w.send(&f, &user("v"), secs(T0));
    assert!(h.is_empty());
}

#[test]
fn memory_stays_bounded_whatever_the_number_of_clients() {
    let f = one_rule(r#"{"requests": 10, "per": "1s"}"#, r#", "max_keys": 1000"#);
    let w = World::new();
    let mut bytes_at_bound = 0;
    for i in 0..200_000u64 {
        let (d, _) = w.send(&f, &user(&format!("client-{i}")), secs(T0) + i * 1000);
        assert_eq!(d, Decision::pass());
        if i == 10_000 {
            bytes_at_bound = w.store.bytes();
        }
    }
    // 1000 keys in 125 buckets of 8: every bucket exists, none grew past 8 entries.
    assert_eq!(w.store.key_count(), 125);
    assert_eq!(w.store.bytes(), bytes_at_bound);
    assert!(w.store.bytes() < 125 * (8 * 28 + 16));
    // Busy keys were pushed out (each client sent one request 1 µs after the previous one).
    assert!(metric(&w, 0, RuleMetric::Evicted) > 0);
}

#[test]
fn a_table_that_starts_evicting_says_so_once_then_once_a_minute() {
    let f = one_rule(r#"{"requests": 10, "per": "1h"}"#, r#", "max_keys": 1000"#);
    let w = World::new();
    // A new client every millisecond for two minutes: the table fills, then evicts.
    let ((), lines) = capture(LevelFilter::Info, || {
        for i in 0..120_000u64 {
            w.send(&f, &user(&format!("client-{i}")), secs(T0) + i * 1_000_000);
        }
    });
    let evicted = metric(&w, 0, RuleMetric::Evicted);
    assert!(evicted > 100_000, "{evicted}");
    let texts = texts(&lines);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!(
        texts[0],
        "rate_limit: rule r: key table full (1000 keys): evicting the keys closest to idle"
    );
    assert!(
        texts[1].starts_with(
            "rate_limit: rule r: key table full (1000 keys): evicting the keys closest to idle ("
        ) && texts[1].ends_with(" similar lines dropped in the last 60s)"),
        "{}",
        texts[1]
    );
    assert!(lines.iter().all(|l| l.level == Level::Info));
}

#[test]
fn workers_sharing_the_store_admit_exactly_the_burst() {
    // Eight threads, each with its own filter (a worker's VM), one store.
    let store = MemStore::new();
    let admitted = AtomicUsize::new(0);
    let json = r#"{"rules": [{"name": "r", "key": [{"rule": {}}], "limit": {"requests": 5, "per": "1h"}}]}"#;
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let f = filter(json);
                let metrics = RecordedMetrics::default();
                for _ in 0..50 {
                    let env = Env {
                        now: Time::from_secs(T0).into(),
                        store: &store,
                        metrics: &metrics,
                        verifier: &NoNativeVerifier,
                        random: &filter_core::random::Fixed(0),
                    };
                    let d = f.on_request(&mut Stream::default(), &user("x"), &env);
                    if d == Decision::pass() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 5);
}

#[test]
fn client_ip_keys_follow_trusted_proxies() {
    let f = filter(
        r#"{"trusted_proxies": 1, "rules": [{"name": "ip", "key": [{"client_ip": {}}], "limit": {"requests": 1, "per": "1h"}}]}"#,
    );
    let w = World::new();
    let via = |xff: &str| {
        Request::new("GET", "/")
            .with_client_address("10.0.0.1:4000")
            .with_header("x-forwarded-for", xff)
    };
    assert_eq!(
        w.send(&f, &via("9.9.9.9, 1.1.1.1"), secs(T0)).0,
        Decision::pass()
    );
    // A forged left part changes nothing: the proxy's entry is the key.
    assert!(refused(&w.send(&f, &via("8.8.8.8, 1.1.1.1"), secs(T0)).0).is_some());
    assert_eq!(w.send(&f, &via("1.1.1.2"), secs(T0)).0, Decision::pass());
}
