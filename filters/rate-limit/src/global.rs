//! Global rules: the requests they count are judged by a rate limit service, over Envoy's
//! rate limit service protocol ([`rls`]).
//!
//! Every global rule that applies to a request contributes one descriptor. Rules sent to the
//! same service in the same domain share one call, so a request costs one call per
//! (service, domain), and the calls of one request run at the same time.
//!
//! Each call comes back as one [`Answer`]. A failure is classified by what Envoy reports:
//! - the call could not be started, or ended `UNAVAILABLE` before its timeout: no service
//!   answered ([`Failure::Unreachable`]: no such cluster, no healthy host, connection refused
//!   or reset);
//! - `DEADLINE_EXCEEDED`, Envoy's own timeout, or any failure once the timeout had (all but)
//!   passed: [`Failure::Timeout`]. Envoy reports its timeout as `UNAVAILABLE` too, with the
//!   message `upstream request timeout`, which is what tells the two apart. The time is a
//!   second witness, for a host that words it otherwise: it is not enough alone, because
//!   Envoy starts the timer at the time its event loop cached before running the filter, so
//!   on a busy worker the timer fires while the wall clock shows as little as 84 % of the timeout
//!   gone (measured under load);
//! - any other gRPC status: the service's own [`Failure::Error`];
//! - an `OK` whose message cannot be read, or that says neither `OK` nor `OVER_LIMIT`:
//!   [`Failure::InvalidAnswer`].

use crate::config::{Compiled, Failure, GlobalRule};
use crate::key;
use crate::rls;
use filter_core::decision::{GrpcCall, GrpcResult, Name};
use filter_core::request::RequestView;
use std::time::Duration;

/// One call of a request: which service, and which global rules (by index) it carries, in
/// descriptor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The service, by index.
    pub service: usize,
    /// The rules, by index into [`Compiled::global_rules`].
    pub rules: Vec<usize>,
}

/// The calls a request needs (none when no global rule applies), with their plans.
pub fn calls(config: &Compiled, request: &dyn RequestView) -> (Vec<GrpcCall>, Vec<Plan>) {
    let mut grouped: Vec<(Plan, rls::RateLimitRequest)> = Vec::new();
    for (index, rule) in config.global_rules.iter().enumerate() {
        if !rule.matcher.matches(request) {
            continue;
        }
        let Some(descriptor) = descriptor(rule, request, config.trusted_proxies) else {
            continue;
        };
        let same_call = grouped
            .iter_mut()
            .find(|(plan, message)| plan.service == rule.service && message.domain == rule.domain);
        match same_call {
            Some((plan, message)) => {
                plan.rules.push(index);
                message.descriptors.push(descriptor);
            }
            None => grouped.push((
                Plan {
                    service: rule.service,
                    rules: vec![index],
                },
                rls::RateLimitRequest {
                    domain: rule.domain.clone(),
                    descriptors: vec![descriptor],
                    hits_addend: 0,
                },
            )),
        }
    }
    let mut calls = Vec::with_capacity(grouped.len());
    let mut plans = Vec::with_capacity(grouped.len());
    for (plan, mut message) in grouped {
        let Some(service) = config.services.get(plan.service) else {
            continue;
        };
        move_common_addend(&mut message);
        calls.push(GrpcCall {
            cluster: service.cluster.clone(),
            authority: service.authority.clone(),
            service: rls::SERVICE,
            method: rls::METHOD,
            message: message.encode(),
            timeout: service.timeout,
        });
        plans.push(plan);
    }
    (calls, plans)
}

/// A rule's descriptor for the request; `None` if an entry's value is missing.
fn descriptor(
    rule: &GlobalRule,
    request: &dyn RequestView,
    trusted_proxies: u32,
) -> Option<rls::RateLimitDescriptor> {
    let mut entries = Vec::with_capacity(rule.descriptor.len());
    for (name, part) in &rule.descriptor {
        entries.push(rls::Entry {
            key: name.clone(),
            value: key::value(&rule.name, part, request, trusted_proxies)?,
        });
    }
    Some(rls::RateLimitDescriptor {
        entries,
        hits_addend: Some(rls::UInt64Value {
            value: u64::from(rule.hits_addend),
        }),
    })
}

/// Says a hits addend once for the whole request when every descriptor has the same one (the
/// request-level field is the one every service knows; the per-descriptor one is newer), and
/// leaves the default of 1 unsaid, as Envoy's own filter does.
fn move_common_addend(message: &mut rls::RateLimitRequest) {
    let addends: Vec<u64> = message
        .descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().map_or(1, |a| a.value))
        .collect();
    let Some(first) = addends.first().copied() else {
        return;
    };
    if addends.iter().any(|a| *a != first) {
        return;
    }
    let Ok(common) = u32::try_from(first) else {
        return;
    };
    message.hits_addend = if common == 1 { 0 } else { common };
    for descriptor in &mut message.descriptors {
        descriptor.hits_addend = None;
    }
}

/// What came of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The service answered `OK` or `OVER_LIMIT`.
    Judged {
        /// Whether some descriptor is over its limit.
        over: bool,
        /// The descriptors' statuses, when the service sent one per descriptor.
        statuses: Vec<rls::DescriptorStatus>,
        /// Header fields for the request on its way upstream.
        request_headers: Vec<(Name, String)>,
        /// Header fields for the response.
        response_headers: Vec<(Name, String)>,
    },
    /// The call failed.
    Failed(Failure, String),
}

/// Reads what came of a call that waited `elapsed` of its `timeout`, carrying `descriptors`.
pub fn answer(
    result: GrpcResult,
    elapsed: Duration,
    timeout: Duration,
    descriptors: usize,
) -> Answer {
    let timed_out = elapsed.saturating_mul(10) >= timeout.saturating_mul(9);
    match result {
        GrpcResult::NotSent(why) => Answer::Failed(Failure::Unreachable, why),
        GrpcResult::Status(code, message) => {
            let failure = match code {
                _ if timed_out || is_envoys_timeout(&message) => Failure::Timeout,
                DEADLINE_EXCEEDED => Failure::Timeout,
                UNAVAILABLE => Failure::Unreachable,
                _ => Failure::Error,
            };
            let reason = match failure {
                Failure::Timeout => format!("no answer within {}ms", timeout.as_millis()),
                _ => format!("gRPC status {code} ({})", grpc_code_name(code)),
            };
            Answer::Failed(failure, reason)
        }
        GrpcResult::Message(bytes) => {
            let Some(response) = rls::RateLimitResponse::decode_from(&bytes) else {
                return Answer::Failed(
                    Failure::InvalidAnswer,
                    "the answer is not a RateLimitResponse".to_owned(),
                );
            };
            let over = match response.overall_code {
                rls::CODE_OK => false,
                rls::CODE_OVER_LIMIT => true,
                code => {
                    return Answer::Failed(
                        Failure::InvalidAnswer,
                        format!("the answer's overall_code is {code}, neither OK nor OVER_LIMIT"),
                    );
                }
            };
            let statuses = if response.statuses.len() == descriptors {
                response.statuses
            } else {
                Vec::new()
            };
            Answer::Judged {
                over,
                statuses,
                request_headers: fields(&response.request_headers_to_add),
                response_headers: fields(&response.response_headers_to_add),
            }
        }
    }
}

fn fields(values: &[rls::HeaderValue]) -> Vec<(Name, String)> {
    values
        .iter()
        .filter_map(rls::HeaderValue::field)
        .map(|(name, value)| (name.into(), value))
        .collect()
}

/// Whether a failed call's message is Envoy's own for a call that ran out of time (Envoy
/// 1.36 to 1.40 add the details in braces: `upstream request timeout{response_timeout}`).
fn is_envoys_timeout(message: &str) -> bool {
    message.starts_with("upstream request timeout")
}

const DEADLINE_EXCEEDED: u32 = 4;
const UNAVAILABLE: u32 = 14;

/// The name of a gRPC status code.
fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "not a gRPC status",
    }
}
