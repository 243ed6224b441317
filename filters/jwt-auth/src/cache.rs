//! The verified-token cache: a token whose signature was verified once is not verified again.
//!
//! Signature checks dominate the cost of this filter (hundreds of microseconds for RSA or ECDSA
//! inside V8, against a few for everything else), and clients resend the same token for its
//! whole lifetime. The cache remembers, per worker, what a successful verification produced.
//!
//! Safety rules:
//! - The key is the SHA-256 of the token and the provider: a hit means exactly this token was
//!   verified by exactly this provider's keys.
//! - Only the signature and parsing are skipped. Every claim check (`exp`, `nbf`, `iat`, `iss`,
//!   `aud`) runs again on each hit with the current time, so a cached token is never accepted
//!   past its `exp`; scopes and claim requirements are evaluated per request as always.
//! - Entries remember the key-set generation they were verified under; when the provider's
//!   keys change (a key removed), its older entries no longer hit.
//! - Bounded: at most `capacity` entries; when full, the least recently used one goes.

use crate::verify::Verified;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The cache key: SHA-256 over the provider index and the token.
pub type CacheKey = [u8; 32];

/// Computes the cache key of `token` for `provider`.
pub fn key(provider: usize, token: &str) -> CacheKey {
    let mut hasher = Sha256::new();
    hasher.update(provider.to_le_bytes());
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

#[derive(Debug)]
struct Entry {
    verified: Verified,
    generation: u64,
    last_used: u64,
}

/// A bounded least-recently-used map from verified tokens to what their verification gave.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<CacheKey, Entry>,
    clock: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity(capacity.min(4096)),
            clock: 0,
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

    /// The verification remembered for `key`, if it was made under key-set `generation`.
    pub fn get(&mut self, key: &CacheKey, generation: u64) -> Option<Verified> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        if entry.generation != generation {
            return None;
        }
        entry.last_used = clock;
        Some(entry.verified.clone())
    }

    /// Remembers a successful verification.
    pub fn put(&mut self, key: CacheKey, verified: Verified, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // Evicting scans the map: it happens only after a cache miss, which has just paid
            // for a signature check costing far more than this scan.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            key,
            Entry {
                verified,
                generation,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn verified(sub: &str) -> Verified {
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.into());
        Verified {
            claims,
            payload_b64: String::new(),
        }
    }

    #[test]
    fn hits_only_for_the_same_token_provider_and_generation() {
        let mut cache = TokenCache::new(4);
        cache.put(key(0, "t1"), verified("a"), 1);
        assert_eq!(cache.get(&key(0, "t1"), 1), Some(verified("a")));
        assert_eq!(cache.get(&key(1, "t1"), 1), None);
        assert_eq!(cache.get(&key(0, "t2"), 1), None);
        assert_eq!(
            cache.get(&key(0, "t1"), 2),
            None,
            "keys changed: verify again"
        );
    }

    #[test]
    fn stays_bounded_and_evicts_the_least_recently_used() {
        let mut cache = TokenCache::new(3);
        for t in ["a", "b", "c"] {
            cache.put(key(0, t), verified(t), 0);
        }
        assert!(cache.get(&key(0, "a"), 0).is_some());
        cache.put(key(0, "d"), verified("d"), 0);
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&key(0, "b"), 0).is_none(),
            "b was the least recently used"
        );
        assert!(cache.get(&key(0, "a"), 0).is_some());
        for i in 0..100 {
            cache.put(key(0, &format!("t{i}")), verified("x"), 0);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn capacity_zero_disables_it() {
        let mut cache = TokenCache::new(0);
        cache.put(key(0, "a"), verified("a"), 0);
        assert!(cache.is_empty());
        assert_eq!(cache.get(&key(0, "a"), 0), None);
    }
}
