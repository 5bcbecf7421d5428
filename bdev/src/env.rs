//! What the layer needs from its surroundings: the DMA memory for bounce
//! buffers and module data, a runtime handle for messages and examine tasks,
//! and the per-channel I/O pool size.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use dma::{DmaConfig, DmaMemory};

static MEMORY: Mutex<Option<DmaMemory>> = Mutex::new(None);
static HANDLE: Mutex<Option<reactor::Handle>> = Mutex::new(None);
static POOL: AtomicUsize = AtomicUsize::new(512);

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
