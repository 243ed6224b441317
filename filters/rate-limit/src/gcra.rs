//! GCRA (the generic cell rate algorithm): an exact token bucket kept as one timestamp.
//!
//! A limit of `requests` per `per` with a burst of `burst` lets `burst` requests through at
//! once, then one every `per / requests`. The state of a key is its theoretical arrival time
//! (TAT): the instant its bucket will be full again. A request at `now` conforms when
//! `now >= TAT - tolerance` (tolerance = `(burst - 1)` emission intervals); it then moves the
//! TAT one interval past `max(TAT, now)`. A refused request changes nothing.
//!
//! Exactness: `per / requests` is rarely a whole number of nanoseconds (3 per second is
//! 333,333,333.3 ns), and rounding it would drift in someone's favour. So time is counted in
//! units of `1 / requests` nanoseconds, where the interval is exactly `per` units; the TAT is
//! kept in those units (u128: nanoseconds since 1970 times a billion requests still fit).
//! Waits are rounded up to whole nanoseconds, then `Retry-After` up to whole seconds.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A validated limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per window (≥ 1); also the scale of [`Tat`] units.
    requests: u32,
    /// The window, in nanoseconds (≥ 1): the emission interval in `1/requests` ns units.
    per_ns: u64,
    /// How many requests may arrive at once (≥ 1).
    burst: u32,
}

/// Why a limit cannot be built (the config layer names the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// `requests` is 0.
    NoRequests,
    /// `per` is 0.
    NoWindow,
    /// `burst` is 0.
    NoBurst,
    /// `per / requests` is under a nanosecond.
    TooFast,
}

/// A key's state: its theoretical arrival time in units of `1/scale` nanoseconds since the
/// Unix epoch, with the scale it was written under (the limit may change on a config reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tat {
    /// Time in `1/scale` ns since the epoch.
    pub units: u128,
    /// The `requests` of the limit that wrote it.
    pub scale: u32,
}

/// What a limit says about one request: it conforms (and the key's state moves on), or it
/// may not pass until some time has gone by (and nothing changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request conforms.
    Conforms(Conforming),
    /// The request is refused.
    NotUntil(NotUntil),
}

/// A conforming request: what to store, and what the client may still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conforming {
    /// The key's state once the request is let through.
    pub next: Tat,
    /// Requests that would pass right after this one.
    pub remaining: u32,
    /// Until the bucket is full again, from now, rounded up to whole nanoseconds.
    pub reset: Duration,
}

/// A refused request: when the next one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUntil {
    /// Until the next request would pass, rounded up to whole nanoseconds.
    pub retry_after: Duration,
    /// Until the bucket is full again, from now, rounded up to whole nanoseconds.
    pub reset: Duration,
}

impl Verdict {
    /// The conforming verdict, if the request conforms.
    pub fn conforming(self) -> Option<Conforming> {
        match self {
            Verdict::Conforms(c) => Some(c),
            Verdict::NotUntil(_) => None,
        }
    }

    /// Whether the request conforms.
    pub fn conforms(&self) -> bool {
        matches!(self, Verdict::Conforms(_))
    }

    /// Requests that would pass right after this decision (0 when refused).
    pub fn remaining(&self) -> u32 {
        match self {
            Verdict::Conforms(c) => c.remaining,
            Verdict::NotUntil(_) => 0,
        }
    }

    /// Until the bucket is full again.
    pub fn reset(&self) -> Duration {
        match self {
            Verdict::Conforms(c) => c.reset,
            Verdict::NotUntil(n) => n.reset,
        }
    }

    /// For a refused request, until the next request would pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Verdict::Conforms(_) => None,
            Verdict::NotUntil(n) => Some(n.retry_after),
        }
    }
}

impl Limit {
    /// `requests` per `per`, `burst` at once.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Result<Self, LimitError> {
        if requests == 0 {
            return Err(LimitError::NoRequests);
        }
        if burst == 0 {
            return Err(LimitError::NoBurst);
        }
        let per_ns = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        if per_ns == 0 {
            return Err(LimitError::NoWindow);
        }
        if per_ns < u64::from(requests) {
            return Err(LimitError::TooFast);
        }
        Ok(Self {
            requests,
            per_ns,
            burst,
        })
    }

    /// Requests per window.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The window.
    pub fn per(&self) -> Duration {
        Duration::from_nanos(self.per_ns)
    }

    /// Requests at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// One emission interval, in units.
    fn interval(&self) -> u128 {
        u128::from(self.per_ns)
    }

    /// The tolerance `τ = interval · (burst − 1)`, in units.
    fn tolerance(&self) -> u128 {
        self.interval() * u128::from(self.burst - 1)
    }

    /// `now` (ns since the epoch) in units.
    fn units(&self, now_ns: u64) -> u128 {
        u128::from(now_ns) * u128::from(self.requests)
    }

    /// Units to a duration, rounded up to whole nanoseconds.
    fn duration(&self, units: u128) -> Duration {
        let nanos = units.div_ceil(u128::from(self.requests));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// A stored state in this limit's units (rounded up: a reload never shortens a wait).
    fn rescale(&self, tat: Tat) -> u128 {
        if tat.scale == self.requests || tat.scale == 0 {
            return tat.units;
        }
        (tat.units * u128::from(self.requests)).div_ceil(u128::from(tat.scale))
    }

    /// Whether `tat` is idle at `now`: the bucket is full, so forgetting the key loses nothing.
    pub fn is_idle(&self, tat: Tat, now_ns: u64) -> bool {
        self.rescale(tat) <= self.units(now_ns)
    }

    /// Decides one request at `now` (ns since the epoch) for a key whose state is `tat`
    /// (`None`: never seen, or forgotten while idle).
    pub fn decide(&self, tat: Option<Tat>, now_ns: u64) -> Verdict {
        let now = self.units(now_ns);
        let tat = tat.map_or(now, |t| self.rescale(t)).max(now);
        let tolerance = self.tolerance();
        let interval = self.interval();
        // Conforms when now >= tat - tolerance (written without subtraction).
        if now + tolerance < tat {
            return Verdict::NotUntil(NotUntil {
                retry_after: self.duration(tat - tolerance - now),
                reset: self.duration(tat - now),
            });
        }
        let next = tat + interval;
        // Cells free after this one: floor((now + τ + T − next) / T), never negative here.
        let remaining = (now + tolerance + interval - next) / interval;
        Verdict::Conforms(Conforming {
            next: Tat {
                units: next,
                scale: self.requests,
            },
            remaining: u32::try_from(remaining.min(u128::from(self.burst))).unwrap_or(0),
            reset: self.duration(next - now),
        })
    }

    /// The state after taking back one request admitted under `tat` (its commit was undone
    /// because another limit on the same request could not be charged).
    pub fn refund(&self, tat: Tat) -> Tat {
        Tat {
            units: self.rescale(tat).saturating_sub(self.interval()),
            scale: self.requests,
        }
    }
}

/// Whole seconds for `Retry-After` and the `t` of `RateLimit`: rounded up, at least 1 (a client
/// told 0 would come back at once and be refused again).
pub fn whole_seconds_at_least_one(d: Duration) -> u64 {
    let secs = d.as_nanos().div_ceil(NANOS_PER_SEC);
    u64::try_from(secs).unwrap_or(u64::MAX).max(1)
}

/// Whole seconds, rounded up (0 stays 0).
pub fn whole_seconds(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(NANOS_PER_SEC)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * SEC;

    fn limit(requests: u32, per: Duration, burst: u32) -> Limit {
        Limit::new(requests, per, burst).unwrap()
    }

    /// Runs `decide` and stores the result, as the filter does.
    fn hit(l: &Limit, state: &mut Option<Tat>, now: u64) -> Verdict {
        let v = l.decide(*state, now);
        if let Verdict::Conforms(c) = v {
            *state = Some(c.next);
        }
        v
    }

    #[test]
    fn five_at_once_then_one_per_second() {
        // redis-cell's table: burst 5 at 1/s.
        let l = limit(1, Duration::from_secs(1), 5);
        let mut s = None;
        for expected in [4, 3, 2, 1, 0] {
            let v = hit(&l, &mut s, T0);
            assert!(v.conforms());
            assert_eq!(v.remaining(), expected);
        }
        let sixth = hit(&l, &mut s, T0);
        assert_eq!(
            sixth,
            Verdict::NotUntil(NotUntil {
                retry_after: Duration::from_secs(1),
                reset: Duration::from_secs(5),
            })
        );
        assert_eq!(sixth.remaining(), 0);
        let at3 = hit(&l, &mut s, T0 + 3 * SEC);
        assert!(at3.conforms());
        assert_eq!(at3.remaining(), 2);
    }

    #[test]
    fn the_issue_example_five_per_minute() {
        // {requests: 5, per: "1m"}: 5 at once, then one every 12 s.
        let l = limit(5, Duration::from_secs(60), 5);
        let mut s = None;
        for _ in 0..5 {
            assert!(hit(&l, &mut s, T0).conforms());
        }
        let refused = hit(&l, &mut s, T0);
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(12)));
        assert!(!hit(&l, &mut s, T0 + 12 * SEC - 1).conforms());
        assert!(hit(&l, &mut s, T0 + 12 * SEC).conforms());
        assert!(!hit(&l, &mut s, T0 + 12 * SEC).conforms());
    }

    #[test]
    fn a_third_of_a_second_is_not_rounded() {
        // 3 per second: after three at once, the fourth is due at exactly 1/3 s. Rounding the
        // interval down to 333,333,333 ns would let it in a nanosecond early.
        let l = limit(3, Duration::from_secs(1), 3);
        let mut s = None;
        for _ in 0..3 {
            assert!(hit(&l, &mut s, T0).conforms());
        }
        let early = hit(&l, &mut s, T0 + 333_333_333);
        assert!(!early.conforms());
        // A third of a nanosecond to go, reported rounded up.
        assert_eq!(early.retry_after(), Some(Duration::from_nanos(1)));
        assert!(hit(&l, &mut s, T0 + 333_333_334).conforms());
        // Three seconds later the bucket is full again, to the nanosecond.
        let mut s = None;
        for _ in 0..3 {
            assert!(hit(&l, &mut s, T0).conforms());
        }
        assert_eq!(l.decide(s, T0).reset(), Duration::from_secs(1));
    }

    #[test]
    fn a_clock_that_steps_back_means_debt_not_a_negative_wait() {
        let l = limit(1, Duration::from_secs(1), 1);
        let mut s = None;
        assert!(hit(&l, &mut s, T0).conforms());
        let back = hit(&l, &mut s, T0 - 5 * SEC);
        assert!(!back.conforms());
        assert_eq!(back.retry_after(), Some(Duration::from_secs(6)));
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            Limit::new(0, Duration::from_secs(1), 1),
            Err(LimitError::NoRequests)
        );
        assert_eq!(Limit::new(1, Duration::ZERO, 1), Err(LimitError::NoWindow));
        assert_eq!(
            Limit::new(1, Duration::from_secs(1), 0),
            Err(LimitError::NoBurst)
        );
        assert_eq!(
            Limit::new(10, Duration::from_nanos(9), 1),
            Err(LimitError::TooFast)
        );
        assert!(Limit::new(u32::MAX, Duration::from_secs(u64::MAX), u32::MAX).is_ok());
    }

    #[test]
    fn a_reload_with_another_rate_keeps_the_debt() {
        let old = limit(1, Duration::from_secs(10), 1);
        let mut s = None;
        assert!(hit(&old, &mut s, T0).conforms());
        // Now 10 per 100 s: the same interval, written in other units.
        let new = limit(10, Duration::from_secs(100), 1);
        let v = hit(&new, &mut s, T0 + SEC);
        assert!(!v.conforms());
        assert_eq!(v.retry_after(), Some(Duration::from_secs(9)));
    }

    #[test]
    fn refund_undoes_an_admission() {
        let l = limit(2, Duration::from_secs(1), 2);
        let before = l.decide(None, T0).conforming().map(|c| c.next);
        let after = l.decide(before, T0).conforming().unwrap().next;
        assert_eq!(Some(l.refund(after)), before);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_nanos(1)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }

    proptest! {
        /// Never more than `burst` at once, and in any span at most burst + span/interval.
        #[test]
        fn never_more_than_the_bucket_holds(
            requests in 1u32..20,
            per_ms in 1u64..5_000,
            burst in 1u32..10,
            gaps in proptest::collection::vec(0u64..400_000_000, 1..200),
        ) {
            let l = limit(requests, Duration::from_millis(per_ms), burst);
            let mut s = None;
            let mut now = T0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                let v = hit(&l, &mut s, now);
                if let Verdict::NotUntil(refused) = v {
                    // Retry-After is exactly when the next request passes: not a ns before.
                    let wait = u64::try_from(refused.retry_after.as_nanos()).unwrap();
                    prop_assert!(wait > 0);
                    prop_assert!(!l.decide(s, now + wait - 1).conforms());
                    prop_assert!(l.decide(s, now + wait).conforms());
                } else {
                    admitted.push(now);
                }
                prop_assert!(v.remaining() <= burst);
            }
            // In any window [a, b], admitted ≤ burst + (b − a) · requests / per.
            for (i, &a) in admitted.iter().enumerate() {
                for (j, &b) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u128;
                    let span = u128::from(b - a);
                    let bound = u128::from(burst) + span * u128::from(requests) / u128::from(per_ms * 1_000_000);
                    prop_assert!(count <= bound, "{count} in {span} ns");
                }
            }
        }

        /// A client that waits one interval (rounded up to a whole ns) between requests is
        /// never refused, however long it keeps going.
        #[test]
        fn a_client_at_the_rate_is_never_refused(requests in 1u32..1000, per_ms in 1u64..10_000, n in 1usize..300) {
            let l = limit(requests, Duration::from_millis(per_ms), 1);
            let gap = u64::try_from((u128::from(per_ms) * 1_000_000).div_ceil(u128::from(requests))).unwrap();
            let mut s = None;
            for i in 0..n {
                prop_assert!(hit(&l, &mut s, T0 + gap * i as u64).conforms(), "request {i}");
            }
        }
    }
}
