//! The one way state is shared between Envoy's worker threads: compare-and-swap over shared data.
//!
//! Each Envoy worker runs its own copy of a Wasm module, so state in plain Rust memory is per
//! worker: a limit kept there is multiplied by the number of workers. The only cross-worker
//! state is proxy-wasm *shared data*, a process-wide key/value map with a CAS token per value.
//! Its semantics, which [`MemStore`] reproduces for tests:
//! - a write with CAS 0 (`None`) is unconditional;
//! - a write with a non-zero CAS to an existing key succeeds only if the CAS is current;
//! - a write to a *missing* key always succeeds, whatever the CAS;
//! - every write gives the key a fresh CAS from one process-wide counter;
//! - keys can never be deleted (the best one can do is store an empty value), so a key space
//!   that grows with traffic (one key per client IP) leaks memory: callers must bound theirs.
//!
//! [`update`] is the read-modify-write loop every filter uses on top of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// A CAS token, as handed out by the host. Never 0.
pub type Cas = u32;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Other workers changed the value on every one of `attempts` tries.
    Contention {
        /// How many read-modify-write attempts were made.
        attempts: u32,
    },
    /// The host refused the call.
    Host(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Contention { attempts } => {
                write!(f, "shared data still contended after {attempts} attempts")
            }
            StoreError::Host(why) => write!(f, "shared data host call failed: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The value was stored.
    Yes,
    /// Someone else wrote first: the CAS was stale.
    CasMismatch,
}

/// Shared data as the host offers it.
pub trait SharedStore {
    /// The value stored under `key` and its CAS, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError>;
    /// Writes `value` under `key` if `cas` is current (see the module docs for the exact rules).
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError>;

    /// The value of `key` as this worker last read or wrote it, with a CAS token that is
    /// current exactly when nobody has written the key since, or `None` (the default) when it
    /// remembers nothing it can vouch for. No host call: what it returns may be stale, so a
    /// decision made on it holds only once a conditional write with that token succeeds (see
    /// [`Remembering`] and [`update_remembered`]).
    fn remembered(&self, _key: &str) -> Option<(Vec<u8>, Cas)> {
        None
    }
}

impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
        (**self).set(key, value, cas)
    }
    fn remembered(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        (**self).remembered(key)
    }
}

mod remembering;
pub use remembering::Remembering;

/// The CAS used to insert a key that was absent when read.
///
/// The host inserts a missing key whatever CAS is given, but compares the CAS if the key exists
/// by then. Passing a token that is not current for any key turns the write into an atomic
/// "insert if still absent": if another worker inserted the key in between, ours fails with a
/// CAS mismatch and is retried on the fresh value. The host's counter starts at 1 and counts up,
/// so `u32::MAX` is only ever current after four billion writes, and then only for one key.
pub const INSERT_IF_ABSENT: Cas = u32::MAX;

/// Reads `key`, lets `f` compute the new value, and writes it back if nobody else wrote in
/// between; otherwise tries again, at most `max_attempts` times.
///
/// `f` receives the current value (`None` if the key is absent or holds an empty value) and
/// returns the value to write (`None` to write nothing, e.g. for a request that is refused and
/// consumes nothing) together with the result to hand back. It may be called several times and
/// must not have side effects.
pub fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, StoreError> {
    read_modify_write(store, key, max_attempts, false, f)
}

/// [`update`] for a caller that expects to write: its first attempt starts from the value this
/// worker remembers ([`SharedStore::remembered`]), so an uncontended update is one host call
/// (the write) instead of two. A write refused because the memory was stale, or a decision to
/// write nothing made on remembered bytes, is tried again on a real read; neither uses up an
/// attempt.
pub fn update_remembered<T>(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, StoreError> {
    read_modify_write(store, key, max_attempts, true, f)
}

fn read_modify_write<T>(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    mut from_memory: bool,
    mut f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, StoreError> {
    let mut attempts = 0;
    while attempts < max_attempts {
        let remembered = if from_memory {
            store.remembered(key)
        } else {
            None
        };
        from_memory = false;
        let recalled = remembered.is_some();
        if !recalled {
            attempts += 1;
        }
        let current = match remembered {
            Some(memory) => Some(memory),
            None => store.get(key)?,
        };
        let (value, cas) = match &current {
            Some((bytes, cas)) if !bytes.is_empty() => (Some(bytes.as_slice()), *cas),
            Some((_, cas)) => (None, *cas),
            None => (None, INSERT_IF_ABSENT),
        };
        let (next, result) = f(value);
        let Some(next) = next else {
            if recalled {
                // Nothing written confirms the memory: decide again on what the host holds.
                continue;
            }
            return Ok(result);
        };
        match store.set(key, &next, Some(cas))? {
            Written::Yes => return Ok(result),
            Written::CasMismatch => continue,
        }
    }
    Err(StoreError::Contention {
        attempts: max_attempts,
    })
}

/// An in-memory [`SharedStore`] with the host's exact semantics, for native tests.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    map: HashMap<String, (Vec<u8>, Cas)>,
    last_cas: Cas,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys exist (empty values included: they can never be removed).
    pub fn key_count(&self) -> usize {
        self.lock().map.len()
    }

    /// Total bytes held in keys and values, to check that memory stays bounded.
    pub fn bytes(&self) -> usize {
        self.lock()
            .map
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A poisoned lock only means another test thread panicked; the map is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        Ok(self.lock().map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
        let mut inner = self.lock();
        if let (Some(expected), Some((_, current))) = (cas, inner.map.get(key))
            && expected != 0
            && expected != *current
        {
            return Ok(Written::CasMismatch);
        }
        inner.last_cas = inner.last_cas.wrapping_add(1).max(1);
        let fresh = inner.last_cas;
        inner.map.insert(key.to_owned(), (value.to_vec(), fresh));
        Ok(Written::Yes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Increments a little-endian counter (shared with `remembering`'s tests).
    pub(super) fn add_one(v: Option<&[u8]>) -> (Option<Vec<u8>>, u64) {
        let n = v
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
            + 1;
        (Some(n.to_le_bytes().to_vec()), n)
    }

    #[test]
    fn mem_store_follows_host_cas_rules() {
        let s = MemStore::new();
        // A missing key is inserted whatever the CAS.
        assert_eq!(s.set("k", b"a", Some(12345)).unwrap(), Written::Yes);
        let (_, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(
            s.set("k", b"b", Some(cas + 1)).unwrap(),
            Written::CasMismatch
        );
        assert_eq!(s.set("k", b"b", Some(cas)).unwrap(), Written::Yes);
        assert_eq!(s.set("k", b"c", Some(cas)).unwrap(), Written::CasMismatch);
        // CAS 0 is unconditional.
        assert_eq!(s.set("k", b"d", None).unwrap(), Written::Yes);
        assert_eq!(s.get("k").unwrap().unwrap().0, b"d");
        // "Removing" leaves the key with an empty value.
        s.set("k", b"", None).unwrap();
        assert_eq!(s.key_count(), 1);
    }

    #[test]
    fn update_counts_and_treats_empty_as_absent() {
        let s = MemStore::new();
        for expected in 1..=5 {
            assert_eq!(update(&s, "n", 3, add_one).unwrap(), expected);
        }
        s.set("n", b"", None).unwrap();
        assert_eq!(update(&s, "n", 3, add_one).unwrap(), 1);
    }

    #[test]
    fn update_without_a_write_changes_nothing() {
        let s = MemStore::new();
        let r = update(&s, "n", 3, |_| (None, "refused")).unwrap();
        assert_eq!(r, "refused");
        assert_eq!(s.key_count(), 0);
    }

    /// A store where another "worker" writes between every read and write of ours.
    struct Interfering<'a> {
        inner: &'a MemStore,
        interferences_left: Cell<u32>,
    }

    impl SharedStore for Interfering<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            let seen = self.inner.get(key);
            if self.interferences_left.get() > 0 {
                self.interferences_left
                    .set(self.interferences_left.get() - 1);
                update(self.inner, key, 1, add_one)?;
            }
            seen
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<Written, StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn concurrent_writes_are_never_lost() {
        let mem = MemStore::new();
        let racing = Interfering {
            inner: &mem,
            interferences_left: Cell::new(2),
        };
        // Our first two attempts lose the race; the third sees both foreign increments.
        assert_eq!(update(&racing, "n", 3, add_one).unwrap(), 3);
    }

    #[test]
    fn racing_first_inserts_are_not_lost() {
        let mem = MemStore::new();
        let racing = Interfering {
            inner: &mem,
            interferences_left: Cell::new(1),
        };
        // We read "absent", the other worker inserts 1, our insert must not overwrite it.
        assert_eq!(update(&racing, "fresh", 3, add_one).unwrap(), 2);
    }

    #[test]
    fn contention_gives_up_after_the_bound() {
        let mem = MemStore::new();
        let racing = Interfering {
            inner: &mem,
            interferences_left: Cell::new(10),
        };
        assert_eq!(
            update(&racing, "n", 4, add_one),
            Err(StoreError::Contention { attempts: 4 })
        );
    }

    #[test]
    fn threads_sharing_a_store_lose_no_increment() {
        let mem = std::sync::Arc::new(MemStore::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mem = mem.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        update(mem.as_ref(), "n", u32::MAX, add_one).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            update(mem.as_ref(), "n", 1, |v| (None, add_one(v).1 - 1)).unwrap(),
            2000
        );
    }
}
