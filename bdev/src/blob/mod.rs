//! The blob store (issue 15), in SPDK's on-disk format: the format itself,
//! read and written byte for byte and checked against stores SPDK v24.09
//! made (`tests/fixtures/blob/`) — the super block ([`super_block`]),
//! metadata pages and their descriptors ([`md_page`], [`serialize`]), the
//! used-page, used-cluster and used-blobid masks ([`mask`]), the metadata
//! as a whole ([`metadata`]: blobs read from their chains, a dirty store
//! found by scanning every page, SPDK's invariants checked), loading it
//! from a bdev ([`load`]) — and the store on a bdev ([`store`]: init,
//! load with recovery, unload, grow, check; blobs created, resized,
//! deleted atomically), open blobs ([`handle`]: xattrs, read-only, sync),
//! their I/O ([`io`]: cut at clusters, thin clusters zeroed or copied
//! before use, FLUSH to the device) and snapshots ([`snapshot`]:
//! snapshot, clone, deletion into a clone, inflate, decouple, set parent).
//! Parsing trusts nothing: a bad field is a [`FormatError`] naming the
//! page and the field, never a panic. Crash safety: see [`store`].
//!
//! ```text
//!  page 0        super block ("SPDKBLOB", version 3, CRC32C)
//!  mask regions  used pages | used clusters | used blob ids (bit arrays)
//!  md region     4 KiB metadata pages: id, sequence, descriptors, next, CRC
//!                  (a blob's chain of pages; extent pages hang off its
//!                  extent table)
//!  clusters      data (cluster 0.. counted from the device's start; the
//!                  first ones hold the above)
//! ```

pub mod error;
pub mod handle;
pub mod io;
pub mod load;
pub mod mask;
pub mod md_page;
pub mod metadata;
pub mod rpc;
pub mod serialize;
pub mod snapshot;
pub mod store;
pub mod super_block;

pub use error::BlobError;
pub use handle::Blob;
pub use store::{BlobOptions, Blobstore, BusyGuard, CheckReport, ClearMethod, StoreOptions};

/// SPDK's page: the unit of metadata and of the format's offsets.
pub const PAGE_SIZE: usize = 4096;

/// The high bit SPDK sets in every blob id (its low 32 bits are the
/// metadata page of the blob's first page).
pub const BLOBID_HIGH_BIT: u64 = 1 << 32;

/// The blob id of the blob whose first metadata page is `page`.
pub fn page_to_blobid(page: u32) -> u64 {
    BLOBID_HIGH_BIT | u64::from(page)
}

/// The metadata page a blob id names.
pub fn blobid_to_page(id: u64) -> u32 {
    id as u32
}

/// Why bytes are not the format's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("{what}: {have} bytes, {need} needed")]
    Short {
        /// The structure.
        what: String,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Not a blob store's super block.
    #[error("no blob store (signature is not SPDKBLOB)")]
    Signature,
    /// A version this code does not read.
    #[error("blob store version {0} is not supported (3 is)")]
    Version(u32),
    /// The stored checksum does not match the bytes.
    #[error("{what}: CRC32C {stored:#010x} stored, {computed:#010x} computed")]
    Crc {
        /// The structure.
        what: String,
        /// The checksum on disk.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A field out of its range.
    #[error("{what}: {why}")]
    Field {
        /// The structure and field.
        what: String,
        /// Why it is wrong.
        why: String,
    },
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
