//! The errors of the DMA memory layer.

use std::io;

/// What went wrong getting or mapping DMA memory.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The configured limit, or the hugepages the system has reserved, cannot
    /// satisfy the request.
    #[error(
        "out of DMA memory: asked for {asked} bytes, {free} bytes free in regions, \
         {reserved} of a {limit}-byte limit reserved{detail}; reserve more hugepages with \
         `hugepage-setup config --hugemem <MiB>` or raise the memory size (-s)"
    )]
    OutOfMemory {
        /// Bytes asked for.
        asked: usize,
        /// Bytes free inside the regions already reserved.
        free: usize,
        /// Bytes reserved in regions.
        reserved: usize,
        /// The configured limit in bytes.
        limit: usize,
        /// What the system said, when a new region could not be had.
        detail: String,
    },
    /// A zero-sized allocation or an alignment that is not a power of two or
    /// is larger than the page size.
    #[error("invalid DMA allocation: {len} bytes aligned to {align}: {reason}")]
    InvalidRequest {
        /// Bytes asked for.
        len: usize,
        /// Alignment asked for.
        align: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Memory without hugepages cannot be handed to a device.
    #[error(
        "DMA memory is in no-hugepage mode (--no-huge): it cannot be mapped into a VFIO \
         container for device DMA; start with hugepages to drive devices"
    )]
    NoHugeCannotMap,
    /// A second, different VFIO container was offered.
    #[error("DMA memory is already mapped into another VFIO container; a process has one")]
    OtherContainer,
    /// The IOMMU refused a mapping.
    #[error("VFIO DMA map of {len} bytes at IOVA {iova:#x} failed: {source}")]
    Map {
        /// The IOVA of the mapping.
        iova: u64,
        /// Its length.
        len: usize,
        /// What VFIO said.
        #[source]
        source: io::Error,
    },
    /// A hugetlbfs directory could not be used.
    #[error("hugetlbfs file {path}: {source}")]
    HugetlbfsFile {
        /// The file that was tried.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid DMA configuration: {0}")]
    Config(String),
}
