//! The reactors' clock: nanoseconds since the runtime started.
//!
//! A reactor reads the time once per iteration, so the read must be cheap.
//! On x86-64 with an invariant TSC it is `rdtsc` scaled by a factor
//! calibrated once per process against `Instant` (as SPDK's
//! `spdk_get_ticks`); elsewhere it is `Instant::elapsed`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `Some(ns per tick as 32.32 fixed point)` when the TSC is usable.
fn tsc_scale() -> Option<u64> {
    static SCALE: OnceLock<Option<u64>> = OnceLock::new();
    *SCALE.get_or_init(calibrate)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<u64> {
    // CPUID leaf 0x8000_0007, EDX bit 8: invariant TSC (constant rate, runs
    // in every power state).
    // SAFETY: `cpuid` exists on every x86-64 CPU. (Newer compilers declare
    // `__cpuid` safe; the block is kept, with the lint allowed.)
    #[allow(unused_unsafe)]
    let max_ext = unsafe { core::arch::x86_64::__cpuid(0x8000_0000) }.eax;
    if max_ext < 0x8000_0007 {
        return None;
    }
    // SAFETY: as above; the leaf is supported (checked just before).
    #[allow(unused_unsafe)]
    let edx = unsafe { core::arch::x86_64::__cpuid(0x8000_0007) }.edx;
    if edx & (1 << 8) == 0 {
        return None;
    }
    let (i0, t0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(5));
    let (i1, t1) = (Instant::now(), rdtsc());
    let ticks = t1.checked_sub(t0)?;
    let ns = (i1 - i0).as_nanos();
    if ticks == 0 || ns == 0 {
        return None;
    }
    u64::try_from((ns << 32) / u128::from(ticks)).ok()
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<u64> {
    None
}

/// A monotonic clock in nanoseconds from its creation.
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: Instant,
    #[cfg(target_arch = "x86_64")]
    tsc0: u64,
    scale: Option<u64>,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let scale = tsc_scale();
        Clock {
            epoch: Instant::now(),
            #[cfg(target_arch = "x86_64")]
            tsc0: rdtsc(),
            scale,
        }
    }

    /// Nanoseconds since creation.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if let Some(scale) = self.scale {
            let ticks = rdtsc().saturating_sub(self.tsc0);
            return ((u128::from(ticks) * u128::from(scale)) >> 32) as u64;
        }
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_instant() {
        let c = Clock::new();
        let i = Instant::now();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        let b = c.now_ns();
        let real = i.elapsed().as_nanos() as u64;
        assert!(b > a);
        // Within 10% (+1 ms) of Instant over 20 ms.
        let d = b - a;
        assert!(
            d + real / 10 + 1_000_000 >= real && d <= real + real / 10 + 1_000_000,
            "{d} vs {real}"
        );
    }
}
