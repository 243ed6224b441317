//! Configuration parsing: once, strictly, with errors that name the field.
//!
//! Each filter's configuration is the JSON text of the Wasm plugin's `configuration` field
//! (a `google.protobuf.StringValue` in Envoy YAML, `pluginConfig` in Istio). In `on_configure`
//! [`parse`] reads it with serde_json into the filter's raw configuration type (derived
//! `Deserialize`, `deny_unknown_fields`), then the filter validates that into its compiled
//! form. Any error becomes one [`ConfigError`] whose path points at the offending field, e.g.
//! `rules[1].limit.requests: invalid value: integer `-3`, expected u32`.
//!
//! As in protobuf's JSON mapping, `null` means the same as leaving a member out, so YAML that
//! writes `field: ~` or templates that render empty values get the documented default:
//! `Option` fields do it by themselves, defaulted ones use [`null_default`].

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_path_to_error::Segment;
use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
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
/// # use filter_config::config::FieldPath;
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

/// Parses a plugin configuration into `T`. Empty (or all-whitespace) input means `{}`, so a
/// filter whose fields all have defaults can be loaded with no `configuration` at all.
///
/// ```
/// # use filter_config::config::parse;
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Limit {
///     requests: u32,
/// }
/// let err = parse::<Vec<Limit>>(br#"[{"requests": 1}, {"requests": 2, "brust": 3}]"#);
/// assert_eq!(
///     err.unwrap_err().to_string(),
///     "[1].brust: unknown field `brust`, expected `requests`"
/// );
/// ```
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut reader = serde_json::Deserializer::from_slice(text);
    let value: T = serde_path_to_error::deserialize(&mut reader)
        .map_err(|e| refusal(field_path(e.path()), e.inner()))?;
    // Anything after the document (`{} {}`) is refused too.
    reader.end().map_err(|e| refusal(FieldPath::root(), &e))?;
    Ok(value)
}

/// serde_path_to_error's path in our `a.b[2].c` form.
fn field_path(path: &serde_path_to_error::Path) -> FieldPath {
    path.iter()
        .fold(FieldPath::root(), |at, segment| match segment {
            Segment::Seq { index } => at.index(*index),
            Segment::Map { key } | Segment::Enum { variant: key } => at.field(key),
            // A map key that is not a string: JSON has none.
            Segment::Unknown => at,
        })
}

/// serde_json's `error`, met at `at`, as a [`ConfigError`].
fn refusal(at: FieldPath, error: &serde_json::Error) -> ConfigError {
    let message = error.to_string();
    // serde_json appends the position; the field path says more, except for a syntax error.
    let position = format!(" at line {} column {}", error.line(), error.column());
    let bare = message.strip_suffix(&position).unwrap_or(&message);
    if error.is_syntax() || error.is_eof() {
        return at.error(format!("invalid JSON: {message}"));
    }
    // serde reports a member given twice at the object holding it: point at the member.
    if let Some(name) = bare
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return at
            .field(name)
            .error("appears twice; each member may appear once");
    }
    at.error(bare)
}

/// For `#[serde(default, deserialize_with = "null_default")]`: a defaulted field given as
/// `null` gets its default, as an absent one does.
pub fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An object whose member names are free (providers by name, header names), each value a
/// `T`, kept in document order. A name given twice is refused, as everywhere in configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMap<T>(Vec<(String, T)>);

impl<T> Default for NamedMap<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> NamedMap<T> {
    /// The members, in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(String, T)> for NamedMap<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<T> IntoIterator for NamedMap<T> {
    type Item = (String, T);
    type IntoIter = std::vec::IntoIter<(String, T)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NamedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Members<T> {
            type Value = NamedMap<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = BTreeSet::new();
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        // The same words serde uses for a struct's field, so both read alike.
                        return Err(de::Error::custom(format!("duplicate field `{name}`")));
                    }
                    let value = map.next_value()?;
                    members.push((name, value));
                }
                Ok(NamedMap(members))
            }
        }

        deserializer.deserialize_map(Members(PhantomData))
    }
}

/// `text` in double quotes, with quotes, backslashes and control characters escaped: how
/// messages show a configured string.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration as the configuration writes it, in the largest of `s`, `ms`, `us` and `ns` that
/// holds it exactly: `1500ms`, `30s` (as a configuration would write it, unlike `{:?}`).
pub fn show_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let (value, unit) = if nanos.is_multiple_of(1_000_000_000) {
        (nanos / 1_000_000_000, "s")
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, "ms")
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, "us")
    } else {
        (nanos, "ns")
    };
    format!("{value}{unit}")
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
            "{}: use 1 to 64 letters, digits, '_' or '-' (it names metrics and headers)",
            quoted(name)
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
        struct Text;

        impl Visitor<'_> for Text {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Text)
    }
}

/// Parses `"<decimal><unit>"` exactly, with integer arithmetic (no float rounding).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let complain = |why: &str| format!("invalid duration {}: {why}", quoted(text));
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
        #[serde(default, deserialize_with = "null_default")]
        rules: Vec<Rule>,
        #[serde(default, deserialize_with = "null_default")]
        headers: NamedMap<Option<String>>,
        name: Option<String>,
    }

    fn error(text: &str) -> String {
        parse::<Doc>(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn error_names_the_nested_field() {
        let err = parse::<Doc>(
            br#"{"rules":[{"limit":{"requests":1,"per":"1s"}},{"limit":{"requests":-3,"per":"1s"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.path(), "rules[1].limit.requests");
        assert!(err.reason().contains("-3"), "{err}");
        assert!(!err.reason().contains("line"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = parse::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"1s","brust":2}}]}"#)
            .unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.brust");
        assert!(err.reason().contains("unknown field `brust`"), "{err}");
        assert_eq!(
            error(r#"{"rulez":[]}"#),
            "rulez: unknown field `rulez`, expected one of `rules`, `headers`, `name`"
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = parse::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"10"}}]}"#).unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.per");
        assert!(err.reason().contains("missing unit"), "{err}");
        let err = parse::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":10}}]}"#).unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.per");
        assert!(err.reason().contains("string with a unit"), "{err}");
    }

    #[test]
    fn errors_on_later_lines_name_their_field() {
        let err = parse::<Doc>(
            b"{\n  \"rules\": [\n    {\"limit\": {\"requests\": 1, \"per\": \"1s\"}},\n    {\"limit\": {\"requests\": 1}}\n  ]\n}",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "rules[1].limit: missing field `per`");
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert!(parse::<Doc>(b"").unwrap().rules.is_empty());
        assert!(parse::<Doc>(b"  \n").unwrap().rules.is_empty());
    }

    #[test]
    fn syntax_errors_keep_their_position_and_trailing_garbage_is_refused() {
        let err = parse::<Doc>(b"{\"rules\": [").unwrap_err();
        assert!(err.reason().starts_with("invalid JSON"), "{err}");
        assert!(err.reason().contains("line 1 column 11"), "{err}");
        let err = parse::<Doc>(b"{} {}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON: trailing characters at line 1 column 4"
        );
        let err = parse::<Doc>(b"{\"rules\": [], // note\n}").unwrap_err();
        assert!(err.reason().starts_with("invalid JSON"), "{err}");
        let err = parse::<Doc>(b"{\"rules\": [],}").unwrap_err();
        assert!(err.reason().starts_with("invalid JSON"), "{err}");
    }

    #[test]
    fn duplicate_members_name_the_member_at_every_depth() {
        let err = parse::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"1s","per":"2s"}}]}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules[0].limit.per: appears twice; each member may appear once"
        );
        let err = parse::<Doc>(br#"{"name": "a", "name": null}"#).unwrap_err();
        assert_eq!(err.path(), "name");
        // In a free-name map too, and however its values are written.
        let err = parse::<Doc>(br#"{"headers": {"a": "1", "b": null, "a": "2"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "headers.a: appears twice; each member may appear once"
        );
    }

    #[test]
    fn free_name_maps_keep_document_order_and_name_their_members_in_errors() {
        let doc = parse::<Doc>(br#"{"headers": {"z": "1", "a": null, "m": "3"}}"#).unwrap();
        let names: Vec<&str> = doc.headers.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["z", "a", "m"]);
        assert_eq!(
            error(r#"{"headers": {"ok": "1", "bad": 2}}"#),
            "headers.bad: invalid type: integer `2`, expected a string"
        );
        assert_eq!(
            error(r#"{"headers": []}"#),
            "headers: invalid type: sequence, expected an object"
        );
    }

    #[test]
    fn null_means_absent() {
        let doc = parse::<Doc>(br#"{"rules": null, "headers": null, "name": null}"#).unwrap();
        assert!(doc.rules.is_empty() && doc.headers.is_empty() && doc.name.is_none());
        assert_eq!(
            error(r#"{"rules":[{"limit":{"requests":1,"per":null}}]}"#),
            "rules[0].limit.per: invalid type: null, expected a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\""
        );
    }

    #[test]
    fn whole_numbers_refuse_fractions_and_out_of_range_values() {
        for (requests, why) in [
            ("1.5", "invalid type: floating point `1.5`, expected u32"),
            ("1e3", "invalid type: floating point `1000.0`, expected u32"),
            ("1.0", "invalid type: floating point `1.0`, expected u32"),
            ("-3", "invalid value: integer `-3`, expected u32"),
            (
                "4294967296",
                "invalid value: integer `4294967296`, expected u32",
            ),
            ("\"1\"", "invalid type: string \"1\", expected u32"),
        ] {
            let text = format!(r#"{{"rules":[{{"limit":{{"requests":{requests},"per":"1s"}}}}]}}"#);
            assert_eq!(
                error(&text),
                format!("rules[0].limit.requests: {why}"),
                "{requests}"
            );
        }
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        assert_eq!(
            error(r#"{"rules": {}}"#),
            "rules: invalid type: map, expected a sequence"
        );
        assert_eq!(
            error(r#""rules""#),
            "invalid type: string \"rules\", expected struct Doc"
        );
    }

    #[test]
    fn an_internally_tagged_enum_would_lose_the_path_inside_it() {
        // Why circuit_breaker's window is a struct with a `type` member, not such an enum.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
        enum Window {
            Count {
                #[allow(dead_code)]
                size: u32,
            },
        }
        let err = parse::<Vec<Window>>(br#"[{"type": "count", "size": 1.5}]"#).unwrap_err();
        assert_eq!(err.path(), "[0]");
        let err = parse::<Vec<Window>>(br#"[{"type": "count", "size": 1, "x": 2}]"#).unwrap_err();
        assert_eq!(err.to_string(), "[0]: unknown field `x`, expected `size`");
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tree {
            #[allow(dead_code)]
            #[serde(default)]
            any: Vec<Tree>,
        }
        let deep = format!("{}{}", r#"{"any":["#.repeat(10_000), "]}".repeat(10_000));
        let err = parse::<Tree>(deep.as_bytes()).unwrap_err();
        assert!(err.reason().contains("recursion limit"), "{err}");
    }

    #[test]
    fn strings_and_durations_are_shown_as_written() {
        assert_eq!(quoted("a \"b\" \\ é\n"), r#""a \"b\" \\ é\u{a}""#);
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_nanos(1_001)), "1001ns");
        assert_eq!(show_duration(Duration::from_micros(5)), "5us");
        assert_eq!(show_duration(Duration::ZERO), "0s");
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
        fn duration_parser_never_panics(text in ".{0,40}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..10_000_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn config_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse::<Doc>(&bytes);
        }

        /// Whatever JSON-ish text comes in, an error is one line with a reason.
        #[test]
        fn hostile_text_is_refused_with_a_reason(text in r#"[{}\[\]",:a-z0-9 .\-]{0,80}"#) {
            if let Err(e) = parse::<Doc>(text.as_bytes()) {
                prop_assert!(!e.reason().is_empty());
            }
        }
    }
}
