//! The proxy-wasm root and HTTP contexts that drive a [`Filter`].
//!
//! Besides the request path, the root context runs a filter's background work: on each tick it
//! sends the callouts the filter asks for, hands their answers back, and decides again every
//! request the filter asked to hold ([`Decision::Wait`]), resuming or answering it.

use crate::host::{self, HostMetrics, HostStore, HostVerifier};
use crate::request::{HostRequest, HostResponse};
use filter_core::config::parse;
use filter_core::decision::{CalloutResult, Decision, LocalResponse, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::request::{RequestView, Response, ResponseView};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Makes `F` this Wasm module's filter. Called once, from the module's `_initialize`.
pub fn register<F: Filter + 'static>() {
    // Installs the SDK's logger, through which the `log` crate's lines reach Envoy, at `info`
    // until the VM starts and Envoy's own level is read. Also installs the SDK's panic hook,
    // which logs a panic's message at `critical` before the VM traps: should one ever slip
    // through, Envoy's log says where.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(Root::<F> {
            state: None,
            parked: Rc::default(),
            callouts: HashMap::new(),
        })
    });
}

/// What a worker keeps once its configuration has been accepted.
struct Configured<F> {
    filter: F,
    metrics: HostMetrics,
    verifier: HostVerifier,
    random: filter_core::random::SplitMix,
}

impl<F> Configured<F> {
    /// What the filter is handed besides the request, at `now`.
    fn env(&self, now: filter_core::time::Time) -> Env<'_> {
        Env {
            now,
            store: &HostStore,
            metrics: &self.metrics,
            verifier: &self.verifier,
            random: &self.random,
        }
    }
}

/// The longest a worker keeps metric changes before handing them to Envoy (see
/// [`HostMetrics`]); it is also the tick period of filters that ask for none.
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests held by [`Decision::Wait`], in the order they were held (and so resumed): HTTP
/// context id and the filter's stream state.
type Parked<S> = Rc<RefCell<Vec<(u32, Rc<RefCell<S>>)>>>;

/// Forgets the held request of context `id`, if any.
fn unpark<S>(parked: &mut Vec<(u32, S)>, id: u32) {
    if let Some(at) = parked.iter().position(|(held, _)| *held == id) {
        parked.remove(at);
    }
}

struct Root<F: Filter> {
    state: Option<Rc<Configured<F>>>,
    parked: Parked<F::Stream>,
    /// Callouts in flight: Envoy's token to the filter's tag.
    callouts: HashMap<u32, u64>,
}

fn log_error<F: Filter>(what: &str) {
    log::error!("{}: {what}", F::NAME);
}

/// The one line that says why Envoy refuses the plugin: `<filter>: invalid configuration:
/// <field path>: <reason>`. A warning, as for anything the operator must fix; Envoy adds its
/// own error line for the refused plugin.
fn configuration_refused(filter: &str, reason: &str) {
    log::warn!("{filter}: invalid configuration: {reason}");
}

impl<F: Filter + 'static> Root<F> {
    fn configure(&self) -> Result<Configured<F>, String> {
        let bytes = host::plugin_configuration()
            .map_err(|status| format!("cannot read the plugin configuration: {status:?}"))?;
        let config = parse::<F::Config>(&bytes).map_err(|e| e.to_string())?;
        let filter = F::new(config).map_err(|e| e.to_string())?;
        let metrics = HostMetrics::define(&filter.metric_names())?;
        Ok(Configured {
            filter,
            metrics,
            verifier: HostVerifier::new(F::NAME),
            random: filter_core::random::SplitMix::new(host::random_seed()),
        })
    }

    /// Decides every held request again, under its own context.
    fn wake_parked(&self, configured: &Configured<F>, env: &Env<'_>) {
        let parked: Vec<(u32, Rc<RefCell<F::Stream>>)> = match self.parked.try_borrow() {
            Ok(list) => list.clone(),
            Err(_) => return,
        };
        for (id, state) in parked {
            // Fails when the stream has gone (the client left while it waited).
            let decision = if hostcalls::set_effective_context(id).is_err() {
                None
            } else {
                let request = HostRequest::default();
                match state.try_borrow_mut() {
                    Ok(mut s) => {
                        let decision = configured.filter.on_request(&mut s, &request, env);
                        let grpc = matches!(decision, Decision::Respond(_)) && request.is_grpc();
                        Some((decision, grpc))
                    }
                    Err(_) => None,
                }
            };
            let done = match decision {
                Some((Decision::Wait, _)) => false,
                Some((Decision::Continue(edits), _)) => {
                    let resumed = host::apply_request_edits(&edits)
                        .and_then(|()| hostcalls::resume_http_request());
                    if let Err(status) = resumed {
                        log_error::<F>(&format!("cannot resume a held request: {status:?}"));
                    }
                    true
                }
                Some((Decision::Respond(reply), grpc)) => {
                    if let Err(status) = host::send_local_response(&reply, grpc) {
                        log_error::<F>(&format!("cannot answer a held request: {status:?}"));
                    }
                    true
                }
                None => true,
            };
            if done && let Ok(mut list) = self.parked.try_borrow_mut() {
                unpark(&mut list, id);
            }
        }
    }
}

impl<F: Filter + 'static> Context for Root<F> {
    fn on_done(&mut self) -> bool {
        if let Some(configured) = &self.state {
            configured.metrics.flush();
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(tag), Some(configured), Some(now)) = (
            self.callouts.remove(&token),
            self.state.clone(),
            host::now(),
        ) else {
            return;
        };
        // No headers means the call never got an answer (timed out, reset, or refused by
        // Envoy, which does not say which).
        let result = if num_headers == 0 {
            CalloutResult::Failed("no response (timed out, reset or refused)".to_owned())
        } else {
            match (
                host::header_pairs(MapType::HttpCallResponseHeaders),
                host::call_response_body(body_size),
            ) {
                (Ok(headers), Ok(body)) => CalloutResult::Response {
                    status: Response::from_pairs(headers.clone()).status(),
                    headers,
                    body,
                },
                (Err(status), _) | (_, Err(status)) => {
                    CalloutResult::Failed(format!("cannot read the response: {status:?}"))
                }
            }
        };
        let env = configured.env(now);
        configured.filter.on_callout_response(tag, result, &env);
    }
}

impl<F: Filter + 'static> RootContext for Root<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::follow_host_log_level();
        log::info!("{} {} started", F::NAME, env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        host::follow_host_log_level();
        match self.configure() {
            Ok(configured) => {
                let period = configured
                    .filter
                    .tick_period()
                    .map_or(METRICS_FLUSH, |p| p.min(METRICS_FLUSH));
                if let Err(status) = hostcalls::set_tick_period(period) {
                    log_error::<F>(&format!("cannot set the tick period: {status:?}"));
                    return false;
                }
                self.state = Some(Rc::new(configured));
                true
            }
            Err(reason) => {
                // Returning false makes Envoy refuse the plugin; this line says why.
                configuration_refused(F::NAME, &reason);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        host::follow_host_log_level();
        let Some(configured) = self.state.clone() else {
            return;
        };
        configured.metrics.flush();
        let Some(now) = host::now() else {
            return;
        };
        let env = configured.env(now);
        for callout in configured.filter.on_tick(&env) {
            match host::dispatch(&callout) {
                Ok(token) => {
                    self.callouts.insert(token, callout.tag);
                }
                Err(why) => {
                    configured.filter.on_callout_response(
                        callout.tag,
                        CalloutResult::Failed(why),
                        &env,
                    );
                }
            }
        }
        self.wake_parked(&configured, &env);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would trap the VM inside the SDK, so an unconfigured filter still gets
        // a context; it refuses every request (unreachable: Envoy does not run a plugin whose
        // configuration was refused).
        Some(Box::new(Stream::<F> {
            id: context_id,
            configured: self.state.clone(),
            state: Rc::default(),
            parked: self.parked.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<F: Filter> {
    id: u32,
    configured: Option<Rc<Configured<F>>>,
    state: Rc<RefCell<F::Stream>>,
    parked: Parked<F::Stream>,
}

impl<F: Filter> Stream<F> {
    /// Answers the request locally (as gRPC when it is a gRPC request).
    fn respond(&self, reply: &LocalResponse, request: &dyn RequestView) -> Action {
        if let Err(status) = host::send_local_response(reply, request.is_grpc()) {
            log_error::<F>(&format!("cannot send a local reply: {status:?}"));
        }
        // Even when the reply failed, the request must not go on past a refusing filter.
        Action::Pause
    }

    fn apply(&self, edits: &RequestEdits, request: &dyn RequestView) -> Action {
        if edits.is_empty() {
            return Action::Continue;
        }
        match host::apply_request_edits(edits) {
            Ok(()) => Action::Continue,
            Err(status) => {
                log_error::<F>(&format!("cannot edit request headers: {status:?}"));
                let reply = LocalResponse::new(500).body("request headers not editable");
                self.respond(&reply, request)
            }
        }
    }
}

impl<F: Filter> Drop for Stream<F> {
    fn drop(&mut self) {
        // A held request whose client left: forget it (if the map is busy, the next tick finds
        // the context gone and drops it then).
        if let Ok(mut list) = self.parked.try_borrow_mut() {
            unpark(&mut list, self.id);
        }
    }
}

impl<F: Filter> Context for Stream<F> {}

impl<F: Filter> HttpContext for Stream<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request = HostRequest::default();
        let Some(configured) = self.configured.clone() else {
            let reply = LocalResponse::new(500).body("filter not configured");
            return self.respond(&reply, &request);
        };
        let Some(now) = host::now() else {
            log_error::<F>("the host clock is unavailable");
            return self.respond(&LocalResponse::new(500).body("clock unavailable"), &request);
        };
        let env = configured.env(now);
        let decision = match self.state.try_borrow_mut() {
            Ok(mut state) => configured.filter.on_request(&mut state, &request, &env),
            Err(_) => {
                let reply = LocalResponse::new(500).body("stream state busy");
                return self.respond(&reply, &request);
            }
        };
        match decision {
            Decision::Continue(edits) => self.apply(&edits, &request),
            Decision::Respond(reply) => self.respond(&reply, &request),
            Decision::Wait => match self.parked.try_borrow_mut() {
                Ok(mut list) => {
                    list.push((self.id, self.state.clone()));
                    Action::Pause
                }
                Err(_) => {
                    let reply = LocalResponse::new(503).body("cannot hold the request");
                    self.respond(&reply, &request)
                }
            },
        }
    }

    fn on_log(&mut self) {
        let Some(configured) = self.configured.clone() else {
            return;
        };
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return;
        };
        if !configured.filter.wants_end(&state) {
            return;
        }
        let Some(now) = host::now() else {
            return;
        };
        let env = configured.env(now);
        configured.filter.on_end(&mut state, &env);
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(configured) = self.configured.clone() else {
            return Action::Continue;
        };
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return Action::Continue;
        };
        if !configured.filter.wants_response(&state) {
            return Action::Continue;
        }
        let Some(now) = host::now() else {
            return Action::Continue;
        };
        let env = configured.env(now);
        let response = HostResponse::new(F::NAME);
        let edits = configured.filter.on_response(&mut state, &response, &env);
        if let Err(status) = host::apply_edits(MapType::HttpResponseHeaders, &edits) {
            log::warn!("{}: cannot edit response headers: {status:?}", F::NAME);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::ConfigError;
    use log::{Level, LevelFilter};

    #[test]
    fn a_refused_configuration_is_one_warning_with_the_field_path() {
        let error = ConfigError::new("rules[0].requests", "must be at least 1");
        let ((), lines) = testkit::logs::capture(LevelFilter::Warn, || {
            configuration_refused("rate_limit", &error.to_string());
        });
        assert_eq!(
            lines,
            [testkit::logs::Line {
                level: Level::Warn,
                text: "rate_limit: invalid configuration: rules[0].requests: must be at least 1"
                    .to_owned(),
            }]
        );
    }
}
