//! A blob's metadata as SPDK writes it: the descriptors of its chain in
//! SPDK's order (FLAGS, public xattrs, internal xattrs, the extent table),
//! packed into 4 KiB pages (an extent table too long for one page goes on
//! in the next), and its extent pages (512 clusters each, the entries of
//! the blob's clusters in the slot).

use super::FormatError;
use super::md_page::{DESCRIPTORS_LEN, Descriptor, MdPage, NO_PAGE};
use super::metadata::BlobMd;

/// Clusters one extent page maps (SPDK's `SPDK_EXTENTS_PER_EP` for 4 KiB
/// pages).
pub const EXTENTS_PER_PAGE: usize = 512;

/// The extent page slots a blob of `num_clusters` has.
pub fn slots(num_clusters: u64) -> usize {
    (num_clusters as usize).div_ceil(EXTENTS_PER_PAGE)
}

/// The chain's descriptors of `md`, in SPDK's order.
pub fn chain_descriptors(md: &BlobMd) -> Vec<Descriptor> {
    let mut d = vec![Descriptor::Flags {
        invalid: md.invalid_flags,
        data_ro: md.data_ro_flags,
        md_ro: md.md_ro_flags,
    }];
    for (name, value) in &md.xattrs {
        d.push(Descriptor::Xattr {
            internal: false,
            name: name.clone(),
            value: value.clone(),
        });
    }
    for (name, value) in &md.internal_xattrs {
        d.push(Descriptor::Xattr {
            internal: true,
            name: name.clone(),
            value: value.clone(),
        });
    }
    // Runs: unallocated slots together, each extent page on its own.
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in &md.extent_table {
        match runs.last_mut() {
            Some((0, n)) if p == 0 => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    d.push(Descriptor::ExtentTable {
        num_clusters: md.num_clusters,
        pages: runs,
    });
    d
}

/// Packs descriptors into the pages of a chain (each page's descriptors).
///
/// # Errors
/// [`FormatError::Field`] for a descriptor that fits no page (an xattr
/// over 4 KiB).
pub fn pack(id: u64, descs: Vec<Descriptor>) -> Result<Vec<Vec<Descriptor>>, FormatError> {
    let mut pages: Vec<Vec<Descriptor>> = vec![Vec::new()];
    let mut room = DESCRIPTORS_LEN;
    for d in descs {
        let len = d.encoded_len();
        if len <= room {
            room -= len;
            if let Some(p) = pages.last_mut() {
                p.push(d);
            }
            continue;
        }
        match d {
            Descriptor::ExtentTable {
                num_clusters,
                pages: runs,
            } => {
                // Split the runs over as many pages as they need.
                let mut rest = runs.as_slice();
                loop {
                    let fit = room.saturating_sub(5 + 8) / 8;
                    if fit == 0 && !rest.is_empty() {
                        pages.push(Vec::new());
                        room = DESCRIPTORS_LEN;
                        continue;
                    }
                    let n = fit.min(rest.len());
                    let part = Descriptor::ExtentTable {
                        num_clusters,
                        pages: rest[..n].to_vec(),
                    };
                    room -= part.encoded_len();
                    if let Some(p) = pages.last_mut() {
                        p.push(part);
                    }
                    rest = &rest[n..];
                    if rest.is_empty() {
                        break;
                    }
                    pages.push(Vec::new());
                    room = DESCRIPTORS_LEN;
                }
            }
            d if len <= DESCRIPTORS_LEN => {
                pages.push(vec![d]);
                room = DESCRIPTORS_LEN - len;
            }
            _ => {
                return Err(FormatError::Field {
                    what: format!("blob {id:#x} metadata"),
                    why: format!("a descriptor of {len} bytes; a page holds {DESCRIPTORS_LEN}"),
                });
            }
        }
    }
    Ok(pages)
}

/// The chain pages of blob `id`: its descriptors packed, at the metadata
/// pages `at` (the first at the blob's own page), each naming the next.
///
/// # Errors
/// [`FormatError`] when a page does not encode.
pub fn chain_pages(
    id: u64,
    packed: Vec<Vec<Descriptor>>,
    at: &[u32],
) -> Result<Vec<(u32, Vec<u8>)>, FormatError> {
    let mut out = Vec::with_capacity(packed.len());
    for (i, descriptors) in packed.into_iter().enumerate() {
        let pg = MdPage {
            id,
            sequence_num: i as u32,
            descriptors,
            next: at.get(i + 1).copied().unwrap_or(NO_PAGE),
        };
        out.push((at[i], pg.encode()?));
    }
    Ok(out)
}

/// The extent page of slot `slot` of blob `id`.
///
/// # Errors
/// [`FormatError`] when it does not encode (never: 512 entries fit).
pub fn extent_page(id: u64, slot: usize, clusters: &[u32]) -> Result<Vec<u8>, FormatError> {
    let start = slot * EXTENTS_PER_PAGE;
    let end = clusters.len().min(start + EXTENTS_PER_PAGE);
    MdPage {
        id,
        sequence_num: 0,
        descriptors: vec![Descriptor::ExtentPage {
            start_cluster: start as u32,
            clusters: clusters[start.min(end)..end].to_vec(),
        }],
        next: NO_PAGE,
    }
    .encode()
}
