//! Benchmark fixture (`passthrough.wasm`): the floor every filter is measured against.
//!
//! Written on the bare proxy-wasm SDK, without this project's host layer, so that `make bench`
//! can tell the cost of Wasm itself from the cost of our layer. The plugin configuration picks
//! what it does per request:
//! - `one` (default): reads the request header `x-tenant-id`, sets the response header
//!   `x-wasm: 1` (the "passthrough" of the performance notes);
//! - `noop`: nothing at all (no callbacks beyond the SDK's);
//! - `map`: reads every request header in one call (`get_map`), sets the response header;
//! - `request`: reads `x-tenant-id`, sets the request header `x-wasm: 1` (which, under ABI
//!   0.2.1, also clears Envoy's route cache).
#![cfg(target_arch = "wasm32")]
#![allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    One,
    Noop,
    Map,
    Request,
}

impl Mode {
    fn parse(config: &[u8]) -> Option<Mode> {
        match config.trim_ascii() {
            b"" | b"one" => Some(Mode::One),
            b"noop" => Some(Mode::Noop),
            b"map" => Some(Mode::Map),
            b"request" => Some(Mode::Request),
            _ => None,
        }
    }
}

struct Root {
    mode: Mode,
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
                self.mode = mode;
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self.mode {
            Mode::Noop => Box::new(Noop),
            mode => Box::new(Stream { mode }),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}
impl HttpContext for Noop {}

struct Stream {
    mode: Mode,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The values are read only to pay for reading them.
        let _ = match self.mode {
            Mode::Map => {
                proxy_wasm::hostcalls::get_map(proxy_wasm::types::MapType::HttpRequestHeaders)
                    .map(|headers| headers.len())
            }
            _ => proxy_wasm::hostcalls::get_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                "x-tenant-id",
            )
            .map(|value| value.map_or(0, |v| v.len())),
        };
        if self.mode == Mode::Request {
            let _ = proxy_wasm::hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                "x-wasm",
                Some("1"),
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mode == Mode::Request {
            return Action::Continue;
        }
        let _ = proxy_wasm::hostcalls::set_map_value(
            proxy_wasm::types::MapType::HttpResponseHeaders,
            "x-wasm",
            Some("1"),
        );
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { mode: Mode::One }));
}}
