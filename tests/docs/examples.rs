//! Every configuration example in the documentation runs through the code that reads it.
//!
//! Each fenced block's info string says what it is (CONTRIBUTING.md, "Documentation"):
//! - ```` ```json <filter> ````: a whole configuration of `<filter>` (`jwt_auth`, `rate_limit`,
//!   `circuit_breaker`, `retry_policy` or `gateway`), parsed and validated by that filter's
//!   own code, as Envoy's `on_configure` does;
//! - ```` ```yaml envoy/<file>.yaml ````: an excerpt of that file, line for line (the file is
//!   validated and started by the integration suite, so the excerpt is too);
//! - ```` ```json fragment ```` / ```` ```yaml fragment ````: part of a configuration, or an
//!   output; a YAML fragment must still be YAML;
//! - any other language (`sh`, `text`, ...) is not checked, but a block must name one.

use crate::markdown::{self, Block};
use filter_core::config::{ConfigError, parse};
use filter_core::filter::Filter;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads and validates one filter's configuration.
type Reader = fn(&str) -> Result<(), ConfigError>;

/// The filters a ```` ```json ```` block may name, each with its configuration's reader.
const FILTERS: &[(&str, Reader)] = &[
    ("jwt_auth", check::<jwt_auth::JwtAuth>),
    ("rate_limit", check::<rate_limit::RateLimit>),
    ("circuit_breaker", check::<circuit_breaker::CircuitBreaker>),
    ("retry_policy", check::<retry_policy::RetryPolicy>),
    ("gateway", check::<gateway::Gateway>),
];

/// Reads and validates a configuration as the host layer does when Envoy loads the plugin.
fn check<F: Filter>(json: &str) -> Result<(), ConfigError> {
    parse::<F::Config>(json.as_bytes())
        .and_then(F::new)
        .map(|_| ())
}

/// What a block was checked as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Checked {
    Config(String),
    Excerpt(String),
    Fragment,
    Other,
}

/// Checks one block; `Err` says what is wrong.
fn check_block(block: &Block) -> Result<Checked, String> {
    let language = block.info.first().map(String::as_str);
    let marker = block.info.get(1).map(String::as_str);
    match (language, marker) {
        (None, _) => Err("a fenced block must name its language (`text` for output)".to_owned()),
        (Some("json"), Some("fragment")) => Ok(Checked::Fragment),
        (Some("json"), Some(name)) => {
            let (_, read) = FILTERS
                .iter()
                .find(|(filter, _)| *filter == name)
                .ok_or_else(|| format!("`json {name}`: no such filter; {}", usage()))?;
            read(&block.text).map_err(|e| format!("not a valid {name} configuration: {e}"))?;
            Ok(Checked::Config(name.to_owned()))
        }
        (Some("yaml" | "yml"), Some("fragment")) => {
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&block.text)
                .map_err(|e| format!("a YAML fragment that is not YAML: {e}"))?;
            Ok(Checked::Fragment)
        }
        (Some("yaml" | "yml"), Some(file)) if file.starts_with("envoy/") => {
            let path = markdown::repo_root().join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("`yaml {file}`: cannot read {}: {e}", path.display()))?;
            if is_excerpt(&block.text, &text) {
                Ok(Checked::Excerpt(file.to_owned()))
            } else {
                Err(format!(
                    "not an excerpt of {file}: its lines must appear there, in order and \
                     together (indentation may be shifted as a whole)"
                ))
            }
        }
        (Some(language @ ("json" | "yaml" | "yml")), _) => {
            Err(format!("`{language}` without a marker; {}", usage()))
        }
        (Some(_), _) => Ok(Checked::Other),
    }
}

fn usage() -> String {
    let names: Vec<&str> = FILTERS.iter().map(|(name, _)| *name).collect();
    format!(
        "write `json <filter>` ({}), `yaml envoy/<file>.yaml` for an excerpt of an example, \
         or `json fragment` / `yaml fragment`",
        names.join(", ")
    )
}

/// Whether `excerpt`'s lines appear together in `file`, each indented by the same extra
/// amount (an excerpt may drop the indentation of the block it comes from).
fn is_excerpt(excerpt: &str, file: &str) -> bool {
    let wanted: Vec<&str> = excerpt.lines().collect();
    let lines: Vec<&str> = file.lines().collect();
    let Some(first) = wanted.first() else {
        return false;
    };
    let indent = |line: &str| line.len() - line.trim_start_matches(' ').len();
    (0..lines.len()).any(|start| {
        let Some(shift) = indent(lines[start]).checked_sub(indent(first)) else {
            return false;
        };
        let pad = " ".repeat(shift);
        wanted.iter().enumerate().all(|(i, want)| {
            lines.get(start + i).is_some_and(|have| {
                if want.trim().is_empty() {
                    have.trim().is_empty()
                } else {
                    *have == format!("{pad}{want}")
                }
            })
        })
    })
}

/// Every block of every Markdown file, checked.
fn check_all() -> (BTreeMap<Checked, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut problems = Vec::new();
    for file in markdown::markdown_files() {
        let parsed = markdown::parse(&markdown::read(&file));
        for block in &parsed.blocks {
            match check_block(block) {
                Ok(checked) => *counts.entry(checked).or_insert(0) += 1,
                Err(problem) => {
                    problems.push(format!("{}:{}: {problem}", file.display(), block.line))
                }
            }
        }
    }
    (counts, problems)
}

/// A configuration example that Envoy would refuse, or an excerpt that no longer matches the
/// file it quotes, fails here with the field path and the reason.
#[test]
fn every_configuration_example_is_valid() {
    let (counts, problems) = check_all();
    assert!(
        problems.is_empty(),
        "{} documentation block(s) to fix:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for (name, _) in FILTERS {
        assert!(
            counts.contains_key(&Checked::Config((*name).to_owned())),
            "no `json {name}` example was found in the documentation: {counts:?}"
        );
    }
    assert!(
        counts.keys().any(|c| matches!(c, Checked::Excerpt(_))),
        "no `yaml envoy/...` excerpt was found: {counts:?}"
    );
}

/// The checks reject what they should, so the test above cannot pass by accident.
#[test]
fn bad_blocks_are_refused() {
    let block = |info: &str, text: &str| Block {
        line: 1,
        info: info.split_whitespace().map(str::to_owned).collect(),
        text: text.to_owned(),
    };
    let refused = [
        block("", "plain"),
        block("json", "{}"),
        block("yaml", "a: 1"),
        block("json nginx", "{}"),
        block(
            "json rate_limit",
            r#"{"rules": [{"name": "r", "key": [{"rule": {}}], "limit": {"requests": 0, "per": "1s"}}]}"#,
        ),
        block("json rate_limit", r#"{"rules": [], "unknown": 1}"#),
        block(
            "json circuit_breaker",
            r#"{"breakers": [{"name": "a"}, {"name": "a"}]}"#,
        ),
        block(
            "json jwt_auth",
            r#"{"providers": {"p": {"issuer": "i", "algorithms": ["none"], "remote_jwks": {"cluster": "c", "path": "/k"}}}}"#,
        ),
        block("json retry_policy", r#"{"rules": [{"num_retries": 11}]}"#),
        block("json gateway", "{}"),
        block("yaml fragment", "a: [1"),
        block("yaml envoy/minimal.yaml", "value: '{\"rules\": []}'"),
        block("yaml envoy/missing.yaml", "a: 1"),
    ];
    for b in &refused {
        assert!(check_block(b).is_err(), "accepted: {b:?}");
    }
    let error = check_block(&refused[4]).expect_err("refused");
    assert!(error.contains("rules[0].limit.requests"), "{error}");

    let accepted = [
        (
            block("json rate_limit", "{}"),
            Checked::Config("rate_limit".into()),
        ),
        (
            block("json fragment", "{ \"rules\": [...] }"),
            Checked::Fragment,
        ),
        (block("yaml fragment", "a: 1"), Checked::Fragment),
        (block("text", "anything"), Checked::Other),
        (
            block(
                "yaml envoy/minimal.yaml",
                "vm_config:\n  vm_id: rate_limit\n",
            ),
            Checked::Excerpt("envoy/minimal.yaml".into()),
        ),
    ];
    for (b, expected) in accepted {
        assert_eq!(check_block(&b), Ok(expected), "{b:?}");
    }
}

#[test]
fn excerpts_keep_their_shape() {
    let file = "a:\n  b:\n    c: 1\n\n    d: 2\n  e: 3\n";
    assert!(is_excerpt("b:\n  c: 1\n", file));
    assert!(is_excerpt("c: 1\n\nd: 2\n", file));
    assert!(!is_excerpt("c: 1\nd: 2\n", file), "lines must be together");
    assert!(
        !is_excerpt("b:\nc: 1\n", file),
        "relative indentation must hold"
    );
    assert!(!is_excerpt("", file));
    assert!(
        Path::new(&markdown::repo_root())
            .join("envoy/minimal.yaml")
            .is_file()
    );
}
