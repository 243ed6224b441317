//! Rate limiting (`rate_limit.wasm`): exact per-key limits shared by all Envoy workers, in
//! bounded memory, with the standard header fields.
//!
//! Per request: every rule whose `match` fits and whose key parts are all present applies
//! ([`key`]). Each applying rule's bucket is read from shared data ([`table`]) and judged by
//! GCRA ([`gcra`]). If every rule allows, all of them are charged, each with a
//! compare-and-swap; if any refuses, none is (all or nothing). A write that loses a race undoes
//! the writes made before it and the whole request is judged again, a bounded number of times.
//! Answers and header fields come from one table ([`reply`]).
#![deny(unsafe_code)]

pub mod config;
pub mod gcra;
pub mod key;
pub mod reply;
pub mod table;

use crate::config::{Compiled, OnContention, RateLimitConfig, Rule};
use crate::gcra::{Conforming, Verdict};
use crate::reply::RuleStatus;
use crate::table::{Bucket, HashMemo, KeyHash, Placement};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::logging::{self, Throttle};
use filter_core::metrics::{MetricKind, PerItem};
use filter_core::request::{RequestView, ResponseView};
use filter_core::store::{self, Cas, INSERT_IF_ABSENT, SharedStore, StoreError, Written};
use filter_core::time::{Time, WorkerClock};
use std::cell::RefCell;
use std::time::Duration;

/// How many times a request is judged again after losing a compare-and-swap race.
pub const MAX_ATTEMPTS: u32 = 8;

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct RateLimit {
    config: Compiled,
    /// This worker's clock, never going back (the host's is a wall clock).
    clock: WorkerClock,
    /// Fingerprints of this worker's recent keys.
    memo: RefCell<HashMemo>,
    /// The "would refuse" lines of shadow mode, which a flood would otherwise repeat.
    shadow_lines: Throttle,
    /// The "evicting" line of each rule (by index): when its table first pushes a busy key
    /// out, then at most once per [`EVICTING_LINE_INTERVAL`] while it goes on.
    evicting_lines: Vec<Throttle>,
}

/// At most one shadow-mode "would refuse" line per worker in this interval.
const SHADOW_LINE_INTERVAL: Duration = Duration::from_secs(10);
/// At most one "evicting" line per rule and worker in this interval.
const EVICTING_LINE_INTERVAL: Duration = Duration::from_secs(60);

/// Keys whose fingerprint each worker remembers.
const MEMO_SLOTS: usize = 256;

/// Per-request state: the header fields to add to the response.
#[derive(Debug, Default)]
pub struct Stream {
    response_headers: Vec<(String, String)>,
}

/// The metrics each rule has, named `<rule>.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMetric {
    /// Requests the rule let through.
    Allowed,
    /// Requests it refused.
    Limited,
    /// Requests it would have refused, in shadow mode.
    ShadowLimited,
    /// Requests judged without it: the shared store stayed contended or failed.
    Contention,
    /// Busy keys pushed out of a full bucket to make room.
    Evicted,
}

impl PerItem for RuleMetric {
    const ALL: &'static [Self] = &[
        RuleMetric::Allowed,
        RuleMetric::Limited,
        RuleMetric::ShadowLimited,
        RuleMetric::Contention,
        RuleMetric::Evicted,
    ];

    fn name(self) -> &'static str {
        match self {
            RuleMetric::Allowed => "allowed",
            RuleMetric::Limited => "limited",
            RuleMetric::ShadowLimited => "shadow_limited",
            RuleMetric::Contention => "contention",
            RuleMetric::Evicted => "evicted",
        }
    }

    fn kind(self) -> MetricKind {
        MetricKind::Counter
    }
}

/// A rule that applies to the request, with the bucket its key falls in.
#[derive(Debug)]
struct Target<'a> {
    index: usize,
    rule: &'a Rule,
    key: KeyHash,
    bucket: String,
}

/// One applying rule, charged for the request.
#[derive(Debug)]
struct Charged {
    /// What its limit said.
    verdict: Conforming,
    /// Whether storing the key pushed a busy key out of its bucket.
    evicted_busy_key: bool,
}

/// What charging the applying rules came to, one entry per target in the targets' order.
#[derive(Debug)]
enum Outcome {
    /// Every rule allowed and was charged.
    Allowed(Vec<Charged>),
    /// Some rule refused; nothing was charged.
    Refused(Vec<Verdict>),
    /// The store stayed contended, or failed.
    Unavailable(StoreError),
}

/// The names of the rules a request is over, written only if a line is.
struct Over<'a>(&'a [&'a Target<'a>]);

impl std::fmt::Display for Over<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&t.rule.name)?;
        }
        Ok(())
    }
}

impl RateLimit {
    /// Says, at info level, that `target`'s table pushed a busy key out (throttled).
    fn log_evicting(&self, target: &Target<'_>, now: Time) {
        if let Some(dropped) = self
            .evicting_lines
            .get(target.index)
            .and_then(|t| t.admit(now))
        {
            log::info!(
                "{}: rule {}: key table full ({} keys): evicting the keys closest to idle{dropped}",
                Self::NAME,
                target.rule.name,
                target.rule.table.capacity()
            );
        }
    }

    /// The rules that apply to `request`.
    fn targets<'a>(&'a self, request: &dyn RequestView) -> Vec<Target<'a>> {
        self.config
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.matcher.matches(request))
            .filter_map(|(index, rule)| {
                let material =
                    key::material(&rule.name, &rule.key, request, self.config.trusted_proxies)?;
                let key = match self.memo.try_borrow_mut() {
                    Ok(mut memo) => memo.hash(&material),
                    Err(_) => KeyHash::of(&material),
                };
                Some(Target {
                    index,
                    rule,
                    bucket: rule.table.bucket_key(key),
                    key,
                })
            })
            .collect()
    }
}

/// Each target's rule with its verdict, for the header fields.
fn rule_statuses<'a>(
    targets: &[Target<'a>],
    verdicts: impl IntoIterator<Item = Verdict>,
) -> Vec<RuleStatus<'a>> {
    targets
        .iter()
        .zip(verdicts)
        .map(|(t, verdict)| RuleStatus {
            name: &t.rule.name,
            limit: &t.rule.limit,
            verdict,
        })
        .collect()
}

/// Judges the request against every target and charges them all, or none.
fn charge(targets: &[Target<'_>], now: u64, store: &dyn SharedStore) -> Outcome {
    for _ in 0..MAX_ATTEMPTS {
        let mut read: Vec<(Bucket, Cas)> = Vec::with_capacity(targets.len());
        for t in targets {
            match store.get(&t.bucket) {
                Ok(Some((bytes, cas))) => read.push((Bucket::decode(Some(&bytes)), cas)),
                Ok(None) => read.push((Bucket::default(), INSERT_IF_ABSENT)),
                Err(e) => return Outcome::Unavailable(e),
            }
        }
        let verdicts: Vec<Verdict> = targets
            .iter()
            .zip(&read)
            .map(|(t, (bucket, _))| t.rule.limit.decide(bucket.get(t.key), now))
            .collect();
        let Some(conforming) = verdicts
            .iter()
            .map(|v| v.conforming())
            .collect::<Option<Vec<Conforming>>>()
        else {
            return Outcome::Refused(verdicts);
        };
        let mut charged = Vec::with_capacity(targets.len());
        let mut lost_race = false;
        for (i, ((t, (mut bucket, cas)), verdict)) in
            targets.iter().zip(read).zip(conforming).enumerate()
        {
            let placed = bucket.put(t.key, verdict.next, &t.rule.limit, now);
            charged.push(Charged {
                verdict,
                evicted_busy_key: placed == Placement::Evicted,
            });
            match store.set(&t.bucket, &bucket.encode(), Some(cas)) {
                Ok(Written::Yes) => {}
                Ok(Written::CasMismatch) => {
                    refund(targets.get(..i).unwrap_or_default(), store);
                    lost_race = true;
                    break;
                }
                Err(e) => {
                    refund(targets.get(..i).unwrap_or_default(), store);
                    return Outcome::Unavailable(e);
                }
            }
        }
        if !lost_race {
            return Outcome::Allowed(charged);
        }
    }
    Outcome::Unavailable(StoreError::Contention {
        attempts: MAX_ATTEMPTS,
    })
}

/// Takes back the request from rules already charged, when a later one could not be. If the
/// store refuses even that, the client stays charged once too often: the error is on the
/// client's side by one request, never on the upstream's.
fn refund(charged: &[Target<'_>], store: &dyn SharedStore) {
    for t in charged {
        let _ = store::update(store, &t.bucket, MAX_ATTEMPTS, |bytes| {
            let mut bucket = Bucket::decode(bytes);
            if bucket.refund(t.key, &t.rule.limit) {
                (Some(bucket.encode()), ())
            } else {
                (None, ())
            }
        });
    }
}

impl Filter for RateLimit {
    const NAME: &'static str = "rate_limit";
    type Config = RateLimitConfig;
    type Stream = Stream;

    fn config_metrics(&self) -> Vec<(String, MetricKind)> {
        RuleMetric::defs(self.config.rules.iter().map(|r| r.name.as_str()))
    }

    fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        let config = config.compile()?;
        let evicting_lines = config
            .rules
            .iter()
            .map(|_| Throttle::new(EVICTING_LINE_INTERVAL))
            .collect();
        Ok(RateLimit {
            config,
            clock: WorkerClock::default(),
            memo: RefCell::new(HashMemo::new(MEMO_SLOTS)),
            shadow_lines: Throttle::new(SHADOW_LINE_INTERVAL),
            evicting_lines,
        })
    }

    fn on_request(
        &self,
        stream: &mut Stream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let targets = self.targets(request);
        if targets.is_empty() {
            return Decision::pass();
        }
        let now = self.clock.now(env.now);
        let headers = |verdicts: &mut dyn Iterator<Item = Verdict>| {
            reply::headers(self.config.dialect, &rule_statuses(&targets, verdicts))
        };
        match charge(&targets, now.as_nanos(), env.store) {
            Outcome::Allowed(charged) => {
                for (t, c) in targets.iter().zip(&charged) {
                    env.metrics.add(RuleMetric::Allowed.id(t.index), 1);
                    if c.evicted_busy_key {
                        env.metrics.add(RuleMetric::Evicted.id(t.index), 1);
                        self.log_evicting(t, now);
                    }
                }
                stream.response_headers =
                    headers(&mut charged.iter().map(|c| Verdict::Conforms(c.verdict)));
                Decision::pass()
            }
            Outcome::Refused(verdicts) => {
                let violated: Vec<&Target<'_>> = targets
                    .iter()
                    .zip(&verdicts)
                    .filter(|(_, v)| !v.conforms())
                    .map(|(t, _)| t)
                    .collect();
                if self.config.shadow {
                    for t in &violated {
                        env.metrics.add(RuleMetric::ShadowLimited.id(t.index), 1);
                    }
                    // What shadow mode is for, so at info; throttled, as a flood repeats it.
                    if let Some(dropped) = self.shadow_lines.admit(now) {
                        log::info!(
                            "{}: shadow mode: would refuse {} {} (over {}){dropped}",
                            Self::NAME,
                            request.method(),
                            request.path_only(),
                            Over(&violated)
                        );
                    }
                    stream.response_headers = headers(&mut verdicts.iter().copied());
                    return Decision::pass();
                }
                for t in &violated {
                    env.metrics.add(RuleMetric::Limited.id(t.index), 1);
                }
                log::debug!(
                    "{}: refused {} {}: over {}",
                    Self::NAME,
                    request.method(),
                    request.path_only(),
                    Over(&violated)
                );
                Decision::Respond(reply::refused(
                    self.config.status,
                    self.config.dialect,
                    &rule_statuses(&targets, verdicts.iter().copied()),
                ))
            }
            Outcome::Unavailable(error) => {
                for t in &targets {
                    env.metrics.add(RuleMetric::Contention.id(t.index), 1);
                }
                match self.config.on_contention {
                    OnContention::Allow => Decision::pass(),
                    OnContention::Deny => {
                        let reply = reply::contended().detail(error.to_string());
                        logging::refused(Self::NAME, &reply);
                        Decision::Respond(reply)
                    }
                }
            }
        }
    }

    fn wants_response(&self, stream: &Stream) -> bool {
        !stream.response_headers.is_empty()
    }

    fn on_response(
        &self,
        stream: &mut Stream,
        _response: &dyn ResponseView,
        _env: &Env<'_>,
    ) -> HeaderEdits {
        HeaderEdits {
            set: std::mem::take(&mut stream.response_headers),
            ..HeaderEdits::default()
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::RateLimit);
}
