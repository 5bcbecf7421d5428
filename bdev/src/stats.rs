//! Per-bdev I/O statistics for `bdev_get_iostat`: counted per channel by its
//! core alone (single-writer atomics, no contention), summed on request.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::IoType;

/// Counters of one I/O type.
#[derive(Debug, Default)]
pub(crate) struct TypeCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latency_ns: AtomicU64,
    max_latency_ns: AtomicU64,
    min_latency_ns: AtomicU64,
}

#[inline]
fn add(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

/// What `bdev_reset_iostat` resets (SPDK's modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsReset {
    /// Every counter.
    All,
    /// Only the largest and smallest latencies.
    MaxMin,
    /// Only the error counts.
    Errors,
}

impl TypeCounters {
    fn reset(&self, mode: StatsReset) {
        let zero = |cs: &[&AtomicU64]| cs.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        match mode {
            StatsReset::All => zero(&[
                &self.ops,
                &self.bytes,
                &self.errors,
                &self.latency_ns,
                &self.max_latency_ns,
                &self.min_latency_ns,
            ]),
            StatsReset::MaxMin => zero(&[&self.max_latency_ns, &self.min_latency_ns]),
            StatsReset::Errors => zero(&[&self.errors]),
        }
    }
}

/// Counters of one channel.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    types: [TypeCounters; IoType::ALL.len()],
}

impl ChannelStats {
    #[inline]
    pub fn record(&self, ty: IoType, bytes: u64, latency_ns: Option<u64>, ok: bool) {
        let t = &self.types[ty.index()];
        if !ok {
            add(&t.errors, 1);
            return;
        }
        add(&t.ops, 1);
        add(&t.bytes, bytes);
        let Some(latency_ns) = latency_ns else {
            return;
        };
        add(&t.latency_ns, latency_ns);
        if latency_ns > t.max_latency_ns.load(Ordering::Relaxed) {
            t.max_latency_ns.store(latency_ns, Ordering::Relaxed);
        }
        let min = t.min_latency_ns.load(Ordering::Relaxed);
        if min == 0 || latency_ns < min {
            t.min_latency_ns.store(latency_ns.max(1), Ordering::Relaxed);
        }
    }

    /// Resets the counters; only on the channel's own core (the one
    /// writer), so no count is lost to a race.
    pub fn reset(&self, mode: StatsReset) {
        for t in &self.types {
            t.reset(mode);
        }
    }

    pub fn add_into(&self, out: &mut IoStats) {
        for (i, t) in self.types.iter().enumerate() {
            let o = &mut out.types[i];
            o.ops += t.ops.load(Ordering::Relaxed);
            o.bytes += t.bytes.load(Ordering::Relaxed);
            o.errors += t.errors.load(Ordering::Relaxed);
            o.latency_ns += t.latency_ns.load(Ordering::Relaxed);
            o.max_latency_ns = o
                .max_latency_ns
                .max(t.max_latency_ns.load(Ordering::Relaxed));
            let m = t.min_latency_ns.load(Ordering::Relaxed);
            if m != 0 && (o.min_latency_ns == 0 || m < o.min_latency_ns) {
                o.min_latency_ns = m;
            }
        }
    }
}

/// Totals of one I/O type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Successful operations.
    pub ops: u64,
    /// Bytes moved (or covered, for unmap and write zeroes).
    pub bytes: u64,
    /// Failed operations.
    pub errors: u64,
    /// Sum of latencies in nanoseconds.
    pub latency_ns: u64,
    /// Largest latency in nanoseconds.
    pub max_latency_ns: u64,
    /// Smallest latency in nanoseconds (0 when none).
    pub min_latency_ns: u64,
}

/// Statistics of one bdev, over all its channels, past and present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Per I/O type, indexed by [`IoType::index`].
    pub types: [TypeStats; IoType::ALL.len()],
}

impl IoStats {
    /// Resets the totals as `mode` says.
    pub fn reset(&mut self, mode: StatsReset) {
        for t in &mut self.types {
            match mode {
                StatsReset::All => *t = TypeStats::default(),
                StatsReset::MaxMin => {
                    t.max_latency_ns = 0;
                    t.min_latency_ns = 0;
                }
                StatsReset::Errors => t.errors = 0,
            }
        }
    }

    /// The totals of one type.
    pub fn of(&self, ty: IoType) -> &TypeStats {
        &self.types[ty.index()]
    }
}
