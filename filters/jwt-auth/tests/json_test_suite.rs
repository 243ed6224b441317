//! nst/JSONTestSuite's parsing cases against the reader JWT headers and claims go through
//! (`json::parse` with the JWT limits; requiring an object at the top level is a later, separate
//! step). Every `n_` file must be refused, every `y_` file accepted except those that give a
//! member name twice, which RFC 7515 §5.2 and RFC 7519 §4 let us refuse and we do. `i_` files
//! may go either way, but none may panic.
//!
//! No `y_` file reaches the JWT bounds (depth 16, 64 members, 64 elements): were one refused
//! for that, this test would list it as wrong rather than skip it.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use std::path::Path;

use jwt_auth::json::{self, JsonError, Limits};

const SUITE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/JSONTestSuite/test_parsing"
);

/// `y_` files refused on purpose, and why.
const REFUSED_ON_PURPOSE: [(&str, JsonError); 2] = [
    ("y_object_duplicated_key.json", JsonError::DuplicateMember),
    (
        "y_object_duplicated_key_and_value.json",
        JsonError::DuplicateMember,
    ),
];

fn cases() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(Path::new(SUITE))
        .unwrap_or_else(|e| panic!("{SUITE}: {e}"))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    cases.sort();
    cases
}

#[test]
fn json_test_suite_parsing_cases() {
    let cases = cases();
    let count = |prefix: &str| cases.iter().filter(|(n, _)| n.starts_with(prefix)).count();
    assert_eq!(
        (count("y_"), count("n_"), count("i_"), cases.len()),
        (95, 188, 35, 318),
        "the suite is incomplete"
    );
    for (file, _) in REFUSED_ON_PURPOSE {
        assert!(cases.iter().any(|(n, _)| n == file), "{file} is missing");
    }

    let mut wrong = Vec::new();
    let mut implementation_defined = Vec::new();
    for (name, bytes) in &cases {
        let outcome = json::parse(bytes, Limits::JWT);
        let on_purpose = REFUSED_ON_PURPOSE
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, why)| *why);
        match (&name[..2], outcome) {
            ("y_", Err(why)) if on_purpose == Some(why) => {}
            ("y_", Ok(_)) if on_purpose.is_none() => {}
            ("y_", other) => wrong.push(format!("{name}: {other:?}, expected {on_purpose:?}")),
            ("n_", Ok(value)) => wrong.push(format!("{name}: accepted as {value:?}")),
            ("n_", Err(_)) => {}
            ("i_", outcome) => implementation_defined.push(format!("{name}: {:?}", outcome.err())),
            _ => wrong.push(format!("{name}: not a y_, n_ or i_ case")),
        }
    }
    // Shown with --nocapture: what the implementation-defined cases came to.
    for line in &implementation_defined {
        println!("{line}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The deepest implementation-defined case is within serde_json's own recursion limit, but
/// deeper than a token may nest: our bound answers first.
#[test]
fn deep_nesting_in_the_suite_meets_the_jwt_bound() {
    let path = Path::new(SUITE).join("i_structure_500_nested_arrays.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(json::parse(&bytes, Limits::JWT), Err(JsonError::TooDeep));
    let path = Path::new(SUITE).join("n_structure_100000_opening_arrays.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(json::parse(&bytes, Limits::JWT), Err(JsonError::TooDeep));
}
