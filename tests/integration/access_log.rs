//! Each filter's decision in a real Envoy's access log (`docs/access-log.md`): every refused
//! request's line says which filter refused it and why, a request let through plainly says
//! nothing, and no token ever reaches the log, not even from a query string.

use filter_tests::access_log::{self, Entry, FILTERS, FORMAT};
use filter_tests::client;
use filter_tests::envoy::Envoy;
use filter_tests::envoy_config::{TestEnvoyConfig, example, examples};
use filter_tests::tokens::{Alg, Key, demo_claims, demo_key, jwks, now_secs};
use filter_tests::upstream::{Reply, Upstream};
use serde_json::{Value, json};

fn claims(sub: &str) -> Value {
    json!({ "iss": "https://issuer.example", "aud": "api", "sub": sub,
            "iat": now_secs(), "exp": now_secs() + 300 })
}

/// The entry's decisions other than `-`, as `(filter, value)`.
fn recorded(entry: &Entry) -> Vec<(String, String)> {
    entry
        .recorded()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Fails if any part of a token (its header, payload or signature) appears in `log`.
fn assert_no_token(log: &str, tokens: &[&str]) {
    for token in tokens {
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(
                !log.contains(part),
                "a token segment ({part}) reached Envoy's output:\n{log}"
            );
        }
    }
}

both_modules! {
    /// The four filters in front of an upstream that fails `/flaky` twice then answers 200:
    /// refusals of each kind, withheld retries and plain passes, each read back from its own
    /// access log line.
    fn each_refused_request_s_line_names_the_filter_and_the_reason(layout) {
        let key = Key::generate(Alg::ES256, "k1");
        let forger = Key::generate(Alg::ES256, "k1");
        let unknown = Key::generate(Alg::ES256, "k9");
        let upstream =
            Upstream::start(vec![Reply::Status(503), Reply::Status(503), Reply::Status(200)]);
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port())
                .layout(layout)
                .access_log()
                .filter(
                    "jwt_auth",
                    &json!({
                        "providers": { "idp": {
                            "issuer": "https://issuer.example", "audiences": ["api"],
                            "algorithms": ["ES256"], "local_jwks": { "inline": jwks(&[&key]) },
                            "from_params": ["access_token"],
                            "claim_to_headers": [ { "claim": "sub", "header": "x-user-id" } ] } },
                        "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
                    })
                    .to_string(),
                )
                .filter(
                    "rate_limit",
                    r#"{"rules": [{"name": "per-user", "match": {"prefix": "/orders/"},
                        "key": [{"header": "x-user-id"}], "limit": {"requests": 2, "per": "1m"}}]}"#,
                )
                .filter(
                    "circuit_breaker",
                    r#"{"breakers": [{"name": "flaky", "match": {"prefix": "/flaky/"},
                        "minimum_calls": 2, "failure_rate_threshold": 50, "open_duration": "60s"}]}"#,
                )
                .filter(
                    "retry_policy",
                    r#"{"rules": [{"match": {"prefix": "/retry/"}, "retry_on": ["5xx"], "num_retries": 2}],
                        "budget": {"retry_ratio": 0, "min_retries_per_second": 0}}"#,
                )
                .render(),
        );
        let port = envoy.port("gateway");
        let valid = |sub: &str| key.sign(&claims(sub));
        let mut expired_claims = claims("eve");
        expired_claims["exp"] = json!(now_secs() - 600);
        let expired = key.sign(&expired_claims);
        let forged = forger.sign(&claims("eve"));
        let unknown_kid = unknown.sign(&claims("eve"));
        let (carol, bob, dave) = (valid("carol"), valid("bob"), valid("dave"));
        let (carol, bob, dave) = (carol.as_str(), bob.as_str(), dave.as_str());

        // (method, path, bearer token, token in the query, status, decisions recorded)
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case<'_>> = vec![
            // The breaker first: the upstream's two 503s open it.
            ("GET", "/flaky/1", Some(carol), None, 503, vec![]),
            ("GET", "/flaky/2", Some(carol), None, 503, vec![]),
            ("GET", "/flaky/3", Some(carol), None, 503, vec![("circuit_breaker", "open:flaky")]),
            ("GET", "/orders/none", None, None, 401, vec![("jwt_auth", "missing")]),
            ("GET", "/orders/expired", Some(&expired), None, 401,
                vec![("jwt_auth", "invalid_token:expired")]),
            ("GET", "/orders/forged", Some(&forged), None, 401,
                vec![("jwt_auth", "invalid_token:signature")]),
            // A token in the query string: the line has the path without it.
            ("GET", "/orders/query", None, Some(&unknown_kid), 401,
                vec![("jwt_auth", "invalid_token:unknown_key")]),
            ("GET", "/orders/bob-1", Some(bob), None, 200, vec![]),
            ("GET", "/orders/bob-2", Some(bob), None, 200, vec![]),
            ("GET", "/orders/bob-3", Some(bob), None, 429, vec![("rate_limit", "limited:per-user")]),
            ("GET", "/retry/get", Some(dave), None, 200, vec![("retry_policy", "budget_exhausted")]),
            ("POST", "/retry/post", Some(dave), None, 200, vec![("retry_policy", "not_idempotent")]),
            ("GET", "/other", Some(dave), None, 200, vec![]),
        ];
        for (method, path, token, in_query, status, _) in &cases {
            let target = match in_query {
                Some(token) => format!("{path}?access_token={token}"),
                None => (*path).to_owned(),
            };
            let mut request = client::Request::new(method, &target);
            if let Some(token) = token {
                request = request.header("authorization", &format!("Bearer {token}"));
            }
            let response = request.send(port);
            assert_eq!(response.status, *status, "{method} {path}: {}", response.text());
        }

        let entries = access_log::wait_for(&envoy, cases.len());
        for (method, path, _, _, status, decisions) in &cases {
            let entry = access_log::find(&entries, method, path);
            assert_eq!(entry.status, *status, "{}", entry.line);
            let expected: Vec<(String, String)> = decisions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(recorded(entry), expected, "{}", entry.line);
            // A filter's own reply carries no details (the SDK sends none); the upstream's
            // says so.
            let answered_here = decisions.iter().any(|(filter, _)| *filter != "retry_policy");
            let details = if answered_here { "" } else { "via_upstream" };
            assert_eq!(entry.details, details, "{}", entry.line);
        }
        let log = envoy.log();
        assert!(!log.contains("access_token"), "the query string reached the log:\n{log}");
        assert_no_token(&log, &[carol, bob, dave, &expired, &forged, &unknown_kid]);
    }
}

both_modules! {
    /// A later filter's refusal keeps what an earlier one recorded: rate_limit's shadow refusal
    /// and the breaker's refusal share one line, in both layouts.
    fn an_earlier_filter_s_decision_survives_a_later_refusal(layout) {
        let upstream = Upstream::start(vec![Reply::Status(200)]);
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port())
                .layout(layout)
                .access_log()
                .filter(
                    "rate_limit",
                    r#"{"shadow": true, "rules": [{"name": "per-ip", "key": [{"client_ip": {}}],
                        "limit": {"requests": 1, "per": "1m"}}]}"#,
                )
                .filter(
                    "circuit_breaker",
                    r#"{"breakers": [{"name": "down", "match": {"prefix": "/down/"},
                        "mode": "forced_open"}]}"#,
                )
                .render(),
        );
        let port = envoy.port("gateway");
        for path in ["/down/1", "/down/2"] {
            assert_eq!(client::get(path).send(port).status, 503);
        }
        let entries = access_log::wait_for(&envoy, 2);
        let first = access_log::find(&entries, "GET", "/down/1");
        assert_eq!(first.recorded(), [("circuit_breaker", "forced_open:down")], "{}", first.line);
        let second = access_log::find(&entries, "GET", "/down/2");
        assert_eq!(
            second.recorded(),
            [("circuit_breaker", "forced_open:down"), ("rate_limit", "shadow_limited:per-ip")],
            "{}",
            second.line
        );
    }
}

both_modules! {
    /// A request held for keys that never come is answered later, from a tick, not from its
    /// own callback: its line still says why. (The key server's fetch, started with the
    /// plugin, is still waiting out its timeout when the request arrives.)
    fn a_request_held_for_keys_says_unavailable(layout) {
        let key = Key::generate(Alg::ES256, "k1");
        let key_server = Upstream::start(vec![Reply::Hang]);
        let upstream = Upstream::echo();
        let config = json!({
            "providers": { "idp": {
                "issuer": "https://issuer.example", "audiences": ["api"], "algorithms": ["ES256"],
                "remote_jwks": { "cluster": "jwks", "authority": "keys.example",
                                 "path": "/.well-known/jwks.json", "timeout": "2s" } } },
            "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
        });
        let envoy = Envoy::start(
            &TestEnvoyConfig::new(upstream.port())
                .layout(layout)
                .access_log()
                .cluster("jwks", key_server.port())
                .filter("jwt_auth", &config.to_string())
                .render(),
        );
        let token = key.sign(&claims("alice"));
        let started = std::time::Instant::now();
        let r = client::get("/held")
            .header("authorization", &format!("Bearer {token}"))
            .timeout(std::time::Duration::from_secs(15))
            .send(envoy.port("gateway"));
        let held = started.elapsed();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(held >= std::time::Duration::from_millis(500), "answered at once ({held:?})");
        let entries = access_log::wait_for(&envoy, 1);
        let line = access_log::find(&entries, "GET", "/held");
        assert_eq!(line.recorded(), [("jwt_auth", "unavailable")], "{}", line.line);
        assert_no_token(&envoy.log(), &[&token]);
        assert_eq!(upstream.count(), 0);
    }
}

/// Every example prints the same access log line, in [`FORMAT`]: one format serves every
/// layout, and the tests read what users will read.
#[test]
fn every_example_prints_the_decisions_in_the_one_format() {
    for file in examples() {
        let text = std::fs::read_to_string(&file).expect("read the example");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let mut formats = Vec::new();
        collect_access_log_formats(&doc, &mut formats);
        assert!(!formats.is_empty(), "{} has no access log", file.display());
        for format in formats {
            assert_eq!(format, FORMAT, "{}", file.display());
        }
        for filter in FILTERS {
            assert!(text.contains(&format!("wasm.{filter}.decision")));
        }
    }
}

/// The ready-to-copy blocks of `docs/access-log.md` (Envoy's and Istio's) print [`FORMAT`] too.
#[test]
fn the_documented_blocks_print_the_one_format() {
    let path = filter_tests::repo_root().join("docs/access-log.md");
    let text = std::fs::read_to_string(&path).expect("read docs/access-log.md");
    let mut formats = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line) {
            (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
            (Some(_), "```") => {
                let yaml = block.take().unwrap_or_default();
                let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
                collect_strings_under(&value, &["inline_string", "text"], &mut formats);
            }
            (Some(yaml), l) => {
                yaml.push_str(l);
                yaml.push('\n');
            }
            (None, _) => {}
        }
    }
    assert_eq!(
        formats.len(),
        2,
        "the Envoy and the Istio blocks: {formats:?}"
    );
    for format in formats {
        assert_eq!(format, FORMAT);
    }
}

/// Every string under a key named one of `keys`.
fn collect_strings_under(value: &serde_yaml_ng::Value, keys: &[&str], into: &mut Vec<String>) {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Mapping(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    (Some(k), Some(v)) if keys.contains(&k) => into.push(v.to_owned()),
                    _ => collect_strings_under(v, keys, into),
                }
            }
        }
        Y::Sequence(items) => items
            .iter()
            .for_each(|v| collect_strings_under(v, keys, into)),
        _ => {}
    }
}

/// Every `access_log` entry's text format in a configuration.
fn collect_access_log_formats(value: &serde_yaml_ng::Value, into: &mut Vec<String>) {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("access_log") {
                    for logger in v.as_sequence().into_iter().flatten() {
                        let format = &logger["typed_config"]["log_format"]["text_format_source"]["inline_string"];
                        into.push(format.as_str().unwrap_or("(no text format)").to_owned());
                    }
                } else {
                    collect_access_log_formats(v, into);
                }
            }
        }
        Y::Sequence(items) => {
            for v in items {
                collect_access_log_formats(v, into);
            }
        }
        _ => {}
    }
}

/// What one example is sent, and the line that must come of it.
struct Refusal {
    file: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
    /// Sends the request again until the answer is this one (at most 200 times).
    until: fn(&client::Response) -> bool,
    /// The filter that decided, and what its line says (`None`: `-`).
    filter: &'static str,
    decision: Option<&'static str>,
}

/// Each example, run as shipped: a request it refuses (or, for the retry policy, one it gives
/// no retries) has its reason in the example's own access log, on Envoy's stdout, and the
/// other filters' fields say nothing.
#[test]
fn every_example_s_access_log_says_why_it_refused() {
    let refusals = [
        Refusal {
            file: "circuit_breaker.yaml",
            method: "GET",
            path: "/orders/1",
            token: None,
            until: |r| r.header("x-circuit-breaker").is_some(),
            filter: "circuit_breaker",
            decision: Some("open:orders"),
        },
        Refusal {
            file: "gateway.yaml",
            method: "GET",
            path: "/orders",
            token: None,
            until: |r| r.status == 401,
            filter: "jwt_auth",
            decision: Some("missing"),
        },
        Refusal {
            file: "jwt_auth.yaml",
            method: "GET",
            path: "/admin/users",
            token: Some(demo_key().sign(&demo_claims("alice", "read"))),
            until: |r| r.status == 403,
            filter: "jwt_auth",
            decision: Some("insufficient_scope"),
        },
        // Nothing in the minimal example refuses: its line says so.
        Refusal {
            file: "minimal.yaml",
            method: "GET",
            path: "/public/health",
            token: None,
            until: |r| r.status == 200,
            filter: "rate_limit",
            decision: None,
        },
        Refusal {
            file: "rate_limit.yaml",
            method: "GET",
            path: "/public/health",
            token: None,
            until: |r| r.status == 429,
            filter: "rate_limit",
            decision: Some("limited:per-ip"),
        },
        Refusal {
            file: "rate_limit_global.yaml",
            method: "GET",
            path: "/public/health",
            token: None,
            until: |r| r.status == 429,
            filter: "rate_limit",
            decision: Some("limited:per-ip"),
        },
        Refusal {
            file: "retry_policy.yaml",
            method: "POST",
            path: "/orders",
            token: None,
            until: |r| r.status == 503,
            filter: "retry_policy",
            decision: Some("not_idempotent"),
        },
    ];
    let shipped: Vec<String> = examples()
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
        .collect();
    let covered: Vec<String> = refusals.iter().map(|r| r.file.to_owned()).collect();
    assert_eq!(covered, shipped, "every example needs a request here");
    for r in &refusals {
        let envoy = Envoy::start(&example(r.file));
        let port = envoy.port("gateway");
        let mut sent = 0;
        let last = loop {
            let mut request = client::Request::new(r.method, r.path);
            if let Some(token) = &r.token {
                request = request.header("authorization", &format!("Bearer {token}"));
            }
            let response = request.send(port);
            sent += 1;
            if (r.until)(&response) {
                break response;
            }
            assert!(
                sent < 200,
                "{}: never got the refusal: {}",
                r.file,
                response.text()
            );
        };
        // One line per request, and only the refusal's has anything to say.
        let entries = access_log::wait_for(&envoy, sent);
        assert_eq!(entries.len(), sent, "{}", r.file);
        for e in &entries {
            assert_eq!(
                (e.method.as_str(), e.path.as_str()),
                (r.method, r.path),
                "{}",
                e.line
            );
        }
        let decided: Vec<&Entry> = entries
            .iter()
            .filter(|e| !e.recorded().is_empty())
            .collect();
        match r.decision {
            Some(decision) => {
                let [line] = decided.as_slice() else {
                    panic!(
                        "{}: expected one line with a decision: {entries:#?}",
                        r.file
                    )
                };
                assert_eq!(line.recorded(), [(r.filter, decision)], "{}", line.line);
                assert_eq!(line.status, last.status, "{}", line.line);
            }
            None => assert!(decided.is_empty(), "{}: {decided:#?}", r.file),
        }
        if let Some(token) = &r.token {
            assert_no_token(&envoy.log(), &[token]);
        }
    }
}
