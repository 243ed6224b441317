//! The `circuit_breaker` configuration, parsed strictly and compiled once.

use crate::state::Policy;
use crate::window::Shape;
use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, NamedMap, check_name, null_default, parse_duration,
    quoted, show_duration,
};
use filter_core::matcher::{RouteMatchConfig, RouteMatcher, is_token};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// The most calls a count window may hold (each is 9 bytes of the shared record, rewritten on
/// every call).
pub const MAX_COUNT_WINDOW: u32 = 1000;
/// The most probes half-open may hand out.
pub const MAX_HALF_OPEN_CALLS: u32 = 1000;

/// The whole configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// The breakers; a request is guarded by the first whose `match` fits.
    #[serde(default, deserialize_with = "null_default")]
    pub breakers: Vec<BreakerConfig>,
}

/// One breaker as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Names it in metrics, logs, headers and shared data.
    pub name: String,
    /// Which requests it guards (the shared matcher; `cluster` names the upstream).
    #[serde(rename = "match", default, deserialize_with = "null_default")]
    pub route: RouteMatchConfig,
    /// Default `{"type": "time", "size": "10s"}`.
    pub window: Option<WindowConfig>,
    /// Default 20.
    pub minimum_calls: Option<u32>,
    /// Percent, default 50.
    pub failure_rate_threshold: Option<u32>,
    /// Default `"5s"`.
    pub slow_call_duration: Option<ConfigDuration>,
    /// Percent, default 100.
    pub slow_call_rate_threshold: Option<u32>,
    /// Default `"30s"`.
    pub open_duration: Option<ConfigDuration>,
    /// Default 3.
    pub half_open_calls: Option<u32>,
    /// Default `"10s"`.
    pub half_open_timeout: Option<ConfigDuration>,
    /// Default `[500, 502, 503, 504]`.
    pub failure_statuses: Option<Vec<u16>>,
    /// Default `enforce`.
    #[serde(default, deserialize_with = "null_default")]
    pub mode: Mode,
    /// The answer while open; default a 503 problem document.
    pub fallback: Option<FallbackConfig>,
}

/// A window as written: `{"type": "time", "size": "10s"}` or
/// `{"type": "count", "size": 100, "max_age": "60s"}`.
///
/// One struct rather than an enum tagged by `type`: serde reads an internally tagged enum
/// through a buffer, and errors inside it would lose their field path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Which kind of window.
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// A duration for a time window, a number of calls for a count window.
    pub size: WindowSize,
    /// Count windows only: calls older than this no longer count. Default `"60s"`.
    pub max_age: Option<ConfigDuration>,
}

/// The kinds of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// A sliding time window.
    Time,
    /// The last `size` calls.
    Count,
}

/// A window's `size`: a duration (`"10s"`) or a number of calls (`100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSize {
    /// A length of time.
    Duration(Duration),
    /// A number of calls.
    Calls(u64),
}

impl<'de> Deserialize<'de> for WindowSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Size;

        impl Visitor<'_> for Size {
            type Value = WindowSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or a whole number of calls")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text)
                    .map(WindowSize::Duration)
                    .map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, calls: u64) -> Result<Self::Value, E> {
                Ok(WindowSize::Calls(calls))
            }
        }

        deserializer.deserialize_any(Size)
    }
}

/// What the breaker does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Trips and refuses.
    #[default]
    Enforce,
    /// Trips, reports and logs, refuses nothing.
    Shadow,
    /// Refuses everything (no `Retry-After`), records nothing.
    ForcedOpen,
    /// Lets everything through, records nothing.
    Disabled,
}

/// The fallback response as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Default 503.
    pub status: Option<u16>,
    /// Extra headers.
    #[serde(default, deserialize_with = "null_default")]
    pub headers: NamedMap<String>,
    /// The body.
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
}

/// A fallback, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Status.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// A breaker, compiled.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// Its name.
    pub name: String,
    /// Which requests it guards.
    pub matcher: RouteMatcher,
    /// Its thresholds.
    pub policy: Policy,
    /// Statuses that are failures.
    pub failure_statuses: Vec<u16>,
    /// Its mode.
    pub mode: Mode,
    /// The answer while open, if configured.
    pub fallback: Option<Fallback>,
    /// Its record's shared-data key.
    pub key: String,
}

impl CircuitBreakerConfig {
    /// Validates everything; an error names the field.
    pub fn compile(self) -> Result<Vec<Breaker>, ConfigError> {
        let mut breakers: Vec<Breaker> = Vec::with_capacity(self.breakers.len());
        for (i, b) in self.breakers.into_iter().enumerate() {
            let at = FieldPath::root().field("breakers").index(i);
            let breaker = compile_breaker(b, &at)?;
            if breakers.iter().any(|other| other.name == breaker.name) {
                return Err(at.field("name").error(format!(
                    "{} names an earlier breaker too",
                    quoted(&breaker.name)
                )));
            }
            breakers.push(breaker);
        }
        Ok(breakers)
    }
}

fn percent(value: Option<u32>, default: u32, at: &FieldPath) -> Result<u32, ConfigError> {
    let v = value.unwrap_or(default);
    if (1..=100).contains(&v) {
        Ok(v)
    } else {
        Err(at.error(format!("must be a percentage from 1 to 100, got {v}")))
    }
}

fn duration(
    value: Option<ConfigDuration>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    at: &FieldPath,
) -> Result<Duration, ConfigError> {
    let d = value.map_or(default, ConfigDuration::get);
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(at.error(format!(
            "must be from {} to {}, got {}",
            show_duration(*range.start()),
            show_duration(*range.end()),
            show_duration(d)
        )))
    }
}

fn compile_breaker(b: BreakerConfig, at: &FieldPath) -> Result<Breaker, ConfigError> {
    check_name(&b.name, &at.field("name"))?;
    let matcher = RouteMatcher::compile(&b.route, &at.field("match"))?;
    let window = match b.window {
        None => Shape::Time {
            size: Duration::from_secs(10),
        },
        Some(window) => compile_window(window, &at.field("window"))?,
    };
    let minimum_calls = b.minimum_calls.unwrap_or(20);
    if minimum_calls == 0 {
        return Err(at.field("minimum_calls").error("must be at least 1"));
    }
    // A count window can never hold more than its size: waiting for more would never trip.
    let minimum_calls = match window {
        Shape::Count { size, .. } => minimum_calls.min(size),
        Shape::Time { .. } => minimum_calls,
    };
    let half_open_calls = b.half_open_calls.unwrap_or(3);
    if !(1..=MAX_HALF_OPEN_CALLS).contains(&half_open_calls) {
        return Err(at.field("half_open_calls").error(format!(
            "must be from 1 to {MAX_HALF_OPEN_CALLS}, got {half_open_calls}"
        )));
    }
    let policy = Policy {
        window,
        minimum_calls,
        failure_rate: percent(
            b.failure_rate_threshold,
            50,
            &at.field("failure_rate_threshold"),
        )?,
        slow_call_duration: duration(
            b.slow_call_duration,
            Duration::from_secs(5),
            Duration::from_millis(1)..=Duration::from_secs(3600),
            &at.field("slow_call_duration"),
        )?,
        slow_call_rate: percent(
            b.slow_call_rate_threshold,
            100,
            &at.field("slow_call_rate_threshold"),
        )?,
        open_duration: duration(
            b.open_duration,
            Duration::from_secs(30),
            Duration::from_millis(1)..=Duration::from_secs(86_400),
            &at.field("open_duration"),
        )?,
        half_open_calls,
        half_open_timeout: duration(
            b.half_open_timeout,
            Duration::from_secs(10),
            Duration::from_millis(1)..=Duration::from_secs(3600),
            &at.field("half_open_timeout"),
        )?,
    };
    let failure_statuses = b
        .failure_statuses
        .unwrap_or_else(|| vec![500, 502, 503, 504]);
    for (i, status) in failure_statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            return Err(at
                .field("failure_statuses")
                .index(i)
                .error(format!("{status} is not an HTTP status")));
        }
    }
    let fallback = match b.fallback {
        None => None,
        Some(f) => Some(compile_fallback(f, &at.field("fallback"))?),
    };
    Ok(Breaker {
        key: format!("cb1/{}", b.name),
        name: b.name,
        matcher,
        policy,
        failure_statuses,
        mode: b.mode,
        fallback,
    })
}

fn compile_window(w: WindowConfig, at: &FieldPath) -> Result<Shape, ConfigError> {
    match (w.kind, w.size) {
        (WindowKind::Time, WindowSize::Duration(size)) => {
            if w.max_age.is_some() {
                return Err(at
                    .field("max_age")
                    .error("only a count window has a max_age"));
            }
            Ok(Shape::Time {
                size: duration(
                    Some(ConfigDuration(size)),
                    Duration::ZERO,
                    Duration::from_millis(100)..=Duration::from_secs(3600),
                    &at.field("size"),
                )?,
            })
        }
        (WindowKind::Count, WindowSize::Calls(size)) => {
            let size = u32::try_from(size)
                .ok()
                .filter(|size| (1..=MAX_COUNT_WINDOW).contains(size))
                .ok_or_else(|| {
                    at.field("size").error(format!(
                        "must be from 1 to {MAX_COUNT_WINDOW} calls, got {size}"
                    ))
                })?;
            Ok(Shape::Count {
                size,
                max_age: duration(
                    w.max_age,
                    Duration::from_secs(60),
                    Duration::from_millis(1)..=Duration::from_secs(86_400),
                    &at.field("max_age"),
                )?,
            })
        }
        (WindowKind::Time, WindowSize::Calls(_)) => Err(at
            .field("size")
            .error("a time window's size is a duration such as \"10s\"")),
        (WindowKind::Count, WindowSize::Duration(_)) => Err(at
            .field("size")
            .error("a count window's size is a whole number of calls")),
    }
}

fn compile_fallback(f: FallbackConfig, at: &FieldPath) -> Result<Fallback, ConfigError> {
    let status = f.status.unwrap_or(503);
    if !(200..=599).contains(&status) {
        return Err(at
            .field("status")
            .error(format!("must be from 200 to 599, got {status}")));
    }
    let mut headers = Vec::with_capacity(f.headers.len());
    for (name, value) in f.headers {
        let lower = name.to_ascii_lowercase();
        if !is_token(&lower) || matches!(lower.as_str(), "content-length" | "transfer-encoding") {
            return Err(at
                .field("headers")
                .field(&name)
                .error("is not a header name a reply may carry"));
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(at
                .field("headers")
                .field(&name)
                .error("contains control characters"));
        }
        headers.push((lower, value));
    }
    Ok(Fallback {
        status,
        headers,
        body: f.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::parse;

    fn compile(json: &str) -> Result<Vec<Breaker>, ConfigError> {
        parse::<CircuitBreakerConfig>(json.as_bytes())?.compile()
    }

    #[test]
    fn the_issue_example_compiles_and_defaults_are_documented_ones() {
        let b = compile(
            r#"{"breakers": [{ "name": "orders",
              "match": { "prefix": "/orders" },
              "window": { "type": "time", "size": "10s" },
              "minimum_calls": 10, "failure_rate_threshold": 50,
              "slow_call_duration": "2s", "slow_call_rate_threshold": 100,
              "open_duration": "30s", "half_open_calls": 3, "half_open_timeout": "10s",
              "failure_statuses": [500, 502, 503, 504], "mode": "enforce",
              "fallback": { "status": 503, "headers": { "content-type": "application/json" },
                            "body": "{\"error\":\"orders is unavailable, try again later\"}" } }]}"#,
        )
        .unwrap();
        assert_eq!(b[0].policy.minimum_calls, 10);
        assert_eq!(b[0].key, "cb1/orders");
        let d = compile(r#"{"breakers": [{"name": "d"}]}"#).unwrap();
        let p = d[0].policy;
        assert_eq!(
            p.window,
            Shape::Time {
                size: Duration::from_secs(10)
            }
        );
        assert_eq!(
            (
                p.minimum_calls,
                p.failure_rate,
                p.slow_call_rate,
                p.half_open_calls
            ),
            (20, 50, 100, 3)
        );
        assert_eq!(p.slow_call_duration, Duration::from_secs(5));
        assert_eq!(p.open_duration, Duration::from_secs(30));
        assert_eq!(p.half_open_timeout, Duration::from_secs(10));
        assert_eq!(d[0].failure_statuses, [500, 502, 503, 504]);
        assert_eq!(d[0].mode, Mode::Enforce);
        // A count window clamps minimum_calls to its size.
        let c = compile(r#"{"breakers": [{"name": "c", "window": {"type": "count", "size": 5}}]}"#)
            .unwrap();
        assert_eq!(c[0].policy.minimum_calls, 5);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (r#"{"name": "a b"}"#, "breakers[0].name"),
            (
                r#"{"name": "x", "failure_rate_threshold": 0}"#,
                "breakers[0].failure_rate_threshold",
            ),
            (
                r#"{"name": "x", "slow_call_rate_threshold": 101}"#,
                "breakers[0].slow_call_rate_threshold",
            ),
            (
                r#"{"name": "x", "minimum_calls": 0}"#,
                "breakers[0].minimum_calls",
            ),
            (
                r#"{"name": "x", "half_open_calls": 0}"#,
                "breakers[0].half_open_calls",
            ),
            (
                r#"{"name": "x", "open_duration": "0s"}"#,
                "breakers[0].open_duration",
            ),
            (
                r#"{"name": "x", "window": {"type": "time", "size": "1ms"}}"#,
                "breakers[0].window.size",
            ),
            (
                r#"{"name": "x", "window": {"type": "count", "size": 0}}"#,
                "breakers[0].window.size",
            ),
            (
                r#"{"name": "x", "failure_statuses": [99]}"#,
                "breakers[0].failure_statuses[0]",
            ),
            (r#"{"name": "x", "mode": "sometimes"}"#, "breakers[0].mode"),
            (
                r#"{"name": "x", "fallback": {"status": 100}}"#,
                "breakers[0].fallback.status",
            ),
            (
                r#"{"name": "x", "fallback": {"headers": {"content-length": "1"}}}"#,
                "breakers[0].fallback.headers.content-length",
            ),
            (
                r#"{"name": "x", "match": {"cluster": ""}}"#,
                "breakers[0].match.cluster",
            ),
            (r#"{"name": "x", "surprise": 1}"#, "breakers[0].surprise"),
        ];
        for (breaker, path) in cases {
            let json = format!(r#"{{"breakers": [{breaker}]}}"#);
            let err = compile(&json).unwrap_err();
            assert_eq!(err.path(), path, "{json}: {err}");
        }
        let twice = r#"{"breakers": [{"name": "a"}, {"name": "a"}]}"#;
        assert_eq!(compile(twice).unwrap_err().path(), "breakers[1].name");
    }

    #[test]
    fn windows_and_maps_name_the_field_and_the_reason() {
        let error = |breaker: &str| {
            compile(&format!(r#"{{"breakers": [{{"name": "x", {breaker}}}]}}"#))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(r#""window": {"type": "time", "size": "10s", "max_age": "1s"}"#),
            "breakers[0].window.max_age: only a count window has a max_age"
        );
        assert_eq!(
            error(r#""window": {"type": "time", "size": 10}"#),
            "breakers[0].window.size: a time window's size is a duration such as \"10s\""
        );
        assert_eq!(
            error(r#""window": {"type": "count", "size": "10s"}"#),
            "breakers[0].window.size: a count window's size is a whole number of calls"
        );
        assert_eq!(
            error(r#""window": {"type": "count", "size": 2.5}"#),
            "breakers[0].window.size: invalid type: floating point `2.5`, expected a duration such as \"10s\" or a whole number of calls"
        );
        assert_eq!(
            error(r#""window": {"type": "count", "size": 5000000000}"#),
            "breakers[0].window.size: must be from 1 to 1000 calls, got 5000000000"
        );
        assert_eq!(
            error(r#""window": {"type": "time", "size": "10"}"#),
            "breakers[0].window.size: invalid duration \"10\": missing unit (ns, us, ms, s, m or h)"
        );
        assert_eq!(
            error(r#""window": {"type": "hourly", "size": "1h"}"#),
            "breakers[0].window.type: unknown variant `hourly`, expected `time` or `count`"
        );
        assert_eq!(
            error(r#""window": {"type": "time", "size": "10s", "kind": "x"}"#),
            "breakers[0].window.kind: unknown field `kind`, expected one of `type`, `size`, `max_age`"
        );
        assert_eq!(
            error(r#""window": {"type": "time"}"#),
            "breakers[0].window: missing field `size`"
        );
        assert_eq!(
            error(r#""fallback": {"headers": {"x-a": "1", "x-b": "2", "x-a": "3"}}"#),
            "breakers[0].fallback.headers.x-a: appears twice; each member may appear once"
        );
        assert_eq!(
            error(r#""fallback": {"headers": {"x-a": 1}}"#),
            "breakers[0].fallback.headers.x-a: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            error(r#""minimum_calls": 1.5"#),
            "breakers[0].minimum_calls: invalid type: floating point `1.5`, expected u32"
        );
        assert_eq!(
            error(r#""open_duration": 30"#),
            "breakers[0].open_duration: invalid type: integer `30`, expected a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\""
        );
        assert_eq!(
            error(r#""mode": "enforce", "mode": "shadow""#),
            "breakers[0].mode: appears twice; each member may appear once"
        );
    }

    #[test]
    fn null_means_the_default() {
        let nulls = r#"{"breakers": [{"name": "n", "match": null, "window": null,
            "minimum_calls": null, "failure_rate_threshold": null, "slow_call_duration": null,
            "slow_call_rate_threshold": null, "open_duration": null, "half_open_calls": null,
            "half_open_timeout": null, "failure_statuses": null, "mode": null,
            "fallback": {"status": null, "headers": null, "body": null}}]}"#;
        let b = compile(nulls).unwrap();
        let d = compile(r#"{"breakers": [{"name": "n", "fallback": {}}]}"#).unwrap();
        assert_eq!(b[0].policy, d[0].policy);
        assert_eq!(b[0].failure_statuses, d[0].failure_statuses);
        assert_eq!((b[0].mode, &b[0].fallback), (d[0].mode, &d[0].fallback));
        let c = compile(r#"{"breakers": [{"name": "c", "window": {"type": "count", "size": 5, "max_age": null}}]}"#)
            .unwrap();
        assert_eq!(
            c[0].policy.window,
            Shape::Count {
                size: 5,
                max_age: Duration::from_secs(60)
            }
        );
        assert!(compile(r#"{"breakers": null}"#).unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn hostile_config_never_panics(text in ".{0,200}") {
            if let Ok(c) = parse::<CircuitBreakerConfig>(text.as_bytes()) {
                let _ = c.compile();
            }
        }
    }
}
