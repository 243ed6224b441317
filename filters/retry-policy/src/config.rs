//! The `retry_policy` configuration, parsed strictly and compiled once.

use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, null_default, quoted, show_duration,
};
use filter_core::matcher::{RouteMatchConfig, RouteMatcher, is_token};
use serde::Deserialize;
use std::time::Duration;

/// The most retries a rule may grant.
pub const MAX_NUM_RETRIES: u32 = 10;

/// The request headers Envoy's router reads its retry policy from.
pub mod header {
    /// Conditions (`retry_on`).
    pub const RETRY_ON: &str = "x-envoy-retry-on";
    /// gRPC conditions (`grpc_retry_on`).
    pub const GRPC_RETRY_ON: &str = "x-envoy-retry-grpc-on";
    /// Retries after the first attempt (`num_retries`).
    pub const MAX_RETRIES: &str = "x-envoy-max-retries";
    /// Statuses for `retriable-status-codes`.
    pub const STATUS_CODES: &str = "x-envoy-retriable-status-codes";
    /// Timeout of each attempt (`per_try_timeout`), in ms.
    pub const PER_TRY_TIMEOUT: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
    /// Headers whose presence in a response makes it retriable (never set by this filter).
    pub const HEADER_NAMES: &str = "x-envoy-retriable-header-names";
    /// Hedging on per-try timeouts (never set by this filter).
    pub const HEDGE: &str = "x-envoy-hedge-on-per-try-timeout";
    /// All of them: a client's are always removed.
    pub const ALL: [&str; 7] = [
        RETRY_ON,
        GRPC_RETRY_ON,
        MAX_RETRIES,
        STATUS_CODES,
        PER_TRY_TIMEOUT,
        HEADER_NAMES,
        HEDGE,
    ];
}

/// `retry_on` values Envoy's router understands (`x-envoy-retry-on`).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
];

/// `grpc_retry_on` values (`x-envoy-retry-grpc-on`).
pub const GRPC_RETRY_ON: &[&str] = &[
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The whole configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// Tried in order; the first whose `match` fits decides.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<RuleConfig>,
    /// A request header that makes POST and PATCH retryable. Default `idempotency-key`.
    pub idempotency_key_header: Option<String>,
    /// Retries as a share of requests; absent: no budget.
    pub budget: Option<BudgetConfig>,
    /// `Retry-After` for 429 and 503 answers that lack one; absent: left alone.
    pub retry_after: Option<RetryAfterConfig>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Which requests it is for.
    #[serde(rename = "match", default, deserialize_with = "null_default")]
    pub route: RouteMatchConfig,
    /// Envoy's retry conditions.
    #[serde(default, deserialize_with = "null_default")]
    pub retry_on: Vec<String>,
    /// Statuses for `retriable-status-codes`.
    #[serde(default, deserialize_with = "null_default")]
    pub retriable_status_codes: Vec<u16>,
    /// gRPC retry conditions.
    #[serde(default, deserialize_with = "null_default")]
    pub grpc_retry_on: Vec<String>,
    /// Retries after the first attempt, 0 to 10. Default 1.
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<ConfigDuration>,
}

/// The retry budget as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries as a share of requests, 0 to 1. Default 0.2.
    pub retry_ratio: Option<f64>,
    /// Retries allowed per second whatever the traffic. Default 10.
    pub min_retries_per_second: Option<u32>,
}

/// How `Retry-After` is added, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryAfterConfig {
    /// Statuses that get one. Default `[429, 503]`.
    pub statuses: Option<Vec<u16>>,
    /// The delay before jitter. Default `"1s"`.
    pub default: Option<ConfigDuration>,
    /// The most any `Retry-After` may say. Default `"60s"`.
    pub max: Option<ConfigDuration>,
    /// `full` (default), `equal` or `none`.
    #[serde(default, deserialize_with = "null_default")]
    pub jitter: Jitter,
}

/// How a delay is spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, d]`.
    #[default]
    Full,
    /// `d/2` plus uniform in `[0, d/2]`.
    Equal,
    /// Exactly `d`.
    None,
}

/// A rule, compiled: the retry headers it writes, formatted once.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Which requests it is for.
    pub matcher: RouteMatcher,
    /// Retries it grants.
    pub num_retries: u32,
    /// The headers it sets, with their values (`x-envoy-max-retries` always).
    pub headers: Vec<(&'static str, String)>,
    /// With `grpc_retry_on`: the headers for a gRPC call that is not otherwise safe to
    /// retry (no idempotency key): the gRPC conditions only, none of `retry_on`.
    pub grpc_only_headers: Option<Vec<(&'static str, String)>>,
}

impl Rule {
    /// The value the rule gives header `name`, if it sets it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The budget, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Retries per request.
    pub ratio: f64,
    /// Retries per second always allowed.
    pub min_per_second: u32,
}

/// The `Retry-After` policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryAfter {
    /// Statuses it applies to.
    pub statuses: Vec<u16>,
    /// The delay before jitter.
    pub default: Duration,
    /// The cap.
    pub max: Duration,
    /// The jitter.
    pub jitter: Jitter,
}

/// The configuration, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The rules.
    pub rules: Vec<Rule>,
    /// Lower-case header name.
    pub idempotency_key_header: String,
    /// The budget, if on.
    pub budget: Option<Budget>,
    /// The `Retry-After` policy, if on.
    pub retry_after: Option<RetryAfter>,
}

fn joined(
    values: &[String],
    known: &[&str],
    at: &FieldPath,
) -> Result<Option<String>, ConfigError> {
    for (i, v) in values.iter().enumerate() {
        if !known.contains(&v.as_str()) {
            return Err(at.index(i).error(format!(
                "unknown value {}; use one of {}",
                quoted(v),
                known.join(", ")
            )));
        }
    }
    Ok((!values.is_empty()).then(|| values.join(",")))
}

impl RetryPolicyConfig {
    /// Validates everything; an error names the field.
    pub fn compile(self) -> Result<Compiled, ConfigError> {
        let root = FieldPath::root();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.into_iter().enumerate() {
            let at = root.field("rules").index(i);
            let matcher = RouteMatcher::compile(&r.route, &at.field("match"))?;
            let retry_on = joined(&r.retry_on, RETRY_ON, &at.field("retry_on"))?;
            let grpc_retry_on =
                joined(&r.grpc_retry_on, GRPC_RETRY_ON, &at.field("grpc_retry_on"))?;
            for (j, status) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(status) {
                    return Err(at
                        .field("retriable_status_codes")
                        .index(j)
                        .error(format!("{status} is not an HTTP status")));
                }
            }
            let status_codes = (!r.retriable_status_codes.is_empty()).then(|| {
                r.retriable_status_codes
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let num_retries = r.num_retries.unwrap_or(1);
            if num_retries > MAX_NUM_RETRIES {
                return Err(at.field("num_retries").error(format!(
                    "must be at most {MAX_NUM_RETRIES} (retries multiply load when an upstream struggles), got {num_retries}"
                )));
            }
            let per_try_timeout_ms = match r.per_try_timeout {
                None => None,
                Some(d) => {
                    let ms = d.get().as_millis();
                    if ms == 0 {
                        return Err(at.field("per_try_timeout").error("must be at least 1ms"));
                    }
                    Some(u64::try_from(ms).unwrap_or(u64::MAX))
                }
            };
            let headers = [
                (header::RETRY_ON, retry_on),
                (header::GRPC_RETRY_ON, grpc_retry_on),
                (header::STATUS_CODES, status_codes),
                (
                    header::PER_TRY_TIMEOUT,
                    per_try_timeout_ms.map(|ms| ms.to_string()),
                ),
                (header::MAX_RETRIES, Some(num_retries.to_string())),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect::<Vec<_>>();
            // Naming gRPC codes declares the rule's gRPC methods retriable on them, as a gRPC
            // service config's retry policy does; the HTTP conditions (a reset, a 5xx) still
            // need an idempotent call.
            let grpc_only_headers = headers
                .iter()
                .any(|(name, _)| *name == header::GRPC_RETRY_ON)
                .then(|| {
                    headers
                        .iter()
                        .filter(|(name, _)| {
                            !matches!(*name, header::RETRY_ON | header::STATUS_CODES)
                        })
                        .cloned()
                        .collect()
                });
            rules.push(Rule {
                matcher,
                num_retries,
                headers,
                grpc_only_headers,
            });
        }
        let idempotency_key_header = self
            .idempotency_key_header
            .unwrap_or_else(|| "idempotency-key".to_owned())
            .to_ascii_lowercase();
        if !is_token(&idempotency_key_header) {
            return Err(root
                .field("idempotency_key_header")
                .error("is not a header name"));
        }
        let budget = match self.budget {
            None => None,
            Some(b) => {
                let ratio = b.retry_ratio.unwrap_or(0.2);
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(root
                        .field("budget")
                        .field("retry_ratio")
                        .error(format!("must be a number from 0 to 1, got {ratio}")));
                }
                Some(Budget {
                    ratio,
                    min_per_second: b.min_retries_per_second.unwrap_or(10),
                })
            }
        };
        let retry_after = match self.retry_after {
            None => None,
            Some(r) => {
                let at = root.field("retry_after");
                let statuses = r.statuses.unwrap_or_else(|| vec![429, 503]);
                for (i, s) in statuses.iter().enumerate() {
                    if !(100..=599).contains(s) {
                        return Err(at
                            .field("statuses")
                            .index(i)
                            .error(format!("{s} is not an HTTP status")));
                    }
                }
                let default = r
                    .default
                    .map_or(Duration::from_secs(1), ConfigDuration::get);
                let max = r.max.map_or(Duration::from_secs(60), ConfigDuration::get);
                if max.is_zero() {
                    return Err(at.field("max").error("must be longer than zero"));
                }
                if default > max {
                    return Err(at
                        .field("default")
                        .error(format!("is longer than max ({})", show_duration(max))));
                }
                Some(RetryAfter {
                    statuses,
                    default,
                    max,
                    jitter: r.jitter,
                })
            }
        };
        Ok(Compiled {
            rules,
            idempotency_key_header,
            budget,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::parse;

    fn compile(json: &str) -> Result<Compiled, ConfigError> {
        parse::<RetryPolicyConfig>(json.as_bytes())?.compile()
    }

    #[test]
    fn the_issue_example_compiles() {
        let c = compile(
            r#"{
              "rules": [
                { "match": { "prefix": "/orders", "methods": ["GET", "PUT", "DELETE"] },
                  "retry_on": ["5xx", "reset", "connect-failure", "retriable-status-codes"],
                  "retriable_status_codes": [503],
                  "num_retries": 2,
                  "per_try_timeout": "500ms" },
                { "match": { "prefix": "/" }, "retry_on": ["connect-failure", "reset"], "num_retries": 1 }
              ],
              "idempotency_key_header": "idempotency-key",
              "budget": { "retry_ratio": 0.2, "min_retries_per_second": 5 },
              "retry_after": { "statuses": [429, 503], "default": "1s", "max": "60s", "jitter": "full" }
            }"#,
        )
        .unwrap();
        let r = &c.rules[0];
        assert_eq!(
            r.header(header::RETRY_ON),
            Some("5xx,reset,connect-failure,retriable-status-codes")
        );
        assert_eq!(r.header(header::STATUS_CODES), Some("503"));
        assert_eq!(r.header(header::PER_TRY_TIMEOUT), Some("500"));
        assert_eq!(r.header(header::MAX_RETRIES), Some("2"));
        assert_eq!(c.rules[1].header(header::GRPC_RETRY_ON), None);
        assert_eq!(c.budget.unwrap().min_per_second, 5);
        let d = compile("{}").unwrap();
        assert_eq!(d.idempotency_key_header, "idempotency-key");
        assert!(d.budget.is_none() && d.retry_after.is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, path) in [
            (
                r#"{"rules": [{"num_retries": 11}]}"#,
                "rules[0].num_retries",
            ),
            (
                r#"{"rules": [{"retry_on": ["5xx", "sometimes"]}]}"#,
                "rules[0].retry_on[1]",
            ),
            (
                r#"{"rules": [{"grpc_retry_on": ["ok"]}]}"#,
                "rules[0].grpc_retry_on[0]",
            ),
            (
                r#"{"rules": [{"per_try_timeout": "0s"}]}"#,
                "rules[0].per_try_timeout",
            ),
            (
                r#"{"rules": [{"retriable_status_codes": [600]}]}"#,
                "rules[0].retriable_status_codes[0]",
            ),
            (r#"{"budget": {"retry_ratio": 1.5}}"#, "budget.retry_ratio"),
            (r#"{"budget": {"retry_ratio": -0.1}}"#, "budget.retry_ratio"),
            (
                r#"{"retry_after": {"default": "2m"}}"#,
                "retry_after.default",
            ),
            (
                r#"{"retry_after": {"jitter": "some"}}"#,
                "retry_after.jitter",
            ),
            (
                r#"{"idempotency_key_header": "a b"}"#,
                "idempotency_key_header",
            ),
            (r#"{"retries": 1}"#, "retries"),
        ] {
            let err = compile(json).unwrap_err();
            assert_eq!(err.path(), path, "{json}: {err}");
        }
    }

    #[test]
    fn messages_name_the_field_and_the_reason() {
        let error = |json: &str| compile(json).unwrap_err().to_string();
        assert_eq!(
            error(r#"{"budget": {"retry_ratio": 1.5}}"#),
            "budget.retry_ratio: must be a number from 0 to 1, got 1.5"
        );
        assert_eq!(
            error(r#"{"budget": {"retry_ratio": "0.2"}}"#),
            "budget.retry_ratio: invalid type: string \"0.2\", expected f64"
        );
        assert_eq!(
            error(r#"{"rules": [{"num_retries": 2.0}]}"#),
            "rules[0].num_retries: invalid type: floating point `2.0`, expected u32"
        );
        assert_eq!(
            error(r#"{"rules": [{}, {"per_try_timeout": "500"}]}"#),
            "rules[1].per_try_timeout: invalid duration \"500\": missing unit (ns, us, ms, s, m or h)"
        );
        assert_eq!(
            error(r#"{"retry_after": {"jitter": "full", "jitter": "none"}}"#),
            "retry_after.jitter: appears twice; each member may appear once"
        );
        assert_eq!(
            error(r#"{"rules": [{"match": {"prefix": "/", "method": ["GET"]}}]}"#),
            "rules[0].match.method: unknown field `method`, expected one of `prefix`, `path`, `methods`, `headers`, `cluster`"
        );
    }

    #[test]
    fn null_means_the_default() {
        let c = compile(
            r#"{"rules": [{"match": null, "retry_on": null, "retriable_status_codes": null,
                "grpc_retry_on": null, "num_retries": null, "per_try_timeout": null}],
                "idempotency_key_header": null,
                "budget": {"retry_ratio": null, "min_retries_per_second": null},
                "retry_after": {"statuses": null, "default": null, "max": null, "jitter": null}}"#,
        )
        .unwrap();
        assert_eq!(c.rules[0].num_retries, 1);
        assert_eq!(c.rules[0].header(header::RETRY_ON), None);
        assert_eq!(c.idempotency_key_header, "idempotency-key");
        assert_eq!(
            c.budget,
            Some(Budget {
                ratio: 0.2,
                min_per_second: 10
            })
        );
        let retry_after = c.retry_after.unwrap();
        assert_eq!(retry_after.statuses, [429, 503]);
        assert_eq!(retry_after.jitter, Jitter::Full);
        assert!(compile(r#"{"budget": null, "retry_after": null, "rules": null}"#).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn hostile_config_never_panics(text in ".{0,200}") {
            if let Ok(c) = parse::<RetryPolicyConfig>(text.as_bytes()) {
                let _ = c.compile();
            }
        }
    }
}
