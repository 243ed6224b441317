//! The proxy-wasm root and HTTP contexts that drive a [`Filter`].
//!
//! Besides the request path, the root context runs a filter's background work: on each tick it
//! sends the callouts the filter asks for, hands their answers back, and decides again every
//! request the filter asked to hold ([`Decision::Wait`]), resuming or answering it.
//!
//! A request can also be held for gRPC calls made on its behalf ([`Decision::Call`]): it
//! stays paused until every call has answered or failed (each has its own timeout), and the
//! filter then decides it again with the results.

use crate::host::{self, CallbackClock, HostMetrics, HostStore, HostVerifier};
use crate::request::{HostRequest, HostResponse};
use filter_core::config::parse;
use filter_core::decision::{
    CalloutResult, Decision, GrpcCall, GrpcResult, LocalResponse, RequestEdits,
};
use filter_core::filter::{Env, Filter, Now};
use filter_core::request::{RequestView, Response, ResponseView};
use filter_core::store::Remembering;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
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
            held: Rc::default(),
            callouts: HashMap::new(),
        })
    });
}

/// What a worker keeps once its configuration has been accepted.
struct Configured<F> {
    filter: F,
    /// Shared data, with this worker's memory of the values it last read or wrote.
    store: Remembering<HostStore>,
    metrics: HostMetrics,
    verifier: HostVerifier,
    random: filter_core::random::SplitMix,
    /// The latest time read from the host (what a callback sees should a read ever fail).
    last_time: std::cell::Cell<filter_core::time::Time>,
}

impl<F> Configured<F> {
    /// A clock for one callback: the host's, read when the filter first asks.
    fn clock(&self) -> CallbackClock<'_> {
        CallbackClock::new(&self.last_time)
    }

    /// What the filter is handed besides the request, with the time from `clock`.
    fn env<'a>(&'a self, clock: &'a CallbackClock<'a>) -> Env<'a> {
        Env {
            now: Now::Clock(clock),
            store: &self.store,
            metrics: &self.metrics,
            verifier: &self.verifier,
            random: &self.random,
        }
    }
}

/// The longest a worker keeps metric changes before handing them to Envoy (see
/// [`HostMetrics`]); it is also the tick period of filters that ask for none.
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// A request's filter state, shared by its HTTP context and whatever holds it.
type State<S> = Rc<RefCell<S>>;

/// Requests held for a tick ([`Decision::Wait`]) or for gRPC calls ([`Decision::Call`]).
/// Shared by the root context and every HTTP context of the worker.
struct Held<S> {
    /// Held for a tick, in the order they were held (and so resumed): HTTP context id and
    /// the filter's stream state.
    parked: Vec<(u32, State<S>)>,
    /// gRPC calls in flight: Envoy's token to the HTTP context they were made for.
    call_owner: HashMap<u32, u32>,
    /// Held for calls, by HTTP context id.
    calling: HashMap<u32, Calling<S>>,
}

impl<S> Default for Held<S> {
    fn default() -> Self {
        Self {
            parked: Vec::new(),
            call_owner: HashMap::new(),
            calling: HashMap::new(),
        }
    }
}

/// A request waiting for its gRPC calls.
struct Calling<S> {
    state: State<S>,
    /// Each call's token, in the order the filter asked for them (`None`: not sent).
    tokens: Vec<Option<u32>>,
    results: Vec<Option<GrpcResult>>,
}

impl<S> Held<S> {
    /// Forgets everything held for context `id`: it has gone.
    fn forget(&mut self, id: u32) {
        self.parked.retain(|(held, _)| *held != id);
        if let Some(calling) = self.calling.remove(&id) {
            for token in calling.tokens.into_iter().flatten() {
                self.call_owner.remove(&token);
            }
        }
    }

    /// Records the result of the call `token`; once every call of its request has one, hands
    /// back the request and the results, in order.
    fn answer(
        &mut self,
        token: u32,
        result: GrpcResult,
    ) -> Option<(u32, State<S>, Vec<GrpcResult>)> {
        let id = self.call_owner.remove(&token)?;
        let calling = self.calling.get_mut(&id)?;
        let at = calling.tokens.iter().position(|t| *t == Some(token))?;
        if let Some(slot) = calling.results.get_mut(at) {
            *slot = Some(result);
        }
        if calling.results.iter().any(Option::is_none) {
            return None;
        }
        let calling = self.calling.remove(&id)?;
        let results = calling.results.into_iter().flatten().collect();
        Some((id, calling.state, results))
    }
}

type SharedHeld<S> = Rc<RefCell<Held<S>>>;

/// Where a decision leaves a request.
enum Settled {
    Continue(RequestEdits),
    Respond(LocalResponse),
    /// Held for a tick or for calls: paused until then.
    Held,
}

/// Follows `decision` for the request of context `id` (the effective context) until it
/// continues, is answered, or is held. Calls that cannot even be sent are answered at once,
/// so the filter decides again here; a filter that keeps asking for calls that cannot be
/// sent is answered with a 500 after a few rounds rather than looping.
fn settle<F: Filter>(
    configured: &Configured<F>,
    held: &SharedHeld<F::Stream>,
    id: u32,
    state: &State<F::Stream>,
    request: &dyn RequestView,
    mut decision: Decision,
    env: &Env<'_>,
) -> Settled {
    const ROUNDS: usize = 4;
    for _ in 0..ROUNDS {
        match decision {
            Decision::Continue(edits) => return Settled::Continue(edits),
            Decision::Respond(reply) => return Settled::Respond(reply),
            Decision::Wait => {
                return match held.try_borrow_mut() {
                    Ok(mut held) => {
                        held.parked.push((id, state.clone()));
                        Settled::Held
                    }
                    Err(_) => {
                        Settled::Respond(LocalResponse::new(503).body("cannot hold the request"))
                    }
                };
            }
            Decision::Call(calls) => {
                let Some(results) = start_calls::<F>(held, id, state, &calls) else {
                    return Settled::Held;
                };
                decision = match state.try_borrow_mut() {
                    Ok(mut s) => configured
                        .filter
                        .on_call_response(&mut s, request, results, env),
                    Err(_) => {
                        return Settled::Respond(LocalResponse::new(500).body("stream state busy"));
                    }
                };
            }
        }
    }
    log_error::<F>("gRPC calls kept failing to start");
    Settled::Respond(LocalResponse::new(500).body("calls could not be made"))
}

/// Sends `calls` for context `id`. Returns the results at once when none could be sent
/// (nothing to wait for); otherwise the request is held until the last one answers.
fn start_calls<F: Filter>(
    held: &SharedHeld<F::Stream>,
    id: u32,
    state: &State<F::Stream>,
    calls: &[GrpcCall],
) -> Option<Vec<GrpcResult>> {
    let mut tokens = Vec::with_capacity(calls.len());
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        match host::dispatch_grpc(call) {
            Ok(token) => {
                tokens.push(Some(token));
                results.push(None);
            }
            Err(why) => {
                tokens.push(None);
                results.push(Some(GrpcResult::NotSent(why)));
            }
        }
    }
    if tokens.iter().all(Option::is_none) {
        return Some(results.into_iter().flatten().collect());
    }
    let Ok(mut held) = held.try_borrow_mut() else {
        // Unreachable (nothing else holds the map during a callback); the answers will find
        // no request and be dropped, so answer now rather than hang.
        return Some(vec![
            GrpcResult::NotSent(
                "cannot hold the request".to_owned()
            );
            calls.len()
        ]);
    };
    for token in tokens.iter().flatten() {
        held.call_owner.insert(*token, id);
    }
    held.calling.insert(
        id,
        Calling {
            state: state.clone(),
            tokens,
            results,
        },
    );
    None
}

/// What Envoy says became of the call `token` (`status` is its gRPC status; 0 is OK, with a
/// message of `size` bytes).
fn grpc_result(status: u32, size: usize) -> GrpcResult {
    if status != 0 {
        // Only a failed call pays for the message: it is what tells Envoy's own timeout
        // from a service that cannot be reached (both `UNAVAILABLE`).
        let message = hostcalls::get_grpc_status()
            .ok()
            .and_then(|(_, message)| message)
            .unwrap_or_default();
        return GrpcResult::Status(status, message);
    }
    match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size) {
        Ok(message) => GrpcResult::Message(message.unwrap_or_default()),
        Err(status) => GrpcResult::NotSent(format!("cannot read the answer: {status:?}")),
    }
}

/// Applies where a held request (not the current callback's) has settled: resumes it with its
/// edits, or answers it.
fn finish_held<F: Filter>(settled: Settled, request: &dyn RequestView) {
    match settled {
        Settled::Held => {}
        Settled::Continue(edits) => {
            let resumed =
                host::apply_request_edits(&edits).and_then(|()| hostcalls::resume_http_request());
            if let Err(status) = resumed {
                log_error::<F>(&format!("cannot resume a held request: {status:?}"));
            }
        }
        Settled::Respond(reply) => {
            if let Err(status) = host::send_local_response(&reply, request.is_grpc()) {
                log_error::<F>(&format!("cannot answer a held request: {status:?}"));
            }
        }
    }
}

/// The answer to the gRPC call `token`; once its request has every answer, the filter decides
/// it again, under its own HTTP context (`current` is the context the answer arrived in: the
/// request's own, or the root's for a call made while the root context decided it).
fn deliver_grpc<F: Filter>(
    configured: &Configured<F>,
    held: &SharedHeld<F::Stream>,
    current: Option<u32>,
    token: u32,
    result: GrpcResult,
) {
    let done = match held.try_borrow_mut() {
        Ok(mut held) => held.answer(token, result),
        Err(_) => None,
    };
    let Some((id, state, results)) = done else {
        return;
    };
    // Fails when the stream has gone (the client left while it waited).
    if current != Some(id) && hostcalls::set_effective_context(id).is_err() {
        return;
    }
    let clock = configured.clock();
    let env = configured.env(&clock);
    let request = HostRequest::default();
    let decision = match state.try_borrow_mut() {
        Ok(mut s) => configured
            .filter
            .on_call_response(&mut s, &request, results, &env),
        Err(_) => Decision::Respond(LocalResponse::new(500).body("stream state busy")),
    };
    let settled = settle(configured, held, id, &state, &request, decision, &env);
    finish_held::<F>(settled, &request);
}

struct Root<F: Filter> {
    state: Option<Rc<Configured<F>>>,
    held: SharedHeld<F::Stream>,
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
        let seed = host::random_seed();
        Ok(Configured {
            filter,
            store: Remembering::new(HostStore, seed),
            metrics,
            verifier: HostVerifier::new(F::NAME),
            random: filter_core::random::SplitMix::new(seed),
            last_time: std::cell::Cell::default(),
        })
    }

    /// Decides every request held for a tick again, under its own context.
    fn wake_parked(&self, configured: &Configured<F>, env: &Env<'_>) {
        let parked: Vec<(u32, State<F::Stream>)> = match self.held.try_borrow_mut() {
            Ok(mut held) => std::mem::take(&mut held.parked),
            Err(_) => return,
        };
        for (id, state) in parked {
            // Fails when the stream has gone (the client left while it waited).
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            let request = HostRequest::default();
            let decision = match state.try_borrow_mut() {
                Ok(mut s) => configured.filter.on_request(&mut s, &request, env),
                Err(_) => continue,
            };
            let settled = settle(configured, &self.held, id, &state, &request, decision, env);
            finish_held::<F>(settled, &request);
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
        let (Some(tag), Some(configured)) = (self.callouts.remove(&token), self.state.clone())
        else {
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
        let clock = configured.clock();
        let env = configured.env(&clock);
        configured.filter.on_callout_response(tag, result, &env);
    }

    /// The answer to a call made for a request while the root context was deciding it (a
    /// request held for a tick that then asked for calls).
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if let Some(configured) = self.state.clone() {
            let result = grpc_result(status_code, response_size);
            deliver_grpc(&configured, &self.held, None, token, result);
        }
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
        configured.store.forget();
        let clock = configured.clock();
        let env = configured.env(&clock);
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
            held: self.held.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<F: Filter> {
    id: u32,
    configured: Option<Rc<Configured<F>>>,
    state: State<F::Stream>,
    held: SharedHeld<F::Stream>,
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
        // the context gone and drops it then; Envoy cancels its calls).
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.forget(self.id);
        }
    }
}

impl<F: Filter> Context for Stream<F> {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if let Some(configured) = self.configured.clone() {
            let result = grpc_result(status_code, response_size);
            deliver_grpc(&configured, &self.held, Some(self.id), token, result);
        }
    }
}

impl<F: Filter> HttpContext for Stream<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request = HostRequest::default();
        let Some(configured) = self.configured.clone() else {
            let reply = LocalResponse::new(500).body("filter not configured");
            return self.respond(&reply, &request);
        };
        let clock = configured.clock();
        let env = configured.env(&clock);
        let decision = match self.state.try_borrow_mut() {
            Ok(mut state) => configured.filter.on_request(&mut state, &request, &env),
            Err(_) => {
                let reply = LocalResponse::new(500).body("stream state busy");
                return self.respond(&reply, &request);
            }
        };
        match settle(
            &configured,
            &self.held,
            self.id,
            &self.state,
            &request,
            decision,
            &env,
        ) {
            Settled::Continue(edits) => self.apply(&edits, &request),
            Settled::Respond(reply) => self.respond(&reply, &request),
            Settled::Held => Action::Pause,
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
        let clock = configured.clock();
        let env = configured.env(&clock);
        let ending = HostResponse::new(F::NAME);
        configured.filter.on_end(&mut state, &ending, &env);
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(configured) = self.configured.clone() else {
            return Action::Continue;
        };
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return Action::Continue;
        };
        if !configured.filter.wants_trailers(&state) {
            return Action::Continue;
        }
        let clock = configured.clock();
        let env = configured.env(&clock);
        let trailers = HostResponse::trailers(F::NAME);
        configured.filter.on_trailers(&mut state, &trailers, &env);
        Action::Continue
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
        let clock = configured.clock();
        let env = configured.env(&clock);
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
