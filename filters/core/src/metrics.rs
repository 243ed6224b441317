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

/// One metric of a family that every item of a configuration has (each rule, each breaker),
/// named `<item>.<name>` and numbered item by item. Implemented by a fieldless enum; its ids are
/// for use in [`crate::filter::Filter::config_metrics`] (so they start at 0: such a filter
/// declares no `METRICS`).
pub trait PerItem: Copy + PartialEq + 'static {
    /// Every metric of the family, in the order they are numbered.
    const ALL: &'static [Self];

    /// The name below the item's, e.g. `limited`.
    fn name(self) -> &'static str;

    /// What kind of stat it is.
    fn kind(self) -> MetricKind;

    /// The id of this metric of the `item`-th item.
    fn id(self, item: usize) -> MetricId {
        match Self::ALL.iter().position(|m| *m == self) {
            Some(place) => MetricId(item.saturating_mul(Self::ALL.len()).saturating_add(place)),
            // Left out of ALL, so never declared: an id no metric has (the host ignores it),
            // rather than another metric's.
            None => MetricId(usize::MAX),
        }
    }

    /// The definitions for items named `items`, in order.
    fn defs<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(String, MetricKind)> {
        items
            .flat_map(|item| {
                Self::ALL
                    .iter()
                    .map(move |m| (format!("{item}.{}", m.name()), m.kind()))
            })
            .collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Family {
        A,
        B,
    }

    impl PerItem for Family {
        const ALL: &'static [Self] = &[Family::A, Family::B];
        fn name(self) -> &'static str {
            match self {
                Family::A => "a",
                Family::B => "b",
            }
        }
        fn kind(self) -> MetricKind {
            match self {
                Family::A => MetricKind::Counter,
                Family::B => MetricKind::Gauge,
            }
        }
    }

    #[test]
    fn per_item_metrics_are_named_and_numbered_item_by_item() {
        let defs = Family::defs(["x", "y"].into_iter());
        let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x.a", "x.b", "y.a", "y.b"]);
        assert_eq!(defs[3].1, MetricKind::Gauge);
        assert_eq!(Family::B.id(1), MetricId(3));
        assert_eq!(Family::B.id(0), MetricId(1));
        assert_eq!(Family::A.id(1), MetricId(2));
    }

    #[test]
    fn a_metric_left_out_of_all_never_takes_another_s_id() {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Partial {
            Listed,
            Forgotten,
        }
        impl PerItem for Partial {
            const ALL: &'static [Self] = &[Partial::Listed];
            fn name(self) -> &'static str {
                "listed"
            }
            fn kind(self) -> MetricKind {
                MetricKind::Counter
            }
        }
        assert_eq!(Partial::Listed.id(1), MetricId(1));
        assert_eq!(Partial::Forgotten.id(0), MetricId(usize::MAX));
        assert_eq!(Partial::defs(["x"].into_iter()).len(), 1);
    }
}
