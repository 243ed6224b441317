//! One policy as a stage of the gateway: the policy's own [`Filter`], seen through the
//! object-safe [`Step`] so the gateway can run a list of them.
//!
//! A stage hands its policy an [`Env`] whose metrics are shifted to the policy's own ids, so a
//! policy runs inside the gateway exactly as it runs alone. (Its log lines need nothing: each
//! starts with the policy's own name.)

use filter_core::decision::{Callout, CalloutResult, Decision, GrpcResult, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricId, MetricKind, Metrics};
use filter_core::request::{RequestView, ResponseView};
use std::time::Duration;

/// Where each policy's per-request state lives inside the gateway's.
pub trait Slot<F: Filter> {
    /// The policy's state for this request.
    fn slot(&self) -> &F::Stream;
    /// The same, to change.
    fn slot_mut(&mut self) -> &mut F::Stream;
}

/// A policy as the gateway drives it: [`Filter`]'s callbacks, over the gateway's per-request
/// state `S`.
pub trait Step<S> {
    /// The policy's name (`jwt_auth`, ...).
    fn name(&self) -> &'static str;
    /// The policy's metrics, by full name, in the policy's own id order.
    fn metric_names(&self) -> Vec<(String, MetricKind)>;
    /// [`Filter::on_request`].
    fn on_request(&self, streams: &mut S, request: &dyn RequestView, env: &Env<'_>) -> Decision;
    /// [`Filter::on_call_response`].
    fn on_call_response(
        &self,
        streams: &mut S,
        request: &dyn RequestView,
        results: Vec<GrpcResult>,
        env: &Env<'_>,
    ) -> Decision;
    /// [`Filter::wants_response`].
    fn wants_response(&self, streams: &S) -> bool;
    /// [`Filter::on_response`].
    fn on_response(
        &self,
        streams: &mut S,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits;
    /// [`Filter::wants_end`].
    fn wants_end(&self, streams: &S) -> bool;
    /// [`Filter::on_end`].
    fn on_end(&self, streams: &mut S, ending: &dyn ResponseView, env: &Env<'_>);
    /// [`Filter::wants_trailers`].
    fn wants_trailers(&self, streams: &S) -> bool;
    /// [`Filter::on_trailers`].
    fn on_trailers(&self, streams: &mut S, trailers: &dyn ResponseView, env: &Env<'_>);
    /// [`Filter::tick_period`].
    fn tick_period(&self) -> Option<Duration>;
    /// [`Filter::on_tick`].
    fn on_tick(&self, env: &Env<'_>) -> Vec<Callout>;
    /// [`Filter::on_callout_response`].
    fn on_callout_response(&self, tag: u64, result: CalloutResult, env: &Env<'_>);
}

/// A policy and where its metrics start among the gateway's.
#[derive(Debug)]
pub struct Stage<F> {
    filter: F,
    metric_base: usize,
}

impl<F: Filter> Stage<F> {
    /// Builds the policy from its configuration (errors name the member, e.g.
    /// `rate_limit.rules[0].requests`); its metrics come after the first `metric_base`.
    pub fn new(
        config: F::Config,
        metric_base: usize,
    ) -> Result<Self, filter_core::config::ConfigError> {
        let filter = F::new(config).map_err(|e| e.within(F::NAME))?;
        Ok(Self {
            filter,
            metric_base,
        })
    }

    /// Runs `call` with `env` as the policy alone would see it.
    fn scoped<R>(&self, env: &Env<'_>, call: impl FnOnce(&Env<'_>) -> R) -> R {
        let metrics = Shifted {
            metrics: env.metrics,
            base: self.metric_base,
        };
        call(&Env {
            metrics: &metrics,
            ..*env
        })
    }
}

impl<F: Filter, S: Slot<F>> Step<S> for Stage<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn metric_names(&self) -> Vec<(String, MetricKind)> {
        self.filter.metric_names()
    }

    fn on_request(&self, streams: &mut S, request: &dyn RequestView, env: &Env<'_>) -> Decision {
        self.scoped(env, |env| {
            self.filter.on_request(streams.slot_mut(), request, env)
        })
    }

    fn on_call_response(
        &self,
        streams: &mut S,
        request: &dyn RequestView,
        results: Vec<GrpcResult>,
        env: &Env<'_>,
    ) -> Decision {
        self.scoped(env, |env| {
            self.filter
                .on_call_response(streams.slot_mut(), request, results, env)
        })
    }

    fn wants_response(&self, streams: &S) -> bool {
        self.filter.wants_response(streams.slot())
    }

    fn on_response(
        &self,
        streams: &mut S,
        response: &dyn ResponseView,
        env: &Env<'_>,
    ) -> HeaderEdits {
        self.scoped(env, |env| {
            self.filter.on_response(streams.slot_mut(), response, env)
        })
    }

    fn wants_end(&self, streams: &S) -> bool {
        self.filter.wants_end(streams.slot())
    }

    fn on_end(&self, streams: &mut S, ending: &dyn ResponseView, env: &Env<'_>) {
        self.scoped(env, |env| {
            self.filter.on_end(streams.slot_mut(), ending, env);
        });
    }

    fn wants_trailers(&self, streams: &S) -> bool {
        self.filter.wants_trailers(streams.slot())
    }

    fn on_trailers(&self, streams: &mut S, trailers: &dyn ResponseView, env: &Env<'_>) {
        self.scoped(env, |env| {
            self.filter.on_trailers(streams.slot_mut(), trailers, env);
        });
    }

    fn tick_period(&self) -> Option<Duration> {
        self.filter.tick_period()
    }

    fn on_tick(&self, env: &Env<'_>) -> Vec<Callout> {
        self.scoped(env, |env| self.filter.on_tick(env))
    }

    fn on_callout_response(&self, tag: u64, result: CalloutResult, env: &Env<'_>) {
        self.scoped(env, |env| {
            self.filter.on_callout_response(tag, result, env);
        });
    }
}

/// A policy's metric ids, moved to where its metrics start among the gateway's.
struct Shifted<'a> {
    metrics: &'a dyn Metrics,
    base: usize,
}

impl Metrics for Shifted<'_> {
    fn add(&self, id: MetricId, delta: i64) {
        self.metrics.add(MetricId(self.base + id.0), delta);
    }

    fn record(&self, id: MetricId, value: u64) {
        self.metrics.record(MetricId(self.base + id.0), value);
    }
}
