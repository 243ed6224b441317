//! Metrics as policy code sees them: declared up front, bumped by id.
//!
//! Each metric is one series of a Prometheus family: a family name with the filter's prefix
//! (`rate_limit_requests_total`) and labels (`rule="per-user"`, `outcome="limited"`). Envoy
//! stats have no labels of their own, so the host defines each series under a name that
//! carries them in the form Istio's `extraStatTags` and Envoy's `stats_config.stats_tags`
//! extract, `<label>=.=<value>;.;` per label, then the family:
//!
//! ```text
//! wasmcustom.rule=.=per-user;.;outcome=.=limited;.;rate_limit_requests_total   (/stats)
//! rate_limit_requests_total{rule="per-user",outcome="limited"}                (/stats/prometheus)
//! ```
//!
//! The second line needs one `stats_tags` entry per label name (see [`LABELS`]); without them
//! Prometheus still gets every series, under flattened names. Every worker's VM defines the
//! same names, which Envoy resolves to one process-wide stat.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Every label name a filter's metric uses: an Envoy configuration extracts each of these
/// (one `stats_tags` entry each) to turn our stat names into labelled series.
pub const LABELS: &[&str] = &["rule", "breaker", "provider", "service", "outcome", "state"];

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

/// One series: a family below the filter's prefix and its labels, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricName {
    /// The family without the filter's prefix, e.g. `requests_total`.
    pub family: &'static str,
    /// `(label, value)` pairs, e.g. `[("rule", "per-user"), ("outcome", "limited")]`.
    pub labels: Vec<(&'static str, String)>,
}

impl MetricName {
    /// The name Envoy defines for this series of filter `filter`'s metrics (without Envoy's
    /// `wasmcustom.` namespace, which Envoy adds).
    pub fn stat_name(&self, filter: &str) -> String {
        let mut name = String::new();
        for (label, value) in &self.labels {
            // Values are configuration names (letters, digits, `_`, `-`) or our own words,
            // so they never hold the `;` that ends the value.
            name.push_str(label);
            name.push_str("=.=");
            name.push_str(value);
            name.push_str(";.;");
        }
        name.push_str(filter);
        name.push('_');
        name.push_str(self.family);
        name
    }
}

/// A metric a filter declares for itself (not per configuration item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The family below the filter's prefix, e.g. `requests_total`.
    pub family: &'static str,
    /// The one label that tells this series from the family's others, e.g.
    /// `("outcome", "allowed")`.
    pub label: Option<(&'static str, &'static str)>,
    /// What kind of stat it is.
    pub kind: MetricKind,
}

impl MetricDef {
    /// A counter without labels.
    pub const fn counter(family: &'static str) -> Self {
        Self {
            family,
            label: None,
            kind: MetricKind::Counter,
        }
    }

    /// The series of counter `family` whose `label` is `value`.
    pub const fn counter_with(
        family: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Self {
        Self {
            family,
            label: Some((label, value)),
            kind: MetricKind::Counter,
        }
    }

    /// Its name.
    pub fn name(&self) -> MetricName {
        MetricName {
            family: self.family,
            labels: self
                .label
                .iter()
                .map(|(label, value)| (*label, (*value).to_owned()))
                .collect(),
        }
    }
}

/// A declared metric, by its position in the filter's [`MetricDef`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricId(pub usize);

/// One metric of a set that every item of a configuration has (each rule, each breaker): a
/// series labelled with the item's name ([`PerItem::ITEM_LABEL`]) and numbered item by item.
/// Implemented by a fieldless enum; its ids are for use in
/// [`crate::filter::Filter::config_metrics`] (so they start at 0: such a filter declares no
/// `METRICS`).
pub trait PerItem: Copy + PartialEq + 'static {
    /// The label that carries the item's name, e.g. `rule`.
    const ITEM_LABEL: &'static str;

    /// Every metric of the set, in the order they are numbered.
    const ALL: &'static [Self];

    /// The family below the filter's prefix, e.g. `requests_total`.
    fn family(self) -> &'static str;

    /// The label that tells this series from the family's others, e.g. `("outcome",
    /// "limited")`; none for a family of one series per item.
    fn label(self) -> Option<(&'static str, &'static str)> {
        None
    }

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
    fn defs<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(MetricName, MetricKind)> {
        items
            .flat_map(|item| {
                Self::ALL.iter().map(move |m| {
                    let mut labels = vec![(Self::ITEM_LABEL, item.to_owned())];
                    labels.extend(m.label().map(|(l, v)| (l, v.to_owned())));
                    let name = MetricName {
                        family: m.family(),
                        labels,
                    };
                    (name, m.kind())
                })
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
    enum Outcome {
        Good,
        Bad,
        Level,
    }

    impl PerItem for Outcome {
        const ITEM_LABEL: &'static str = "rule";
        const ALL: &'static [Self] = &[Outcome::Good, Outcome::Bad, Outcome::Level];
        fn family(self) -> &'static str {
            match self {
                Outcome::Good | Outcome::Bad => "requests_total",
                Outcome::Level => "level",
            }
        }
        fn label(self) -> Option<(&'static str, &'static str)> {
            match self {
                Outcome::Good => Some(("outcome", "good")),
                Outcome::Bad => Some(("outcome", "bad")),
                Outcome::Level => None,
            }
        }
        fn kind(self) -> MetricKind {
            match self {
                Outcome::Good | Outcome::Bad => MetricKind::Counter,
                Outcome::Level => MetricKind::Gauge,
            }
        }
    }

    #[test]
    fn per_item_metrics_are_labelled_and_numbered_item_by_item() {
        let defs = Outcome::defs(["x", "y-1"].into_iter());
        let names: Vec<String> = defs.iter().map(|(n, _)| n.stat_name("f")).collect();
        assert_eq!(
            names,
            [
                "rule=.=x;.;outcome=.=good;.;f_requests_total",
                "rule=.=x;.;outcome=.=bad;.;f_requests_total",
                "rule=.=x;.;f_level",
                "rule=.=y-1;.;outcome=.=good;.;f_requests_total",
                "rule=.=y-1;.;outcome=.=bad;.;f_requests_total",
                "rule=.=y-1;.;f_level",
            ]
        );
        assert_eq!(defs[5].1, MetricKind::Gauge);
        assert_eq!(Outcome::Level.id(1), MetricId(5));
        assert_eq!(Outcome::Bad.id(0), MetricId(1));
        assert_eq!(Outcome::Good.id(1), MetricId(3));
    }

    #[test]
    fn a_filter_s_own_metrics_carry_at_most_their_one_label() {
        let plain = MetricDef::counter("retries_total").name();
        assert_eq!(
            plain.stat_name("retry_policy"),
            "retry_policy_retries_total"
        );
        let labelled = MetricDef::counter_with("requests_total", "outcome", "missing").name();
        assert_eq!(
            labelled.stat_name("jwt_auth"),
            "outcome=.=missing;.;jwt_auth_requests_total"
        );
    }

    /// The form Istio's `extraStatTags` regex `(<tag>=\.=(.*?);\.;)` takes out, leaving
    /// exactly the family: each label's text is removed whole, its value captured.
    #[test]
    fn removing_every_label_leaves_the_family_and_every_label_is_listed() {
        let name = MetricName {
            family: "calls_total",
            labels: vec![
                ("breaker", "flaky".to_owned()),
                ("outcome", "failure".to_owned()),
            ],
        };
        let mut rest = name.stat_name("circuit_breaker");
        for (label, value) in &name.labels {
            assert!(LABELS.contains(label));
            let text = format!("{label}=.={value};.;");
            assert!(rest.contains(&text));
            rest = rest.replacen(&text, "", 1);
        }
        assert_eq!(rest, "circuit_breaker_calls_total");
    }

    #[test]
    fn a_metric_left_out_of_all_never_takes_another_s_id() {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Partial {
            Listed,
            Forgotten,
        }
        impl PerItem for Partial {
            const ITEM_LABEL: &'static str = "rule";
            const ALL: &'static [Self] = &[Partial::Listed];
            fn family(self) -> &'static str {
                "listed_total"
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
