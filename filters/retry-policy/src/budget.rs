//! The retry budget: retries may not exceed `retry_ratio` of requests plus
//! `min_retries_per_second`, over a sliding 10 s, across all workers of the Envoy instance.
//!
//! Kept in one shared-data value: 10 slots of one second, each `(second, requests, retries)`;
//! a slot whose second has passed out of the window is reused from zero. Every request the
//! filter gives retries deposits one request; every retry Envoy really made (read from the
//! response's attempt count) is added when the response arrives. Requests are added by each
//! worker once a second (a write per request cost more than the rest of the filter); the lag
//! only ever makes the budget smaller, never larger. A request is given retries
//! only while `retries < retry_ratio · requests + min_retries_per_second · 10`.

use crate::config::Budget;

/// Seconds the budget looks back.
pub const WINDOW_SECS: u64 = 10;

/// The shared-data key.
pub const KEY: &str = "rt1/budget";

/// One second's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    second: u64,
    requests: u32,
    retries: u32,
}

/// The budget's window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    slots: Vec<Slot>,
}

impl Window {
    /// Reads the stored window; anything malformed reads as empty.
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(bytes) = bytes else {
            return Self::default();
        };
        if bytes.len() % 16 != 0 || bytes.len() > 16 * WINDOW_SECS as usize {
            return Self::default();
        }
        let slots = bytes
            .chunks_exact(16)
            .filter_map(|c| {
                let (second, rest) = c.split_first_chunk::<8>()?;
                let (requests, rest) = rest.split_first_chunk::<4>()?;
                let (retries, _) = rest.split_first_chunk::<4>()?;
                Some(Slot {
                    second: u64::from_le_bytes(*second),
                    requests: u32::from_le_bytes(*requests),
                    retries: u32::from_le_bytes(*retries),
                })
            })
            .collect();
        Self { slots }
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.slots.len() * 16);
        for s in &self.slots {
            out.extend_from_slice(&s.second.to_le_bytes());
            out.extend_from_slice(&s.requests.to_le_bytes());
            out.extend_from_slice(&s.retries.to_le_bytes());
        }
        out
    }

    fn live(&self, now_secs: u64) -> impl Iterator<Item = &Slot> {
        let oldest = now_secs.saturating_sub(WINDOW_SECS - 1);
        self.slots
            .iter()
            .filter(move |s| (oldest..=now_secs).contains(&s.second))
    }

    fn current(&mut self, now_secs: u64) -> Option<&mut Slot> {
        if self.slots.len() < WINDOW_SECS as usize {
            self.slots.resize(WINDOW_SECS as usize, Slot::default());
        }
        let slot = self
            .slots
            .get_mut(usize::try_from(now_secs % WINDOW_SECS).unwrap_or(0))?;
        if slot.second != now_secs {
            *slot = Slot {
                second: now_secs,
                ..Slot::default()
            };
        }
        Some(slot)
    }

    /// Whether a new request may be given retries now, counting `unsent` requests this worker
    /// has not added to the shared window yet.
    pub fn allows(&self, budget: &Budget, now_secs: u64, unsent: u32) -> bool {
        let (requests, retries) = self
            .live(now_secs)
            .fold((u64::from(unsent), 0u64), |(q, r), s| {
                (q + u64::from(s.requests), r + u64::from(s.retries))
            });
        let allowed =
            budget.ratio * requests as f64 + f64::from(budget.min_per_second) * WINDOW_SECS as f64;
        (retries as f64) < allowed
    }

    /// Counts `requests` requests.
    pub fn deposit(&mut self, requests: u32, now_secs: u64) {
        if let Some(slot) = self.current(now_secs) {
            slot.requests = slot.requests.saturating_add(requests);
        }
    }

    /// Counts retries that happened.
    pub fn withdraw(&mut self, retries: u32, now_secs: u64) {
        if let Some(slot) = self.current(now_secs) {
            slot.retries = slot.retries.saturating_add(retries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn budget(ratio: f64, min: u32) -> Budget {
        Budget {
            ratio,
            min_per_second: min,
        }
    }

    #[test]
    fn retries_stay_under_ratio_plus_reserve() {
        let b = budget(0.2, 1);
        let mut w = Window::default();
        // Reserve: 1 per second over 10 s = 10 retries with no traffic at all.
        w.withdraw(9, NOW);
        assert!(w.allows(&b, NOW, 0));
        w.withdraw(1, NOW);
        assert!(!w.allows(&b, NOW, 0));
        // 50 requests add 10 more.
        assert!(w.allows(&b, NOW, 50), "requests not yet shared count too");
        w.deposit(50, NOW);
        assert!(w.allows(&b, NOW, 0));
        w.withdraw(10, NOW);
        assert!(!w.allows(&b, NOW, 0));
        // Ten seconds later it has all aged out.
        assert!(w.allows(&b, NOW + 10, 0));
        assert!(!w.allows(&b, NOW + 9, 0));
    }

    #[test]
    fn a_zero_budget_allows_nothing_without_traffic() {
        let w = Window::default();
        assert!(!w.allows(&budget(0.0, 0), NOW, 0));
        assert!(w.allows(&budget(0.0, 1), NOW, 0));
    }

    #[test]
    fn round_trips_and_junk_reads_empty() {
        let mut w = Window::default();
        w.deposit(1, NOW);
        w.withdraw(2, NOW + 1);
        assert_eq!(Window::decode(Some(&w.encode())), w);
        assert_eq!(Window::decode(Some(&[1, 2, 3])), Window::default());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Window::decode(Some(&bytes));
        }
    }
}
