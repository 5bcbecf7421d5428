//! How DMA memory is obtained and how much of it.

use std::path::PathBuf;

/// Hugepage sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 2 MiB pages.
    Huge2M,
    /// 1 GiB pages.
    Huge1G,
}

impl PageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    /// Its name as the kernel's sysfs spells it (`hugepages-2048kB`).
    pub fn name(self) -> &'static str {
        match self {
            PageSize::Huge2M => "2048kB",
            PageSize::Huge1G => "1048576kB",
        }
    }

    pub(crate) fn mmap_flag(self) -> libc::c_int {
        let shift = self.bytes().trailing_zeros() as libc::c_int;
        shift << libc::MAP_HUGE_SHIFT
    }
}

/// Where region memory comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Hugepages: anonymous `MAP_HUGETLB` mappings, or files in a hugetlbfs
    /// mount when `dir` is given.
    Hugepages {
        /// Page size.
        page: PageSize,
        /// A hugetlbfs mount point, e.g. `/dev/hugepages`.
        dir: Option<PathBuf>,
    },
    /// Plain anonymous memory (SPDK's `--no-huge`): for everything that needs
    /// no device DMA. Cannot be mapped into a VFIO container.
    Anonymous,
}

/// Configuration of a [`crate::DmaMemory`].
#[derive(Clone, Debug)]
pub struct DmaConfig {
    /// Where memory comes from.
    pub backing: Backing,
    /// Most bytes ever reserved (SPDK's `-s`).
    pub limit: usize,
    /// Bytes reserved at a time when the allocator grows (rounded up to the
    /// page size).
    pub grow_step: usize,
    /// Buffer sizes the per-core caches keep, ascending powers of two.
    pub cache_classes: Vec<usize>,
    /// Buffers of one class a per-core cache keeps at most.
    pub cache_depth: usize,
    /// Buffers moved between a per-core cache and the shared allocator at once.
    pub cache_batch: usize,
}

/// The buffer sizes per-core caches keep by default: 4 KiB to 128 KiB.
pub const DEFAULT_CACHE_CLASSES: [usize; 6] = [4096, 8192, 16384, 32768, 65536, 131072];

impl DmaConfig {
    /// 2 MiB hugepages from `MAP_HUGETLB`, up to `limit` bytes.
    pub fn hugepages(limit: usize) -> Self {
        DmaConfig {
            backing: Backing::Hugepages {
                page: PageSize::Huge2M,
                dir: None,
            },
            ..Self::anonymous(limit)
        }
    }

    /// No hugepages: anonymous memory up to `limit` bytes.
    pub fn anonymous(limit: usize) -> Self {
        DmaConfig {
            backing: Backing::Anonymous,
            limit,
            grow_step: 32 << 20,
            cache_classes: DEFAULT_CACHE_CLASSES.to_vec(),
            cache_depth: 512,
            cache_batch: 32,
        }
    }

    /// The alignment (and size granule) of regions.
    pub fn page_bytes(&self) -> usize {
        match &self.backing {
            Backing::Hugepages { page, .. } => page.bytes(),
            Backing::Anonymous => crate::region::ANON_ALIGN,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let page = self.page_bytes();
        if self.limit < page {
            return Err(format!(
                "limit of {} bytes is below one {page}-byte page",
                self.limit
            ));
        }
        if self.grow_step == 0 {
            return Err("grow step is zero".to_owned());
        }
        let mut prev = 0;
        for &c in &self.cache_classes {
            if !c.is_power_of_two() || c < crate::allocator::GRANULE || c <= prev || c > page {
                return Err(format!(
                    "cache class {c}: classes must be ascending powers of two between 64 bytes and the page size"
                ));
            }
            prev = c;
        }
        if self.cache_batch == 0 || self.cache_batch > self.cache_depth {
            return Err(format!(
                "cache batch {} must be between 1 and the cache depth {}",
                self.cache_batch, self.cache_depth
            ));
        }
        Ok(())
    }
}
