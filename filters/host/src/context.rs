//! The proxy-wasm root and HTTP contexts that drive a [`Filter`].

use crate::host::{self, HostMetrics, HostStore};
use filter_core::config::parse_json;
use filter_core::decision::{Decision, LocalResponse};
use filter_core::filter::{Env, Filter};
use filter_core::request::{Request, RequestView, Response};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::rc::Rc;

/// Makes `F` this Wasm module's filter. Called once, from the module's `_initialize`.
pub fn register<F: Filter + 'static>() {
    // Also installs the SDK's panic hook, which logs a panic's message at `critical` before
    // the VM traps: should one ever slip through, Envoy's log says where.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::<F> { state: None }));
}

/// What a worker keeps once its configuration has been accepted.
struct Configured<F> {
    filter: F,
    metrics: HostMetrics,
}

struct Root<F> {
    state: Option<Rc<Configured<F>>>,
}

impl<F: Filter + 'static> Root<F> {
    fn configure(&self) -> Result<Configured<F>, String> {
        let bytes = host::plugin_configuration()
            .map_err(|status| format!("cannot read the plugin configuration: {status:?}"))?;
        let config = parse_json::<F::Config>(&bytes).map_err(|e| e.to_string())?;
        let filter = F::new(config).map_err(|e| e.to_string())?;
        let metrics = HostMetrics::define(F::NAME, F::METRICS)?;
        Ok(Configured { filter, metrics })
    }
}

impl<F> Context for Root<F> {}

impl<F: Filter + 'static> RootContext for Root<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::log(
            LogLevel::Info,
            &format!("{} {} started", F::NAME, env!("CARGO_PKG_VERSION")),
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(configured) => {
                self.state = Some(Rc::new(configured));
                true
            }
            Err(reason) => {
                // Returning false makes Envoy refuse the plugin; this line says why.
                host::log(
                    LogLevel::Error,
                    &format!("{}: invalid configuration: {reason}", F::NAME),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would trap the VM inside the SDK, so an unconfigured filter still gets
        // a context; it refuses every request (unreachable: Envoy does not run a plugin whose
        // configuration was refused).
        Some(Box::new(Stream::<F> {
            configured: self.state.clone(),
            state: F::Stream::default(),
            grpc: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<F: Filter> {
    configured: Option<Rc<Configured<F>>>,
    state: F::Stream,
    grpc: bool,
}

impl<F: Filter> Stream<F> {
    fn respond(&self, reply: &LocalResponse) -> Action {
        if !reply.detail.is_empty() {
            host::log(
                LogLevel::Debug,
                &format!("{}: {} {}", F::NAME, reply.status, reply.detail),
            );
        }
        if let Err(status) = host::send_local_response(reply, self.grpc) {
            host::log(
                LogLevel::Error,
                &format!("{}: cannot send a local reply: {status:?}", F::NAME),
            );
        }
        // Even when the reply failed, the request must not go on past a refusing filter.
        Action::Pause
    }
}

impl<F: Filter> Context for Stream<F> {}

impl<F: Filter> HttpContext for Stream<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let pairs = match host::header_pairs(MapType::HttpRequestHeaders) {
            Ok(pairs) => pairs,
            Err(status) => {
                host::log(
                    LogLevel::Error,
                    &format!("{}: cannot read request headers: {status:?}", F::NAME),
                );
                return self.respond(&LocalResponse::new(500).body("request headers unavailable"));
            }
        };
        let request = Request::from_pairs(pairs);
        self.grpc = request.is_grpc();
        let Some(configured) = self.configured.clone() else {
            return self.respond(&LocalResponse::new(500).body("filter not configured"));
        };
        let Some(now) = host::now() else {
            host::log(
                LogLevel::Error,
                &format!("{}: the host clock is unavailable", F::NAME),
            );
            return self.respond(&LocalResponse::new(500).body("clock unavailable"));
        };
        let env = Env {
            now,
            store: &HostStore,
            metrics: &configured.metrics,
        };
        match configured
            .filter
            .on_request(&mut self.state, &request, &env)
        {
            Decision::Continue(edits) => {
                if edits.is_empty() {
                    return Action::Continue;
                }
                match host::apply_edits(MapType::HttpRequestHeaders, &edits) {
                    Ok(()) => Action::Continue,
                    Err(status) => {
                        host::log(
                            LogLevel::Error,
                            &format!("{}: cannot edit request headers: {status:?}", F::NAME),
                        );
                        self.respond(&LocalResponse::new(500).body("request headers not editable"))
                    }
                }
            }
            Decision::Respond(reply) => self.respond(&reply),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(configured) = self.configured.clone() else {
            return Action::Continue;
        };
        if !configured.filter.wants_response(&self.state) {
            return Action::Continue;
        }
        let (Ok(pairs), Some(now)) = (
            host::header_pairs(MapType::HttpResponseHeaders),
            host::now(),
        ) else {
            return Action::Continue;
        };
        let env = Env {
            now,
            store: &HostStore,
            metrics: &configured.metrics,
        };
        let edits =
            configured
                .filter
                .on_response(&mut self.state, &Response::from_pairs(pairs), &env);
        if let Err(status) = host::apply_edits(MapType::HttpResponseHeaders, &edits) {
            host::log(
                LogLevel::Warn,
                &format!("{}: cannot edit response headers: {status:?}", F::NAME),
            );
        }
        Action::Continue
    }
}
