//! What policy code needs around the `log` crate's macros: a throttle for lines a flood can
//! trigger, and the one shape of a refusal's debug line.
//!
//! Lines are written with `log::warn!`, `log::info!` and `log::debug!`; the host layer installs
//! the proxy-wasm SDK's logger, which hands them to Envoy's `wasm` log at the host's level. Each
//! line starts with the filter's name (`jwt_auth: ...`), so it reads the same from a filter's
//! own module and from gateway.wasm. No line ever carries a token, a secret or a credential
//! header.

use crate::decision::LocalResponse;
use crate::time::Time;
use std::cell::Cell;
use std::fmt;
use std::time::Duration;

/// Lets the first line of a kind through, then at most one per interval; the line that goes
/// through says how many were dropped since the last one. One per kind of line, per worker.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Cell<ThrottleState>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ThrottleState {
    /// When the last line went through; `None` before the first.
    last: Option<Time>,
    /// Lines dropped since then.
    dropped: u64,
}

impl Throttle {
    /// At most one line per `interval` after the first.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Cell::new(ThrottleState {
                last: None,
                dropped: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`. When it may, the returned value, displayed at
    /// the end of the line, tells how many similar lines were dropped before it (nothing if
    /// none). A clock that steps back counts as no time passing.
    pub fn admit(&self, now: Time) -> Option<Dropped> {
        let state = self.state.get();
        match state.last {
            Some(last) if now.since(last) < self.interval => {
                self.state.set(ThrottleState {
                    dropped: state.dropped.saturating_add(1),
                    ..state
                });
                None
            }
            last => {
                self.state.set(ThrottleState {
                    last: Some(now),
                    dropped: 0,
                });
                Some(Dropped {
                    count: state.dropped,
                    over: last.map_or(Duration::ZERO, |last| now.since(last)),
                })
            }
        }
    }
}

/// The lines a [`Throttle`] dropped before the one it let through; displays as
/// ` (41 similar lines dropped in the last 10s)`, or as nothing when none were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// How many lines.
    pub count: u64,
    /// Since the previous line that went through.
    pub over: Duration,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            0 => Ok(()),
            1 => write!(
                f,
                " (1 similar line dropped in the last {}s)",
                self.over.as_secs()
            ),
            n => write!(
                f,
                " ({n} similar lines dropped in the last {}s)",
                self.over.as_secs()
            ),
        }
    }
}

/// Logs a refusal at debug level: `<filter>: refused with <status>: <detail>`. A per-request
/// decision, so off unless the operator asks for debug (and then free of any formatting work
/// when off: the macro checks the level first). The detail is the filter's own words about the
/// request, never a credential.
pub fn refused(filter: &str, reply: &LocalResponse) {
    if reply.detail.is_empty() {
        log::debug!("{filter}: refused with {}", reply.status);
    } else {
        log::debug!("{filter}: refused with {}: {}", reply.status, reply.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn at(secs: u64) -> Time {
        Time::from_secs(secs)
    }

    #[test]
    fn the_first_line_goes_through_then_one_per_interval_counting_the_dropped() {
        let throttle = Throttle::new(INTERVAL);
        let first = throttle
            .admit(at(100))
            .expect("the first line goes through");
        assert_eq!(first.to_string(), "");
        for s in 0..41 {
            assert_eq!(throttle.admit(at(100 + s / 5)), None, "{s}");
        }
        assert_eq!(throttle.admit(at(109)), None);
        let next = throttle.admit(at(110)).expect("one interval later");
        assert_eq!(next.count, 42);
        assert_eq!(
            next.to_string(),
            " (42 similar lines dropped in the last 10s)"
        );
        // A quiet spell: the next line goes through at once, with nothing dropped.
        let later = throttle.admit(at(500)).expect("after a quiet spell");
        assert_eq!(later.to_string(), "");
        assert_eq!(throttle.admit(at(501)), None);
        assert_eq!(
            throttle.admit(at(530)).map(|d| d.to_string()).as_deref(),
            Some(" (1 similar line dropped in the last 30s)")
        );
    }

    #[test]
    fn a_clock_stepping_back_drops_rather_than_floods() {
        let throttle = Throttle::new(INTERVAL);
        assert!(throttle.admit(at(100)).is_some());
        assert_eq!(throttle.admit(at(50)), None);
        assert_eq!(throttle.admit(at(110)).map(|d| d.count), Some(1));
    }
}
