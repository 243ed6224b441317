//! Rate limiting (`rate_limit.wasm`): exact per-key limits shared by all Envoy workers, in
//! bounded memory, with the standard header fields.
//!
//! Per request: every rule whose `match` fits and whose key parts are all present applies
//! ([`key`]). Each applying rule's bucket is read from shared data ([`table`]) and judged by
//! GCRA ([`gcra`]). If every rule allows, all of them are charged, each with a
//! compare-and-swap; if any refuses, none is (all or nothing). A write that loses a race undoes
//! the writes made before it and the whole request is judged again, a bounded number of times.
//! Answers and header fields come from one table ([`reply`]).
//!
//! Global rules ([`global`]) are judged by a rate limit service instead. Local rules run
//! first: a request they refuse never costs a call. When a request passed the local rules
//! and a global rule then refuses it (or a failed call refuses it), the local rules' charge is
//! given back, as a refused request is charged nothing.
#![deny(unsafe_code)]

pub mod config;
pub mod gcra;
pub mod global;
pub mod key;
pub mod reply;
pub mod rls;
pub mod table;

use crate::config::{Compiled, Failure, FailureMode, OnContention, RateLimitConfig, Rule};
use crate::gcra::{Conforming, Verdict};
use crate::global::{Answer, Plan};
use crate::reply::{Item, RuleStatus};
use crate::table::{Bucket, HashMemo, KeyHash, Placement};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, GrpcResult, HeaderEdits, LocalResponse, Name, RequestEdits};
use filter_core::filter::{Env, Filter};
use filter_core::logging::{self, Throttle};
use filter_core::metrics::{MetricId, MetricKind, MetricName, PerItem};
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
    /// The failure lines of each service (by index), one throttle per kind of failure.
    failure_lines: Vec<[Throttle; 4]>,
}

/// At most one line per service, kind of failure and worker in this interval.
const FAILURE_LINE_INTERVAL: Duration = Duration::from_secs(10);

/// At most one shadow-mode "would refuse" line per worker in this interval.
const SHADOW_LINE_INTERVAL: Duration = Duration::from_secs(10);
/// At most one "evicting" line per rule and worker in this interval.
const EVICTING_LINE_INTERVAL: Duration = Duration::from_secs(60);

/// Keys whose fingerprint each worker remembers.
const MEMO_SLOTS: usize = 256;

/// Per-request state: the header fields to add to the response, and what a request waiting
/// for a rate limit service carries meanwhile.
#[derive(Debug, Default)]
pub struct Stream {
    response_headers: Vec<(Name, String)>,
    calling: Option<Box<Calling>>,
}

/// A request waiting for its calls to rate limit services.
#[derive(Debug)]
struct Calling {
    /// When the calls were made.
    since: Time,
    /// What each call carries.
    plans: Vec<Plan>,
    /// The local rules that charged the request: (rule index, key), to give back.
    charged: Vec<(usize, KeyHash)>,
    /// What the local rules say in the header fields.
    local_items: Vec<Item>,
    /// The local rules that refused the request in shadow mode.
    shadow_over: Vec<String>,
}

/// The metrics each global rule has, labelled `rule="<name>"`: its requests by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalRuleMetric {
    /// Requests its service let through.
    Allowed,
    /// Requests its service refused.
    Limited,
    /// Requests its service refused, let through in shadow mode.
    ShadowLimited,
    /// Requests judged without it: its service's call failed.
    Failed,
}

impl PerItem for GlobalRuleMetric {
    const ITEM_LABEL: &'static str = "rule";
    const ALL: &'static [Self] = &[
        GlobalRuleMetric::Allowed,
        GlobalRuleMetric::Limited,
        GlobalRuleMetric::ShadowLimited,
        GlobalRuleMetric::Failed,
    ];

    fn family(self) -> &'static str {
        "requests_total"
    }

    fn label(self) -> Option<(&'static str, &'static str)> {
        Some((
            "outcome",
            match self {
                GlobalRuleMetric::Allowed => "allowed",
                GlobalRuleMetric::Limited => "limited",
                GlobalRuleMetric::ShadowLimited => "shadow_limited",
                GlobalRuleMetric::Failed => "failed",
            },
        ))
    }

    fn kind(self) -> MetricKind {
        MetricKind::Counter
    }
}

/// The metrics each rate limit service has, labelled `service="<name>"`: its calls by outcome,
/// and the requests refused because a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMetric {
    /// Calls answered `OK`.
    Ok,
    /// Calls answered `OVER_LIMIT`.
    OverLimit,
    /// Calls no service answered.
    Unreachable,
    /// Calls not answered in time.
    Timeout,
    /// Calls answered with a gRPC error status.
    Error,
    /// Calls whose answer could not be read.
    InvalidAnswer,
    /// Requests refused because a call failed (`on_failure: deny`).
    FailureDenied,
}

impl PerItem for ServiceMetric {
    const ITEM_LABEL: &'static str = "service";
    const ALL: &'static [Self] = &[
        ServiceMetric::Ok,
        ServiceMetric::OverLimit,
        ServiceMetric::Unreachable,
        ServiceMetric::Timeout,
        ServiceMetric::Error,
        ServiceMetric::InvalidAnswer,
        ServiceMetric::FailureDenied,
    ];

    fn family(self) -> &'static str {
        match self {
            ServiceMetric::FailureDenied => "service_failure_denials_total",
            ServiceMetric::Ok
            | ServiceMetric::OverLimit
            | ServiceMetric::Unreachable
            | ServiceMetric::Timeout
            | ServiceMetric::Error
            | ServiceMetric::InvalidAnswer => "service_calls_total",
        }
    }

    fn label(self) -> Option<(&'static str, &'static str)> {
        let outcome = match self {
            ServiceMetric::Ok => "ok",
            ServiceMetric::OverLimit => "over_limit",
            ServiceMetric::Unreachable => "unreachable",
            ServiceMetric::Timeout => "timeout",
            ServiceMetric::Error => "error",
            ServiceMetric::InvalidAnswer => "invalid_answer",
            ServiceMetric::FailureDenied => return None,
        };
        Some(("outcome", outcome))
    }

    fn kind(self) -> MetricKind {
        MetricKind::Counter
    }
}

impl ServiceMetric {
    fn of(failure: Failure) -> Self {
        match failure {
            Failure::Unreachable => ServiceMetric::Unreachable,
            Failure::Timeout => ServiceMetric::Timeout,
            Failure::Error => ServiceMetric::Error,
            Failure::InvalidAnswer => ServiceMetric::InvalidAnswer,
        }
    }
}

/// The metrics each rule has, labelled `rule="<name>"`.
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
    const ITEM_LABEL: &'static str = "rule";
    const ALL: &'static [Self] = &[
        RuleMetric::Allowed,
        RuleMetric::Limited,
        RuleMetric::ShadowLimited,
        RuleMetric::Contention,
        RuleMetric::Evicted,
    ];

    fn family(self) -> &'static str {
        match self {
            RuleMetric::Allowed | RuleMetric::Limited | RuleMetric::ShadowLimited => {
                "requests_total"
            }
            RuleMetric::Contention => "contention_total",
            RuleMetric::Evicted => "evictions_total",
        }
    }

    fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            RuleMetric::Allowed => Some(("outcome", "allowed")),
            RuleMetric::Limited => Some(("outcome", "limited")),
            RuleMetric::ShadowLimited => Some(("outcome", "shadow_limited")),
            RuleMetric::Contention | RuleMetric::Evicted => None,
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

/// What the local rules made of a request.
#[derive(Debug)]
enum Local {
    /// Every one allowed it, and was charged; what they say in the header fields.
    Charged(Vec<Item>),
    /// Some refused it, in shadow mode: nothing charged, the request goes on; the header
    /// fields' items, and the names of the rules that refused.
    ShadowRefused(Vec<Item>, Vec<String>),
    /// The store failed and `on_contention` lets it through, uncounted.
    Uncounted,
    /// Refused.
    Refused(LocalResponse),
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

    /// Says, at info level, what shadow mode let through: what it is for; throttled, as a
    /// flood repeats it.
    fn log_shadow(&self, request: &dyn RequestView, over: impl std::fmt::Display, now: Time) {
        if let Some(dropped) = self.shadow_lines.admit(now) {
            log::info!(
                "{}: shadow mode: would refuse {} {} (over {over}){dropped}",
                Self::NAME,
                request.method(),
                request.path_only(),
            );
        }
    }

    /// The id of a global rule's metric.
    fn global_metric(&self, metric: GlobalRuleMetric, rule: usize) -> MetricId {
        let base = self.config.rules.len() * RuleMetric::ALL.len();
        MetricId(base + metric.id(rule).0)
    }

    /// The id of a service's metric.
    fn service_metric(&self, metric: ServiceMetric, service: usize) -> MetricId {
        let base = self.config.rules.len() * RuleMetric::ALL.len()
            + self.config.global_rules.len() * GlobalRuleMetric::ALL.len();
        MetricId(base + metric.id(service).0)
    }

    /// Says, at warn level, that a call failed and what that did (throttled per service and
    /// kind of failure: an outage fails every request).
    fn log_failure(
        &self,
        service: usize,
        failure: Failure,
        reason: &str,
        mode: FailureMode,
        now: Time,
    ) {
        let kind = match failure {
            Failure::Unreachable => 0,
            Failure::Timeout => 1,
            Failure::Error => 2,
            Failure::InvalidAnswer => 3,
        };
        let throttle = self.failure_lines.get(service).and_then(|t| t.get(kind));
        let (Some(throttle), Some(config)) = (throttle, self.config.services.get(service)) else {
            return;
        };
        if let Some(dropped) = throttle.admit(now) {
            let outcome = match mode {
                FailureMode::Allow => "allowing the request",
                FailureMode::Deny => "refusing the request",
            };
            log::warn!(
                "{}: rate limit service {} (cluster {}): {}: {reason}; {outcome}{dropped}",
                Self::NAME,
                config.name,
                config.cluster,
                failure.name()
            );
        }
    }

    /// Takes back a request from the local rules that charged it: a global rule or a failed
    /// call refused it after all.
    fn give_back(&self, charged: &[(usize, KeyHash)], env: &Env<'_>) {
        let targets: Vec<Target<'_>> = charged
            .iter()
            .filter_map(|(index, key)| {
                let rule = self.config.rules.get(*index)?;
                Some(Target {
                    index: *index,
                    rule,
                    key: *key,
                    bucket: rule.table.bucket_key(*key),
                })
            })
            .collect();
        refund(&targets, env.store);
    }

    /// Judges the request against the local rules that apply (`targets`, not empty).
    fn judge_locally(
        &self,
        targets: &[Target<'_>],
        request: &dyn RequestView,
        now: Time,
        env: &Env<'_>,
    ) -> Local {
        let items = |verdicts: &mut dyn Iterator<Item = Verdict>| -> Vec<Item> {
            rule_statuses(targets, verdicts)
                .iter()
                .map(RuleStatus::item)
                .collect()
        };
        match charge(targets, now.as_nanos(), env.store) {
            Outcome::Allowed(charged) => {
                for (t, c) in targets.iter().zip(&charged) {
                    env.metrics.add(RuleMetric::Allowed.id(t.index), 1);
                    if c.evicted_busy_key {
                        env.metrics.add(RuleMetric::Evicted.id(t.index), 1);
                        self.log_evicting(t, now);
                    }
                }
                Local::Charged(items(
                    &mut charged.iter().map(|c| Verdict::Conforms(c.verdict)),
                ))
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
                    self.log_shadow(request, Over(&violated), now);
                    let names = violated.iter().map(|t| t.rule.name.clone()).collect();
                    return Local::ShadowRefused(items(&mut verdicts.iter().copied()), names);
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
                Local::Refused(reply::refused(
                    self.config.status,
                    self.config.dialect,
                    &items(&mut verdicts.iter().copied()),
                    &[],
                ))
            }
            Outcome::Unavailable(error) => {
                for t in targets {
                    env.metrics.add(RuleMetric::Contention.id(t.index), 1);
                }
                match self.config.on_contention {
                    OnContention::Allow => Local::Uncounted,
                    OnContention::Deny => {
                        let reply = reply::contended().detail(error.to_string());
                        logging::refused(Self::NAME, &reply);
                        Local::Refused(reply)
                    }
                }
            }
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

/// `edits`, recording the rules that would have refused in shadow mode, if any (a request no
/// rule refused records nothing: no host call).
fn shadow_edits(edits: RequestEdits, shadow_over: &[String]) -> RequestEdits {
    if shadow_over.is_empty() {
        return edits;
    }
    let names: Vec<&str> = shadow_over.iter().map(String::as_str).collect();
    edits.filter_state(reply::DECISION, reply::shadow_decision(&names))
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
            quota: t.rule.quota,
            verdict,
        })
        .collect()
}

/// Judges the request against every target and charges them all, or none.
///
/// The first attempt starts from what this worker remembers of each bucket (see
/// [`store::Remembering`]): uncontended, charging is then one write per bucket. A stale memory
/// shows as a refused write, and a refusal decided on memory is decided again on real reads;
/// neither uses up an attempt.
fn charge(targets: &[Target<'_>], now: u64, store: &dyn SharedStore) -> Outcome {
    let mut attempts = 0;
    let mut from_memory = true;
    while attempts < MAX_ATTEMPTS {
        let mut read: Vec<(Bucket, Cas)> = Vec::with_capacity(targets.len());
        let mut recalled = false;
        for t in targets {
            let remembered = if from_memory {
                store.remembered(&t.bucket)
            } else {
                None
            };
            recalled |= remembered.is_some();
            let current = match remembered {
                Some(memory) => Ok(Some(memory)),
                None => store.get(&t.bucket),
            };
            match current {
                Ok(Some((bytes, cas))) => read.push((Bucket::decode(Some(&bytes)), cas)),
                Ok(None) => read.push((Bucket::default(), INSERT_IF_ABSENT)),
                Err(e) => return Outcome::Unavailable(e),
            }
        }
        from_memory = false;
        if !recalled {
            attempts += 1;
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
            if recalled {
                continue;
            }
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

    fn config_metrics(&self) -> Vec<(MetricName, MetricKind)> {
        let mut defs = RuleMetric::defs(self.config.rules.iter().map(|r| r.name.as_str()));
        defs.extend(GlobalRuleMetric::defs(
            self.config.global_rules.iter().map(|r| r.name.as_str()),
        ));
        defs.extend(ServiceMetric::defs(
            self.config.services.iter().map(|s| s.name.as_str()),
        ));
        defs
    }

    fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        let config = config.compile()?;
        let failure_lines = config
            .services
            .iter()
            .map(|_| std::array::from_fn(|_| Throttle::new(FAILURE_LINE_INTERVAL)))
            .collect();
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
            failure_lines,
        })
    }

    fn on_request(
        &self,
        stream: &mut Stream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let targets = self.targets(request);
        let (calls, plans) = if self.config.global_rules.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            global::calls(&self.config, request)
        };
        if targets.is_empty() && calls.is_empty() {
            return Decision::pass();
        }
        let now = self.clock.now(env.now());
        let mut local_items = Vec::new();
        let mut charged = Vec::new();
        let mut shadow_over = Vec::new();
        if !targets.is_empty() {
            match self.judge_locally(&targets, request, now, env) {
                Local::Charged(items) => {
                    local_items = items;
                    charged = targets.iter().map(|t| (t.index, t.key)).collect();
                }
                Local::ShadowRefused(items, over) => {
                    local_items = items;
                    shadow_over = over;
                }
                Local::Uncounted => {}
                Local::Refused(reply) => return Decision::Respond(reply),
            }
        }
        if calls.is_empty() {
            stream.response_headers = reply::headers(self.config.dialect, &local_items);
            return Decision::Continue(shadow_edits(RequestEdits::default(), &shadow_over));
        }
        stream.calling = Some(Box::new(Calling {
            since: now,
            plans,
            charged,
            local_items,
            shadow_over,
        }));
        Decision::Call(calls)
    }

    fn on_call_response(
        &self,
        stream: &mut Stream,
        request: &dyn RequestView,
        results: Vec<GrpcResult>,
        env: &Env<'_>,
    ) -> Decision {
        let Some(calling) = stream.calling.take() else {
            return Decision::pass();
        };
        let now = self.clock.now(env.now());
        let elapsed = now.since(calling.since);
        let mut items = calling.local_items;
        let mut over: Vec<&str> = Vec::new();
        let mut over_without_item: Vec<&str> = Vec::new();
        let mut request_headers = Vec::new();
        let mut response_headers = Vec::new();
        let mut denied: Option<String> = None;
        // The service and failure that refused it, for the access log.
        let mut denied_by: Option<(&str, Failure)> = None;
        for (plan, result) in calling.plans.iter().zip(results) {
            let Some(service) = self.config.services.get(plan.service) else {
                continue;
            };
            let service_metric = |m: ServiceMetric| self.service_metric(m, plan.service);
            match global::answer(result, elapsed, service.timeout, plan.rules.len()) {
                Answer::Judged {
                    over: call_over,
                    statuses,
                    request_headers: to_request,
                    response_headers: to_response,
                } => {
                    let outcome = if call_over {
                        ServiceMetric::OverLimit
                    } else {
                        ServiceMetric::Ok
                    };
                    env.metrics.add(service_metric(outcome), 1);
                    request_headers.extend(to_request);
                    response_headers.extend(to_response);
                    for (at, rule_index) in plan.rules.iter().enumerate() {
                        let Some(rule) = self.config.global_rules.get(*rule_index) else {
                            continue;
                        };
                        let status = statuses.get(at);
                        // Without statuses, an over-limit answer refuses every rule it carried.
                        let rule_over = match status {
                            Some(status) => status.code == rls::CODE_OVER_LIMIT,
                            None => call_over,
                        };
                        match status.and_then(|s| reply::service_item(&rule.name, s)) {
                            Some(item) => items.push(item),
                            None if rule_over => over_without_item.push(&rule.name),
                            None => {}
                        }
                        let metric = if !rule_over {
                            GlobalRuleMetric::Allowed
                        } else if self.config.shadow {
                            GlobalRuleMetric::ShadowLimited
                        } else {
                            GlobalRuleMetric::Limited
                        };
                        env.metrics.add(self.global_metric(metric, *rule_index), 1);
                        if rule_over {
                            over.push(&rule.name);
                        }
                    }
                }
                Answer::Failed(failure, reason) => {
                    env.metrics
                        .add(service_metric(ServiceMetric::of(failure)), 1);
                    for rule_index in &plan.rules {
                        let metric = self.global_metric(GlobalRuleMetric::Failed, *rule_index);
                        env.metrics.add(metric, 1);
                    }
                    let mode = service.on_failure.mode(failure);
                    self.log_failure(plan.service, failure, &reason, mode, now);
                    if mode == FailureMode::Deny && denied.is_none() {
                        env.metrics
                            .add(service_metric(ServiceMetric::FailureDenied), 1);
                        denied = Some(format!(
                            "rate limit service {}: {}: {reason}",
                            service.name,
                            failure.name()
                        ));
                        denied_by = Some((&service.name, failure));
                    }
                }
            }
        }
        if !over.is_empty() {
            if self.config.shadow {
                self.log_shadow(request, over.join(", "), now);
            } else {
                self.give_back(&calling.charged, env);
                log::debug!(
                    "{}: refused {} {}: over {}",
                    Self::NAME,
                    request.method(),
                    request.path_only(),
                    over.join(", ")
                );
                let mut reply = reply::refused(
                    self.config.status,
                    self.config.dialect,
                    &items,
                    &over_without_item,
                );
                for (name, value) in response_headers {
                    reply = reply.header(name, value);
                }
                return Decision::Respond(reply);
            }
        }
        if let (Some(detail), Some((service, failure))) = (denied, denied_by) {
            self.give_back(&calling.charged, env);
            let reply = reply::service_failed(service, failure, &detail);
            logging::refused(Self::NAME, &reply);
            return Decision::Respond(reply);
        }
        stream.response_headers = reply::headers(self.config.dialect, &items);
        stream.response_headers.extend(response_headers);
        let edits = RequestEdits::from(HeaderEdits {
            remove: Vec::new(),
            set: request_headers,
        });
        // In shadow mode, every rule that would have refused: the local ones, then the global.
        let mut shadow_over = calling.shadow_over;
        if self.config.shadow {
            shadow_over.extend(over.iter().map(|name| (*name).to_owned()));
        }
        Decision::Continue(shadow_edits(edits, &shadow_over))
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
