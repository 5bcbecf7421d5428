//! A metadata page (SPDK's `struct spdk_blob_md_page`, 4 KiB, packed):
//! the blob id, a sequence number (the page's place in its blob's chain),
//! descriptors, the next page of the chain (`u32::MAX`: none) and a
//! CRC32C of the 4092 bytes before it.
//!
//! ```text
//!   0 id u64   8 sequence_num u32   12 reserved u32
//!  16 descriptors [4072]: each type u8, length u32, then `length` bytes;
//!     type 0 with length 0 ends them
//!  4088 next u32   4092 crc u32
//! ```
//!
//! Descriptors: 1 EXTENT_RLE (cluster index, run length) pairs; 2 XATTR and
//! 4 XATTR_INTERNAL (name length u16, value length u16, name, value);
//! 3 FLAGS (invalid, data_ro, md_ro: u64 each); 5 EXTENT_TABLE (clusters
//! in the blob u64, then (page, run length) pairs); 6 EXTENT_PAGE (first
//! cluster index u32, then one cluster index u32 per cluster, 0 for
//! unallocated).

use super::{FormatError, PAGE_SIZE, le_u16, le_u32, le_u64};

/// Bytes of descriptors a page holds.
pub const DESCRIPTORS_LEN: usize = 4072;
/// Where the descriptors start.
const DESC_AT: usize = 16;
/// "No next page".
pub const NO_PAGE: u32 = u32::MAX;

/// Descriptor type numbers.
pub mod desc_type {
    /// Padding; with length 0 it ends the page's descriptors.
    pub const PADDING: u8 = 0;
    /// Run-length cluster list.
    pub const EXTENT_RLE: u8 = 1;
    /// A public extended attribute.
    pub const XATTR: u8 = 2;
    /// The blob's flags.
    pub const FLAGS: u8 = 3;
    /// An internal extended attribute.
    pub const XATTR_INTERNAL: u8 = 4;
    /// The extent table (pages holding extent pages).
    pub const EXTENT_TABLE: u8 = 5;
    /// An extent page (cluster indices).
    pub const EXTENT_PAGE: u8 = 6;
}

/// One descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Clusters as runs: (first cluster index, or 0 for unallocated; run
    /// length in clusters).
    ExtentRle(Vec<(u32, u32)>),
    /// An extended attribute; `internal` for XATTR_INTERNAL.
    Xattr {
        /// Internal (SPDK's SNAP, SNAPTMP, SNAPRM, EXTSNAP...).
        internal: bool,
        /// Its name (bytes, as stored).
        name: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// The blob's flags.
    Flags {
        /// Flags that keep a reader that does not know them from opening.
        invalid: u64,
        /// Flags that make the data read-only to such a reader.
        data_ro: u64,
        /// Flags that make the metadata read-only to such a reader.
        md_ro: u64,
    },
    /// The extent table: clusters in the blob, then runs of metadata pages
    /// holding extent pages (page 0: none for the run).
    ExtentTable {
        /// Clusters in the blob.
        num_clusters: u64,
        /// (metadata page, run length in pages).
        pages: Vec<(u32, u32)>,
    },
    /// An extent page: cluster indices from `start_cluster`.
    ExtentPage {
        /// The blob cluster of the first entry.
        start_cluster: u32,
        /// One device cluster index per blob cluster (0: unallocated).
        clusters: Vec<u32>,
    },
    /// Padding of `len` bytes (non-zero length: skipped by readers).
    Padding(u32),
}

impl Descriptor {
    fn body_len(&self) -> usize {
        match self {
            Descriptor::ExtentRle(r) => 8 * r.len(),
            Descriptor::Xattr { name, value, .. } => 4 + name.len() + value.len(),
            Descriptor::Flags { .. } => 24,
            Descriptor::ExtentTable { pages, .. } => 8 + 8 * pages.len(),
            Descriptor::ExtentPage { clusters, .. } => 4 + 4 * clusters.len(),
            Descriptor::Padding(n) => *n as usize,
        }
    }

    /// Bytes it takes in a page, header included.
    pub fn encoded_len(&self) -> usize {
        5 + self.body_len()
    }
}

/// A metadata page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdPage {
    /// The blob it belongs to.
    pub id: u64,
    /// Its place in the blob's chain (0 for the first).
    pub sequence_num: u32,
    /// Its descriptors, in order.
    pub descriptors: Vec<Descriptor>,
    /// The next page of the chain, or [`NO_PAGE`].
    pub next: u32,
}

fn bad(page: u32, why: impl Into<String>) -> FormatError {
    FormatError::Field {
        what: format!("metadata page {page}"),
        why: why.into(),
    }
}

fn pairs(b: &[u8]) -> Vec<(u32, u32)> {
    b.chunks_exact(8)
        .map(|c| (le_u32(c, 0), le_u32(c, 4)))
        .collect()
}

fn parse_descriptor(page: u32, ty: u8, body: &[u8]) -> Result<Descriptor, FormatError> {
    let need_multiple = |unit: usize, head: usize, name: &str| {
        if body.len() < head || !(body.len() - head).is_multiple_of(unit) {
            Err(bad(
                page,
                format!("{name} descriptor of {} bytes", body.len()),
            ))
        } else {
            Ok(())
        }
    };
    Ok(match ty {
        desc_type::PADDING => Descriptor::Padding(body.len() as u32),
        desc_type::EXTENT_RLE => {
            need_multiple(8, 0, "EXTENT_RLE")?;
            Descriptor::ExtentRle(pairs(body))
        }
        desc_type::XATTR | desc_type::XATTR_INTERNAL => {
            if body.len() < 4 {
                return Err(bad(
                    page,
                    format!("XATTR descriptor of {} bytes", body.len()),
                ));
            }
            let (nl, vl) = (usize::from(le_u16(body, 0)), usize::from(le_u16(body, 2)));
            if 4 + nl + vl != body.len() {
                return Err(bad(
                    page,
                    format!(
                        "XATTR with a {nl}-byte name and a {vl}-byte value in {} bytes",
                        body.len()
                    ),
                ));
            }
            Descriptor::Xattr {
                internal: ty == desc_type::XATTR_INTERNAL,
                name: body[4..4 + nl].to_vec(),
                value: body[4 + nl..].to_vec(),
            }
        }
        desc_type::FLAGS => {
            if body.len() != 24 {
                return Err(bad(
                    page,
                    format!("FLAGS descriptor of {} bytes", body.len()),
                ));
            }
            Descriptor::Flags {
                invalid: le_u64(body, 0),
                data_ro: le_u64(body, 8),
                md_ro: le_u64(body, 16),
            }
        }
        desc_type::EXTENT_TABLE => {
            need_multiple(8, 8, "EXTENT_TABLE")?;
            Descriptor::ExtentTable {
                num_clusters: le_u64(body, 0),
                pages: pairs(&body[8..]),
            }
        }
        desc_type::EXTENT_PAGE => {
            need_multiple(4, 4, "EXTENT_PAGE")?;
            Descriptor::ExtentPage {
                start_cluster: le_u32(body, 0),
                clusters: body[4..].chunks_exact(4).map(|c| le_u32(c, 0)).collect(),
            }
        }
        other => return Err(bad(page, format!("unknown descriptor type {other}"))),
    })
}

impl MdPage {
    /// Parses metadata page `page` (its index in the metadata region, for
    /// error messages) from its 4 KiB.
    ///
    /// # Errors
    /// [`FormatError`] naming the page: size, CRC, a descriptor running
    /// past the page, a descriptor whose length does not fit its type, an
    /// unknown type.
    pub fn parse(page: u32, b: &[u8]) -> Result<MdPage, FormatError> {
        if b.len() < PAGE_SIZE {
            return Err(FormatError::Short {
                what: format!("metadata page {page}"),
                need: PAGE_SIZE,
                have: b.len(),
            });
        }
        let stored = le_u32(b, 4092);
        let computed = crate::crc32c::checksum(&b[..4092]);
        if stored != computed {
            return Err(FormatError::Crc {
                what: format!("metadata page {page}"),
                stored,
                computed,
            });
        }
        let desc = &b[DESC_AT..DESC_AT + DESCRIPTORS_LEN];
        let mut descriptors = Vec::new();
        let mut at = 0usize;
        while at + 5 <= DESCRIPTORS_LEN {
            let ty = desc[at];
            let len = le_u32(desc, at + 1) as usize;
            if ty == desc_type::PADDING && len == 0 {
                break;
            }
            let end = at
                .checked_add(5)
                .and_then(|x| x.checked_add(len))
                .filter(|&e| e <= DESCRIPTORS_LEN)
                .ok_or_else(|| {
                    bad(
                        page,
                        format!("descriptor at byte {at} of {len} bytes runs past the page"),
                    )
                })?;
            descriptors.push(parse_descriptor(page, ty, &desc[at + 5..end])?);
            at = end;
        }
        Ok(MdPage {
            id: le_u64(b, 0),
            sequence_num: le_u32(b, 8),
            descriptors,
            next: le_u32(b, 4088),
        })
    }

    /// The page's bytes, CRC included.
    ///
    /// # Errors
    /// [`FormatError::Field`] when the descriptors do not fit in a page.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let total: usize = self.descriptors.iter().map(Descriptor::encoded_len).sum();
        if total > DESCRIPTORS_LEN {
            return Err(FormatError::Field {
                what: "metadata page".into(),
                why: format!("{total} bytes of descriptors, {DESCRIPTORS_LEN} fit"),
            });
        }
        let mut b = vec![0u8; PAGE_SIZE];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.sequence_num.to_le_bytes());
        let mut at = DESC_AT;
        for d in &self.descriptors {
            let (ty, body): (u8, Vec<u8>) =
                match d {
                    Descriptor::ExtentRle(r) => (
                        desc_type::EXTENT_RLE,
                        r.iter()
                            .flat_map(|(a, n)| a.to_le_bytes().into_iter().chain(n.to_le_bytes()))
                            .collect(),
                    ),
                    Descriptor::Xattr {
                        internal,
                        name,
                        value,
                    } => {
                        let mut v = Vec::with_capacity(4 + name.len() + value.len());
                        v.extend((name.len() as u16).to_le_bytes());
                        v.extend((value.len() as u16).to_le_bytes());
                        v.extend(name);
                        v.extend(value);
                        let ty = if *internal {
                            desc_type::XATTR_INTERNAL
                        } else {
                            desc_type::XATTR
                        };
                        (ty, v)
                    }
                    Descriptor::Flags {
                        invalid,
                        data_ro,
                        md_ro,
                    } => (
                        desc_type::FLAGS,
                        [invalid, data_ro, md_ro]
                            .into_iter()
                            .flat_map(|x| x.to_le_bytes())
                            .collect(),
                    ),
                    Descriptor::ExtentTable {
                        num_clusters,
                        pages,
                    } => (
                        desc_type::EXTENT_TABLE,
                        num_clusters
                            .to_le_bytes()
                            .into_iter()
                            .chain(pages.iter().flat_map(|(p, n)| {
                                p.to_le_bytes().into_iter().chain(n.to_le_bytes())
                            }))
                            .collect(),
                    ),
                    Descriptor::ExtentPage {
                        start_cluster,
                        clusters,
                    } => (
                        desc_type::EXTENT_PAGE,
                        start_cluster
                            .to_le_bytes()
                            .into_iter()
                            .chain(clusters.iter().flat_map(|c| c.to_le_bytes()))
                            .collect(),
                    ),
                    Descriptor::Padding(n) => (desc_type::PADDING, vec![0u8; *n as usize]),
                };
            b[at] = ty;
            b[at + 1..at + 5].copy_from_slice(&(body.len() as u32).to_le_bytes());
            b[at + 5..at + 5 + body.len()].copy_from_slice(&body);
            at += 5 + body.len();
        }
        b[4088..4092].copy_from_slice(&self.next.to_le_bytes());
        let crc = crate::crc32c::checksum(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }
}
