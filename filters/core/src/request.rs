//! What policy code may see of a request (and of its response).

/// A read-only view of the request, as the filter saw it when its request headers arrived.
///
/// Header names are lower case (Envoy normalises them). Where a header repeats, `header`
/// returns the first value, as Envoy's own header lookup does.
pub trait RequestView {
    /// The `:method` pseudo-header, e.g. `GET`.
    fn method(&self) -> &str;
    /// The `:path` pseudo-header, including any query string.
    fn path(&self) -> &str;
    /// The first value of the header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<&str>;

    /// The downstream peer's address as Envoy reports it (`source.address`: `ip:port`, IPv6
    /// in brackets), if known. Envoy derives it from `x-forwarded-for` only when its HTTP
    /// connection manager is told to trust that header.
    fn client_address(&self) -> Option<&str> {
        None
    }

    /// The Envoy cluster the request is routed to (`xds.cluster_name`), if any.
    fn cluster(&self) -> Option<&str> {
        None
    }

    /// A value an earlier filter left for later ones ([`crate::decision::HeaderEdits::filter_state`]).
    fn filter_state(&self, _name: &str) -> Option<&str> {
        None
    }

    /// Every value of the header `name`, in order (a header may be repeated).
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.header(name).into_iter().collect()
    }

    /// The path without its query string or fragment.
    fn path_only(&self) -> &str {
        let path = self.path();
        match path.find(['?', '#']) {
            Some(end) => path.get(..end).unwrap_or(path),
            None => path,
        }
    }

    /// Whether this is a gRPC request (its local replies must then be gRPC responses).
    fn is_grpc(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        })
    }
}

/// An owned request view: the host layer fills one from Envoy's header map in a single host
/// call, and tests build them by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    client_address: Option<String>,
    cluster: Option<String>,
    filter_state: Vec<(String, String)>,
}

impl Request {
    /// A request with the given method and path and no other headers.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            client_address: None,
            cluster: None,
            filter_state: Vec::new(),
        }
    }

    /// Adds a value an earlier filter left.
    pub fn with_filter_state(mut self, name: &str, value: &str) -> Self {
        self.filter_state.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the cluster the request is routed to.
    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// Sets the peer's address (`ip:port`).
    pub fn with_client_address(mut self, address: impl Into<String>) -> Self {
        self.client_address = Some(address.into());
        self
    }

    /// Adds a header (the name is lower-cased).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Builds a view from Envoy's header pairs, pseudo-headers included.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut request = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => request.method = value.clone(),
                ":path" => request.path = value.clone(),
                _ => {}
            }
            request.headers.push((name, value));
        }
        request
    }
}

impl RequestView for Request {
    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn client_address(&self) -> Option<&str> {
        self.client_address.as_deref()
    }

    fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    fn filter_state(&self, name: &str) -> Option<&str> {
        self.filter_state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A read-only view of the upstream's (or a local reply's) response headers.
pub trait ResponseView {
    /// The `:status` code; `None` if it is missing or not a number.
    fn status(&self) -> Option<u16>;
    /// The first value of the header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<&str>;
    /// Who produced the response, as Envoy's `response.code_details` says: `via_upstream` for
    /// the upstream's own answer; otherwise the reason of a local reply (`response_timeout`,
    /// `upstream_reset_before_response_started{...}`, ...).
    fn code_details(&self) -> Option<&str> {
        None
    }
    /// How many times Envoy's router sent the request upstream (`upstream.request_attempt_count`:
    /// 1 without retries).
    fn attempts(&self) -> Option<u64> {
        None
    }
}

/// An owned response view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    headers: Vec<(String, String)>,
    code_details: Option<String>,
    attempts: Option<u64>,
}

impl Response {
    /// A response with the given status.
    pub fn new(status: u16) -> Self {
        Self {
            headers: vec![(":status".to_owned(), status.to_string())],
            code_details: None,
            attempts: None,
        }
    }

    /// Sets `upstream.request_attempt_count`.
    pub fn with_attempts(mut self, attempts: u64) -> Self {
        self.attempts = Some(attempts);
        self
    }

    /// Sets `response.code_details`.
    pub fn with_code_details(mut self, details: impl Into<String>) -> Self {
        self.code_details = Some(details.into());
        self
    }

    /// Adds a header (the name is lower-cased).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Builds a view from Envoy's header pairs, pseudo-headers included.
    pub fn from_pairs(headers: Vec<(String, String)>) -> Self {
        Self {
            headers,
            code_details: None,
            attempts: None,
        }
    }
}

impl ResponseView for Response {
    fn status(&self) -> Option<u16> {
        self.header(":status")?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code_details(&self) -> Option<&str> {
        self.code_details.as_deref()
    }

    fn attempts(&self) -> Option<u64> {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_fill_method_and_path() {
        let r = Request::from_pairs(vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/a/b?x=1#f".into()),
            ("x-id".into(), "7".into()),
            ("x-id".into(), "8".into()),
        ]);
        assert_eq!(r.method(), "POST");
        assert_eq!(r.path_only(), "/a/b");
        assert_eq!(r.header("x-id"), Some("7"));
        assert_eq!(r.header_values("x-id"), ["7", "8"]);
        assert_eq!(r.header(":path"), Some("/a/b?x=1#f"));
    }

    #[test]
    fn grpc_is_detected_by_content_type() {
        let grpc = Request::new("POST", "/pkg.Svc/M")
            .with_header("content-type", "application/grpc+proto");
        assert!(grpc.is_grpc());
        assert!(
            !Request::new("GET", "/")
                .with_header("content-type", "application/json")
                .is_grpc()
        );
        assert!(
            !Request::new("GET", "/")
                .with_header("content-type", "applic")
                .is_grpc()
        );
    }

    proptest::proptest! {
        /// Whatever bytes a client sends, the views answer without panicking (multi-byte
        /// characters at the slicing points included).
        #[test]
        fn views_never_panic_on_hostile_headers(path in ".{0,40}", content_type in ".{0,24}", status in ".{0,6}") {
            let r = Request::new("GET", path).with_header("content-type", content_type);
            let _ = r.path_only();
            let _ = r.is_grpc();
            let _ = Response::from_pairs(vec![(":status".into(), status)]).status();
        }
    }

    #[test]
    fn response_status_parses() {
        assert_eq!(Response::new(503).status(), Some(503));
        assert_eq!(Response::default().status(), None);
        assert_eq!(
            Response::from_pairs(vec![(":status".into(), "x".into())]).status(),
            None
        );
    }
}
