//! The retry budget: a ceiling on retries, shared by every worker of an Envoy instance.
//!
//! # The guarantee
//!
//! Time is cut into one-second slots (whole Unix seconds of Envoy's clock). For **every** ten
//! consecutive slots, including those that reach past the present:
//!
//! ```text
//! retries charged  ≤  ⌊retry_ratio × requests counted⌋ + min_retries_per_second × 10
//! ```
//!
//! (`retry_ratio` taken to six decimals.) A grant of `k` retries is *charged*
//! `k` in the slot where it is given, before the request goes upstream, so every retry Envoy
//! makes was charged first; what a request did not use is refunded to that same slot once its
//! response reports how many attempts were made. A request is *counted* in the slot in which it
//! arrived; a worker adds its requests to the shared window in batches, and until then they
//! allow nothing, so the lag can only make the budget smaller.
//!
//! # Why every run of slots ending now
//!
//! A charge in slot `s` belongs to ten windows: the one ending at `s` and the nine that start
//! after it, whose later slots hold nothing yet. Checking only the window ending at `s` (as a
//! cached read of "retries < allowance" did) lets slot `s` spend requests of slot `s − 9`,
//! which the next window no longer has. So a charge must fit every run `s − j ..= s`
//! (`j` = 0 to 9): in the tightest, the current second alone, at most its own requests' share
//! plus the reserve.
//!
//! # Leases
//!
//! Every read-modify-write of the shared window is two host calls and a decode and encode, on a
//! value both workers contend for. So a worker charges a *lease* (a few grants' worth) in one
//! compare-and-swap, deposits its pending requests in the same write, and grants from the lease
//! locally; refunds in the same second go back into the lease. What is left when the second
//! ends goes back to the window at the next write (a tick at the latest). A lease is a charge:
//! the ceiling holds whoever ends up using it. When the window has nothing to lease, a worker
//! asks again only once its own new requests could pay for a retry, or after
//! [`RECHECK`] (for other workers' requests and refunds), or in the next second.

use crate::config::Budget;
use filter_core::store::{self, SharedStore, StoreError};
use filter_core::time::Time;
use std::time::Duration;

/// Slots in a window.
pub const WINDOW_SECS: u64 = 10;

/// The shared-data key (`rt2`: slots count charges, not retries seen as `rt1/budget` did).
pub const KEY: &str = "rt2/budget";

/// Read-modify-write attempts on the window before giving up.
const MAX_ATTEMPTS: u32 = 8;

/// A lease asks for this many grants of the size being asked for.
const LEASE_GRANTS: u32 = 4;

/// How long a worker that found nothing to lease waits before asking again (unless its own
/// requests could pay for a retry by then, or the second changes).
pub const RECHECK: Duration = Duration::from_millis(100);

/// Millionths: `retry_ratio`'s unit in integer arithmetic.
const MICROS: u64 = 1_000_000;

/// The allowance of a run of slots, in integers so that rounding never adds a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// `retry_ratio` in millionths.
    ratio_micros: u64,
    /// `min_retries_per_second × 10`.
    reserve: u64,
}

impl Allowance {
    /// The allowance of a compiled budget.
    pub fn new(budget: &Budget) -> Self {
        // Validated to 0..=1, so 0..=1_000_000 (`as` saturates anyway). Rounded, not floored:
        // 0.7 is 0.69999999999999995559 as a double, and means 700,000 millionths.
        let ratio_micros = (budget.ratio * MICROS as f64).round() as u64;
        Self {
            ratio_micros: ratio_micros.min(MICROS),
            reserve: u64::from(budget.min_per_second).saturating_mul(WINDOW_SECS),
        }
    }

    /// Retries that `requests` requests allow, reserve included.
    pub fn of(&self, requests: u64) -> u64 {
        requests
            .saturating_mul(self.ratio_micros)
            .checked_div(MICROS)
            .unwrap_or(0)
            .saturating_add(self.reserve)
    }
}

/// One second's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    second: u64,
    requests: u32,
    charged: u32,
}

/// The shared window: one slot per second of the last ten, kept at `second % 10`.
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
                let (charged, _) = rest.split_first_chunk::<4>()?;
                Some(Slot {
                    second: u64::from_le_bytes(*second),
                    requests: u32::from_le_bytes(*requests),
                    charged: u32::from_le_bytes(*charged),
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
            out.extend_from_slice(&s.charged.to_le_bytes());
        }
        out
    }

    fn index(second: u64) -> usize {
        usize::try_from(second % WINDOW_SECS).unwrap_or(0)
    }

    /// The slot of `second`, if the window holds it.
    fn get(&self, second: u64) -> Option<&Slot> {
        self.slots
            .get(Self::index(second))
            .filter(|s| s.second == second)
    }

    /// The slot of `second`, started from zero if its place holds an older second; `None` if
    /// it holds a newer one (`second` has left the window).
    fn slot_mut(&mut self, second: u64) -> Option<&mut Slot> {
        if self.slots.len() < WINDOW_SECS as usize {
            self.slots.resize(WINDOW_SECS as usize, Slot::default());
        }
        let slot = self.slots.get_mut(Self::index(second))?;
        if slot.second > second {
            return None;
        }
        if slot.second < second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        Some(slot)
    }

    /// The newest second the window holds.
    fn newest(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.requests > 0 || s.charged > 0)
            .map(|s| s.second)
            .max()
    }

    /// The slot a charge made at `now_secs` goes to: the present, or the next second if another
    /// worker already charged it (both read one clock, at slightly different moments). Charging
    /// an older slot than the newest would escape the check of the windows holding the newest.
    /// (A clock that stepped back by more than that restarts the window.)
    pub fn charge_slot(&self, now_secs: u64) -> u64 {
        match self.newest() {
            Some(newest) if newest == now_secs.saturating_add(1) => newest,
            _ => now_secs,
        }
    }

    /// Counts `requests` requests that arrived in `second` (nothing if it has left the window).
    pub fn deposit(&mut self, second: u64, requests: u32) {
        if requests == 0 {
            return;
        }
        if let Some(slot) = self.slot_mut(second) {
            slot.requests = slot.requests.saturating_add(requests);
        }
    }

    /// Gives back `retries` charged in `second` and not used.
    pub fn refund(&mut self, second: u64, retries: u32) {
        if retries == 0 {
            return;
        }
        if let Some(slot) = self.slot_mut(second) {
            slot.charged = slot.charged.saturating_sub(retries);
        }
    }

    /// Charges `retries` to slot `second`.
    pub fn charge(&mut self, second: u64, retries: u32) {
        if retries == 0 {
            return;
        }
        if let Some(slot) = self.slot_mut(second) {
            slot.charged = slot.charged.saturating_add(retries);
        }
    }

    /// How many retries may be charged to slot `second` now: the least slack of the runs of
    /// slots `second − j ..= second`, `j` = 0 to 9 (the windows holding `second`, whose later
    /// slots are still empty).
    pub fn available(&self, allowance: &Allowance, second: u64) -> u64 {
        let mut requests = 0u64;
        let mut charged = 0u64;
        let mut least = u64::MAX;
        for back in 0..WINDOW_SECS {
            if let Some(slot) = second.checked_sub(back).and_then(|s| self.get(s)) {
                requests += u64::from(slot.requests);
                charged += u64::from(slot.charged);
            }
            least = least.min(allowance.of(requests).saturating_sub(charged));
        }
        least
    }

    /// Requests and charges of `second`, for tests.
    pub fn counts(&self, second: u64) -> (u32, u32) {
        self.get(second).map_or((0, 0), |s| (s.requests, s.charged))
    }
}

/// Retries given to one request, and the slot they were charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The slot charged.
    pub slot: u64,
    /// Retries allowed (`x-envoy-max-retries`).
    pub retries: u32,
}

/// What [`Ledger::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The retries given; `None`: none.
    pub grant: Option<Grant>,
    /// The shared window could not be written (contention or a host error): only the lease
    /// already held was used.
    pub store_failed: bool,
}

/// Retries charged to the window and not granted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    slot: u64,
    left: u32,
}

/// What this worker owes the window for one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    slot: u64,
    requests: u32,
    refunds: u32,
}

/// The window had nothing to lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dry {
    slot: u64,
    at: Time,
    /// This worker's requests since, in millionths of a retry they allow.
    credit: u64,
}

/// One worker's side of the budget: its lease, and the requests and refunds it has not
/// written to the window yet. Holds at most one entry per second of the window.
#[derive(Debug, Default)]
pub struct Ledger {
    lease: Option<Lease>,
    pending: Vec<Pending>,
    dry: Option<Dry>,
}

impl Ledger {
    /// Counts a request arriving at `now` and gives it up to `want` retries, charged at once:
    /// from the lease, else from a new one; fewer if the budget has fewer left.
    pub fn admit(
        &mut self,
        store: &dyn SharedStore,
        allowance: &Allowance,
        want: u32,
        now: Time,
    ) -> Admission {
        let second = now.as_secs();
        self.owe(second, second, 1, 0);
        if let Some(dry) = self.dry.as_mut().filter(|d| d.slot == second) {
            dry.credit = dry.credit.saturating_add(allowance.ratio_micros);
        }
        let mut store_failed = false;
        if want > 0 && self.usable(second) < want && self.may_lease(now) {
            let target = want.saturating_mul(LEASE_GRANTS);
            store_failed = self.lease(store, allowance, target, now).is_err();
        }
        let grant = match self.lease.as_mut().filter(|l| l.slot >= second) {
            Some(lease) if want > 0 && lease.left > 0 => {
                let retries = want.min(lease.left);
                lease.left -= retries;
                Some(Grant {
                    slot: lease.slot,
                    retries,
                })
            }
            _ => None,
        };
        Admission {
            grant,
            store_failed,
        }
    }

    /// Gives back what a grant did not use.
    pub fn refund(&mut self, grant: Grant, used: u32, now: Time) {
        let unused = grant.retries.saturating_sub(used);
        if unused == 0 {
            return;
        }
        match self.lease.as_mut() {
            // Charged to the lease's slot: back into the lease (reusable while it is current).
            Some(lease) if lease.slot == grant.slot => {
                lease.left = lease.left.saturating_add(unused);
            }
            _ => {
                self.owe(now.as_secs(), grant.slot, 0, unused);
            }
        }
    }

    /// Writes what this worker owes the window: its requests, refunds, and the rest of a
    /// lease whose second has passed. Kept for the next try if the write fails.
    pub fn flush(&mut self, store: &dyn SharedStore, now: Time) -> Result<(), StoreError> {
        let second = now.as_secs();
        self.forget_before(second);
        let stale = self.lease.filter(|l| l.slot < second);
        if self.pending.is_empty() && stale.is_none_or(|l| l.left == 0) {
            if stale.is_some() {
                self.lease = None;
            }
            return Ok(());
        }
        let pending = &self.pending;
        store::update_remembered(store, KEY, MAX_ATTEMPTS, |bytes| {
            let mut window = Window::decode(bytes);
            settle(&mut window, pending);
            if let Some(lease) = stale {
                window.refund(lease.slot, lease.left);
            }
            (Some(window.encode()), ())
        })?;
        self.pending.clear();
        if stale.is_some() {
            self.lease = None;
        }
        Ok(())
    }

    /// Retries the lease can grant in `second`.
    fn usable(&self, second: u64) -> u32 {
        self.lease
            .filter(|l| l.slot >= second)
            .map_or(0, |l| l.left)
    }

    /// Whether asking the window for a lease may find anything.
    fn may_lease(&self, now: Time) -> bool {
        match self.dry {
            Some(dry) if dry.slot == now.as_secs() => {
                dry.credit >= MICROS || now.since(dry.at) >= RECHECK
            }
            _ => true,
        }
    }

    /// In one write: settles what is owed, gives back a lease of a past second, and leases up
    /// to `target` retries (counting what the current lease still holds).
    fn lease(
        &mut self,
        store: &dyn SharedStore,
        allowance: &Allowance,
        target: u32,
        now: Time,
    ) -> Result<(), StoreError> {
        let second = now.as_secs();
        self.forget_before(second);
        let (pending, old) = (&self.pending, self.lease);
        let lease = store::update_remembered(store, KEY, MAX_ATTEMPTS, |bytes| {
            let mut window = Window::decode(bytes);
            settle(&mut window, pending);
            let slot = window.charge_slot(second);
            let held = match old {
                Some(lease) if lease.slot == slot => lease.left,
                Some(lease) => {
                    window.refund(lease.slot, lease.left);
                    0
                }
                None => 0,
            };
            let available = window.available(allowance, slot);
            let take = u32::try_from(available)
                .unwrap_or(u32::MAX)
                .min(target.saturating_sub(held));
            window.charge(slot, take);
            (
                Some(window.encode()),
                Lease {
                    slot,
                    left: held.saturating_add(take),
                },
            )
        })?;
        self.pending.clear();
        self.lease = Some(lease);
        self.dry = (lease.left < target).then_some(Dry {
            slot: second,
            at: now,
            credit: 0,
        });
        Ok(())
    }

    /// Adds `requests` and `refunds` to what is owed to slot `second` (nothing once it has
    /// left the window at `now_secs`).
    fn owe(&mut self, now_secs: u64, second: u64, requests: u32, refunds: u32) {
        if let Some(p) = self.pending.iter_mut().rev().find(|p| p.slot == second) {
            p.requests = p.requests.saturating_add(requests);
            p.refunds = p.refunds.saturating_add(refunds);
            return;
        }
        self.forget_before(now_secs);
        if second.saturating_add(WINDOW_SECS) > now_secs {
            self.pending.push(Pending {
                slot: second,
                requests,
                refunds,
            });
        }
    }

    /// Drops what is owed to seconds that have left the window (nothing would take it).
    fn forget_before(&mut self, second: u64) {
        let oldest = second.saturating_sub(WINDOW_SECS - 1);
        self.pending.retain(|p| p.slot >= oldest);
    }
}

/// Writes what a worker owes into the window.
fn settle(window: &mut Window, pending: &[Pending]) {
    for p in pending {
        window.deposit(p.slot, p.requests);
        window.refund(p.slot, p.refunds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::store::{Cas, MemStore, Written};
    use std::cell::Cell;

    const NOW: u64 = 1_800_000_000;

    fn allowance(ratio: f64, min_per_second: u32) -> Allowance {
        Allowance::new(&Budget {
            ratio,
            min_per_second,
        })
    }

    fn at(ms: u64) -> Time {
        Time::from_nanos(NOW * 1_000_000_000 + ms * 1_000_000)
    }

    fn window(store: &MemStore) -> Window {
        let stored = store.get(KEY).unwrap();
        Window::decode(stored.as_ref().map(|(b, _)| b.as_slice()))
    }

    fn retries(admission: Admission) -> u32 {
        admission.grant.map_or(0, |g| g.retries)
    }

    /// Counts reads.
    struct Counting<'a>(&'a MemStore, Cell<u32>);

    impl SharedStore for Counting<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.get(key)
        }
        fn set(&self, key: &str, v: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
            self.0.set(key, v, cas)
        }
    }

    #[test]
    fn the_allowance_is_the_ratio_s_share_rounded_down_plus_the_reserve() {
        assert_eq!(allowance(0.7, 0).of(10), 7, "0.7 means 7 in 10");
        assert_eq!(allowance(0.2, 1).of(4), 10, "0.8 rounds down");
        assert_eq!(allowance(0.2, 1).of(5), 11);
        assert_eq!(allowance(1.0, 0).of(3), 3);
        assert_eq!(allowance(0.0, 2).of(1_000), 20);
    }

    #[test]
    fn a_reserve_alone_is_granted_once_per_ten_seconds_cut_to_what_is_left() {
        let store = MemStore::new();
        let mut ledger = Ledger::default();
        let a = allowance(0.0, 1);
        // Four requests asking for 3 each: 3 + 3 + 3 + the 1 left of 10.
        let given: Vec<u32> = (0..5)
            .map(|i| retries(ledger.admit(&store, &a, 3, at(i * 10))))
            .collect();
        assert_eq!(given, [3, 3, 3, 1, 0]);
        // Used in full: nothing comes back, and for nine more seconds nothing is granted.
        for second in 1..10 {
            ledger.flush(&store, at(second * 1000)).unwrap();
            assert_eq!(
                retries(ledger.admit(&store, &a, 3, at(second * 1000 + 1))),
                0
            );
        }
        // Ten seconds on, the first second has left every window holding the new one.
        assert_eq!(retries(ledger.admit(&store, &a, 3, at(10_000))), 3);
    }

    #[test]
    fn unused_retries_come_back_to_the_lease_then_to_the_window() {
        let store = MemStore::new();
        let mut ledger = Ledger::default();
        let a = allowance(0.0, 1);
        let first = ledger.admit(&store, &a, 2, at(0)).grant.unwrap();
        assert_eq!(
            first,
            Grant {
                slot: NOW,
                retries: 2
            }
        );
        // A lease of 4 grants of 2 was taken from the reserve of 10, and the request counted.
        assert_eq!(window(&store).counts(NOW), (1, 8));
        ledger.refund(first, 0, at(5));
        // Back in the lease: the next 4 grants need no new lease.
        for _ in 0..4 {
            assert_eq!(retries(ledger.admit(&store, &a, 2, at(6))), 2);
        }
        let used_one = Grant {
            slot: NOW,
            retries: 2,
        };
        ledger.refund(used_one, 1, at(7));
        // A second later the lease is stale: its remainder and the requests go to the window.
        ledger.flush(&store, at(1000)).unwrap();
        assert_eq!(window(&store).counts(NOW), (5, 7));
        // A refund of a past second goes straight to what is owed to that second.
        ledger.refund(used_one, 0, at(1500));
        ledger.flush(&store, at(1600)).unwrap();
        assert_eq!(window(&store).counts(NOW), (5, 5));
    }

    #[test]
    fn a_second_cannot_spend_requests_that_later_windows_will_not_hold() {
        let store = MemStore::new();
        let mut ledger = Ledger::default();
        let a = allowance(0.5, 0);
        // A burst of 100 requests wanting no retries, nine seconds ago.
        for _ in 0..100 {
            ledger.admit(&store, &a, 0, at(0));
        }
        ledger.flush(&store, at(100)).unwrap();
        // Now the window ending now holds 100 requests and no retries: "retries < 50" holds,
        // but the window starting now holds nothing to pay for a retry with.
        let now = at(9_000);
        assert_eq!(window(&store).available(&a, NOW + 9), 0);
        assert_eq!(retries(ledger.admit(&store, &a, 1, now)), 0);
        // Requests of this second pay: two more make three, worth one retry.
        assert_eq!(retries(ledger.admit(&store, &a, 1, at(9_001))), 0);
        assert_eq!(retries(ledger.admit(&store, &a, 1, at(9_002))), 1);
    }

    #[test]
    fn two_workers_share_one_allowance() {
        let store = MemStore::new();
        let (mut one, mut two) = (Ledger::default(), Ledger::default());
        let a = allowance(0.0, 2);
        let mut total = 0;
        for i in 0..20 {
            let ledger = if i % 2 == 0 { &mut one } else { &mut two };
            total += retries(ledger.admit(&store, &a, 3, at(i)));
        }
        assert_eq!(total, 20, "the reserve of 2 per second over ten seconds");
        one.flush(&store, at(1000)).unwrap();
        two.flush(&store, at(1000)).unwrap();
        assert_eq!(window(&store).counts(NOW), (20, 20));
    }

    #[test]
    fn a_worker_that_found_nothing_asks_again_only_when_it_could_find_something() {
        let mem = MemStore::new();
        let store = Counting(&mem, Cell::new(0));
        let mut ledger = Ledger::default();
        let a = allowance(0.1, 0);
        // Nothing to lease; then ten more requests of this worker pay for one retry, and it
        // asks again only then.
        let given: Vec<u32> = (0..31)
            .map(|i| retries(ledger.admit(&store, &a, 2, at(i))))
            .collect();
        let granted_at: Vec<usize> = (0..31).filter(|&i| given[i] > 0).collect();
        assert_eq!(granted_at, [10, 20, 30]);
        assert!(given.iter().all(|&g| g <= 1), "{given:?}");
        assert_eq!(
            store.1.get(),
            4,
            "one read at first, then one per ten requests"
        );
        // After RECHECK it asks again whatever its credit (other workers may have paid).
        ledger.admit(&store, &a, 2, at(30 + 100));
        assert_eq!(RECHECK, Duration::from_millis(100));
        assert_eq!(store.1.get(), 5);
    }

    /// The cost that matters: each read-modify-write of the window is two host calls and a
    /// value both workers contend for.
    #[test]
    fn the_window_is_written_per_lease_not_per_request() {
        let a = allowance(0.1, 10);
        // Healthy: 1,000 requests in a second, each answered after one attempt. Grants and
        // refunds go through the lease: one write, and one more at the tick.
        let mem = MemStore::new();
        let store = Counting(&mem, Cell::new(0));
        let mut ledger = Ledger::default();
        for i in 0..1_000 {
            let grant = ledger.admit(&store, &a, 2, at(i)).grant.unwrap();
            ledger.refund(grant, 0, at(i));
        }
        ledger.flush(&store, at(1_000)).unwrap();
        assert_eq!(store.1.get(), 2);
        assert_eq!(window(&mem).counts(NOW), (1_000, 0));
        // An outage: every retry used, the budget binding. A write per ten requests (what
        // ten requests pay for at 0.1), not per request.
        let mem = MemStore::new();
        let store = Counting(&mem, Cell::new(0));
        let mut ledger = Ledger::default();
        let mut granted = 0;
        for i in 0..1_000 {
            granted += retries(ledger.admit(&store, &a, 2, at(i)));
        }
        ledger.flush(&store, at(1_000)).unwrap();
        assert_eq!(window(&mem).counts(NOW), (1_000, granted));
        // 0.1 × 1,000 requests + the reserve of 100, less what the last few requests would
        // have paid for had the worker asked again.
        assert!((195..=200).contains(&granted), "{granted}");
        assert!(store.1.get() <= 120, "{} writes", store.1.get());
    }

    #[test]
    fn a_lease_lost_to_a_race_is_taken_from_the_fresh_window() {
        /// Another worker leases between our read and our write, once.
        struct Racing<'a> {
            mem: &'a MemStore,
            other: std::cell::RefCell<Ledger>,
            armed: Cell<bool>,
        }
        impl SharedStore for Racing<'_> {
            fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
                let seen = self.mem.get(key);
                if self.armed.replace(false) {
                    let a = allowance(0.0, 1);
                    let got = self.other.borrow_mut().admit(self.mem, &a, 3, at(0));
                    assert_eq!(got.grant.unwrap().retries, 3);
                }
                seen
            }
            fn set(&self, key: &str, v: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
                self.mem.set(key, v, cas)
            }
        }
        let mem = MemStore::new();
        let store = Racing {
            mem: &mem,
            other: std::cell::RefCell::new(Ledger::default()),
            armed: Cell::new(true),
        };
        let mut ledger = Ledger::default();
        // The other worker's lease took 10 of the 10; ours must see that, not overwrite it.
        assert_eq!(
            retries(ledger.admit(&store, &allowance(0.0, 1), 3, at(1))),
            0
        );
        assert_eq!(window(&mem).counts(NOW), (2, 10));
    }

    #[test]
    fn threads_racing_for_leases_never_grant_more_than_the_allowance() {
        let store = std::sync::Arc::new(MemStore::new());
        let a = allowance(0.1, 1);
        let granted: u32 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let store = store.clone();
                    scope.spawn(move || {
                        let mut ledger = Ledger::default();
                        let mut granted = 0;
                        // 5,000 requests in half a second.
                        for i in 0..5_000 {
                            granted += retries(ledger.admit(store.as_ref(), &a, 3, at(i / 10)));
                        }
                        ledger.flush(store.as_ref(), at(1000)).unwrap();
                        granted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let (requests, charged) = window(&store).counts(NOW);
        assert_eq!(requests, 10_000);
        assert_eq!(charged, granted, "every lease granted or given back");
        assert!(granted <= 1_010, "{granted} retries for 10,000 requests");
        assert!(granted >= 900, "{granted}: the budget was barely used");
    }

    #[test]
    fn a_charge_goes_to_the_newest_second_another_worker_has_started() {
        let mut w = Window::default();
        w.charge(NOW + 1, 1);
        assert_eq!(w.charge_slot(NOW), NOW + 1);
        assert_eq!(w.charge_slot(NOW + 1), NOW + 1);
        assert_eq!(w.charge_slot(NOW + 3), NOW + 3);
        // A clock stepped back by more than a second starts again from the present.
        assert_eq!(w.charge_slot(NOW - 5), NOW - 5);
    }

    #[test]
    fn round_trips_and_junk_reads_empty() {
        let mut w = Window::default();
        w.deposit(NOW, 1);
        w.charge(NOW + 1, 2);
        assert_eq!(Window::decode(Some(&w.encode())), w);
        assert_eq!(Window::decode(Some(&[1, 2, 3])), Window::default());
    }

    #[test]
    fn what_is_owed_to_a_second_that_left_the_window_is_dropped() {
        let mut w = Window::default();
        w.deposit(NOW + 10, 1);
        w.deposit(NOW, 5);
        w.refund(NOW, 1);
        assert_eq!(w.counts(NOW), (0, 0));
        assert_eq!(w.counts(NOW + 10), (1, 0));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Window::decode(Some(&bytes));
        }
    }
}
