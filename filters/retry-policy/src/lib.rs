//! Retry policy (`retry_policy.wasm`): decides per request whether and how Envoy's router may
//! retry it, and writes that as Envoy's own retry headers, which the router obeys when a filter
//! before it sets them.
//!
//! Per request: every retry header a client sent is removed (Envoy has already removed them
//! from external requests); the first matching rule is
//! applied unless the method is not idempotent (RFC 9110 §9.2.2; an `Idempotency-Key` makes
//! POST and PATCH retryable), the circuit breaker marks the request as a half-open probe, or
//! the retry budget ([`budget`]) is spent, in which case `x-envoy-max-retries: 0` shuts off
//! route-level retries too. The budget charges a grant's retries when it is given (fewer than
//! the rule's if fewer are left); per response, what Envoy did not use is refunded, and a 429
//! or 503 without a usable `Retry-After` gets one ([`retry_after`]).
//!
//! Filter state `retry_policy.decision`, for the access log, says why a request that a rule
//! covers got fewer retries than the rule gives: `not_idempotent`, `half_open_probe`,
//! `budget_exhausted` (none), or `budget_cut:<k>` (only `k`). A request that gets the rule's
//! retries, or that no rule covers, sets nothing.
#![deny(unsafe_code)]

pub mod budget;
pub mod config;
pub mod retry_after;

use crate::config::{Compiled, RetryPolicyConfig};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricDef, MetricId};
use filter_core::request::{RequestView, ResponseView};
use std::cell::{Cell, RefCell};

/// The retry headers Envoy's router reads; a client's are always removed.
pub use crate::config::header::ALL as RETRY_HEADERS;

/// The filter state holding the decision, read as `wasm.retry_policy.decision`.
pub const DECISION: &str = "retry_policy.decision";

/// Methods a proxy may retry on its own (RFC 9110 §9.2.2).
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct RetryPolicy {
    config: Compiled,
    /// The budget's allowance, if there is a budget.
    allowance: Option<budget::Allowance>,
    /// Whether this worker's last budget check found it spent (to count each spell once).
    spent: Cell<bool>,
    /// The headers of a request that gets no retries.
    no_retries: [(&'static str, String); 1],
    /// This worker's lease on the shared budget and what it owes it.
    ledger: RefCell<budget::Ledger>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Stream {
    /// Retries were granted: count those that happen.
    granted: bool,
    /// What the budget charged for them, refunded in part when the response tells how many
    /// were used.
    charge: Option<budget::Grant>,
}

const GIVEN_RETRIES: MetricId = MetricId(0);
const NO_RETRIES_METHOD: MetricId = MetricId(1);
const NO_RETRIES_BUDGET: MetricId = MetricId(2);
const NO_RETRIES_HALF_OPEN: MetricId = MetricId(3);
const BUDGET_SPENT: MetricId = MetricId(4);
const RETRIES: MetricId = MetricId(5);
const RETRY_AFTER_ADDED: MetricId = MetricId(6);
const BUDGET_CONTENTION: MetricId = MetricId(7);
const BUDGET_CUT: MetricId = MetricId(8);

/// Why a request gets no retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRetry {
    Method,
    HalfOpen,
    Budget,
}

impl NoRetry {
    /// What `retry_policy.decision` says.
    fn decision(self) -> &'static str {
        match self {
            NoRetry::Method => "not_idempotent",
            NoRetry::HalfOpen => "half_open_probe",
            NoRetry::Budget => "budget_exhausted",
        }
    }
}

/// `retry_policy.decision` for a request the budget let have only `given` of its rule's
/// retries.
fn budget_cut(given: u32) -> String {
    format!("budget_cut:{given}")
}

/// Sets `headers`; with `internal`, also removes every other retry header (a client's).
fn write(headers: &[(&'static str, String)], internal: bool) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    if internal {
        for name in RETRY_HEADERS {
            if !headers.iter().any(|(set, _)| *set == name) {
                edits = edits.remove(name);
            }
        }
    }
    for (name, value) in headers {
        edits = edits.set(*name, value.clone());
    }
    edits
}

/// A rule's headers with `x-envoy-max-retries` set to `retries`.
fn with_max_retries(
    headers: &[(&'static str, String)],
    retries: u32,
) -> Vec<(&'static str, String)> {
    headers
        .iter()
        .map(|(name, value)| match *name {
            config::header::MAX_RETRIES => (*name, retries.to_string()),
            _ => (*name, value.clone()),
        })
        .collect()
}

/// Whether Envoy let the client's `x-envoy-*` headers through. Envoy's connection manager
/// removes them (retry headers included) from every request it does not consider internal,
/// and marks internal ones with `x-envoy-internal: true` (which it removes from all others), so
/// only internal requests can still carry a client's retry headers: removing them from every
/// request would cost a host call per header for nothing.
fn internal(request: &dyn RequestView) -> bool {
    request.header("x-envoy-internal").is_some()
}

impl RetryPolicy {
    /// Counts the request in the budget and returns how many of `want` retries it may have,
    /// charged to the budget already, with what to refund later.
    fn admit(&self, want: u32, env: &Env<'_>) -> (u32, Option<budget::Grant>) {
        let Some(allowance) = &self.allowance else {
            return (want, None);
        };
        let Ok(mut ledger) = self.ledger.try_borrow_mut() else {
            // Unreachable (one callback at a time); the ceiling holds by giving none.
            return (0, None);
        };
        let admission = ledger.admit(env.store, allowance, want, env.now());
        if admission.store_failed {
            env.metrics.add(BUDGET_CONTENTION, 1);
        }
        let given = admission.grant.map_or(0, |g| g.retries);
        if want > 0 {
            let spent = given == 0;
            if spent && !self.spent.get() {
                env.metrics.add(BUDGET_SPENT, 1);
            }
            self.spent.set(spent);
        }
        (given, admission.grant)
    }

    /// Whether the request may be retried on every condition of its rule (an idempotent
    /// method, or an idempotency key).
    fn idempotent(&self, request: &dyn RequestView) -> bool {
        IDEMPOTENT.contains(&request.method())
            || request
                .header(&self.config.idempotency_key_header)
                .is_some()
    }

    /// Why the request gets no retries at all, if it gets none; `grpc_only`: it may be
    /// retried on its rule's gRPC conditions alone.
    fn refusal(&self, request: &dyn RequestView, grpc_only: bool) -> Option<NoRetry> {
        if !grpc_only && !self.idempotent(request) {
            return Some(NoRetry::Method);
        }
        if request.filter_state("circuit_breaker.state") == Some("half_open") {
            return Some(NoRetry::HalfOpen);
        }
        None
    }
}

impl Filter for RetryPolicy {
    const NAME: &'static str = "retry_policy";
    type Config = RetryPolicyConfig;
    type Stream = Stream;
    const METRICS: &'static [MetricDef] = &[
        MetricDef::counter_with("requests_total", "outcome", "granted"),
        MetricDef::counter_with("requests_total", "outcome", "not_idempotent"),
        MetricDef::counter_with("requests_total", "outcome", "budget_exhausted"),
        MetricDef::counter_with("requests_total", "outcome", "half_open_probe"),
        MetricDef::counter("budget_spent_total"),
        MetricDef::counter("retries_total"),
        MetricDef::counter("retry_after_added_total"),
        MetricDef::counter("budget_contention_total"),
        MetricDef::counter("budget_cuts_total"),
    ];

    fn new(config: RetryPolicyConfig) -> Result<Self, ConfigError> {
        let config = config.compile()?;
        Ok(RetryPolicy {
            allowance: config.budget.as_ref().map(budget::Allowance::new),
            config,
            spent: Cell::new(false),
            no_retries: [(config::header::MAX_RETRIES, "0".to_owned())],
            ledger: RefCell::new(budget::Ledger::default()),
        })
    }

    fn tick_period(&self) -> Option<std::time::Duration> {
        self.config
            .budget
            .map(|_| std::time::Duration::from_secs(1))
    }

    fn on_tick(&self, env: &Env<'_>) -> Vec<filter_core::decision::Callout> {
        if self.allowance.is_some()
            && let Ok(mut ledger) = self.ledger.try_borrow_mut()
            && ledger.flush(env.store, env.now()).is_err()
        {
            // Kept: written on the next tick or lease.
            env.metrics.add(BUDGET_CONTENTION, 1);
        }
        Vec::new()
    }

    fn on_request(
        &self,
        stream: &mut Stream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let Some(rule) = self
            .config
            .rules
            .iter()
            .find(|r| r.matcher.matches(request))
        else {
            // No rule: the route's own policy applies, never a client's headers.
            return Decision::forward(write(&[], internal(request)));
        };
        // A gRPC call that is not otherwise safe to retry, under a rule naming gRPC codes.
        let grpc_only = rule
            .grpc_only_headers
            .as_ref()
            .filter(|_| request.is_grpc() && !self.idempotent(request));
        let rule_headers = grpc_only.unwrap_or(&rule.headers);
        let (refused, given) = match self.refusal(request, grpc_only.is_some()) {
            Some(reason) => (Some(reason), 0),
            None => {
                let (given, charge) = self.admit(rule.num_retries, env);
                stream.charge = charge;
                let refused = (given == 0 && rule.num_retries > 0).then_some(NoRetry::Budget);
                (refused, given)
            }
        };
        match refused {
            None => {
                env.metrics.add(GIVEN_RETRIES, 1);
                stream.granted = given > 0;
                if given < rule.num_retries {
                    // The budget had fewer left: Envoy's router may make only those.
                    env.metrics.add(BUDGET_CUT, 1);
                    let headers = with_max_retries(rule_headers, given);
                    let edits = RequestEdits::from(write(&headers, internal(request)));
                    return Decision::Continue(edits.filter_state(DECISION, budget_cut(given)));
                }
                Decision::forward(write(rule_headers, internal(request)))
            }
            Some(reason) => {
                env.metrics.add(
                    match reason {
                        NoRetry::Method => NO_RETRIES_METHOD,
                        NoRetry::HalfOpen => NO_RETRIES_HALF_OPEN,
                        NoRetry::Budget => NO_RETRIES_BUDGET,
                    },
                    1,
                );
                // Also shuts off a route-level retry policy.
                let edits = RequestEdits::from(write(&self.no_retries, internal(request)));
                Decision::Continue(edits.filter_state(DECISION, reason.decision()))
            }
        }
    }

    fn wants_response(&self, stream: &Stream) -> bool {
        stream.granted || self.config.retry_after.is_some()
    }

    fn wants_end(&self, stream: &Stream) -> bool {
        stream.charge.is_some()
    }

    fn on_end(&self, stream: &mut Stream, ending: &dyn ResponseView, env: &Env<'_>) {
        // No response reached the client (it left first): Envoy's attempt count still says
        // how many retries were made. Without one, the charge stays spent (never more
        // retries than charged) and ages out with its second.
        stream.granted = false;
        if let (Some(charge), Some(attempts)) = (stream.charge.take(), ending.attempts()) {
            let retries = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
            if let Ok(mut ledger) = self.ledger.try_borrow_mut() {
                ledger.refund(charge, retries, env.now());
            }
        }
    }

    fn on_response(
        &self,
        stream: &mut Stream,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        if std::mem::take(&mut stream.granted) {
            // No count: Envoy made no attempt (a reply before the router); see docs/retry_policy.md.
            let retries = response.attempts().unwrap_or(1).saturating_sub(1);
            let retries = u32::try_from(retries).unwrap_or(u32::MAX);
            if retries > 0 {
                env.metrics.add(RETRIES, i64::from(retries));
            }
            if let Some(charge) = stream.charge.take()
                && let Ok(mut ledger) = self.ledger.try_borrow_mut()
            {
                ledger.refund(charge, retries, env.now());
            }
        }
        let Some(policy) = &self.config.retry_after else {
            return HeaderEdits::default();
        };
        if !response
            .status()
            .is_some_and(|s| policy.statuses.contains(&s))
        {
            return HeaderEdits::default();
        }
        let now = i64::try_from(env.now().as_secs()).unwrap_or(i64::MAX);
        let fields: Vec<&str> = response.header("retry-after").into_iter().collect();
        match retry_after::decide(
            &fields,
            policy,
            now,
            retry_after::year_of(now),
            response.header("date"),
            env.random,
        ) {
            Some(seconds) => {
                env.metrics.add(RETRY_AFTER_ADDED, 1);
                HeaderEdits::default().set("retry-after", seconds.to_string())
            }
            None => HeaderEdits::default(),
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::RetryPolicy);
}
