//! Latency histograms (`bdev_enable_histogram`, `bdev_get_histogram`) in
//! SPDK's layout, so SPDK's `scripts/histogram.py` reads ours: 58 ranges
//! of 128 buckets (bucket shift 7); range 0 holds values 0..127 one per
//! bucket, range r ≥ 1 values from 2^(r+6) in steps of 2^(r-1); the
//! counters are u64 in little-endian order, base64-encoded (standard
//! alphabet, padded). Values are nanoseconds from submission to
//! completion, and the reported `tsc_rate` is 10^9 (ticks are
//! nanoseconds).
//!
//! Each channel keeps its own histogram, written by its core alone; a
//! read merges them, core by core.

/// SPDK's default bucket shift.
pub const BUCKET_SHIFT: u32 = 7;
/// Ranges: 64 - shift + 1.
const RANGES: usize = (64 - BUCKET_SHIFT + 1) as usize;
/// Counters in a histogram.
pub const BUCKETS: usize = RANGES << BUCKET_SHIFT;
/// The tick rate reported with a histogram: ticks are nanoseconds.
pub const TICK_RATE: u64 = 1_000_000_000;

/// The counter index of a value.
#[inline]
pub(crate) fn index(v: u64) -> usize {
    let clz = v.leading_zeros();
    let range = (64 - BUCKET_SHIFT).saturating_sub(clz);
    let shift = range.saturating_sub(1);
    let j = (v >> shift) & ((1 << BUCKET_SHIFT) - 1);
    ((range as usize) << BUCKET_SHIFT) + j as usize
}

/// A fresh, empty histogram.
pub(crate) fn new() -> Box<[u64]> {
    vec![0u64; BUCKETS].into_boxed_slice()
}

/// The counters as SPDK sends them: little-endian u64s, base64.
pub(crate) fn encode(h: &[u64]) -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(h.len() * 8);
    for c in h {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPDK's bucket start (inclusive), as scripts/histogram.py computes
    /// the end of the previous bucket.
    fn start(range: usize, j: usize) -> u64 {
        if range == 0 {
            j as u64
        } else {
            (1u64 << (range + BUCKET_SHIFT as usize - 1)) + ((j as u64) << (range - 1))
        }
    }

    #[test]
    fn layout_as_spdk() {
        assert_eq!(BUCKETS, 58 * 128);
        assert_eq!(index(0), 0);
        assert_eq!(index(127), 127);
        assert_eq!(index(128), 128);
        assert_eq!(index(255), 255);
        assert_eq!(index(256), 2 * 128);
        assert_eq!(index(257), 2 * 128);
        assert_eq!(index(258), 2 * 128 + 1);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        // Every value lands in the bucket whose range holds it.
        for v in [1u64, 100, 1000, 12345, 1 << 20, 999_999_999, 1 << 40] {
            let i = index(v);
            let (r, j) = (i >> BUCKET_SHIFT, i & 127);
            assert!(start(r, j) <= v, "{v}");
            let next = if j == 127 {
                start(r + 1, 0)
            } else {
                start(r, j + 1)
            };
            assert!(v < next, "{v}");
        }
        let mut h = new();
        h[index(1000)] += 3;
        let e = encode(&h);
        assert_eq!(e.len(), BUCKETS * 8 / 3 * 4 + 4);
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(e).unwrap();
        let i = index(1000) * 8;
        assert_eq!(u64::from_le_bytes(raw[i..i + 8].try_into().unwrap()), 3);
    }
}
