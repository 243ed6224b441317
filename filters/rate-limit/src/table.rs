//! Where limits live: a fixed table of buckets in shared data, so memory stays bounded whatever
//! the number of distinct clients.
//!
//! Shared data can never be deleted, so one key per client would grow without end (a scan of
//! random client IPs would exhaust Envoy's memory). Instead each rule has `buckets` shared-data
//! values (`rl1/<rule>/<index>`), and a client key hashes to one of them. A bucket holds up to
//! [`WAYS`] entries, each a 64-bit fingerprint of the client key and its GCRA state, so one
//! compare-and-swap reads and writes a whole bucket. A new key takes a free place, or the place
//! of an idle key (whose bucket is full again, so forgetting it loses nothing), or, when all
//! [`WAYS`] keys are busy, the place of the key closest to idle (counted as an eviction: that
//! client starts again with a full bucket).
//!
//! Client keys are never stored, only their fingerprint: SHA-256, so that no client can craft a
//! key colliding with another client's (a fast unkeyed hash would let one exhaust another's
//! limit). Two keys share a fingerprint with odds of about 2⁻⁶⁴.

use crate::gcra::{Limit, Tat};
use sha2::{Digest, Sha256};

/// Entries per bucket.
pub const WAYS: usize = 8;

/// Bytes per entry: fingerprint (8), TAT units (16), TAT scale (4), little-endian.
const ENTRY_BYTES: usize = 28;

/// A client key, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    /// What the bucket stores to recognise the key.
    pub fingerprint: u64,
    /// Chooses the bucket.
    pub spread: u64,
}

impl KeyHash {
    /// Hashes a key's bytes (the caller separates its parts unambiguously).
    pub fn of(material: &[u8]) -> Self {
        let digest = Sha256::digest(material);
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            if let Some(src) = digest.get(at..at + 8) {
                bytes.copy_from_slice(src);
            }
            u64::from_le_bytes(bytes)
        };
        Self {
            fingerprint: word(0),
            spread: word(8),
        }
    }
}

/// The fingerprints of recently seen keys, per worker: a hot key (one client, or a rule-wide
/// bucket) is hashed once, not on every request. Direct-mapped: a key evicts whatever shared
/// its slot, so the memo never grows.
#[derive(Debug)]
pub struct HashMemo {
    slots: Vec<Option<(Box<[u8]>, KeyHash)>>,
    hasher: foldhash::fast::FixedState,
}

impl HashMemo {
    /// A memo of `slots` keys.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: vec![None; slots.max(1)],
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    /// [`KeyHash::of`] `material`, remembered.
    pub fn hash(&mut self, material: &[u8]) -> KeyHash {
        use std::hash::BuildHasher;
        let index = usize::try_from(self.hasher.hash_one(material)).unwrap_or(0) % self.slots.len();
        match self.slots.get_mut(index) {
            Some(Some((known, hash))) if **known == *material => *hash,
            Some(slot) => {
                let hash = KeyHash::of(material);
                *slot = Some((material.into(), hash));
                hash
            }
            None => KeyHash::of(material),
        }
    }
}

/// One rule's table: how many buckets, and how they are named in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    prefix: String,
    buckets: u64,
}

impl Table {
    /// The table of the rule `rule`, holding at least `max_keys` keys (rounded up to a
    /// multiple of [`WAYS`]).
    pub fn new(rule: &str, max_keys: u64) -> Self {
        Self {
            prefix: format!("rl1/{rule}/"),
            buckets: max_keys.div_ceil(WAYS as u64).max(1),
        }
    }

    /// How many keys the table holds at most.
    pub fn capacity(&self) -> u64 {
        self.buckets.saturating_mul(WAYS as u64)
    }

    /// The shared-data key of the bucket `key` belongs to.
    pub fn bucket_key(&self, key: KeyHash) -> String {
        // Once per request: written without `format!`, in one allocation.
        let mut digits = itoa::Buffer::new();
        let bucket = digits.format(key.spread % self.buckets);
        let mut name = String::with_capacity(self.prefix.len() + bucket.len());
        name.push_str(&self.prefix);
        name.push_str(bucket);
        name
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fingerprint: u64,
    tat: Tat,
}

/// The decoded contents of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<Entry>,
}

/// How a key found its place in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// It was there already, or took a free or idle place.
    Kept,
    /// It pushed out a key that was not idle.
    Evicted,
}

impl Bucket {
    /// Decodes a stored bucket; anything malformed reads as empty (every key in it starts
    /// again with a full bucket, which is the only safe reading of bytes we did not write).
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(bytes) = bytes else {
            return Self::default();
        };
        if bytes.len() % ENTRY_BYTES != 0 || bytes.len() > WAYS * ENTRY_BYTES {
            return Self::default();
        }
        let entries = bytes
            .chunks_exact(ENTRY_BYTES)
            .filter_map(|chunk| {
                let (fingerprint, rest) = chunk.split_first_chunk::<8>()?;
                let (units, rest) = rest.split_first_chunk::<16>()?;
                let (scale, _) = rest.split_first_chunk::<4>()?;
                Some(Entry {
                    fingerprint: u64::from_le_bytes(*fingerprint),
                    tat: Tat {
                        units: u128::from_le_bytes(*units),
                        scale: u32::from_le_bytes(*scale),
                    },
                })
            })
            .collect();
        Self { entries }
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.fingerprint.to_le_bytes());
            out.extend_from_slice(&entry.tat.units.to_le_bytes());
            out.extend_from_slice(&entry.tat.scale.to_le_bytes());
        }
        out
    }

    /// The state of `key`, if the bucket remembers it.
    pub fn get(&self, key: KeyHash) -> Option<Tat> {
        self.entries
            .iter()
            .find(|e| e.fingerprint == key.fingerprint)
            .map(|e| e.tat)
    }

    /// Stores `tat` for `key`, making room as the module docs say.
    pub fn put(&mut self, key: KeyHash, tat: Tat, limit: &Limit, now_ns: u64) -> Placement {
        let new = Entry {
            fingerprint: key.fingerprint,
            tat,
        };
        if let Some(existing) = self
            .entries
            .iter_mut()
            .find(|e| e.fingerprint == key.fingerprint)
        {
            *existing = new;
            return Placement::Kept;
        }
        if self.entries.len() < WAYS {
            self.entries.push(new);
            return Placement::Kept;
        }
        if let Some(idle) = self
            .entries
            .iter_mut()
            .find(|e| limit.is_idle(e.tat, now_ns))
        {
            *idle = new;
            return Placement::Kept;
        }
        // Every place is busy: the key closest to idle goes (its client loses its debt).
        let oldest = self
            .entries
            .iter_mut()
            .min_by_key(|e| e.tat.units.checked_div(u128::from(e.tat.scale.max(1))));
        if let Some(oldest) = oldest {
            *oldest = new;
        }
        Placement::Evicted
    }

    /// Takes back one request admitted for `key` (see [`Limit::refund`]); false if the key is
    /// no longer here.
    pub fn refund(&mut self, key: KeyHash, limit: &Limit) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| e.fingerprint == key.fingerprint)
        {
            Some(entry) => {
                entry.tat = limit.refund(entry.tat);
                true
            }
            None => false,
        }
    }

    /// How many keys the bucket holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the bucket holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn key(i: u64) -> KeyHash {
        KeyHash::of(&i.to_le_bytes())
    }

    fn limit() -> Limit {
        Limit::new(1, Duration::from_secs(10), 1).unwrap()
    }

    fn admitted(at: u64) -> Tat {
        limit().decide(None, at).conforming().unwrap().next
    }

    #[test]
    fn round_trips_and_refuses_junk() {
        let mut b = Bucket::default();
        for i in 0..3 {
            assert_eq!(b.put(key(i), admitted(NOW), &limit(), NOW), Placement::Kept);
        }
        let again = Bucket::decode(Some(&b.encode()));
        assert_eq!(again, b);
        assert_eq!(again.get(key(1)), Some(admitted(NOW)));
        assert_eq!(again.get(key(9)), None);
        assert!(Bucket::decode(Some(&[1, 2, 3])).is_empty());
        assert!(Bucket::decode(Some(&vec![0; ENTRY_BYTES * (WAYS + 1)])).is_empty());
        assert!(Bucket::decode(None).is_empty());
    }

    #[test]
    fn a_full_bucket_reuses_idle_places_before_evicting() {
        let l = limit();
        let mut b = Bucket::default();
        for i in 0..WAYS as u64 {
            b.put(key(i), admitted(NOW), &l, NOW);
        }
        // 20 s later every key is idle again: a newcomer takes a place for free.
        let later = NOW + 20_000_000_000;
        assert_eq!(b.put(key(100), admitted(later), &l, later), Placement::Kept);
        assert_eq!(b.len(), WAYS);
        // Now all are busy at `later`? Only the newcomer is; the rest are idle.
        for i in 200..200 + WAYS as u64 - 1 {
            assert_eq!(b.put(key(i), admitted(later), &l, later), Placement::Kept);
        }
        // Every place busy: the next newcomer evicts.
        assert_eq!(
            b.put(key(999), admitted(later), &l, later),
            Placement::Evicted
        );
        assert_eq!(b.len(), WAYS);
        assert!(b.get(key(999)).is_some());
    }

    #[test]
    fn refund_needs_the_key() {
        let l = limit();
        let mut b = Bucket::default();
        b.put(key(1), admitted(NOW), &l, NOW);
        assert!(b.refund(key(1), &l));
        assert!(l.is_idle(b.get(key(1)).unwrap(), NOW));
        assert!(!b.refund(key(2), &l));
    }

    #[test]
    fn tables_are_bounded_and_spread() {
        let t = Table::new("per-ip", 100);
        assert_eq!(t.capacity(), 104);
        let names: std::collections::BTreeSet<String> =
            (0..10_000).map(|i| t.bucket_key(key(i))).collect();
        assert_eq!(names.len(), 13);
        assert!(names.iter().all(|n| n.starts_with("rl1/per-ip/")));
        assert_eq!(Table::new("r", 0).capacity(), WAYS as u64);
    }

    #[test]
    fn the_memo_gives_what_hashing_gives() {
        let mut memo = HashMemo::new(2);
        for i in 0..20u64 {
            let material = (i % 5).to_le_bytes();
            assert_eq!(memo.hash(&material), KeyHash::of(&material));
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let b = Bucket::decode(Some(&bytes));
            proptest::prop_assert!(b.len() <= WAYS);
        }
    }
}
