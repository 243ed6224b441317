//! A strict, bounded JSON reader (RFC 8259) that builds a small tree.
//!
//! One reader serves the plugin configuration, JWT headers and claims sets, and JWKS documents.
//! It replaced serde: serde's derived deserializers were instantiated per configuration type and
//! cost each module 50 to 170 KB of code, about a third of `gateway.wasm`.
//!
//! Strict where a lenient reader would let two readers disagree: a member name that appears
//! twice in one object is refused at every depth (compared after unescaping, so `"\u0061lg"`
//! and `"alg"` collide), as RFC 7515 §5.2 and RFC 7519 §4 allow; lone surrogate escapes, control
//! characters in strings, numbers out of `f64`'s range and trailing data are refused too.
//! Depth and widths are bounded by [`Limits`], so hostile input costs bounded time and stack.
//!
//! Numbers keep the text they were written with; [`Number`] converts on demand, so an integer
//! never loses digits on its way through a float.

use std::fmt;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as written.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, members in document order.
    Object(Object),
}

impl Json {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is a string.
    pub fn is_string(&self) -> bool {
        matches!(self, Json::String(_))
    }

    /// What this value is, for error messages; echoes numbers and booleans, never strings
    /// (configuration strings may be secrets).
    pub fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_owned(),
            Json::Bool(b) => format!("`{b}`"),
            Json::Number(n) => format!("the number {}", n.as_str()),
            Json::String(_) => "a string".to_owned(),
            Json::Array(_) => "an array".to_owned(),
            Json::Object(_) => "an object".to_owned(),
        }
    }
}

/// A number as written in the document; its grammar is checked and it is within `f64`'s range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(String);

impl Number {
    /// The literal text, e.g. `-1.50e3`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is written without a fraction or an exponent.
    pub fn is_integer(&self) -> bool {
        !self.0.contains(['.', 'e', 'E'])
    }

    /// Its value, if it is written as an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        if self.is_integer() {
            self.0.parse().ok()
        } else {
            None
        }
    }

    /// Its value, if it is written as an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        if self.is_integer() {
            self.0.parse().ok()
        } else {
            None
        }
    }

    /// Its value as a float: exact (correctly rounded) for up to 15 significant digits and
    /// decimal exponents within ±22, which covers configuration and NumericDate values; within
    /// a few units in the last place beyond that. (Our own conversion, so that float parsing
    /// stays out of the modules.)
    pub fn as_f64(&self) -> f64 {
        decimal_to_f64(&self.0)
    }

    /// Its value as the text a header or a comparison should use: an integer in plain decimal
    /// (`-0` becomes `0`), anything else as written.
    pub fn canonical(&self) -> String {
        if let Some(i) = self.as_i64() {
            i.to_string()
        } else if let Some(u) = self.as_u64() {
            u.to_string()
        } else {
            self.0.clone()
        }
    }
}

/// Converts a number literal the reader accepted; see [`Number::as_f64`].
fn decimal_to_f64(text: &str) -> f64 {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (digits, exponent_text) = match unsigned.split_once(['e', 'E']) {
        Some((digits, exponent)) => (digits, exponent),
        None => (unsigned, ""),
    };
    let mut exponent: i64 = 0;
    let (exponent_negative, exponent_digits) = match exponent_text.as_bytes().split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, exponent_text.as_bytes()),
    };
    for &d in exponent_digits {
        exponent = exponent
            .saturating_mul(10)
            .saturating_add(i64::from(d.wrapping_sub(b'0')));
    }
    if exponent_negative {
        exponent = -exponent;
    }
    // Up to 19 significant digits go into the mantissa; the rest only move the exponent.
    let mut mantissa: u64 = 0;
    let mut after_point = false;
    for &b in digits.as_bytes() {
        if b == b'.' {
            after_point = true;
            continue;
        }
        let digit = u64::from(b.wrapping_sub(b'0'));
        if mantissa < 1_000_000_000_000_000_000 {
            mantissa = mantissa * 10 + digit;
            if after_point {
                exponent = exponent.saturating_sub(1);
            }
        } else if !after_point {
            exponent = exponent.saturating_add(1);
        }
    }
    let magnitude = if mantissa == 0 {
        0.0
    } else {
        // Beyond ±400 the result is infinite or zero either way; the clamp keeps powi cheap.
        let scale = 10f64.powi(i32::try_from(exponent.unsigned_abs().min(400)).unwrap_or(400));
        if exponent >= 0 {
            mantissa as f64 * scale
        } else {
            mantissa as f64 / scale
        }
    };
    if negative { -magnitude } else { magnitude }
}

/// An object's members, in document order, names unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object(Vec<(String, Json)>);

impl Object {
    /// The member named `name`.
    pub fn get(&self, name: &str) -> Option<&Json> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Whether it has a member named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The members, in document order.
    pub fn members(&self) -> &[(String, Json)] {
        &self.0
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<const N: usize> From<[(&str, Json); N]> for Object {
    fn from(members: [(&str, Json); N]) -> Self {
        Self(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }
}

/// How much nesting and width a document may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Containers may nest this deep (the top-level container counts as 1).
    pub depth: usize,
    /// An object may have at most this many members.
    pub members: usize,
    /// An array may have at most this many elements.
    pub elements: usize,
}

impl Limits {
    /// For documents an operator wrote: plugin configuration, JWKS. Deeper than any of our
    /// schemas, and members bounded so duplicate checks stay cheap.
    pub const TRUSTED: Limits = Limits {
        depth: 32,
        members: 1024,
        elements: 100_000,
    };
}

/// Why a document was refused. Carries no input text, so it is safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Not well-formed JSON (including a lone surrogate escape, or a number out of range).
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error.
        column: usize,
    },
    /// Well-formed JSON, but not an object at the top level.
    NotObject,
    /// Something other than whitespace follows the document.
    TrailingData,
    /// An object has two members with the same (unescaped) name.
    DuplicateMember,
    /// Containers nest deeper than the limit.
    TooDeep,
    /// An object has more members than the limit.
    TooManyMembers,
    /// An array has more elements than the limit.
    TooManyElements,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::NotUtf8 => f.write_str("not UTF-8"),
            JsonError::Syntax { line, column } => {
                write!(f, "malformed JSON at line {line} column {column}")
            }
            JsonError::NotObject => f.write_str("not a JSON object"),
            JsonError::TrailingData => f.write_str("data after the JSON document"),
            JsonError::DuplicateMember => f.write_str("duplicate member name"),
            JsonError::TooDeep => f.write_str("nested too deep"),
            JsonError::TooManyMembers => f.write_str("an object with too many members"),
            JsonError::TooManyElements => f.write_str("an array with too many elements"),
        }
    }
}

impl std::error::Error for JsonError {}

/// A refusal and where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What is wrong.
    pub error: JsonError,
    /// The byte offset it was found at.
    pub offset: usize,
    /// For a syntax error, what was expected, e.g. `expected ',' or '}'`.
    pub detail: &'static str,
}

/// Parses one JSON document: any value, surrounded by optional whitespace.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Json, Fault> {
    let text = std::str::from_utf8(bytes).map_err(|e| Fault {
        error: JsonError::NotUtf8,
        offset: e.valid_up_to(),
        detail: "not UTF-8",
    })?;
    let mut reader = Reader {
        text,
        at: 0,
        limits,
    };
    let value = reader.value(0)?;
    reader.skip_whitespace();
    if reader.at < text.len() {
        return Err(reader.fault(JsonError::TrailingData, "data after the document"));
    }
    Ok(value)
}

/// Parses a document that must be an object.
pub fn parse_object(bytes: &[u8], limits: Limits) -> Result<Object, Fault> {
    match parse(bytes, limits)? {
        Json::Object(object) => Ok(object),
        _ => Err(Fault {
            error: JsonError::NotObject,
            offset: 0,
            detail: "not an object",
        }),
    }
}

struct Reader<'t> {
    text: &'t str,
    at: usize,
    limits: Limits,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn fault(&self, error: JsonError, detail: &'static str) -> Fault {
        Fault {
            error,
            offset: self.at,
            detail,
        }
    }

    fn syntax(&self, detail: &'static str) -> Fault {
        self.syntax_at(self.at, detail)
    }

    fn syntax_at(&self, offset: usize, detail: &'static str) -> Fault {
        let before = self
            .text
            .as_bytes()
            .get(..offset)
            .unwrap_or(self.text.as_bytes());
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Fault {
            error: JsonError::Syntax {
                line,
                column: offset - line_start + 1,
            },
            offset,
            detail,
        }
    }

    fn expect(&mut self, byte: u8, detail: &'static str) -> Result<(), Fault> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.syntax(detail))
        }
    }

    /// A value at nesting level `depth` (the number of containers around it).
    fn value(&mut self, depth: usize) -> Result<Json, Fault> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.syntax("expected a value")),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Json) -> Result<Json, Fault> {
        let rest = self.text.get(self.at..).unwrap_or_default();
        if rest.starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.syntax("expected a value"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, Fault> {
        if depth > self.limits.depth {
            return Err(self.fault(JsonError::TooDeep, "nested too deep"));
        }
        self.at += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(Object(members)));
        }
        loop {
            self.skip_whitespace();
            let name_at = self.at;
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a member name"));
            }
            let name = self.string()?;
            if members.iter().any(|(k, _)| *k == name) {
                return Err(Fault {
                    error: JsonError::DuplicateMember,
                    offset: name_at,
                    detail: "duplicate member name",
                });
            }
            if members.len() >= self.limits.members {
                return Err(Fault {
                    error: JsonError::TooManyMembers,
                    offset: name_at,
                    detail: "too many members",
                });
            }
            self.skip_whitespace();
            self.expect(b':', "expected ':'")?;
            let value = self.value(depth)?;
            members.push((name, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(Object(members)));
                }
                _ => return Err(self.syntax("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, Fault> {
        if depth > self.limits.depth {
            return Err(self.fault(JsonError::TooDeep, "nested too deep"));
        }
        self.at += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            let item_at = self.at;
            let item = self.value(depth)?;
            if items.len() >= self.limits.elements {
                return Err(Fault {
                    error: JsonError::TooManyElements,
                    offset: item_at,
                    detail: "too many elements",
                });
            }
            items.push(item);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.syntax("expected ',' or ']'")),
            }
        }
    }

    /// A string starting at its opening quote, unescaped.
    fn string(&mut self) -> Result<String, Fault> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let run_start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            // The run ends at an ASCII byte or the end, so it is whole characters.
            out.push_str(self.text.get(run_start..self.at).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    /// The character an escape (after its backslash) stands for.
    fn escape(&mut self) -> Result<char, Fault> {
        let escape_at = self.at;
        let Some(kind) = self.peek() else {
            return Err(self.syntax("unterminated string"));
        };
        self.at += 1;
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        let low_at = self.at;
                        if self
                            .text
                            .get(self.at..)
                            .is_some_and(|r| r.starts_with("\\u"))
                        {
                            self.at += 2;
                        } else {
                            return Err(self.syntax_at(low_at, "lone surrogate escape"));
                        }
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.syntax_at(low_at, "lone surrogate escape"));
                        }
                        0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => {
                        return Err(self.syntax_at(escape_at, "lone surrogate escape"));
                    }
                    other => other,
                };
                char::from_u32(code).ok_or_else(|| self.syntax_at(escape_at, "invalid escape"))?
            }
            _ => return Err(self.syntax_at(escape_at, "invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, Fault> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.syntax("expected four hex digits"))?;
            unit = unit * 16 + digit;
            self.at += 1;
        }
        Ok(unit)
    }

    fn digits(&mut self) -> Result<(), Fault> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.syntax("expected a digit"));
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        Ok(())
    }

    fn number(&mut self) -> Result<Json, Fault> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        if self.peek() == Some(b'0') {
            // No leading zeros: "01" ends the number after "0", and what follows is refused.
            self.at += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        let number = Number(self.text.get(start..self.at).unwrap_or_default().to_owned());
        if !number.as_f64().is_finite() {
            return Err(self.syntax_at(start, "number out of range"));
        }
        Ok(Json::Number(number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIGHT: Limits = Limits {
        depth: 16,
        members: 64,
        elements: 64,
    };

    fn parse_text(text: &str) -> Result<Json, JsonError> {
        parse(text.as_bytes(), TIGHT).map_err(|f| f.error)
    }

    fn num(text: &str) -> Number {
        match parse_text(text).unwrap() {
            Json::Number(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_kind_of_value() {
        let value = parse_text(r#" {"a":[1,-2,3.5e1,true,false,null,{"x":"y"}],"b":{}} "#).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 2);
        let items = object.get("a").and_then(Json::as_array).unwrap();
        assert_eq!(items.len(), 7);
        assert_eq!(items[0], Json::Number(Number("1".into())));
        assert_eq!(items[3], Json::Bool(true));
        assert_eq!(items[4], Json::Bool(false));
        assert_eq!(items[5], Json::Null);
        assert_eq!(
            items[6]
                .as_object()
                .and_then(|o| o.get("x"))
                .and_then(Json::as_str),
            Some("y")
        );
        assert_eq!(object.get("b"), Some(&Json::Object(Object::default())));
        assert_eq!(parse_text("[]"), Ok(Json::Array(vec![])));
        assert_eq!(
            parse_text(" 7 ").map(|v| v.describe()),
            Ok("the number 7".into())
        );
    }

    #[test]
    fn unescapes_strings_and_names() {
        let value =
            parse_text(r#"{"\u0061lg":"\u006eone","s":"a\"b\\c\/\b\f\n\r\t","e":"é\u00e9"}"#)
                .unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.get("alg").and_then(Json::as_str), Some("none"));
        assert_eq!(
            object.get("s").and_then(Json::as_str),
            Some("a\"b\\c/\u{8}\u{c}\n\r\t")
        );
        assert_eq!(object.get("e").and_then(Json::as_str), Some("éé"));
        let pair = parse_text(r#""\ud83d\ude00""#).unwrap();
        assert_eq!(pair.as_str(), Some("\u{1F600}"));
    }

    #[test]
    fn refuses_duplicate_member_names_at_every_depth() {
        for doc in [
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"alg":"a","\u0061lg":"b"}"#,
            r#"{"a":1,"b":2,"a":1}"#,
            r#"{"outer":[{"deep":{"k":null,"\u006b":null}}]}"#,
        ] {
            assert_eq!(parse_text(doc), Err(JsonError::DuplicateMember), "{doc}");
        }
        assert!(parse_text(r#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
        let fault = parse(br#"{"a":1, "a":2}"#, TIGHT).unwrap_err();
        assert_eq!(fault.offset, 8, "points at the second name");
    }

    #[test]
    fn limits_depth_members_and_elements() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_text(&nested(16)).is_ok());
        assert_eq!(parse_text(&nested(17)), Err(JsonError::TooDeep));
        assert_eq!(parse_text(&nested(100_000)), Err(JsonError::TooDeep));
        let object = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!(r#""m{i}":{i}"#)).collect();
            format!("{{{}}}", members.join(","))
        };
        assert!(parse_text(&object(64)).is_ok());
        assert_eq!(parse_text(&object(65)), Err(JsonError::TooManyMembers));
        let array = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        assert!(parse_text(&array(64)).is_ok());
        assert_eq!(parse_text(&array(65)), Err(JsonError::TooManyElements));
    }

    #[test]
    fn refuses_malformed_documents() {
        for doc in [
            "",
            " ",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            "{'a':1}",
            r#"{"a":01}"#,
            r#"{"a":NaN}"#,
            r#"{"a":1e999}"#,
            r#"{"a":-1e999}"#,
            "1e400",
            &"9".repeat(400),
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "\"\u{1}\"",
            "\"abc",
            r#""\x""#,
            r#""\u12""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#"{a:1}"#,
            "\u{feff}{}",
        ] {
            assert!(
                matches!(parse_text(doc), Err(JsonError::Syntax { .. })),
                "{doc:?}: {:?}",
                parse_text(doc)
            );
        }
        assert_eq!(parse_text("{}x"), Err(JsonError::TrailingData));
        assert_eq!(parse_text("{} {}"), Err(JsonError::TrailingData));
        assert_eq!(
            parse(b"\"\xff\"", TIGHT).unwrap_err().error,
            JsonError::NotUtf8
        );
        assert_eq!(
            parse_object(b"[]", TIGHT).unwrap_err().error,
            JsonError::NotObject
        );
    }

    #[test]
    fn syntax_errors_say_where_and_what() {
        let fault = parse(b"{\n  \"a\": 1\n  \"b\": 2}", TIGHT).unwrap_err();
        assert_eq!(fault.error, JsonError::Syntax { line: 3, column: 3 });
        assert_eq!(fault.detail, "expected ',' or '}'");
        assert_eq!(fault.offset, 13);
    }

    #[test]
    fn numbers_keep_their_text_and_convert() {
        assert_eq!(num("42").as_u64(), Some(42));
        assert_eq!(num("-42").as_i64(), Some(-42));
        assert_eq!(num("-42").as_u64(), None);
        assert_eq!(num("1.0").as_u64(), None);
        assert_eq!(num("1e3").as_u64(), None);
        assert_eq!(num("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(num("18446744073709551616").as_u64(), None);
        assert_eq!(num("-0").canonical(), "0");
        assert_eq!(num("1.50").canonical(), "1.50");
        for (text, value) in [
            ("0", 0.0),
            ("-0.0", -0.0),
            ("1.5", 1.5),
            ("0.1", 0.1),
            ("0.2", 0.2),
            ("1e-7", 1e-7),
            ("123456789012345", 123_456_789_012_345.0),
            ("1700000000.5", 1_700_000_000.5),
            ("253402300799", 253_402_300_799.0),
            ("2.5E+3", 2500.0),
            ("1e22", 1e22),
        ] {
            assert_eq!(num(text).as_f64(), value, "{text}");
        }
        let long = num("3.14159265358979323846264338327950288");
        assert!((long.as_f64() - std::f64::consts::PI).abs() < 1e-15);
        assert!((num("1e308").as_f64() / 1e308 - 1.0).abs() < 1e-14);
        assert_eq!(num("1e-400").as_f64(), 0.0);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, TIGHT);
        }

        #[test]
        fn never_panics_on_json_like_text(text in r#"[{}\[\]":,\\u0-9a-fdD .eE+-]{0,256}"#) {
            let _ = parse(text.as_bytes(), TIGHT);
        }

        /// Every integer reads back exactly, and floats read back as the shortest text that
        /// Rust prints for them, within one unit in the last place.
        #[test]
        fn numbers_round_trip(i in any::<i64>(), f in -1e15f64..1e15) {
            prop_assert_eq!(num(&i.to_string()).as_i64(), Some(i));
            let text = format!("{f}");
            let back = num(&text).as_f64();
            prop_assert!((back - f).abs() <= f.abs() * f64::EPSILON, "{} -> {}", text, back);
        }

        /// Strings with any characters survive escaping and unescaping.
        #[test]
        fn strings_round_trip(s in ".{0,40}") {
            let escaped: String = s.chars().map(|c| match c {
                '"' => "\\\"".to_owned(),
                '\\' => "\\\\".to_owned(),
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            }).collect();
            let value = parse_text(&format!("\"{escaped}\"")).unwrap();
            prop_assert_eq!(value.as_str(), Some(s.as_str()));
        }
    }
}
