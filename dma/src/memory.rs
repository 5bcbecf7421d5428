//! `DmaMemory`: the regions of one process (or one test), the allocator over
//! them, their IO-virtual addresses, their mapping into the VFIO container,
//! and the accounting.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::allocator::{GRANULE, round_up};
use crate::buf::DmaBuf;
use crate::cache::{CacheCounters, DmaCache};
use crate::config::{Backing, DmaConfig};
use crate::error::DmaError;
use crate::region::Region;
use crate::stats::{ClassStats, DmaStats};

/// IO-virtual addresses start at 4 GiB and grow upward. They are not the
/// virtual addresses (IOVA = VA) because user-space addresses reach 47 bits
/// while QEMU's emulated VT-d, like many real IOMMUs, translates only 39-bit
/// IOVAs; below 4 GiB lie the x86 MSI window and other reserved ranges.
pub const IOVA_BASE: u64 = 1 << 32;

/// Something that can map memory for device DMA: the VFIO container, or a
/// test double.
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes at `va` to `iova` for device reads and writes.
    ///
    /// # Safety
    /// `va..va+len` must stay mapped until [`DmaMapper::unmap`] is called for
    /// it, and no Rust reference to that memory may exist while it is mapped
    /// (the device reads and writes it concurrently).
    unsafe fn map(&self, iova: u64, len: usize, va: *mut u8) -> io::Result<()>;
    /// Removes the mapping made at `iova`.
    ///
    /// # Errors
    /// The OS error when the IOMMU refuses.
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()>;
}

impl DmaMapper for vfio_ioctls::VfioContainer {
    unsafe fn map(&self, iova: u64, len: usize, va: *mut u8) -> io::Result<()> {
        // SAFETY: the caller upholds `vfio_dma_map`'s contract, which is this
        // trait method's contract.
        unsafe { self.vfio_dma_map(iova, len, va) }.map_err(io::Error::other)
    }

    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.vfio_dma_unmap(iova, len).map_err(io::Error::other)
    }
}

/// DMA memory: grows in regions up to its limit; cheap to clone (a handle).
#[derive(Clone)]
pub struct DmaMemory {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMemory")
            .field("backing", &self.inner.config.backing)
            .field("limit", &self.inner.config.limit)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: DmaConfig,
    state: Mutex<State>,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
    reserved: AtomicUsize,
    caches: Mutex<Vec<Weak<CacheCounters>>>,
}

struct State {
    regions: Vec<Region>,
    next_id: u64,
    next_iova: u64,
    mapper: Option<Arc<dyn DmaMapper>>,
}

impl DmaMemory {
    /// Memory with the given configuration. Nothing is reserved until the
    /// first allocation.
    ///
    /// # Errors
    /// [`DmaError::Config`] for an unusable configuration.
    pub fn new(config: DmaConfig) -> Result<Self, DmaError> {
        config.validate().map_err(DmaError::Config)?;
        Ok(DmaMemory {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    regions: Vec::new(),
                    next_id: 0,
                    next_iova: IOVA_BASE,
                    mapper: None,
                }),
                in_use: AtomicUsize::new(0),
                high_water: AtomicUsize::new(0),
                reserved: AtomicUsize::new(0),
                caches: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DmaConfig {
        &self.inner.config
    }

    /// Whether this memory may be given to devices (it is hugepage-backed).
    pub fn is_device_capable(&self) -> bool {
        !matches!(self.inner.config.backing, Backing::Anonymous)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the allocator consistent:
        // every mutation below completes before anything can panic.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates `len` bytes aligned to `align` (a power of two, at most the
    /// page size), in virtual and in IO-virtual space. Takes the allocator's
    /// lock: for the hot path use a per-core [`DmaCache`].
    ///
    /// # Errors
    /// [`DmaError::InvalidRequest`] for a zero length or a bad alignment;
    /// [`DmaError::OutOfMemory`] with the numbers when the limit or the
    /// system's hugepages are exhausted; [`DmaError::Map`] when the IOMMU
    /// refuses a new region.
    pub fn alloc(&self, len: usize, align: usize) -> Result<DmaBuf, DmaError> {
        let mut out = Vec::with_capacity(1);
        self.alloc_batch(len, align, 1, &mut out)?;
        Ok(out.pop().expect("alloc_batch returned one buffer"))
    }

    /// Allocates `count` buffers of `len` bytes under one lock, pushing them
    /// onto `out`. On error the buffers already made stay in `out`.
    pub(crate) fn alloc_batch(
        &self,
        len: usize,
        align: usize,
        count: usize,
        out: &mut Vec<DmaBuf>,
    ) -> Result<(), DmaError> {
        let page = self.inner.config.page_bytes();
        let invalid = |reason| DmaError::InvalidRequest { len, align, reason };
        if len == 0 {
            return Err(invalid("zero length"));
        }
        if !align.is_power_of_two() {
            return Err(invalid("alignment is not a power of two"));
        }
        if align > page {
            return Err(invalid("alignment is larger than the page size"));
        }
        let align = align.max(GRANULE);
        let size = round_up(len, GRANULE).ok_or(invalid("length overflows"))?;
        let mut st = self.state();
        for _ in 0..count {
            let (region, offset) = match Self::take(&mut st, size, align) {
                Some(found) => found,
                None => {
                    self.grow(&mut st, size)?;
                    Self::take(&mut st, size, align).ok_or(invalid("no fit in a fresh region"))?
                }
            };
            let r = &st.regions[region];
            // SAFETY: `offset + size <= r.len`, as the extent allocator only
            // hands out ranges inside the region.
            let ptr = unsafe { NonNull::new_unchecked(r.va.as_ptr().add(offset)) };
            out.push(DmaBuf::new(
                ptr,
                len,
                size,
                r.iova + offset as u64,
                r.id,
                offset,
                self.clone(),
            ));
            let now = self.inner.in_use.fetch_add(size, Ordering::Relaxed) + size;
            self.inner.high_water.fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    fn take(st: &mut State, size: usize, align: usize) -> Option<(usize, usize)> {
        st.regions
            .iter_mut()
            .enumerate()
            .find_map(|(i, r)| r.extents.alloc(size, align).map(|off| (i, off)))
    }

    /// Reserves one more region big enough for `size` bytes.
    fn grow(&self, st: &mut State, size: usize) -> Result<(), DmaError> {
        let cfg = &self.inner.config;
        let page = cfg.page_bytes();
        let reserved: usize = st.regions.iter().map(|r| r.len).sum();
        let free: usize = st.regions.iter().map(|r| r.extents.free_bytes()).sum();
        let oom = |detail: String| DmaError::OutOfMemory {
            asked: size,
            free,
            reserved,
            limit: cfg.limit,
            detail,
        };
        let need = round_up(size, page).ok_or_else(|| oom(String::new()))?;
        let room = (cfg.limit - reserved.min(cfg.limit)) / page * page;
        if need > room {
            return Err(oom(String::new()));
        }
        let step = round_up(cfg.grow_step, page).unwrap_or(need);
        let len = need.max(step).min(room);
        let iova = round_up(st.next_iova as usize, page)
            .ok_or_else(|| oom("IOVA space exhausted".into()))? as u64;
        let mut region = Region::map(st.next_id, len, iova, &cfg.backing).map_err(|e| match e {
            DmaError::OutOfMemory { detail, .. } => oom(format!(" ({detail})")),
            other => other,
        })?;
        if let Some(mapper) = &st.mapper {
            // SAFETY: the region was just created: no reference into it exists,
            // and it stays mapped until it is unmapped from the container in
            // `release_unused` or on drop.
            unsafe { mapper.map(iova, len, region.va.as_ptr()) }
                .map_err(|source| DmaError::Map { iova, len, source })?;
            region.mapped = true;
        }
        st.next_id += 1;
        st.next_iova = iova + len as u64;
        st.regions.push(region);
        self.inner.reserved.fetch_add(len, Ordering::Relaxed);
        log::debug!("DMA region of {len} bytes at IOVA {iova:#x}");
        Ok(())
    }

    /// Returns a buffer's bytes to its region.
    pub(crate) fn free_raw(&self, region: u64, offset: usize, size: usize) {
        let mut st = self.state();
        Self::free_locked(&mut st, region, offset, size);
        self.inner.in_use.fetch_sub(size, Ordering::Relaxed);
    }

    fn free_locked(st: &mut State, region: u64, offset: usize, size: usize) {
        let r = st
            .regions
            .iter_mut()
            .find(|r| r.id == region)
            .expect("a live buffer's region is never released");
        r.extents.free(offset, size);
    }

    /// Returns many buffers under one lock (used by per-core caches).
    pub(crate) fn free_batch(&self, bufs: impl Iterator<Item = DmaBuf>) {
        let mut st = self.state();
        let mut total = 0;
        for b in bufs {
            let (region, offset, size) = b.into_raw_parts();
            Self::free_locked(&mut st, region, offset, size);
            total += size;
        }
        self.inner.in_use.fetch_sub(total, Ordering::Relaxed);
    }

    /// Maps every region, now and in the future, into `mapper` (the process's
    /// VFIO container). Call it once the first device group is attached to
    /// the container (which sets its IOMMU type). Attaching the same mapper
    /// again is a no-op.
    ///
    /// # Errors
    /// [`DmaError::NoHugeCannotMap`] in no-hugepage mode;
    /// [`DmaError::OtherContainer`] if another mapper is attached;
    /// [`DmaError::Map`] if the IOMMU refuses a region (no region stays
    /// half-mapped: the ones mapped by this call are unmapped again).
    pub fn attach(&self, mapper: Arc<dyn DmaMapper>) -> Result<(), DmaError> {
        if !self.is_device_capable() {
            return Err(DmaError::NoHugeCannotMap);
        }
        let mut st = self.state();
        if let Some(m) = &st.mapper {
            return if Arc::ptr_eq(m, &mapper) {
                Ok(())
            } else {
                Err(DmaError::OtherContainer)
            };
        }
        for i in 0..st.regions.len() {
            let (iova, len, va) = {
                let r = &st.regions[i];
                (r.iova, r.len, r.va.as_ptr())
            };
            // SAFETY: regions are only accessed through `DmaBuf`'s raw and
            // volatile accessors, never through references that outlive a
            // call; the mapping is removed before the region is unmapped.
            if let Err(source) = unsafe { mapper.map(iova, len, va) } {
                for r in st.regions[..i].iter_mut() {
                    let _ = mapper.unmap(r.iova, r.len);
                    r.mapped = false;
                }
                return Err(DmaError::Map { iova, len, source });
            }
            st.regions[i].mapped = true;
        }
        st.mapper = Some(mapper);
        Ok(())
    }

    /// Forgets the container: unmaps every region from it (errors ignored:
    /// when the last device group leaves a VFIO container the kernel has
    /// already torn down its IOMMU domain and every mapping with it). A later
    /// [`DmaMemory::attach`] maps everything again.
    pub fn detach(&self) {
        let mut st = self.state();
        if let Some(m) = st.mapper.take() {
            for r in st.regions.iter_mut().filter(|r| r.mapped) {
                let _ = m.unmap(r.iova, r.len);
                r.mapped = false;
            }
        }
    }

    /// Whether the memory is mapped into a container.
    pub fn is_attached(&self) -> bool {
        self.state().mapper.is_some()
    }

    /// Gives back to the system every region with nothing allocated in it
    /// (after unmapping it from the container). Returns the bytes released.
    pub fn release_unused(&self) -> usize {
        let mut st = self.state();
        let mapper = st.mapper.clone();
        let mut released = 0;
        st.regions.retain(|r| {
            if !r.extents.is_empty() {
                return true;
            }
            if r.mapped
                && let Some(m) = &mapper
                && let Err(e) = m.unmap(r.iova, r.len)
            {
                log::warn!("keeping region at IOVA {:#x}: unmap failed: {e}", r.iova);
                return true;
            }
            released += r.len;
            false
        });
        self.inner.reserved.fetch_sub(released, Ordering::Relaxed);
        released
    }

    /// The IO-virtual address of any address inside a region, or `None` for
    /// memory this allocator does not own. Takes the lock: the hot path uses
    /// [`DmaBuf::iova_at`] instead.
    pub fn translate(&self, addr: *const u8) -> Option<u64> {
        let st = self.state();
        let a = addr as usize;
        st.regions
            .iter()
            .find(|r| r.contains(a))
            .map(|r| r.iova + (a - r.va.as_ptr() as usize) as u64)
    }

    /// The address in this process of `len` bytes at IO-virtual address
    /// `iova`, when they lie inside one region: what a device model (a test
    /// double of a controller) needs to reach the memory it is given.
    pub fn iova_to_ptr(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let st = self.state();
        st.regions.iter().find_map(|r| {
            let off = iova.checked_sub(r.iova)? as usize;
            (off.checked_add(len)? <= r.len).then(|| r.va.as_ptr().wrapping_add(off))
        })
    }

    /// The regions as (virtual address, IOVA, length, mapped into the
    /// container), for diagnostics and tests.
    pub fn regions(&self) -> Vec<(usize, u64, usize, bool)> {
        self.state()
            .regions
            .iter()
            .map(|r| (r.va.as_ptr() as usize, r.iova, r.len, r.mapped))
            .collect()
    }

    /// A new per-core buffer cache over this memory.
    pub fn cache(&self) -> DmaCache {
        let cache = DmaCache::new(self.clone());
        let mut caches = self.inner.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.retain(|w| w.strong_count() > 0);
        caches.push(Arc::downgrade(cache.counters()));
        cache
    }

    /// Accounting: reserved, in use, high-water mark and per-class pools.
    pub fn stats(&self) -> DmaStats {
        let classes = &self.inner.config.cache_classes;
        let mut per_class: Vec<ClassStats> = classes
            .iter()
            .map(|&size| ClassStats {
                size,
                cached: 0,
                outstanding: 0,
            })
            .collect();
        let caches = self.inner.caches.lock().unwrap_or_else(|p| p.into_inner());
        let mut ncaches = 0;
        for c in caches.iter().filter_map(Weak::upgrade) {
            ncaches += 1;
            for (i, s) in per_class.iter_mut().enumerate() {
                s.cached += c.cached[i].load(Ordering::Relaxed);
                s.outstanding += c.outstanding[i].load(Ordering::Relaxed);
            }
        }
        let regions = self.state().regions.len();
        DmaStats {
            limit: self.inner.config.limit,
            reserved: self.inner.reserved.load(Ordering::Relaxed),
            in_use: self.inner.in_use.load(Ordering::Relaxed),
            high_water: self.inner.high_water.load(Ordering::Relaxed),
            regions,
            caches: ncaches,
            classes: per_class,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &st.mapper {
            for r in st.regions.iter().filter(|r| r.mapped) {
                if let Err(e) = m.unmap(r.iova, r.len) {
                    log::warn!("unmapping DMA region at IOVA {:#x}: {e}", r.iova);
                }
            }
        }
    }
}
