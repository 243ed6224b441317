//! Benchmark fixture (`passthrough.wasm`): the floor every filter is measured against.
//!
//! Written on the bare proxy-wasm SDK, without this project's host layer, so that `make bench`
//! can tell the cost of Wasm itself from the cost of our layer. The plugin configuration picks
//! what it does per request:
//! - `one` (default): reads the request header `x-tenant-id`, sets the response header
//!   `x-wasm: 1` (the "passthrough" of the performance notes);
//! - `noop`: nothing at all (no callbacks beyond the SDK's);
//! - `ops:<op>,<op>,...[|<op>,...]`: exactly these host calls on request headers (and, after
//!   a `|`, on response headers), in order, to price a filter's sequence of calls without its
//!   logic: `get=<header>`, `now`, `metric` (one counter increment), `remove=<header>`,
//!   `set=<header>` (value `1`), `sget=<key>` and `sset=<key>` (shared data, 200 bytes),
//!   `prop=<a/b>` (a property; `/` separates path elements, which may hold dots);
//! - `rls:<cluster>`: one fixed `ShouldRateLimit` call to the cluster per request, the request
//!   held until the answer is read, then resumed: the floor of a global rate-limit rule.
#![cfg(target_arch = "wasm32")]
#![allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    One,
    Noop,
    /// Calls at request headers, then at response headers.
    Ops(Rc<[Op]>, Rc<[Op]>),
    /// A rate limit service call per request, to this cluster.
    Rls(Rc<str>),
}

/// `RateLimitRequest { domain: "bench-wasm", descriptors: [{ entries: [{ user: user-42 }] }] }`,
/// serialized by hand (a fixture on the bare SDK has no protobuf library).
const RLS_REQUEST: &[u8] = b"\x0a\x0abench-wasm\x12\x11\x0a\x0f\x0a\x04user\x12\x07user-42";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Get(String),
    Now,
    Metric,
    Remove(String),
    Set(String),
    SharedGet(String),
    SharedSet(String),
    Property(String),
}

/// What `sset` writes: about the size of a rate-limit bucket or a breaker's record.
const SHARED_VALUE: [u8; 200] = [7; 200];

impl Op {
    fn parse(op: &str) -> Option<Op> {
        let (verb, header) = op.split_once('=').unwrap_or((op, ""));
        let header = header.to_owned();
        match verb {
            "get" => Some(Op::Get(header)),
            "now" => Some(Op::Now),
            "metric" => Some(Op::Metric),
            "remove" => Some(Op::Remove(header)),
            "set" => Some(Op::Set(header)),
            "sget" => Some(Op::SharedGet(header)),
            "sset" => Some(Op::SharedSet(header)),
            "prop" => Some(Op::Property(header)),
            _ => None,
        }
    }

    fn run(&self, metric: u32, headers: proxy_wasm::types::MapType) {
        // Results are ignored: only the calls' cost matters.
        let _ = match self {
            Op::Get(name) => proxy_wasm::hostcalls::get_map_value(headers, name).map(|_| ()),
            Op::Now => proxy_wasm::hostcalls::get_current_time().map(|_| ()),
            Op::Metric => proxy_wasm::hostcalls::increment_metric(metric, 1),
            Op::Remove(name) => proxy_wasm::hostcalls::remove_map_value(headers, name),
            Op::Set(name) => proxy_wasm::hostcalls::set_map_value(headers, name, Some("1")),
            Op::SharedGet(key) => proxy_wasm::hostcalls::get_shared_data(key).map(|_| ()),
            Op::SharedSet(key) => {
                proxy_wasm::hostcalls::set_shared_data(key, Some(&SHARED_VALUE), None)
            }
            Op::Property(path) => {
                proxy_wasm::hostcalls::get_property(path.split('/').collect()).map(|_| ())
            }
        };
    }
}

impl Mode {
    fn parse(config: &[u8]) -> Option<Mode> {
        match config.trim_ascii() {
            b"" | b"one" => Some(Mode::One),
            b"noop" => Some(Mode::Noop),
            other if other.starts_with(b"rls:") => {
                let cluster = std::str::from_utf8(other.get(4..)?).ok()?;
                Some(Mode::Rls(Rc::from(cluster)))
            }
            other => {
                let ops = std::str::from_utf8(other).ok()?.strip_prefix("ops:")?;
                let (request, response) = ops.split_once('|').unwrap_or((ops, ""));
                let list = |ops: &str| -> Option<Rc<[Op]>> {
                    let ops: Option<Vec<Op>> = ops
                        .split(',')
                        .filter(|op| !op.is_empty())
                        .map(Op::parse)
                        .collect();
                    ops.map(Rc::from)
                };
                Some(Mode::Ops(list(request)?, list(response)?))
            }
        }
    }
}

struct Root {
    mode: Mode,
    metric: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config =
            proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
        match Mode::parse(&config) {
            Some(mode) => {
                if let Mode::Ops(request, response) = &mode
                    && request
                        .iter()
                        .chain(response.iter())
                        .any(|op| *op == Op::Metric)
                {
                    match proxy_wasm::hostcalls::define_metric(
                        proxy_wasm::types::MetricType::Counter,
                        "passthrough.ops",
                    ) {
                        Ok(id) => self.metric = id,
                        Err(_) => return false,
                    }
                }
                self.mode = mode;
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.mode {
            Mode::Noop => Box::new(Noop),
            Mode::Ops(request, response) => Box::new(Ops {
                request: request.clone(),
                response: response.clone(),
                metric: self.metric,
            }),
            Mode::One => Box::new(One),
            Mode::Rls(cluster) => Box::new(Rls {
                cluster: cluster.clone(),
            }),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}
impl HttpContext for Noop {}

struct Ops {
    request: Rc<[Op]>,
    response: Rc<[Op]>,
    metric: u32,
}

impl Context for Ops {}

impl HttpContext for Ops {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for op in self.request.iter() {
            op.run(self.metric, proxy_wasm::types::MapType::HttpRequestHeaders);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for op in self.response.iter() {
            op.run(self.metric, proxy_wasm::types::MapType::HttpResponseHeaders);
        }
        Action::Continue
    }
}

/// `rls:<cluster>`: a held request per rate limit service call.
struct Rls {
    cluster: Rc<str>,
}

impl Context for Rls {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        if status == 0 {
            let _ = proxy_wasm::hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size);
        }
        let _ = proxy_wasm::hostcalls::resume_http_request();
    }
}

impl HttpContext for Rls {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let sent = proxy_wasm::hostcalls::dispatch_grpc_call(
            &self.cluster,
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit",
            Vec::new(),
            Some(RLS_REQUEST),
            std::time::Duration::from_secs(1),
        );
        if sent.is_ok() {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// `one`: the passthrough.
struct One;

impl Context for One {}

impl HttpContext for One {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The value is read only to pay for reading it.
        let _ = proxy_wasm::hostcalls::get_map_value(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            "x-tenant-id",
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = proxy_wasm::hostcalls::set_map_value(
            proxy_wasm::types::MapType::HttpResponseHeaders,
            "x-wasm",
            Some("1"),
        );
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(Root {
            mode: Mode::One,
            metric: 0,
        })
    });
}}
