//! The measuring engine: one [`Worker`] per queue pair (a namespace on a
//! core), polled in a loop by the thread pinned to that core.
//!
//! ```text
//!  poll():  process_completions ──> complete(slot): latency, verify, free
//!              │  (clock read per completion with the TSC, once per
//!              │   batch with the OS clock)
//!              └─> submit every free slot (offset, op, pattern) ──> doorbell
//! ```
//!
//! Each slot owns one DMA buffer and the start time of its I/O; the queue
//! pair's per-command context is the slot index, so nothing is allocated
//! once the worker is built. A worker only submits from its own slots, so
//! the queue never refuses for being full.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dma::{DmaBuf, DmaError, DmaMemory};
use nvme_driver::{CommandError, IoQpair, SubmitErrorKind};

use crate::clock::{Clock, ClockKind};
use crate::latency::LatencyStats;
use crate::pattern;
use crate::report::{QueueCounts, WorkerResult};
use crate::rng::{XorShift64, splitmix64};

/// What one worker does.
#[derive(Clone, Debug)]
pub struct WorkerParams {
    /// The namespace.
    pub nsid: u32,
    /// Its block size.
    pub block_size: u32,
    /// Bytes per I/O (a multiple of the block size).
    pub io_size: usize,
    /// I/Os outstanding (the queue pair's depth or less).
    pub depth: u32,
    /// Percent of reads, 0..=100.
    pub read_percent: u32,
    /// Random offsets (else sequential, wrapping).
    pub random: bool,
    /// Check reads against what this worker wrote.
    pub verify: bool,
    /// First I/O unit (an `io_size`-aligned run of blocks) of this worker's
    /// share of the namespace.
    pub first_unit: u64,
    /// Units in the share.
    pub units: u64,
    /// Seed of the offsets and the op mix.
    pub seed: u64,
    /// Stop submitting after this many I/Os (tests); `None`: by time only.
    pub io_limit: Option<u64>,
}

/// The measured window in clock ticks: completions at `start <= t < end`
/// count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start (the end of the warm-up).
    pub start: u64,
    /// End.
    pub end: u64,
}

impl Window {
    /// Every completion counts (tests, with an I/O limit).
    pub const ALL: Window = Window {
        start: 0,
        end: u64::MAX,
    };
}

/// Counters a worker publishes for the once-a-second progress line, on a
/// cache line of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Progress {
    /// Completions so far (warm-up included).
    pub completed: AtomicU64,
}

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its buffers could not be allocated.
    #[error("allocating {count} I/O buffers of {size} bytes: {source}")]
    Buffers {
        /// Buffers wanted.
        count: u32,
        /// Bytes each.
        size: usize,
        /// What the DMA layer said.
        #[source]
        source: DmaError,
    },
    /// Parameters that cannot work.
    #[error("{0}")]
    Params(String),
}

struct Slot {
    buf: DmaBuf,
    iova: u64,
    start: u64,
    unit: u64,
    write: bool,
    generation: u32,
}

/// Verify state of a unit: the generation of its last completed write (0 =
/// not written by this run), with this bit set while an I/O is in flight.
const BUSY: u32 = 1 << 31;

/// Errors and mismatches printed per worker at most (all are counted).
const MAX_PRINTED: u32 = 5;

/// How long outstanding I/Os may take to complete after the end.
const DRAIN_LIMIT_NS: u64 = 30_000_000_000;

struct State {
    device: String,
    core: usize,
    p: WorkerParams,
    clock: Clock,
    blocks_per_io: u64,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    rng: XorShift64,
    next_seq: u64,
    units: Vec<u32>,
    /// Verify: the units written at least once, and the same as bits (the
    /// list is what random reads pick from). Preallocated.
    written: Vec<u32>,
    written_bits: Vec<u64>,
    generation: u32,
    tag_base: u64,
    submitted: u64,
    window: Window,
    /// Whether the window is a real one (not [`Window::ALL`]).
    timed: bool,
    /// Set when submitting stopped: the end of the window, the time the
    /// worker gives up waiting for outstanding I/Os.
    draining: Option<u64>,
    drain_deadline: u64,
    fatal: Option<String>,
    empty_polls: u32,
    printed: u32,
    first_mismatch: Option<pattern::Mismatch>,
    // Measurements.
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    verified: u64,
    mismatches: u64,
    busy_ticks: u64,
    batches: u64,
    completed: u64,
    latency: LatencyStats,
    progress: Arc<Progress>,
}

/// One queue pair driven by one core.
pub struct Worker {
    qp: IoQpair<u32>,
    st: State,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("device", &self.st.device)
            .field("nsid", &self.st.p.nsid)
            .field("core", &self.st.core)
            .field("outstanding", &self.qp.outstanding())
            .finish()
    }
}

impl Worker {
    /// A worker for `qp` (of `device`, run by `core`) with buffers from
    /// `mem`. `run_nonce` goes into every verify pattern, so data from an
    /// earlier run never passes for this run's.
    ///
    /// # Errors
    /// [`WorkerError`] when the buffers cannot be had or `params` are
    /// inconsistent.
    pub fn new(
        qp: IoQpair<u32>,
        mem: &DmaMemory,
        device: String,
        core: usize,
        params: WorkerParams,
        clock: Clock,
        run_nonce: u64,
    ) -> Result<Worker, WorkerError> {
        let p = params;
        let bs = p.block_size as usize;
        if bs == 0 || p.io_size == 0 || !p.io_size.is_multiple_of(bs) {
            return Err(WorkerError::Params(format!(
                "I/O size {} is not a multiple of the block size {bs}",
                p.io_size
            )));
        }
        if p.depth == 0 || p.depth as usize > qp.depth() {
            return Err(WorkerError::Params(format!(
                "depth {} outside 1..={} (the queue pair's)",
                p.depth,
                qp.depth()
            )));
        }
        if p.units == 0 || (p.verify && p.units <= p.depth as u64) {
            return Err(WorkerError::Params(format!(
                "{} I/O units for depth {}{}",
                p.units,
                p.depth,
                if p.verify {
                    " (verify needs more units than the depth)"
                } else {
                    ""
                }
            )));
        }
        let slots = (0..p.depth)
            .map(|_| {
                let buf = mem.alloc(p.io_size, 4096)?;
                Ok(Slot {
                    iova: buf.iova(),
                    buf,
                    start: 0,
                    unit: 0,
                    write: false,
                    generation: 0,
                })
            })
            .collect::<Result<Vec<_>, DmaError>>()
            .map_err(|source| WorkerError::Buffers {
                count: p.depth,
                size: p.io_size,
                source,
            })?
            .into_boxed_slice();
        let free = (0..p.depth).rev().collect();
        if p.verify && p.units >= BUSY as u64 {
            return Err(WorkerError::Params(format!(
                "{} I/O units: verify tracks at most 2^31",
                p.units
            )));
        }
        let (units, written, written_bits) = if p.verify {
            let n = p.units as usize;
            (vec![0; n], Vec::with_capacity(n), vec![0; n.div_ceil(64)])
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        let tag_base = splitmix64(run_nonce ^ (p.nsid as u64) << 40 ^ p.first_unit) << 32;
        Ok(Worker {
            qp,
            st: State {
                device,
                core,
                blocks_per_io: (p.io_size / bs) as u64,
                rng: XorShift64::new(p.seed),
                p,
                clock,
                slots,
                free,
                next_seq: 0,
                units,
                written,
                written_bits,
                generation: 0,
                tag_base,
                submitted: 0,
                window: Window::ALL,
                timed: false,
                draining: None,
                drain_deadline: 0,
                fatal: None,
                empty_polls: 0,
                printed: 0,
                first_mismatch: None,
                ios: 0,
                reads: 0,
                writes: 0,
                errors: 0,
                verified: 0,
                mismatches: 0,
                busy_ticks: 0,
                batches: 0,
                completed: 0,
                latency: LatencyStats::new(),
                progress: Arc::new(Progress::default()),
            },
        })
    }

    /// The counters this worker publishes for progress lines.
    pub fn progress(&self) -> Arc<Progress> {
        self.st.progress.clone()
    }

    /// Submits the first I/Os; completions inside `window` will count.
    pub fn start(&mut self, window: Window) {
        self.st.window = window;
        self.st.timed = window != Window::ALL;
        let now = self.st.clock.now();
        self.st.submit(&mut self.qp, now);
        self.qp.ring_doorbell();
    }

    /// Stops submitting now (the end of the window moves here if it is
    /// later); outstanding I/Os still complete.
    pub fn stop(&mut self) {
        let now = self.st.clock.now();
        self.st.begin_drain(now, true);
    }

    /// One poll: reaps completions, submits new I/Os in their place and
    /// rings the doorbell. Returns `false` once the worker is done (its
    /// window is over and nothing is outstanding).
    #[inline]
    pub fn poll(&mut self, stop: &AtomicBool) -> bool {
        let Worker { qp, st } = self;
        let tsc = st.clock.kind() == ClockKind::Tsc;
        let (mut first, mut last) = (0u64, 0u64);
        let n = qp.process_completions(st.p.depth as usize, |ctx, res| {
            // The TSC is read per completion; the OS clock, dearer, once
            // per batch.
            let now = if tsc || last == 0 {
                st.clock.now()
            } else {
                last
            };
            if first == 0 {
                first = now;
            }
            last = now;
            st.complete(ctx, res, now);
        });
        if n == 0 {
            st.empty_polls += 1;
            // Bounded spin: look at the clock (and the stop flag) now and
            // then even when nothing completes.
            if st.empty_polls >= 256 {
                st.empty_polls = 0;
                let now = st.clock.now();
                st.check_time(now, stop, qp.outstanding());
            }
            return st.running(qp.outstanding());
        }
        st.empty_polls = 0;
        let now = if tsc { st.clock.now() } else { last };
        st.check_time(now, stop, qp.outstanding());
        if st.draining.is_none() {
            st.submit(qp, now);
        }
        qp.ring_doorbell();
        if first >= st.window.start && first < st.window.end {
            st.busy_ticks += st.clock.now().saturating_sub(first);
            st.batches += 1;
        }
        st.progress.completed.store(st.completed, Ordering::Relaxed);
        st.running(qp.outstanding())
    }

    /// I/Os outstanding now.
    pub fn outstanding(&self) -> usize {
        self.qp.outstanding()
    }

    /// Verify mode: the generation of the last write completed on `unit`
    /// (0 = not written by this run), and whether an I/O is in flight there.
    pub fn unit_state(&self, unit: u64) -> Option<(u32, bool)> {
        self.st
            .units
            .get(unit as usize)
            .map(|&s| (s & !BUSY, s & BUSY != 0))
    }

    /// The first LBA of `unit` of this worker's share.
    pub fn unit_lba(&self, unit: u64) -> u64 {
        (self.st.p.first_unit + unit) * self.st.blocks_per_io
    }

    /// Counts so far: (I/Os in the window, reads, writes, errors, verified
    /// reads, mismatches).
    pub fn counts(&self) -> [u64; 6] {
        let s = &self.st;
        [s.ios, s.reads, s.writes, s.errors, s.verified, s.mismatches]
    }

    /// The first verify mismatch seen, if any.
    pub fn first_mismatch(&self) -> Option<pattern::Mismatch> {
        self.st.first_mismatch
    }

    /// What went wrong for good (a refused submission, I/Os that never
    /// completed), if anything.
    pub fn fatal(&self) -> Option<&str> {
        self.st.fatal.as_deref()
    }

    /// The measurements. Releases the queue pair (deleting it on the
    /// controller).
    pub fn into_result(self) -> (WorkerResult, Option<String>) {
        let Worker { qp, st } = self;
        let outstanding = qp.outstanding();
        let qs = qp.stats();
        drop(qp);
        let end = st.draining.unwrap_or(st.window.end).min(st.window.end);
        let elapsed_ticks = end.saturating_sub(st.window.start);
        let result = WorkerResult {
            device: st.device,
            nsid: st.p.nsid,
            core: st.core,
            io_size: st.p.io_size,
            ios: st.ios,
            reads: st.reads,
            writes: st.writes,
            errors: st.errors,
            verified: st.verified,
            mismatches: st.mismatches,
            elapsed_ns: if st.timed {
                st.clock.ticks_to_ns(elapsed_ticks)
            } else {
                0
            },
            busy_ns: st.clock.ticks_to_ns(st.busy_ticks),
            batches: st.batches,
            latency: st.latency,
            queue: Some(QueueCounts {
                completions: qs.completed + qs.failed,
                sq_doorbells: qs.sq_doorbells,
                cq_doorbells: qs.cq_doorbells,
                polls: qs.polls,
            }),
        };
        if outstanding > 0 {
            // The controller may still write into these buffers: never
            // hand them back to the allocator.
            std::mem::forget(st.slots);
        }
        (result, st.fatal)
    }
}

impl State {
    #[inline]
    fn running(&self, outstanding: usize) -> bool {
        !(self.gave_up() || self.draining.is_some() && outstanding == 0)
    }

    fn gave_up(&self) -> bool {
        self.fatal.is_some() && self.draining.is_some() && self.drain_deadline == 0
    }

    /// Stops submitting. With `cut`, the measured window ends now too (an
    /// early stop: I/Os completing while draining are not counted); without
    /// (the I/O limit of tests), the outstanding I/Os still count.
    fn begin_drain(&mut self, now: u64, cut: bool) {
        if self.draining.is_none() {
            if cut {
                self.window.end = self.window.end.min(now);
            }
            self.draining = Some(now.min(self.window.end));
            self.drain_deadline = now.saturating_add(self.clock.ns_to_ticks(DRAIN_LIMIT_NS));
        }
    }

    #[inline]
    fn check_time(&mut self, now: u64, stop: &AtomicBool, outstanding: usize) {
        match self.draining {
            None => {
                if now >= self.window.end || stop.load(Ordering::Relaxed) {
                    self.begin_drain(now, true);
                }
            }
            Some(_) => {
                if outstanding > 0 && self.drain_deadline != 0 && now > self.drain_deadline {
                    self.fatal = Some(format!(
                        "{} I/Os still outstanding {} s after the end of the run",
                        outstanding,
                        DRAIN_LIMIT_NS / 1_000_000_000
                    ));
                    self.drain_deadline = 0; // gave up
                }
            }
        }
    }

    #[inline]
    fn complete(&mut self, ctx: u32, res: Result<u32, CommandError>, now: u64) {
        self.completed += 1;
        let slot = &self.slots[ctx as usize];
        let in_window = now >= self.window.start && now < self.window.end;
        match res {
            Ok(_) => {
                if in_window {
                    self.ios += 1;
                    if slot.write {
                        self.writes += 1;
                    } else {
                        self.reads += 1;
                    }
                    let ticks = now.saturating_sub(slot.start);
                    self.latency.record(self.clock.ticks_to_ns(ticks));
                }
                if self.p.verify {
                    self.verify_completion(ctx);
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.printed < MAX_PRINTED {
                    self.printed += 1;
                    eprintln!(
                        "nvme-perf: {} ns {} core {}: {} of {} blocks at LBA {} failed: {e}",
                        self.device,
                        self.p.nsid,
                        self.core,
                        if slot.write { "write" } else { "read" },
                        self.blocks_per_io,
                        (self.p.first_unit + slot.unit) * self.blocks_per_io,
                    );
                }
                if self.p.verify {
                    let u = slot.unit as usize;
                    // A failed write leaves the unit's contents unknown.
                    self.units[u] = if slot.write { 0 } else { self.units[u] & !BUSY };
                }
            }
        }
        self.free.push(ctx);
    }

    fn verify_completion(&mut self, ctx: u32) {
        let slot = &self.slots[ctx as usize];
        let u = slot.unit as usize;
        if slot.write {
            self.units[u] = slot.generation;
            let (word, bit) = (u / 64, 1u64 << (u % 64));
            if self.written_bits[word] & bit == 0 {
                self.written_bits[word] |= bit;
                self.written.push(u as u32);
            }
            return;
        }
        self.units[u] &= !BUSY;
        self.verified += 1;
        let lba = (self.p.first_unit + slot.unit) * self.blocks_per_io;
        // SAFETY: the read completed and the slot is not part of any
        // submitted command until it is resubmitted below; nothing else
        // accesses the buffer meanwhile.
        let data = unsafe { slot.buf.as_slice() };
        let tag = self.tag_base | slot.generation as u64;
        if let Err(m) = pattern::check(
            &data[..self.p.io_size],
            self.p.block_size as usize,
            lba,
            tag,
        ) {
            self.mismatches += 1;
            self.first_mismatch.get_or_insert(m);
            if self.printed < MAX_PRINTED {
                self.printed += 1;
                eprintln!(
                    "nvme-perf: verify: {} ns {} core {}: read of {} blocks at LBA {lba}: {m}",
                    self.device, self.p.nsid, self.core, self.blocks_per_io
                );
            }
        }
    }

    /// Picks the next I/O: (unit, write). `None` when every unit of the
    /// share is busy (verify mode only; cannot happen with more units than
    /// the depth).
    #[inline]
    fn choose(&mut self) -> Option<(u64, bool)> {
        let n = self.p.units;
        let write = match self.p.read_percent {
            100 => false,
            0 => true,
            pct => self.rng.below(100) >= pct as u64,
        };
        let mut unit = if self.p.random {
            self.rng.below(n)
        } else {
            let u = self.next_seq;
            self.next_seq = if u + 1 == n { 0 } else { u + 1 };
            u
        };
        if !self.p.verify {
            return Some((unit, write));
        }
        // Random reads aim at units this run has written (a read of any
        // other has nothing to be checked against), so the mix follows -M
        // once the first writes are done.
        if self.p.random && !write && self.units[unit as usize] & !BUSY == 0 {
            for _ in 0..8 {
                if self.written.is_empty() {
                    break;
                }
                let u = self.written[self.rng.below(self.written.len() as u64) as usize] as u64;
                if self.units[u as usize] & BUSY == 0 {
                    unit = u;
                    break;
                }
            }
        }
        // Never two I/Os on one unit at once: what a read must find would
        // be ambiguous.
        let mut tries = 0u64;
        while self.units[unit as usize] & BUSY != 0 {
            tries += 1;
            if tries > n + 8 {
                return None;
            }
            unit = if self.p.random && tries < 8 {
                self.rng.below(n)
            } else if unit + 1 == n {
                0
            } else {
                unit + 1
            };
        }
        if !self.p.random {
            self.next_seq = if unit + 1 == n { 0 } else { unit + 1 };
        }
        // A read of a unit not written yet (sequential, or nothing written
        // at all yet) becomes a write.
        Some((unit, write || self.units[unit as usize] == 0))
    }

    #[inline]
    fn submit(&mut self, qp: &mut IoQpair<u32>, now: u64) {
        while let Some(i) = self.free.pop() {
            if self.p.io_limit.is_some_and(|l| self.submitted >= l) {
                self.free.push(i);
                self.begin_drain(now, false);
                return;
            }
            let Some((unit, write)) = self.choose() else {
                self.free.push(i);
                return;
            };
            let lba = (self.p.first_unit + unit) * self.blocks_per_io;
            let slot = &mut self.slots[i as usize];
            slot.unit = unit;
            slot.write = write;
            slot.start = now;
            let mut previous = 0;
            if self.p.verify {
                previous = self.units[unit as usize];
                if write {
                    self.generation = if self.generation >= BUSY - 1 {
                        1
                    } else {
                        self.generation + 1
                    };
                    slot.generation = self.generation;
                    // SAFETY: the slot is free: no command uses its buffer.
                    let data = unsafe { slot.buf.as_mut_slice() };
                    pattern::fill(
                        &mut data[..self.p.io_size],
                        self.p.block_size as usize,
                        lba,
                        self.tag_base | self.generation as u64,
                    );
                    self.units[unit as usize] = BUSY;
                } else {
                    slot.generation = previous;
                    self.units[unit as usize] = previous | BUSY;
                }
            }
            let segs = [(slot.iova, self.p.io_size)];
            let r = if write {
                qp.write(self.p.nsid, lba, self.blocks_per_io, &segs, false, i)
            } else {
                qp.read(self.p.nsid, lba, self.blocks_per_io, &segs, i)
            };
            match r {
                Ok(()) => self.submitted += 1,
                Err(e) => {
                    self.free.push(e.ctx);
                    if self.p.verify {
                        self.units[unit as usize] = previous;
                    }
                    if e.kind != SubmitErrorKind::QueueFull {
                        self.fatal = Some(format!(
                            "{} ns {} core {}: submission refused: {}",
                            self.device, self.p.nsid, self.core, e.kind
                        ));
                        self.begin_drain(now, true);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_all_counts_everything() {
        assert_eq!(Window::ALL.start, 0);
        assert_eq!(Window::ALL.end, u64::MAX);
        assert_eq!(std::mem::align_of::<Progress>(), 64);
    }
}
