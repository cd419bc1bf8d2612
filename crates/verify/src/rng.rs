//! The verifier's random numbers: xoshiro256** seeded through SplitMix64.
//!
//! Written out here rather than taken from a crate so that the byte stream a
//! seed produces can never change under us with a dependency update: the
//! same `randomSeed` must mean the same events in every build, forever.
//! Not for cryptography; a few nanoseconds per number.

/// The SplitMix64 increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A deterministic pseudo-random generator; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    /// xoshiro256** state; never all zero (SplitMix64 cannot produce four
    /// zero words in a row).
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is decided by `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut mixer = seed;
        let mut next = || {
            mixer = mixer.wrapping_add(GOLDEN_GAMMA);
            let mut z = mixer;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    /// A generator for one purpose (`stream`) derived from `seed`, so that
    /// drawing more numbers for one purpose (say, the events) never shifts
    /// another (say, which users connect).
    pub(crate) fn for_stream(seed: u64, stream: u64) -> Rng {
        Rng::new(seed ^ stream.wrapping_mul(GOLDEN_GAMMA).rotate_left(17))
    }

    /// The next 64 random bits.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A number in `0..n` (0 when `n` is 0), by Lemire's multiply-shift. Its
    /// bias is below `n / 2^64`: irrelevant for picking users and batch
    /// sizes, and unlike rejection it draws exactly one number, which keeps
    /// the stream easy to reason about.
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_output() {
        // First outputs of the reference C implementation from state 1,2,3,4.
        let mut rng = Rng {
            state: [1, 2, 3, 4],
        };
        let first: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn same_seed_same_numbers_different_seed_different_numbers() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..64).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(666), draw(666));
        assert_ne!(draw(666), draw(667));
        let mut a = Rng::for_stream(666, 1);
        let mut b = Rng::for_stream(666, 2);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let x = rng.below(7);
            assert!(x < 7);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
    }
}
