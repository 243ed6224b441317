//! Configuration parsing: once, strictly, with errors that name the field.
//!
//! Each filter's configuration is the JSON text of the Wasm plugin's `configuration` field
//! (a `google.protobuf.StringValue` in Envoy YAML, `pluginConfig` in Istio). It is parsed in
//! `on_configure` into typed structs marked `#[serde(deny_unknown_fields)]`, then validated
//! into the filter's compiled form. Any error becomes one [`ConfigError`] whose path points at
//! the offending field, e.g. `rules[1].limit.requests: must be a positive integer, got -3`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A configuration the filter refuses, with the field path (`rules[1].limit`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    reason: String,
}

impl ConfigError {
    /// An error at `path` (empty for the document itself).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The field path, in `a.b[2].c` form; empty when the whole document is at fault.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error, seen from a document that holds this one's as its member `name`.
    pub fn within(self, name: &str) -> Self {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else if self.path.starts_with('[') {
            format!("{name}{}", self.path)
        } else {
            format!("{name}.{}", self.path)
        };
        Self { path, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Builds field paths while validating nested config, so errors point at the right place.
///
/// ```
/// # use filter_core::config::FieldPath;
/// let rules = FieldPath::root().field("rules");
/// assert_eq!(rules.index(1).field("limit").to_string(), "rules[1].limit");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// The member `name` of this object.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The element `i` of this array.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// An error at this path.
    pub fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.0.clone(), reason)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a plugin configuration. Empty (or all-whitespace) input means `{}`, so a filter
/// whose fields all have defaults can be loaded with no `configuration` at all.
///
/// serde_json reports where in the text a value was refused; [`path_at`] turns that position
/// into the field path. (Tracking the path while deserializing, as serde_path_to_error does,
/// instantiates every config type's deserializer a second time: about 60 KB of each module.)
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|err| {
        let path = path_at(text, error_offset(text, err.line(), err.column()));
        let message = err.to_string();
        let reason = match err.classify() {
            // Position is what helps with a JSON syntax error...
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("invalid JSON: {message}")
            }
            // ...while for a wrong value the field path says more than a column number.
            _ => strip_position(&message).to_owned(),
        };
        ConfigError::new(path, reason)
    })
}

/// The byte serde_json's `line:column` (1-based line; column = bytes consumed on that line)
/// points at: the last byte it read or peeked before refusing.
fn error_offset(text: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line.checked_sub(2) {
        None => 0,
        Some(newlines_before) => text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(newlines_before)
            .map_or(0, |(i, _)| i + 1),
    };
    (line_start + column).saturating_sub(1)
}

/// One open JSON container while scanning for a path.
enum Frame {
    /// An object, and the key of the member being read (none before its first key).
    Object(Option<String>),
    /// An array, and the index of the element being read.
    Array(usize),
}

fn render(frames: &[Frame]) -> String {
    let mut out = String::new();
    for frame in frames {
        match frame {
            Frame::Object(Some(key)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Frame::Object(None) => {}
            Frame::Array(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// The field path (`rules[1].limit.per`) of the value, or object member key, that covers byte
/// `target` of a JSON text; a closing bracket belongs to its container. Stops at `target`, so
/// whatever follows it may be malformed.
pub fn path_at(text: &[u8], target: usize) -> String {
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        let token_end = match byte {
            b'{' | b'[' => {
                frames.push(if byte == b'{' {
                    Frame::Object(None)
                } else {
                    Frame::Array(0)
                });
                i
            }
            b'}' | b']' => {
                let container = frames.len().saturating_sub(1);
                if i >= target {
                    return render(frames.get(..container).unwrap_or(&[]));
                }
                frames.pop();
                i
            }
            b',' => {
                match frames.last_mut() {
                    Some(Frame::Object(key)) => *key = None,
                    Some(Frame::Array(index)) => *index += 1,
                    None => {}
                }
                i
            }
            b'"' => {
                let end = string_end(text, i);
                if let Some(Frame::Object(key @ None)) = frames.last_mut() {
                    // A member's key; escapes are left as written.
                    let raw = text.get(i + 1..end).unwrap_or(&[]);
                    *key = Some(String::from_utf8_lossy(raw).into_owned());
                }
                end
            }
            b if b.is_ascii_whitespace() || b == b':' => i,
            _ => scalar_end(text, i),
        };
        if token_end >= target {
            return render(&frames);
        }
        i = token_end + 1;
    }
    render(&frames)
}

/// The index of the quote closing the string that opens at `start`.
fn string_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// The last byte of the number or literal that starts at `start`.
fn scalar_end(text: &[u8], start: usize) -> usize {
    let rest = text.get(start..).unwrap_or(&[]);
    let len = rest
        .iter()
        .position(|b| b.is_ascii_whitespace() || b",:[]{}\"".contains(b))
        .unwrap_or(rest.len());
    start + len.max(1) - 1
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message),
        None => message,
    }
}

/// Checks a name that will appear in metric names, header items and shared-data keys: 1 to
/// 64 ASCII letters, digits, `_` or `-`.
pub fn check_name(name: &str, at: &FieldPath) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(at.error(format!(
            "{name:?}: use 1 to 64 letters, digits, '_' or '-' (it names metrics and headers)"
        )))
    }
}

/// A duration written with a unit: `"250ms"`, `"1.5s"`, `"10m"`, `"1h"`.
///
/// Units: `ns`, `us`, `ms`, `s`, `m`, `h`. A decimal fraction is allowed as long as the result
/// is a whole number of nanoseconds. A bare number is refused: `"10"` could mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than parse-after-deserialize: serde_json then pins the error to
        // this value's position, which is how `parse_json` finds the field path.
        struct DurationText;
        impl serde::de::Visitor<'_> for DurationText {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationText)
    }
}

/// Parses `"<decimal><unit>"` exactly, with integer arithmetic (no float rounding).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let complain = |why: &str| format!("invalid duration {text:?}: {why}");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| complain("missing unit (ns, us, ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(complain("unknown unit (use ns, us, ms, s, m or h)")),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || whole.len() > 20 || fraction.len() > 18 || fraction.contains('.') {
        return Err(complain("expected a decimal number before the unit"));
    }
    if number.ends_with('.') {
        return Err(complain("expected digits after the decimal point"));
    }
    let whole: u128 = whole
        .parse()
        .map_err(|_| complain("expected a decimal number before the unit"))?;
    let mut nanos = whole
        .checked_mul(unit_nanos)
        .ok_or_else(|| complain("too large"))?;
    if !fraction.is_empty() {
        let digits: u128 = fraction
            .parse()
            .map_err(|_| complain("expected digits after the decimal point"))?;
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(u32::MAX).min(18));
        let scaled = digits * unit_nanos;
        if !scaled.is_multiple_of(scale) {
            return Err(complain("finer than one nanosecond"));
        }
        nanos = nanos
            .checked_add(scaled / scale)
            .ok_or_else(|| complain("too large"))?;
    }
    let nanos = u64::try_from(nanos).map_err(|_| complain("too large"))?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        #[allow(dead_code)]
        requests: u32,
        #[allow(dead_code)]
        per: ConfigDuration,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        limit: Limit,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[test]
    fn error_names_the_nested_field() {
        let err = parse_json::<Doc>(
            br#"{"rules":[{"limit":{"requests":1,"per":"1s"}},{"limit":{"requests":-3,"per":"1s"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.path(), "rules[1].limit.requests");
        assert!(err.reason().contains("-3"), "{err}");
        assert!(!err.reason().contains("line"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"1s","brust":2}}]}"#)
                .unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.brust");
        assert!(err.reason().contains("unknown field `brust`"), "{err}");
        let err = parse_json::<Doc>(br#"{"rulez":[]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rulez: unknown field `rulez`, expected `rules`"
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"10"}}]}"#).unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.per");
        assert!(err.reason().contains("missing unit"), "{err}");
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":10}}]}"#).unwrap_err();
        assert!(err.reason().contains("string with a unit"), "{err}");
    }

    #[test]
    fn paths_follow_the_position_through_nesting_and_whitespace() {
        let text = br#"{ "a": [ {"b": 1}, {"c": "x", "d": [true, null]} ], "e": {} }"#;
        let at = |needle: &str| {
            let offset = text
                .windows(needle.len())
                .position(|w| w == needle.as_bytes());
            path_at(text, offset.unwrap())
        };
        assert_eq!(at("1}"), "a[0].b");
        assert_eq!(at("\"c\""), "a[1].c");
        assert_eq!(at("\"x\""), "a[1].c");
        assert_eq!(at("null"), "a[1].d[1]");
        assert_eq!(at("]}"), "a[1].d");
        assert_eq!(at("} ]"), "a[1]");
        assert_eq!(at("{} }"), "e");
        assert_eq!(path_at(text, 0), "");
        assert_eq!(path_at(text, 10_000), "");
    }

    #[test]
    fn errors_on_later_lines_name_their_field() {
        let err = parse_json::<Doc>(
            b"{\n  \"rules\": [\n    {\"limit\": {\"requests\": 1, \"per\": \"1s\"}},\n    {\"limit\": {\"requests\": 1}}\n  ]\n}",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "rules[1].limit: missing field `per`");
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert!(parse_json::<Doc>(b"").unwrap().rules.is_empty());
        assert!(parse_json::<Doc>(b"  \n").unwrap().rules.is_empty());
    }

    #[test]
    fn syntax_errors_keep_their_position_and_trailing_garbage_is_refused() {
        let err = parse_json::<Doc>(b"{\"rules\": [").unwrap_err();
        assert!(err.reason().starts_with("invalid JSON"), "{err}");
        let err = parse_json::<Doc>(b"{} {}").unwrap_err();
        assert!(err.reason().starts_with("invalid JSON"), "{err}");
    }

    #[test]
    fn durations_parse_exactly() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("1.25us"), Duration::from_nanos(1250));
        for bad in [
            "",
            "10",
            "s",
            "1.5",
            "-1s",
            "1.s",
            ".5s",
            "1..5s",
            "1.5ns",
            "1 s",
            "1S",
            "1d",
            "99999999999999999999999h",
            "1e3ms",
            "NaNs",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn path_at_never_panics(text in proptest::collection::vec(any::<u8>(), 0..200), target in 0usize..220) {
            let _ = path_at(&text, target);
        }

        #[test]
        fn duration_parser_never_panics(text in ".{0,40}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..10_000_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn config_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_json::<Doc>(&bytes);
        }
    }
}
