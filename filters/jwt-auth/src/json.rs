//! JSON for JOSE documents: the JWT header and claims set, and JWKS documents.
//!
//! serde_json reads the text; a visitor of our own builds the tree, because what matters for
//! security is more than well-formedness:
//! - A lenient reader silently keeps the last of two members with the same name, so
//!   `{"alg":"RS256","alg":"none"}` would mean different things to this filter and to a backend
//!   that keeps the first one. RFC 7515 §5.2 and RFC 7519 §4 let a parser refuse duplicates,
//!   and we do, at every depth, comparing names after unescaping (serde_json hands us
//!   unescaped names, so `"\u0061lg"` and `"alg"` collide).
//! - The document comes from an unauthenticated client, so depth and widths are bounded
//!   ([`Limits`]); its size is bounded where it enters (the token's segments, the JWKS body).
//! - Integers never pass through a float: serde_json hands them over as `u64`/`i64`. Other
//!   numbers are `f64`, correctly rounded (the workspace enables serde_json's
//!   `float_roundtrip`).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number.
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
}

/// A JSON number: an integer exactly as written, or else the `f64` nearest to what was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer from 0 to `u64::MAX`.
    Unsigned(u64),
    /// An integer from `i64::MIN` to -1.
    Negative(i64),
    /// Anything else: a fraction, an exponent, an integer beyond 64 bits, or `-0`. Finite.
    Float(f64),
}

impl Number {
    /// Its value, if it is an integer that fits.
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Number::Unsigned(u) => Some(u),
            _ => None,
        }
    }

    /// Its value, if it is an integer that fits.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Number::Unsigned(u) => i64::try_from(u).ok(),
            Number::Negative(i) => Some(i),
            Number::Float(_) => None,
        }
    }
}

/// How a number is compared with configured text and copied to a header: an integer in plain
/// decimal, anything else as serde_json writes an `f64` (shortest text that reads back the same,
/// e.g. `1.5`, `1000.0`, `1e+300`).
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Unsigned(u) => write!(f, "{u}"),
            Number::Negative(i) => write!(f, "{i}"),
            Number::Float(x) => match serde_json::Number::from_f64(*x) {
                Some(n) => write!(f, "{n}"),
                // Not reached: the reader refuses numbers that are not finite.
                None => write!(f, "{x}"),
            },
        }
    }
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
    /// For a JWT header or claims set, which any client can send.
    pub const JWT: Limits = Limits {
        depth: 16,
        members: 64,
        elements: 64,
    };

    /// For a JWKS document, from the operator's configuration or key server: deeper than the
    /// format needs, and members bounded so duplicate checks stay cheap.
    pub const JWKS: Limits = Limits {
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
        /// 1-based column of the error.
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

/// Parses one JSON document: any value, surrounded by optional whitespace, within `limits`.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Json, JsonError> {
    // Checked up front so that invalid UTF-8 anywhere, even where serde_json would only call
    // the byte unexpected, is reported as what it is.
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)?;
    let mut reader = serde_json::Deserializer::from_str(text);
    let refusal = Cell::new(None);
    let seed = ValueSeed {
        depth: 0,
        limits,
        refusal: &refusal,
    };
    let value = seed
        .deserialize(&mut reader)
        .map_err(|e| refusal.get().unwrap_or_else(|| syntax(&e)))?;
    reader.end().map_err(|_| JsonError::TrailingData)?;
    Ok(value)
}

/// Parses a document that must be an object, within `limits`.
pub fn parse_object(bytes: &[u8], limits: Limits) -> Result<Object, JsonError> {
    match parse(bytes, limits)? {
        Json::Object(object) => Ok(object),
        _ => Err(JsonError::NotObject),
    }
}

fn syntax(e: &serde_json::Error) -> JsonError {
    JsonError::Syntax {
        line: e.line(),
        column: e.column(),
    }
}

/// Builds a [`Json`] at nesting level `depth` (the number of containers around it). A refusal
/// of ours is noted in `refusal` as well as returned, since serde_json's error type can only
/// carry it as text.
#[derive(Clone, Copy)]
struct ValueSeed<'r> {
    depth: usize,
    limits: Limits,
    refusal: &'r Cell<Option<JsonError>>,
}

impl ValueSeed<'_> {
    fn refuse<E: de::Error>(self, why: JsonError) -> E {
        self.refusal.set(Some(why));
        E::custom(why)
    }

    /// The seed for the values inside a container at this level, or the refusal if one more
    /// level is too deep.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.limits.depth {
            return Err(self.refuse(JsonError::TooDeep));
        }
        Ok(Self { depth, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Json;

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Json, D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Json, E> {
        Ok(Json::Number(Number::Unsigned(u)))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Json, E> {
        Ok(Json::Number(match u64::try_from(i) {
            Ok(u) => Number::Unsigned(u),
            Err(_) => Number::Negative(i),
        }))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Json, E> {
        if x.is_finite() {
            Ok(Json::Number(Number::Float(x)))
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            if items.len() >= self.limits.elements {
                return Err(self.refuse(JsonError::TooManyElements));
            }
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let inner = self.enter()?;
        let mut members: Vec<(String, Json)> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.iter().any(|(k, _)| *k == name) {
                return Err(self.refuse(JsonError::DuplicateMember));
            }
            if members.len() >= self.limits.members {
                return Err(self.refuse(JsonError::TooManyMembers));
            }
            let value = map.next_value_seed(inner)?;
            members.push((name, value));
        }
        Ok(Json::Object(Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_jwt(bytes: &[u8]) -> Result<Object, JsonError> {
        parse_object(bytes, Limits::JWT)
    }

    fn num(text: &str) -> Number {
        match parse(text.as_bytes(), Limits::JWT).unwrap() {
            Json::Number(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn nested_objects(levels: usize) -> String {
        // {"a":{"a":...{}...}} with `levels` objects in all.
        let mut s = String::new();
        for _ in 1..levels {
            s.push_str(r#"{"a":"#);
        }
        s.push_str("{}");
        for _ in 1..levels {
            s.push('}');
        }
        s
    }

    fn object_with_members(n: usize) -> String {
        let members: Vec<String> = (0..n).map(|i| format!(r#""m{i}":{i}"#)).collect();
        format!("{{{}}}", members.join(","))
    }

    #[test]
    fn parses_every_kind_of_value() {
        let map =
            parse_jwt(br#" {"alg":"RS256","n":[1,-2,3.5,true,false,null,{"x":"y"}],"e":{}} "#)
                .unwrap();
        assert_eq!(map.get("alg").and_then(Json::as_str), Some("RS256"));
        let n = map.get("n").and_then(Json::as_array).unwrap();
        assert_eq!(
            n,
            [
                Json::Number(Number::Unsigned(1)),
                Json::Number(Number::Negative(-2)),
                Json::Number(Number::Float(3.5)),
                Json::Bool(true),
                Json::Bool(false),
                Json::Null,
                Json::Object(Object::from([("x", Json::String("y".into()))])),
            ]
        );
        assert_eq!(map.get("e"), Some(&Json::Object(Object::default())));
        assert_eq!(
            map.members()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["alg", "n", "e"],
            "document order"
        );
        assert_eq!(parse(b"[]", Limits::JWT), Ok(Json::Array(vec![])));
    }

    #[test]
    fn unescapes_strings_and_keys() {
        let map = parse_jwt(
            r#"{"\u0061lg":"\u006eone","s":"a\"b\\c\/\b\f\n\r\t","e":"é\u00e9","p":"\ud83d\ude00"}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(map.get("alg").and_then(Json::as_str), Some("none"));
        assert_eq!(
            map.get("s").and_then(Json::as_str),
            Some("a\"b\\c/\u{8}\u{c}\n\r\t")
        );
        assert_eq!(map.get("e").and_then(Json::as_str), Some("éé"));
        assert_eq!(map.get("p").and_then(Json::as_str), Some("\u{1F600}"));
    }

    #[test]
    fn rejects_duplicate_members() {
        for doc in [
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"exp":1,"exp":2}"#,
            r#"{"alg":"a","\u0061lg":"b"}"#,
            r#"{"a":1,"b":2,"a":1}"#,
            r#"{"outer":{"k":1,"k":1}}"#,
            r#"{"outer":[{"deep":{"k":null,"\u006b":null}}]}"#,
            r#"[{"k":1,"k":2}]"#,
        ] {
            assert_eq!(
                parse(doc.as_bytes(), Limits::JWT),
                Err(JsonError::DuplicateMember),
                "{doc}"
            );
            assert_eq!(
                parse(doc.as_bytes(), Limits::JWKS),
                Err(JsonError::DuplicateMember),
                "{doc}"
            );
        }
        // The same name in sibling objects is not a duplicate; nor are names differing in case.
        assert!(parse_jwt(br#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
        assert!(parse_jwt(br#"{"alg":"a","Alg":"b"}"#).is_ok());
    }

    #[test]
    fn depth_is_limited() {
        assert!(parse_jwt(nested_objects(16).as_bytes()).is_ok());
        assert_eq!(
            parse_jwt(nested_objects(17).as_bytes()),
            Err(JsonError::TooDeep)
        );
        // Arrays count as levels too.
        let arrays = |n: usize| format!(r#"{{"a":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(parse_jwt(arrays(16).as_bytes()), Err(JsonError::TooDeep));
        assert!(parse_jwt(arrays(15).as_bytes()).is_ok());
        // A JWKS may nest deeper.
        assert!(parse(nested_objects(32).as_bytes(), Limits::JWKS).is_ok());
        assert_eq!(
            parse(nested_objects(33).as_bytes(), Limits::JWKS),
            Err(JsonError::TooDeep)
        );
        // Far beyond any sane depth: refused early, no stack overflow.
        let hostile = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            parse(hostile.as_bytes(), Limits::JWT),
            Err(JsonError::TooDeep)
        );
        assert_eq!(
            parse(hostile.as_bytes(), Limits::JWKS),
            Err(JsonError::TooDeep)
        );
    }

    #[test]
    fn members_are_limited() {
        let ok = parse_jwt(object_with_members(64).as_bytes()).unwrap();
        assert_eq!(ok.len(), 64);
        assert_eq!(
            parse_jwt(object_with_members(65).as_bytes()),
            Err(JsonError::TooManyMembers)
        );
        let nested = format!(r#"{{"x":{}}}"#, object_with_members(65));
        assert_eq!(parse_jwt(nested.as_bytes()), Err(JsonError::TooManyMembers));
        assert!(parse(object_with_members(1024).as_bytes(), Limits::JWKS).is_ok());
        assert_eq!(
            parse(object_with_members(1025).as_bytes(), Limits::JWKS),
            Err(JsonError::TooManyMembers)
        );
    }

    #[test]
    fn elements_are_limited() {
        let array = |n: usize| format!(r#"{{"aud":[{}]}}"#, vec!["0"; n].join(","));
        assert!(parse_jwt(array(64).as_bytes()).is_ok());
        assert_eq!(
            parse_jwt(array(65).as_bytes()),
            Err(JsonError::TooManyElements)
        );
        assert!(parse(array(100_000).as_bytes(), Limits::JWKS).is_ok());
        assert_eq!(
            parse(array(100_001).as_bytes(), Limits::JWKS),
            Err(JsonError::TooManyElements)
        );
    }

    #[test]
    fn top_level_must_be_an_object() {
        for doc in ["[]", "1", r#""s""#, "null", "true", "[{}]"] {
            assert_eq!(
                parse_jwt(doc.as_bytes()),
                Err(JsonError::NotObject),
                "{doc}"
            );
            assert!(parse(doc.as_bytes(), Limits::JWT).is_ok(), "{doc}");
        }
    }

    #[test]
    fn trailing_data_is_refused_but_whitespace_is_not() {
        assert!(parse_jwt(b" \t\r\n{}\n \t").is_ok());
        for doc in ["{}x", "{}{}", "{} 1", "{},", "{}\0", "1 2"] {
            assert_eq!(
                parse(doc.as_bytes(), Limits::JWT),
                Err(JsonError::TrailingData),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn malformed_json_is_a_syntax_error() {
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
            r#"{"a":Infinity}"#,
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
            "{\"a\":\"\u{1f}\"}",
            "\"abc",
            r#""\x""#,
            r#""\u12""#,
            r#"{a:1}"#,
            "\u{feff}{}",
            "/* */{}",
        ] {
            assert!(
                matches!(
                    parse(doc.as_bytes(), Limits::JWT),
                    Err(JsonError::Syntax { .. })
                ),
                "{doc:?}: {:?}",
                parse(doc.as_bytes(), Limits::JWT)
            );
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(
            parse(b"{\n  \"a\": 1\n  \"b\": 2}", Limits::JWT),
            Err(JsonError::Syntax { line: 3, column: 3 })
        );
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for doc in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\udc00"}"#,
            r#"{"s":"\ud800x"}"#,
            r#"{"s":"\ud800\u0041"}"#,
            r#"{"\ud800":1}"#,
        ] {
            assert!(
                matches!(parse_jwt(doc.as_bytes()), Err(JsonError::Syntax { .. })),
                "{doc}: {:?}",
                parse_jwt(doc.as_bytes())
            );
        }
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(parse_jwt(b"{\"a\":\"\xff\"}"), Err(JsonError::NotUtf8));
        assert_eq!(parse_jwt(b"{\"a\":\"\xc0\xaf\"}"), Err(JsonError::NotUtf8));
        assert_eq!(parse_jwt(b"{}\xff"), Err(JsonError::NotUtf8));
        assert_eq!(
            parse_jwt(b"\xef\xbb\xbf{}"),
            Err(JsonError::Syntax { line: 1, column: 1 })
        );
    }

    #[test]
    fn display_never_echoes_input() {
        let err = parse_jwt(br#"{"secret-ish":1,"secret-ish":2}"#).unwrap_err();
        assert_eq!(err.to_string(), "duplicate member name");
        let err = parse_jwt(br#"{"secret-ish" 1}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn integers_stay_exact_and_other_numbers_are_floats() {
        assert_eq!(num("42"), Number::Unsigned(42));
        assert_eq!(num("-42"), Number::Negative(-42));
        assert_eq!(num("18446744073709551615"), Number::Unsigned(u64::MAX));
        assert_eq!(num("-9223372036854775808"), Number::Negative(i64::MIN));
        // 2^53 + 1 has no f64; it must not be rounded on its way in.
        assert_eq!(
            num("9007199254740993").as_u64(),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(
            num("9007199254740993").as_i64(),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(num("-42").as_u64(), None);
        assert_eq!(num("18446744073709551615").as_i64(), None);
        // Beyond 64 bits, or with a fraction or an exponent: a float.
        assert_eq!(
            num("18446744073709551616"),
            Number::Float(18_446_744_073_709_551_616.0)
        );
        assert_eq!(num("1.0"), Number::Float(1.0));
        assert_eq!(num("1e3"), Number::Float(1000.0));
        assert_eq!(num("1.0").as_u64(), None);
        assert_eq!(num("-0"), Number::Float(-0.0));
        for (text, value) in [
            ("1.5", 1.5),
            ("0.1", 0.1),
            ("1e-7", 1e-7),
            ("1700000000.5", 1_700_000_000.5),
            ("2.5E+3", 2500.0),
            ("1e22", 1e22),
            // Correctly rounded where a naive conversion is not (float_roundtrip).
            ("3E23", 3e23),
            ("8E236", 8e236),
            ("2.2250738585072014e-308", f64::MIN_POSITIVE),
            ("1.7976931348623157e308", f64::MAX),
            ("4.9e-324", 5e-324),
            (
                "3.14159265358979323846264338327950288",
                std::f64::consts::PI,
            ),
        ] {
            assert_eq!(num(text), Number::Float(value), "{text}");
        }
        assert_eq!(num("1e-400"), Number::Float(0.0));
    }

    #[test]
    fn numbers_print_canonically() {
        for (text, printed) in [
            ("0", "0"),
            ("42", "42"),
            ("-42", "-42"),
            ("18446744073709551615", "18446744073709551615"),
            ("1.50", "1.5"),
            ("1.0", "1.0"),
            ("1e3", "1000.0"),
            ("-0", "-0.0"),
            ("1700000000.25", "1700000000.25"),
            ("1e300", "1e+300"),
        ] {
            assert_eq!(num(text).to_string(), printed, "{text}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, Limits::JWT);
            let _ = parse(&bytes, Limits::JWKS);
        }

        #[test]
        fn never_panics_on_json_like_text(text in r#"[{}\[\]":,\\u0-9a-fdD .eE+-]{0,256}"#) {
            let _ = parse(text.as_bytes(), Limits::JWT);
        }

        #[test]
        fn accepts_what_serde_json_writes_without_duplicates(
            members in proptest::collection::btree_map("[a-z]{1,4}", any::<i32>(), 0..64)
        ) {
            let text = serde_json::to_string(&members).unwrap();
            let map = parse_jwt(text.as_bytes()).unwrap();
            prop_assert_eq!(map.len(), members.len());
            for (name, value) in &members {
                prop_assert_eq!(
                    map.get(name).and_then(|v| match v { Json::Number(n) => n.as_i64(), _ => None }),
                    Some(i64::from(*value))
                );
            }
        }

        /// Every integer reads back exactly; every finite float reads back bit for bit from
        /// the text serde_json writes for it, and prints as that text again.
        #[test]
        fn numbers_round_trip(i in any::<i64>(), u in any::<u64>(), bits in any::<u64>()) {
            prop_assert_eq!(num(&i.to_string()).as_i64(), Some(i));
            prop_assert_eq!(num(&u.to_string()).as_u64(), Some(u));
            let f = f64::from_bits(bits);
            if f.is_finite() {
                let text = serde_json::to_string(&f).unwrap();
                let back = num(&text);
                match back {
                    Number::Float(x) => prop_assert_eq!(x.to_bits(), f.to_bits(), "{}", text),
                    other => prop_assert!(false, "{} read as {:?}", text, other),
                }
                prop_assert_eq!(back.to_string(), text);
            }
        }

        /// Strings with any characters survive escaping and unescaping.
        #[test]
        fn strings_round_trip(s in ".{0,40}") {
            let text = serde_json::to_string(&s).unwrap();
            let value = parse(text.as_bytes(), Limits::JWT).unwrap();
            prop_assert_eq!(value.as_str(), Some(s.as_str()));
        }
    }
}
