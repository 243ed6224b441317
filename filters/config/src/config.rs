//! Configuration parsing: once, strictly, with errors that name the field.
//!
//! Each filter's configuration is the JSON text of the Wasm plugin's `configuration` field
//! (a `google.protobuf.StringValue` in Envoy YAML, `pluginConfig` in Istio). In `on_configure`
//! it is read into a [`Json`] tree by our strict reader, converted into typed structs by their
//! [`FromJson`] impls (unknown members are errors, see [`Members::of`]), then validated into
//! the filter's compiled form. Any error becomes one [`ConfigError`] whose path points at the
//! offending field, e.g. `rules[1].limit.requests: must be a whole number from 0 to 4294967295,
//! got -3`.
//!
//! As in protobuf's JSON mapping, `null` means the same as leaving a member out, so YAML that
//! writes `field: ~` or templates that render empty values get the documented default.

use crate::json::{self, Fault, Json, JsonError, Limits};
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

/// Parses a plugin configuration. Empty (or all-whitespace) input means `{}`, so a filter
/// whose fields all have defaults can be loaded with no `configuration` at all.
pub fn parse_json<T: FromJson>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let tree = json::parse(text, Limits::TRUSTED).map_err(|fault| refusal(text, fault))?;
    T::from_json(&tree, &FieldPath::root())
}

/// A document the JSON reader refused, as an error at the field it happened in.
fn refusal(text: &[u8], fault: Fault) -> ConfigError {
    let reason = match fault.error {
        // Position is what helps with a syntax error...
        JsonError::Syntax { line, column } => {
            format!(
                "invalid JSON: {} at line {line} column {column}",
                fault.detail
            )
        }
        // ...while for the rest the field path says more.
        JsonError::DuplicateMember => "appears twice; each member may appear once".to_owned(),
        other => format!("invalid JSON: {other}"),
    };
    ConfigError::new(path_at(text, fault.offset), reason)
}

/// A configuration type read from its JSON value. Implemented by hand rather than derived:
/// see [`crate::json`] for why.
pub trait FromJson: Sized {
    /// Reads `value`, found at `at`; an error names `at` or a field below it.
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError>;
}

/// "expected `what`, got <the value>", at `at`.
pub fn expected(what: &str, value: &Json, at: &FieldPath) -> ConfigError {
    at.error(format!("expected {what}, got {}", value.describe()))
}

impl FromJson for String {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::String(s) => Ok(s.clone()),
            other => Err(expected("a string", other, at)),
        }
    }
}

impl FromJson for bool {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Bool(b) => Ok(*b),
            other => Err(expected("`true` or `false`", other, at)),
        }
    }
}

impl FromJson for f64 {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Number(n) => Ok(n.as_f64()),
            other => Err(expected("a number", other, at)),
        }
    }
}

/// A whole number from 0 to `max`.
fn unsigned(value: &Json, at: &FieldPath, max: u64) -> Result<u64, ConfigError> {
    match value {
        Json::Number(n) => n.as_u64().filter(|v| *v <= max).ok_or_else(|| {
            at.error(format!(
                "must be a whole number from 0 to {max}, got {}",
                n.as_str()
            ))
        }),
        other => Err(expected(
            &format!("a whole number from 0 to {max}"),
            other,
            at,
        )),
    }
}

macro_rules! unsigned_from_json {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
                let n = unsigned(value, at, <$t>::MAX as u64)?;
                <$t>::try_from(n).map_err(|_| at.error("out of range"))
            }
        }
    )*};
}
unsigned_from_json!(u8, u16, u32, u64, usize);

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| T::from_json(item, &at.index(i)))
                .collect(),
            other => Err(expected("an array", other, at)),
        }
    }
}

/// An object whose member names are free (providers by name, header names), each value a
/// `T`, in document order; the reader has already refused a name given twice. (A list, not a
/// BTreeMap: the map's code and the sort that builds it cost 10 KB per module.)
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Named<T> {
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

impl<T> IntoIterator for Named<T> {
    type Item = (String, T);
    type IntoIter = std::vec::IntoIter<(String, T)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: FromJson> FromJson for Named<T> {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Object(object) => object
                .members()
                .iter()
                .map(|(name, item)| Ok((name.clone(), T::from_json(item, &at.field(name))?)))
                .collect::<Result<Vec<_>, _>>()
                .map(Self),
            other => Err(expected("an object", other, at)),
        }
    }
}

impl<T: FromJson> FromJson for Option<T> {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Null => Ok(None),
            other => T::from_json(other, at).map(Some),
        }
    }
}

/// Reads an object's members by name. The names it may have are declared up front, so an
/// unknown member is refused before anything else is read (a misspelt optional field is the
/// error to report, not the required one it stood for).
///
/// ```
/// # use filter_config::config::{parse_json, ConfigError, FieldPath, FromJson, Members};
/// # use filter_config::json::Json;
/// struct Limit { requests: u32, burst: Option<u32> }
/// impl FromJson for Limit {
///     fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
///         Members::read(value, at, &["requests", "burst"], |m| {
///             Ok(Limit { requests: m.required("requests")?, burst: m.field("burst")? })
///         })
///     }
/// }
/// let err = parse_json::<Limit>(br#"{"requests": 1, "brust": 2}"#).err().unwrap();
/// assert_eq!(err.to_string(), "brust: unknown field `brust`, expected one of `requests`, `burst`");
/// ```
#[derive(Debug)]
pub struct Members<'a> {
    at: &'a FieldPath,
    members: &'a [(String, Json)],
    fields: &'static [&'static str],
    read: Vec<&'static str>,
}

impl<'a> Members<'a> {
    /// The members of `value`, which must be an object with no member outside `fields`.
    pub fn of(
        value: &'a Json,
        at: &'a FieldPath,
        fields: &'static [&'static str],
    ) -> Result<Self, ConfigError> {
        let Json::Object(object) = value else {
            return Err(expected("an object", value, at));
        };
        if let Some((name, _)) = object
            .members()
            .iter()
            .find(|(name, _)| !fields.contains(&name.as_str()))
        {
            return Err(at.field(name).error(format!(
                "unknown field `{name}`, {}",
                choices(fields, "there are no fields")
            )));
        }
        Ok(Self {
            at,
            members: object.members(),
            fields,
            read: Vec::new(),
        })
    }

    /// Reads an object: `read` takes its members (see [`Members::of`]), then they are
    /// [`Members::finish`]ed.
    pub fn read<T>(
        value: &'a Json,
        at: &'a FieldPath,
        fields: &'static [&'static str],
        read: impl FnOnce(&mut Members<'a>) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        let mut members = Self::of(value, at, fields)?;
        let result = read(&mut members)?;
        members.finish();
        Ok(result)
    }

    /// The raw value of the member `name`, if present and not `null`.
    fn raw(&mut self, name: &'static str) -> Option<&'a Json> {
        debug_assert!(self.fields.contains(&name), "{name} is not declared");
        self.read.push(name);
        self.members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Json::Null))
    }

    /// The member `name`, if present and not `null`.
    pub fn field<T: FromJson>(&mut self, name: &'static str) -> Result<Option<T>, ConfigError> {
        match self.raw(name) {
            Some(value) => T::from_json(value, &self.at.field(name)).map(Some),
            None => Ok(None),
        }
    }

    /// The member `name`, or `T`'s default when absent.
    pub fn or_default<T: FromJson + Default>(
        &mut self,
        name: &'static str,
    ) -> Result<T, ConfigError> {
        Ok(self.field(name)?.unwrap_or_default())
    }

    /// The member `name`, which must be present.
    pub fn required<T: FromJson>(&mut self, name: &'static str) -> Result<T, ConfigError> {
        self.field(name)?
            .ok_or_else(|| self.at.error(format!("missing field `{name}`")))
    }

    /// Ends the reading. In tests, checks that every declared field was read: a declared
    /// field nobody reads would be accepted and silently ignored.
    pub fn finish(self) {
        debug_assert!(
            self.fields.iter().all(|f| self.read.contains(f)),
            "{}: declared fields left unread",
            self.at
        );
    }
}

/// "expected `a`", or "expected one of `a`, `b`", or `none` when there is nothing to expect.
fn choices(names: &[&str], none: &str) -> String {
    match names {
        [] => none.to_owned(),
        [one] => format!("expected `{one}`"),
        many => {
            let quoted: Vec<String> = many.iter().map(|n| format!("`{n}`")).collect();
            format!("expected one of {}", quoted.join(", "))
        }
    }
}

/// Reads a string naming one of `variants` (`"draft"`, `"legacy"`, ...).
pub fn variant<T: Copy>(
    value: &Json,
    at: &FieldPath,
    variants: &[(&str, T)],
) -> Result<T, ConfigError> {
    let names: Vec<&str> = variants.iter().map(|(name, _)| *name).collect();
    match value {
        Json::String(s) => variants
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| at.error(unknown_variant(s, &names))),
        other => Err(at.error(format!(
            "{}, got {}",
            choices(&names, "a string"),
            other.describe()
        ))),
    }
}

/// "unknown variant `x`, expected one of `a`, `b`".
pub fn unknown_variant(name: &str, expected: &[&str]) -> String {
    format!(
        "unknown variant `{name}`, {}",
        choices(expected, "there are none")
    )
}

/// Reads an object with exactly one member, whose name says which kind it is
/// (`{"header": "x-user-id"}`): returns that name and its value.
pub fn tagged<'a>(value: &'a Json, at: &FieldPath) -> Result<(&'a str, &'a Json), ConfigError> {
    match value {
        Json::Object(object) => match object.members() {
            [(name, inner)] => Ok((name, inner)),
            _ => Err(at.error(format!(
                "expected an object with exactly one member naming its kind, got {} members",
                object.len()
            ))),
        },
        other => Err(expected(
            "an object with one member naming its kind",
            other,
            at,
        )),
    }
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

/// `text` in double quotes, with quotes, backslashes and control characters escaped: how
/// messages show a configured string. (`{:?}` would do, but brings 4 KB of Unicode tables.)
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
/// holds it exactly: `1500ms`, `30s`. (Duration's `{:?}` costs 1.6 KB of code.)
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

impl FromJson for ConfigDuration {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::String(text) => parse_duration(text)
                .map(ConfigDuration)
                .map_err(|e| at.error(e)),
            other => Err(expected(
                "a duration: a string with a unit such as \"250ms\", \"1.5s\", \"10m\"",
                other,
                at,
            )),
        }
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

    #[derive(Debug)]
    struct Limit {
        #[allow(dead_code)]
        requests: u32,
        #[allow(dead_code)]
        per: ConfigDuration,
    }

    impl FromJson for Limit {
        fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
            Members::read(value, at, &["requests", "per"], |m| {
                Ok(Limit {
                    requests: m.required("requests")?,
                    per: m.required("per")?,
                })
            })
        }
    }

    #[derive(Debug)]
    struct Rule {
        #[allow(dead_code)]
        limit: Limit,
    }

    impl FromJson for Rule {
        fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
            Members::read(value, at, &["limit"], |m| {
                Ok(Rule {
                    limit: m.required("limit")?,
                })
            })
        }
    }

    #[derive(Debug)]
    struct Doc {
        rules: Vec<Rule>,
    }

    impl FromJson for Doc {
        fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
            Members::read(value, at, &["rules"], |m| {
                Ok(Doc {
                    rules: m.or_default("rules")?,
                })
            })
        }
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
    fn duplicate_members_name_the_second_one() {
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":"1s","per":"2s"}}]}"#)
                .unwrap_err();
        assert_eq!(err.path(), "rules[0].limit.per");
        assert!(err.reason().contains("twice"), "{err}");
    }

    #[test]
    fn null_means_absent() {
        assert!(
            parse_json::<Doc>(br#"{"rules": null}"#)
                .unwrap()
                .rules
                .is_empty()
        );
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"per":null}}]}"#).unwrap_err();
        assert_eq!(err.to_string(), "rules[0].limit: missing field `per`");
    }

    #[test]
    fn unknown_fields_are_reported_before_missing_ones() {
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1,"pre":"1s"}}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules[0].limit.pre: unknown field `pre`, expected one of `requests`, `per`"
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        let err = parse_json::<Doc>(br#"{"rules": {}}"#).unwrap_err();
        assert_eq!(err.to_string(), "rules: expected an array, got an object");
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":1.5,"per":"1s"}}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules[0].limit.requests: must be a whole number from 0 to 4294967295, got 1.5"
        );
        let err =
            parse_json::<Doc>(br#"{"rules":[{"limit":{"requests":"1","per":"1s"}}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules[0].limit.requests: expected a whole number from 0 to 4294967295, got a string"
        );
        let err = parse_json::<Doc>(b"[]").unwrap_err();
        assert_eq!(err.to_string(), "expected an object, got an array");
    }

    #[test]
    fn variants_and_tagged_objects() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Dialect {
            Draft,
            Legacy,
        }
        let variants = [("draft", Dialect::Draft), ("legacy", Dialect::Legacy)];
        let at = FieldPath::root().field("headers");
        let read = |text: &str| {
            let value = json::parse(text.as_bytes(), Limits::TRUSTED).unwrap();
            variant(&value, &at, &variants)
        };
        assert_eq!(read(r#""legacy""#), Ok(Dialect::Legacy));
        assert_eq!(
            read(r#""both""#).unwrap_err().to_string(),
            "headers: unknown variant `both`, expected one of `draft`, `legacy`"
        );
        assert_eq!(
            read("1").unwrap_err().to_string(),
            "headers: expected one of `draft`, `legacy`, got the number 1"
        );
        let value = json::parse(br#"{"header": "x"}"#, Limits::TRUSTED).unwrap();
        let (kind, inner) = tagged(&value, &at).unwrap();
        assert_eq!((kind, inner.as_str()), ("header", Some("x")));
        let value = json::parse(br#"{"header": "x", "path": {}}"#, Limits::TRUSTED).unwrap();
        assert!(tagged(&value, &at).is_err());
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
