//! A worker's memory of the shared values it last read or wrote, so that a read-modify-write
//! nobody else interfered with costs one host call (the conditional write) instead of two.
//!
//! Why a remembered token can be trusted: the host hands every write a fresh CAS from one
//! counter that only counts up (proxy-wasm-cpp-host, which Envoy embeds). A write of ours is
//! therefore given a token at least one above the newest token this worker has seen, and any
//! later write to the key is given a larger one. So if a write conditioned on that lower bound
//! succeeds, the key's token was exactly it: nobody wrote the key after us, and the bytes we
//! remember are the bytes stored. When the bound is too low (someone wrote anything, anywhere,
//! in between), the write is refused and the caller reads for real; nothing is ever lost,
//! a guess only costs a refused write.
//!
//! A host whose tokens are counted per key (older proxy-wasm hosts) would break that argument,
//! so [`Remembering::new`] first checks, with two keys of its own, that tokens grow across
//! keys; otherwise it remembers only what it read (a read's token is always exact).
//!
//! Two more bounds keep it honest: the counter is 32 bits, so memory is dropped at least every
//! second ([`Remembering::forget`], called on each tick; no host makes four billion writes a
//! second); and a key whose guesses keep failing (other workers write it all the time) is read
//! for real for a growing number of updates before memory is tried again, so contention costs
//! about one refused write in 64 updates.

use super::{Cas, SharedStore, StoreError, Written};
use std::cell::{Cell, RefCell};

/// How many keys a worker remembers, by hash (one slot each; a colliding key takes the slot).
const SLOTS: usize = 64;

/// Larger values (a key set a key server sent) are not remembered: per-request records are far
/// smaller, and the memory of a worker stays under `SLOTS` times this.
const MAX_VALUE: usize = 4096;

/// The longest run of real reads after failed guesses before memory is tried again.
const MAX_SKIP: u8 = 63;

/// A [`SharedStore`] that remembers, per worker, the latest value and token of recently used
/// keys (see the module docs).
#[derive(Debug)]
pub struct Remembering<S> {
    inner: S,
    slots: RefCell<Vec<Option<Memory>>>,
    /// The newest token this worker knows the host to have handed out (a lower bound of the
    /// host's counter).
    newest: Cell<Cas>,
    /// Whether the host's tokens come from one counter (checked once by [`Remembering::new`]):
    /// only then are our own writes remembered.
    one_counter: bool,
}

#[derive(Debug)]
struct Memory {
    key: String,
    value: Vec<u8>,
    /// Current exactly when nobody has written the key since we read or wrote it.
    cas: Cas,
    /// The memory was handed out since the last real read.
    lent: bool,
    /// Guesses that failed in a row.
    misses: u8,
    /// Real reads still to make before memory is lent again.
    skip: u8,
}

/// FNV-1a: short keys, one worker, no adversary who could aim collisions at a 64-slot memory
/// to do more than make us read.
fn slot_of(key: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    usize::try_from(hash).unwrap_or(0) % SLOTS
}

impl<S: SharedStore> Remembering<S> {
    /// Wraps `inner`, first checking how the host counts tokens with two keys named after
    /// `nonce` (distinct per worker, e.g. its random seed). Shared data cannot be deleted: the
    /// check leaves two one-byte keys per worker start.
    pub fn new(inner: S, nonce: u64) -> Self {
        let store = Remembering {
            inner,
            slots: RefCell::new((0..SLOTS).map(|_| None).collect()),
            newest: Cell::new(0),
            one_counter: false,
        };
        let one_counter = store.host_counts_across_keys(nonce).unwrap_or(false);
        if !one_counter {
            log::info!(
                "shared data: this host does not hand out CAS tokens from one counter; every \
                 update reads its value first"
            );
        }
        Remembering {
            one_counter,
            ..store
        }
    }

    /// Writes `a`, reads its token, writes `b`, reads its token, writes `a` again, reads it.
    /// One counter gives `a < b < a'`; tokens per key give `a' = a + 1 <= b` (or equal tokens
    /// for the two first writes).
    fn host_counts_across_keys(&self, nonce: u64) -> Result<bool, StoreError> {
        let a = format!("store-probe/{nonce:016x}/a");
        let b = format!("store-probe/{nonce:016x}/b");
        let token = |key: &str| -> Result<Option<Cas>, StoreError> {
            Ok(self.get(key)?.map(|(_, cas)| cas))
        };
        self.inner.set(&a, b"1", None)?;
        let Some(first) = token(&a)? else {
            return Ok(false);
        };
        self.inner.set(&b, b"1", None)?;
        let Some(second) = token(&b)? else {
            return Ok(false);
        };
        if self.inner.set(&a, b"1", Some(first))? != Written::Yes {
            return Ok(false);
        }
        let Some(third) = token(&a)? else {
            return Ok(false);
        };
        Ok(first < second && second < third)
    }

    /// Drops every memory (called at least once a second: see the module docs).
    pub fn forget(&self) {
        if let Ok(mut slots) = self.slots.try_borrow_mut() {
            slots.iter_mut().for_each(|slot| *slot = None);
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn saw(&self, cas: Cas) {
        let newest = self.newest.get();
        // Half the range apart reads as the counter having wrapped: start again from it.
        if cas > newest || newest - cas > u32::MAX / 2 {
            self.newest.set(cas);
        }
    }

    /// Runs `f` on the slot of `key`, if the memory is free (one callback at a time, so it
    /// always is).
    fn with_slot<R>(&self, key: &str, f: impl FnOnce(&mut Option<Memory>) -> R) -> Option<R> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        slots.get_mut(slot_of(key)).map(f)
    }

    /// Remembers `value` with `cas` for `key`, keeping the key's record of failed guesses.
    fn remember(&self, key: &str, value: &[u8], cas: Cas, guessed_right: bool) {
        if value.len() > MAX_VALUE {
            self.with_slot(key, |slot| {
                if slot.as_ref().is_some_and(|m| m.key == key) {
                    *slot = None;
                }
            });
            return;
        }
        self.with_slot(key, |slot| match slot {
            Some(memory) if memory.key == key => {
                memory.value.clear();
                memory.value.extend_from_slice(value);
                memory.cas = cas;
                if guessed_right {
                    memory.misses = 0;
                }
                memory.lent = false;
            }
            _ => {
                *slot = Some(Memory {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    cas,
                    lent: false,
                    misses: 0,
                    skip: 0,
                });
            }
        });
    }
}

impl<S: SharedStore> SharedStore for Remembering<S> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        let read = self.inner.get(key)?;
        if let Some((value, cas)) = &read {
            self.saw(*cas);
            self.remember(key, value, *cas, false);
        }
        Ok(read)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
        let written = self.inner.set(key, value, cas)?;
        match written {
            Written::Yes if self.one_counter => {
                let guessed_right = self
                    .with_slot(key, |slot| {
                        slot.as_ref()
                            .is_some_and(|m| m.key == key && m.lent && Some(m.cas) == cas)
                    })
                    .unwrap_or(false);
                // Our write's token is at least one above the newest we knew of.
                match self.newest.get().checked_add(1) {
                    Some(lower_bound) => {
                        self.newest.set(lower_bound);
                        self.remember(key, value, lower_bound, guessed_right);
                    }
                    None => self.forget(),
                }
            }
            Written::Yes => {
                // The new token is unknown on this host: forget the old one.
                self.with_slot(key, |slot| {
                    if slot.as_ref().is_some_and(|m| m.key == key) {
                        *slot = None;
                    }
                });
            }
            Written::CasMismatch => {
                self.with_slot(key, |slot| {
                    if let Some(memory) = slot.as_mut().filter(|m| m.key == key) {
                        memory.cas = 0;
                        if memory.lent {
                            memory.misses = memory.misses.saturating_add(1);
                            // A lone miss (some other write slipped in) costs nothing more;
                            // each further one in a row doubles the real reads: 0, 1, 3, 7, ...
                            memory.skip = 1u8
                                .checked_shl(u32::from(memory.misses) - 1)
                                .map_or(MAX_SKIP, |n| n - 1)
                                .min(MAX_SKIP);
                        }
                        memory.lent = false;
                    }
                });
            }
        }
        Ok(written)
    }

    fn remembered(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.with_slot(key, |slot| {
            let memory = slot.as_mut().filter(|m| m.key == key && m.cas != 0)?;
            if memory.skip > 0 {
                memory.skip -= 1;
                return None;
            }
            memory.lent = true;
            Some((memory.value.clone(), memory.cas))
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::add_one;
    use crate::store::{MemStore, update, update_remembered};

    /// Counts the host calls made through it.
    struct Counting<'a> {
        inner: &'a dyn SharedStore,
        gets: Cell<u32>,
        sets: Cell<u32>,
    }

    impl<'a> Counting<'a> {
        fn new(inner: &'a dyn SharedStore) -> Self {
            Counting {
                inner,
                gets: Cell::new(0),
                sets: Cell::new(0),
            }
        }
        fn calls(&self) -> (u32, u32) {
            let calls = (self.gets.get(), self.sets.get());
            self.gets.set(0);
            self.sets.set(0);
            calls
        }
    }

    impl SharedStore for Counting<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            self.gets.set(self.gets.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    /// Older hosts: a key's token counts up on its own.
    #[derive(Default)]
    struct PerKeyTokens {
        map: RefCell<std::collections::HashMap<String, (Vec<u8>, Cas)>>,
    }

    impl SharedStore for PerKeyTokens {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            Ok(self.map.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
            let mut map = self.map.borrow_mut();
            let next = match map.get(key) {
                Some((_, current)) if cas.is_some_and(|c| c != 0 && c != *current) => {
                    return Ok(Written::CasMismatch);
                }
                Some((_, current)) => current + 1,
                None => 1,
            };
            map.insert(key.to_owned(), (value.to_vec(), next));
            Ok(Written::Yes)
        }
    }

    fn value(store: &dyn SharedStore, key: &str) -> u64 {
        update(store, key, 1, |v| (None, add_one(v).1 - 1)).unwrap()
    }

    #[test]
    fn an_uncontended_update_is_one_write() {
        let mem = MemStore::new();
        let host = Counting::new(&mem);
        let worker = Remembering::new(&host, 1);
        host.calls();
        assert_eq!(update_remembered(&worker, "n", 3, add_one).unwrap(), 1);
        assert_eq!(
            host.calls(),
            (1, 1),
            "nothing remembered yet: a read, then the write"
        );
        for expected in 2..=10 {
            assert_eq!(
                update_remembered(&worker, "n", 3, add_one).unwrap(),
                expected
            );
            assert_eq!(host.calls(), (0, 1));
        }
        // Other keys written in between do not spoil it: our own writes keep the bound exact.
        update_remembered(&worker, "other", 3, add_one).unwrap();
        assert_eq!(update_remembered(&worker, "n", 3, add_one).unwrap(), 11);
        assert_eq!(host.calls(), (1, 2));
    }

    #[test]
    fn a_read_is_remembered_with_its_exact_token() {
        let mem = MemStore::new();
        update(&mem, "n", 1, add_one).unwrap();
        let host = Counting::new(&mem);
        let worker = Remembering::new(&host, 1);
        host.calls();
        worker.get("n").unwrap();
        assert_eq!(update_remembered(&worker, "n", 3, add_one).unwrap(), 2);
        assert_eq!(host.calls(), (1, 1));
    }

    #[test]
    fn another_workers_write_is_never_lost() {
        let mem = MemStore::new();
        let ours = Remembering::new(&mem, 1);
        let theirs = Remembering::new(&mem, 2);
        for round in 0..50u64 {
            assert_eq!(
                update_remembered(&ours, "n", 8, add_one).unwrap(),
                2 * round + 1
            );
            assert_eq!(
                update_remembered(&theirs, "n", 8, add_one).unwrap(),
                2 * round + 2
            );
        }
        assert_eq!(value(&mem, "n"), 100);
    }

    #[test]
    fn a_write_elsewhere_before_ours_makes_the_guess_fail_safely() {
        let mem = MemStore::new();
        let host = Counting::new(&mem);
        let ours = Remembering::new(&host, 1);
        // Another worker writes some other key before our first write: the token our write
        // gets is above the bound we know, so our guess for "n" is too low.
        mem.set("elsewhere", b"x", None).unwrap();
        update_remembered(&ours, "n", 3, add_one).unwrap();
        host.calls();
        assert_eq!(update_remembered(&ours, "n", 3, add_one).unwrap(), 2);
        assert_eq!(
            host.calls(),
            (1, 2),
            "the guess, refused; a read; the write"
        );
        // The read put the bound right again.
        assert_eq!(update_remembered(&ours, "n", 3, add_one).unwrap(), 3);
        assert_eq!(host.calls(), (0, 1));
    }

    #[test]
    fn contention_turns_guessing_off_for_a_while() {
        let mem = MemStore::new();
        let host = Counting::new(&mem);
        let ours = Remembering::new(&host, 1);
        let theirs = Remembering::new(&mem, 2);
        host.calls();
        let mut refused = 0;
        for _ in 0..200 {
            update_remembered(&ours, "n", 8, add_one).unwrap();
            update_remembered(&theirs, "n", 8, add_one).unwrap();
            let (_, sets) = host.calls();
            refused += sets - 1;
        }
        assert!(
            refused <= 12,
            "{refused} refused guesses in 200 contended updates"
        );
        assert_eq!(value(&mem, "n"), 400);
    }

    #[test]
    fn a_host_counting_per_key_gets_no_guesses() {
        let per_key = PerKeyTokens::default();
        let host = Counting::new(&per_key);
        let worker = Remembering::new(&host, 1);
        host.calls();
        for expected in 1..=5 {
            assert_eq!(
                update_remembered(&worker, "n", 3, add_one).unwrap(),
                expected
            );
            assert_eq!(host.calls(), (1, 1));
        }
        // A read's token is exact on any host.
        worker.get("n").unwrap();
        host.calls();
        assert_eq!(update_remembered(&worker, "n", 3, add_one).unwrap(), 6);
        assert_eq!(host.calls(), (0, 1));
    }

    #[test]
    fn nothing_to_write_is_decided_again_on_a_real_read() {
        let mem = MemStore::new();
        let ours = Remembering::new(&mem, 1);
        update_remembered(&ours, "n", 3, add_one).unwrap();
        // Someone else raises it; our memory still says 1.
        update(&mem, "n", 1, add_one).unwrap();
        let seen = update_remembered(&ours, "n", 3, |v| (None, add_one(v).1 - 1)).unwrap();
        assert_eq!(seen, 2);
    }

    #[test]
    fn large_values_are_not_remembered() {
        let mem = MemStore::new();
        let host = Counting::new(&mem);
        let worker = Remembering::new(&host, 1);
        let big = vec![7u8; MAX_VALUE + 1];
        worker.set("doc", &big, None).unwrap();
        assert_eq!(worker.remembered("doc"), None);
        worker.get("doc").unwrap();
        assert_eq!(worker.remembered("doc"), None);
        worker.set("doc", b"small", None).unwrap();
        assert!(worker.remembered("doc").is_some());
    }

    #[test]
    fn forgetting_drops_every_memory() {
        let mem = MemStore::new();
        let host = Counting::new(&mem);
        let worker = Remembering::new(&host, 1);
        update_remembered(&worker, "n", 3, add_one).unwrap();
        worker.forget();
        host.calls();
        update_remembered(&worker, "n", 3, add_one).unwrap();
        assert_eq!(host.calls(), (1, 1));
    }

    proptest::proptest! {
        /// Any interleaving of three workers' updates (and foreign writes to other keys) loses
        /// no increment.
        #[test]
        fn no_interleaving_loses_an_increment(
            steps in proptest::collection::vec((0usize..4, 0usize..3), 1..200)
        ) {
            let mem = MemStore::new();
            let workers: Vec<Remembering<&MemStore>> =
                (0..3u64).map(|n| Remembering::new(&mem, n)).collect();
            let keys = ["a", "b", "c"];
            let mut expected = [0u64; 3];
            for (who, key) in steps {
                let name = keys.get(key).copied().unwrap_or("a");
                match workers.get(who) {
                    Some(worker) => {
                        update_remembered(worker, name, 64, add_one).unwrap();
                        if let Some(e) = expected.get_mut(key) {
                            *e += 1;
                        }
                    }
                    None => {
                        mem.set("foreign", b"x", None).unwrap();
                    }
                }
            }
            for (key, want) in keys.iter().zip(expected) {
                proptest::prop_assert_eq!(value(&mem, key), want);
            }
        }
    }
}
