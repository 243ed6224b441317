//! Host calls, each wrapped so that its failure is a value rather than a trap.

use filter_core::decision::{Callout, GrpcCall, HeaderEdits, LocalResponse, RequestEdits};
use filter_core::metrics::{MetricId, MetricKind, Metrics};
use filter_core::signature::{Digest, NativeVerifier};
use filter_core::store::{Cas, SharedStore, StoreError, Written};
use filter_core::time::Time;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{GrpcStatusCode, MapType, MetricType, Status};
use std::cell::Cell;
use std::time::UNIX_EPOCH;

/// Sets the `log` crate's level to the one Envoy's `wasm` log has now, so a line Envoy would
/// drop costs nothing (the macros skip it before formatting anything). Envoy's level can change
/// at run time (`POST /logging?wasm=debug` on the admin port), so this runs on every tick too.
pub(crate) fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// The host's wall clock, or `None` if Envoy cannot tell the time.
pub(crate) fn now() -> Option<Time> {
    let since_epoch = hostcalls::get_current_time()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    Some(Time::from_nanos(
        u64::try_from(since_epoch.as_nanos()).ok()?,
    ))
}

/// The host's clock for one callback: read the first time a filter asks, then the same answer
/// for the rest of the callback. A read costs a host call, and many callbacks (a response a
/// rate limiter only adds headers to, a retry rule without a budget) never need the time.
pub(crate) struct CallbackClock<'a> {
    read: Cell<Option<Time>>,
    /// The worker's latest reading, kept for the next callback: what a failed read (which
    /// Envoy never has) falls back to.
    latest: &'a Cell<Time>,
}

impl<'a> CallbackClock<'a> {
    pub(crate) fn new(latest: &'a Cell<Time>) -> Self {
        Self {
            read: Cell::new(None),
            latest,
        }
    }
}

impl filter_core::filter::Clock for CallbackClock<'_> {
    fn now(&self) -> Time {
        if let Some(time) = self.read.get() {
            return time;
        }
        let time = match now() {
            Some(time) => {
                self.latest.set(time);
                time
            }
            None => {
                log::warn!("the host clock is unavailable: using the latest time read");
                self.latest.get()
            }
        };
        self.read.set(Some(time));
        time
    }
}

/// A seed from the host's randomness (WASI `random_get`, through std's hasher keys): each
/// worker's generator starts somewhere else.
pub(crate) fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// The plugin configuration bytes (empty when none is given).
pub(crate) fn plugin_configuration() -> Result<Vec<u8>, Status> {
    hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .map(Option::unwrap_or_default)
}

pub(crate) fn header_pairs(map: MapType) -> Result<Vec<(String, String)>, Status> {
    hostcalls::get_map(map)
}

/// The body of the callout response being delivered.
pub(crate) fn call_response_body(size: usize) -> Result<Vec<u8>, Status> {
    hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, size)
        .map(Option::unwrap_or_default)
}

/// Sends a callout; its answer arrives in the root's `on_http_call_response`.
pub(crate) fn dispatch(callout: &Callout) -> Result<u32, String> {
    let headers = vec![
        (":method", "GET"),
        (":path", callout.path.as_str()),
        (":authority", callout.authority.as_str()),
        ("accept", "application/json"),
    ];
    hostcalls::dispatch_http_call(&callout.cluster, headers, None, Vec::new(), callout.timeout)
        .map_err(|status| format!("cannot call cluster {}: {status:?}", callout.cluster))
}

/// Envoy's `GrpcService` (`envoy/config/core/v3/grpc_service.proto`), as much as a call
/// needs: the cluster, through Envoy's own gRPC client.
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    /// Empty: the cluster's name.
    #[prost(string, tag = "2")]
    authority: String,
}

/// Sends a unary gRPC call; its answer arrives in the `on_grpc_call_response` of the context
/// that sent it.
///
/// The cluster goes to Envoy as a serialized `GrpcService`, not as a bare name: Envoy first
/// tries to read the name as that message, and some names (`hi`, say) read as a valid one,
/// which Envoy then refuses with a status the SDK traps on. A missing cluster is then an
/// error here or an `UNAVAILABLE` answer, never a trap.
pub(crate) fn dispatch_grpc(call: &GrpcCall) -> Result<u32, String> {
    use prost::Message as _;
    let service = GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: call.cluster.clone(),
            authority: call.authority.clone().unwrap_or_default(),
        }),
    }
    .encode_to_vec();
    // The SDK takes the service as text; the bytes of a message need not be UTF-8, but
    // this one is: field tags and lengths below 128 are ASCII, and the name is UTF-8.
    let Ok(service) = std::str::from_utf8(&service) else {
        return Err(format!(
            "cluster name {} or authority too long",
            call.cluster
        ));
    };
    hostcalls::dispatch_grpc_call(
        service,
        call.service,
        call.method,
        Vec::new(),
        Some(&call.message),
        call.timeout,
    )
    .map_err(|status| format!("cannot call cluster {}: {status:?}", call.cluster))
}

/// Applies header edits to the request or response header map.
pub(crate) fn apply_edits(map: MapType, edits: &HeaderEdits) -> Result<(), Status> {
    for name in &edits.remove {
        hostcalls::remove_map_value(map, name)?;
    }
    for (name, value) in &edits.set {
        hostcalls::set_map_value(map, name, Some(value))?;
    }
    Ok(())
}

/// Applies a passed request's edits: its headers, then the filter state it leaves.
pub(crate) fn apply_request_edits(edits: &RequestEdits) -> Result<(), Status> {
    apply_edits(MapType::HttpRequestHeaders, &edits.headers)?;
    for (name, value) in &edits.filter_state {
        hostcalls::set_property(vec![name.as_ref()], Some(value.as_bytes()))?;
    }
    Ok(())
}

/// Sends a local reply: HTTP as described, or trailers-only gRPC for gRPC requests. The
/// reply's filter state is set first, so the access log can say why.
pub(crate) fn send_local_response(reply: &LocalResponse, grpc: bool) -> Result<(), Status> {
    for (name, value) in &reply.filter_state {
        // Only the access log reads it: a host that refuses it still gets the reply sent.
        if let Err(status) = hostcalls::set_property(vec![name.as_ref()], Some(value.as_bytes())) {
            log::debug!("cannot set filter state {name}: {status:?}");
        }
    }
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if grpc {
        let message = (!reply.body.is_empty()).then_some(reply.body.as_str());
        let metadata = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        hostcalls::send_grpc_response(grpc_code(reply.effective_grpc_status()), message, metadata)
    } else {
        let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
        hostcalls::send_http_response(u32::from(reply.status), headers, body)
    }
}

fn grpc_code(code: u32) -> GrpcStatusCode {
    use GrpcStatusCode as G;
    match code {
        0 => G::Ok,
        1 => G::Cancelled,
        3 => G::InvalidArgument,
        4 => G::DeadlineExceeded,
        5 => G::NotFound,
        6 => G::AlreadyExists,
        7 => G::PermissionDenied,
        8 => G::ResourceExhausted,
        9 => G::FailedPrecondition,
        10 => G::Aborted,
        11 => G::OutOfRange,
        12 => G::Unimplemented,
        13 => G::Internal,
        14 => G::Unavailable,
        15 => G::DataLoss,
        16 => G::Unauthenticated,
        _ => G::Unknown,
    }
}

/// Shared data, the store every worker of this Envoy sees (namespaced by the plugin's `vm_id`).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((_, None)) => Ok(None),
            Ok((bytes, Some(cas))) => Ok(Some((bytes.unwrap_or_default(), cas))),
            Err(status) => Err(StoreError::Host(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(Written::Yes),
            Err(Status::CasMismatch) => Ok(Written::CasMismatch),
            Err(status) => Err(StoreError::Host(format!("set_shared_data: {status:?}"))),
        }
    }
}

/// A filter's metrics, defined in Envoy by the names [`filter_core::filter::Filter::metric_names`] gives
/// (see [`filter_core::metrics`]).
///
/// Counter and gauge changes are summed in the worker's memory and handed to Envoy by
/// [`HostMetrics::flush`], which the root context calls on every tick (at least once a second)
/// and when the plugin stops: each `increment_metric` is a host call, and a request that
/// bumped two counters paid for two of them. `/stats` therefore lags by up to a second.
#[derive(Debug, Default)]
pub struct HostMetrics {
    /// Envoy's id of each declared metric, with the change not yet handed to Envoy.
    metrics: Vec<(u32, MetricKind, Cell<i64>)>,
}

impl HostMetrics {
    /// Defines every metric, by full name, in id order.
    pub(crate) fn define(names: &[(String, MetricKind)]) -> Result<Self, String> {
        let mut metrics = Vec::with_capacity(names.len());
        for (name, kind) in names {
            let host_kind = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let id = hostcalls::define_metric(host_kind, name)
                .map_err(|status| format!("cannot define metric {name}: {status:?}"))?;
            metrics.push((id, *kind, Cell::new(0)));
        }
        Ok(Self { metrics })
    }

    /// Hands every pending change to Envoy.
    pub(crate) fn flush(&self) {
        for (host_id, _, pending) in &self.metrics {
            let delta = pending.replace(0);
            if delta != 0 {
                // A refused increment (e.g. a non-positive delta on a counter) is not worth a
                // trap.
                let _ = hostcalls::increment_metric(*host_id, delta);
            }
        }
    }
}

impl Metrics for HostMetrics {
    fn add(&self, id: MetricId, delta: i64) {
        if let Some((_, MetricKind::Counter | MetricKind::Gauge, pending)) = self.metrics.get(id.0)
        {
            pending.set(pending.get().saturating_add(delta));
        }
    }

    fn record(&self, id: MetricId, value: u64) {
        if let Some((host_id, _, pending)) = self.metrics.get(id.0) {
            // Setting a gauge overrides the changes made before.
            pending.set(0);
            let _ = hostcalls::record_metric(*host_id, value);
        }
    }
}

/// Envoy's `verify_signature` foreign function (BoringSSL). Remembers when Envoy does not have
/// it, so a module on another host asks once, logs why, and from then on verifies in Wasm.
#[derive(Debug)]
pub(crate) struct HostVerifier {
    unavailable: std::cell::Cell<bool>,
    /// The filter's name, heading the log line.
    filter: &'static str,
}

impl HostVerifier {
    /// The host's verifier, as filter `filter` uses it.
    pub(crate) fn new(filter: &'static str) -> Self {
        Self {
            unavailable: std::cell::Cell::new(false),
            filter,
        }
    }
}

impl NativeVerifier for HostVerifier {
    fn verify(
        &self,
        digest: Digest,
        public_key: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        if self.unavailable.get() {
            return None;
        }
        let arguments = verify_signature_arguments(digest, public_key, signature, message);
        match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
            Ok(Some(result)) => verify_signature_result(&result),
            Ok(None) => None,
            Err(Status::NotFound) => {
                self.unavailable.set(true);
                log::info!(
                    "{}: this host has no verify_signature function: signatures are verified \
                     in Wasm",
                    self.filter
                );
                None
            }
            // BadArgument: a key BoringSSL would not parse. Our own check has the last word.
            Err(_) => None,
        }
    }
}

/// Appends a protobuf length-delimited field (wire type 2).
fn put_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

/// `VerifySignatureArguments` (Envoy's `verify_signature.proto`): hash_function = 1,
/// public_key (DER) = 2, signature = 3, text = 4.
fn verify_signature_arguments(
    digest: Digest,
    public_key: &[u8],
    signature: &[u8],
    message: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(public_key.len() + signature.len() + message.len() + 24);
    put_field(&mut out, 1, digest.name().as_bytes());
    put_field(&mut out, 2, public_key);
    put_field(&mut out, 3, signature);
    put_field(&mut out, 4, message);
    out
}

/// `VerifySignatureResult`: `bool result = 1; string error = 2;`. Proto3 leaves out a false
/// `result`, so only a field 1 holding 1 means valid; anything unreadable means "cannot tell".
fn verify_signature_result(bytes: &[u8]) -> Option<bool> {
    let mut valid = false;
    let mut rest = bytes;
    while let Some((&key, tail)) = rest.split_first() {
        match key {
            0x08 => {
                let (&value, tail) = tail.split_first()?;
                valid = value == 1;
                rest = tail;
            }
            0x12 => {
                let (&len, tail) = tail.split_first()?;
                // Error messages are short; a longer one would need a multi-byte length.
                if len >= 0x80 {
                    return Some(valid);
                }
                rest = tail.get(usize::from(len)..)?;
            }
            _ => return None,
        }
    }
    Some(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_four_fields_in_order() {
        let long = vec![9u8; 300];
        let bytes = verify_signature_arguments(Digest::Sha384, b"key", &long, b"");
        let mut expected = vec![0x0a, 6];
        expected.extend_from_slice(b"sha384");
        expected.extend_from_slice(&[0x12, 3]);
        expected.extend_from_slice(b"key");
        // 300 = 0b10_0101100: varint bytes 0xac 0x02.
        expected.extend_from_slice(&[0x1a, 0xac, 0x02]);
        expected.extend_from_slice(&long);
        expected.extend_from_slice(&[0x22, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn results_are_read_strictly() {
        assert_eq!(verify_signature_result(&[0x08, 1, 0x12, 0]), Some(true));
        assert_eq!(verify_signature_result(&[0x08, 1]), Some(true));
        // A false result is left out by proto3; only the error remains.
        assert_eq!(verify_signature_result(&[0x12, 2, b'n', b'o']), Some(false));
        assert_eq!(verify_signature_result(&[]), Some(false));
        assert_eq!(verify_signature_result(&[0x08]), None);
        assert_eq!(verify_signature_result(&[0x12, 5, b'x']), None);
        assert_eq!(verify_signature_result(&[0x1a, 0]), None);
    }
}
