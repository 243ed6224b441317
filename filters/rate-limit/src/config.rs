//! The `rate_limit` configuration, parsed strictly and compiled once into [`Compiled`].

use crate::gcra::{Limit, LimitError};
use crate::key::KeyPart;
use crate::table::Table;
use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, check_name, null_default, quoted,
};
use filter_core::matcher::{RouteMatchConfig, RouteMatcher};
use serde::Deserialize;

/// Default `max_keys`: distinct keys each rule tracks at once.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// The most `max_keys` may be (about 40 bytes of Envoy memory per key: 400 MB).
pub const MAX_MAX_KEYS: u64 = 10_000_000;
/// Default `ipv6_prefix` of `client_ip`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The whole configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Every rule whose `match` fits applies.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<RuleConfig>,
    /// Proxies in front of Envoy that append to `x-forwarded-for`. Default 0: the peer address.
    #[serde(default, deserialize_with = "null_default")]
    pub trusted_proxies: u32,
    /// Which header fields describe the limits: `draft` (default), `legacy` or `none`.
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Dialect,
    /// Count and log what would be refused, refuse nothing. Default false.
    #[serde(default, deserialize_with = "null_default")]
    pub shadow: bool,
    /// Distinct keys each rule tracks at once. Default 100000.
    pub max_keys: Option<u64>,
    /// The status of a refusal. Default 429.
    pub status: Option<u16>,
    /// What happens when the shared store stays contended: `allow` (default) or `deny`.
    #[serde(default, deserialize_with = "null_default")]
    pub on_contention: OnContention,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in metrics, response headers and logs.
    pub name: String,
    /// Which requests it counts. Default: all.
    #[serde(rename = "match", default, deserialize_with = "null_default")]
    pub route: RouteMatchConfig,
    /// What a bucket is per: parts combined.
    pub key: Vec<KeyPartConfig>,
    /// The limit of each bucket.
    pub limit: LimitConfig,
}

/// One part of a key as written: an object with one member naming its kind,
/// `{"client_ip": {}}`, `{"header": "x-user-id"}`, ...
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPartConfig {
    /// The client's address.
    ClientIp(ClientIpConfig),
    /// A request header.
    Header(String),
    /// The path without its query.
    Path(Empty),
    /// The method.
    Method(Empty),
    /// One bucket for the whole rule.
    Rule(Empty),
}

/// `{}`: a key part without options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Options of `client_ip`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Leading bits of an IPv6 address that count (0 to 128). Default 64.
    pub ipv6_prefix: Option<u8>,
}

/// A limit as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per `per` (sustained rate). At least 1.
    pub requests: u32,
    /// The window, e.g. `"1s"`, `"1m"`.
    pub per: ConfigDuration,
    /// Requests that may arrive at once. Default: `requests`.
    pub burst: Option<u32>,
}

/// Response header fields describing the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (delta seconds).
    Legacy,
    /// Neither.
    None,
}

/// The outcome when shared data stays contended after every retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnContention {
    /// Let the request through uncounted.
    #[default]
    Allow,
    /// Answer 503 with `Retry-After: 1`.
    Deny,
}

/// A rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// Which requests it counts.
    pub matcher: RouteMatcher,
    /// What a bucket is per.
    pub key: Vec<KeyPart>,
    /// The limit.
    pub limit: Limit,
    /// Where its buckets live.
    pub table: Table,
}

/// The configuration, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Every rule, in order.
    pub rules: Vec<Rule>,
    /// See [`RateLimitConfig::trusted_proxies`].
    pub trusted_proxies: u32,
    /// See [`RateLimitConfig::headers`].
    pub dialect: Dialect,
    /// See [`RateLimitConfig::shadow`].
    pub shadow: bool,
    /// The status of a refusal.
    pub status: u16,
    /// See [`RateLimitConfig::on_contention`].
    pub on_contention: OnContention,
}

impl RateLimitConfig {
    /// Validates everything; an error names the field.
    pub fn compile(self) -> Result<Compiled, ConfigError> {
        let root = FieldPath::root();
        let max_keys = self.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(1..=MAX_MAX_KEYS).contains(&max_keys) {
            return Err(root
                .field("max_keys")
                .error(format!("must be from 1 to {MAX_MAX_KEYS}, got {max_keys}")));
        }
        let status = self.status.unwrap_or(429);
        if !(400..=599).contains(&status) {
            return Err(root
                .field("status")
                .error(format!("must be a 4xx or 5xx status, got {status}")));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            let at = root.field("rules").index(i);
            let compiled = compile_rule(rule, max_keys, &at)?;
            if rules.iter().any(|r| r.name == compiled.name) {
                return Err(at.field("name").error(format!(
                    "{} names an earlier rule too",
                    quoted(&compiled.name)
                )));
            }
            rules.push(compiled);
        }
        Ok(Compiled {
            rules,
            trusted_proxies: self.trusted_proxies,
            dialect: self.headers,
            shadow: self.shadow,
            status,
            on_contention: self.on_contention,
        })
    }
}

fn compile_rule(rule: RuleConfig, max_keys: u64, at: &FieldPath) -> Result<Rule, ConfigError> {
    check_name(&rule.name, &at.field("name"))?;
    let matcher = RouteMatcher::compile(&rule.route, &at.field("match"))?;
    if rule.key.is_empty() {
        return Err(at
            .field("key")
            .error("must list at least one part; {\"rule\": {}} is one bucket for everyone"));
    }
    let mut key = Vec::with_capacity(rule.key.len());
    for (i, part) in rule.key.into_iter().enumerate() {
        key.push(match part {
            KeyPartConfig::ClientIp(options) => {
                let ipv6_prefix = options.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
                if ipv6_prefix > 128 {
                    return Err(at
                        .field("key")
                        .index(i)
                        .field("client_ip")
                        .field("ipv6_prefix")
                        .error(format!("must be from 0 to 128, got {ipv6_prefix}")));
                }
                KeyPart::ClientIp { ipv6_prefix }
            }
            KeyPartConfig::Header(name) => {
                let name = name.to_ascii_lowercase();
                if !filter_core::matcher::is_token(name.trim_start_matches(':')) {
                    return Err(at
                        .field("key")
                        .index(i)
                        .field("header")
                        .error(format!("{} is not a header name", quoted(&name))));
                }
                KeyPart::Header(name)
            }
            KeyPartConfig::Path(Empty {}) => KeyPart::Path,
            KeyPartConfig::Method(Empty {}) => KeyPart::Method,
            KeyPartConfig::Rule(Empty {}) => KeyPart::Rule,
        });
    }
    let limit_at = at.field("limit");
    let burst = rule.limit.burst.unwrap_or(rule.limit.requests);
    let limit =
        Limit::new(rule.limit.requests, rule.limit.per.get(), burst).map_err(|e| match e {
            LimitError::NoRequests => limit_at.field("requests").error(
                "must be at least 1 (to refuse every request, use a route without upstream)",
            ),
            LimitError::NoWindow => limit_at.field("per").error("must be longer than zero"),
            LimitError::NoBurst => limit_at.field("burst").error("must be at least 1"),
            LimitError::TooFast => limit_at
                .field("per")
                .error("is shorter than one nanosecond per request"),
        })?;
    Ok(Rule {
        table: Table::new(&rule.name, max_keys),
        name: rule.name,
        matcher,
        key,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::parse;
    use std::time::Duration;

    fn compile(json: &str) -> Result<Compiled, ConfigError> {
        parse::<RateLimitConfig>(json.as_bytes())?.compile()
    }

    fn rule(limit: &str) -> String {
        format!(r#"{{"rules": [{{"name": "r", "key": [{{"rule": {{}}}}], "limit": {limit}}}]}}"#)
    }

    #[test]
    fn the_issue_example_compiles_with_its_defaults() {
        let c = compile(
            r#"{
              "rules": [
                { "name": "per-user",
                  "match": { "prefix": "/api", "methods": ["GET", "POST"] },
                  "key": [ { "header": "x-user-id" } ],
                  "limit": { "requests": 100, "per": "1m", "burst": 20 } },
                { "name": "per-ip",
                  "match": { "prefix": "/" },
                  "key": [ { "client_ip": {} } ],
                  "limit": { "requests": 10, "per": "1s" } }
              ],
              "trusted_proxies": 0, "headers": "draft", "shadow": false,
              "max_keys": 100000, "status": 429
            }"#,
        )
        .unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].limit.burst(), 20);
        assert_eq!(c.rules[1].limit.burst(), 10);
        assert_eq!(c.rules[1].limit.per(), Duration::from_secs(1));
        assert_eq!(c.rules[1].key, [KeyPart::ClientIp { ipv6_prefix: 64 }]);
        assert_eq!(c.on_contention, OnContention::Allow);
        assert_eq!(c.dialect, Dialect::Draft);
        let empty = compile("{}").unwrap();
        assert!(empty.rules.is_empty());
        assert_eq!(empty.status, 429);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (rule(r#"{"requests": 0, "per": "1s"}"#), "rules[0].limit.requests"),
            (rule(r#"{"requests": -1, "per": "1s"}"#), "rules[0].limit.requests"),
            (rule(r#"{"requests": 1, "per": "-1s"}"#), "rules[0].limit.per"),
            (rule(r#"{"requests": 1, "per": "0s"}"#), "rules[0].limit.per"),
            (rule(r#"{"requests": 1}"#), "rules[0].limit"),
            (rule(r#"{"requests": 1, "per": "1s", "burst": 0}"#), "rules[0].limit.burst"),
            (rule(r#"{"requests": 10, "per": "5ns"}"#), "rules[0].limit.per"),
            (
                r#"{"rules": [{"name": "r", "key": [{"cookie": "x"}], "limit": {"requests": 1, "per": "1s"}}]}"#.to_owned(),
                "rules[0].key[0]",
            ),
            (
                r#"{"rules": [{"name": "r", "key": [], "limit": {"requests": 1, "per": "1s"}}]}"#.to_owned(),
                "rules[0].key",
            ),
            (
                r#"{"rules": [{"name": "a b", "key": [{"rule": {}}], "limit": {"requests": 1, "per": "1s"}}]}"#.to_owned(),
                "rules[0].name",
            ),
            (
                r#"{"rules": [{"name": "r", "key": [{"client_ip": {"ipv6_prefix": 129}}], "limit": {"requests": 1, "per": "1s"}}]}"#.to_owned(),
                "rules[0].key[0].client_ip.ipv6_prefix",
            ),
            (r#"{"status": 200}"#.to_owned(), "status"),
            (r#"{"max_keys": 0}"#.to_owned(), "max_keys"),
            (r#"{"headers": "both"}"#.to_owned(), "headers"),
            (r#"{"on_contention": "maybe"}"#.to_owned(), "on_contention"),
            (r#"{"surprise": 1}"#.to_owned(), "surprise"),
        ];
        for (json, path) in cases {
            let err = compile(&json).unwrap_err();
            assert_eq!(err.path(), path, "{json}: {err}");
        }
        let twice = r#"{"rules": [
            {"name": "r", "key": [{"rule": {}}], "limit": {"requests": 1, "per": "1s"}},
            {"name": "r", "key": [{"rule": {}}], "limit": {"requests": 1, "per": "1s"}}]}"#;
        assert_eq!(compile(twice).unwrap_err().path(), "rules[1].name");
    }

    #[test]
    fn messages_name_the_field_and_the_reason() {
        let error = |json: &str| compile(json).unwrap_err().to_string();
        let with_key = |key: &str| {
            error(&format!(
                r#"{{"rules": [{{"name": "r", "key": [{key}], "limit": {{"requests": 1, "per": "1s"}}}}]}}"#
            ))
        };
        assert_eq!(
            with_key(r#"{"cookie": "x"}"#),
            "rules[0].key[0]: unknown variant `cookie`, expected one of `client_ip`, `header`, `path`, `method`, `rule`"
        );
        // serde_json refuses a second member or none where one names the kind; the position
        // is what it gives.
        assert_eq!(
            with_key(r#"{"header": "x", "path": {}}"#),
            "rules[0].key[0]: invalid JSON: expected value at line 1 column 47"
        );
        assert_eq!(
            with_key("{}"),
            "rules[0].key[0]: invalid JSON: expected value at line 1 column 35"
        );
        assert_eq!(
            with_key(r#"{"client_ip": {"ipv6": 64}}"#),
            "rules[0].key[0].client_ip.ipv6: unknown field `ipv6`, expected `ipv6_prefix`"
        );
        assert_eq!(
            with_key(r#"{"path": {"x": 1}}"#),
            "rules[0].key[0].path.x: unknown field `x`, there are no fields"
        );
        assert_eq!(
            with_key(r#"{"header": 1}"#),
            "rules[0].key[0].header: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            error(&rule(r#"{"requests": 1.5, "per": "1s"}"#)),
            "rules[0].limit.requests: invalid type: floating point `1.5`, expected u32"
        );
        assert_eq!(
            error(&rule(r#"{"requests": 1, "per": "1s", "requests": 2}"#)),
            "rules[0].limit.requests: appears twice; each member may appear once"
        );
        assert_eq!(
            error(&rule(r#"{"requests": 1, "per": "1 s"}"#)),
            "rules[0].limit.per: invalid duration \"1 s\": unknown unit (use ns, us, ms, s, m or h)"
        );
        assert_eq!(
            error(r#"{"headers": "both"}"#),
            "headers: unknown variant `both`, expected one of `draft`, `legacy`, `none`"
        );
        assert_eq!(
            error(r#"{"status": 1e3}"#),
            "status: invalid type: floating point `1000.0`, expected u16"
        );
    }

    #[test]
    fn null_means_the_default() {
        let c = compile(
            r#"{"rules": null, "trusted_proxies": null, "headers": null, "shadow": null,
                "max_keys": null, "status": null, "on_contention": null}"#,
        )
        .unwrap();
        assert!(c.rules.is_empty());
        assert_eq!(
            (c.trusted_proxies, c.dialect, c.shadow),
            (0, Dialect::Draft, false)
        );
        assert_eq!((c.status, c.on_contention), (429, OnContention::Allow));
        let c = compile(
            r#"{"rules": [{"name": "r", "match": null, "key": [{"client_ip": {"ipv6_prefix": null}}],
                "limit": {"requests": 1, "per": "1s", "burst": null}}]}"#,
        )
        .unwrap();
        assert_eq!(c.rules[0].key, [KeyPart::ClientIp { ipv6_prefix: 64 }]);
        assert_eq!(c.rules[0].limit.burst(), 1);
    }

    proptest::proptest! {
        /// No configuration text makes the parser or the compiler panic.
        #[test]
        fn hostile_config_never_panics(text in ".{0,200}") {
            if let Ok(c) = parse::<RateLimitConfig>(text.as_bytes()) {
                let _ = c.compile();
            }
        }

        /// Well-formed JSON with hostile values in every field: refused with a field path, or
        /// compiled, never a panic.
        #[test]
        fn hostile_values_never_panic(
            name in ".{0,70}",
            requests in proptest::num::i64::ANY,
            per in "[0-9.]{0,25}(ns|us|ms|s|m|h|x)?",
            burst in proptest::num::i64::ANY,
            kind in proptest::sample::select(vec!["client_ip", "header", "path", "method", "rule", "cookie"]),
            option in proptest::num::i64::ANY,
            max_keys in proptest::num::i64::ANY,
            status in proptest::num::i64::ANY,
        ) {
            let part = match kind {
                "header" => serde_json::json!({ "header": name }),
                "client_ip" => serde_json::json!({ "client_ip": { "ipv6_prefix": option } }),
                other => serde_json::json!({ other: {} }),
            };
            let config = serde_json::json!({
                "rules": [ { "name": name, "key": [part],
                             "limit": { "requests": requests, "per": per, "burst": burst } } ],
                "max_keys": max_keys, "status": status, "trusted_proxies": option,
            });
            match compile(&config.to_string()) {
                Ok(c) => proptest::prop_assert_eq!(c.rules.len(), 1),
                Err(e) => proptest::prop_assert!(!e.path().is_empty(), "{}", e),
            }
        }
    }
}
