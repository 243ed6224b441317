//! The gateway (`gateway.wasm`): JWT validation, rate limiting, the circuit breaker and the
//! retry policy in one module, one filter entry and one VM, behaving as the four separate
//! filters chained in that order.
//!
//! Its configuration is one JSON object whose members are the four filters' own
//! configurations, each optional: `{"jwt_auth": {...}, "rate_limit": {...},
//! "circuit_breaker": {...}, "retry_policy": {...}}`. No policy logic lives here: each member
//! builds that filter's own library ([`stage`]), and this module only chains them the way
//! Envoy chains filters:
//! - Requests go through the policies in order. Each sees the request as the policies before
//!   it left it ([`EditedRequest`]): rate_limit keys on the `x-user-id` jwt_auth set, and
//!   retry_policy sees the circuit breaker's `circuit_breaker.state`. The edits reach Envoy
//!   once, merged ([`RequestEdits::then`]), instead of one batch of host calls per filter.
//! - The first policy to answer a request ends it there, as a local reply ends a filter chain.
//!   The filter state the policies before it left goes with the reply, so the access log
//!   prints every policy's decision (`<policy>.decision`) in both layouts.
//! - A policy that holds a request ([`Decision::Wait`]) is asked again on the next tick, and
//!   the chain goes on from it with the edits made before it. One that holds it for gRPC
//!   calls ([`Decision::Call`]) hears their results, and the chain goes on after it.
//! - Responses go through the policies in reverse order (Envoy's encoder order), each seeing
//!   the response as the later ones left it ([`EditedResponse`]).
//! - Each policy keeps its metric names (`rate_limit_requests_total{rule,outcome}`, ...), and its log lines
//!   read as from its own module (each starts with the policy's name); callout tags carry the
//!   policy's position in their top byte.
//!
//! One difference remains: the route (and so `xds.cluster_name`, which a breaker may match)
//! is not chosen again between policies, as Envoy does after a filter edits request headers.
//! Routes that depend on headers a policy sets see them only after the gateway.
#![deny(unsafe_code)]

pub mod stage;

use crate::stage::{Slot, Stage, Step};
use circuit_breaker::CircuitBreaker;
use filter_core::config::ConfigError;
use filter_core::decision::{
    Callout, CalloutResult, Decision, GrpcResult, HeaderEdits, RequestEdits,
};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::MetricKind;
use filter_core::request::{EditedRequest, EditedResponse, RequestView, ResponseView};
use jwt_auth::JwtAuth;
use rate_limit::RateLimit;
use retry_policy::RetryPolicy;
use serde::Deserialize;
use std::time::Duration;

/// The configuration: each member is that filter's own configuration, as its separate module
/// takes it; a member left out (or `null`) leaves that policy out. An error inside a member
/// names it first: `rate_limit.rules[0].limit.requests: ...`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// JWT validation (`jwt_auth.wasm`'s configuration).
    pub jwt_auth: Option<<JwtAuth as Filter>::Config>,
    /// Rate limiting (`rate_limit.wasm`'s configuration).
    pub rate_limit: Option<<RateLimit as Filter>::Config>,
    /// The circuit breaker (`circuit_breaker.wasm`'s configuration).
    pub circuit_breaker: Option<<CircuitBreaker as Filter>::Config>,
    /// The retry policy (`retry_policy.wasm`'s configuration).
    pub retry_policy: Option<<RetryPolicy as Filter>::Config>,
}

/// Each policy's per-request state.
#[derive(Debug, Default)]
pub struct Streams {
    jwt_auth: <JwtAuth as Filter>::Stream,
    rate_limit: <RateLimit as Filter>::Stream,
    circuit_breaker: <CircuitBreaker as Filter>::Stream,
    retry_policy: <RetryPolicy as Filter>::Stream,
}

macro_rules! slot {
    ($filter:ty, $field:ident) => {
        impl Slot<$filter> for Streams {
            fn slot(&self) -> &<$filter as Filter>::Stream {
                &self.$field
            }
            fn slot_mut(&mut self) -> &mut <$filter as Filter>::Stream {
                &mut self.$field
            }
        }
    };
}
slot!(JwtAuth, jwt_auth);
slot!(RateLimit, rate_limit);
slot!(CircuitBreaker, circuit_breaker);
slot!(RetryPolicy, retry_policy);

/// The gateway's per-request state.
#[derive(Debug, Default)]
pub struct GatewayStream {
    streams: Streams,
    /// The stage a held request resumes at (for calls: the stage that made them).
    resume_at: usize,
    /// The edits of the stages before `resume_at`, not yet handed to Envoy.
    pending: RequestEdits,
}

/// Callout tags carry the stage's position in their top byte, so each answer finds its stage.
const TAG_SHIFT: u32 = 56;

/// The configured policies, in request order.
pub struct Gateway {
    stages: Vec<Box<dyn Step<Streams>>>,
    /// The stages' names, in order: the filter state of those that have run is in the edits.
    names: Vec<&'static str>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|s| s.name()))
            .finish()
    }
}

impl Gateway {
    /// The names of the configured policies, in request order.
    pub fn policies(&self) -> Vec<&'static str> {
        self.names.clone()
    }
}

/// Builds `F` from its member, if given, after the stages already in `stages`.
fn add<F>(
    stages: &mut Vec<Box<dyn Step<Streams>>>,
    config: Option<F::Config>,
) -> Result<(), ConfigError>
where
    F: Filter + 'static,
    Streams: Slot<F>,
{
    let Some(config) = config else {
        return Ok(());
    };
    let metric_base = stages.iter().map(|s| s.metric_names().len()).sum();
    stages.push(Box::new(Stage::<F>::new(config, metric_base)?));
    Ok(())
}

impl Gateway {
    /// Runs the stages from `from` on, after `edits` from the stages before it.
    fn run(
        &self,
        stream: &mut GatewayStream,
        request: &dyn RequestView,
        env: &Env<'_>,
        from: usize,
        mut edits: RequestEdits,
    ) -> Decision {
        for (at, stage) in self.stages.iter().enumerate().skip(from) {
            // A policy that ran left all its filter state in the edits: later ones reading it
            // need no host call.
            let ran = self.names.get(..at).unwrap_or_default();
            let seen = EditedRequest::new(request, &edits).owned_by(ran);
            match stage.on_request(&mut stream.streams, &seen, env) {
                Decision::Continue(more) => edits.then(more),
                other => return self.held_at(stream, at, edits, other),
            }
        }
        Decision::Continue(edits)
    }

    /// What stage `at` answering, holding or calling means for the whole request.
    fn held_at(
        &self,
        stream: &mut GatewayStream,
        at: usize,
        edits: RequestEdits,
        decision: Decision,
    ) -> Decision {
        match decision {
            // Earlier stages' header edits die with the request; the filter state they left
            // (a shadow refusal's decision, say) stays for the access log, as it would in
            // Envoy, where an earlier filter has set it before a later one answers.
            Decision::Respond(reply) => {
                Decision::Respond(reply.after_filter_state(edits.filter_state))
            }
            Decision::Wait | Decision::Call(_) => {
                stream.resume_at = at;
                stream.pending = edits;
                decision
            }
            Decision::Continue(more) => {
                let mut edits = edits;
                edits.then(more);
                Decision::Continue(edits)
            }
        }
    }
}

impl Filter for Gateway {
    const NAME: &'static str = "gateway";
    type Config = GatewayConfig;
    type Stream = GatewayStream;

    fn new(config: GatewayConfig) -> Result<Self, ConfigError> {
        let mut stages = Vec::new();
        add::<JwtAuth>(&mut stages, config.jwt_auth)?;
        add::<RateLimit>(&mut stages, config.rate_limit)?;
        add::<CircuitBreaker>(&mut stages, config.circuit_breaker)?;
        add::<RetryPolicy>(&mut stages, config.retry_policy)?;
        if stages.is_empty() {
            return Err(ConfigError::new(
                "",
                "configures no policy: give at least one of jwt_auth, rate_limit, \
                 circuit_breaker, retry_policy",
            ));
        }
        let names = stages.iter().map(|s| s.name()).collect();
        Ok(Self { stages, names })
    }

    fn metric_names(&self) -> Vec<(String, MetricKind)> {
        self.stages.iter().flat_map(|s| s.metric_names()).collect()
    }

    fn on_request(
        &self,
        stream: &mut GatewayStream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let edits = std::mem::take(&mut stream.pending);
        self.run(stream, request, env, stream.resume_at, edits)
    }

    fn on_call_response(
        &self,
        stream: &mut GatewayStream,
        request: &dyn RequestView,
        results: Vec<GrpcResult>,
        env: &Env<'_>,
    ) -> Decision {
        let at = stream.resume_at;
        let mut edits = std::mem::take(&mut stream.pending);
        let Some(stage) = self.stages.get(at) else {
            return Decision::Continue(edits);
        };
        let seen = EditedRequest::new(request, &edits);
        match stage.on_call_response(&mut stream.streams, &seen, results, env) {
            Decision::Continue(more) => {
                edits.then(more);
                self.run(stream, request, env, at + 1, edits)
            }
            other => self.held_at(stream, at, edits, other),
        }
    }

    fn wants_response(&self, stream: &GatewayStream) -> bool {
        self.stages
            .iter()
            .any(|s| s.wants_response(&stream.streams))
    }

    fn on_response(
        &self,
        stream: &mut GatewayStream,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for stage in self.stages.iter().rev() {
            if stage.wants_response(&stream.streams) {
                let seen = EditedResponse::new(response, &edits);
                let more = stage.on_response(&mut stream.streams, &seen, env);
                edits.then(more);
            }
        }
        edits
    }

    fn wants_end(&self, stream: &GatewayStream) -> bool {
        self.stages.iter().any(|s| s.wants_end(&stream.streams))
    }

    fn on_end(&self, stream: &mut GatewayStream, ending: &dyn ResponseView, env: &Env<'_>) {
        for stage in &self.stages {
            if stage.wants_end(&stream.streams) {
                stage.on_end(&mut stream.streams, ending, env);
            }
        }
    }

    fn wants_trailers(&self, stream: &GatewayStream) -> bool {
        self.stages
            .iter()
            .any(|s| s.wants_trailers(&stream.streams))
    }

    fn on_trailers(&self, stream: &mut GatewayStream, trailers: &dyn ResponseView, env: &Env<'_>) {
        // Trailers go upstream-side first, as response headers do.
        for stage in self.stages.iter().rev() {
            if stage.wants_trailers(&stream.streams) {
                stage.on_trailers(&mut stream.streams, trailers, env);
            }
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.stages.iter().filter_map(|s| s.tick_period()).min()
    }

    fn on_tick(&self, env: &Env<'_>) -> Vec<Callout> {
        let mut callouts = Vec::new();
        for (at, stage) in self.stages.iter().enumerate() {
            for mut callout in stage.on_tick(env) {
                let stage_bits = u64::try_from(at).unwrap_or(u64::MAX) << TAG_SHIFT;
                if callout.tag >> TAG_SHIFT == 0 {
                    callout.tag |= stage_bits;
                    callouts.push(callout);
                } else {
                    // No policy numbers its callouts this high; should one, it hears at once
                    // that the call was not made rather than never.
                    let failed = CalloutResult::Failed("callout tag out of range".to_owned());
                    stage.on_callout_response(callout.tag, failed, env);
                }
            }
        }
        callouts
    }

    fn on_callout_response(&self, tag: u64, result: CalloutResult, env: &Env<'_>) {
        let at = usize::try_from(tag >> TAG_SHIFT).unwrap_or(usize::MAX);
        if let Some(stage) = self.stages.get(at) {
            stage.on_callout_response(tag & ((1 << TAG_SHIFT) - 1), result, env);
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::Gateway);
}
