//! Decisions as data: what a filter wants done with a request or a response.
//!
//! Policy code returns these; the host layer is the only code that applies them. Each filter
//! builds its local replies in one place (its table from decision to status, headers and body);
//! the rules that hold for every local reply live here: `cache-control: no-store`, and the
//! gRPC form of a reply to a gRPC request.
//!
//! Each filter also records its decision where Envoy's access log can print it: filter state
//! `<filter>.decision` (read as `%FILTER_STATE(wasm.<filter>.decision:PLAIN)%`), set on a
//! refusal ([`LocalResponse::filter_state`]) and on a request let through other than plainly
//! ([`RequestEdits::filter_state`]); a plain pass sets nothing, and so costs no host call.
//! Values are short codes from a fixed vocabulary (`docs/access-log.md`), never a token, a
//! claim's value or a secret.

use std::borrow::Cow;

/// A header or filter-state name in an edit. Most are fixed (`x-envoy-retry-on`,
/// `ratelimit`) and cost no allocation per request; a name from the configuration is copied.
pub type Name = Cow<'static, str>;

/// What to do with a request whose headers have arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request go on upstream, after applying these edits.
    Continue(RequestEdits),
    /// Answer the request here; it never reaches the upstream.
    Respond(LocalResponse),
    /// Hold the request and decide again on the filter's next tick (for example, until keys
    /// being fetched in the background arrive). The filter bounds the wait itself: it keeps the
    /// time it started waiting in its stream state and answers once that is too long ago.
    Wait,
    /// Hold the request until every one of these gRPC calls has answered or failed, then hand
    /// the results to [`crate::filter::Filter::on_call_response`], in the same order. Each
    /// call carries its own timeout, so the wait is bounded.
    Call(Vec<GrpcCall>),
}

impl Decision {
    /// Continue with no edits.
    pub fn pass() -> Self {
        Decision::Continue(RequestEdits::default())
    }

    /// Continue after these header edits, leaving no filter state.
    pub fn forward(headers: HeaderEdits) -> Self {
        Decision::Continue(RequestEdits {
            headers,
            filter_state: Vec::new(),
        })
    }
}

/// What a request that goes on carries from a filter: its header edits, and values for later
/// filters of the same request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// Changes to the request headers.
    pub headers: HeaderEdits,
    /// Envoy filter state, set with `set_property` (readable as `wasm.<name>`, e.g.
    /// `%FILTER_STATE(wasm.<name>:PLAIN)%`), as `(name, value)`.
    pub filter_state: Vec<(Name, String)>,
}

impl RequestEdits {
    /// No change.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.filter_state.is_empty()
    }

    /// Adds a value for later filters.
    pub fn filter_state(mut self, name: impl Into<Name>, value: impl Into<String>) -> Self {
        self.filter_state.push((name.into(), value.into()));
        self
    }

    /// Appends `later`'s edits with the effect of applying these and then `later`'s (see
    /// [`HeaderEdits::then`]); a filter state value set twice keeps the later one.
    pub fn then(&mut self, later: RequestEdits) {
        self.headers.then(later.headers);
        for (name, value) in later.filter_state {
            self.filter_state.retain(|(n, _)| *n != name);
            self.filter_state.push((name, value));
        }
    }

    /// The value these edits leave in filter state `name`, if any.
    pub fn filter_state_value(&self, name: &str) -> Option<&str> {
        self.filter_state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl From<HeaderEdits> for RequestEdits {
    fn from(headers: HeaderEdits) -> Self {
        Self {
            headers,
            filter_state: Vec::new(),
        }
    }
}

/// An HTTP request the filter wants sent to an Envoy cluster (`dispatch_http_call`), from the
/// root context, in the background of any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// The filter's own tag, handed back with the response.
    pub tag: u64,
    /// The Envoy cluster to send it to.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// How long to wait for the answer.
    pub timeout: std::time::Duration,
}

/// What came back from a [`Callout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutResult {
    /// A response (which may be an Envoy local reply such as a 503 or 504).
    Response {
        /// `:status`, if present and numeric.
        status: Option<u16>,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
    },
    /// No response: the call was reset or could not be made.
    Failed(String),
}

/// A unary gRPC call made for one request (`dispatch_grpc_call`), to an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// The Envoy cluster (HTTP/2) of the service.
    pub cluster: String,
    /// The call's `:authority`; `None`: the cluster's name (Envoy's default).
    pub authority: Option<String>,
    /// The fully qualified service, e.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: &'static str,
    /// The method, e.g. `ShouldRateLimit`.
    pub method: &'static str,
    /// The request message, serialized.
    pub message: Vec<u8>,
    /// How long Envoy waits for the answer before failing the call.
    pub timeout: std::time::Duration,
}

/// What became of a [`GrpcCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcResult {
    /// The call succeeded (`OK`): the response message, serialized.
    Message(Vec<u8>),
    /// The call ended with this gRPC status (not `OK`) and message (`grpc-message`, empty
    /// when none): the service's own error, or Envoy's for a call that found no service
    /// (`UNAVAILABLE`) or ran out of time.
    Status(u32, String),
    /// The call could not be made at all (for example, Envoy refused to start it).
    NotSent(String),
}

/// Header changes, applied in order: removals first, then sets (which replace any value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names to remove.
    pub remove: Vec<Name>,
    /// Headers to set, replacing existing values.
    pub set: Vec<(Name, String)>,
}

impl HeaderEdits {
    /// No change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Adds a removal.
    pub fn remove(mut self, name: impl Into<Name>) -> Self {
        self.remove.push(name.into());
        self
    }

    /// Adds a set.
    pub fn set(mut self, name: impl Into<Name>, value: impl Into<String>) -> Self {
        self.set.push((name.into(), value.into()));
        self
    }

    /// Appends `later`'s edits, keeping the form "removals, then sets" with the effect of
    /// applying these edits and then `later`'s: what several policies inside one module hand
    /// Envoy at once, as separate filters would have applied them one after another.
    pub fn then(&mut self, later: HeaderEdits) {
        for name in later.remove {
            self.set.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            if !self.remove.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                self.remove.push(name);
            }
        }
        for (name, value) in later.set {
            self.set.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            self.set.push((name, value));
        }
    }

    /// The value these edits give the header `name`: `Some(Some(v))` set, `Some(None)`
    /// removed, `None` untouched.
    pub fn header(&self, name: &str) -> Option<Option<&str>> {
        if let Some((_, value)) = self.set.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Some(Some(value));
        }
        self.remove
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
            .then_some(None)
    }
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status for HTTP clients.
    pub status: u16,
    /// Response headers (lower-case names). `cache-control: no-store` is added by [`LocalResponse::new`].
    pub headers: Vec<(String, String)>,
    /// Response body for HTTP clients; the `grpc-message` for gRPC clients.
    pub body: String,
    /// gRPC status for gRPC clients; `None` uses [`grpc_status_for`] on `status`.
    pub grpc_status: Option<u32>,
    /// Why, for Envoy's debug log. Never sent to the client (it may say more than a client
    /// should learn, such as which check a token failed).
    pub detail: String,
    /// Envoy filter state to set before the reply is sent, as `(name, value)` (see
    /// [`RequestEdits::filter_state`]): the refusing filter's decision, for the access log
    /// (`%FILTER_STATE(wasm.<name>:PLAIN)%`), and in a module that chains filters, what the
    /// filters before it left. Never sent to the client.
    pub filter_state: Vec<(Name, String)>,
}

impl LocalResponse {
    /// A local reply with `status`, carrying `cache-control: no-store`: a decision about this
    /// request must never be served from a cache to another one.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: vec![("cache-control".to_owned(), "no-store".to_owned())],
            body: String::new(),
            grpc_status: None,
            detail: String::new(),
            filter_state: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the reason logged at debug level (never sent).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Sets a filter state value before the reply goes out (a value set twice keeps the later
    /// one).
    pub fn filter_state(mut self, name: impl Into<Name>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.filter_state.retain(|(n, _)| *n != name);
        self.filter_state.push((name, value.into()));
        self
    }

    /// Puts `earlier` (filter state that filters before this one left) before this reply's
    /// own, as Envoy keeps what earlier filters set when a later one answers; a name in both
    /// keeps this reply's value.
    pub fn after_filter_state(mut self, earlier: Vec<(Name, String)>) -> Self {
        let own = std::mem::replace(&mut self.filter_state, earlier);
        for (name, value) in own {
            self = self.filter_state(name, value);
        }
        self
    }

    /// The filter state value this reply sets for `name`, if any.
    pub fn filter_state_value(&self, name: &str) -> Option<&str> {
        self.filter_state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Overrides the gRPC status sent to gRPC clients.
    pub fn grpc_status(mut self, code: u32) -> Self {
        self.grpc_status = Some(code);
        self
    }

    /// The gRPC status a gRPC client receives for this reply.
    pub fn effective_grpc_status(&self) -> u32 {
        self.grpc_status
            .unwrap_or_else(|| grpc_status_for(self.status))
    }
}

/// gRPC status codes (the subset our replies use), from `google.rpc.Code`.
pub mod grpc {
    /// `INVALID_ARGUMENT`
    pub const INVALID_ARGUMENT: u32 = 3;
    /// `DEADLINE_EXCEEDED`
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// `NOT_FOUND`
    pub const NOT_FOUND: u32 = 5;
    /// `PERMISSION_DENIED`
    pub const PERMISSION_DENIED: u32 = 7;
    /// `RESOURCE_EXHAUSTED`
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// `INTERNAL`
    pub const INTERNAL: u32 = 13;
    /// `UNAVAILABLE`
    pub const UNAVAILABLE: u32 = 14;
    /// `UNAUTHENTICATED`
    pub const UNAUTHENTICATED: u32 = 16;
    /// `UNKNOWN`
    pub const UNKNOWN: u32 = 2;

    /// Every status code's canonical name, by number (`google.rpc.Code`, 0 to 16).
    pub const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The code a canonical name stands for (upper case, as in the gRPC spec).
    pub fn code_named(name: &str) -> Option<u32> {
        NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The canonical name of a code, if it is one.
    pub fn name_of(code: u32) -> Option<&'static str> {
        NAMES.get(usize::try_from(code).ok()?).copied()
    }

    /// Reads a `grpc-status` value: a decimal code with no sign or spaces (the gRPC spec's
    /// "1*DIGIT"). A code outside 0 to 16 is still a code (clients map it to `UNKNOWN`).
    pub fn parse_status(value: &str) -> Option<u32> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    }
}

/// The gRPC status for a local reply's HTTP status.
///
/// Differs from the gRPC spec's mapping of *upstream* HTTP statuses in one place on purpose:
/// a 429 from our rate limiter is `RESOURCE_EXHAUSTED` (the client is over quota), not
/// `UNAVAILABLE` (which gRPC clients retry at once).
pub fn grpc_status_for(http_status: u16) -> u32 {
    match http_status {
        400 => grpc::INVALID_ARGUMENT,
        401 => grpc::UNAUTHENTICATED,
        403 => grpc::PERMISSION_DENIED,
        404 => grpc::NOT_FOUND,
        429 => grpc::RESOURCE_EXHAUSTED,
        502 | 503 => grpc::UNAVAILABLE,
        504 => grpc::DEADLINE_EXCEEDED,
        500..=599 => grpc::INTERNAL,
        _ => grpc::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_are_never_cached() {
        let r = LocalResponse::new(429)
            .header("retry-after", "3")
            .body("slow down");
        assert_eq!(r.headers[0], ("cache-control".into(), "no-store".into()));
        assert_eq!(r.headers[1], ("retry-after".into(), "3".into()));
    }

    /// Applies edits to a header list the way the host does: removals, then sets.
    fn apply(headers: &[(&str, &str)], edits: &HeaderEdits) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| !edits.remove.iter().any(|r| r == n))
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        for (name, value) in &edits.set {
            out.retain(|(n, _)| n != name);
            out.push((name.to_string(), value.clone()));
        }
        out.sort();
        out
    }

    proptest::proptest! {
        /// Merged edits do to any header list what the two sets of edits do one after the
        /// other.
        #[test]
        fn merged_edits_equal_edits_applied_in_turn(
            start in proptest::collection::vec((0..4u8, 0..3u8), 0..5),
            first in proptest::collection::vec((proptest::bool::ANY, 0..4u8, 0..3u8), 0..5),
            second in proptest::collection::vec((proptest::bool::ANY, 0..4u8, 0..3u8), 0..5),
        ) {
            const NAMES: [&str; 4] = ["a", "b", "c", "d"];
            const VALUES: [&str; 3] = ["1", "2", "3"];
            let edits = |ops: &[(bool, u8, u8)]| {
                ops.iter().fold(HeaderEdits::default(), |e, (remove, n, v)| {
                    let name = NAMES[usize::from(*n)];
                    if *remove { e.remove(name) } else { e.set(name, VALUES[usize::from(*v)]) }
                })
            };
            // One value per name, as `set` leaves it.
            let mut headers: Vec<(&str, &str)> = Vec::new();
            for (n, v) in start {
                let name = NAMES[usize::from(n)];
                headers.retain(|(h, _)| *h != name);
                headers.push((name, VALUES[usize::from(v)]));
            }
            let (first, second) = (edits(&first), edits(&second));
            let after_first = apply(&headers, &first);
            let borrowed: Vec<(&str, &str)> =
                after_first.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let in_turn = apply(&borrowed, &second);
            let mut merged = first.clone();
            merged.then(second);
            proptest::prop_assert_eq!(apply(&headers, &merged), in_turn);
        }
    }

    #[test]
    fn merged_edits_say_what_they_did_to_a_header() {
        let mut edits = HeaderEdits::default().remove("x-user-id").set("x-a", "1");
        edits.then(HeaderEdits::default().set("x-user-id", "u").remove("x-a"));
        assert_eq!(edits.header("x-user-id"), Some(Some("u")));
        assert_eq!(edits.header("x-a"), Some(None));
        assert_eq!(edits.header("x-b"), None);
    }

    #[test]
    fn merged_request_edits_keep_the_later_filter_state() {
        let mut edits = RequestEdits::from(HeaderEdits::default().set("x-a", "1"));
        edits.then(RequestEdits::default().filter_state("s", "1"));
        edits.then(RequestEdits::from(HeaderEdits::default().remove("x-a")).filter_state("s", "2"));
        assert_eq!(edits.filter_state, [("s".into(), "2".to_owned())]);
        assert_eq!(edits.filter_state_value("s"), Some("2"));
        assert_eq!(edits.headers.header("x-a"), Some(None));
        assert!(!edits.is_empty());
        assert!(RequestEdits::default().is_empty());
    }

    #[test]
    fn a_reply_keeps_earlier_filter_state_behind_its_own() {
        let reply = LocalResponse::new(503)
            .filter_state("b.decision", "open:x")
            .after_filter_state(vec![
                ("a.decision".into(), "shadow_limited:r".to_owned()),
                ("b.decision".into(), "stale".to_owned()),
            ]);
        assert_eq!(
            reply.filter_state,
            [
                ("a.decision".into(), "shadow_limited:r".to_owned()),
                ("b.decision".into(), "open:x".to_owned()),
            ]
        );
        assert_eq!(reply.filter_state_value("b.decision"), Some("open:x"));
        assert_eq!(reply.filter_state_value("c.decision"), None);
        assert!(LocalResponse::new(401).filter_state.is_empty());
    }

    #[test]
    fn grpc_mapping_table() {
        for (http, grpc) in [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 5),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 13),
            (418, 2),
        ] {
            assert_eq!(grpc_status_for(http), grpc, "HTTP {http}");
        }
        assert_eq!(
            LocalResponse::new(429)
                .grpc_status(14)
                .effective_grpc_status(),
            14
        );
    }
}
