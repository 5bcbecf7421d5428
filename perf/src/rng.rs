//! A fast, seeded pseudo-random generator for workload generation
//! (xorshift64*, seeded through splitmix64). Not for cryptography.

/// One step of splitmix64: a good 64-bit mixing function, also used to
/// derive independent seeds and pattern words.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*: three shifts and a multiply per number.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator whose sequence depends only on `seed` (any value,
    /// including 0).
    pub fn new(seed: u64) -> Self {
        let s = splitmix64(seed);
        XorShift64(if s == 0 { 0x9E37_79B9_7F4A_7C15 } else { s })
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0), by multiply-high instead of a
    /// division (bias below 2^-64 * n, irrelevant here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = XorShift64::new(0);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        // Uniform: each bucket near 10 000.
        for (i, &c) in seen.iter().enumerate() {
            assert!((9_500..10_500).contains(&c), "bucket {i}: {c}");
        }
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn seeds_give_distinct_repeatable_sequences() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(XorShift64::new(1), |r, _: u64| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(XorShift64::new(1), |r, _: u64| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(XorShift64::new(2), |r, _: u64| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
