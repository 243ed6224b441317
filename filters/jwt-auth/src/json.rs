//! Strict JSON parsing for the JWT header and claims set.
//!
//! `serde_json::Value` silently keeps the last of two members with the same name, so
//! `{"alg":"RS256","alg":"none"}` would mean different things to this filter and to a
//! backend that keeps the first one. RFC 7515 §5.2 and RFC 7519 §4 let a parser reject
//! duplicates, and we do, at every depth, comparing names after unescaping. The document
//! comes from an unauthenticated client, so depth and widths are bounded too.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;

/// Containers may nest this deep (the top-level object counts as 1).
pub const MAX_DEPTH: usize = 16;
/// An object may have at most this many members.
pub const MAX_MEMBERS: usize = 64;
/// An array may have at most this many elements.
pub const MAX_ELEMENTS: usize = 64;

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
    /// Something other than whitespace follows the object.
    TrailingData,
    /// An object has two members with the same (unescaped) name.
    DuplicateMember,
    /// Containers nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An object has more than [`MAX_MEMBERS`] members.
    TooManyMembers,
    /// An array has more than [`MAX_ELEMENTS`] elements.
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
            JsonError::TrailingData => f.write_str("data after the JSON object"),
            JsonError::DuplicateMember => f.write_str("duplicate member name"),
            JsonError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            JsonError::TooManyMembers => write!(f, "object with more than {MAX_MEMBERS} members"),
            JsonError::TooManyElements => {
                write!(f, "array with more than {MAX_ELEMENTS} elements")
            }
        }
    }
}

impl std::error::Error for JsonError {}

/// Parses `bytes` as one JSON object, refusing duplicates, excess depth or width, and
/// trailing data.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    // Checked up front so invalid UTF-8 gets its own reason rather than a syntax position.
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)?;
    // serde's error type only carries a message; our reason travels beside it.
    let fault = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = ValueSeed {
        depth: 1,
        fault: &fault,
    };
    let value = seed
        .deserialize(&mut de)
        .map_err(|e| fault.get().unwrap_or_else(|| syntax(&e)))?;
    de.end().map_err(|_| JsonError::TrailingData)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotObject),
    }
}

fn syntax(e: &serde_json::Error) -> JsonError {
    JsonError::Syntax {
        line: e.line(),
        column: e.column(),
    }
}

/// Builds a `Value` at nesting level `depth`, recording the first policy violation in `fault`.
#[derive(Clone, Copy)]
struct ValueSeed<'f> {
    depth: usize,
    fault: &'f Cell<Option<JsonError>>,
}

impl ValueSeed<'_> {
    fn fail<E: de::Error>(self, reason: JsonError) -> E {
        self.fault.set(Some(reason));
        E::custom(reason)
    }

    fn child(self) -> Self {
        Self {
            depth: self.depth.saturating_add(1),
            fault: self.fault,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this refuses nothing real; never map it to null.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.fail(JsonError::TooDeep));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child())? {
            if items.len() >= MAX_ELEMENTS {
                return Err(self.fail(JsonError::TooManyElements));
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.fail(JsonError::TooDeep));
        }
        let mut map = Map::new();
        // Keys arrive unescaped, so "\u0061lg" and "alg" collide here as they should.
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(self.fail(JsonError::DuplicateMember));
            }
            if map.len() >= MAX_MEMBERS {
                return Err(self.fail(JsonError::TooManyMembers));
            }
            let value = access.next_value_seed(self.child())?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

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
    fn parses_a_plain_object() {
        let map = parse_object(br#" {"alg":"RS256","n":[1,-2,3.5,true,null,{"x":"y"}]} "#).unwrap();
        assert_eq!(
            Value::Object(map),
            json!({"alg": "RS256", "n": [1, -2, 3.5, true, null, {"x": "y"}]})
        );
    }

    #[test]
    fn unescapes_strings_and_keys() {
        let map = parse_object(br#"{"\u0061lg":"\u006eone","s":"a\"b\\c\n"}"#).unwrap();
        assert_eq!(map.get("alg"), Some(&json!("none")));
        assert_eq!(map.get("s"), Some(&json!("a\"b\\c\n")));
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
        ] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::DuplicateMember),
                "{doc}"
            );
        }
        // The same name in sibling objects is not a duplicate.
        assert!(parse_object(br#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
    }

    #[test]
    fn depth_is_limited_to_sixteen() {
        assert!(parse_object(nested_objects(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse_object(nested_objects(MAX_DEPTH + 1).as_bytes()),
            Err(JsonError::TooDeep)
        );
        // Arrays count as levels too.
        let arrays = format!(r#"{{"a":{}{}}}"#, "[".repeat(16), "]".repeat(16));
        assert_eq!(parse_object(arrays.as_bytes()), Err(JsonError::TooDeep));
        let arrays = format!(r#"{{"a":{}{}}}"#, "[".repeat(15), "]".repeat(15));
        assert!(parse_object(arrays.as_bytes()).is_ok());
        // Far beyond serde_json's own recursion limit: refused, no stack overflow.
        let hostile = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_object(hostile.as_bytes()).is_err());
    }

    #[test]
    fn members_are_limited_to_sixty_four() {
        let ok = parse_object(object_with_members(MAX_MEMBERS).as_bytes()).unwrap();
        assert_eq!(ok.len(), MAX_MEMBERS);
        assert_eq!(
            parse_object(object_with_members(MAX_MEMBERS + 1).as_bytes()),
            Err(JsonError::TooManyMembers)
        );
        let nested = format!(r#"{{"x":{}}}"#, object_with_members(MAX_MEMBERS + 1));
        assert_eq!(
            parse_object(nested.as_bytes()),
            Err(JsonError::TooManyMembers)
        );
    }

    #[test]
    fn elements_are_limited_to_sixty_four() {
        let array = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!(r#"{{"aud":[{}]}}"#, items.join(","))
        };
        assert!(parse_object(array(MAX_ELEMENTS).as_bytes()).is_ok());
        assert_eq!(
            parse_object(array(MAX_ELEMENTS + 1).as_bytes()),
            Err(JsonError::TooManyElements)
        );
    }

    #[test]
    fn top_level_must_be_an_object() {
        for doc in ["[]", "1", r#""s""#, "null", "true", "[{}]"] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::NotObject),
                "{doc}"
            );
        }
    }

    #[test]
    fn trailing_data_is_refused_but_whitespace_is_not() {
        assert!(parse_object(b" \t\r\n{}\n \t").is_ok());
        for doc in ["{}x", "{}{}", "{} 1", "{},", "{}\0"] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::TrailingData),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn malformed_json_is_a_syntax_error() {
        for doc in [
            "",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            "{'a':1}",
            r#"{"a":01}"#,
            r#"{"a":NaN}"#,
            r#"{"a":1e999}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{a:1}"#,
        ] {
            assert!(
                matches!(parse_object(doc.as_bytes()), Err(JsonError::Syntax { .. })),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for doc in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\udc00"}"#,
            r#"{"s":"\ud800x"}"#,
            r#"{"\ud800":1}"#,
        ] {
            assert!(
                matches!(parse_object(doc.as_bytes()), Err(JsonError::Syntax { .. })),
                "{doc}"
            );
        }
        // A proper pair is fine.
        let map = parse_object(br#"{"s":"\ud83d\ude00"}"#).unwrap();
        assert_eq!(map.get("s"), Some(&json!("\u{1F600}")));
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(parse_object(b"{\"a\":\"\xff\"}"), Err(JsonError::NotUtf8));
        assert_eq!(
            parse_object(b"{\"a\":\"\xc0\xaf\"}"),
            Err(JsonError::NotUtf8)
        );
        assert_eq!(
            parse_object(b"\xef\xbb\xbf{}").map(|_| ()),
            Err(JsonError::Syntax { line: 1, column: 1 })
        );
    }

    #[test]
    fn display_never_echoes_input() {
        let err = parse_object(br#"{"secret-ish":1,"secret-ish":2}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        let err = parse_object(br#"{"secret-ish" 1}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_object(&bytes);
        }

        #[test]
        fn never_panics_on_json_like_text(text in r#"[{}\[\]":,\\u0-9a-f .eE+-]{0,256}"#) {
            let _ = parse_object(text.as_bytes());
        }

        #[test]
        fn accepts_what_serde_json_accepts_without_duplicates(
            members in proptest::collection::btree_map("[a-z]{1,4}", any::<i32>(), 0..64)
        ) {
            let text = serde_json::to_string(&members).unwrap();
            let map = parse_object(text.as_bytes()).unwrap();
            prop_assert_eq!(map.len(), members.len());
        }
    }
}
