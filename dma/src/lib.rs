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

pub mod vfio;
