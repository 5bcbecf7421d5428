//! Per-core buffer caches: the hot path takes and returns buffers of the
//! common sizes from a cache owned by its core, without locks or allocation;
//! the cache refills from and flushes to the shared allocator in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::buf::DmaBuf;
use crate::error::DmaError;
use crate::memory::DmaMemory;

/// Counters of one cache: written only by the cache's owner, read by
/// [`DmaMemory::stats`] from anywhere. Single writer, so updates are plain
/// relaxed load + store (no locked read-modify-write on the hot path).
#[derive(Debug)]
pub(crate) struct CacheCounters {
    pub(crate) cached: Vec<AtomicUsize>,
    pub(crate) outstanding: Vec<AtomicUsize>,
}

/// A per-core cache of DMA buffers in the configured size classes (by default
/// 4 KiB to 128 KiB). Owned by one core: it is `Send` but `&mut` access only.
pub struct DmaCache {
    mem: DmaMemory,
    classes: Vec<Class>,
    counters: Arc<CacheCounters>,
    batch: usize,
    depth: usize,
}

struct Class {
    size: usize,
    align: usize,
    free: Vec<DmaBuf>,
}

impl std::fmt::Debug for DmaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaCache")
            .field(
                "classes",
                &self
                    .classes
                    .iter()
                    .map(|c| (c.size, c.free.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Adds `delta` (wrapping) to a counter only this cache writes.
#[inline]
fn bump(c: &AtomicUsize, delta: isize) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add_signed(delta),
        Ordering::Relaxed,
    );
}

impl DmaCache {
    pub(crate) fn new(mem: DmaMemory) -> Self {
        let cfg = mem.config();
        let depth = cfg.cache_depth;
        let classes: Vec<Class> = cfg
            .cache_classes
            .iter()
            .map(|&size| Class {
                size,
                align: size.min(4096),
                // Room for a full cache plus one refill: pushes never allocate.
                free: Vec::with_capacity(depth + cfg.cache_batch),
            })
            .collect();
        let n = classes.len();
        let counters = Arc::new(CacheCounters {
            cached: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            outstanding: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        });
        DmaCache {
            batch: cfg.cache_batch,
            depth,
            mem,
            classes,
            counters,
        }
    }

    pub(crate) fn counters(&self) -> &Arc<CacheCounters> {
        &self.counters
    }

    /// The memory this cache draws from.
    pub fn memory(&self) -> &DmaMemory {
        &self.mem
    }

    /// The class index for a buffer of `len` bytes.
    fn class_of(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.size >= len)
    }

    /// A buffer of at least `len` bytes ([`DmaBuf::len`] is the class size),
    /// aligned to the class size or 4 KiB, whichever is smaller. Requests
    /// larger than the largest class go to the shared allocator (with its
    /// lock) and come back 4 KiB-aligned.
    ///
    /// # Errors
    /// As [`DmaMemory::alloc`].
    pub fn alloc(&mut self, len: usize) -> Result<DmaBuf, DmaError> {
        let Some(i) = self.class_of(len) else {
            return self.mem.alloc(len, 4096);
        };
        if self.classes[i].free.is_empty() {
            self.refill(i)?;
        }
        let buf = self.classes[i].free.pop().expect("refilled");
        bump(&self.counters.cached[i], -1);
        bump(&self.counters.outstanding[i], 1);
        Ok(buf)
    }

    #[cold]
    fn refill(&mut self, i: usize) -> Result<(), DmaError> {
        let class = &mut self.classes[i];
        let before = class.free.len();
        let res = self
            .mem
            .alloc_batch(class.size, class.align, self.batch, &mut class.free);
        let got = class.free.len() - before;
        bump(&self.counters.cached[i], got as isize);
        if got > 0 { Ok(()) } else { res }
    }

    /// Returns a buffer. Buffers of a class size go back into the cache
    /// (half the cache is flushed to the shared allocator when it is full);
    /// any other buffer is freed.
    pub fn free(&mut self, buf: DmaBuf) {
        let i = match self.class_of(buf.len()) {
            Some(i)
                if self.classes[i].size == buf.len()
                    && std::ptr::eq(
                        std::sync::Arc::as_ptr(&buf.memory().inner),
                        std::sync::Arc::as_ptr(&self.mem.inner),
                    ) =>
            {
                i
            }
            _ => {
                drop(buf);
                return;
            }
        };
        if self.classes[i].free.len() >= self.depth {
            self.flush(i);
        }
        self.classes[i].free.push(buf);
        bump(&self.counters.outstanding[i], -1);
        bump(&self.counters.cached[i], 1);
    }

    #[cold]
    fn flush(&mut self, i: usize) {
        let class = &mut self.classes[i];
        let keep = self.depth / 2;
        let n = class.free.len() - keep;
        self.mem.free_batch(class.free.drain(keep..));
        bump(&self.counters.cached[i], -(n as isize));
    }

    /// Buffers currently cached per class: (size, count).
    pub fn cached(&self) -> Vec<(usize, usize)> {
        self.classes
            .iter()
            .map(|c| (c.size, c.free.len()))
            .collect()
    }
}

impl Drop for DmaCache {
    fn drop(&mut self) {
        for i in 0..self.classes.len() {
            let n = self.classes[i].free.len();
            self.mem.free_batch(self.classes[i].free.drain(..));
            bump(&self.counters.cached[i], -(n as isize));
        }
    }
}
