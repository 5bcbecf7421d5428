//! Latency statistics: a log-linear histogram (1 ns to one hour, 1024
//! buckets per power of two: within 0.1 %) for percentiles, plus exact
//! count, sum, minimum and maximum. Recording one value is a shift, a
//! leading-zero count and an add (no division, no allocation).

/// The largest latency tracked exactly; longer ones are recorded as this.
pub const MAX_TRACKED_NS: u64 = 3_600_000_000_000;

/// The percentiles every report shows.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// Latencies of one stream of I/Os, in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    hist: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Values below this are their own bucket; above, each power of two has
/// `SUB` buckets.
const SUB_BITS: u32 = 10;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of `v`.
#[inline]
fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (((u64::from(shift) + 1) << SUB_BITS) + ((v >> shift) & (SUB - 1))) as usize
}

/// The highest value of bucket `i`.
fn bucket_top(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i >> SUB_BITS) - 1;
    let low = (SUB + (i & (SUB - 1))) << shift;
    low + (1u64 << shift) - 1
}

/// The figures a report shows for one set of latencies, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    /// Mean.
    pub avg_us: f64,
    /// Smallest.
    pub min_us: f64,
    /// Largest.
    pub max_us: f64,
    /// p50, p90, p99, p99.9 and p99.99 ([`PERCENTILES`]).
    pub percentiles_us: [f64; 5],
}

impl LatencyStats {
    /// Empty statistics (allocates the histogram: control path).
    pub fn new() -> Self {
        LatencyStats {
            hist: vec![0; bucket(MAX_TRACKED_NS) + 1],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Records one latency. Allocation-free.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let i = bucket(ns.min(MAX_TRACKED_NS));
        if let Some(c) = self.hist.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum_ns += ns as u128;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds `other`'s latencies to these.
    pub fn merge(&mut self, other: &LatencyStats) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact mean, or 0 when empty.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// Exact minimum, or 0 when empty.
    pub fn min_ns(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min_ns }
    }

    /// Exact maximum, or 0 when empty.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The latency at or below which `pct` percent of the I/Os completed
    /// (within the histogram's 0.1 % resolution), or 0 when empty.
    pub fn percentile_ns(&self, pct: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // The bucket holding the I/O of that rank; its highest value, never
        // above the exact maximum.
        let rank = ((pct / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_top(i).min(self.max_ns).max(self.min_ns);
            }
        }
        self.max_ns
    }

    /// The figures of a report, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: f64| ns / 1000.0;
        LatencySummary {
            avg_us: us(self.mean_ns()),
            min_us: us(self.min_ns() as f64),
            max_us: us(self.max_ns() as f64),
            percentiles_us: PERCENTILES.map(|p| us(self.percentile_ns(p) as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut s = LatencyStats::new();
        // 1 µs .. 100 ms in 1 µs steps.
        for us in 1..=100_000u64 {
            s.record(us * 1000);
        }
        assert_eq!(s.count(), 100_000);
        assert_eq!(s.min_ns(), 1000);
        assert_eq!(s.max_ns(), 100_000_000);
        assert!(close(s.mean_ns(), 50_000_500.0, 1e-12));
        for (p, want_us) in [
            (50.0, 50_000.0),
            (90.0, 90_000.0),
            (99.0, 99_000.0),
            (99.9, 99_900.0),
            (99.99, 99_990.0),
        ] {
            let got = s.percentile_ns(p) as f64 / 1000.0;
            assert!(close(got, want_us, 0.001), "p{p}: {got} vs {want_us}");
        }
        let sum = s.summary();
        assert!(close(sum.avg_us, 50_000.5, 1e-9));
        assert_eq!(sum.min_us, 1.0);
        assert_eq!(sum.max_us, 100_000.0);
        assert!(close(sum.percentiles_us[0], 50_000.0, 0.001));
    }

    #[test]
    fn tail_percentiles_see_rare_slow_ios() {
        let mut s = LatencyStats::new();
        for _ in 0..9_995 {
            s.record(40_000); // 40 µs
        }
        for _ in 0..5 {
            s.record(5_000_000); // 5 ms: 0.05 %
        }
        assert!(close(s.percentile_ns(99.0) as f64, 40_000.0, 0.001));
        assert!(close(s.percentile_ns(99.9) as f64, 40_000.0, 0.001));
        assert!(close(s.percentile_ns(99.99) as f64, 5_000_000.0, 0.001));
        assert_eq!(s.max_ns(), 5_000_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = LatencyStats::new();
        let mut b = LatencyStats::new();
        let mut all = LatencyStats::new();
        for i in 0..5000u64 {
            let v = 1000 + i * 37 % 9000;
            if i % 3 == 0 {
                a.record(v);
            } else {
                b.record(v * 2);
            }
            all.record(if i % 3 == 0 { v } else { v * 2 });
        }
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.count(), all.count());
        assert_eq!(m.min_ns(), all.min_ns());
        assert_eq!(m.max_ns(), all.max_ns());
        assert_eq!(m.mean_ns(), all.mean_ns());
        for p in PERCENTILES {
            assert_eq!(m.percentile_ns(p), all.percentile_ns(p), "p{p}");
        }
    }

    #[test]
    fn buckets_are_within_a_thousandth() {
        for v in [
            0u64,
            1,
            1023,
            1024,
            1025,
            2047,
            2048,
            40_000,
            5_000_000,
            MAX_TRACKED_NS,
        ] {
            let b = bucket(v);
            let top = bucket_top(b);
            assert!(top >= v, "{v}: top {top}");
            assert!(
                (top - v) as f64 <= v as f64 / 1000.0 + 0.5,
                "{v}: top {top}"
            );
            if b > 0 {
                assert!(bucket_top(b - 1) < v, "{v}: in one bucket only");
            }
        }
    }

    #[test]
    fn empty_and_out_of_range() {
        let mut s = LatencyStats::new();
        assert_eq!(s.summary().avg_us, 0.0);
        assert_eq!(s.percentile_ns(99.0), 0);
        assert_eq!(s.min_ns(), 0);
        s.record(0);
        s.record(MAX_TRACKED_NS * 10);
        assert_eq!(s.count(), 2);
        assert_eq!(s.min_ns(), 0);
        assert_eq!(s.max_ns(), MAX_TRACKED_NS * 10, "exact max kept");
        let mut e = LatencyStats::new();
        e.merge(&LatencyStats::new());
        assert_eq!(e.count(), 0);
        assert_eq!(e.min_ns(), 0);
    }
}
