//! Circuit breaker (`circuit_breaker.wasm`): closed, open and half-open per upstream, one state
//! per Envoy instance shared by all workers, with fallback responses.
//!
//! Per request: the first breaker whose `match` fits guards it. Its record (state, generation,
//! window) lives in shared data ([`state`], [`window`]); the request asks it for a permit with a
//! compare-and-swap, and the response (or the stream's end, for a client that left) reports
//! the outcome with another. Refusals and fallbacks come from one table ([`reply`]).
//!
//! A gRPC call (by its request's `content-type`) is judged by its `grpc-status`, where it
//! arrives: in the response headers of a trailers-only answer, else in the trailers. Its
//! outcome is recorded once, when that status is known (or the stream ends without one).
#![deny(unsafe_code)]

pub mod config;
pub mod reply;
pub mod state;
pub mod window;

use crate::config::{Breaker, CircuitBreakerConfig, Mode};
use crate::state::{Admission, Outcome, Record, State, Transition};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits, RequestEdits, grpc};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricKind, MetricName, PerItem};
use filter_core::request::{RequestView, ResponseView, response_flags};
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
    /// A gRPC call: judged by its `grpc-status`.
    grpc: bool,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Stream {
    admitted: Option<Admitted>,
    /// A gRPC call whose headers came without a status: it is in the trailers, or missing.
    awaiting_status: bool,
}

/// What a response's headers say about the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call counts: failed or not.
    Counts {
        /// A failure.
        failed: bool,
    },
    /// The call says nothing about the upstream.
    Ignored,
    /// A gRPC call's status comes later, in the trailers (or never).
    AwaitStatus,
}

/// The metrics each breaker has, labelled `breaker="<name>"`.
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
    /// The interval chosen at the latest trip, in milliseconds (a gauge).
    OpenIntervalMs,
}

impl PerItem for BreakerMetric {
    const ITEM_LABEL: &'static str = "breaker";
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
        BreakerMetric::OpenIntervalMs,
    ];

    fn family(self) -> &'static str {
        match self {
            BreakerMetric::State => "state",
            BreakerMetric::ToOpen | BreakerMetric::ToHalfOpen | BreakerMetric::ToClosed => {
                "transitions_total"
            }
            BreakerMetric::Success | BreakerMetric::Failure | BreakerMetric::Ignored => {
                "calls_total"
            }
            BreakerMetric::Slow => "slow_calls_total",
            BreakerMetric::Rejected => "rejected_total",
            BreakerMetric::ShadowRejected => "shadow_rejected_total",
            BreakerMetric::Discarded => "discarded_total",
            BreakerMetric::Contention => "contention_total",
            // Envoy's gauges are whole numbers: seconds would lose the jitter.
            BreakerMetric::OpenIntervalMs => "open_interval_milliseconds",
        }
    }

    fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            BreakerMetric::ToOpen => Some(("state", "open")),
            BreakerMetric::ToHalfOpen => Some(("state", "half_open")),
            BreakerMetric::ToClosed => Some(("state", "closed")),
            BreakerMetric::Success => Some(("outcome", "success")),
            BreakerMetric::Failure => Some(("outcome", "failure")),
            BreakerMetric::Ignored => Some(("outcome", "ignored")),
            BreakerMetric::State
            | BreakerMetric::Slow
            | BreakerMetric::Rejected
            | BreakerMetric::ShadowRejected
            | BreakerMetric::Discarded
            | BreakerMetric::Contention
            | BreakerMetric::OpenIntervalMs => None,
        }
    }

    fn kind(self) -> MetricKind {
        match self {
            BreakerMetric::State | BreakerMetric::OpenIntervalMs => MetricKind::Gauge,
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

/// How a call's response headers classify it. Envoy's own replies (a failed connection, a
/// timeout, a reset: `code_details` other than `via_upstream`) count as failures; another
/// filter's reply says nothing about the upstream.
pub fn classify_headers(
    breaker: &Breaker,
    grpc_call: bool,
    response: &dyn ResponseView,
) -> Verdict {
    let Some(status) = response.status() else {
        return Verdict::Ignored;
    };
    let details = response.code_details();
    if grpc_call {
        if let Some(details) = details.filter(|d| *d != "via_upstream") {
            // Envoy answers a gRPC caller's failed call itself (HTTP 200, trailers-only).
            return if upstream_failed(details) {
                Verdict::Counts { failed: true }
            } else {
                Verdict::Ignored
            };
        }
        if let Some(code) = response.header("grpc-status") {
            return Verdict::Counts {
                failed: grpc_failed(breaker, code),
            };
        }
        if status != 200 {
            // Not a gRPC answer at all; the client maps the HTTP status to a code.
            return Verdict::Counts {
                failed: breaker.failure_statuses.contains(&status),
            };
        }
        return Verdict::AwaitStatus;
    }
    let failure_status = breaker.failure_statuses.contains(&status);
    // A 5xx may be Envoy's own reply: a failed upstream, or a later filter.
    if !failure_status && status < 500 {
        return Verdict::Counts { failed: false };
    }
    match details {
        None | Some("via_upstream") => Verdict::Counts {
            failed: failure_status,
        },
        Some(details) if upstream_failed(details) => Verdict::Counts { failed: true },
        Some(_) => Verdict::Ignored,
    }
}

/// Whether a `grpc-status` value is one of the breaker's failure codes. A value that is not a
/// number is what a client reads as `UNKNOWN`.
fn grpc_failed(breaker: &Breaker, value: &str) -> bool {
    let code = grpc::parse_status(value.trim()).unwrap_or(grpc::UNKNOWN);
    breaker.failure_grpc_statuses.contains(&code)
}

/// A gRPC call's verdict from its trailers: a missing status is a failure (the client reads an
/// error it cannot act on).
pub fn classify_trailers(breaker: &Breaker, trailers: &dyn ResponseView) -> bool {
    trailers
        .header("grpc-status")
        .is_none_or(|code| grpc_failed(breaker, code))
}

/// A gRPC call that ended with its headers but without a status: the client cancelling counts
/// as nothing; an upstream reset, a timeout or a stream that just ended is a failure.
pub fn classify_unfinished(ending: &dyn ResponseView) -> Verdict {
    let flags = ending.response_flags().unwrap_or(0);
    if flags & response_flags::UPSTREAM_FAILED == 0 && flags & response_flags::CLIENT_LEFT != 0 {
        Verdict::Ignored
    } else {
        Verdict::Counts { failed: true }
    }
}

impl CircuitBreaker {
    fn now(&self, env: &Env<'_>) -> u64 {
        self.clock.now(env.now()).as_nanos()
    }

    /// Counts, logs and gauges the changes of state one worker made at `now`.
    fn report(
        &self,
        index: usize,
        breaker: &Breaker,
        transitions: &[Transition],
        now: u64,
        env: &Env<'_>,
    ) {
        for t in transitions {
            if let State::Open { until } = t.to {
                let interval_ms = until.saturating_sub(now) / 1_000_000;
                env.metrics
                    .record(BreakerMetric::OpenIntervalMs.id(index), interval_ms);
            }
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
        let draw = env.random.next_u64();
        // Usually this worker's memory of the record (from the request's read, or from its
        // last write) is still current: then recording is the one write.
        let result = store::update_remembered(env.store, &breaker.key, MAX_ATTEMPTS, |bytes| {
            let mut record = decode(bytes, breaker);
            let mut transitions = Vec::new();
            let counted = record.record(
                &breaker.policy,
                admitted.generation,
                admitted.probe,
                outcome,
                now,
                draw,
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
                self.report(index, breaker, &transitions, now, env);
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

    fn config_metrics(&self) -> Vec<(MetricName, MetricKind)> {
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
        let draw = env.random.next_u64();
        let result = store::update(env.store, &breaker.key, MAX_ATTEMPTS, |bytes| {
            let mut record = decode(bytes, breaker);
            let mut transitions = Vec::new();
            let admission = record.acquire(&breaker.policy, now, draw, &mut transitions);
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
        self.report(index, breaker, &transitions, now, env);
        match admission {
            Admission::Permit { generation, probe } => {
                stream.admitted = Some(Admitted {
                    breaker: index,
                    generation,
                    probe,
                    started: now,
                    grpc: request.is_grpc(),
                });
                let mut edits = RequestEdits::default();
                if state != State::Closed {
                    edits = edits.filter_state(FILTER_STATE, state.name());
                }
                if probe {
                    edits = edits.filter_state(reply::DECISION, reply::probe_decision(breaker));
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
                        RequestEdits::default()
                            .filter_state(FILTER_STATE, state.name())
                            .filter_state(
                                reply::DECISION,
                                reply::shadow_decision(breaker, state.name()),
                            ),
                    );
                }
                env.metrics.add(BreakerMetric::Rejected.id(index), 1);
                refuse(reply::refused(breaker, state.name(), Some(retry_after)))
            }
        }
    }

    fn wants_response(&self, stream: &Stream) -> bool {
        stream.admitted.is_some() && !stream.awaiting_status
    }

    fn on_response(
        &self,
        stream: &mut Stream,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        let Some(admitted) = stream.admitted else {
            return HeaderEdits::default();
        };
        let Some(breaker) = self.breakers.get(admitted.breaker) else {
            return HeaderEdits::default();
        };
        match classify_headers(breaker, admitted.grpc, response) {
            Verdict::AwaitStatus => stream.awaiting_status = true,
            verdict => self.conclude(stream, verdict, env),
        }
        HeaderEdits::default()
    }

    fn wants_trailers(&self, stream: &Stream) -> bool {
        stream.awaiting_status
    }

    fn on_trailers(&self, stream: &mut Stream, trailers: &dyn ResponseView, env: &Env<'_>) {
        let Some(breaker) = stream.admitted.and_then(|a| self.breakers.get(a.breaker)) else {
            return;
        };
        let failed = classify_trailers(breaker, trailers);
        self.conclude(stream, Verdict::Counts { failed }, env);
    }

    fn wants_end(&self, stream: &Stream) -> bool {
        stream.admitted.is_some()
    }

    fn on_end(&self, stream: &mut Stream, ending: &dyn ResponseView, env: &Env<'_>) {
        let verdict = if stream.awaiting_status {
            classify_unfinished(ending)
        } else {
            // No response ever came (the client went away): the call says nothing about the
            // upstream, but a probe must hand its permit back.
            Verdict::Ignored
        };
        self.conclude(stream, verdict, env);
    }
}

impl CircuitBreaker {
    /// Records the call's outcome, once: the stream forgets its admission.
    fn conclude(&self, stream: &mut Stream, verdict: Verdict, env: &Env<'_>) {
        stream.awaiting_status = false;
        let Some(admitted) = stream.admitted.take() else {
            return;
        };
        let Some(breaker) = self.breakers.get(admitted.breaker) else {
            return;
        };
        let outcome = match verdict {
            Verdict::Counts { failed } => {
                // Slow calls are timed to the end of the call: trailers, for gRPC.
                let took = self.now(env).saturating_sub(admitted.started);
                let slow = u128::from(took) > breaker.policy.slow_call_duration.as_nanos();
                Outcome::Call { failed, slow }
            }
            Verdict::Ignored | Verdict::AwaitStatus => Outcome::Ignored,
        };
        self.settle(admitted, outcome, env);
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
