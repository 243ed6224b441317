//! The gateway against the four filters chained as Envoy chains separate filters: the same
//! requests, answers, clock and randomness must give the same decisions, the same headers
//! upstream and downstream, and the same metrics by name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use circuit_breaker::CircuitBreaker;
use filter_core::config::parse;
use filter_core::decision::{Decision, HeaderEdits, LocalResponse, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, RecordedMetrics};
use filter_core::random::Fixed;
use filter_core::request::{Request, Response};
use filter_core::signature::NoNativeVerifier;
use filter_core::store::MemStore;
use filter_core::time::Time;
use gateway::Gateway;
use jwt_auth::JwtAuth;
use log::LevelFilter;
use rate_limit::RateLimit;
use retry_policy::RetryPolicy;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use testkit::logs::{capture, texts};

const NOW_MS: u64 = 1_795_478_400_000;

fn configs() -> [(&'static str, Value); 4] {
    let jwks = testkit::jwks(&[&testkit::demo_key()]);
    [
        (
            "jwt_auth",
            json!({
                "providers": { "demo": {
                    "issuer": "https://issuer.example", "audiences": ["api"], "algorithms": ["EdDSA"],
                    "local_jwks": { "inline": jwks },
                    "claim_to_headers": [ { "claim": "sub", "header": "x-user-id" } ] } },
                "rules": [
                    { "match": { "prefix": "/public/" } },
                    { "match": { "prefix": "/" }, "requires": { "provider": "demo" } } ],
            }),
        ),
        (
            "rate_limit",
            json!({ "rules": [
                { "name": "per-user", "key": [ { "header": "x-user-id" } ],
                  "limit": { "requests": 3, "per": "2s" } },
                { "name": "per-ip", "key": [ { "client_ip": {} } ],
                  "limit": { "requests": 8, "per": "1s" } } ] }),
        ),
        (
            "circuit_breaker",
            json!({ "breakers": [ { "name": "up", "match": { "cluster": "up" },
                "minimum_calls": 4, "failure_rate_threshold": 50, "window": { "type": "count", "size": 8 }, "open_duration": "3s",
                "half_open_calls": 1 } ] }),
        ),
        (
            "retry_policy",
            json!({
                "rules": [ { "match": { "prefix": "/" }, "retry_on": ["5xx"], "num_retries": 2 } ],
                "budget": { "retry_ratio": 0.2, "min_retries_per_second": 1 },
                "retry_after": { "default": "2s", "max": "60s" } }),
        ),
    ]
}

fn build<F: Filter>(config: &Value) -> F {
    F::new(parse(config.to_string().as_bytes()).unwrap()).unwrap()
}

/// What a client and the upstream saw of one request.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Sent upstream with these headers and filter state; answered with these headers.
    Upstream {
        request: Vec<(String, String)>,
        filter_state: Vec<(String, String)>,
        response: Vec<(String, String)>,
    },
    /// Answered by a filter: the client got these headers (after every filter's response
    /// edits) and this body; the access log sees this filter state.
    Local {
        response: Vec<(String, String)>,
        filter_state: Vec<(String, String)>,
        body: String,
    },
    Held,
}

/// Envoy's view of one request: its header map and filter state, edited in turn.
#[derive(Clone, Default)]
struct Exchange {
    headers: Vec<(String, String)>,
    filter_state: Vec<(String, String)>,
}

impl Exchange {
    fn request(&self) -> Request {
        let mut request = Request::from_pairs(self.headers.clone())
            .with_cluster("up")
            .with_client_address("10.0.0.7:5000");
        for (name, value) in &self.filter_state {
            request = request.with_filter_state(name, value);
        }
        request
    }

    fn response(&self) -> Response {
        Response::from_pairs(self.headers.clone())
            .with_attempts(1)
            .with_code_details("via_upstream")
    }

    /// Applies header edits as the host does: removals, then sets.
    fn apply(&mut self, edits: &HeaderEdits) {
        self.headers
            .retain(|(n, _)| !edits.remove.iter().any(|r| r == n));
        for (name, value) in &edits.set {
            self.headers.retain(|(n, _)| n != name);
            self.headers.push((name.to_string(), value.clone()));
        }
    }

    /// Applies a passed request's edits as the host does: headers, then filter state.
    fn apply_request(&mut self, edits: &RequestEdits) {
        self.apply(&edits.headers);
        for (name, value) in &edits.filter_state {
            self.filter_state.retain(|(n, _)| n != name);
            self.filter_state.push((name.to_string(), value.clone()));
        }
    }

    fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
        pairs.sort();
        pairs
    }

    fn local(reply: &LocalResponse) -> Self {
        let mut headers = vec![(":status".to_owned(), reply.status.to_string())];
        headers.extend(reply.headers.iter().cloned());
        Self {
            headers,
            filter_state: Vec::new(),
        }
    }
}

/// One separate filter, with its own VM's store and metrics (each filter entry its own `vm_id`,
/// as the examples configure them).
struct Alone<F: Filter> {
    filter: F,
    store: MemStore,
    metrics: RecordedMetrics,
}

impl<F: Filter> Alone<F> {
    fn new(config: &Value) -> Self {
        Self {
            filter: build(config),
            store: MemStore::new(),
            metrics: RecordedMetrics::default(),
        }
    }

    fn env(&self, now: Time) -> Env<'_> {
        env(now, &self.store, &self.metrics)
    }

    fn metrics_by_name(&self, into: &mut BTreeMap<String, i64>) {
        for (i, (name, _)) in self.filter.metric_names().iter().enumerate() {
            let value = self.metrics.value(MetricId(i));
            if value != 0 {
                into.insert(name.clone(), value);
            }
        }
    }
}

fn env<'a>(now: Time, store: &'a MemStore, metrics: &'a RecordedMetrics) -> Env<'a> {
    Env {
        now: now.into(),
        store,
        metrics,
        verifier: &NoNativeVerifier,
        random: &Fixed(7),
    }
}

/// The four filters as four entries of Envoy's filter chain.
struct Separate {
    jwt: Alone<JwtAuth>,
    rate: Alone<RateLimit>,
    breaker: Alone<CircuitBreaker>,
    retry: Alone<RetryPolicy>,
}

#[derive(Default)]
struct SeparateStreams {
    jwt: <JwtAuth as Filter>::Stream,
    rate: <RateLimit as Filter>::Stream,
    breaker: <CircuitBreaker as Filter>::Stream,
    retry: <RetryPolicy as Filter>::Stream,
}

/// One filter's request callback as Envoy runs it: `None` when the chain goes on.
fn decode<F: Filter>(
    alone: &Alone<F>,
    stream: &mut F::Stream,
    exchange: &mut Exchange,
    now: Time,
) -> Option<Decision> {
    match alone
        .filter
        .on_request(stream, &exchange.request(), &alone.env(now))
    {
        Decision::Continue(edits) => {
            exchange.apply_request(&edits);
            None
        }
        other => Some(other),
    }
}

fn encode<F: Filter>(alone: &Alone<F>, stream: &mut F::Stream, exchange: &mut Exchange, now: Time) {
    if alone.filter.wants_response(stream) {
        let edits = alone
            .filter
            .on_response(stream, &exchange.response(), &alone.env(now));
        exchange.apply(&edits);
    }
}

fn end<F: Filter>(alone: &Alone<F>, stream: &mut F::Stream, exchange: &Exchange, now: Time) {
    if alone.filter.wants_end(stream) {
        alone
            .filter
            .on_end(stream, &exchange.response(), &alone.env(now));
    }
}

/// Where the request went: upstream (`None` decision: the chain let it through), answered
/// locally, or held (`None`). Returns the request the upstream got, the response before
/// encoders, and the body.
fn answer(
    decided: Option<Decision>,
    request: Exchange,
    status: u16,
) -> Option<(Option<Exchange>, Exchange, String)> {
    match decided {
        None => {
            let response = Exchange {
                headers: vec![(":status".to_owned(), status.to_string())],
                filter_state: Vec::new(),
            };
            Some((Some(request), response, String::new()))
        }
        Some(Decision::Respond(reply)) => {
            // What the filters before the refusing one left stays, as in Envoy; the reply's
            // own is set before it is sent.
            let mut local = Exchange::local(&reply);
            local.filter_state = request.filter_state;
            local.apply_request(&RequestEdits {
                headers: HeaderEdits::default(),
                filter_state: reply.filter_state,
            });
            Some((None, local, reply.body))
        }
        Some(_) => None,
    }
}

fn seen(upstream: Option<Exchange>, response: Exchange, body: String) -> Seen {
    match upstream {
        Some(request) => Seen::Upstream {
            request: Exchange::sorted(request.headers),
            filter_state: Exchange::sorted(request.filter_state),
            response: Exchange::sorted(response.headers),
        },
        None => Seen::Local {
            response: Exchange::sorted(response.headers),
            filter_state: Exchange::sorted(response.filter_state),
            body,
        },
    }
}

impl Separate {
    fn new() -> Self {
        Self::with(configs())
    }

    fn with(configs: [(&'static str, Value); 4]) -> Self {
        let [(_, jwt), (_, rate), (_, breaker), (_, retry)] = configs;
        Self {
            jwt: Alone::new(&jwt),
            rate: Alone::new(&rate),
            breaker: Alone::new(&breaker),
            retry: Alone::new(&retry),
        }
    }

    fn exchange(&self, request: &Exchange, status: u16, now: Time) -> Seen {
        let mut s = SeparateStreams::default();
        let mut exchange = request.clone();
        let decided = decode(&self.jwt, &mut s.jwt, &mut exchange, now)
            .or_else(|| decode(&self.rate, &mut s.rate, &mut exchange, now))
            .or_else(|| decode(&self.breaker, &mut s.breaker, &mut exchange, now))
            .or_else(|| decode(&self.retry, &mut s.retry, &mut exchange, now));
        let Some((upstream, mut response, body)) = answer(decided, exchange, status) else {
            return Seen::Held;
        };
        // Encoders run in reverse, local replies included.
        encode(&self.retry, &mut s.retry, &mut response, now);
        encode(&self.breaker, &mut s.breaker, &mut response, now);
        encode(&self.rate, &mut s.rate, &mut response, now);
        encode(&self.jwt, &mut s.jwt, &mut response, now);
        end(&self.jwt, &mut s.jwt, &response, now);
        end(&self.rate, &mut s.rate, &response, now);
        end(&self.breaker, &mut s.breaker, &response, now);
        end(&self.retry, &mut s.retry, &response, now);
        seen(upstream, response, body)
    }

    fn metrics(&self) -> BTreeMap<String, i64> {
        let mut all = BTreeMap::new();
        self.jwt.metrics_by_name(&mut all);
        self.rate.metrics_by_name(&mut all);
        self.breaker.metrics_by_name(&mut all);
        self.retry.metrics_by_name(&mut all);
        all
    }
}

/// The gateway as one filter entry.
struct Combined(Alone<Gateway>);

impl Combined {
    fn new() -> Self {
        Self::with(configs())
    }

    fn with(configs: [(&'static str, Value); 4]) -> Self {
        let config: serde_json::Map<String, Value> = configs
            .into_iter()
            .map(|(name, config)| (name.to_owned(), config))
            .collect();
        Self(Alone::new(&Value::Object(config)))
    }

    fn exchange(&self, request: &Exchange, status: u16, now: Time) -> Seen {
        let alone = &self.0;
        let mut stream = <Gateway as Filter>::Stream::default();
        let mut exchange = request.clone();
        let decided = decode(alone, &mut stream, &mut exchange, now);
        let Some((upstream, mut response, body)) = answer(decided, exchange, status) else {
            return Seen::Held;
        };
        encode(alone, &mut stream, &mut response, now);
        end(alone, &mut stream, &response, now);
        seen(upstream, response, body)
    }

    fn metrics(&self) -> BTreeMap<String, i64> {
        let mut all = BTreeMap::new();
        self.0.metrics_by_name(&mut all);
        all
    }
}

fn token(sub: &str) -> String {
    let now = NOW_MS / 1000;
    testkit::demo_key().sign(&json!({
        "iss": "https://issuer.example", "aud": "api", "sub": sub, "iat": now, "exp": now + 3600,
    }))
}

/// A mixed workload: users with and without tokens, forged identity headers, public paths,
/// POSTs, and an upstream that fails for a while then heals, so that every policy acts.
fn workload() -> Vec<(Exchange, u16, Time)> {
    let alice = format!("Bearer {}", token("alice"));
    let bob = format!("Bearer {}", token("bob"));
    let mut out = Vec::new();
    for i in 0..120u64 {
        let (method, path) = match i % 5 {
            0 => ("POST", "/orders"),
            1 => ("GET", "/public/info"),
            _ => ("GET", "/orders/7"),
        };
        let mut headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            (":authority".to_owned(), "api.example".to_owned()),
        ];
        match i % 7 {
            0 | 3 => headers.push(("authorization".to_owned(), alice.clone())),
            1 | 4 | 5 => headers.push(("authorization".to_owned(), bob.clone())),
            2 => headers.push(("authorization".to_owned(), "Bearer not.a.token".to_owned())),
            _ => {}
        }
        if i % 11 == 0 {
            headers.push(("x-user-id".to_owned(), "forged".to_owned()));
        }
        if i % 13 == 0 {
            headers.push(("idempotency-key".to_owned(), format!("k{i}")));
        }
        // The upstream fails from the 30th request to the 70th, then heals.
        let status = if (30..70).contains(&i) { 503 } else { 200 };
        let now = Time::from_nanos((NOW_MS + i * 150) * 1_000_000);
        out.push((
            Exchange {
                headers,
                filter_state: Vec::new(),
            },
            status,
            now,
        ));
    }
    out
}

#[test]
fn the_gateway_behaves_as_the_four_filters_chained() {
    let separate = Separate::new();
    let combined = Combined::new();
    let mut kinds = BTreeMap::new();
    let (mut separate_log, mut combined_log) = (Vec::new(), Vec::new());
    for (i, (request, status, now)) in workload().iter().enumerate() {
        // Every line down to debug (each refusal's reason): the gateway's read the same.
        let (alone, lines) = capture(LevelFilter::Debug, || {
            separate.exchange(request, *status, *now)
        });
        separate_log.extend(lines);
        let (together, lines) = capture(LevelFilter::Debug, || {
            combined.exchange(request, *status, *now)
        });
        combined_log.extend(lines);
        assert_eq!(together, alone, "request {i}");
        let kind = match &alone {
            Seen::Upstream { .. } => "upstream".to_owned(),
            Seen::Local { response, .. } => response
                .iter()
                .find(|(n, _)| n == ":status")
                .map(|(_, s)| s.clone())
                .unwrap(),
            Seen::Held => "held".to_owned(),
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(combined.metrics(), separate.metrics());
    assert_eq!(combined_log, separate_log);
    let texts = texts(&separate_log);
    for line in [
        "circuit_breaker: breaker up: closed -> open",
        "jwt_auth: refused with 401: no token",
    ] {
        assert!(texts.contains(&line), "{line:?} not in {texts:#?}");
    }
    // The workload made every policy act: tokens refused, users limited, the breaker opened.
    for status in ["upstream", "401", "429", "503"] {
        assert!(
            kinds.contains_key(status),
            "no {status} in {kinds:?}: {:?}",
            separate.metrics()
        );
    }
    let metrics = separate.metrics();
    for name in [
        "breaker=.=up;.;state=.=open;.;circuit_breaker_transitions_total",
        "rule=.=per-user;.;outcome=.=limited;.;rate_limit_requests_total",
    ] {
        assert!(
            metrics.contains_key(name),
            "{name} never moved: {metrics:?}"
        );
    }
}

/// Each policy's decision reaches the access log in both layouts: a later policy's refusal
/// keeps what an earlier one recorded (a shadow refusal), as separate filters' filter state
/// survives a later filter's local reply.
#[test]
fn every_policy_s_decision_survives_a_later_refusal() {
    let mut configs = configs();
    configs[1].1["shadow"] = json!(true);
    configs[2].1["breakers"][0]["mode"] = json!("forced_open");
    let separate = Separate::with(configs.clone());
    let combined = Combined::with(configs);
    let now = Time::from_nanos(NOW_MS * 1_000_000);
    let request = |auth: Option<&str>| {
        let mut headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), "/orders/7".to_owned()),
            (":authority".to_owned(), "api.example".to_owned()),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization".to_owned(), auth.to_owned()));
        }
        Exchange {
            headers,
            filter_state: Vec::new(),
        }
    };
    let alice = format!("Bearer {}", token("alice"));
    let mut last = None;
    for _ in 0..5 {
        let alone = separate.exchange(&request(Some(&alice)), 200, now);
        let together = combined.exchange(&request(Some(&alice)), 200, now);
        assert_eq!(together, alone);
        last = Some(alone);
    }
    // The fourth request on was over `per-user` (3 per 2 s), in shadow mode.
    let Some(Seen::Local { filter_state, .. }) = last else {
        panic!("the forced-open breaker answers: {last:?}")
    };
    assert_eq!(
        filter_state,
        [
            (
                "circuit_breaker.decision".to_owned(),
                "forced_open:up".to_owned()
            ),
            (
                "rate_limit.decision".to_owned(),
                "shadow_limited:per-user".to_owned()
            ),
        ]
    );
    // A refusal by the first policy records only its own.
    let alone = separate.exchange(&request(None), 200, now);
    assert_eq!(combined.exchange(&request(None), 200, now), alone);
    let Seen::Local { filter_state, .. } = alone else {
        panic!("no token is refused: {alone:?}")
    };
    assert_eq!(
        filter_state,
        [("jwt_auth.decision".to_owned(), "missing".to_owned())]
    );
}

#[test]
fn each_member_is_that_filter_s_configuration() {
    let parse =
        |text: &str| parse::<<Gateway as Filter>::Config>(text.as_bytes()).and_then(Gateway::new);
    let only_retry = parse(r#"{"retry_policy": {"rules": []}}"#).unwrap();
    assert_eq!(only_retry.policies(), ["retry_policy"]);
    let all = Combined::new();
    assert_eq!(
        all.0.filter.policies(),
        ["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"]
    );

    let error = |text: &str| parse(text).unwrap_err().to_string();
    assert!(error(r#"{"rate_limits": {}}"#).contains("unknown field `rate_limits`"));
    assert_eq!(
        error(r#"{"rate_limit": {"rules": [{"name": "a", "key": [{"client_ip": {}}], "limit": {"requests": 0, "per": "1s"}}]}}"#)
            .split(':')
            .next(),
        Some("rate_limit.rules[0].limit.requests")
    );
    assert!(
        error(r#"{"circuit_breaker": {"breakers": 3}}"#).starts_with("circuit_breaker.breakers")
    );
    // Errors inside a member, found while reading or while validating, name the member first.
    assert_eq!(
        error(
            r#"{"rate_limit": {"rules": [{"name": "a", "key": [{"client_ip": {}}], "limit": {"requests": 1.5, "per": "1s"}}]}}"#
        ),
        "rate_limit.rules[0].limit.requests: invalid type: floating point `1.5`, expected u32"
    );
    assert_eq!(
        error(
            r#"{"circuit_breaker": {"breakers": [{"name": "x", "fallback": {"headers": {"a": "1", "a": "2"}}}]}}"#
        ),
        "circuit_breaker.breakers[0].fallback.headers.a: appears twice; each member may appear once"
    );
    assert_eq!(
        error(r#"{"retry_policy": {"rules": [{"per_try_timeout": "1"}]}}"#),
        "retry_policy.rules[0].per_try_timeout: invalid duration \"1\": missing unit (ns, us, ms, s, m or h)"
    );
    assert_eq!(
        error(r#"{"retry_policy": {}, "retry_policy": {}}"#),
        "retry_policy: appears twice; each member may appear once"
    );
    assert_eq!(
        error(r#"{"rate_limits": {}}"#),
        "rate_limits: unknown field `rate_limits`, expected one of `jwt_auth`, `rate_limit`, `circuit_breaker`, `retry_policy`"
    );
    assert!(error("{}").contains("configures no policy"));
    assert!(error(r#"{"jwt_auth": null}"#).contains("configures no policy"));
}

#[test]
fn metric_names_are_the_separate_filters_names_in_order() {
    let separate = Separate::new();
    let combined = Combined::new();
    let mut expected = separate.jwt.filter.metric_names();
    expected.extend(separate.rate.filter.metric_names());
    expected.extend(separate.breaker.filter.metric_names());
    expected.extend(separate.retry.filter.metric_names());
    assert_eq!(combined.0.filter.metric_names(), expected);
}

proptest::proptest! {
    /// No configuration text makes the gateway's parser or any policy's validation panic.
    #[test]
    fn hostile_config_never_panics(text in ".{0,200}") {
        if let Ok(config) = parse::<<Gateway as Filter>::Config>(text.as_bytes()) {
            let _ = Gateway::new(config);
        }
    }

    /// Members of every kind with hostile contents: refused with a path, never a panic.
    #[test]
    fn hostile_members_never_panic(
        member in proptest::sample::select(vec!["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"]),
        inner in r#"[{}\[\]",:a-z0-9 .\-]{0,60}"#,
    ) {
        let text = format!(r#"{{"{member}": {inner}}}"#);
        match parse::<<Gateway as Filter>::Config>(text.as_bytes()).and_then(Gateway::new) {
            Ok(gateway) => proptest::prop_assert_eq!(gateway.policies(), [member]),
            Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
        }
    }
}
