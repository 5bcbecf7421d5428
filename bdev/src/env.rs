//! What the layer needs from its surroundings: the DMA memory for bounce
//! buffers and module data, a runtime handle for messages and examine tasks,
//! and the per-channel I/O pool size.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dma::{DmaConfig, DmaMemory};

static MEMORY: Mutex<Option<DmaMemory>> = Mutex::new(None);
static HANDLE: Mutex<Option<reactor::Handle>> = Mutex::new(None);
static POOL: AtomicUsize = AtomicUsize::new(512);
static LATENCY: AtomicBool = AtomicBool::new(true);

/// Sets the DMA memory the layer and its modules use (hugepage memory when
/// devices are driven). Must be called before bdevs that need it exist.
pub fn set_memory(mem: DmaMemory) {
    *MEMORY.lock().unwrap_or_else(|p| p.into_inner()) = Some(mem);
}

/// The layer's DMA memory: the one set with [`set_memory`], or else 1 GiB of
/// anonymous (no-hugepage) memory reserved lazily.
pub fn memory() -> DmaMemory {
    MEMORY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(|| {
            DmaMemory::new(DmaConfig {
                grow_step: 8 << 20,
                ..DmaConfig::anonymous(1 << 30)
            })
            .expect("the default anonymous DMA configuration is valid")
        })
        .clone()
}

/// Sets the runtime the layer sends events and runs examine tasks on.
pub fn set_runtime(handle: reactor::Handle) {
    *HANDLE.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
}

/// The runtime: the one set with [`set_runtime`], else the current
/// reactor's.
pub fn handle() -> Option<reactor::Handle> {
    reactor::handle().or_else(|| HANDLE.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Sets how many I/O objects each channel preallocates (SPDK's
/// `bdev_io_pool_size` per thread). Applies to channels created afterwards.
pub fn set_io_pool_size(n: usize) {
    POOL.store(n.max(8), Ordering::Relaxed);
}

pub(crate) fn io_pool_size() -> usize {
    POOL.load(Ordering::Relaxed)
}

/// Turns per-I/O latency tracking on (the default) or off, for channels
/// created afterwards. On, the layer reads the clock once per I/O, at its
/// completion (the submission time of an I/O submitted from a completion
/// callback is that completion's time; elsewhere it is read too), and
/// `bdev_get_iostat` reports latencies; off, it reads no clock at all and
/// counts operations and bytes only.
pub fn set_latency_tracking(on: bool) {
    LATENCY.store(on, Ordering::Relaxed);
}

/// Whether per-I/O latency tracking is on ([`set_latency_tracking`]).
pub fn latency_tracking() -> bool {
    LATENCY.load(Ordering::Relaxed)
}

thread_local! {
    /// The completion time the layer read for the callback running now on
    /// this thread (0: none running).
    static COMPLETION_NS: Cell<u64> = const { Cell::new(0) };
}

/// The time for an I/O event now: the running completion's, or a fresh read.
#[inline]
pub(crate) fn io_clock() -> u64 {
    let t = COMPLETION_NS.with(Cell::get);
    if t != 0 {
        t
    } else {
        reactor::clock_ns().max(1)
    }
}

/// Runs `f` (a completion callback) with `now` as the time for what it submits.
#[inline]
pub(crate) fn with_completion_time<R>(now: u64, f: impl FnOnce() -> R) -> R {
    let prev = COMPLETION_NS.with(|c| c.replace(now));
    let r = f();
    COMPLETION_NS.with(|c| c.set(prev));
    r
}
