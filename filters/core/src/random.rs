//! Randomness as an argument: policy code asks [`Env::random`](crate::filter::Env) and never
//! reads the host's randomness itself, so tests can fix it.

use std::cell::Cell;

/// A source of random numbers.
pub trait Random {
    /// A uniformly random `u64`.
    fn next_u64(&self) -> u64;

    /// A uniformly random value in `0..=max`.
    fn below_or_at(&self, max: u64) -> u64 {
        match max.checked_add(1) {
            // Modulo bias is at most max / 2^64: nothing a jitter can notice.
            Some(span) => self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}

/// SplitMix64: a small, fast generator, seeded once per worker from the host's randomness
/// (never a constant seed, or every worker would jitter in lockstep).
#[derive(Debug)]
pub struct SplitMix(Cell<u64>);

impl SplitMix {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Cell::new(seed))
    }
}

impl Random for SplitMix {
    fn next_u64(&self) -> u64 {
        let state = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Always the same number, for tests that need no randomness.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub u64);

impl Random for Fixed {
    fn next_u64(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_or_at_stays_in_range_and_moves() {
        let r = SplitMix::new(7);
        let draws: Vec<u64> = (0..1000).map(|_| r.below_or_at(9)).collect();
        assert!(draws.iter().all(|d| *d <= 9));
        for v in 0..=9 {
            assert!(draws.contains(&v), "{v} never drawn");
        }
        assert_eq!(Fixed(5).below_or_at(u64::MAX), 5);
        assert_eq!(Fixed(15).below_or_at(9), 5);
    }
}
