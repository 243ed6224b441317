//! `retry_policy.wasm` in Envoy with two workers and scripted upstreams: the router retries
//! exactly as the filter's headers say, never a non-idempotent request, never what a client
//! asks for; the budget bounds an outage's retries; Retry-After is added, kept and capped.

use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig, example};
use filter_tests::grpc::{GrpcCall, GrpcServer, code};
use filter_tests::metric;
use filter_tests::upstream::{Reply, Upstream};
use std::time::Duration;

fn gateway(layout: Layout, upstream: &Upstream, config: &str) -> Envoy {
    Envoy::start(
        &TestEnvoyConfig::new(upstream.port())
            .layout(layout)
            .filter("retry_policy", config)
            .render(),
    )
}

fn then_ok(failures: usize) -> Vec<Reply> {
    let mut script = vec![Reply::Status(503); failures];
    script.push(Reply::Echo);
    script
}

const RETRY_5XX: &str = r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 2}]}"#;

both_modules! {
    fn a_get_whose_first_attempt_fails_succeeds_with_exactly_two_attempts(layout) {
        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let r = client::get("/orders").send(envoy.port("gateway"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream.count(), 2);
        // The router consumed the retry headers: the upstream never sees them.
        assert!(
            upstream
                .received()
                .iter()
                .all(|q| q.header("x-envoy-retry-on").is_none())
        );
        assert_eq!(
            envoy.stat_eventually(&metric("retry_policy_retries_total", &[]), 1),
            Some(1)
        );
    }
}

both_modules! {
    fn a_post_is_attempted_once_unless_it_carries_an_idempotency_key(layout) {
        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let port = envoy.port("gateway");
        let post = client::Request::new("POST", "/orders").body("{}");
        assert_eq!(post.send(port).status, 503);
        assert_eq!(upstream.count(), 1);

        let upstream = Upstream::start(then_ok(1));
        let envoy = gateway(layout, &upstream, RETRY_5XX);
        let keyed = client::Request::new("POST", "/orders")
            .header(
                "idempotency-key",
                "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
            )
            .body("{}");
        assert_eq!(keyed.send(envoy.port("gateway")).status, 200);
        assert_eq!(upstream.count(), 2);
        assert_eq!(
            envoy.stat_eventually(&metric("retry_policy_requests_total", &[("outcome", "granted")]), 1),
            Some(1)
        );
    }
}

both_modules! {
    fn a_client_asking_for_100_retries_gets_the_rule_s_number(layout) {
        let upstream = Upstream::start(vec![Reply::Status(503)]);
        // Internal clients: Envoy itself would keep and obey the client's retry headers.
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port()).layout(layout)
                .filter(
                    "retry_policy",
                    r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1}]}"#,
                )
                .internal_clients()
                .render(),
        );
        let r = client::get("/x")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-max-retries", "100")
            .send(envoy.port("gateway"));
        assert_eq!(r.status, 503);
        assert_eq!(upstream.count(), 2);
        // And on a POST, which no rule may retry, nothing the client sent makes it retried.
        let post = client::Request::new("POST", "/x")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-max-retries", "100")
            .body("{}");
        assert_eq!(post.send(envoy.port("gateway")).status, 503);
        assert_eq!(upstream.count(), 3);
    }
}

both_modules! {
    fn per_try_timeout_cuts_a_hung_attempt_and_the_retry_succeeds(layout) {
        let upstream = Upstream::start(vec![Reply::Hang, Reply::Echo]);
        let envoy = gateway(layout,
            &upstream,
            r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1, "per_try_timeout": "200ms"}]}"#,
        );
        let started = std::time::Instant::now();
        let r = client::get("/slow").send(envoy.port("gateway"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream.count(), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

both_modules! {
    fn the_budget_bounds_what_an_outage_costs_the_upstream(layout) {
        const REQUESTS: usize = 50;
        let with_budget = r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 2}],
                              "budget": {"retry_ratio": 0.2, "min_retries_per_second": 1}}"#;
        let down = Upstream::start(vec![Reply::Status(503)]);
        let envoy = gateway(layout, &down, with_budget);
        for _ in 0..REQUESTS {
            assert_eq!(client::get("/x").send(envoy.port("gateway")).status, 503);
        }
        // 20% of 50 plus the reserve of 1 per second over 10 s: a ceiling, every grant charged
        // before its retries happen (the 50 requests take well under 10 s).
        let bound = REQUESTS + REQUESTS / 5 + 10;
        let seen = down.count();
        eprintln!("{REQUESTS} requests, {seen} reached the upstream with the budget on");
        assert!(
            seen <= bound,
            "the upstream saw {seen} requests, more than {bound}"
        );
        assert!(seen > REQUESTS, "no retries at all ({seen})");
        assert!(
            envoy
                .stat_when(&metric("retry_policy_requests_total", &[("outcome", "budget_exhausted")]), |n| n
                    .unwrap_or(0)
                    > 0)
                .unwrap_or(0)
                > 0
        );

        let down = Upstream::start(vec![Reply::Status(503)]);
        let envoy = gateway(layout, &down, RETRY_5XX);
        for _ in 0..REQUESTS {
            client::get("/x").send(envoy.port("gateway"));
        }
        assert_eq!(down.count(), REQUESTS * 3);
    }
}

both_modules! {
    fn retry_after_is_added_kept_and_capped(layout) {
        let full = |status: u16, retry_after: &str| Reply::Full {
            status,
            headers: vec![("retry-after".to_owned(), retry_after.to_owned())],
            body: String::new(),
        };
        let upstream = Upstream::start(vec![
            Reply::Status(503),
            full(503, "7"),
            full(429, "3600"),
            full(429, "Tue, 24 Nov 2099 00:00:00 GMT"),
            Reply::Status(500),
        ]);
        let envoy = gateway(layout,
            &upstream,
            r#"{"retry_after": {"default": "5s", "max": "60s", "jitter": "none"}}"#,
        );
        let port = envoy.port("gateway");
        let retry_after = || {
            client::get("/x")
                .send(port)
                .header("retry-after")
                .map(str::to_owned)
        };
        assert_eq!(retry_after().as_deref(), Some("5"));
        assert_eq!(retry_after().as_deref(), Some("7"));
        assert_eq!(retry_after().as_deref(), Some("60"));
        assert_eq!(retry_after().as_deref(), Some("60"));
        assert_eq!(retry_after(), None);
    }
}

both_modules! {
    fn a_half_open_probe_is_not_retried(layout) {
        let upstream = Upstream::start(vec![Reply::Status(503)]);
        // The breaker first: the retry policy reads the state it leaves.
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port()).layout(layout)
                .filter(
                    "circuit_breaker",
                    r#"{"breakers": [{"name": "b", "minimum_calls": 4, "open_duration": "1s", "half_open_calls": 1}]}"#,
                )
                .filter("retry_policy", r#"{"rules": [{"retry_on": ["5xx"], "num_retries": 1}]}"#)
                .render(),
        );
        let port = envoy.port("gateway");
        for _ in 0..4 {
            assert_eq!(client::get("/x").send(port).status, 503);
        }
        // Four requests, each retried once: eight attempts, and the breaker opened.
        assert_eq!(upstream.count(), 8);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(client::get("/x").send(port).status, 503);
        assert_eq!(upstream.count(), 9, "the probe went upstream once");
        assert_eq!(
            envoy.stat_eventually(&metric("retry_policy_requests_total", &[("outcome", "half_open_probe")]), 1),
            Some(1)
        );
    }
}

#[test]
fn the_example_retries_a_get_three_times_and_a_post_once() {
    let envoy = Envoy::start(&example("retry_policy.yaml"));
    let port = envoy.port("gateway");
    let r = client::get("/orders/1").send(port);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let retries = || envoy.stat("cluster.orders.upstream_rq_retry").unwrap_or(0);
    assert_eq!(retries(), 2);
    let post = client::Request::new("POST", "/orders")
        .body("{}")
        .send(port);
    assert_eq!(post.status, 503);
    assert_eq!(retries(), 2);
}

/// What one soak request did: when the client sent it, and when the upstream saw each attempt
/// (nanoseconds since the Unix epoch, the clock Envoy's filters read too).
#[derive(Debug, Default, Clone)]
struct Soaked {
    sent: u64,
    attempts: Vec<u64>,
}

impl Soaked {
    /// The second the budget counted the request in and charged its grant to: the filter ran
    /// after the client sent it and before the first attempt, so it is one of these (the
    /// second alone when both fall in it; a request that never reached the upstream may have
    /// been counted any time after it was sent).
    fn seconds(&self) -> (u64, u64) {
        let first = self.attempts.first().copied().unwrap_or(u64::MAX);
        (self.sent / NANOS, first / NANOS)
    }

    fn retries(&self) -> impl Iterator<Item = u64> + '_ {
        self.attempts.iter().skip(1).copied()
    }
}

const NANOS: u64 = 1_000_000_000;

fn nanos(t: std::time::SystemTime) -> u64 {
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    u64::try_from(since.as_nanos()).expect("a 64-bit time")
}

/// The budget's promise in a real Envoy, measured by the upstream: a soak against an
/// upstream that resets every connection, with Envoy's own retry cap raised so that the
/// budget is the limit that binds, from 12 connections spread over both workers for 21 s.
///
/// The filter guarantees, for the requests counted and retries charged in any ten
/// consecutive one-second slots `c ..= c+9`: retries ≤ ⌊ratio × requests⌋ + reserve. The
/// upstream's log tells each request's retries, and its slot to within
/// `⌊sent⌋ ..= ⌊first attempt⌋` (the filter ran between the two). So:
///
/// - per slot window, with no tolerance: the retries of the requests surely in it are at most
///   `⌊ratio × requests possibly in it⌋ + reserve`;
/// - per sliding window `W = [T, T+10 s)`, step 250 ms, by when the upstream saw each
///   attempt: retries seen in W ≤ ⌊ratio × requests possibly in slots c..=c+9⌋ + reserve +
///   the retries seen in W of requests not surely in those slots, for `c` = ⌊T⌋ or ⌊T⌋+1,
///   whichever is less. That excess over `ratio × first attempts in W + reserve` is the
///   tolerance, all of it from W not starting on a whole second (and requests straddling
///   one); the test reports how much of it was needed.
#[test]
fn under_an_outage_the_budget_is_a_ceiling_in_every_ten_seconds() {
    const RATIO_PER_MILLION: u64 = 100_000; // 0.1
    const MIN_PER_SECOND: u64 = 2;
    const RESERVE: u64 = MIN_PER_SECOND * 10;
    const CONNECTIONS: usize = 12;
    const LOAD: Duration = Duration::from_secs(21);
    const PACE: Duration = Duration::from_millis(10);
    const WINDOW: u64 = 10 * NANOS;
    const STEP: u64 = NANOS / 4;
    let allowance = |requests: u64| requests * RATIO_PER_MILLION / 1_000_000 + RESERVE;

    let down = Upstream::start(vec![Reply::Reset]);
    let config = format!(
        r#"{{"rules": [{{"retry_on": ["reset", "connect-failure"], "num_retries": 3}}],
            "budget": {{"retry_ratio": 0.1, "min_retries_per_second": {MIN_PER_SECOND}}}}}"#
    );
    let envoy = Envoy::start(
        &TestEnvoyConfig::new(down.port())
            .filter("retry_policy", &config)
            .upstream_max_retries(100_000)
            .render(),
    );
    let port = envoy.port("gateway");

    // Each connection paced at one request per 10 ms, bounded in time and count.
    let started = std::time::Instant::now();
    let sent: Vec<(String, u64, u16)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                scope.spawn(move || {
                    let mut sent = Vec::new();
                    let mut connection = client::Connection::open(port).expect("connect");
                    let mut next = std::time::Instant::now();
                    for n in 0..10_000 {
                        if started.elapsed() >= LOAD {
                            break;
                        }
                        let path = format!("/soak/{c}/{n}");
                        let at = nanos(std::time::SystemTime::now());
                        let status = match connection.send(&client::get(&path)) {
                            Ok(response) => response.status,
                            Err(_) => {
                                connection = client::Connection::open(port).expect("reconnect");
                                0
                            }
                        };
                        sent.push((path, at, status));
                        next += PACE;
                        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    sent
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    });

    let mut requests: std::collections::HashMap<String, Soaked> = sent
        .iter()
        .map(|(path, at, _)| {
            (
                path.clone(),
                Soaked {
                    sent: *at,
                    attempts: Vec::new(),
                },
            )
        })
        .collect();
    let received = down.received();
    for r in &received {
        requests
            .get_mut(&r.path)
            .unwrap_or_else(|| panic!("the upstream saw {} that no client sent", r.path))
            .attempts
            .push(nanos(r.at));
    }
    for q in requests.values_mut() {
        q.attempts.sort_unstable();
    }
    let failed = sent.iter().filter(|(_, _, status)| *status != 503).count();
    let unseen = requests.values().filter(|q| q.attempts.is_empty()).count();
    assert!(
        failed * 100 <= sent.len() && unseen * 100 <= sent.len(),
        "{failed} of {} requests got no 503, {unseen} never reached the upstream",
        sent.len()
    );
    let requests: Vec<Soaked> = requests.into_values().collect();
    let mut firsts: Vec<u64> = requests
        .iter()
        .filter_map(|q| q.attempts.first().copied())
        .collect();
    let mut retries: Vec<u64> = requests.iter().flat_map(Soaked::retries).collect();
    firsts.sort_unstable();
    retries.sort_unstable();
    let within = |times: &[u64], from: u64, to: u64| {
        (times.partition_point(|&t| t < to) - times.partition_point(|&t| t < from)) as u64
    };
    // Requests possibly, and surely, counted in slots c ..= c+9.
    let possibly = |c: u64| {
        requests
            .iter()
            .filter(|q| {
                let (low, high) = q.seconds();
                low <= c + 9 && high >= c
            })
            .count() as u64
    };
    let surely = |q: &Soaked, c: u64| {
        let (low, high) = q.seconds();
        low >= c && high <= c + 9
    };
    let begin = requests.iter().map(|q| q.sent).min().expect("requests");
    let end = retries
        .last()
        .copied()
        .unwrap_or(begin)
        .max(*firsts.last().unwrap_or(&begin));

    // Slot windows, no tolerance.
    let mut broken: Vec<String> = Vec::new();
    let (mut slot_windows, mut slot_worst) = (0, i64::MAX);
    for c in (begin / NANOS).saturating_sub(9)..=end / NANOS {
        let used: u64 = requests
            .iter()
            .filter(|q| surely(q, c))
            .map(|q| q.retries().count() as u64)
            .sum();
        let allowed = allowance(possibly(c));
        slot_windows += 1;
        slot_worst = slot_worst.min(allowed as i64 - used as i64);
        if used > allowed {
            broken.push(format!("slots {c}..+10: {used} retries, {allowed} allowed"));
        }
    }

    // Sliding windows as the upstream saw them.
    let (mut windows, mut worst, mut fullest) = (0, i64::MAX, 0.0f64);
    // Windows over ratio × first attempts + reserve: how many, by how much at most; the same
    // for those starting on a whole second; the largest tolerance the bound granted.
    let (mut over, mut most_over, mut aligned_over, mut widest) = (0, 0.0f64, 0.0f64, 0.0f64);
    let mut from = (begin / NANOS).saturating_sub(10) * NANOS;
    while from <= end {
        let to = from + WINDOW;
        let seen = within(&retries, from, to);
        let first = within(&firsts, from, to);
        let bound = [from / NANOS, from / NANOS + 1]
            .into_iter()
            .map(|c| {
                let spill: u64 = requests
                    .iter()
                    .filter(|q| !surely(q, c))
                    .map(|q| q.retries().filter(|&t| (from..to).contains(&t)).count() as u64)
                    .sum();
                allowance(possibly(c)) + spill
            })
            .min()
            .unwrap_or(0);
        if seen > bound {
            broken.push(format!(
                "[{from} ns, +10 s): the upstream saw {seen} retries, more than {bound}"
            ));
        }
        let plain = RATIO_PER_MILLION as f64 / 1e6 * first as f64 + RESERVE as f64;
        let excess = seen as f64 - plain;
        if excess > 0.0 {
            over += 1;
            most_over = most_over.max(excess);
            if from.is_multiple_of(NANOS) {
                aligned_over = aligned_over.max(excess);
            }
        }
        widest = widest.max(bound as f64 - plain);
        fullest = fullest.max(seen as f64 / plain);
        windows += 1;
        worst = worst.min(bound as i64 - seen as i64);
        from += STEP;
    }

    let stat = |name: &str| envoy.stat(name).unwrap_or(0);
    let (refused, cut) = (
        envoy
            .stat_when(
                &metric(
                    "retry_policy_requests_total",
                    &[("outcome", "budget_exhausted")],
                ),
                |n| n.unwrap_or(0) > 0,
            )
            .unwrap_or(0),
        stat(&metric("retry_policy_budget_cuts_total", &[])),
    );
    let overflow = stat("cluster.upstream.upstream_rq_retry_overflow");
    // Connections per worker, from the listener's per-worker stats.
    let per_worker = envoy.admin("/stats?filter=downstream_cx_total").text();
    let workers: Vec<u64> = (0..2)
        .map(|w| {
            per_worker
                .lines()
                .filter(|l| l.starts_with("listener.") && l.contains(&format!(".worker_{w}.")))
                .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
                .sum()
        })
        .collect();
    let summary = format!(
        "soak: {} requests ({failed} without a 503, {unseen} unseen upstream) over {:.1} s, \
         connections per worker {workers:?}; the upstream saw {} first attempts and {} retries \
         (ratio {:.4}); the filter refused {refused} grants and cut {cut}; Envoy's retry \
         overflow {overflow}. {slot_windows} slot windows: worst margin {slot_worst}. \
         {windows} sliding windows (step 250 ms): worst margin to the bound {worst}; {over} \
         over ratio x first attempts + reserve, by at most {most_over:.1} ({aligned_over:.1} \
         for those on a whole second; the bound allowed up to {widest:.1} more); the fullest \
         at {fullest:.3} of it",
        sent.len(),
        started.elapsed().as_secs_f64(),
        firsts.len(),
        retries.len(),
        retries.len() as f64 / firsts.len() as f64,
    );
    eprintln!("{summary}");
    assert!(
        broken.is_empty(),
        "{} windows over the budget: {:#?}\n{summary}",
        broken.len(),
        &broken[..broken.len().min(10)]
    );
    assert_eq!(overflow, 0, "Envoy's own retry cap bound, not the budget");
    assert!(
        workers.iter().all(|&n| n > 0),
        "one worker had no connection: {workers:?}"
    );
    assert!(refused > 0, "the budget never refused: it did not bind");
    assert!(
        fullest > 0.8,
        "the busiest window used {fullest:.2} of its allowance: the budget barely let retries through"
    );
}

both_modules! {
    /// `grpc_retry_on` with a real gRPC upstream and client: Envoy retries a trailers-only
    /// UNAVAILABLE as the rule says, and the client sees the last attempt's answer. Naming
    /// gRPC codes declares the calls retriable on them; the rule's HTTP conditions (a reset)
    /// still need the idempotency key.
    fn grpc_retry_on_retries_trailers_only_unavailable(layout) {
        let server = GrpcServer::start();
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(server.port())
                .upstream_http2()
                .layout(layout)
                .filter(
                    "retry_policy",
                    r#"{"rules": [{"match": {"prefix": "/test."}, "retry_on": ["reset"], "grpc_retry_on": ["unavailable"], "num_retries": 2}]}"#,
                )
                .render(),
        );
        let port = envoy.port("gateway");
        let call = |id: &str, reply: &str| {
            let outcome = GrpcCall::new(port, "/test.Echo/Unary")
                .header("idempotency-key", id)
                .id(id)
                .reply(reply)
                .run_one();
            outcome.assert_valid_grpc();
            outcome
        };

        // Down for good: three attempts, the client gets the last UNAVAILABLE.
        let down = call("down", "trailers-only:14");
        assert_eq!(down.code, code::UNAVAILABLE, "{down:#?}");
        assert_eq!(server.requests_with_id("down"), 3, "{}", server.log());
        // Fails once: the retry's OK is what the client gets.
        let flaky = call("flaky", "fail-first:1:14");
        assert_eq!((flaky.code, flaky.messages), (code::OK, 1), "{flaky:#?}");
        assert_eq!(server.requests_with_id("flaky"), 2, "{}", server.log());
        // A code the rule does not name, and a status in trailers after the headers (Envoy
        // judges the headers only: the answer is committed): one attempt each.
        let internal = call("internal", "trailers-only:13");
        assert_eq!(internal.code, code::INTERNAL);
        assert_eq!(server.requests_with_id("internal"), 1);
        let late = call("late", "trailers:14");
        assert_eq!(late.code, code::UNAVAILABLE);
        assert_eq!(server.requests_with_id("late"), 1);
        // Without an idempotency key, the rule's gRPC codes alone: still retried on
        // UNAVAILABLE, but not on a reset (a `retry_on` condition), which needs the key.
        let unkeyed = GrpcCall::new(port, "/test.Echo/Unary")
            .id("unkeyed")
            .reply("trailers-only:14")
            .run_one();
        assert_eq!(unkeyed.code, code::UNAVAILABLE);
        assert_eq!(server.requests_with_id("unkeyed"), 3, "{}", server.log());
        let reset = GrpcCall::new(port, "/test.Echo/Unary")
            .id("reset")
            .reply("reset-before-headers")
            .run_one();
        assert_ne!(reset.code, code::OK);
        assert_eq!(server.requests_with_id("reset"), 1, "{}", server.log());

        assert_eq!(
            envoy.stat_eventually(&metric("retry_policy_retries_total", &[]), 5),
            Some(5)
        );
        assert_eq!(envoy.stat(&metric("retry_policy_requests_total", &[("outcome", "not_idempotent")])), Some(0));
    }
}
