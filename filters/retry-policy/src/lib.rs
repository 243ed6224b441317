//! Retry policy (`retry_policy.wasm`): decides per request whether and how Envoy's router may
//! retry it, and writes that as Envoy's own retry headers, which the router obeys when a filter
//! before it sets them.
//!
//! Per request: every retry header a client sent is removed (Envoy has already removed them
//! from external requests); the first matching rule is
//! applied unless the method is not idempotent (RFC 9110 §9.2.2; an `Idempotency-Key` makes
//! POST and PATCH retryable), the circuit breaker marks the request as a half-open probe, or
//! the retry budget ([`budget`]) is spent, in which case `x-envoy-max-retries: 0` shuts off
//! route-level retries too. Per response: the retries Envoy made are counted against the
//! budget, and a 429 or 503 without a usable `Retry-After` gets one ([`retry_after`]).
#![deny(unsafe_code)]

pub mod budget;
pub mod config;
pub mod retry_after;

use crate::config::{Compiled, RetryPolicyConfig};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricDef, MetricId};
use filter_core::request::{RequestView, ResponseView};
use filter_core::store;
use filter_core::time::Time;
use std::cell::{Cell, RefCell};

/// The retry headers Envoy's router reads; a client's are always removed.
pub use crate::config::header::ALL as RETRY_HEADERS;

/// Methods a proxy may retry on its own (RFC 9110 §9.2.2).
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// Read-modify-write attempts on the budget before giving up on counting.
const MAX_ATTEMPTS: u32 = 8;

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct RetryPolicy {
    config: Compiled,
    /// Whether this worker's last budget check found it spent (to count each spell once).
    spent: Cell<bool>,
    /// Requests this worker has not added to the shared budget yet (added on each tick).
    unsent: Cell<u32>,
    /// The headers of a request that gets no retries.
    no_retries: [(&'static str, String); 1],
    /// The shared budget window as this worker last read or wrote it, and when.
    window: RefCell<Option<(Time, budget::Window)>>,
}

/// How long a worker judges by the budget window it last saw before reading it again. Its
/// own retries update its copy at once; other workers' reach it within this time.
const WINDOW_FRESHNESS: std::time::Duration = std::time::Duration::from_millis(100);

/// Per-request state.
#[derive(Debug, Default)]
pub struct Stream {
    /// Retries were granted: count those that happen.
    granted: bool,
}

const GIVEN_RETRIES: MetricId = MetricId(0);
const NO_RETRIES_METHOD: MetricId = MetricId(1);
const NO_RETRIES_BUDGET: MetricId = MetricId(2);
const NO_RETRIES_HALF_OPEN: MetricId = MetricId(3);
const BUDGET_SPENT: MetricId = MetricId(4);
const RETRIES: MetricId = MetricId(5);
const RETRY_AFTER_ADDED: MetricId = MetricId(6);
const BUDGET_CONTENTION: MetricId = MetricId(7);

/// Why a request gets no retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRetry {
    Method,
    HalfOpen,
    Budget,
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

/// Whether Envoy let the client's `x-envoy-*` headers through. Envoy's connection manager
/// removes them (retry headers included) from every request it does not consider internal,
/// and marks internal ones with `x-envoy-internal: true` (which it removes from all others), so
/// only internal requests can still carry a client's retry headers: removing them from every
/// request would cost a host call per header for nothing.
fn internal(request: &dyn RequestView) -> bool {
    request.header("x-envoy-internal").is_some()
}

impl RetryPolicy {
    /// Whether the budget allows retries now; counts the request in it either way.
    fn budget_allows(&self, env: &Env<'_>) -> bool {
        let Some(budget) = self.config.budget else {
            return true;
        };
        let unsent = self.unsent.get();
        self.unsent.set(unsent.saturating_add(1));
        let Ok(mut cached) = self.window.try_borrow_mut() else {
            return true;
        };
        let stale = cached
            .as_ref()
            .is_none_or(|(seen, _)| env.now.since(*seen) >= WINDOW_FRESHNESS);
        if stale {
            match env.store.get(budget::KEY) {
                Ok(stored) => {
                    let bytes = stored.as_ref().map(|(b, _)| b.as_slice());
                    *cached = Some((env.now, budget::Window::decode(bytes)));
                }
                Err(_) => {
                    // Unknown: grant, as without a budget (the per-request cap still holds).
                    env.metrics.add(BUDGET_CONTENTION, 1);
                    return true;
                }
            }
        }
        cached
            .as_ref()
            .is_none_or(|(_, window)| window.allows(&budget, env.now.as_secs(), unsent))
    }

    /// Keeps the window this worker just wrote as its freshest copy.
    fn remember(&self, env: &Env<'_>, window: budget::Window) {
        if let Ok(mut cached) = self.window.try_borrow_mut() {
            *cached = Some((env.now, window));
        }
    }

    fn refusal(&self, request: &dyn RequestView) -> Option<NoRetry> {
        let idempotent = IDEMPOTENT.contains(&request.method());
        if !idempotent
            && request
                .header(&self.config.idempotency_key_header)
                .is_none()
        {
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
        MetricDef::counter("given_retries"),
        MetricDef::counter("no_retries_method"),
        MetricDef::counter("no_retries_budget"),
        MetricDef::counter("no_retries_half_open"),
        MetricDef::counter("budget_spent"),
        MetricDef::counter("retries"),
        MetricDef::counter("retry_after_added"),
        MetricDef::counter("budget_contention"),
    ];

    fn new(config: RetryPolicyConfig) -> Result<Self, ConfigError> {
        Ok(RetryPolicy {
            config: config.compile()?,
            spent: Cell::new(false),
            unsent: Cell::new(0),
            no_retries: [(config::header::MAX_RETRIES, "0".to_owned())],
            window: RefCell::new(None),
        })
    }

    fn tick_period(&self) -> Option<std::time::Duration> {
        self.config
            .budget
            .map(|_| std::time::Duration::from_secs(1))
    }

    fn on_tick(&self, env: &Env<'_>) -> Vec<filter_core::decision::Callout> {
        let unsent = self.unsent.replace(0);
        if unsent > 0 {
            let now = env.now.as_secs();
            let added = store::update(env.store, budget::KEY, MAX_ATTEMPTS, |bytes| {
                let mut window = budget::Window::decode(bytes);
                window.deposit(unsent, now);
                (Some(window.encode()), window)
            });
            if let Ok(window) = &added {
                self.remember(env, window.clone());
            }
            if added.is_err() {
                // Try again on the next tick rather than lose them.
                self.unsent.set(self.unsent.get().saturating_add(unsent));
                env.metrics.add(BUDGET_CONTENTION, 1);
            }
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
        let refused = self.refusal(request).or_else(|| {
            let allows = self.budget_allows(env);
            if !allows && !self.spent.get() {
                env.metrics.add(BUDGET_SPENT, 1);
            }
            self.spent.set(!allows);
            (!allows).then_some(NoRetry::Budget)
        });
        match refused {
            None => {
                env.metrics.add(GIVEN_RETRIES, 1);
                stream.granted = rule.num_retries > 0;
                Decision::forward(write(&rule.headers, internal(request)))
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
                Decision::forward(write(&self.no_retries, internal(request)))
            }
        }
    }

    fn wants_response(&self, stream: &Stream) -> bool {
        stream.granted || self.config.retry_after.is_some()
    }

    fn on_response(
        &self,
        stream: &mut Stream,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        if std::mem::take(&mut stream.granted) {
            let retries = response.attempts().unwrap_or(1).saturating_sub(1);
            if retries > 0 {
                let retries = u32::try_from(retries).unwrap_or(u32::MAX);
                env.metrics.add(RETRIES, i64::from(retries));
                if self.config.budget.is_some() {
                    let now = env.now.as_secs();
                    let counted = store::update(env.store, budget::KEY, MAX_ATTEMPTS, |bytes| {
                        let mut window = budget::Window::decode(bytes);
                        window.withdraw(retries, now);
                        (Some(window.encode()), window)
                    });
                    match counted {
                        Ok(window) => self.remember(env, window),
                        Err(_) => env.metrics.add(BUDGET_CONTENTION, 1),
                    }
                }
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
        let now = i64::try_from(env.now.as_secs()).unwrap_or(i64::MAX);
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
