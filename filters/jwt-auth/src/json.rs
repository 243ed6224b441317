//! Strict JSON parsing for the JWT header and claims set.
//!
//! A lenient parser silently keeps the last of two members with the same name, so
//! `{"alg":"RS256","alg":"none"}` would mean different things to this filter and to a
//! backend that keeps the first one. RFC 7515 §5.2 and RFC 7519 §4 let a parser reject
//! duplicates, and we do, at every depth, comparing names after unescaping. The document
//! comes from an unauthenticated client, so depth and widths are bounded too.

use filter_core::json::{self, Limits};
pub use filter_core::json::{Json, JsonError, Object};

/// Containers may nest this deep (the top-level object counts as 1).
pub const MAX_DEPTH: usize = 16;
/// An object may have at most this many members.
pub const MAX_MEMBERS: usize = 64;
/// An array may have at most this many elements.
pub const MAX_ELEMENTS: usize = 64;

/// Parses `bytes` as one JSON object, refusing duplicates, excess depth or width, and
/// trailing data.
pub fn parse_object(bytes: &[u8]) -> Result<Object, JsonError> {
    let limits = Limits {
        depth: MAX_DEPTH,
        members: MAX_MEMBERS,
        elements: MAX_ELEMENTS,
    };
    json::parse_object(bytes, limits).map_err(|fault| fault.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(map.get("alg").and_then(Json::as_str), Some("RS256"));
        let n = map.get("n").and_then(Json::as_array).unwrap();
        assert_eq!(n.len(), 6);
        assert_eq!(n[4], Json::Null);
    }

    #[test]
    fn unescapes_strings_and_keys() {
        let map = parse_object(br#"{"\u0061lg":"\u006eone","s":"a\"b\\c\n"}"#).unwrap();
        assert_eq!(map.get("alg").and_then(Json::as_str), Some("none"));
        assert_eq!(map.get("s").and_then(Json::as_str), Some("a\"b\\c\n"));
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
        // Far beyond any sane depth: refused early, no stack overflow.
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
        assert_eq!(map.get("s").and_then(Json::as_str), Some("\u{1F600}"));
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
