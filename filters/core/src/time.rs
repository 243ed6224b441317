//! Time as a value. Policy code is handed the time; it never reads a clock.

use std::time::Duration;

/// A wall-clock instant: nanoseconds since the Unix epoch, as Envoy reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The instant `nanos` nanoseconds after the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// The instant `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// This instant moved forward by `d`, saturating at the end of time.
    pub fn plus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

/// Envoy's ABI offers only a wall clock, which can step backwards (NTP). Limiters and breakers
/// must not see time run backwards, so each worker keeps the latest time it has seen and never
/// goes below it. (JWT `exp`/`nbf` checks use the raw wall clock instead.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic {
    latest: Time,
}

impl Monotonic {
    /// Feeds a wall-clock reading; returns it, or the latest earlier reading if that was later.
    pub fn observe(&mut self, wall: Time) -> Time {
        self.latest = self.latest.max(wall);
        self.latest
    }
}

/// A [`Monotonic`] a filter keeps for its worker, behind `&self`.
#[derive(Debug, Default)]
pub struct WorkerClock(std::cell::Cell<Monotonic>);

impl WorkerClock {
    /// The host's `wall` time, never earlier than one this worker saw before.
    pub fn now(&self, wall: Time) -> Time {
        let mut clock = self.0.get();
        let now = clock.observe(wall);
        self.0.set(clock);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_secs(10);
        assert_eq!(t.since(Time::from_secs(4)), Duration::from_secs(6));
        assert_eq!(Time::from_secs(4).since(t), Duration::ZERO);
        assert_eq!(
            Time::from_nanos(u64::MAX).plus(Duration::from_secs(1)),
            Time::from_nanos(u64::MAX)
        );
        assert_eq!(t.as_secs(), 10);
    }

    #[test]
    fn monotonic_never_goes_back() {
        let mut m = Monotonic::default();
        assert_eq!(m.observe(Time::from_secs(5)), Time::from_secs(5));
        assert_eq!(m.observe(Time::from_secs(3)), Time::from_secs(5));
        assert_eq!(m.observe(Time::from_secs(6)), Time::from_secs(6));
    }
}
