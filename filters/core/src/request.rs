//! What policy code may see of a request (and of its response).

use crate::decision::{HeaderEdits, RequestEdits};

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

    /// The name of the Envoy route the request matched (`xds.route_name`), if it has one.
    fn route_name(&self) -> Option<&str> {
        None
    }

    /// A value an earlier filter left for later ones ([`crate::decision::RequestEdits::filter_state`]).
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

    /// Whether this is a gRPC request (its local replies must then be gRPC responses), by
    /// Envoy's own rule (`Grpc::Common::hasGrpcContentType`): `content-type` is exactly
    /// `application/grpc` or starts with `application/grpc+`. Envoy turns a local reply into
    /// a gRPC answer only for those; any wider test (`application/grpc-web`,
    /// `application/GRPC`) would send a refusal as an HTTP 200 without `grpc-status`.
    fn is_grpc(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
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
    route_name: Option<String>,
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
            route_name: None,
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

    /// Sets the name of the route the request matched.
    pub fn with_route_name(mut self, name: impl Into<String>) -> Self {
        self.route_name = Some(name.into());
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

    fn route_name(&self) -> Option<&str> {
        self.route_name.as_deref()
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
    /// Envoy's response flags (`response.flags`), as its legacy bit mask: see
    /// [`response_flags`].
    fn response_flags(&self) -> Option<u64> {
        None
    }
}

/// Bits of Envoy's `response.flags` (`envoy/stream_info/stream_info.h`, the legacy mask: bit
/// `i` is `CoreResponseFlag` number `i`). Only the ones policies look at.
pub mod response_flags {
    /// `UH`: no healthy upstream host.
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    /// `UT`: the upstream request timed out.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    /// `LR`: Envoy reset the stream itself.
    pub const LOCAL_RESET: u64 = 0x8;
    /// `UR`: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    /// `UF`: no connection to the upstream.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    /// `UC`: the upstream connection closed mid-stream.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    /// `DC`: the client's connection closed.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    /// `UMSDR`: the upstream stream ran past its maximum duration.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x8_0000;
    /// `UPE`: the upstream broke the protocol.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;
    /// `DR`: the client reset the stream.
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 0x1000_0000;

    /// Flags that say the upstream failed the call.
    pub const UPSTREAM_FAILED: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR;

    /// Flags that say the client went away.
    pub const CLIENT_LEFT: u64 = DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET;
}

/// An owned response view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    headers: Vec<(String, String)>,
    code_details: Option<String>,
    attempts: Option<u64>,
    flags: Option<u64>,
}

impl Response {
    /// A response with the given status.
    pub fn new(status: u16) -> Self {
        Self {
            headers: vec![(":status".to_owned(), status.to_string())],
            code_details: None,
            attempts: None,
            flags: None,
        }
    }

    /// Sets `upstream.request_attempt_count`.
    pub fn with_attempts(mut self, attempts: u64) -> Self {
        self.attempts = Some(attempts);
        self
    }

    /// Sets `response.flags`.
    pub fn with_flags(mut self, flags: u64) -> Self {
        self.flags = Some(flags);
        self
    }

    /// A view with no headers at all (a stream that ended before any response, or trailers
    /// to be added with [`Response::with_header`]).
    pub fn empty() -> Self {
        Self::from_pairs(Vec::new())
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
            flags: None,
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

    fn response_flags(&self) -> Option<u64> {
        self.flags
    }
}

/// A request as a later policy sees it after earlier ones' edits, before the host applies any
/// of them: policies combined in one module see what separate filters would.
#[derive(Clone, Copy)]
pub struct EditedRequest<'a> {
    request: &'a dyn RequestView,
    edits: &'a RequestEdits,
    /// Policies whose filter state (`<policy>.<name>`) is all in `edits`.
    owners: &'a [&'static str],
}

impl<'a> EditedRequest<'a> {
    /// `request` with `edits` applied.
    pub fn new(request: &'a dyn RequestView, edits: &'a RequestEdits) -> Self {
        Self {
            request,
            edits,
            owners: &[],
        }
    }

    /// The same, where `edits` hold everything the policies `owners` left: their filter state
    /// (`<policy>.<name>`) is answered from the edits alone, without asking the host.
    pub fn owned_by(mut self, owners: &'a [&'static str]) -> Self {
        self.owners = owners;
        self
    }

    fn owns(&self, name: &str) -> bool {
        self.owners.iter().any(|owner| {
            name.strip_prefix(owner)
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

impl std::fmt::Debug for EditedRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditedRequest")
            .field("edits", self.edits)
            .finish_non_exhaustive()
    }
}

impl RequestView for EditedRequest<'_> {
    fn method(&self) -> &str {
        match self.edits.headers.header(":method") {
            Some(Some(method)) => method,
            _ => self.request.method(),
        }
    }

    fn path(&self) -> &str {
        match self.edits.headers.header(":path") {
            Some(Some(path)) => path,
            _ => self.request.path(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self.edits.headers.header(name) {
            Some(edited) => edited,
            None => self.request.header(name),
        }
    }

    fn header_values(&self, name: &str) -> Vec<&str> {
        match self.edits.headers.header(name) {
            Some(edited) => edited.into_iter().collect(),
            None => self.request.header_values(name),
        }
    }

    fn client_address(&self) -> Option<&str> {
        self.request.client_address()
    }

    fn cluster(&self) -> Option<&str> {
        self.request.cluster()
    }

    fn route_name(&self) -> Option<&str> {
        self.request.route_name()
    }

    fn filter_state(&self, name: &str) -> Option<&str> {
        match self.edits.filter_state_value(name) {
            Some(value) => Some(value),
            None if self.owns(name) => None,
            None => self.request.filter_state(name),
        }
    }
}

/// A response as an earlier policy (in request order) sees it after later ones' header edits:
/// the response-side twin of [`EditedRequest`].
#[derive(Clone, Copy)]
pub struct EditedResponse<'a> {
    response: &'a dyn ResponseView,
    edits: &'a HeaderEdits,
}

impl<'a> EditedResponse<'a> {
    /// `response` with `edits` applied.
    pub fn new(response: &'a dyn ResponseView, edits: &'a HeaderEdits) -> Self {
        Self { response, edits }
    }
}

impl std::fmt::Debug for EditedResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditedResponse")
            .field("edits", self.edits)
            .finish_non_exhaustive()
    }
}

impl ResponseView for EditedResponse<'_> {
    fn status(&self) -> Option<u16> {
        match self.edits.header(":status") {
            Some(status) => status?.parse().ok(),
            None => self.response.status(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self.edits.header(name) {
            Some(edited) => edited,
            None => self.response.header(name),
        }
    }

    fn code_details(&self) -> Option<&str> {
        self.response.code_details()
    }

    fn attempts(&self) -> Option<u64> {
        self.response.attempts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_request_shows_the_edits_and_otherwise_the_request() {
        let request = Request::new("GET", "/a")
            .with_header("x-user-id", "forged")
            .with_header("x-keep", "1")
            .with_header("x-keep", "2")
            .with_filter_state("s", "old")
            .with_cluster("c");
        let edits = RequestEdits::from(
            HeaderEdits::default()
                .remove("x-user-id")
                .remove("x-gone")
                .set("x-user-id", "alice"),
        )
        .filter_state("s", "new");
        let view = EditedRequest::new(&request, &edits);
        assert_eq!(view.header("x-user-id"), Some("alice"));
        assert_eq!(view.header_values("x-user-id"), ["alice"]);
        assert_eq!(view.header_values("x-keep"), ["1", "2"]);
        assert_eq!(view.header("x-gone"), None);
        assert_eq!(view.filter_state("s"), Some("new"));
        assert_eq!(
            (view.method(), view.path(), view.cluster()),
            ("GET", "/a", Some("c"))
        );
        let removed = RequestEdits::from(HeaderEdits::default().remove("x-keep"));
        assert!(
            EditedRequest::new(&request, &removed)
                .header_values("x-keep")
                .is_empty()
        );
    }

    #[test]
    fn filter_state_of_policies_that_ran_comes_from_the_edits_alone() {
        let request = Request::new("GET", "/")
            .with_filter_state("breaker.state", "half_open")
            .with_filter_state("breakers.state", "x")
            .with_filter_state("other.state", "y");
        let edits = RequestEdits::default().filter_state("breaker.decision", "probe");
        let owners = ["breaker"];
        let view = EditedRequest::new(&request, &edits).owned_by(&owners);
        assert_eq!(view.filter_state("breaker.decision"), Some("probe"));
        // The policy ran and left no state: none, whatever an earlier filter left.
        assert_eq!(view.filter_state("breaker.state"), None);
        assert_eq!(view.filter_state("breakers.state"), Some("x"));
        assert_eq!(view.filter_state("other.state"), Some("y"));
        let unowned = EditedRequest::new(&request, &edits);
        assert_eq!(unowned.filter_state("breaker.state"), Some("half_open"));
    }

    #[test]
    fn an_edited_response_shows_the_edits() {
        let response = Response::new(503)
            .with_header("retry-after", "9")
            .with_attempts(2);
        let edits = HeaderEdits::default().set("retry-after", "3");
        let view = EditedResponse::new(&response, &edits);
        assert_eq!(
            (view.status(), view.header("retry-after")),
            (Some(503), Some("3"))
        );
        assert_eq!(view.attempts(), Some(2));
    }

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
        assert!(
            Request::new("POST", "/p.S/M")
                .with_header("content-type", "application/grpc")
                .is_grpc()
        );
        // What Envoy does not answer as gRPC: a refusal must then keep its HTTP status.
        for not_grpc in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/GRPC",
            "application/grpcx",
        ] {
            assert!(
                !Request::new("POST", "/p.S/M")
                    .with_header("content-type", not_grpc)
                    .is_grpc(),
                "{not_grpc}"
            );
        }
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
