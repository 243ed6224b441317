//! The shape every filter has: built once from its configuration, then a pure function from
//! (request, time, store) to a decision.
//!
//! The host layer (`filters/host`) drives any [`Filter`]: it parses the plugin configuration
//! with [`crate::config::parse`] into [`Filter::Config`], builds the filter with
//! [`Filter::new`] (a refusal stops Envoy from loading the plugin, logging the field path),
//! defines [`Filter::METRICS`], and calls [`Filter::on_request`] and [`Filter::on_response`].

use crate::config::ConfigError;
use crate::decision::{Callout, CalloutResult, Decision, GrpcResult, HeaderEdits};
use crate::metrics::{MetricDef, Metrics};
use crate::request::{RequestView, ResponseView};
use crate::signature::NativeVerifier;
use crate::store::SharedStore;
use crate::time::Time;

/// The time of a callback: given, or read from the host's clock the first time a filter asks
/// (a clock read is a host call, and many callbacks never need one).
#[derive(Clone, Copy)]
pub enum Now<'a> {
    /// This instant.
    At(Time),
    /// Whatever this clock says (read at most once per callback by the host's clock).
    Clock(&'a dyn Clock),
}

/// A clock the host reads on demand.
pub trait Clock {
    /// The wall-clock time of the current callback.
    fn now(&self) -> Time;
}

impl std::fmt::Debug for Now<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Now::At(time) => f.debug_tuple("At").field(time).finish(),
            Now::Clock(_) => f.write_str("Clock"),
        }
    }
}

impl From<Time> for Now<'_> {
    fn from(time: Time) -> Self {
        Now::At(time)
    }
}

/// What the host hands a filter besides the request: the time, the shared store, metrics, the
/// host's native signature checks. (Log lines go through the `log` crate's macros.)
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// The wall-clock time of this callback (see [`Env::now`]).
    pub now: Now<'a>,
    /// State shared by all workers of this Envoy.
    pub store: &'a dyn SharedStore,
    /// The filter's declared metrics.
    pub metrics: &'a dyn Metrics,
    /// Signature checks in the host's native code, when it has them.
    pub verifier: &'a dyn NativeVerifier,
    /// Random numbers (seeded per worker from the host's randomness).
    pub random: &'a dyn crate::random::Random,
}

impl Env<'_> {
    /// The wall-clock time of this callback: the same every time it is asked during one
    /// callback.
    pub fn now(&self) -> Time {
        match self.now {
            Now::At(time) => time,
            Now::Clock(clock) => clock.now(),
        }
    }
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

/// A policy, compiled from its configuration. One instance lives in each Envoy worker's VM and
/// serves every request of that worker, one callback at a time.
pub trait Filter: Sized {
    /// The filter's name in logs, metric names and configuration errors, e.g. `rate_limit`.
    const NAME: &'static str;

    /// The configuration as written (`deny_unknown_fields`: unknown members are errors).
    type Config: serde::de::DeserializeOwned;

    /// Per-request state carried from the request callback to the response callback.
    type Stream: Default;

    /// The metrics this filter reports; [`crate::metrics::MetricId`]`(i)` is the `i`-th.
    const METRICS: &'static [MetricDef] = &[];

    /// Metrics whose names come from the configuration (for example a set per rule), defined
    /// after [`Filter::METRICS`]: the `i`-th is `MetricId(METRICS.len() + i)`. Families are
    /// below the filter's prefix, like those of `METRICS`.
    fn config_metrics(&self) -> Vec<(crate::metrics::MetricName, crate::metrics::MetricKind)> {
        Vec::new()
    }

    /// Every metric's full name as Envoy defines it (see [`crate::metrics`]), in
    /// [`crate::metrics::MetricId`] order: [`Filter::METRICS`] then [`Filter::config_metrics`],
    /// each family prefixed with `NAME_` (a module that combines filters lists theirs, so each
    /// keeps its own names).
    fn metric_names(&self) -> Vec<(String, crate::metrics::MetricKind)> {
        Self::METRICS
            .iter()
            .map(|d| (d.name(), d.kind))
            .chain(self.config_metrics())
            .map(|(name, kind)| (name.stat_name(Self::NAME), kind))
            .collect()
    }

    /// Validates the configuration and builds the filter. An error names the field path.
    fn new(config: Self::Config) -> Result<Self, ConfigError>;

    /// Decides what happens to a request once its headers have arrived.
    fn on_request(
        &self,
        stream: &mut Self::Stream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision;

    /// The results of the calls a [`Decision::Call`] asked for, in the order they were asked
    /// for: decides the held request again (it may call again, or hold it for a tick).
    fn on_call_response(
        &self,
        _stream: &mut Self::Stream,
        _request: &dyn RequestView,
        _results: Vec<GrpcResult>,
        _env: &Env<'_>,
    ) -> Decision {
        Decision::pass()
    }

    /// Whether [`Filter::on_response`] needs to run for this request; when it does not, the host
    /// skips reading the response headers (each host call costs about a microsecond).
    fn wants_response(&self, _stream: &Self::Stream) -> bool {
        false
    }

    /// Whether [`Filter::on_end`] needs to run when this request's stream ends.
    fn wants_end(&self, _stream: &Self::Stream) -> bool {
        false
    }

    /// The stream has ended, answered or not (a client that went away never gets a
    /// response): the last chance to settle what the request held. `ending` tells how it
    /// ended: [`ResponseView::code_details`] and [`ResponseView::response_flags`] (a reset,
    /// a client that left); its headers are the response's, if one came.
    fn on_end(&self, _stream: &mut Self::Stream, _ending: &dyn ResponseView, _env: &Env<'_>) {}

    /// Whether [`Filter::on_trailers`] needs to run if the response has trailers (reading
    /// them costs host calls, so a filter asks only when it needs them, e.g. for a gRPC
    /// call's `grpc-status`).
    fn wants_trailers(&self, _stream: &Self::Stream) -> bool {
        false
    }

    /// Sees the response trailers (only when the upstream sent some: a trailers-only gRPC
    /// answer has its `grpc-status` in the headers instead). `trailers.header` reads the
    /// trailers; `trailers.status` is `None`.
    fn on_trailers(
        &self,
        _stream: &mut Self::Stream,
        _trailers: &dyn ResponseView,
        _env: &Env<'_>,
    ) {
    }

    /// Sees the response headers (from the upstream or a local reply) and edits them.
    fn on_response(
        &self,
        _stream: &mut Self::Stream,
        _response: &dyn ResponseView,
        _env: &Env<'_>,
    ) -> HeaderEdits {
        HeaderEdits::default()
    }

    /// How often, at least, [`Filter::on_tick`] runs on each worker; `None` (the default): no
    /// need. The host layer also ticks for its own work (about once a second), so `on_tick`
    /// must judge by `env.now()`, not count calls. Requests held by [`Decision::Wait`] are
    /// decided again on each tick.
    fn tick_period(&self) -> Option<std::time::Duration> {
        None
    }

    /// Background work on each worker's root context: returns the callouts to send.
    fn on_tick(&self, _env: &Env<'_>) -> Vec<Callout> {
        Vec::new()
    }

    /// The answer to a callout sent from [`Filter::on_tick`].
    fn on_callout_response(&self, _tag: u64, _result: CalloutResult, _env: &Env<'_>) {}
}
