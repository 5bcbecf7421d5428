//! DMA memory for devices: hugepage-backed regions, the allocator and per-core
//! buffer caches over them, IOVA translation, and the process's one VFIO
//! container (IOMMU domain) into which every region is mapped.
//!
//! Owns: hugepage regions, `DmaBuf` ownership, IOVA lookup, the VFIO
//! container and its DMA mappings, memory accounting.
//!
//! Must not: hand out Rust references (`&`/`&mut`) to memory a device may
//! access concurrently, panic on exhaustion (it is an error value), or know
//! about NVMe or any other device protocol.
//!
//! # Design
//!
//! ```text
//!   per-core DmaCache (no lock)      DmaMemory (one lock, control path)
//!   ┌──────────────────────┐ batch  ┌───────────────────────────────────┐
//!   │ 4K 8K ... 128K lists │<──────>│ regions: [hugepages | extents]... │──> VFIO container
//!   └──────────────────────┘        └───────────────────────────────────┘    (IOMMU map)
//! ```
//!
//! * Memory comes in regions of whole hugepages (2 MiB or 1 GiB, from
//!   `MAP_HUGETLB` or a hugetlbfs mount), reserved on demand up to a limit
//!   (SPDK's `-s`), populated and locked up front. `Backing::Anonymous` is the
//!   no-hugepage mode (SPDK's `--no-huge`) for everything without device DMA;
//!   it refuses to be mapped for devices.
//! * Each region gets a contiguous range of IO-virtual addresses from 4 GiB up
//!   (see [`IOVA_BASE`] for why not IOVA = VA), so the IOVA of any byte of a
//!   buffer is its region's base plus its offset, even across hugepages.
//! * [`DmaMemory::attach`] maps every region into the VFIO container, and
//!   every later region is mapped before any of it is handed out.
//! * A [`DmaBuf`] owns its bytes and offers raw copies and volatile accesses
//!   only; dropping it frees it. Per-core [`DmaCache`]s keep buffers of the
//!   common sizes so the hot path neither locks nor allocates.
//!
//! ```
//! use dma::{DmaConfig, DmaMemory};
//! let mem = DmaMemory::new(DmaConfig::anonymous(64 << 20)).unwrap();
//! let mut cache = mem.cache();
//! let mut buf = cache.alloc(4096).unwrap();
//! buf.write_at(0, b"hello");
//! assert_eq!(buf.iova_at(4095), buf.iova() + 4095);
//! cache.free(buf);
//! assert_eq!(mem.stats().classes[0].cached, 32); // one refill batch
//! ```

mod allocator;
mod buf;
mod cache;
mod config;
mod error;
mod memory;
mod region;
mod stats;
pub mod vfio;

pub use buf::DmaBuf;
pub use cache::DmaCache;
pub use config::{Backing, DEFAULT_CACHE_CLASSES, DmaConfig, PageSize};
pub use error::DmaError;
pub use memory::{DmaMapper, DmaMemory, IOVA_BASE};
pub use stats::{ClassStats, DmaStats};
