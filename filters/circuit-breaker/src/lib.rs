//! Circuit breaker (`circuit_breaker.wasm`): closed, open and half-open per upstream, one state
//! per Envoy instance shared by all workers, with fallback responses.
//!
//! Per request: the first breaker whose `match` fits guards it. Its record (state, generation,
//! window) lives in shared data ([`state`], [`window`]); the request asks it for a permit with a
//! compare-and-swap, and the response (or the stream's end, for a client that left) reports
//! the outcome with another. Refusals and fallbacks come from one table ([`reply`]).
#![deny(unsafe_code)]

pub mod config;
pub mod reply;
pub mod state;
pub mod window;

use crate::config::{Breaker, CircuitBreakerConfig, Mode};
use crate::state::{Admission, Outcome, Record, State, Transition};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, MetricKind, PerItem};
use filter_core::request::{RequestView, ResponseView};
use filter_core::store::{self, StoreError};
use filter_core::time::WorkerClock;

/// Read-modify-write attempts on a breaker's record before giving up (and letting the
/// request through unrecorded).
pub const MAX_ATTEMPTS: u32 = 8;

/// The filter state later filters can read (`wasm.circuit_breaker.state`): set to the state of
/// the breaker that admitted the request unless it is closed.
pub const FILTER_STATE: &str = "circuit_breaker.state";

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct CircuitBreaker {
    breakers: Vec<Breaker>,
    /// This worker's clock, never going back (the host's is a wall clock).
    clock: WorkerClock,
}

/// A request the breaker let through, until its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admitted {
    breaker: usize,
    generation: u64,
    probe: bool,
    started: u64,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Stream {
    admitted: Option<Admitted>,
}

/// Metrics each breaker has, in this order, named `<breaker>.<name>`.
const BREAKER_METRICS: PerItem = PerItem(&[
    ("state", MetricKind::Gauge),
    ("to_open", MetricKind::Counter),
    ("to_half_open", MetricKind::Counter),
    ("to_closed", MetricKind::Counter),
    ("calls_success", MetricKind::Counter),
    ("calls_failure", MetricKind::Counter),
    ("calls_slow", MetricKind::Counter),
    ("calls_ignored", MetricKind::Counter),
    ("rejected", MetricKind::Counter),
    ("shadow_rejected", MetricKind::Counter),
    ("discarded", MetricKind::Counter),
    ("contention", MetricKind::Counter),
]);
const STATE: usize = 0;
const TO_OPEN: usize = 1;
const TO_HALF_OPEN: usize = 2;
const TO_CLOSED: usize = 3;
const SUCCESS: usize = 4;
const FAILURE: usize = 5;
const SLOW: usize = 6;
const IGNORED: usize = 7;
const REJECTED: usize = 8;
const SHADOW_REJECTED: usize = 9;
const DISCARDED: usize = 10;
const CONTENTION: usize = 11;

fn metric(breaker: usize, which: usize) -> MetricId {
    BREAKER_METRICS.id(breaker, which)
}

/// Whether a local reply's `response.code_details` says the upstream failed (connect failure,
/// reset, timeout, no healthy host) rather than some filter answering.
fn upstream_failed(details: &str) -> bool {
    details.starts_with("upstream_")
        || details == "response_timeout"
        || details == "no_healthy_upstream"
}

/// Answers the request with `reply`, saying why at debug level.
fn refuse(reply: filter_core::decision::LocalResponse) -> Decision {
    filter_core::logging::refused(CircuitBreaker::NAME, &reply);
    Decision::Respond(reply)
}

impl CircuitBreaker {
    fn now(&self, env: &Env<'_>) -> u64 {
        self.clock.now(env.now).as_nanos()
    }

    /// Counts, logs and gauges the changes of state one worker made.
    fn report(&self, index: usize, breaker: &Breaker, transitions: &[Transition], env: &Env<'_>) {
        for t in transitions {
            let which = match t.to {
                State::Open { .. } => TO_OPEN,
                State::HalfOpen { .. } => TO_HALF_OPEN,
                State::Closed => TO_CLOSED,
            };
            env.metrics.add(metric(index, which), 1);
            // A state change, made by one worker for all (compare-and-swap): one line each.
            log::info!(
                "{}: breaker {}: {} -> {}",
                Self::NAME,
                breaker.name,
                t.from.name(),
                t.to.name()
            );
        }
        if let Some(last) = transitions.last() {
            env.metrics.record(metric(index, STATE), last.to.gauge());
        }
    }

    /// Settles an admitted request's outcome in its breaker's record.
    fn settle(&self, admitted: Admitted, outcome: Outcome, env: &Env<'_>) {
        let Some(breaker) = self.breakers.get(admitted.breaker) else {
            return;
        };
        let now = self.now(env);
        let result = store::update(env.store, &breaker.key, MAX_ATTEMPTS, |bytes| {
            let mut record = decode(bytes, breaker);
            let mut transitions = Vec::new();
            let counted = record.record(
                &breaker.policy,
                admitted.generation,
                admitted.probe,
                outcome,
                now,
                &mut transitions,
            );
            let write = counted.then(|| record.encode());
            (write, (counted, transitions))
        });
        let index = admitted.breaker;
        match result {
            Ok((counted, transitions)) => {
                let which = match (counted, outcome) {
                    (false, _) => DISCARDED,
                    (true, Outcome::Ignored) => IGNORED,
                    (true, Outcome::Call { failed: true, .. }) => FAILURE,
                    (true, Outcome::Call { .. }) => SUCCESS,
                };
                env.metrics.add(metric(index, which), 1);
                if let (true, Outcome::Call { slow: true, .. }) = (counted, outcome) {
                    env.metrics.add(metric(index, SLOW), 1);
                }
                self.report(index, breaker, &transitions, env);
            }
            Err(_) => env.metrics.add(metric(index, CONTENTION), 1),
        }
    }
}

/// The stored record, or a fresh closed one (never written, or unreadable).
fn decode(bytes: Option<&[u8]>, breaker: &Breaker) -> Record {
    bytes
        .and_then(Record::decode)
        .unwrap_or_else(|| Record::new(breaker.policy.window))
}

impl Filter for CircuitBreaker {
    const NAME: &'static str = "circuit_breaker";
    type Config = CircuitBreakerConfig;
    type Stream = Stream;

    fn config_metrics(&self) -> Vec<(String, MetricKind)> {
        BREAKER_METRICS.defs(self.breakers.iter().map(|b| b.name.as_str()))
    }

    fn new(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Ok(CircuitBreaker {
            breakers: config.compile()?,
            clock: WorkerClock::default(),
        })
    }

    fn on_request(
        &self,
        stream: &mut Stream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let Some((index, breaker)) = self
            .breakers
            .iter()
            .enumerate()
            .find(|(_, b)| b.matcher.matches(request))
        else {
            return Decision::pass();
        };
        match breaker.mode {
            Mode::Disabled => return Decision::pass(),
            Mode::ForcedOpen => {
                env.metrics.add(metric(index, REJECTED), 1);
                return refuse(reply::refused(breaker, "forced_open", None));
            }
            Mode::Enforce | Mode::Shadow => {}
        }
        let now = self.now(env);
        let result = store::update(env.store, &breaker.key, MAX_ATTEMPTS, |bytes| {
            let mut record = decode(bytes, breaker);
            let mut transitions = Vec::new();
            let admission = record.acquire(&breaker.policy, now, &mut transitions);
            // Acquiring changes the record only by a change of state or a probe's permit: a
            // closed breaker's requests write nothing.
            let changed = !transitions.is_empty()
                || matches!(admission, Admission::Permit { probe: true, .. });
            let write = changed.then(|| record.encode());
            (write, (admission, record.state, transitions))
        });
        let (admission, state, transitions) = match result {
            Ok(done) => done,
            Err(StoreError::Contention { .. } | StoreError::Host(_)) => {
                // Never fail closed because workers collided: let it through, uncounted.
                env.metrics.add(metric(index, CONTENTION), 1);
                return Decision::pass();
            }
        };
        self.report(index, breaker, &transitions, env);
        match admission {
            Admission::Permit { generation, probe } => {
                stream.admitted = Some(Admitted {
                    breaker: index,
                    generation,
                    probe,
                    started: now,
                });
                let mut edits = HeaderEdits::default();
                if state != State::Closed {
                    edits = edits.filter_state(FILTER_STATE, state.name());
                }
                Decision::Continue(edits)
            }
            Admission::Reject { retry_after } => {
                if breaker.mode == Mode::Shadow {
                    env.metrics.add(metric(index, SHADOW_REJECTED), 1);
                    log::debug!(
                        "{}: breaker {} is {}: would refuse (shadow mode)",
                        Self::NAME,
                        breaker.name,
                        state.name()
                    );
                    return Decision::Continue(
                        HeaderEdits::default().filter_state(FILTER_STATE, state.name()),
                    );
                }
                env.metrics.add(metric(index, REJECTED), 1);
                refuse(reply::refused(breaker, state.name(), Some(retry_after)))
            }
        }
    }

    fn wants_response(&self, stream: &Stream) -> bool {
        stream.admitted.is_some()
    }

    fn on_response(
        &self,
        stream: &mut Stream,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        let Some(admitted) = stream.admitted.take() else {
            return HeaderEdits::default();
        };
        let Some(breaker) = self.breakers.get(admitted.breaker) else {
            return HeaderEdits::default();
        };
        let outcome = match response.status() {
            None => Outcome::Ignored,
            Some(status) => {
                let failure_status = breaker.failure_statuses.contains(&status);
                // A 5xx may be Envoy's own reply: a failed upstream, or a later filter.
                let failed = if failure_status || status >= 500 {
                    match response.code_details() {
                        None | Some("via_upstream") => Some(failure_status),
                        Some(details) if upstream_failed(details) => Some(true),
                        Some(_) => None,
                    }
                } else {
                    Some(false)
                };
                match failed {
                    None => Outcome::Ignored,
                    Some(failed) => {
                        let took = self.now(env).saturating_sub(admitted.started);
                        let slow = u128::from(took) > breaker.policy.slow_call_duration.as_nanos();
                        Outcome::Call { failed, slow }
                    }
                }
            }
        };
        self.settle(admitted, outcome, env);
        HeaderEdits::default()
    }

    fn wants_end(&self, stream: &Stream) -> bool {
        stream.admitted.is_some()
    }

    fn on_end(&self, stream: &mut Stream, env: &Env<'_>) {
        // No response ever came (the client went away): the call says nothing about the
        // upstream, but a probe must hand its permit back.
        if let Some(admitted) = stream.admitted.take() {
            self.settle(admitted, Outcome::Ignored, env);
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::CircuitBreaker);
}
