//! The one table from a rate-limit decision to HTTP.
//!
//! | Decision | Status | Header fields |
//! |---|---|---|
//! | allowed (or shadow-refused) | the upstream's | `RateLimit-Policy` and `RateLimit` (draft 11), or `X-RateLimit-*` (legacy), or none |
//! | refused (by a local rule, or a global rule's service) | `status` (429) | the same, plus `Retry-After` (whole seconds, rounded up, at least 1) and `Cache-Control: no-store`; body `application/problem+json` of type `quota-exceeded` naming the violated rules |
//! | store contended, `on_contention: deny` | 503 | `Retry-After: 1`, `Cache-Control: no-store`; problem type `temporary-reduced-capacity` |
//! | a rate limit service call failed, its `on_failure` says `deny` | 503 | `Retry-After: 1`, `Cache-Control: no-store`; problem type `temporary-reduced-capacity`, the failure in `detail` |
//!
//! A global rule's items come from the service's status for its descriptor ([`service_item`]):
//! `q` is the limit's requests per unit, `w` the unit, `r` what remains, `t` the time until
//! the window resets; a refused rule's `Retry-After` is that reset. A rule the service said
//! nothing about has no item, and a refusal by it alone promises no `Retry-After`.
//!
//! gRPC callers get `RESOURCE_EXHAUSTED` for a 429 and `UNAVAILABLE` for a 503 (the shared
//! local-reply mapping).
//!
//! Filter state `rate_limit.decision`, for the access log: `limited:<rules>` on a refusal by
//! rules (local or global, the violated ones, comma-separated), `shadow_limited:<rules>` on a
//! request shadow mode let through instead, `contended` when the store refused and
//! `on_contention` is `deny`, `service_failed:<service>:<failure>` when a rate limit service
//! call failed and its `on_failure` says `deny`. A request let through sets nothing.
//!
//! Draft 11 fields, one item per rule that counted the request:
//! - `RateLimit-Policy: "per-user";q=100;w=60`: `q` requests per `w` seconds. A window that is
//!   not a whole number of seconds is rounded up, and `q` scaled to match, rounded down
//!   (`10` per `500ms` reads `q=20;w=1`).
//! - `RateLimit: "per-user";r=19;t=3`: `r` requests may still arrive at once; `t` is when the
//!   bucket is full again, in seconds rounded up, except on a refused rule, where it is the
//!   `Retry-After` (the draft wants `t` no later than `Retry-After`).
//!
//! Legacy fields describe the rule closest to refusing (fewest remaining): `X-RateLimit-Limit`
//! (its burst), `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until full, as Envoy's
//! `local_ratelimit` sends them, delta not epoch).

use crate::config::{Dialect, Failure};
use crate::gcra::{Limit, Verdict, whole_seconds, whole_seconds_at_least_one};
use crate::rls;
use filter_core::decision::{LocalResponse, Name};

/// The filter state holding the decision, read as `wasm.rate_limit.decision`.
pub const DECISION: &str = "rate_limit.decision";

/// `rate_limit.decision` for a request shadow mode lets through although `rules` refuse it.
pub fn shadow_decision(rules: &[&str]) -> String {
    format!("shadow_limited:{}", rules.join(","))
}

/// One rule's verdict on a request, for the header fields.
#[derive(Debug, Clone, Copy)]
pub struct RuleStatus<'a> {
    /// The rule's name.
    pub name: &'a str,
    /// Its limit.
    pub limit: &'a Limit,
    /// Its `RateLimit-Policy` item's numbers.
    pub quota: Quota,
    /// What it said.
    pub verdict: Verdict,
}

impl RuleStatus<'_> {
    /// The `t` of `RateLimit`.
    fn t(&self) -> u64 {
        match self.verdict {
            Verdict::NotUntil(refused) => whole_seconds_at_least_one(refused.retry_after),
            Verdict::Conforms(conforming) => whole_seconds(conforming.reset),
        }
    }

    /// What the header fields say of it.
    pub fn item(&self) -> Item {
        let Quota { q, w } = self.quota;
        Item {
            name: self.name.to_owned(),
            q,
            w,
            r: u64::from(self.verdict.remaining()),
            t: self.t(),
            limit: u64::from(self.limit.burst()),
            retry_after: self.verdict.retry_after().map(whole_seconds_at_least_one),
        }
    }
}

/// What the header fields say of one rule: a local rule's verdict, or what a rate limit
/// service reported for a global rule's descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The rule's name.
    pub name: String,
    /// Requests per `w` seconds (at most `u64::MAX`, which no limit comes near).
    pub q: u64,
    /// The window, in whole seconds.
    pub w: u64,
    /// Requests that may still pass.
    pub r: u64,
    /// Seconds until the rule's window resets (or, when refused, until it lets one through).
    pub t: u64,
    /// `X-RateLimit-Limit` in the legacy fields.
    pub limit: u64,
    /// When refused: whole seconds until a request may pass, at least 1.
    pub retry_after: Option<u64>,
}

/// What a service's status for a global rule's descriptor says, if it says enough (a limit
/// with a fixed unit). A month or a year has no fixed length, so such a limit gets no
/// fields.
pub fn service_item(rule: &str, status: &rls::DescriptorStatus) -> Option<Item> {
    let limit = status.current_limit.as_ref()?;
    let w = rls::unit_seconds(limit.unit)?;
    let reset = status
        .duration_until_reset
        .as_ref()
        .and_then(rls::Duration::to_std)
        .map_or(0, whole_seconds);
    let over = status.code == rls::CODE_OVER_LIMIT;
    let retry_after = over.then(|| reset.max(1));
    Some(Item {
        name: rule.to_owned(),
        q: u64::from(limit.requests_per_unit),
        w,
        r: if over {
            0
        } else {
            u64::from(status.limit_remaining)
        },
        t: retry_after.unwrap_or(reset),
        limit: u64::from(limit.requests_per_unit),
        retry_after,
    })
}

/// `q` and `w` of a rule's `RateLimit-Policy` item: fixed by its limit, so computed once, with
/// the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per `w` seconds.
    pub q: u64,
    /// The window, in whole seconds (at least 1).
    pub w: u64,
}

impl Quota {
    /// The quota `limit` announces.
    pub fn of(limit: &Limit) -> Self {
        let w = whole_seconds_at_least_one(limit.per());
        let q =
            u128::from(limit.requests()) * u128::from(w) * 1_000_000_000 / limit.per().as_nanos();
        Self {
            q: u64::try_from(q).unwrap_or(u64::MAX),
            w,
        }
    }
}

/// The header fields describing `items`, for any response.
pub fn headers(dialect: Dialect, items: &[Item]) -> Vec<(Name, String)> {
    if items.is_empty() {
        return Vec::new();
    }
    match dialect {
        Dialect::None => Vec::new(),
        Dialect::Draft => {
            // Every allowed request gets these: written by hand rather than through
            // `format!`, which costs several times more.
            let mut digits = itoa::Buffer::new();
            let mut policy = String::with_capacity(40 * items.len());
            let mut state = String::with_capacity(40 * items.len());
            for (n, i) in items.iter().enumerate() {
                if n > 0 {
                    policy.push_str(", ");
                    state.push_str(", ");
                }
                for (field, (a, b)) in [
                    (&mut policy, (("q", i.q), ("w", i.w))),
                    (&mut state, (("r", i.r), ("t", i.t))),
                ] {
                    field.push('"');
                    field.push_str(&i.name);
                    field.push('"');
                    for (name, value) in [a, b] {
                        field.push(';');
                        field.push_str(name);
                        field.push('=');
                        field.push_str(digits.format(value));
                    }
                }
            }
            vec![
                ("ratelimit-policy".into(), policy),
                ("ratelimit".into(), state),
            ]
        }
        Dialect::Legacy => {
            let closest = items.iter().min_by_key(|i| (i.r, std::cmp::Reverse(i.t)));
            let mut digits = itoa::Buffer::new();
            let mut number = |n: u64| digits.format(n).to_owned();
            match closest {
                Some(i) => vec![
                    ("x-ratelimit-limit".into(), number(i.limit)),
                    ("x-ratelimit-remaining".into(), number(i.r)),
                    ("x-ratelimit-reset".into(), number(i.t)),
                ],
                None => Vec::new(),
            }
        }
    }
}

/// The refusal of a request: `items` describe the rules that counted it (the refusing ones
/// carry a `retry_after`); `also_over` names refusing rules no item describes (a service that
/// sent no status for them).
pub fn refused(status: u16, dialect: Dialect, items: &[Item], also_over: &[&str]) -> LocalResponse {
    let violated: Vec<&str> = items
        .iter()
        .filter(|i| i.retry_after.is_some())
        .map(|i| i.name.as_str())
        .chain(also_over.iter().copied())
        .collect();
    // The request passes only once every refusing rule would let it through; with nothing
    // known of when that is, no Retry-After is promised.
    let retry_after = items.iter().filter_map(|i| i.retry_after).max();
    let names: Vec<String> = violated.iter().map(|n| format!("\"{n}\"")).collect();
    let mut reply = LocalResponse::new(status);
    if let Some(seconds) = retry_after {
        reply = reply.header("retry-after", seconds.to_string());
    }
    reply = reply.header("content-type", "application/problem+json");
    for (name, value) in headers(dialect, items) {
        reply = reply.header(name, value);
    }
    reply
        .body(format!(
            "{{\"type\":\"https://iana.org/assignments/http-problem-types#quota-exceeded\",\
             \"title\":\"rate limit exceeded\",\"status\":{status},\"violated-policies\":[{}]}}",
            names.join(",")
        ))
        .detail(format!("over the limit of {}", names.join(", ")))
        .filter_state(DECISION, format!("limited:{}", violated.join(",")))
}

/// The refusal when the shared store stayed contended (and `on_contention` is `deny`).
pub fn contended() -> LocalResponse {
    LocalResponse::new(503)
        .header("retry-after", "1")
        .header("content-type", "application/problem+json")
        .body(
            "{\"type\":\"https://iana.org/assignments/http-problem-types#temporary-reduced-capacity\",\
             \"title\":\"rate limiter busy\",\"status\":503}",
        )
        .detail("shared data contended")
        .filter_state(DECISION, "contended")
}

/// The refusal when a call to the rate limit service `service` failed (`failure`) and its
/// `on_failure` says `deny`; `detail` says which service and how (it names no client data).
pub fn service_failed(service: &str, failure: Failure, detail: &str) -> LocalResponse {
    let detail_json = serde_json::Value::from(detail).to_string();
    LocalResponse::new(503)
        .header("retry-after", "1")
        .header("content-type", "application/problem+json")
        .body(format!(
            "{{\"type\":\"https://iana.org/assignments/http-problem-types#temporary-reduced-capacity\",\
             \"title\":\"rate limit service unavailable\",\"status\":503,\"detail\":{detail_json}}}"
        ))
        .detail(detail.to_owned())
        .filter_state(
            DECISION,
            format!("service_failed:{service}:{}", failure.name()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn status(name: &str, limit: &Limit, verdict: Verdict) -> Item {
        RuleStatus {
            name,
            limit,
            quota: Quota::of(limit),
            verdict,
        }
        .item()
    }

    #[test]
    fn draft_fields_on_an_allowed_request() {
        let per_user = Limit::new(100, Duration::from_secs(60), 20).unwrap();
        let per_ip = Limit::new(10, Duration::from_millis(500), 10).unwrap();
        let a = per_user.decide(None, NOW);
        let b = per_ip.decide(None, NOW);
        let h = headers(
            Dialect::Draft,
            &[
                status("per-user", &per_user, a),
                status("per-ip", &per_ip, b),
            ],
        );
        assert_eq!(
            h,
            [
                (
                    "ratelimit-policy".into(),
                    "\"per-user\";q=100;w=60, \"per-ip\";q=20;w=1".to_owned()
                ),
                (
                    "ratelimit".into(),
                    "\"per-user\";r=19;t=1, \"per-ip\";r=9;t=1".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_refusal_carries_retry_after_and_t_not_later() {
        let l = Limit::new(1, Duration::from_secs(10), 2).unwrap();
        let first = l.decide(None, NOW).conforming().map(|c| c.next);
        let second = l.decide(first, NOW).conforming().map(|c| c.next);
        let refused_verdict = l.decide(second, NOW);
        let statuses = [status("r", &l, refused_verdict)];
        let reply = refused(429, Dialect::Draft, &statuses, &[]);
        assert_eq!(reply.status, 429);
        let header = |n: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(header("retry-after").as_deref(), Some("10"));
        assert_eq!(header("ratelimit").as_deref(), Some("\"r\";r=0;t=10"));
        assert!(reply.body.contains("\"violated-policies\":[\"r\"]"));
        assert!(reply.body.contains("quota-exceeded"));
        assert_eq!(reply.effective_grpc_status(), 8);
        assert_eq!(reply.filter_state_value(DECISION), Some("limited:r"));
    }

    #[test]
    fn legacy_fields_describe_the_closest_rule() {
        let wide = Limit::new(100, Duration::from_secs(60), 100).unwrap();
        let tight = Limit::new(2, Duration::from_secs(1), 2).unwrap();
        let h = headers(
            Dialect::Legacy,
            &[
                status("wide", &wide, wide.decide(None, NOW)),
                status("tight", &tight, tight.decide(None, NOW)),
            ],
        );
        assert_eq!(
            h,
            [
                ("x-ratelimit-limit".into(), "2".to_owned()),
                ("x-ratelimit-remaining".into(), "1".to_owned()),
                ("x-ratelimit-reset".into(), "1".to_owned()),
            ]
        );
        assert!(
            headers(
                Dialect::None,
                &[status("t", &tight, tight.decide(None, NOW))]
            )
            .is_empty()
        );
    }

    #[test]
    fn contention_is_a_503_to_retry_soon() {
        let r = contended();
        assert_eq!(r.status, 503);
        assert!(
            r.headers
                .contains(&("retry-after".to_owned(), "1".to_owned()))
        );
        assert_eq!(r.effective_grpc_status(), 14);
        assert_eq!(r.filter_state_value(DECISION), Some("contended"));
    }

    #[test]
    fn each_refusal_records_its_decision_by_rule_and_service_name() {
        let l = Limit::new(1, Duration::from_secs(10), 1).unwrap();
        let first = l.decide(None, NOW).conforming().map(|c| c.next);
        let items = [
            status("per-user", &l, l.decide(first, NOW)),
            status("per-ip", &l, l.decide(None, NOW)),
        ];
        // A global rule the service refused without a status names itself.
        let reply = refused(429, Dialect::None, &items, &["fleet"]);
        assert_eq!(
            reply.filter_state_value(DECISION),
            Some("limited:per-user,fleet")
        );
        let failed = service_failed(
            "limits",
            Failure::Timeout,
            "rate limit service limits: timeout",
        );
        assert_eq!(
            failed.filter_state_value(DECISION),
            Some("service_failed:limits:timeout")
        );
        assert_eq!(shadow_decision(&["a", "b"]), "shadow_limited:a,b");
    }
}
