//! The one route matcher every filter uses for its `match` blocks.
//!
//! ```json
//! { "prefix": "/api", "methods": ["GET", "POST"], "headers": [ { "name": "x-tenant", "value": "a" } ] }
//! ```
//! All given conditions must hold; an empty `match` (`{}`) matches every request.
//! - `prefix`: the path (query string excluded) starts with it. Like Envoy's route `prefix`, this
//!   is a plain string prefix: `/api` also matches `/apis`; write `/api/` to mean the folder.
//!   `/` means every request, also one without a path (`CONNECT`), and costs no path read.
//! - `path`: the path (query string excluded) equals it.
//! - `methods`: the `:method` is one of these (case-sensitive, as in RFC 9110).
//! - `headers`: each named header is present, and equals `value` when one is given.
//! - `cluster`: the request is routed to this Envoy cluster (known when the request's headers
//!   arrive, from the route Envoy chose).
//!
//! Filters see the path after Envoy's own normalisation, so the example configurations turn on
//! `normalize_path` and `merge_slashes` in the HTTP connection manager.

use crate::config::{ConfigError, FieldPath, null_default, quoted};
use crate::request::RequestView;
use serde::Deserialize;

/// The `match` block as written in configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    /// Path prefix (query excluded). Must start with `/`.
    pub prefix: Option<String>,
    /// Exact path (query excluded). Must start with `/`.
    pub path: Option<String>,
    /// Allowed methods; absent means any method.
    pub methods: Option<Vec<String>>,
    /// Required headers.
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Vec<HeaderMatchConfig>,
    /// The Envoy cluster the request is routed to.
    pub cluster: Option<String>,
}

/// One header condition: present, or equal to `value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    /// Header name, matched case-insensitively.
    pub name: String,
    /// Exact value required; absent means the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

/// A validated, ready-to-run matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatcher {
    path: PathMatch,
    methods: Option<Vec<String>>,
    headers: Vec<(String, Option<String>)>,
    cluster: Option<String>,
}

impl RouteMatcher {
    /// A matcher that matches every request.
    pub fn any() -> Self {
        Self {
            path: PathMatch::Any,
            methods: None,
            headers: Vec::new(),
            cluster: None,
        }
    }

    /// Validates a `match` block found at `at`.
    pub fn compile(config: &RouteMatchConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        let path = match (&config.prefix, &config.path) {
            (Some(_), Some(_)) => {
                return Err(at.error("give either `prefix` or `path`, not both"));
            }
            // Every path starts with "/": not reading it saves a host call on a catch-all rule.
            (Some(prefix), None) if prefix == "/" => PathMatch::Any,
            (Some(prefix), None) => PathMatch::Prefix(check_path(prefix, &at.field("prefix"))?),
            (None, Some(path)) => PathMatch::Exact(check_path(path, &at.field("path"))?),
            (None, None) => PathMatch::Any,
        };
        let methods = match &config.methods {
            None => None,
            Some(methods) => {
                let methods_at = at.field("methods");
                if methods.is_empty() {
                    return Err(
                        methods_at.error("must list at least one method (omit it to match any)")
                    );
                }
                for (i, method) in methods.iter().enumerate() {
                    if !is_token(method) {
                        return Err(methods_at
                            .index(i)
                            .error(format!("{} is not an HTTP method token", quoted(method))));
                    }
                }
                Some(methods.clone())
            }
        };
        let mut headers = Vec::with_capacity(config.headers.len());
        for (i, header) in config.headers.iter().enumerate() {
            let name = header.name.to_ascii_lowercase();
            let bare = name.strip_prefix(':').unwrap_or(&name);
            if !is_token(bare) {
                return Err(at
                    .field("headers")
                    .index(i)
                    .field("name")
                    .error(format!("{} is not a header name", quoted(&header.name))));
            }
            headers.push((name, header.value.clone()));
        }
        if config.cluster.as_deref() == Some("") {
            return Err(at.field("cluster").error("must name a cluster"));
        }
        Ok(Self {
            path,
            methods,
            headers,
            cluster: config.cluster.clone(),
        })
    }

    /// Whether the request satisfies every condition.
    pub fn matches(&self, request: &dyn RequestView) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => request.path_only().starts_with(prefix.as_str()),
            PathMatch::Exact(path) => request.path_only() == path,
        };
        path_ok
            && self
                .cluster
                .as_deref()
                .is_none_or(|cluster| request.cluster() == Some(cluster))
            && self
                .methods
                .as_ref()
                .is_none_or(|methods| methods.iter().any(|m| m == request.method()))
            && self
                .headers
                .iter()
                .all(|(name, value)| match (request.header(name), value) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(actual), Some(expected)) => actual == expected,
                })
    }
}

fn check_path(value: &str, at: &FieldPath) -> Result<String, ConfigError> {
    if !value.starts_with('/') {
        return Err(at.error(format!("must start with '/', got {}", quoted(value))));
    }
    if value.contains(['?', '#']) {
        return Err(
            at.error("is matched against the path without its query string; remove '?' and '#'")
        );
    }
    Ok(value.to_owned())
}

/// RFC 9110 `token`: what methods and header names are made of.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::request::Request;

    fn compile(json: &str) -> Result<RouteMatcher, ConfigError> {
        let config: RouteMatchConfig = parse(json.as_bytes())?;
        RouteMatcher::compile(&config, &FieldPath::root().field("match"))
    }

    #[test]
    fn cluster_matches_the_route_s_cluster() {
        let m = compile(r#"{"cluster": "orders"}"#).unwrap();
        assert!(m.matches(&Request::new("GET", "/").with_cluster("orders")));
        assert!(!m.matches(&Request::new("GET", "/").with_cluster("users")));
        assert!(!m.matches(&Request::new("GET", "/")));
        assert_eq!(
            compile(r#"{"cluster": ""}"#).unwrap_err().path(),
            "match.cluster"
        );
    }

    #[test]
    fn empty_match_matches_everything() {
        let m = compile("{}").unwrap();
        assert!(m.matches(&Request::new("DELETE", "/anything?x")));
        assert_eq!(m, RouteMatcher::any());
        let nulls =
            r#"{"prefix": null, "path": null, "methods": null, "headers": null, "cluster": null}"#;
        assert_eq!(compile(nulls).unwrap(), RouteMatcher::any());
    }

    #[test]
    fn a_slash_prefix_matches_everything_without_reading_the_path() {
        let m = compile(r#"{"prefix": "/"}"#).unwrap();
        assert_eq!(m, RouteMatcher::any());
        assert!(m.matches(&Request::new("CONNECT", "")));
    }

    #[test]
    fn prefix_ignores_the_query_and_is_a_plain_prefix() {
        let m = compile(r#"{"prefix": "/api"}"#).unwrap();
        assert!(m.matches(&Request::new("GET", "/api")));
        assert!(m.matches(&Request::new("GET", "/api/v1?x=/other")));
        assert!(m.matches(&Request::new("GET", "/apis")));
        assert!(!m.matches(&Request::new("GET", "/ap")));
        assert!(!m.matches(&Request::new("GET", "/v1?q=/api")));
    }

    #[test]
    fn exact_path_ignores_the_query() {
        let m = compile(r#"{"path": "/health"}"#).unwrap();
        assert!(m.matches(&Request::new("GET", "/health?verbose=1")));
        assert!(!m.matches(&Request::new("GET", "/health/")));
    }

    #[test]
    fn methods_are_case_sensitive() {
        let m = compile(r#"{"methods": ["GET", "POST"]}"#).unwrap();
        assert!(m.matches(&Request::new("POST", "/")));
        assert!(!m.matches(&Request::new("post", "/")));
        assert!(!m.matches(&Request::new("PUT", "/")));
    }

    #[test]
    fn headers_present_or_equal() {
        let m = compile(r#"{"headers": [{"name": "X-Tenant", "value": "a"}, {"name": "x-user"}]}"#)
            .unwrap();
        let base = Request::new("GET", "/");
        assert!(
            m.matches(
                &base
                    .clone()
                    .with_header("x-tenant", "a")
                    .with_header("x-user", "")
            )
        );
        assert!(
            !m.matches(
                &base
                    .clone()
                    .with_header("x-tenant", "b")
                    .with_header("x-user", "u")
            )
        );
        assert!(!m.matches(&base.with_header("x-tenant", "a")));
    }

    proptest::proptest! {
        /// Hostile configuration never panics the matcher: it compiles or names a field.
        #[test]
        fn compiling_hostile_match_blocks_never_panics(
            prefix in proptest::option::of(".{0,12}"),
            path in proptest::option::of(".{0,12}"),
            methods in proptest::option::of(proptest::collection::vec(".{0,8}", 0..3)),
            names in proptest::collection::vec(".{0,8}", 0..3),
            request_path in ".{0,24}",
        ) {
            let config = RouteMatchConfig {
                prefix,
                path,
                methods,
                headers: names
                    .into_iter()
                    .map(|name| HeaderMatchConfig { name, value: None })
                    .collect(),
                cluster: None,
            };
            if let Ok(m) = RouteMatcher::compile(&config, &FieldPath::root()) {
                let _ = m.matches(&Request::new("GET", request_path));
            }
        }
    }

    #[test]
    fn invalid_matches_name_the_field() {
        let err = compile(r#"{"prefix": "api"}"#).unwrap_err();
        assert_eq!(err.path(), "match.prefix");
        let err = compile(r#"{"prefix": "/a", "path": "/b"}"#).unwrap_err();
        assert_eq!(err.path(), "match");
        let err = compile(r#"{"methods": []}"#).unwrap_err();
        assert_eq!(err.path(), "match.methods");
        let err = compile(r#"{"methods": ["GET", "BAD METHOD"]}"#).unwrap_err();
        assert_eq!(err.path(), "match.methods[1]");
        let err = compile(r#"{"headers": [{"name": "x y"}]}"#).unwrap_err();
        assert_eq!(err.path(), "match.headers[0].name");
        let err = compile(r#"{"path": "/a?b"}"#).unwrap_err();
        assert_eq!(err.path(), "match.path");
        let err = compile(r#"{"prefx": "/a"}"#).unwrap_err();
        assert_eq!(err.path(), "prefx");
        let err =
            compile(r#"{"headers": [{"name": "a", "value": "1", "name": "b"}]}"#).unwrap_err();
        assert_eq!(err.path(), "headers[0].name");
        let err = compile(r#"{"methods": ["GET", 1]}"#).unwrap_err();
        assert_eq!(err.path(), "methods[1]");
    }
}
