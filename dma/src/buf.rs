//! `DmaBuf`: the owner of one allocation of DMA memory. It exposes the
//! IO-virtual address of every byte and offers only raw and volatile access,
//! because a device may read or write the memory at any time.

use std::mem::{ManuallyDrop, align_of, size_of};
use std::ptr::NonNull;

use crate::memory::DmaMemory;

/// A buffer of DMA memory. Dropping it returns it to its [`DmaMemory`]; on the
/// hot path hand it back to a per-core [`crate::DmaCache`] instead.
///
/// No `&[u8]` into it is ever handed out by safe code: copying in and out goes
/// through raw pointer copies, single values through volatile accesses.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    size: usize,
    iova: u64,
    region: u64,
    offset: usize,
    mem: ManuallyDrop<DmaMemory>,
}

// SAFETY: a DmaBuf exclusively owns its bytes (the allocator never hands the
// same range out twice), so moving it to another thread is sound. It is not
// Sync: volatile writes through `&self` from two threads would race.
unsafe impl Send for DmaBuf {}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("va", &self.ptr)
            .field("len", &self.len)
            .field("iova", &format_args!("{:#x}", self.iova))
            .finish()
    }
}

impl DmaBuf {
    pub(crate) fn new(
        ptr: NonNull<u8>,
        len: usize,
        size: usize,
        iova: u64,
        region: u64,
        offset: usize,
        mem: DmaMemory,
    ) -> Self {
        DmaBuf {
            ptr,
            len,
            size,
            iova,
            region,
            offset,
            mem: ManuallyDrop::new(mem),
        }
    }

    /// Takes the buffer apart without freeing it: (region id, offset, size).
    pub(crate) fn into_raw_parts(self) -> (u64, usize, usize) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so the handle is moved
        // out exactly once.
        unsafe { ManuallyDrop::drop(&mut me.mem) };
        (me.region, me.offset, me.size)
    }

    pub(crate) fn memory(&self) -> &DmaMemory {
        &self.mem
    }

    /// Usable length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no usable bytes (never: allocations are > 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes taken from the allocator (the length rounded up to 64).
    pub fn allocated_len(&self) -> usize {
        self.size
    }

    /// The IO-virtual address of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The IO-virtual address of the byte at `offset`. A buffer never spans
    /// regions and a region is contiguous in IO-virtual space, so this holds
    /// for every 4 KiB page of a buffer that spans several hugepages.
    ///
    /// # Panics
    /// When `offset` is beyond the buffer.
    pub fn iova_at(&self, offset: usize) -> u64 {
        assert!(
            offset < self.len,
            "offset {offset} beyond a {}-byte buffer",
            self.len
        );
        self.iova + offset as u64
    }

    /// The address of the first byte in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}+{len} beyond a {}-byte DMA buffer",
            self.len
        );
    }

    /// Copies `src` into the buffer at `offset`.
    ///
    /// # Panics
    /// When the range does not fit the buffer.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the range is inside the buffer (checked), which this
        // DmaBuf owns; `src` is a distinct Rust slice, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }

    /// Copies bytes from the buffer at `offset` into `dst`.
    ///
    /// # Panics
    /// When the range does not fit the buffer.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: as in `write_at`, with the roles swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Sets every byte to `byte`.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: the whole buffer is owned by this DmaBuf.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) }
    }

    /// Reads a `T` at `offset` with a volatile load (for memory a device
    /// writes, such as completion entries).
    ///
    /// # Panics
    /// When the range does not fit or `offset` is not aligned for `T`.
    pub fn read_volatile<T: Copy>(&self, offset: usize) -> T {
        self.check(offset, size_of::<T>());
        let p = self.ptr.as_ptr().wrapping_add(offset);
        assert!(
            (p as usize).is_multiple_of(align_of::<T>()),
            "misaligned volatile read"
        );
        // SAFETY: in bounds and aligned (checked); any bit pattern is read as
        // raw memory and `T: Copy` is plain data by the callers' contract.
        unsafe { p.cast::<T>().read_volatile() }
    }

    /// Writes a `T` at `offset` with a volatile store (for memory a device
    /// reads, such as submission entries).
    ///
    /// # Panics
    /// When the range does not fit or `offset` is not aligned for `T`.
    pub fn write_volatile<T: Copy>(&self, offset: usize, value: T) {
        self.check(offset, size_of::<T>());
        let p = self.ptr.as_ptr().wrapping_add(offset);
        assert!(
            (p as usize).is_multiple_of(align_of::<T>()),
            "misaligned volatile write"
        );
        // SAFETY: in bounds and aligned (checked). DmaBuf is not Sync, so no
        // other thread accesses it through `&self` at the same time.
        unsafe { p.cast::<T>().write_volatile(value) }
    }

    /// The bytes as a slice.
    ///
    /// # Safety
    /// No device may access the buffer while the slice lives (the buffer is
    /// not part of any submitted command), or the aliasing rules are broken.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: in bounds; the caller guarantees no concurrent device access.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// As [`DmaBuf::as_slice`].
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: in bounds, uniquely borrowed; the caller guarantees no
        // concurrent device access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.mem.free_raw(self.region, self.offset, self.size);
        // SAFETY: dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.mem) };
    }
}
