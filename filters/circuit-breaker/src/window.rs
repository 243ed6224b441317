//! The calls a closed breaker judges by: a sliding time window, or the last N calls.
//!
//! Both live inside the breaker's shared-data record, so they are small and fixed in size:
//! - time: [`TIME_BUCKETS`] buckets of `size / 10` each, keyed by `floor(now / width)`; a bucket
//!   whose key is stale is reused from zero. The window covers the current bucket and the nine
//!   before it, so between 90% and 100% of `size` (as Polly's rolling window);
//! - count: the last `size` calls with their times; calls older than `max_age` no longer count
//!   (a count window that never aged would trip on failures from hours ago).

use std::collections::VecDeque;
use std::time::Duration;

/// Buckets of a time window.
pub const TIME_BUCKETS: u64 = 10;

/// Totals over the calls in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls recorded.
    pub total: u32,
    /// Of which failed.
    pub failed: u32,
    /// Of which slow (a slow failure counts in both).
    pub slow: u32,
}

impl Counts {
    fn add(&mut self, failed: bool, slow: bool) {
        self.total = self.total.saturating_add(1);
        self.failed = self.failed.saturating_add(u32::from(failed));
        self.slow = self.slow.saturating_add(u32::from(slow));
    }
}

/// The shape of a window, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Calls of the last `size`.
    Time {
        /// The window's length.
        size: Duration,
    },
    /// The last `size` calls, none older than `max_age`.
    Count {
        /// How many calls.
        size: u32,
        /// How old a call may be and still count.
        max_age: Duration,
    },
}

/// One call in a count window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// When it was recorded (ns).
    pub at: u64,
    /// Whether it failed.
    pub failed: bool,
    /// Whether it was slow.
    pub slow: bool,
}

/// A window's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// `(bucket key, counts)` per slot.
    Time(Vec<(u64, Counts)>),
    /// Oldest call first.
    Count(VecDeque<Call>),
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Window {
    /// An empty window of `shape`.
    pub fn empty(shape: Shape) -> Self {
        match shape {
            Shape::Time { .. } => Window::Time(Vec::new()),
            Shape::Count { .. } => Window::Count(VecDeque::new()),
        }
    }

    /// Adds one call's outcome at `now` (ns).
    pub fn record(&mut self, shape: Shape, now: u64, failed: bool, slow: bool) {
        match (self, shape) {
            (Window::Time(buckets), Shape::Time { size }) => {
                let width = (nanos(size) / TIME_BUCKETS).max(1);
                let key = now / width;
                let slot = usize::try_from(key % TIME_BUCKETS).unwrap_or(0);
                if buckets.len() < TIME_BUCKETS as usize {
                    buckets.resize(TIME_BUCKETS as usize, (u64::MAX, Counts::default()));
                }
                if let Some(bucket) = buckets.get_mut(slot) {
                    if bucket.0 != key {
                        *bucket = (key, Counts::default());
                    }
                    bucket.1.add(failed, slow);
                }
            }
            (Window::Count(calls), Shape::Count { size, .. }) => {
                calls.push_back(Call {
                    at: now,
                    failed,
                    slow,
                });
                while calls.len() > size as usize {
                    calls.pop_front();
                }
            }
            // The shape changed (a configuration reload): start over in the new one.
            (window, shape) => {
                *window = Window::empty(shape);
                window.record(shape, now, failed, slow);
            }
        }
    }

    /// The totals over the calls that still count at `now`.
    pub fn counts(&self, shape: Shape, now: u64) -> Counts {
        let mut counts = Counts::default();
        match (self, shape) {
            (Window::Time(buckets), Shape::Time { size }) => {
                let width = (nanos(size) / TIME_BUCKETS).max(1);
                let current = now / width;
                let oldest = current.saturating_sub(TIME_BUCKETS - 1);
                for (key, bucket) in buckets {
                    if (oldest..=current).contains(key) {
                        counts.total = counts.total.saturating_add(bucket.total);
                        counts.failed = counts.failed.saturating_add(bucket.failed);
                        counts.slow = counts.slow.saturating_add(bucket.slow);
                    }
                }
            }
            (Window::Count(calls), Shape::Count { max_age, .. }) => {
                let max_age = nanos(max_age);
                for call in calls {
                    if now.saturating_sub(call.at) < max_age {
                        counts.add(call.failed, call.slow);
                    }
                }
            }
            _ => {}
        }
        counts
    }

    /// How many bytes [`Window::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        5 + match self {
            Window::Time(buckets) => buckets.len() * 20,
            Window::Count(calls) => calls.len() * 9,
        }
    }

    /// Appends the window's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Window::Time(buckets) => {
                out.push(b'T');
                out.extend_from_slice(&u32::try_from(buckets.len()).unwrap_or(0).to_le_bytes());
                for (key, c) in buckets {
                    out.extend_from_slice(&key.to_le_bytes());
                    for n in [c.total, c.failed, c.slow] {
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
            Window::Count(calls) => {
                out.push(b'C');
                out.extend_from_slice(&u32::try_from(calls.len()).unwrap_or(0).to_le_bytes());
                for call in calls {
                    out.extend_from_slice(&call.at.to_le_bytes());
                    out.push(u8::from(call.failed) | u8::from(call.slow) << 1);
                }
            }
        }
    }

    /// Reads a window from the front of `bytes`; `None` if malformed.
    pub fn decode(bytes: &mut &[u8]) -> Option<Self> {
        let (&tag, rest) = bytes.split_first()?;
        let (len, mut rest) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len);
        let window = match tag {
            b'T' => {
                if u64::from(len) > TIME_BUCKETS {
                    return None;
                }
                let mut buckets = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    let (key, r) = rest.split_first_chunk::<8>()?;
                    let (total, r) = r.split_first_chunk::<4>()?;
                    let (failed, r) = r.split_first_chunk::<4>()?;
                    let (slow, r) = r.split_first_chunk::<4>()?;
                    rest = r;
                    buckets.push((
                        u64::from_le_bytes(*key),
                        Counts {
                            total: u32::from_le_bytes(*total),
                            failed: u32::from_le_bytes(*failed),
                            slow: u32::from_le_bytes(*slow),
                        },
                    ));
                }
                Window::Time(buckets)
            }
            b'C' => {
                if len > crate::config::MAX_COUNT_WINDOW {
                    return None;
                }
                let mut calls = VecDeque::with_capacity(len as usize);
                for _ in 0..len {
                    let (at, r) = rest.split_first_chunk::<8>()?;
                    let (&flags, r) = r.split_first()?;
                    rest = r;
                    calls.push_back(Call {
                        at: u64::from_le_bytes(*at),
                        failed: flags & 1 != 0,
                        slow: flags & 2 != 0,
                    });
                }
                Window::Count(calls)
            }
            _ => return None,
        };
        *bytes = rest;
        Some(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * SEC;

    #[test]
    fn a_time_window_forgets_after_its_size() {
        let shape = Shape::Time {
            size: Duration::from_secs(10),
        };
        let mut w = Window::empty(shape);
        w.record(shape, T0, true, false);
        w.record(shape, T0 + 5 * SEC, false, true);
        let both = Counts {
            total: 2,
            failed: 1,
            slow: 1,
        };
        assert_eq!(w.counts(shape, T0 + 5 * SEC), both);
        // Buckets of 1 s: the first call's bucket leaves the window 10 s after it began.
        assert_eq!(w.counts(shape, T0 + 9 * SEC), both);
        assert_eq!(w.counts(shape, T0 + 10 * SEC).total, 1);
        assert_eq!(w.counts(shape, T0 + 15 * SEC).total, 0);
        // A stale bucket in the same slot is reused from zero.
        w.record(shape, T0 + 20 * SEC, false, false);
        assert_eq!(
            w.counts(shape, T0 + 20 * SEC),
            Counts {
                total: 1,
                failed: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn a_count_window_keeps_the_last_n_and_ages_them() {
        let shape = Shape::Count {
            size: 3,
            max_age: Duration::from_secs(60),
        };
        let mut w = Window::empty(shape);
        for (i, failed) in [true, true, false, false].into_iter().enumerate() {
            w.record(shape, T0 + i as u64 * SEC, failed, false);
        }
        let c = w.counts(shape, T0 + 3 * SEC);
        assert_eq!((c.total, c.failed), (3, 1));
        // 60 s after the second call it no longer counts; the others still do.
        let c = w.counts(shape, T0 + 61 * SEC);
        assert_eq!((c.total, c.failed), (2, 0));
        assert_eq!(w.counts(shape, T0 + 63 * SEC).total, 0);
    }

    #[test]
    fn encoding_round_trips() {
        for shape in [
            Shape::Time {
                size: Duration::from_secs(10),
            },
            Shape::Count {
                size: 5,
                max_age: Duration::from_secs(60),
            },
        ] {
            let mut w = Window::empty(shape);
            for i in 0..7u64 {
                w.record(shape, T0 + i * 700_000_000, i % 2 == 0, i % 3 == 0);
            }
            let mut bytes = Vec::new();
            w.encode(&mut bytes);
            assert_eq!(bytes.len(), w.encoded_len());
            let mut cursor = bytes.as_slice();
            assert_eq!(Window::decode(&mut cursor), Some(w));
            assert!(cursor.is_empty());
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut cursor = bytes.as_slice();
            let _ = Window::decode(&mut cursor);
        }
    }
}
