//! The `rate_limit` configuration, parsed strictly and compiled once into [`Compiled`].

use crate::gcra::{Limit, LimitError};
use crate::key::KeyPart;
use crate::reply::Quota;
use crate::table::Table;
use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, NamedMap, check_name, null_default, quoted,
};
use filter_core::matcher::{RouteMatchConfig, RouteMatcher};
use serde::Deserialize;
use std::time::Duration;

/// Default `max_keys`: distinct keys each rule tracks at once.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// Default `timeout` of a rate limit service call: Envoy's `ratelimit` filter's default.
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_millis(20);
/// The longest `timeout` may be: a request is held for the whole of it.
pub const MAX_SERVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest Envoy cluster name a service may give.
const MAX_CLUSTER_NAME: usize = 120;

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
    /// Rate limit services global rules call, by name.
    #[serde(default, deserialize_with = "null_default")]
    pub services: NamedMap<ServiceConfig>,
}

/// A rate limit service as written: an Envoy cluster speaking
/// `envoy.service.ratelimit.v3.RateLimitService`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The Envoy cluster (HTTP/2) of the service.
    pub cluster: String,
    /// The domain its rules are sent in, unless a rule names its own.
    pub domain: String,
    /// The calls' `:authority`: the service's host name. Default: the cluster's name (Envoy's
    /// default), which must then be a valid authority.
    pub authority: Option<String>,
    /// How long a request waits for the answer. Default 20ms.
    pub timeout: Option<ConfigDuration>,
    /// What each kind of failure does to the request. Default: `allow` for each.
    #[serde(default, deserialize_with = "null_default")]
    pub on_failure: FailurePolicyConfig,
}

/// What each kind of failure of a service call does, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailurePolicyConfig {
    /// No service answered: no such cluster, no healthy host, connection refused or reset.
    #[serde(default, deserialize_with = "null_default")]
    pub unreachable: FailureMode,
    /// No answer within `timeout`.
    #[serde(default, deserialize_with = "null_default")]
    pub timeout: FailureMode,
    /// The service answered with a gRPC error status.
    #[serde(default, deserialize_with = "null_default")]
    pub error: FailureMode,
    /// The answer could not be read, or said neither OK nor OVER_LIMIT.
    #[serde(default, deserialize_with = "null_default")]
    pub invalid_answer: FailureMode,
}

/// What a failed service call does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let it through, as if the service had said OK (Envoy's default).
    #[default]
    Allow,
    /// Refuse it: 503, with the failure in the body's `detail`.
    Deny,
}

/// A global rule as written: its requests are counted by a rate limit service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// The service (a name under `services`). Default: the only one.
    pub service: Option<String>,
    /// The domain. Default: the service's.
    pub domain: Option<String>,
    /// The descriptor's entries, in order.
    pub descriptor: Vec<EntryConfig>,
    /// How much one request counts. Default 1.
    pub hits_addend: Option<u32>,
}

/// One descriptor entry as written: `{"key": "user", "value": {"header": "x-user-id"}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// The descriptor key the service matches on.
    pub key: String,
    /// Where its value comes from (any key part).
    pub value: KeyPartConfig,
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
    /// What a bucket is per: parts combined (local rules).
    pub key: Option<Vec<KeyPartConfig>>,
    /// The limit of each bucket (local rules).
    pub limit: Option<LimitConfig>,
    /// Counted by a rate limit service instead (global rules).
    pub global: Option<GlobalConfig>,
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
    /// A fixed text (for a descriptor entry such as `generic_key`).
    Literal(String),
    /// The name of the Envoy route the request matched.
    Route(Empty),
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
    /// What its `RateLimit-Policy` item says.
    pub quota: Quota,
    /// Where its buckets live.
    pub table: Table,
}

/// A global rule, compiled.
#[derive(Debug, Clone)]
pub struct GlobalRule {
    /// Its name.
    pub name: String,
    /// Which requests it counts.
    pub matcher: RouteMatcher,
    /// The service, by index into [`Compiled::services`].
    pub service: usize,
    /// The domain it is sent in.
    pub domain: String,
    /// The descriptor's entries: key, and where the value comes from.
    pub descriptor: Vec<(String, KeyPart)>,
    /// How much one request counts.
    pub hits_addend: u32,
}

/// A rate limit service, compiled.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The Envoy cluster.
    pub cluster: String,
    /// The calls' `:authority`, if not the cluster's name.
    pub authority: Option<String>,
    /// How long a request waits.
    pub timeout: Duration,
    /// What each kind of failure does.
    pub on_failure: FailurePolicy,
}

/// Why a service call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No service answered.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// A gRPC error status.
    Error,
    /// An answer that cannot be read or says nothing.
    InvalidAnswer,
}

impl Failure {
    /// Its name in metrics, logs and replies.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Timeout => "timeout",
            Failure::Error => "error",
            Failure::InvalidAnswer => "invalid_answer",
        }
    }
}

/// What each kind of failure does, compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailurePolicy {
    /// See [`FailurePolicyConfig::unreachable`].
    pub unreachable: FailureMode,
    /// See [`FailurePolicyConfig::timeout`].
    pub timeout: FailureMode,
    /// See [`FailurePolicyConfig::error`].
    pub error: FailureMode,
    /// See [`FailurePolicyConfig::invalid_answer`].
    pub invalid_answer: FailureMode,
}

impl FailurePolicy {
    /// What `failure` does.
    pub fn mode(&self, failure: Failure) -> FailureMode {
        match failure {
            Failure::Unreachable => self.unreachable,
            Failure::Timeout => self.timeout,
            Failure::Error => self.error,
            Failure::InvalidAnswer => self.invalid_answer,
        }
    }
}

/// The configuration, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Every local rule, in order.
    pub rules: Vec<Rule>,
    /// Every global rule, in order.
    pub global_rules: Vec<GlobalRule>,
    /// The services global rules call.
    pub services: Vec<Service>,
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
        let services = compile_services(&self.services, &root.field("services"))?;
        let mut rules: Vec<Rule> = Vec::new();
        let mut global_rules: Vec<GlobalRule> = Vec::new();
        let mut names: Vec<String> = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            let at = root.field("rules").index(i);
            check_name(&rule.name, &at.field("name"))?;
            if names.contains(&rule.name) {
                return Err(at
                    .field("name")
                    .error(format!("{} names an earlier rule too", quoted(&rule.name))));
            }
            names.push(rule.name.clone());
            if rule.global.is_some() {
                global_rules.push(compile_global_rule(rule, &self.services, &services, &at)?);
            } else {
                rules.push(compile_rule(rule, max_keys, &at)?);
            }
        }
        Ok(Compiled {
            rules,
            global_rules,
            services,
            trusted_proxies: self.trusted_proxies,
            dialect: self.headers,
            shadow: self.shadow,
            status,
            on_contention: self.on_contention,
        })
    }
}

fn compile_services(
    written: &NamedMap<ServiceConfig>,
    at: &FieldPath,
) -> Result<Vec<Service>, ConfigError> {
    let mut services = Vec::with_capacity(written.len());
    for (name, service) in written.iter() {
        let at = at.field(name);
        check_name(name, &at)?;
        if service.cluster.is_empty() || service.cluster.len() > MAX_CLUSTER_NAME {
            return Err(at.field("cluster").error(format!(
                "must be an Envoy cluster name of 1 to {MAX_CLUSTER_NAME} bytes"
            )));
        }
        check_domain(&service.domain, &at.field("domain"))?;
        match &service.authority {
            Some(authority) if !is_authority(authority) => {
                return Err(at.field("authority").error(format!(
                    "{} is not a host name (RFC 3986 authority, at most {MAX_CLUSTER_NAME} bytes)",
                    quoted(authority)
                )));
            }
            // A gRPC server refuses an :authority such as Istio's `outbound|8081||host`.
            None if !is_authority(&service.cluster) => {
                return Err(at.field("authority").error(format!(
                    "missing: the cluster name {} is not a valid :authority (the default), so give \
                     the service's host name",
                    quoted(&service.cluster)
                )));
            }
            _ => {}
        }
        let timeout = service
            .timeout
            .map_or(DEFAULT_SERVICE_TIMEOUT, ConfigDuration::get);
        if timeout < Duration::from_millis(1) || timeout > MAX_SERVICE_TIMEOUT {
            return Err(at.field("timeout").error(format!(
                "must be from 1ms to {}s (Envoy counts whole milliseconds)",
                MAX_SERVICE_TIMEOUT.as_secs()
            )));
        }
        let failure = &service.on_failure;
        services.push(Service {
            name: name.to_owned(),
            cluster: service.cluster.clone(),
            authority: service.authority.clone(),
            timeout,
            on_failure: FailurePolicy {
                unreachable: failure.unreachable,
                timeout: failure.timeout,
                error: failure.error,
                invalid_answer: failure.invalid_answer,
            },
        });
    }
    Ok(services)
}

/// Whether `text` can be an HTTP/2 `:authority` (RFC 3986: host and port characters).
fn is_authority(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CLUSTER_NAME
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]%".contains(&b))
}

fn check_domain(domain: &str, at: &FieldPath) -> Result<(), ConfigError> {
    if domain.is_empty() {
        return Err(at.error("must not be empty (the service reads its limits by domain)"));
    }
    Ok(())
}

fn compile_global_rule(
    rule: RuleConfig,
    written: &NamedMap<ServiceConfig>,
    services: &[Service],
    at: &FieldPath,
) -> Result<GlobalRule, ConfigError> {
    let matcher = RouteMatcher::compile(&rule.route, &at.field("match"))?;
    if rule.key.is_some() {
        return Err(at
            .field("key")
            .error("a global rule has no key: its descriptor says what it counts"));
    }
    if rule.limit.is_some() {
        return Err(at
            .field("limit")
            .error("a global rule has no limit: its service holds the limits"));
    }
    let Some(global) = rule.global else {
        return Err(at.field("global").error("missing"));
    };
    let at = at.field("global");
    let service = match &global.service {
        Some(name) => services
            .iter()
            .position(|s| s.name == *name)
            .ok_or_else(|| {
                at.field("service")
                    .error(format!("{} is not under services", quoted(name)))
            })?,
        None if services.len() == 1 => 0,
        None if services.is_empty() => {
            return Err(at.error("names no service, and there are none under services"));
        }
        None => {
            return Err(at
                .field("service")
                .error("must name one of the services (there are several)"));
        }
    };
    let domain = match global.domain {
        Some(domain) => {
            check_domain(&domain, &at.field("domain"))?;
            domain
        }
        None => written
            .iter()
            .nth(service)
            .map(|(_, s)| s.domain.clone())
            .unwrap_or_default(),
    };
    if global.descriptor.is_empty() {
        return Err(at.field("descriptor").error(
            "must list at least one entry, e.g. {\"key\": \"generic_key\", \"value\": {\"literal\": \"api\"}}",
        ));
    }
    let mut descriptor = Vec::with_capacity(global.descriptor.len());
    for (i, entry) in global.descriptor.into_iter().enumerate() {
        let entry_at = at.field("descriptor").index(i);
        if entry.key.is_empty() {
            return Err(entry_at.field("key").error("must not be empty"));
        }
        let part = compile_key_part(entry.value, &entry_at.field("value"))?;
        descriptor.push((entry.key, part));
    }
    let hits_addend = global.hits_addend.unwrap_or(1);
    if hits_addend == 0 {
        return Err(at.field("hits_addend").error("must be at least 1"));
    }
    Ok(GlobalRule {
        name: rule.name,
        matcher,
        service,
        domain,
        descriptor,
        hits_addend,
    })
}

/// One key part; `at` is where it is written (`rules[0].key[1]`).
fn compile_key_part(part: KeyPartConfig, at: &FieldPath) -> Result<KeyPart, ConfigError> {
    Ok(match part {
        KeyPartConfig::ClientIp(options) => {
            let ipv6_prefix = options.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
            if ipv6_prefix > 128 {
                return Err(at
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
                    .field("header")
                    .error(format!("{} is not a header name", quoted(&name))));
            }
            KeyPart::Header(name)
        }
        KeyPartConfig::Path(Empty {}) => KeyPart::Path,
        KeyPartConfig::Method(Empty {}) => KeyPart::Method,
        KeyPartConfig::Rule(Empty {}) => KeyPart::Rule,
        KeyPartConfig::Route(Empty {}) => KeyPart::Route,
        KeyPartConfig::Literal(text) => {
            if text.is_empty() {
                return Err(at.field("literal").error("must not be empty"));
            }
            KeyPart::Literal(text)
        }
    })
}

fn compile_rule(rule: RuleConfig, max_keys: u64, at: &FieldPath) -> Result<Rule, ConfigError> {
    let matcher = RouteMatcher::compile(&rule.route, &at.field("match"))?;
    let Some(parts) = rule.key else {
        return Err(at.field("key").error(
            "missing: a local rule needs a key (or give `global` to count at a rate limit service)",
        ));
    };
    let Some(written_limit) = rule.limit else {
        return Err(at.field("limit").error(
            "missing: a local rule needs a limit (or give `global` to count at a rate limit service)",
        ));
    };
    if parts.is_empty() {
        return Err(at
            .field("key")
            .error("must list at least one part; {\"rule\": {}} is one bucket for everyone"));
    }
    let mut key = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        key.push(compile_key_part(part, &at.field("key").index(i))?);
    }
    let limit_at = at.field("limit");
    let burst = written_limit.burst.unwrap_or(written_limit.requests);
    let limit = Limit::new(written_limit.requests, written_limit.per.get(), burst).map_err(
        |e| match e {
            LimitError::NoRequests => limit_at.field("requests").error(
                "must be at least 1 (to refuse every request, use a route without upstream)",
            ),
            LimitError::NoWindow => limit_at.field("per").error("must be longer than zero"),
            LimitError::NoBurst => limit_at.field("burst").error("must be at least 1"),
            LimitError::TooFast => limit_at
                .field("per")
                .error("is shorter than one nanosecond per request"),
        },
    )?;
    Ok(Rule {
        table: Table::new(&rule.name, max_keys),
        name: rule.name,
        matcher,
        key,
        quota: Quota::of(&limit),
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
            "rules[0].key[0]: unknown variant `cookie`, expected one of `client_ip`, `header`, `path`, `method`, `rule`, `literal`, `route`"
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
