//! The filters' metrics as an operator sees them: a real Prometheus scrapes two real Envoys
//! (the separate filter modules, and `gateway.wasm`) after a known sequence of requests, and
//! PromQL over the series' labels gives exact numbers. Envoy's own labelled metrics are checked
//! in the same scrape, so a failure here tells the pipeline (Envoy, scrape, query) from our
//! naming.

use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{Layout, TestEnvoyConfig};
use filter_tests::metric;
use filter_tests::prometheus::{PrometheusServer, Target, keyed};
use filter_tests::tokens::{Alg, Key, jwks, now_secs};
use filter_tests::upstream::{Reply, Upstream};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Every family our filters define (issue #20): the only names their series may have.
const FAMILIES: &[&str] = &[
    "jwt_auth_requests_total",
    "jwt_auth_cache_lookups_total",
    "jwt_auth_jwks_fetches_total",
    "rate_limit_requests_total",
    "rate_limit_contention_total",
    "rate_limit_evictions_total",
    "rate_limit_service_calls_total",
    "rate_limit_service_failure_denials_total",
    "circuit_breaker_state",
    "circuit_breaker_transitions_total",
    "circuit_breaker_calls_total",
    "circuit_breaker_slow_calls_total",
    "circuit_breaker_rejected_total",
    "circuit_breaker_shadow_rejected_total",
    "circuit_breaker_discarded_total",
    "circuit_breaker_contention_total",
    "circuit_breaker_open_interval_milliseconds",
    "retry_policy_requests_total",
    "retry_policy_budget_cuts_total",
    "retry_policy_retries_total",
    "retry_policy_budget_spent_total",
    "retry_policy_retry_after_added_total",
    "retry_policy_budget_contention_total",
];

/// jwt_auth guarding `/secure` (and `/admin`, with a scope); rate_limit allowing 3 requests to
/// `/limited`; a breaker `flaky` on `/flaky` that opens at 50% failures of 4 calls.
fn envoy_config(layout: Layout, upstream: &Upstream, key: &Key, admin_port: u16) -> String {
    let jwt = json!({
        "providers": { "idp": {
            "issuer": "https://issuer.example",
            "audiences": ["api"],
            "algorithms": ["ES256"],
            "local_jwks": { "inline": jwks(&[key]) },
        } },
        "rules": [
            { "match": { "prefix": "/secure" }, "requires": { "provider": "idp" } },
            { "match": { "prefix": "/admin" },
              "requires": { "provider": "idp", "scopes": ["admin"] } },
            { "match": { "prefix": "/" } },
        ],
    });
    let rate_limit = json!({ "rules": [{
        "name": "limited", "match": { "prefix": "/limited" }, "key": [{ "rule": {} }],
        "limit": { "requests": 3, "per": "1h" },
    }] });
    let circuit_breaker = json!({ "breakers": [{
        "name": "flaky", "match": { "prefix": "/flaky" }, "minimum_calls": 4,
        "failure_rate_threshold": 50, "open_duration": "60s", "half_open_calls": 2,
    }] });
    TestEnvoyConfig::new(upstream.port())
        .layout(layout)
        .admin_port(admin_port)
        .filter("jwt_auth", &jwt.to_string())
        .filter("rate_limit", &rate_limit.to_string())
        .filter("circuit_breaker", &circuit_breaker.to_string())
        .render()
}

/// The upstream's answers in the order [`traffic`] reaches it: the breaker's four calls (two
/// good, two failed), then 200 for everything else.
fn upstream_script() -> Vec<Reply> {
    vec![
        Reply::Echo,
        Reply::Echo,
        Reply::Status(503),
        Reply::Status(503),
        Reply::Echo,
    ]
}

/// The known sequence, one request after the other; checks each answer on the way.
fn traffic(port: u16, key: &Key) {
    let statuses = |path: &str, token: Option<&str>, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let mut request = client::get(path);
                if let Some(token) = token {
                    request = request.header("authorization", &format!("Bearer {token}"));
                }
                request.send(port).status
            })
            .collect()
    };
    // circuit_breaker: 2 successes, 2 failures (50% of 4: it opens), then 3 rejected.
    assert_eq!(
        statuses("/flaky", None, 7),
        [200, 200, 503, 503, 503, 503, 503]
    );
    // rate_limit: 3 allowed, 2 limited.
    assert_eq!(statuses("/limited", None, 5), [200, 200, 200, 429, 429]);
    // jwt_auth: 3 allowed, 2 missing, 1 invalid token, 1 insufficient scope.
    let claims = json!({ "iss": "https://issuer.example", "aud": "api", "sub": "alice",
                         "scope": "read", "exp": now_secs() + 300 });
    let token = key.sign(&claims);
    let stranger = Key::generate(Alg::ES256, "stranger").sign(&claims);
    assert_eq!(statuses("/secure", Some(&token), 3), [200, 200, 200]);
    assert_eq!(statuses("/secure", None, 2), [401, 401]);
    assert_eq!(statuses("/secure", Some(&stranger), 1), [401]);
    assert_eq!(statuses("/admin", Some(&token), 1), [403]);
}

/// The same numbers for both layouts, keyed `<layout>/<rest>` (`<layout>` for an empty rest).
fn for_both(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    ["gateway", "separate"]
        .into_iter()
        .flat_map(|layout| {
            pairs.iter().map(move |(rest, v)| {
                let key = if rest.is_empty() {
                    layout.to_owned()
                } else {
                    format!("{layout}/{rest}")
                };
                (key, *v)
            })
        })
        .collect()
}

/// The series that are not 0: a counter never touched may be absent or 0, which PromQL reads
/// the same.
fn nonzero(series: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    series.into_iter().filter(|(_, v)| *v != 0.0).collect()
}

#[test]
fn promql_over_the_filters_labelled_series_gives_exact_numbers_in_both_layouts() {
    let key = Key::generate(Alg::ES256, "k");
    let layouts = [
        (Layout::SeparateFilters, "separate"),
        (Layout::GatewayModule, "gateway"),
    ];
    let admin_ports: Vec<u16> = layouts.iter().map(|_| filter_tests::free_port()).collect();
    // Started first: it begins scraping some 5 s after it starts (it takes new targets in
    // every 5 s), which the Envoys' start and the traffic overlap; that wait is most of the
    // test's time.
    let targets: Vec<Target> = layouts
        .iter()
        .zip(&admin_ports)
        .map(|((_, name), port)| Target::new(*port, &[("layout", name)]))
        .collect();
    let prometheus = PrometheusServer::start(&targets);
    let upstreams: Vec<Upstream> = layouts
        .iter()
        .map(|_| Upstream::start(upstream_script()))
        .collect();
    let envoys: Vec<Envoy> = layouts
        .iter()
        .zip(&upstreams)
        .zip(&admin_ports)
        .map(|(((layout, _), upstream), port)| {
            Envoy::start(&envoy_config(*layout, upstream, &key, *port))
        })
        .collect();
    for envoy in &envoys {
        traffic(envoy.port("gateway"), &key);
    }
    // Each worker hands its counts to Envoy on its own tick, which a loaded machine delays:
    // Prometheus is asked only once Envoy itself holds the last counts of every filter.
    for envoy in &envoys {
        for (family, labels, value) in [
            (
                "circuit_breaker_calls_total",
                &[("breaker", "flaky"), ("outcome", "failure")][..],
                2,
            ),
            (
                "circuit_breaker_calls_total",
                &[("breaker", "flaky"), ("outcome", "success")],
                2,
            ),
            (
                "rate_limit_requests_total",
                &[("rule", "limited"), ("outcome", "limited")],
                2,
            ),
            ("jwt_auth_requests_total", &[("outcome", "allowed")], 15),
        ] {
            let name = metric(family, labels);
            assert_eq!(envoy.stat_eventually(&name, value), Some(value), "{name}");
        }
    }
    let ended = SystemTime::now();

    let queries = [
        // Envoy's own labelled metrics: the scrape and the queries work, whatever our names.
        r#"sum by (layout) (envoy_cluster_upstream_rq_total{envoy_cluster_name="upstream"})"#,
        r#"sum by (layout, envoy_response_code) (envoy_cluster_upstream_rq{envoy_cluster_name="upstream"})"#,
        r#"sum by (layout, envoy_response_code_class) (envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="gateway"})"#,
        // The filters'.
        r#"sum by (layout, outcome) (circuit_breaker_calls_total{breaker="flaky"})"#,
        r#"sum by (layout) (circuit_breaker_rejected_total{breaker="flaky"})"#,
        r#"max by (layout) (circuit_breaker_state{breaker="flaky"})"#,
        r#"sum by (layout, state) (circuit_breaker_transitions_total{breaker="flaky"})"#,
        r#"sum by (layout, rule, outcome) (rate_limit_requests_total)"#,
        r#"sum by (layout, outcome) (jwt_auth_requests_total)"#,
    ];
    let answers = prometheus.settled(ended, &queries);
    let by = |query: usize, labels: &[&str]| nonzero(keyed(&answers[query], labels));

    assert_eq!(
        by(0, &["layout"]),
        for_both(&[("", 10.0)]),
        "upstream requests: the breaker's 4, rate_limit's 3 and jwt_auth's 3"
    );
    assert_eq!(
        by(1, &["layout", "envoy_response_code"]),
        for_both(&[("200", 8.0), ("503", 2.0)])
    );
    assert_eq!(
        by(2, &["layout", "envoy_response_code_class"]),
        for_both(&[("2", 8.0), ("4", 6.0), ("5", 5.0)]),
        "downstream: 429 x2, 401 x3, 403; 503 x2 from the upstream and x3 from the breaker"
    );

    assert_eq!(
        by(3, &["layout", "outcome"]),
        for_both(&[("failure", 2.0), ("success", 2.0)])
    );
    assert_eq!(by(4, &["layout"]), for_both(&[("", 3.0)]));
    assert_eq!(by(5, &["layout"]), for_both(&[("", 1.0)]), "1: open");
    assert_eq!(by(6, &["layout", "state"]), for_both(&[("open", 1.0)]));
    assert_eq!(
        by(7, &["layout", "rule", "outcome"]),
        for_both(&[("limited/allowed", 3.0), ("limited/limited", 2.0)])
    );
    assert_eq!(
        by(8, &["layout", "outcome"]),
        for_both(&[
            // /flaky x7, /limited x5 (no requirement), /secure x3 with a good token
            ("allowed", 15.0),
            ("insufficient_scope", 1.0),
            ("invalid_token", 1.0),
            ("missing", 2.0),
        ])
    );

    // Labelled series, not names that carry the labels: each family is one metric name
    // whose series carry `breaker` and `outcome`, and no metric name holds a label's value.
    let series = prometheus.query(r#"circuit_breaker_calls_total{outcome="failure"}"#);
    assert_eq!(series.len(), 2, "{series:?}");
    for (labels, _) in &series {
        assert_eq!(
            labels.get("__name__").map(String::as_str),
            Some("circuit_breaker_calls_total")
        );
        assert_eq!(
            labels.get("breaker").map(String::as_str),
            Some("flaky"),
            "{labels:?}"
        );
        assert_eq!(
            labels.get("job").map(String::as_str),
            Some("envoy"),
            "{labels:?}"
        );
    }
    let names = prometheus.query_by(
        r#"count by (__name__) ({__name__=~"(jwt_auth|rate_limit|circuit_breaker|retry_policy)_.*"})"#,
        &["__name__"],
    );
    let unknown: Vec<&String> = names
        .keys()
        .filter(|n| !FAMILIES.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "names that are no family (a label flattened into one?): {unknown:?}"
    );
}
