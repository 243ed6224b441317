//! The verified-token cache: a token whose signature was verified once is not verified again.
//!
//! Signature checks dominate the cost of this filter (hundreds of microseconds for RSA or ECDSA
//! inside V8, against a few for everything else), and clients resend the same token for its
//! whole lifetime. The cache remembers, per worker, what a successful verification produced.
//!
//! Safety rules:
//! - One cache per provider, keyed by the token itself (compared whole, not only by its hash): a hit
//!   means exactly this token was verified by exactly this provider's keys. Tokens longer than
//!   [`MAX_CACHED_TOKEN`] are not cached, which bounds the memory a full cache holds.
//! - Only the signature and parsing are skipped. Every claim check (`exp`, `nbf`, `iat`, `iss`,
//!   `aud`) runs again on each hit with the current time, so a cached token is never accepted
//!   past its `exp`; scopes and claim requirements are evaluated per request as always.
//! - Entries remember the key-set generation they were verified under; when the provider's
//!   keys change (a key removed), its older entries no longer hit.
//! - Bounded: at most `capacity` entries; when full, the least recently used one goes.

use crate::verify::Verified;
use foldhash::fast::FixedState;
use hashlink::LruCache;
use std::rc::Rc;

/// Longer tokens are verified every time rather than cached (as Envoy's `jwt_authn` does).
pub const MAX_CACHED_TOKEN: usize = 4096;

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    verified: Rc<Verified>,
    generation: u64,
}

/// One provider's verified tokens: a bounded least-recently-used map from the token to what
/// its verification gave. Lookups, insertions and evictions each cost one hash of the token
/// and, on a hit, one comparison of it.
#[derive(Debug)]
pub struct TokenCache {
    /// By the token's hash (an unkeyed fast hash: SipHash over a 700-byte token was a large
    /// part of a cache hit); the entry holds the token, compared whole on every hit. Two
    /// tokens with one hash share a slot, so one evicts the other: only verified tokens are
    /// inserted, so that costs at most a verification, never a wrong answer.
    entries: LruCache<u64, Entry, FixedState>,
    hasher: FixedState,
}

/// Whether `a` and `b` are the same token, compared a word at a time: `==` on byte slices
/// calls the C library's `memcmp`, whose byte loop was the largest part of a cache hit in
/// Wasm.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map_or(0, u64::from_ne_bytes);
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    x.by_ref().zip(y.by_ref()).all(|(p, q)| word(p) == word(q)) && x.remainder() == y.remainder()
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: LruCache::with_hasher(capacity, FixedState::default()),
            hasher: FixedState::default(),
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(token)
    }

    /// The verification remembered for `token`, if it was made under key-set `generation`.
    pub fn get(&mut self, token: &str, generation: u64) -> Option<Rc<Verified>> {
        let key = self.key(token);
        let entry = self.entries.get(&key)?;
        if !same_token(&entry.token, token) {
            return None;
        }
        if entry.generation == generation {
            return Some(entry.verified.clone());
        }
        // Made under keys since replaced: it can never hit again, so its place is freed.
        self.entries.remove(&key);
        None
    }

    /// Remembers a successful verification, evicting the least recently used token when full.
    pub fn put(&mut self, token: &str, verified: Rc<Verified>, generation: u64) {
        if self.entries.capacity() == 0 || token.len() > MAX_CACHED_TOKEN {
            return;
        }
        self.entries.insert(
            self.key(token),
            Entry {
                token: token.into(),
                verified,
                generation,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{Json, Object};

    fn verified(sub: &str) -> Rc<Verified> {
        let claims = Object::from([("sub", Json::String(sub.into()))]);
        Rc::new(Verified {
            claims,
            payload_b64: String::new(),
            // Not looked at by the cache.
            static_claims: Err(crate::claims::ClaimError::Issuer),
        })
    }

    #[test]
    fn hits_only_for_the_same_token_and_generation() {
        let mut cache = TokenCache::new(4);
        cache.put("t1", verified("a"), 1);
        assert_eq!(cache.get("t1", 1), Some(verified("a")));
        assert_eq!(cache.get("t2", 1), None);
        assert_eq!(cache.get("t1 ", 1), None, "compared whole");
        assert_eq!(cache.get("t1", 2), None, "keys changed: verify again");
    }

    #[test]
    fn long_tokens_are_not_cached() {
        let mut cache = TokenCache::new(4);
        let long = "x".repeat(MAX_CACHED_TOKEN + 1);
        cache.put(&long, verified("a"), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded_and_evicts_the_least_recently_used() {
        let mut cache = TokenCache::new(3);
        for t in ["a", "b", "c"] {
            cache.put(t, verified(t), 0);
        }
        assert!(cache.get("a", 0).is_some());
        cache.put("d", verified("d"), 0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("b", 0).is_none(), "b was the least recently used");
        assert!(cache.get("a", 0).is_some());
        for i in 0..100 {
            cache.put(&format!("t{i}"), verified("x"), 0);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_replaced_key_set_frees_the_entry() {
        let mut cache = TokenCache::new(4);
        cache.put("t1", verified("a"), 1);
        assert_eq!(cache.get("t1", 2), None);
        assert!(cache.is_empty());
        cache.put("t1", verified("b"), 2);
        assert_eq!(cache.get("t1", 2), Some(verified("b")));
    }

    #[test]
    fn a_full_large_cache_evicts_in_order_of_last_use() {
        const CAPACITY: usize = 100_000;
        let token = |i: usize| format!("eyJ.{i:08}.sig");
        let mut cache = TokenCache::new(CAPACITY);
        for i in 0..CAPACITY {
            cache.put(&token(i), verified("x"), 0);
        }
        assert_eq!(cache.len(), CAPACITY);
        // Touch the first thousand: the next thousand become the least recently used.
        for i in 0..1000 {
            assert!(cache.get(&token(i), 0).is_some(), "{i}");
        }
        for i in CAPACITY..CAPACITY + 1500 {
            cache.put(&token(i), verified("x"), 0);
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!((0..1000).all(|i| cache.get(&token(i), 0).is_some()));
        assert!((1000..2500).all(|i| cache.get(&token(i), 0).is_none()));
        assert!((2500..CAPACITY + 1500).all(|i| cache.get(&token(i), 0).is_some()));
        // Putting a token already cached replaces it without evicting another.
        cache.put(&token(5000), verified("y"), 0);
        assert_eq!(cache.len(), CAPACITY);
        assert_eq!(cache.get(&token(5000), 0), Some(verified("y")));
    }

    #[test]
    fn capacity_zero_disables_it() {
        let mut cache = TokenCache::new(0);
        cache.put("a", verified("a"), 0);
        assert!(cache.is_empty());
        assert_eq!(cache.get("a", 0), None);
    }
}
