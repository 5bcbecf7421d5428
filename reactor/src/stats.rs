//! Per-reactor statistics, written by the owning reactor once per iteration
//! and readable from any thread.
//!
//! Two views are offered in the shapes of SPDK's RPCs: [`ReactorInfo`] for
//! `framework_get_reactors` and [`ThreadStats`] for `thread_get_stats`. This
//! runtime runs one thread per reactor, so the two describe the same loop.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::CoreId;

/// Units of the `busy`/`idle` figures: nanoseconds, so 10⁹ ticks a second
/// (SPDK's `tick_rate`).
pub const TICK_RATE: u64 = 1_000_000_000;

/// The atomics behind one reactor's figures, on their own cache lines.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct StatsCell {
    pub busy_ns: AtomicU64,
    pub idle_ns: AtomicU64,
    pub messages_run: AtomicU64,
    pub messages_sent: AtomicU64,
    pub poller_runs: AtomicU64,
    pub tasks_polled: AtomicU64,
    pub iterations: AtomicU64,
    /// Iterations that ran a message or task or sent a message (used by
    /// shutdown to detect quiescence).
    pub active_iterations: AtomicU64,
    pub active_pollers: AtomicU64,
    pub timed_pollers: AtomicU64,
    pub paused_pollers: AtomicU64,
    pub channels: AtomicU64,
}

impl StatsCell {
    pub(crate) fn snapshot(&self, core: CoreId) -> ReactorStats {
        ReactorStats {
            core,
            busy: self.busy_ns.load(Relaxed),
            idle: self.idle_ns.load(Relaxed),
            messages_run: self.messages_run.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            poller_runs: self.poller_runs.load(Relaxed),
            tasks_polled: self.tasks_polled.load(Relaxed),
            iterations: self.iterations.load(Relaxed),
            active_pollers: self.active_pollers.load(Relaxed),
            timed_pollers: self.timed_pollers.load(Relaxed),
            paused_pollers: self.paused_pollers.load(Relaxed),
            io_channels: self.channels.load(Relaxed),
        }
    }
}

/// A snapshot of one reactor's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// The reactor's core.
    pub core: CoreId,
    /// Time spent in iterations that did work, in ticks ([`TICK_RATE`]).
    pub busy: u64,
    /// Time spent in iterations that found nothing to do, in ticks.
    pub idle: u64,
    /// Messages executed.
    pub messages_run: u64,
    /// Messages sent by this reactor (to any core, itself included).
    pub messages_sent: u64,
    /// Poller invocations (active and timed).
    pub poller_runs: u64,
    /// Times an async task was polled.
    pub tasks_polled: u64,
    /// Loop iterations.
    pub iterations: u64,
    /// Registered pollers without a period that are not paused.
    pub active_pollers: u64,
    /// Registered pollers with a period that are not paused.
    pub timed_pollers: u64,
    /// Paused pollers.
    pub paused_pollers: u64,
    /// I/O channels alive on this reactor.
    pub io_channels: u64,
}

/// One entry of SPDK's `framework_get_reactors` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorInfo {
    /// The core (SPDK `lcore`).
    pub lcore: CoreId,
    /// Busy ticks.
    pub busy: u64,
    /// Idle ticks.
    pub idle: u64,
    /// Time the CPU spent serving interrupts, from `/proc/stat` (USER_HZ
    /// ticks; 0 where unavailable).
    pub irq: u64,
    /// Time the CPU spent in the kernel, from `/proc/stat` (USER_HZ ticks;
    /// 0 where unavailable).
    pub sys: u64,
    /// The threads on this reactor: here always the reactor's own one.
    pub threads: Vec<ThreadStats>,
}

/// One entry of SPDK's `thread_get_stats` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStats {
    /// Thread name, `reactor_<core>`.
    pub name: String,
    /// Thread id (SPDK numbers threads from 1; here core index + 1).
    pub id: u64,
    /// Busy ticks.
    pub busy: u64,
    /// Idle ticks.
    pub idle: u64,
    /// Registered, unpaused pollers without a period.
    pub active_pollers_count: u64,
    /// Registered, unpaused pollers with a period.
    pub timed_pollers_count: u64,
    /// Paused pollers.
    pub paused_pollers_count: u64,
}

impl ThreadStats {
    pub(crate) fn from_stats(index: usize, s: &ReactorStats) -> ThreadStats {
        ThreadStats {
            name: format!("reactor_{}", s.core),
            id: index as u64 + 1,
            busy: s.busy,
            idle: s.idle,
            active_pollers_count: s.active_pollers,
            timed_pollers_count: s.timed_pollers,
            paused_pollers_count: s.paused_pollers,
        }
    }
}

/// Reads the `irq` and `system` columns of `cpu<core>` in `/proc/stat`.
pub(crate) fn cpu_irq_sys(core: CoreId) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    parse_proc_stat(&text, core).unwrap_or((0, 0))
}

fn parse_proc_stat(text: &str, core: CoreId) -> Option<(u64, u64)> {
    let tag = format!("cpu{core}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag.as_str()))?;
    // cpuN user nice system idle iowait irq softirq ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some((*f.get(5)?, *f.get(2)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_stat_columns() {
        let text = "cpu  1 2 3 4 5 6 7\ncpu0 10 20 30 40 50 60 70\ncpu1 1 1 9 1 1 8 1\n";
        assert_eq!(super::parse_proc_stat(text, 1), Some((8, 9)));
        assert_eq!(super::parse_proc_stat(text, 0), Some((60, 30)));
        assert_eq!(super::parse_proc_stat(text, 7), None);
    }
}
