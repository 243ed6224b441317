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
use filter_core::decision::{Decision, HeaderEdits, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricKind, PerItem};
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

/// The metrics each breaker has, named `<breaker>.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMetric {
    /// The state as a gauge: 0 closed, 1 open, 2 half-open.
    State,
    /// Changes to open.
    ToOpen,
    /// Changes to half-open.
    ToHalfOpen,
    /// Changes to closed.
    ToClosed,
    /// Calls recorded as successes.
    Success,
    /// Calls recorded as failures.
    Failure,
    /// Calls recorded as slow (also counted as a success or a failure).
    Slow,
    /// Calls the breaker does not count.
    Ignored,
    /// Requests refused while open.
    Rejected,
    /// Requests that would have been refused, in shadow mode.
    ShadowRejected,
    /// Outcomes dropped because the breaker changed state since the call began.
    Discarded,
    /// Decisions or outcomes the shared store could not take.
    Contention,
}

impl PerItem for BreakerMetric {
    const ALL: &'static [Self] = &[
        BreakerMetric::State,
        BreakerMetric::ToOpen,
        BreakerMetric::ToHalfOpen,
        BreakerMetric::ToClosed,
        BreakerMetric::Success,
        BreakerMetric::Failure,
        BreakerMetric::Slow,
        BreakerMetric::Ignored,
        BreakerMetric::Rejected,
        BreakerMetric::ShadowRejected,
        BreakerMetric::Discarded,
        BreakerMetric::Contention,
    ];

    fn name(self) -> &'static str {
        match self {
            BreakerMetric::State => "state",
            BreakerMetric::ToOpen => "to_open",
            BreakerMetric::ToHalfOpen => "to_half_open",
            BreakerMetric::ToClosed => "to_closed",
            BreakerMetric::Success => "calls_success",
            BreakerMetric::Failure => "calls_failure",
            BreakerMetric::Slow => "calls_slow",
            BreakerMetric::Ignored => "calls_ignored",
            BreakerMetric::Rejected => "rejected",
            BreakerMetric::ShadowRejected => "shadow_rejected",
            BreakerMetric::Discarded => "discarded",
            BreakerMetric::Contention => "contention",
        }
    }

    fn kind(self) -> MetricKind {
        match self {
            BreakerMetric::State => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }
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
                State::Open { .. } => BreakerMetric::ToOpen,
                State::HalfOpen { .. } => BreakerMetric::ToHalfOpen,
                State::Closed => BreakerMetric::ToClosed,
            };
            env.metrics.add(which.id(index), 1);
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
            env.metrics
                .record(BreakerMetric::State.id(index), last.to.gauge());
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
                    (false, _) => BreakerMetric::Discarded,
                    (true, Outcome::Ignored) => BreakerMetric::Ignored,
                    (true, Outcome::Call { failed: true, .. }) => BreakerMetric::Failure,
                    (true, Outcome::Call { .. }) => BreakerMetric::Success,
                };
                env.metrics.add(which.id(index), 1);
                if let (true, Outcome::Call { slow: true, .. }) = (counted, outcome) {
                    env.metrics.add(BreakerMetric::Slow.id(index), 1);
                }
                self.report(index, breaker, &transitions, env);
            }
            Err(_) => env.metrics.add(BreakerMetric::Contention.id(index), 1),
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
        BreakerMetric::defs(self.breakers.iter().map(|b| b.name.as_str()))
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
                env.metrics.add(BreakerMetric::Rejected.id(index), 1);
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
                env.metrics.add(BreakerMetric::Contention.id(index), 1);
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
                let mut edits = RequestEdits::default();
                if state != State::Closed {
                    edits = edits.filter_state(FILTER_STATE, state.name());
                }
                Decision::Continue(edits)
            }
            Admission::Reject { retry_after } => {
                if breaker.mode == Mode::Shadow {
                    env.metrics.add(BreakerMetric::ShadowRejected.id(index), 1);
                    log::debug!(
                        "{}: breaker {} is {}: would refuse (shadow mode)",
                        Self::NAME,
                        breaker.name,
                        state.name()
                    );
                    return Decision::Continue(
                        RequestEdits::default().filter_state(FILTER_STATE, state.name()),
                    );
                }
                env.metrics.add(BreakerMetric::Rejected.id(index), 1);
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
