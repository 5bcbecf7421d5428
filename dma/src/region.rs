//! One contiguous stretch of DMA memory: hugepages from MAP_HUGETLB or a
//! hugetlbfs file, or plain anonymous memory in no-hugepage mode. Every
//! region is aligned to its page size, in virtual and in IO-virtual space.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::allocator::Extents;
use crate::config::{Backing, PageSize};
use crate::error::DmaError;

/// Alignment of regions in no-hugepage mode, so alignments up to 2 MiB
/// behave the same in both modes.
pub const ANON_ALIGN: usize = 2 << 20;

static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A mapped region and the allocator over its bytes.
#[derive(Debug)]
pub struct Region {
    /// Stable identifier, used by buffers to find their region on free.
    pub id: u64,
    /// Start of the mapping in this process.
    pub va: NonNull<u8>,
    /// Length in bytes (a multiple of `align`).
    pub len: usize,
    /// IO-virtual address of `va`.
    pub iova: u64,
    /// Free space.
    pub extents: Extents,
    /// Whether the region is mapped into the VFIO container.
    pub mapped: bool,
    /// The raw mapping (may start before `va` in anonymous mode).
    raw: (NonNull<u8>, usize),
}

// SAFETY: a Region owns its mapping; the raw pointer is only an address, and
// all access to the memory goes through `DmaBuf`'s raw/volatile accessors.
unsafe impl Send for Region {}

impl Region {
    /// Maps `len` bytes (a multiple of the page size) with the given backing.
    pub fn map(id: u64, len: usize, iova: u64, backing: &Backing) -> Result<Region, DmaError> {
        match backing {
            Backing::Anonymous => Self::map_anonymous(id, len, iova),
            Backing::Hugepages { page, dir: None } => Self::map_hugetlb(id, len, iova, *page),
            Backing::Hugepages {
                page,
                dir: Some(dir),
            } => Self::map_hugetlbfs(id, len, iova, *page, dir),
        }
    }

    fn new(id: u64, va: NonNull<u8>, len: usize, iova: u64, raw: (NonNull<u8>, usize)) -> Region {
        Region {
            id,
            va,
            len,
            iova,
            extents: Extents::new(len),
            mapped: false,
            raw,
        }
    }

    fn map_anonymous(id: u64, len: usize, iova: u64) -> Result<Region, DmaError> {
        let raw_len = len + ANON_ALIGN;
        let raw = mmap(
            raw_len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
        .map_err(|e| oom_detail(len, format!("anonymous mmap failed: {e}")))?;
        let addr = raw.as_ptr() as usize;
        let aligned = (addr + ANON_ALIGN - 1) & !(ANON_ALIGN - 1);
        // SAFETY: `aligned - addr < ANON_ALIGN`, so `aligned..aligned+len` lies
        // inside the `raw_len` bytes just mapped.
        let va = unsafe { NonNull::new_unchecked(raw.as_ptr().add(aligned - addr)) };
        Ok(Region::new(id, va, len, iova, (raw, raw_len)))
    }

    fn map_hugetlb(id: u64, len: usize, iova: u64, page: PageSize) -> Result<Region, DmaError> {
        let flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_HUGETLB
            | libc::MAP_POPULATE
            | page.mmap_flag();
        let raw = mmap(len, flags, -1).map_err(|e| {
            oom_detail(
                len,
                format!(
                    "the kernel has too few free {} hugepages ({e})",
                    page.name()
                ),
            )
        })?;
        lock(raw, len);
        Ok(Region::new(id, raw, len, iova, (raw, len)))
    }

    fn map_hugetlbfs(
        id: u64,
        len: usize,
        iova: u64,
        page: PageSize,
        dir: &Path,
    ) -> Result<Region, DmaError> {
        let seq = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("rss-dma-{}-{seq}", std::process::id()));
        let file_err = |source| DmaError::HugetlbfsFile {
            path: path.display().to_string(),
            source,
        };
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| file_err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in path")))?;
        // SAFETY: `cpath` is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(file_err(io::Error::last_os_error()));
        }
        // The file only needs to live as long as the mapping.
        // SAFETY: `cpath` is a valid NUL-terminated path.
        unsafe { libc::unlink(cpath.as_ptr()) };
        // SAFETY: `fd` is the file just opened.
        let rc = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        let result = if rc != 0 {
            Err(oom_detail(
                len,
                format!(
                    "ftruncate on hugetlbfs failed: {}",
                    io::Error::last_os_error()
                ),
            ))
        } else {
            mmap(len, libc::MAP_SHARED | libc::MAP_POPULATE, fd).map_err(|e| {
                oom_detail(
                    len,
                    format!(
                        "too few free {} hugepages in {} ({e})",
                        page.name(),
                        dir.display()
                    ),
                )
            })
        };
        // SAFETY: `fd` is ours; the mapping keeps the pages alive.
        unsafe { libc::close(fd) };
        let raw = result?;
        lock(raw, len);
        Ok(Region::new(id, raw, len, iova, (raw, len)))
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: usize) -> bool {
        let start = self.va.as_ptr() as usize;
        addr >= start && addr < start + self.len
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `raw` is exactly the mapping made in `map`; buffers into it
        // hold the memory manager alive, so none outlives the region.
        unsafe { libc::munmap(self.raw.0.as_ptr().cast(), self.raw.1) };
    }
}

fn oom_detail(len: usize, detail: String) -> DmaError {
    DmaError::OutOfMemory {
        asked: len,
        free: 0,
        reserved: 0,
        limit: 0,
        detail,
    }
}

fn mmap(len: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping at an address of the kernel's choice; the
    // result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// Locks the pages so they are never swapped or migrated while a device may
/// hold their IO-virtual addresses. Hugetlb pages are not swapped anyway; a
/// failing mlock (RLIMIT_MEMLOCK) is logged, not fatal, for them.
fn lock(p: NonNull<u8>, len: usize) {
    // SAFETY: `p..p+len` is a mapping owned by the caller.
    if unsafe { libc::mlock(p.as_ptr().cast(), len) } != 0 {
        log::debug!(
            "mlock of {len} bytes failed ({}); hugetlb pages stay resident regardless",
            io::Error::last_os_error()
        );
    }
}
