//! The breaker's state machine, on a record that all workers share.
//!
//! ```text
//!            failure or slow rate ≥ threshold,          now ≥ open_until
//!            with ≥ minimum_calls in the window         (the next request)
//!  CLOSED ──────────────────────────────────────▶ OPEN ─────────────────────▶ HALF_OPEN
//!    ▲                                              ▲                            │
//!    │           every probe finished and both      │  probes' failure or slow   │
//!    └──────────── rates under their thresholds ────┼──── rate ≥ threshold, or ──┘
//!                                                   └──── half_open_timeout ran out
//! ```
//!
//! Boundaries: a rate equal to its threshold trips (≥); a call is slow when it took longer than
//! `slow_call_duration` (>, so exactly the duration is not slow); open ends at `open_until`
//! (≥). Half-open hands out `half_open_calls` permits; a probe that has not finished when
//! `half_open_timeout` runs out counts as failed. Each change of state bumps the generation,
//! and an outcome admitted under an older generation is discarded.
//!
//! How long open lasts grows with each trip that follows a failed recovery ([`OpenInterval`]:
//! `initial × multiplier^(trips − 1)`, capped at `max`, jittered): the record counts the trips
//! (`open_attempt`), and a close that holds for a whole window (the window's length, or a count
//! window's `max_age`) starts the count again. The interval lives in the shared record, so every
//! worker refuses until the same instant.

use crate::window::{Counts, Shape, Window};
use std::time::Duration;

/// What the breaker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow; outcomes fill the window.
    Closed,
    /// Calls are refused until `until` (ns).
    Open {
        /// When the next request may probe.
        until: u64,
    },
    /// Up to `permits` probes go through; their outcomes decide.
    HalfOpen {
        /// When half-open began (ns).
        since: u64,
        /// Probes still to hand out.
        permits: u32,
        /// Outcomes of the probes so far.
        probes: Counts,
    },
}

impl State {
    /// The name used in headers, logs and the state gauge's documentation.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

/// How long open lasts on the `k`-th consecutive trip: `initial × multiplier^(k − 1)`, at most
/// `max`, then scaled by a random factor in `[1 − jitter, 1 + jitter]` and kept within
/// `[1 ms, max]`. A fixed interval is `multiplier` 1 and `jitter` 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenInterval {
    /// The first trip's interval.
    pub initial: Duration,
    /// Growth per consecutive trip, at least 1.
    pub multiplier: f64,
    /// The longest interval.
    pub max: Duration,
    /// The random spread, a fraction from 0 to 1.
    pub jitter: f64,
}

impl OpenInterval {
    /// A fixed interval.
    pub fn fixed(duration: Duration) -> Self {
        Self {
            initial: duration,
            multiplier: 1.0,
            max: duration,
            jitter: 0.0,
        }
    }

    /// The interval of trip `attempt` (1 for the first), with `draw` a uniformly random `u64`.
    pub fn wait(&self, attempt: u32, draw: u64) -> Duration {
        let max = self.max.as_secs_f64();
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        // `powi` saturates to infinity, which `min` turns into the cap.
        let grown = (self.initial.as_secs_f64() * self.multiplier.powi(exponent)).min(max);
        if self.jitter == 0.0 {
            return Duration::try_from_secs_f64(grown).unwrap_or(self.max);
        }
        // draw / 2^64 is uniform in [0, 1); map it to [−1, 1).
        #[allow(clippy::cast_precision_loss, reason = "53 random bits are plenty")]
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let jittered = (grown * factor).clamp(0.001, max.max(0.001));
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}

/// The thresholds of one breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The window closed-state outcomes go to.
    pub window: Shape,
    /// Calls the window needs before rates count.
    pub minimum_calls: u32,
    /// Failure rate (percent, 1 to 100) that trips.
    pub failure_rate: u32,
    /// A call longer than this is slow.
    pub slow_call_duration: Duration,
    /// Slow-call rate (percent, 1 to 100) that trips.
    pub slow_call_rate: u32,
    /// How long open lasts.
    pub open: OpenInterval,
    /// Probes in half-open.
    pub half_open_calls: u32,
    /// How long the probes have to finish.
    pub half_open_timeout: Duration,
}

impl Policy {
    /// How long a close must hold before the next trip counts as a first one again: the
    /// window's length (a count window's `max_age`).
    pub fn reset_after(&self) -> Duration {
        match self.window {
            Shape::Time { size } => size,
            Shape::Count { max_age, .. } => max_age,
        }
    }
}

/// The shared record: state, generation, trips and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The state.
    pub state: State,
    /// Bumped on every change of state.
    pub generation: u64,
    /// Consecutive trips without a close that held (0 before the first): picks the open
    /// interval.
    pub open_attempt: u32,
    /// When the breaker last closed after half-open (ns; 0 if never).
    pub closed_since: u64,
    /// Closed-state outcomes.
    pub window: Window,
}

/// A change of state, to count and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
}

/// The answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; report the outcome with this generation.
    Permit {
        /// The generation the call was admitted under.
        generation: u64,
        /// Whether it holds one of half-open's probe permits.
        probe: bool,
    },
    /// Refused: open, or half-open with every probe out.
    Reject {
        /// Until the breaker may let calls through again.
        retry_after: Duration,
    },
}

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (or failed) as a call that counts: failed or not, slow or not.
    Call {
        /// A failure status, or an upstream connect failure, reset or timeout.
        failed: bool,
        /// Longer than `slow_call_duration`.
        slow: bool,
    },
    /// Counts as nothing: cancelled by the client, or answered by someone else.
    Ignored,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `part / whole ≥ percent / 100`, exactly.
fn at_least(part: u32, whole: u32, percent: u32) -> bool {
    whole > 0 && u64::from(part) * 100 >= u64::from(percent) * u64::from(whole)
}

impl Record {
    /// A closed breaker with an empty window.
    pub fn new(shape: Shape) -> Self {
        Self {
            state: State::Closed,
            generation: 0,
            open_attempt: 0,
            closed_since: 0,
            window: Window::empty(shape),
        }
    }

    fn go(&mut self, to: State, transitions: &mut Vec<Transition>) {
        transitions.push(Transition {
            from: self.state,
            to,
        });
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Opens: the interval grows with each trip since the last close that held a whole
    /// window.
    fn open(&mut self, policy: &Policy, now: u64, draw: u64, transitions: &mut Vec<Transition>) {
        let held = match self.state {
            State::Closed => now.saturating_sub(self.closed_since) >= nanos(policy.reset_after()),
            State::Open { .. } | State::HalfOpen { .. } => false,
        };
        self.open_attempt = if held {
            1
        } else {
            self.open_attempt.saturating_add(1)
        };
        let wait = policy.open.wait(self.open_attempt, draw);
        let until = now.saturating_add(nanos(wait));
        self.go(State::Open { until }, transitions);
    }

    /// Moves on by time alone: open ends, or half-open runs out of time.
    fn advance(&mut self, policy: &Policy, now: u64, draw: u64, transitions: &mut Vec<Transition>) {
        match self.state {
            State::Open { until } if now >= until => self.go(
                State::HalfOpen {
                    since: now,
                    permits: policy.half_open_calls,
                    probes: Counts::default(),
                },
                transitions,
            ),
            // Still undecided: the probes still out count as failed, which reopens it.
            State::HalfOpen { since, .. }
                if now.saturating_sub(since) >= nanos(policy.half_open_timeout) =>
            {
                self.open(policy, now, draw, transitions);
            }
            _ => {}
        }
    }

    /// Decides whether a request may go to the upstream. `draw` is a random `u64` for the
    /// open interval's jitter, should the breaker open.
    pub fn acquire(
        &mut self,
        policy: &Policy,
        now: u64,
        draw: u64,
        transitions: &mut Vec<Transition>,
    ) -> Admission {
        self.advance(policy, now, draw, transitions);
        match &mut self.state {
            State::Closed => Admission::Permit {
                generation: self.generation,
                probe: false,
            },
            State::Open { until } => Admission::Reject {
                retry_after: Duration::from_nanos(until.saturating_sub(now)),
            },
            State::HalfOpen { permits, .. } if *permits > 0 => {
                *permits -= 1;
                Admission::Permit {
                    generation: self.generation,
                    probe: true,
                }
            }
            State::HalfOpen { .. } => Admission::Reject {
                // Probes are out; they will have decided within a second or so.
                retry_after: Duration::from_secs(1),
            },
        }
    }

    /// Records how an admitted call ended. Returns false if its generation is gone (the
    /// outcome was discarded). `draw` as for [`Record::acquire`].
    #[allow(clippy::too_many_arguments, reason = "each is one fact about the call")]
    pub fn record(
        &mut self,
        policy: &Policy,
        generation: u64,
        probe: bool,
        outcome: Outcome,
        now: u64,
        draw: u64,
        transitions: &mut Vec<Transition>,
    ) -> bool {
        self.advance(policy, now, draw, transitions);
        if generation != self.generation {
            return false;
        }
        let (failed, slow) = match outcome {
            Outcome::Call { failed, slow } => (failed, slow),
            Outcome::Ignored => {
                if let (true, State::HalfOpen { permits, .. }) = (probe, &mut self.state) {
                    // The probe told nothing: hand its permit to the next request.
                    *permits = permits.saturating_add(1);
                }
                return true;
            }
        };
        match &mut self.state {
            State::Closed => {
                self.window.record(policy.window, now, failed, slow);
                let c = self.window.counts(policy.window, now);
                if c.total >= policy.minimum_calls
                    && (at_least(c.failed, c.total, policy.failure_rate)
                        || at_least(c.slow, c.total, policy.slow_call_rate))
                {
                    self.open(policy, now, draw, transitions);
                }
            }
            State::HalfOpen { probes, .. } => {
                probes.total = probes.total.saturating_add(1);
                probes.failed = probes.failed.saturating_add(u32::from(failed));
                probes.slow = probes.slow.saturating_add(u32::from(slow));
                let all = policy.half_open_calls;
                let p = *probes;
                // Open as soon as the outcome is certain, close once every probe is back.
                if at_least(p.failed, all, policy.failure_rate)
                    || at_least(p.slow, all, policy.slow_call_rate)
                {
                    self.open(policy, now, draw, transitions);
                } else if p.total >= all {
                    if at_least(p.failed, p.total, policy.failure_rate)
                        || at_least(p.slow, p.total, policy.slow_call_rate)
                    {
                        self.open(policy, now, draw, transitions);
                    } else {
                        self.window = Window::empty(policy.window);
                        self.closed_since = now;
                        self.go(State::Closed, transitions);
                    }
                }
            }
            State::Open { .. } => {}
        }
        true
    }

    /// The record's bytes in shared data.
    pub fn encode(&self) -> Vec<u8> {
        // Sized once: the record is rewritten on every recorded call.
        let mut out = Vec::with_capacity(45 + self.window.encoded_len());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.open_attempt.to_le_bytes());
        out.extend_from_slice(&self.closed_since.to_le_bytes());
        match self.state {
            State::Closed => out.push(0),
            State::Open { until } => {
                out.push(1);
                out.extend_from_slice(&until.to_le_bytes());
            }
            State::HalfOpen {
                since,
                permits,
                probes,
            } => {
                out.push(2);
                out.extend_from_slice(&since.to_le_bytes());
                for n in [permits, probes.total, probes.failed, probes.slow] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        self.window.encode(&mut out);
        out
    }

    /// Reads a record; `None` if malformed (the caller starts closed).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (generation, rest) = bytes.split_first_chunk::<8>()?;
        let (open_attempt, rest) = rest.split_first_chunk::<4>()?;
        let (closed_since, rest) = rest.split_first_chunk::<8>()?;
        let (&tag, mut rest) = rest.split_first()?;
        let u64_at = |r: &mut &[u8]| -> Option<u64> {
            let (v, tail) = r.split_first_chunk::<8>()?;
            *r = tail;
            Some(u64::from_le_bytes(*v))
        };
        let u32_at = |r: &mut &[u8]| -> Option<u32> {
            let (v, tail) = r.split_first_chunk::<4>()?;
            *r = tail;
            Some(u32::from_le_bytes(*v))
        };
        let state = match tag {
            0 => State::Closed,
            1 => State::Open {
                until: u64_at(&mut rest)?,
            },
            2 => State::HalfOpen {
                since: u64_at(&mut rest)?,
                permits: u32_at(&mut rest)?,
                probes: Counts {
                    total: u32_at(&mut rest)?,
                    failed: u32_at(&mut rest)?,
                    slow: u32_at(&mut rest)?,
                },
            },
            _ => return None,
        };
        let window = Window::decode(&mut rest)?;
        rest.is_empty().then_some(Self {
            state,
            generation: u64::from_le_bytes(*generation),
            open_attempt: u32::from_le_bytes(*open_attempt),
            closed_since: u64::from_le_bytes(*closed_since),
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * SEC;

    fn policy() -> Policy {
        Policy {
            window: Shape::Time {
                size: Duration::from_secs(10),
            },
            minimum_calls: 4,
            failure_rate: 50,
            slow_call_duration: Duration::from_secs(2),
            slow_call_rate: 100,
            open: OpenInterval::fixed(Duration::from_secs(30)),
            half_open_calls: 2,
            half_open_timeout: Duration::from_secs(10),
        }
    }

    fn call(failed: bool) -> Outcome {
        Outcome::Call {
            failed,
            slow: false,
        }
    }

    /// Acquires and records one call at `now`.
    fn run(r: &mut Record, p: &Policy, now: u64, outcome: Outcome) -> Admission {
        let mut t = Vec::new();
        let a = r.acquire(p, now, 0, &mut t);
        if let Admission::Permit { generation, probe } = a {
            r.record(p, generation, probe, outcome, now, 0, &mut t);
        }
        a
    }

    fn is_permit(a: Admission) -> bool {
        matches!(a, Admission::Permit { .. })
    }

    #[test]
    fn trips_at_exactly_the_threshold_once_minimum_calls_are_in() {
        let p = policy();
        let mut r = Record::new(p.window);
        // Three failures: 100% but under minimum_calls.
        for _ in 0..3 {
            run(&mut r, &p, T0, call(true));
        }
        assert_eq!(r.state, State::Closed);
        // Three failures out of six would be 50% — but the fourth call already decides:
        // 3 failed of 4 = 75%.
        run(&mut r, &p, T0, call(false));
        assert_eq!(
            r.state,
            State::Open {
                until: T0 + 30 * SEC
            }
        );
        // Exactly 50%: 2 of 4.
        let mut r = Record::new(p.window);
        for failed in [true, false, true] {
            run(&mut r, &p, T0, call(failed));
        }
        assert_eq!(r.state, State::Closed);
        run(&mut r, &p, T0, call(false));
        assert!(matches!(r.state, State::Open { .. }), "2 of 4 is 50%");
        // Just under: 2 of 5.
        let mut r = Record::new(p.window);
        for failed in [false, false, false, true] {
            run(&mut r, &p, T0, call(failed));
        }
        run(&mut r, &p, T0, call(true));
        assert_eq!(r.state, State::Closed, "2 of 5 is 40%");
    }

    #[test]
    fn slow_calls_trip_at_their_rate() {
        let p = Policy {
            slow_call_rate: 50,
            ..policy()
        };
        let mut r = Record::new(p.window);
        let slow = Outcome::Call {
            failed: false,
            slow: true,
        };
        for outcome in [slow, call(false), slow] {
            run(&mut r, &p, T0, outcome);
        }
        assert_eq!(r.state, State::Closed);
        run(&mut r, &p, T0, call(false));
        assert!(matches!(r.state, State::Open { .. }));
    }

    fn tripped(p: &Policy) -> Record {
        let mut r = Record::new(p.window);
        for _ in 0..4 {
            run(&mut r, p, T0, call(true));
        }
        assert!(matches!(r.state, State::Open { .. }));
        r
    }

    #[test]
    fn open_refuses_until_open_until_then_half_open_hands_out_exactly_the_probes() {
        let p = policy();
        let mut r = tripped(&p);
        let mut t = Vec::new();
        assert_eq!(
            r.acquire(&p, T0 + 29 * SEC + 1, 0, &mut t),
            Admission::Reject {
                retry_after: Duration::from_nanos(SEC - 1)
            }
        );
        assert!(t.is_empty());
        let first = r.acquire(&p, T0 + 30 * SEC, 0, &mut t);
        assert!(matches!(first, Admission::Permit { probe: true, .. }));
        assert_eq!(t.len(), 1);
        assert!(is_permit(r.acquire(&p, T0 + 30 * SEC, 0, &mut t)));
        assert_eq!(
            r.acquire(&p, T0 + 30 * SEC, 0, &mut t),
            Admission::Reject {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    fn half_open(p: &Policy) -> (Record, u64) {
        let mut r = tripped(p);
        let mut t = Vec::new();
        let now = T0 + 30 * SEC;
        let a = r.acquire(p, now, 0, &mut t);
        let Admission::Permit { generation, .. } = a else {
            panic!("{a:?}")
        };
        (r, generation)
    }

    #[test]
    fn probes_that_succeed_close_it_with_a_fresh_window() {
        let p = policy();
        let (mut r, g) = half_open(&p);
        let now = T0 + 30 * SEC;
        let mut t = Vec::new();
        let second = r.acquire(&p, now, 0, &mut t);
        assert!(is_permit(second));
        assert!(r.record(&p, g, true, call(false), now, 0, &mut t));
        assert!(matches!(r.state, State::HalfOpen { .. }));
        assert!(r.record(&p, g, true, call(false), now, 0, &mut t));
        assert_eq!(r.state, State::Closed);
        assert_eq!(r.window.counts(p.window, now).total, 0);
    }

    #[test]
    fn one_failed_probe_of_two_reopens_at_once() {
        let p = policy();
        let (mut r, g) = half_open(&p);
        let now = T0 + 31 * SEC;
        let mut t = Vec::new();
        assert!(r.record(&p, g, true, call(true), now, 0, &mut t));
        assert_eq!(
            r.state,
            State::Open {
                until: now + 30 * SEC
            }
        );
    }

    #[test]
    fn a_cancelled_probe_gives_its_permit_back_and_closes_nothing() {
        let p = policy();
        let (mut r, g) = half_open(&p);
        let now = T0 + 30 * SEC;
        let mut t = Vec::new();
        assert!(is_permit(r.acquire(&p, now, 0, &mut t)));
        assert!(matches!(
            r.acquire(&p, now, 0, &mut t),
            Admission::Reject { .. }
        ));
        r.record(&p, g, true, Outcome::Ignored, now, 0, &mut t);
        assert!(matches!(r.state, State::HalfOpen { .. }));
        assert!(is_permit(r.acquire(&p, now, 0, &mut t)));
    }

    #[test]
    fn probes_that_never_finish_reopen_it_after_half_open_timeout() {
        let p = policy();
        let (mut r, _) = half_open(&p);
        let mut t = Vec::new();
        let late = T0 + 40 * SEC;
        assert!(matches!(
            r.acquire(&p, late - 1, 0, &mut t),
            Admission::Permit { .. }
        ));
        assert!(matches!(r.state, State::HalfOpen { .. }));
        assert!(matches!(
            r.acquire(&p, late, 0, &mut t),
            Admission::Reject { .. }
        ));
        assert_eq!(
            r.state,
            State::Open {
                until: late + 30 * SEC
            }
        );
    }

    #[test]
    fn outcomes_of_an_older_generation_are_discarded() {
        let p = policy();
        let mut r = Record::new(p.window);
        let mut t = Vec::new();
        let Admission::Permit {
            generation: old, ..
        } = r.acquire(&p, T0, 0, &mut t)
        else {
            panic!()
        };
        for _ in 0..4 {
            run(&mut r, &p, T0, call(true));
        }
        // Half-open now; the slow call from the closed days finally fails.
        assert!(is_permit(r.acquire(&p, T0 + 30 * SEC, 0, &mut t)));
        assert!(!r.record(&p, old, false, call(true), T0 + 30 * SEC, 0, &mut t));
        assert!(matches!(r.state, State::HalfOpen { .. }));
    }

    #[test]
    fn records_round_trip_and_junk_is_refused() {
        let p = policy();
        let (r, _) = half_open(&p);
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        let closed = Record::new(p.window);
        assert_eq!(Record::decode(&closed.encode()), Some(closed));
        assert_eq!(Record::decode(&[1, 2, 3]), None);
        let mut trailing = r.encode();
        trailing.push(0);
        assert_eq!(Record::decode(&trailing), None);
    }

    fn backoff() -> Policy {
        Policy {
            open: OpenInterval {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max: Duration::from_secs(5),
                jitter: 0.0,
            },
            ..policy()
        }
    }

    /// Trips the closed breaker at `now` (four failures).
    fn trip(r: &mut Record, p: &Policy, now: u64) -> u64 {
        for _ in 0..4 {
            run(r, p, now, call(true));
        }
        let State::Open { until } = r.state else {
            panic!("not open: {:?}", r.state)
        };
        until - now
    }

    /// Lets open end at `at` and answers the probes with `failed`.
    fn probe(r: &mut Record, p: &Policy, at: u64, failed: bool) {
        for _ in 0..p.half_open_calls {
            run(r, p, at, call(failed));
        }
    }

    #[test]
    fn the_open_interval_grows_with_each_failed_recovery_up_to_its_cap() {
        let p = backoff();
        let mut r = Record::new(p.window);
        assert_eq!(trip(&mut r, &p, T0), SEC);
        let mut intervals = Vec::new();
        for _ in 0..5 {
            let State::Open { until: now } = r.state else {
                panic!()
            };
            probe(&mut r, &p, now, true);
            let State::Open { until } = r.state else {
                panic!()
            };
            intervals.push((until - now) / SEC);
        }
        assert_eq!(intervals, [2, 4, 5, 5, 5]);
        assert_eq!(r.open_attempt, 6);
        // A half-open that runs out of time reopens with the next interval too.
        let State::Open { until } = r.state else {
            panic!()
        };
        let mut t = Vec::new();
        assert!(is_permit(r.acquire(&p, until, 0, &mut t)));
        let late = until + 10 * SEC;
        r.acquire(&p, late, 0, &mut t);
        assert_eq!(
            r.state,
            State::Open {
                until: late + 5 * SEC
            }
        );
    }

    #[test]
    fn a_close_that_holds_a_whole_window_starts_the_intervals_again() {
        let p = backoff();
        let mut r = Record::new(p.window);
        trip(&mut r, &p, T0);
        probe(&mut r, &p, T0 + SEC, true);
        assert_eq!(r.open_attempt, 2);
        // Recovers at T0 + 3 s, then fails again 5 s later: within the 10 s window, so the
        // outage goes on and the interval keeps growing.
        probe(&mut r, &p, T0 + 3 * SEC, false);
        assert_eq!(r.state, State::Closed);
        assert_eq!(trip(&mut r, &p, T0 + 8 * SEC), 4 * SEC);
        // Recovers at T0 + 12 s and holds for the whole 10 s window: a new outage starts
        // from the initial interval.
        probe(&mut r, &p, T0 + 12 * SEC, false);
        assert_eq!(r.state, State::Closed);
        assert_eq!(trip(&mut r, &p, T0 + 22 * SEC), SEC);
        assert_eq!(r.open_attempt, 1);
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
    }

    #[test]
    fn jitter_moves_the_interval_both_ways_and_workers_share_it() {
        let p = Policy {
            open: OpenInterval {
                jitter: 0.5,
                ..backoff().open
            },
            ..policy()
        };
        let low = p.open.wait(1, 0);
        let high = p.open.wait(1, u64::MAX);
        assert_eq!(low, Duration::from_millis(500));
        assert!(high > Duration::from_millis(1499) && high <= Duration::from_millis(1500));
        // The interval is chosen once, by the worker that trips, and stored: another worker's
        // copy refuses until the same instant.
        let mut r = Record::new(p.window);
        let mut t = Vec::new();
        for _ in 0..4 {
            if let Admission::Permit { generation, probe } = r.acquire(&p, T0, 0, &mut t) {
                r.record(&p, generation, probe, call(true), T0, u64::MAX / 4, &mut t);
            }
        }
        let other = Record::decode(&r.encode()).unwrap();
        assert_eq!(other.state, r.state);
        assert_eq!(
            other.state,
            State::Open {
                until: T0 + 750_000_000
            }
        );
    }

    proptest::proptest! {
        /// The interval stays within its jitter around the capped exponential, and within
        /// [1 ms, max].
        #[test]
        fn intervals_stay_in_bounds(
            initial_ms in 1u64..100_000,
            multiplier in 1.0f64..10.0,
            extra_ms in 0u64..1_000_000,
            jitter in 0.0f64..=1.0,
            attempt in 1u32..200,
            draw in proptest::num::u64::ANY,
        ) {
            let open = OpenInterval {
                initial: Duration::from_millis(initial_ms),
                multiplier,
                max: Duration::from_millis(initial_ms + extra_ms),
                jitter,
            };
            let wait = open.wait(attempt, draw).as_secs_f64();
            let max = open.max.as_secs_f64();
            let grown = (open.initial.as_secs_f64()
                * multiplier.powi(i32::try_from(attempt - 1).unwrap()))
            .min(max);
            proptest::prop_assert!(wait <= max + 1e-9);
            proptest::prop_assert!(wait >= 0.001 - 1e-9);
            proptest::prop_assert!(wait >= (grown * (1.0 - jitter)).min(max) - 1e-6);
            proptest::prop_assert!(wait <= grown * (1.0 + jitter) + 1e-6);
            // Never shorter for a later trip, without jitter.
            let fixed = OpenInterval { jitter: 0.0, ..open };
            proptest::prop_assert!(fixed.wait(attempt + 1, draw) >= fixed.wait(attempt, draw));
        }
    }

    proptest::proptest! {
        /// Model check: whatever the calls, an open breaker lets nothing through before
        /// `open_until`, half-open never has more than `half_open_calls` probes out, and the
        /// record always survives a round trip through shared data.
        #[test]
        fn invariants_hold_for_any_history(
            steps in proptest::collection::vec((0u64..3_000, proptest::num::u8::ANY), 1..300)
        ) {
            let p = policy();
            let mut r = Record::new(p.window);
            let mut now = T0;
            let mut out: Vec<(u64, bool)> = Vec::new();
            let mut t = Vec::new();
            for (gap_ms, op) in steps {
                now += gap_ms * 1_000_000;
                match op % 4 {
                    0 | 1 => {
                        let before = r.state;
                        let record_before = r.clone();
                        let transitions_before = t.len();
                        let admission = r.acquire(&p, now, 0, &mut t);
                        // What the filter relies on to skip the write in the common case.
                        let changed = t.len() > transitions_before
                            || matches!(admission, Admission::Permit { probe: true, .. });
                        proptest::prop_assert_eq!(changed, r != record_before);
                        match admission {
                            Admission::Permit { generation, probe } => {
                                if let State::Open { until } = before {
                                    proptest::prop_assert!(now >= until);
                                }
                                out.push((generation, probe));
                            }
                            Admission::Reject { retry_after } => {
                                proptest::prop_assert!(retry_after > Duration::ZERO);
                            }
                        }
                    }
                    _ => {
                        if !out.is_empty() {
                            let (generation, probe) = out.remove(usize::from(op) % out.len());
                            let outcome = match op % 3 {
                                0 => Outcome::Ignored,
                                1 => call(true),
                                _ => call(false),
                            };
                            r.record(&p, generation, probe, outcome, now, 0, &mut t);
                        }
                    }
                }
                if let State::HalfOpen { permits, probes, .. } = r.state {
                    proptest::prop_assert!(permits + probes.total <= p.half_open_calls);
                }
                proptest::prop_assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
            }
        }
    }
}
