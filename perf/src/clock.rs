//! The measuring clock: the CPU's time-stamp counter calibrated against the
//! OS clock where it can be trusted, else the OS clock itself.
//!
//! Why not always `Instant::now()`: under QEMU TCG one `Instant::now()`
//! costs about 270 ns against about 20 ns for `rdtsc` (measured in the
//! project's guest), and a benchmark reads the clock for every I/O. The
//! counter is used when the CPU has one and either promises it runs at a
//! constant rate (invariant TSC) or the kernel itself uses it as its
//! clocksource (it has then checked it is stable). Each core only ever
//! subtracts its own readings, so counters need not agree across cores.

use std::time::{Duration, Instant};

/// Which clock to use (`--clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockChoice {
    /// The time-stamp counter when it can be trusted, else the OS clock.
    Auto,
    /// The time-stamp counter, or an error.
    Tsc,
    /// The OS monotonic clock (`Instant`).
    Os,
}

/// The clock in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockKind {
    /// `rdtsc`, calibrated.
    Tsc,
    /// `Instant::now()`.
    Os,
}

impl ClockKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ClockKind::Tsc => "tsc",
            ClockKind::Os => "os",
        }
    }
}

/// Why the time-stamp counter cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClockError {
    /// No TSC on this CPU (or not x86-64).
    #[error("this CPU has no time-stamp counter")]
    NoTsc,
    /// Calibration against the OS clock gave an implausible rate.
    #[error("the time-stamp counter did not calibrate ({0:.0} ticks/s)")]
    Calibration(f64),
}

/// A clock reading in ticks, converted to nanoseconds with a 32.32 fixed
/// point factor (one multiply, no division, on the hot path).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    kind: ClockKind,
    base: Instant,
    /// Nanoseconds per tick, times 2^32.
    ns_per_tick_q32: u64,
    ticks_per_sec: f64,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects; callers only reach it after
    // `tsc_present` confirmed the instruction exists.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn rdtsc() -> u64 {
    unreachable!("no TSC clock off x86-64")
}

/// (TSC present, invariant TSC advertised), from CPUID.
#[cfg(target_arch = "x86_64")]
// `__cpuid` became safe to call in Rust 1.87; `unsafe` stays for readers of
// older code and costs nothing (the lint is allowed).
#[allow(unused_unsafe)]
fn tsc_features() -> (bool, bool) {
    use core::arch::x86_64::__cpuid;
    // SAFETY: CPUID is available on every x86-64 CPU and only reads
    // identification registers.
    let leaf1 = unsafe { __cpuid(1) };
    // SAFETY: as above.
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    let invariant = max_ext >= 0x8000_0007 && {
        // SAFETY: as above; the leaf exists (checked against max_ext).
        let apm = unsafe { __cpuid(0x8000_0007) };
        apm.edx & (1 << 8) != 0
    };
    (leaf1.edx & (1 << 4) != 0, invariant)
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_features() -> (bool, bool) {
    (false, false)
}

fn kernel_uses_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map(|s| s.trim() == "tsc")
        .unwrap_or(false)
}

impl Clock {
    /// The OS monotonic clock; ticks are nanoseconds since creation.
    pub fn os() -> Self {
        Clock {
            kind: ClockKind::Os,
            base: Instant::now(),
            ns_per_tick_q32: 1 << 32,
            ticks_per_sec: 1e9,
        }
    }

    /// The time-stamp counter, calibrated against the OS clock over
    /// `over` (the longer, the more exact; 50 ms gives well under 0.1 %).
    ///
    /// # Errors
    /// [`ClockError`] when there is no TSC or it does not calibrate.
    pub fn tsc(over: Duration) -> Result<Self, ClockError> {
        if !tsc_features().0 {
            return Err(ClockError::NoTsc);
        }
        let (t0, i0) = (rdtsc(), Instant::now());
        std::thread::sleep(over);
        let (t1, i1) = (rdtsc(), Instant::now());
        let ns = i1.duration_since(i0).as_nanos() as f64;
        let ticks_per_sec = t1.wrapping_sub(t0) as f64 * 1e9 / ns;
        // Anything from 10 MHz to 100 GHz is a plausible counter.
        if !(1e7..1e11).contains(&ticks_per_sec) {
            return Err(ClockError::Calibration(ticks_per_sec));
        }
        Ok(Clock {
            kind: ClockKind::Tsc,
            base: i0,
            ns_per_tick_q32: (1e9 / ticks_per_sec * (1u64 << 32) as f64) as u64,
            ticks_per_sec,
        })
    }

    /// The clock `choice` asks for (see the module docs for `Auto`).
    ///
    /// # Errors
    /// [`ClockError`] when `Tsc` is asked for and cannot be had.
    pub fn choose(choice: ClockChoice) -> Result<Self, ClockError> {
        let calibrate = Duration::from_millis(50);
        match choice {
            ClockChoice::Os => Ok(Clock::os()),
            ClockChoice::Tsc => Clock::tsc(calibrate),
            ClockChoice::Auto => {
                let (present, invariant) = tsc_features();
                if present && (invariant || kernel_uses_tsc()) {
                    Ok(Clock::tsc(calibrate).unwrap_or_else(|_| Clock::os()))
                } else {
                    Ok(Clock::os())
                }
            }
        }
    }

    /// Which clock this is.
    pub fn kind(&self) -> ClockKind {
        self.kind
    }

    /// Ticks per second.
    pub fn ticks_per_sec(&self) -> f64 {
        self.ticks_per_sec
    }

    /// The current time in ticks.
    #[inline]
    pub fn now(&self) -> u64 {
        match self.kind {
            ClockKind::Tsc => rdtsc(),
            ClockKind::Os => self.base.elapsed().as_nanos() as u64,
        }
    }

    /// A tick count in nanoseconds.
    #[inline]
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ((ticks as u128 * self.ns_per_tick_q32 as u128) >> 32) as u64
    }

    /// Nanoseconds in ticks (control path).
    pub fn ns_to_ticks(&self, ns: u64) -> u64 {
        (ns as f64 * self.ticks_per_sec / 1e9) as u64
    }

    /// The cost of one reading in nanoseconds, measured now over `reads`
    /// readings.
    pub fn read_cost_ns(&self, reads: u32) -> f64 {
        let reads = reads.max(1);
        let start = Instant::now();
        let mut sink = 0u64;
        for _ in 0..reads {
            sink = sink.wrapping_add(self.now());
        }
        std::hint::black_box(sink);
        start.elapsed().as_nanos() as f64 / reads as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_ticks_are_nanoseconds() {
        let c = Clock::os();
        assert_eq!(c.ticks_to_ns(123_456_789), 123_456_789);
        assert_eq!(c.ns_to_ticks(5_000), 5_000);
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.now() - a >= 2_000_000);
    }

    #[test]
    fn tsc_agrees_with_the_os_clock() {
        let Ok(c) = Clock::tsc(Duration::from_millis(20)) else {
            return; // no TSC here: nothing to check
        };
        let (t0, i0) = (c.now(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let (t1, i1) = (c.now(), Instant::now());
        let tsc_ns = c.ticks_to_ns(t1 - t0) as f64;
        let os_ns = i1.duration_since(i0).as_nanos() as f64;
        // Loose: a loaded shared machine can preempt between the reads.
        assert!(
            (tsc_ns / os_ns - 1.0).abs() < 0.05,
            "tsc {tsc_ns} ns vs os {os_ns} ns"
        );
        let round = c.ticks_to_ns(c.ns_to_ticks(1_000_000));
        assert!((999_000..=1_001_000).contains(&round), "{round}");
        assert!(c.read_cost_ns(1000) > 0.0);
    }
}
