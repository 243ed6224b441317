//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over a Limitador rate
//! limiter. The semantics are described in the crate documentation.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How many counters keyed by variables (one per user, say) the in-memory storage keeps;
/// beyond it, the least used are dropped (and start again from zero). Ample for tests and
/// the demo.
pub(crate) const MEMORY_COUNTERS: u64 = 100_000;

/// Limitador's two kinds of rate limiter: counters in this process, or in Redis.
pub(crate) enum Limiter {
    /// Counters in memory: exact, not shared with another process.
    Memory(RateLimiter),
    /// Counters in Redis (`AsyncRedisStorage`, every call goes to Redis): shared by every
    /// server on the same Redis.
    Redis(AsyncRateLimiter),
}

impl Limiter {
    /// Loads the limits into the limiter.
    pub(crate) async fn configure(&self, limits: Vec<Limit>) -> Result<(), LimitadorError> {
        match self {
            Limiter::Memory(limiter) => limiter.configure_with(limits),
            Limiter::Redis(limiter) => limiter.configure_with(limits).await,
        }
    }

    async fn check_and_update(
        &self,
        namespace: &Namespace,
        ctx: &Context<'_>,
        hits: u64,
    ) -> Result<CheckResult, LimitadorError> {
        match self {
            Limiter::Memory(limiter) => limiter.check_rate_limited_and_update(namespace, ctx, hits),
            Limiter::Redis(limiter) => {
                limiter
                    .check_rate_limited_and_update(namespace, ctx, hits)
                    .await
            }
        }
    }
}

/// Every limit's conditions, by namespace, to evaluate before Limitador does: Limitador
/// unwraps a condition's result (`Limit::applies`), so a condition that yields no boolean
/// (`descriptors[0].user` alone, say) would abort the server instead of failing one call.
#[derive(Default)]
pub(crate) struct Conditions(HashMap<Namespace, Vec<(String, Predicate)>>);

impl Conditions {
    pub(crate) fn of(limits: &[Limit]) -> Self {
        let mut conditions = Conditions::default();
        for limit in limits {
            for source in limit.conditions() {
                // A condition about the limit itself (`limit.name == ...`) needs the binding
                // Limitador adds per limit, which it does not export: left to Limitador.
                let about_limit = Expression::parse(&source)
                    .is_ok_and(|e| e.variables().iter().any(|v| v == "limit"));
                if about_limit {
                    continue;
                }
                // Limitador parsed it already, so this cannot fail.
                if let Ok(predicate) = Predicate::parse(&source) {
                    conditions
                        .0
                        .entry(limit.namespace().clone())
                        .or_default()
                        .push((source, predicate));
                }
            }
        }
        conditions
    }

    fn check(&self, namespace: &Namespace, ctx: &Context<'_>) -> Result<(), Status> {
        for (source, predicate) in self.0.get(namespace).into_iter().flatten() {
            if let Err(e) = predicate.test(ctx) {
                return Err(Status::internal(format!(
                    "the condition `{source}` cannot be evaluated for this descriptor: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// The gRPC service.
pub(crate) struct Service {
    pub(crate) limiter: Limiter,
    pub(crate) conditions: Conditions,
    /// Every answer waits this long first (for tests of a slow service).
    pub(crate) delay: Duration,
    /// One line per request on stderr.
    pub(crate) verbose: bool,
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let request = request.into_inner();
        let answer = self.answer(&request).await;
        if self.verbose {
            log(&request, &answer);
        }
        answer.map(Response::new)
    }
}

impl Service {
    async fn answer(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        // Checked before any counter moves, so that a refused request charges nothing.
        if request.descriptors.iter().any(|d| d.is_negative_hits) {
            return Err(Status::invalid_argument(
                "is_negative_hits is not supported: Limitador cannot give hits back",
            ));
        }
        let namespace = Namespace::from(request.domain.as_str());
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let ctx = context(descriptor);
            let hits = hits(descriptor, request.hits_addend);
            self.conditions.check(&namespace, &ctx)?;
            let result = self
                .limiter
                .check_and_update(&namespace, &ctx, hits)
                .await
                .map_err(|e| match e {
                    LimitadorError::StorageError(_) => {
                        Status::unavailable(format!("counter storage: {e}"))
                    }
                    LimitadorError::InterpreterError(_) => {
                        Status::internal(format!("evaluating a limit: {e}"))
                    }
                })?;
            statuses.push(status(&result));
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..RateLimitResponse::default()
        })
    }
}

/// What Limitador sees for one descriptor: that descriptor alone, as `descriptors[0]`, its
/// entries as a map from key to value (a key given twice keeps its last value).
fn context(descriptor: &RateLimitDescriptor) -> Context<'static> {
    let entries: HashMap<String, String> = descriptor
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let mut ctx = Context::default();
    ctx.list_binding("descriptors".to_owned(), vec![entries]);
    ctx
}

/// The descriptor's `hits_addend` when set, else the request's; 0 counts as 1, as Envoy
/// reads the request's field (a proto3 number cannot be told apart from unset).
fn hits(descriptor: &RateLimitDescriptor, request_hits: u32) -> u64 {
    let hits = descriptor
        .hits_addend
        .map_or(u64::from(request_hits), |h| h.value);
    hits.max(1)
}

/// The descriptor's status from Limitador's verdict and the counter closest to its limit:
/// the fewest remaining, and of those the longest until reset (the wait that matters).
fn status(result: &CheckResult) -> DescriptorStatus {
    let code = if result.limited {
        Code::OverLimit
    } else {
        Code::Ok
    } as i32;
    let closest = result.counters.iter().min_by(|a, b| {
        remaining(a)
            .cmp(&remaining(b))
            .then_with(|| b.expires_in().cmp(&a.expires_in()))
    });
    let Some(counter) = closest else {
        // No limit applies to this descriptor.
        return DescriptorStatus {
            code,
            ..DescriptorStatus::default()
        };
    };
    let (requests_per_unit, unit) = per_unit(counter.max_value(), counter.window());
    DescriptorStatus {
        code,
        current_limit: Some(RateLimit {
            name: counter.limit().name().unwrap_or_default().to_owned(),
            requests_per_unit,
            unit: unit as i32,
        }),
        limit_remaining: u32::try_from(remaining(counter)).unwrap_or(u32::MAX),
        duration_until_reset: counter.expires_in().map(proto_duration),
        ..DescriptorStatus::default()
    }
}

/// Limitador fills `remaining` on every counter it checks; a counter without one has not
/// been counted against yet.
fn remaining(counter: &Counter) -> u64 {
    counter.remaining().unwrap_or(counter.max_value())
}

/// The limit as Envoy's `requests_per_unit` and `unit`. A window of exactly a second, minute,
/// hour or day is that unit; any other window is `UNKNOWN` with `max_value` as the count,
/// since rescaling (10 per 10 s as 1 per second) would state a different limit, and a
/// reader of `UNKNOWN` knows not to assume a window (`duration_until_reset` still says when
/// the counter resets).
fn per_unit(max_value: u64, window: Duration) -> (u32, Unit) {
    let unit = match window.as_secs() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    };
    (u32::try_from(max_value).unwrap_or(u32::MAX), unit)
}

fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9, so it always fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// One line per request: domain, each descriptor with its hits and verdict.
fn log(request: &RateLimitRequest, answer: &Result<RateLimitResponse, Status>) {
    let descriptors: Vec<String> = request
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let entries: Vec<String> = d
                .entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect();
            let verdict = match answer {
                Ok(response) => response.statuses.get(i).map_or("?".to_owned(), |s| {
                    format!(
                        "{} remaining={}",
                        Code::try_from(s.code).map_or("?", |c| c.as_str_name()),
                        s.limit_remaining
                    )
                }),
                Err(_) => "-".to_owned(),
            };
            format!(
                "[{}] hits={} {verdict}",
                entries.join(","),
                hits(d, request.hits_addend)
            )
        })
        .collect();
    let outcome = match answer {
        Ok(response) => Code::try_from(response.overall_code)
            .map_or("?", |c| c.as_str_name())
            .to_owned(),
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    };
    eprintln!(
        "rls-server: domain={} {} -> {outcome}",
        request.domain,
        descriptors.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;

    fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..RateLimitDescriptor::default()
        }
    }

    #[test]
    fn hits_follow_envoys_rule() {
        assert_eq!(hits(&descriptor(&[], None), 0), 1);
        assert_eq!(hits(&descriptor(&[], None), 4), 4);
        assert_eq!(hits(&descriptor(&[], Some(7)), 4), 7);
        assert_eq!(hits(&descriptor(&[], Some(0)), 4), 1);
    }

    #[test]
    fn units_are_exact_or_unknown() {
        assert_eq!(per_unit(3, Duration::from_secs(1)), (3, Unit::Second));
        assert_eq!(per_unit(3, Duration::from_secs(60)), (3, Unit::Minute));
        assert_eq!(per_unit(3, Duration::from_secs(3600)), (3, Unit::Hour));
        assert_eq!(per_unit(3, Duration::from_secs(86400)), (3, Unit::Day));
        assert_eq!(per_unit(3, Duration::from_secs(10)), (3, Unit::Unknown));
        assert_eq!(
            per_unit(u64::MAX, Duration::from_secs(1)),
            (u32::MAX, Unit::Second)
        );
    }
}
