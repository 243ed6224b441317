//! The `rate_limit` configuration, parsed strictly and compiled once into [`Compiled`].

use crate::gcra::{Limit, LimitError};
use crate::key::KeyPart;
use crate::table::Table;
use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, FromJson, Members, check_name, quoted, tagged,
    unknown_variant, variant,
};
use filter_core::json::Json;
use filter_core::matcher::{RouteMatchConfig, RouteMatcher};

/// Default `max_keys`: distinct keys each rule tracks at once.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// The most `max_keys` may be (about 40 bytes of Envoy memory per key: 400 MB).
pub const MAX_MAX_KEYS: u64 = 10_000_000;
/// Default `ipv6_prefix` of `client_ip`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The whole configuration as written.
#[derive(Debug)]
pub struct RateLimitConfig {
    /// Every rule whose `match` fits applies.
    pub rules: Vec<RuleConfig>,
    /// Proxies in front of Envoy that append to `x-forwarded-for`. Default 0: the peer address.
    pub trusted_proxies: u32,
    /// Which header fields describe the limits: `draft` (default), `legacy` or `none`.
    pub headers: Dialect,
    /// Count and log what would be refused, refuse nothing. Default false.
    pub shadow: bool,
    /// Distinct keys each rule tracks at once. Default 100000.
    pub max_keys: Option<u64>,
    /// The status of a refusal. Default 429.
    pub status: Option<u16>,
    /// What happens when the shared store stays contended: `allow` (default) or `deny`.
    pub on_contention: OnContention,
}

/// One rule as written.
#[derive(Debug)]
pub struct RuleConfig {
    /// Names the rule in metrics, response headers and logs.
    pub name: String,
    /// Which requests it counts. Default: all.
    pub route: RouteMatchConfig,
    /// What a bucket is per: parts combined.
    pub key: Vec<KeyPartConfig>,
    /// The limit of each bucket.
    pub limit: LimitConfig,
}

/// One part of a key as written: `{"client_ip": {}}`, `{"header": "x-user-id"}`, ...
#[derive(Debug)]
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
#[derive(Debug)]
pub struct Empty {}

/// Options of `client_ip`.
#[derive(Debug)]
pub struct ClientIpConfig {
    /// Leading bits of an IPv6 address that count (0 to 128). Default 64.
    pub ipv6_prefix: Option<u8>,
}

/// A limit as written.
#[derive(Debug)]
pub struct LimitConfig {
    /// Requests per `per` (sustained rate). At least 1.
    pub requests: u32,
    /// The window, e.g. `"1s"`, `"1m"`.
    pub per: ConfigDuration,
    /// Requests that may arrive at once. Default: `requests`.
    pub burst: Option<u32>,
}

/// Response header fields describing the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnContention {
    /// Let the request through uncounted.
    #[default]
    Allow,
    /// Answer 503 with `Retry-After: 1`.
    Deny,
}

impl FromJson for RateLimitConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        Members::read(
            value,
            at,
            &[
                "rules",
                "trusted_proxies",
                "headers",
                "shadow",
                "max_keys",
                "status",
                "on_contention",
            ],
            |m| {
                Ok(Self {
                    rules: m.or_default("rules")?,
                    trusted_proxies: m.or_default("trusted_proxies")?,
                    headers: m.or_default("headers")?,
                    shadow: m.or_default("shadow")?,
                    max_keys: m.field("max_keys")?,
                    status: m.field("status")?,
                    on_contention: m.or_default("on_contention")?,
                })
            },
        )
    }
}

impl FromJson for RuleConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        Members::read(value, at, &["name", "match", "key", "limit"], |m| {
            Ok(Self {
                name: m.required("name")?,
                route: m.or_default("match")?,
                key: m.required("key")?,
                limit: m.required("limit")?,
            })
        })
    }
}

impl FromJson for KeyPartConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let (kind, options) = tagged(value, at)?;
        let at = at.field(kind);
        Ok(match kind {
            "client_ip" => Self::ClientIp(ClientIpConfig::from_json(options, &at)?),
            "header" => Self::Header(String::from_json(options, &at)?),
            "path" => Self::Path(Empty::from_json(options, &at)?),
            "method" => Self::Method(Empty::from_json(options, &at)?),
            "rule" => Self::Rule(Empty::from_json(options, &at)?),
            _ => {
                return Err(at.error(unknown_variant(
                    kind,
                    &["client_ip", "header", "path", "method", "rule"],
                )));
            }
        })
    }
}

impl FromJson for Empty {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        Members::of(value, at, &[])?.finish();
        Ok(Self {})
    }
}

impl FromJson for ClientIpConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        Members::read(value, at, &["ipv6_prefix"], |m| {
            Ok(Self {
                ipv6_prefix: m.field("ipv6_prefix")?,
            })
        })
    }
}

impl FromJson for LimitConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        Members::read(value, at, &["requests", "per", "burst"], |m| {
            Ok(Self {
                requests: m.required("requests")?,
                per: m.required("per")?,
                burst: m.field("burst")?,
            })
        })
    }
}

impl FromJson for Dialect {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        variant(
            value,
            at,
            &[
                ("draft", Self::Draft),
                ("legacy", Self::Legacy),
                ("none", Self::None),
            ],
        )
    }
}

impl FromJson for OnContention {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        variant(value, at, &[("allow", Self::Allow), ("deny", Self::Deny)])
    }
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
    use filter_core::config::parse_json;
    use std::time::Duration;

    fn compile(json: &str) -> Result<Compiled, ConfigError> {
        parse_json::<RateLimitConfig>(json.as_bytes())?.compile()
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
                "rules[0].key[0].cookie",
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

    proptest::proptest! {
        /// No configuration text makes the parser or the compiler panic.
        #[test]
        fn hostile_config_never_panics(text in ".{0,200}") {
            if let Ok(c) = parse_json::<RateLimitConfig>(text.as_bytes()) {
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
