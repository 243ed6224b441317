//! The `circuit_breaker` configuration, parsed strictly and compiled once.

use crate::state::{OpenInterval, Policy};
use crate::window::Shape;
use filter_core::config::{
    ConfigDuration, ConfigError, FieldPath, NamedMap, check_name, null_default, parse_duration,
    quoted, show_duration,
};
use filter_core::decision::grpc;
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
    /// Default `"30s"`; a fixed duration or a growing [`OpenBackoffConfig`].
    pub open_duration: Option<OpenDurationConfig>,
    /// Default 3.
    pub half_open_calls: Option<u32>,
    /// Default `"10s"`.
    pub half_open_timeout: Option<ConfigDuration>,
    /// Default `[500, 502, 503, 504]`.
    pub failure_statuses: Option<Vec<u16>>,
    /// gRPC calls only; default `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`,
    /// `RESOURCE_EXHAUSTED`.
    pub failure_grpc_statuses: Option<Vec<GrpcCodeConfig>>,
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

/// `open_duration` as written: `"30s"` (fixed), or
/// `{"initial": "5s", "multiplier": 2, "max": "5m", "jitter": 0.1}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpenDurationConfig {
    /// The same interval after every trip.
    Fixed(Duration),
    /// An interval that grows with consecutive trips.
    Backoff(OpenBackoffConfig),
}

/// A growing open interval as written.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBackoffConfig {
    /// The first trip's interval (required).
    pub initial: ConfigDuration,
    /// Growth per consecutive trip; default 2.
    pub multiplier: Option<f64>,
    /// The longest interval; default 10 times `initial`.
    pub max: Option<ConfigDuration>,
    /// The random spread, a fraction of the interval from 0 to 1; default 0.1.
    pub jitter: Option<f64>,
}

impl<'de> Deserialize<'de> for OpenDurationConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;

        impl<'de> Visitor<'de> for Either {
            type Value = OpenDurationConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"30s\", or a backoff such as \
                     {\"initial\": \"5s\", \"multiplier\": 2, \"max\": \"5m\"}",
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text)
                    .map(OpenDurationConfig::Fixed)
                    .map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // The map access as given keeps the field path for errors inside it.
                OpenBackoffConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(OpenDurationConfig::Backoff)
            }
        }

        deserializer.deserialize_any(Either)
    }
}

/// A gRPC status code as written: its canonical name (`"UNAVAILABLE"`) or its number (`14`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcCodeConfig {
    /// A name, checked when compiled.
    Name(String),
    /// A number, checked when compiled.
    Number(u64),
}

impl<'de> Deserialize<'de> for GrpcCodeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;

        impl Visitor<'_> for Code {
            type Value = GrpcCodeConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status code name such as \"UNAVAILABLE\" or its number")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(GrpcCodeConfig::Name(text.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, code: u64) -> Result<Self::Value, E> {
                Ok(GrpcCodeConfig::Number(code))
            }
        }

        deserializer.deserialize_any(Code)
    }
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
    /// gRPC status codes that are failures, for gRPC calls.
    pub failure_grpc_statuses: Vec<u32>,
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
        open: compile_open_duration(b.open_duration, &at.field("open_duration"))?,
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
    let failure_grpc_statuses = match b.failure_grpc_statuses {
        None => DEFAULT_FAILURE_GRPC_STATUSES.to_vec(),
        Some(codes) => codes
            .iter()
            .enumerate()
            .map(|(i, code)| grpc_code(code, &at.field("failure_grpc_statuses").index(i)))
            .collect::<Result<_, _>>()?,
    };
    let fallback = match b.fallback {
        None => None,
        Some(f) => Some(compile_fallback(f, &at.field("fallback"))?),
    };
    Ok(Breaker {
        key: format!("cb2/{}", b.name),
        name: b.name,
        matcher,
        policy,
        failure_statuses,
        failure_grpc_statuses,
        mode: b.mode,
        fallback,
    })
}

/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `RESOURCE_EXHAUSTED`: the server
/// is down, slow, broken or out of capacity. Client errors (`INVALID_ARGUMENT`, `NOT_FOUND`,
/// ...) say nothing about the upstream's health.
pub const DEFAULT_FAILURE_GRPC_STATUSES: [u32; 5] = [14, 4, 13, 2, 8];

/// The longest open interval (a day).
const MAX_OPEN: Duration = Duration::from_secs(86_400);

fn grpc_code(code: &GrpcCodeConfig, at: &FieldPath) -> Result<u32, ConfigError> {
    match code {
        GrpcCodeConfig::Name(name) => grpc::code_named(name).ok_or_else(|| {
            at.error(format!(
                "{} is not a gRPC status code name ({})",
                quoted(name),
                grpc::NAMES.join(", ")
            ))
        }),
        GrpcCodeConfig::Number(n) => u32::try_from(*n)
            .ok()
            .filter(|n| grpc::name_of(*n).is_some())
            .ok_or_else(|| at.error(format!("{n} is not a gRPC status code (0 to 16)"))),
    }
}

fn fraction(
    value: Option<f64>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
    at: &FieldPath,
) -> Result<f64, ConfigError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(at.error(format!(
            "must be from {} to {}, got {v}",
            range.start(),
            range.end()
        )))
    }
}

fn compile_open_duration(
    open: Option<OpenDurationConfig>,
    at: &FieldPath,
) -> Result<OpenInterval, ConfigError> {
    let range = Duration::from_millis(1)..=MAX_OPEN;
    match open {
        None => Ok(OpenInterval::fixed(Duration::from_secs(30))),
        Some(OpenDurationConfig::Fixed(d)) => Ok(OpenInterval::fixed(duration(
            Some(ConfigDuration(d)),
            d,
            range,
            at,
        )?)),
        Some(OpenDurationConfig::Backoff(b)) => {
            let initial = duration(
                Some(b.initial),
                Duration::ZERO,
                range.clone(),
                &at.field("initial"),
            )?;
            let default_max = initial.saturating_mul(10).min(MAX_OPEN);
            let max = duration(b.max, default_max, range, &at.field("max"))?;
            if max < initial {
                return Err(at.field("max").error(format!(
                    "must be at least initial ({}), got {}",
                    show_duration(initial),
                    show_duration(max)
                )));
            }
            Ok(OpenInterval {
                initial,
                multiplier: fraction(b.multiplier, 2.0, 1.0..=100.0, &at.field("multiplier"))?,
                max,
                jitter: fraction(b.jitter, 0.1, 0.0..=1.0, &at.field("jitter"))?,
            })
        }
    }
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
        assert_eq!(b[0].key, "cb2/orders");
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
        assert_eq!(p.open, OpenInterval::fixed(Duration::from_secs(30)));
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
            "breakers[0].open_duration: invalid type: integer `30`, expected a duration such as \"30s\", or a backoff such as {\"initial\": \"5s\", \"multiplier\": 2, \"max\": \"5m\"}"
        );
        assert_eq!(
            error(r#""open_duration": {"initial": "1s", "multplier": 2}"#),
            "breakers[0].open_duration.multplier: unknown field `multplier`, expected one of `initial`, `multiplier`, `max`, `jitter`"
        );
        assert_eq!(
            error(r#""open_duration": {"initial": 5}"#),
            "breakers[0].open_duration.initial: invalid type: integer `5`, expected a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\""
        );
        assert_eq!(
            error(r#""open_duration": {"max": "1m"}"#),
            "breakers[0].open_duration: missing field `initial`"
        );
        assert_eq!(
            error(r#""open_duration": {"initial": "10s", "max": "5s"}"#),
            "breakers[0].open_duration.max: must be at least initial (10s), got 5s"
        );
        assert_eq!(
            error(r#""open_duration": {"initial": "1s", "multiplier": 0.5}"#),
            "breakers[0].open_duration.multiplier: must be from 1 to 100, got 0.5"
        );
        assert_eq!(
            error(r#""open_duration": {"initial": "1s", "jitter": 1.5}"#),
            "breakers[0].open_duration.jitter: must be from 0 to 1, got 1.5"
        );
        assert_eq!(
            error(r#""failure_grpc_statuses": ["UNAVAILABLE", "UNAVALABLE"]"#),
            "breakers[0].failure_grpc_statuses[1]: \"UNAVALABLE\" is not a gRPC status code name (OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED)"
        );
        assert_eq!(
            error(r#""failure_grpc_statuses": [14, 17]"#),
            "breakers[0].failure_grpc_statuses[1]: 17 is not a gRPC status code (0 to 16)"
        );
        assert_eq!(
            error(r#""failure_grpc_statuses": [true]"#),
            "breakers[0].failure_grpc_statuses[0]: invalid type: boolean `true`, expected a gRPC status code name such as \"UNAVAILABLE\" or its number"
        );
        assert_eq!(
            error(r#""mode": "enforce", "mode": "shadow""#),
            "breakers[0].mode: appears twice; each member may appear once"
        );
    }

    #[test]
    fn open_duration_is_fixed_or_a_backoff_and_grpc_codes_take_names_or_numbers() {
        let b = compile(
            r#"{"breakers": [{"name": "a", "open_duration": {"initial": "2s"},
                "failure_grpc_statuses": ["UNAVAILABLE", 4, "INTERNAL"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            b[0].policy.open,
            OpenInterval {
                initial: Duration::from_secs(2),
                multiplier: 2.0,
                max: Duration::from_secs(20),
                jitter: 0.1,
            }
        );
        assert_eq!(b[0].failure_grpc_statuses, [14, 4, 13]);
        let b = compile(
            r#"{"breakers": [{"name": "a",
                "open_duration": {"initial": "1s", "multiplier": 1.5, "max": "1m", "jitter": 0}}]}"#,
        )
        .unwrap();
        assert_eq!(b[0].policy.open.multiplier, 1.5);
        assert_eq!(b[0].policy.open.max, Duration::from_secs(60));
        assert_eq!(b[0].policy.open.jitter, 0.0);
        let d = compile(r#"{"breakers": [{"name": "d", "open_duration": "5s"}]}"#).unwrap();
        assert_eq!(
            d[0].policy.open,
            OpenInterval::fixed(Duration::from_secs(5))
        );
        assert_eq!(d[0].failure_grpc_statuses, [14, 4, 13, 2, 8]);
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
