//! Envoy's access log as the examples in `envoy/` write it: one line per request, with each
//! filter's decision (`docs/access-log.md`), read back from what Envoy printed.
//!
//! The examples and [`crate::envoy_config::TestEnvoyConfig::access_log`] print [`FORMAT`] to
//! Envoy's stdout, which [`crate::envoy::Envoy::log`] captures with Envoy's own log; [`entries`]
//! picks the access log's lines out of it.

use crate::envoy::Envoy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The filters whose decision each line carries, in the line's order: each as
/// `<filter>=<value>`, `-` when the filter recorded nothing.
pub const FILTERS: [&str; 4] = ["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"];

/// The line every example prints (Envoy's format string). The path is `%PATH(NQ)%`: without
/// its query string, where a token can ride; no header is printed.
pub const FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %PATH(NQ)% %PROTOCOL%\" \
    %RESPONSE_CODE% %RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% \
    jwt_auth=%FILTER_STATE(wasm.jwt_auth.decision:PLAIN)% \
    rate_limit=%FILTER_STATE(wasm.rate_limit.decision:PLAIN)% \
    circuit_breaker=%FILTER_STATE(wasm.circuit_breaker.decision:PLAIN)% \
    retry_policy=%FILTER_STATE(wasm.retry_policy.decision:PLAIN)%\n";

/// One line of the access log, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `:method`.
    pub method: String,
    /// The path, without its query string.
    pub path: String,
    /// The response status (0 when no response was sent).
    pub status: u16,
    /// `%RESPONSE_FLAGS%` (`-` for none).
    pub flags: String,
    /// `%RESPONSE_CODE_DETAILS%`: empty for a Wasm filter's local reply (the SDK sends none).
    pub details: String,
    /// Each filter's decision, by filter name, as printed (`-` for none).
    pub decisions: BTreeMap<String, String>,
    /// The line as Envoy printed it.
    pub line: String,
}

impl Entry {
    /// What `filter` recorded, or `None` (the line says `-`).
    pub fn decision(&self, filter: &str) -> Option<&str> {
        self.decisions
            .get(filter)
            .map(String::as_str)
            .filter(|v| *v != "-")
    }

    /// Every filter that recorded something, with its value.
    pub fn recorded(&self) -> Vec<(&str, &str)> {
        self.decisions
            .iter()
            .filter(|(_, v)| *v != "-")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Reads one line in [`FORMAT`]; `None` for any other line (Envoy's own log lines).
pub fn parse(line: &str) -> Option<Entry> {
    // `[<time>] "<method> <path> <protocol>" <status> <flags> details=<details>
    // <filter>=<value>...`
    let rest = line.strip_prefix('[')?;
    let (_, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut request = request.split(' ');
    let (method, path) = (request.next()?, request.next()?);
    let mut fields = rest.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    let flags = fields.next()?;
    let details = fields.next()?.strip_prefix("details=")?;
    let mut decisions = BTreeMap::new();
    for (filter, field) in FILTERS.iter().zip(fields.by_ref()) {
        let value = field.strip_prefix(filter)?.strip_prefix('=')?;
        decisions.insert((*filter).to_owned(), value.to_owned());
    }
    if decisions.len() != FILTERS.len() || fields.next().is_some() {
        return None;
    }
    Some(Entry {
        method: method.to_owned(),
        path: path.to_owned(),
        status,
        flags: flags.to_owned(),
        details: details.to_owned(),
        decisions,
        line: line.to_owned(),
    })
}

/// Every access log line in `text` (Envoy's captured output), in order.
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse).collect()
}

/// The access log of `envoy` once it has at least `count` lines. Envoy writes it about once a
/// second; fails the test, with Envoy's log, if the lines do not come.
pub fn wait_for(envoy: &Envoy, count: usize) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = entries(&envoy.log());
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} access log lines, found {}:\n{}",
            found.len(),
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The entry for `method path` (the only one: each request a test makes has its own path).
pub fn find<'a>(entries: &'a [Entry], method: &str, path: &str) -> &'a Entry {
    let found: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.method == method && e.path == path)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one access log line for {method} {path}, found {}:\n{}",
            found.len(),
            entries
                .iter()
                .map(|e| e.line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_in_the_format_reads_back_and_other_lines_do_not() {
        let line = "[2026-12-05T01:19:05.663Z] \"GET /orders/1 HTTP/1.1\" 401 - details= \
                    jwt_auth=invalid_token:expired rate_limit=- circuit_breaker=- retry_policy=-";
        let entry = parse(line).expect("an access log line");
        assert_eq!(
            (entry.method.as_str(), entry.path.as_str(), entry.status),
            ("GET", "/orders/1", 401)
        );
        assert_eq!(entry.details, "");
        assert_eq!(entry.decision("jwt_auth"), Some("invalid_token:expired"));
        assert_eq!(entry.decision("rate_limit"), None);
        assert_eq!(entry.recorded(), [("jwt_auth", "invalid_token:expired")]);
        for other in [
            "[2026-12-05 01:19:01.141][14540][info][main] [source/server/server.cc:1059] hello",
            "[2026-12-05T01:19:05.663Z] \"GET / HTTP/1.1\" 200 - details=x jwt_auth=- rate_limit=-",
            &format!("{line} extra=1"),
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn the_format_names_every_filter_in_the_order_lines_are_read() {
        let mut at = 0;
        for filter in FILTERS {
            let field = format!(" {filter}=%FILTER_STATE(wasm.{filter}.decision:PLAIN)%");
            let found = FORMAT[at..].find(&field).expect(&field);
            at += found + field.len();
        }
        assert_eq!(&FORMAT[at..], "\n");
        assert!(FORMAT.contains("%PATH(NQ)%"));
        assert!(!FORMAT.contains("%REQ(:PATH)%"));
    }
}
