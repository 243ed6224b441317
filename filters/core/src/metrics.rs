//! Metrics as policy code sees them: declared up front, bumped by id.
//!
//! The host layer defines each declared metric in Envoy as `<filter>.<name>` (for example
//! `rate_limit.requests`); Envoy shows it as `wasmcustom.rate_limit.requests` in `/stats` and as
//! `rate_limit_requests` in `/stats/prometheus`. Every worker's VM defines the same names, which
//! Envoy resolves to one process-wide stat.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// The kind of an Envoy stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down; `record` sets it.
    Gauge,
    /// A distribution of recorded values.
    Histogram,
}

/// A metric a filter declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Name below the filter's prefix, e.g. `requests`.
    pub name: &'static str,
    /// What kind of stat it is.
    pub kind: MetricKind,
}

impl MetricDef {
    /// A counter named `name`.
    pub const fn counter(name: &'static str) -> Self {
        Self {
            name,
            kind: MetricKind::Counter,
        }
    }
}

/// A declared metric, by its position in the filter's [`MetricDef`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricId(pub usize);

/// Where policy code reports metrics.
pub trait Metrics {
    /// Adds `delta` to a counter (`delta > 0`) or moves a gauge.
    fn add(&self, id: MetricId, delta: i64);
    /// Sets a gauge or records a histogram value.
    fn record(&self, id: MetricId, value: u64);
}

/// Metrics kept in memory, for tests: counters and gauges as sums, records as last value.
#[derive(Debug, Default)]
pub struct RecordedMetrics {
    values: RefCell<BTreeMap<MetricId, i64>>,
}

impl RecordedMetrics {
    /// The current value of `id` (0 if never touched).
    pub fn value(&self, id: MetricId) -> i64 {
        self.values.borrow().get(&id).copied().unwrap_or(0)
    }
}

impl Metrics for RecordedMetrics {
    fn add(&self, id: MetricId, delta: i64) {
        *self.values.borrow_mut().entry(id).or_insert(0) += delta;
    }
    fn record(&self, id: MetricId, value: u64) {
        self.values
            .borrow_mut()
            .insert(id, i64::try_from(value).unwrap_or(i64::MAX));
    }
}
