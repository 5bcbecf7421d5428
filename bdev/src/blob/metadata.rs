//! A store's metadata as a whole: each blob's chain of metadata pages read
//! into a [`BlobMd`] (attributes, flags, cluster map through its extent
//! table and extent pages), the store found either from the used-blobid
//! mask (a clean store) or by scanning every metadata page (a dirty one:
//! SPDK's replay, which also rebuilds the masks), and a check (SPDK's
//! invariants, `fsck`): every chain well formed, every used cluster owned
//! by exactly one blob, the masks saying what the metadata says. Pages come
//! from a reader closure, so the same code serves a device (the store's
//! load, asynchronous around it) and an image in memory (tests, tools).

use std::collections::BTreeMap;

use super::md_page::{Descriptor, MdPage, NO_PAGE};
use super::super_block::SuperBlock;
use super::{FormatError, blobid_to_page, page_to_blobid};

/// A reader of metadata page `p` (index in the metadata region).
pub type PageReader<'a> = dyn FnMut(u32) -> Result<Vec<u8>, FormatError> + 'a;

/// SPDK's blob flag: thin provisioned (in `invalid_flags`).
pub const FLAG_THIN_PROV: u64 = 1 << 0;
/// SPDK's blob flag: has internal xattrs (in `invalid_flags`).
pub const FLAG_INTERNAL_XATTR: u64 = 1 << 1;
/// SPDK's blob flag: clusters in an extent table (in `invalid_flags`).
pub const FLAG_EXTENT_TABLE: u64 = 1 << 2;
/// SPDK's blob flag: an external snapshot is its parent (`invalid_flags`).
pub const FLAG_EXTERNAL_SNAPSHOT: u64 = 1 << 3;
/// Every `invalid_flags` bit this code knows.
pub const KNOWN_INVALID_FLAGS: u64 =
    FLAG_THIN_PROV | FLAG_INTERNAL_XATTR | FLAG_EXTENT_TABLE | FLAG_EXTERNAL_SNAPSHOT;

/// The internal xattr naming a blob's parent snapshot (its blob id).
pub const XATTR_SNAPSHOT: &str = "SNAP";

/// One blob's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobMd {
    /// Its id.
    pub id: u64,
    /// Its chain of metadata pages, first to last.
    pub pages: Vec<u32>,
    /// The metadata pages holding its extent pages.
    pub extent_pages: Vec<u32>,
    /// Its extent table: the metadata page of each extent page slot (512
    /// clusters each; 0: none). Empty for a blob stored as runs.
    pub extent_table: Vec<u32>,
    /// Public xattrs, in the order stored.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Internal xattrs, in the order stored.
    pub internal_xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Flags a reader must know to open the blob.
    pub invalid_flags: u64,
    /// Flags that make its data read-only to a reader not knowing them.
    pub data_ro_flags: u64,
    /// Flags that make its metadata read-only to such a reader.
    pub md_ro_flags: u64,
    /// Its size in clusters.
    pub num_clusters: u64,
    /// The device cluster of each of its clusters (0: unallocated).
    pub clusters: Vec<u32>,
}

impl BlobMd {
    /// Public xattr `name`.
    pub fn xattr(&self, name: &str) -> Option<&[u8]> {
        find(&self.xattrs, name)
    }

    /// Internal xattr `name`.
    pub fn internal_xattr(&self, name: &str) -> Option<&[u8]> {
        find(&self.internal_xattrs, name)
    }

    /// Thin provisioned.
    pub fn is_thin(&self) -> bool {
        self.invalid_flags & FLAG_THIN_PROV != 0
    }

    /// The snapshot it reads unallocated clusters from, if any.
    pub fn parent(&self) -> Option<u64> {
        let v = self.internal_xattr(XATTR_SNAPSHOT)?;
        Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?))
    }
}

fn find<'a>(list: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    list.iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn bad(what: String, why: String) -> FormatError {
    FormatError::Field { what, why }
}

/// Reads the blob whose chain starts at metadata page `first`.
///
/// # Errors
/// [`FormatError`] naming the page: a page that does not parse, a chain
/// whose pages name another blob or skip a sequence number, loops or
/// leaves the metadata region, an unknown `invalid_flags` bit, a cluster
/// map that contradicts its size or points past the store.
pub fn read_blob(
    sb: &SuperBlock,
    first: u32,
    read: &mut PageReader<'_>,
) -> Result<BlobMd, FormatError> {
    let id = page_to_blobid(first);
    let what = |p: u32| format!("blob {id:#x}, metadata page {p}");
    let mut b = BlobMd {
        id,
        ..BlobMd::default()
    };
    let mut table: Option<Vec<u32>> = None;
    let mut rle: Option<Vec<u32>> = None;
    let mut p = first;
    let mut seq = 0u32;
    while p != NO_PAGE {
        if p >= sb.md.len {
            return Err(bad(
                what(p),
                format!("past the {} metadata pages", sb.md.len),
            ));
        }
        if b.pages.contains(&p) {
            return Err(bad(what(p), "the chain loops".into()));
        }
        let pg = MdPage::parse(p, &read(p)?)?;
        if pg.id != id {
            return Err(bad(what(p), format!("belongs to blob {:#x}", pg.id)));
        }
        if pg.sequence_num != seq {
            return Err(bad(
                what(p),
                format!("sequence number {} where {seq} belongs", pg.sequence_num),
            ));
        }
        b.pages.push(p);
        for d in pg.descriptors {
            match d {
                Descriptor::Xattr {
                    internal: false,
                    name,
                    value,
                } => b.xattrs.push((name, value)),
                Descriptor::Xattr {
                    internal: true,
                    name,
                    value,
                } => b.internal_xattrs.push((name, value)),
                Descriptor::Flags {
                    invalid,
                    data_ro,
                    md_ro,
                } => {
                    b.invalid_flags = invalid;
                    b.data_ro_flags = data_ro;
                    b.md_ro_flags = md_ro;
                }
                Descriptor::ExtentRle(runs) => {
                    let v = rle.get_or_insert_with(Vec::new);
                    for (c, n) in runs {
                        if v.len() as u64 + u64::from(n) > sb.total_clusters() * 2 + 1 {
                            return Err(bad(what(p), format!("a run of {n} clusters")));
                        }
                        v.extend((0..n).map(|i| if c == 0 { 0 } else { c.wrapping_add(i) }));
                    }
                }
                Descriptor::ExtentTable {
                    num_clusters,
                    pages,
                } => {
                    b.num_clusters = num_clusters;
                    let v = table.get_or_insert_with(Vec::new);
                    for (pg, n) in pages {
                        if v.len() as u64 + u64::from(n) > u64::from(sb.md.len) + 1 {
                            return Err(bad(what(p), format!("an extent run of {n} pages")));
                        }
                        v.extend(std::iter::repeat_n(pg, n as usize));
                    }
                }
                Descriptor::ExtentPage { .. } => {
                    return Err(bad(what(p), "an extent page in the blob's chain".into()));
                }
                Descriptor::Padding(_) => {}
            }
        }
        p = pg.next;
        seq += 1;
    }
    let unknown = b.invalid_flags & !KNOWN_INVALID_FLAGS;
    if unknown != 0 {
        return Err(bad(
            what(first),
            format!("invalid_flags {unknown:#x} unknown here"),
        ));
    }
    match (rle, table) {
        (Some(_), Some(_)) => {
            return Err(bad(
                what(first),
                "both EXTENT_RLE and EXTENT_TABLE descriptors".into(),
            ));
        }
        (Some(map), None) => {
            b.num_clusters = map.len() as u64;
            b.clusters = map;
        }
        (None, table) => {
            if b.num_clusters > sb.total_clusters() * 64 {
                return Err(bad(
                    what(first),
                    format!(
                        "{} clusters in a store of {}",
                        b.num_clusters,
                        sb.total_clusters()
                    ),
                ));
            }
            b.clusters = vec![0; b.num_clusters as usize];
            b.extent_table = table.unwrap_or_default();
            for ep in b.extent_table.clone().into_iter().filter(|&e| e != 0) {
                if ep >= sb.md.len {
                    return Err(bad(what(ep), "an extent page past the metadata".into()));
                }
                // An extent page keeps the id of the blob that wrote it
                // (a snapshot takes the original's as they are).
                let pg = MdPage::parse(ep, &read(ep)?)?;
                b.extent_pages.push(ep);
                for d in pg.descriptors {
                    if let Descriptor::ExtentPage {
                        start_cluster,
                        clusters,
                    } = d
                    {
                        let start = start_cluster as usize;
                        if start + clusters.len() > b.clusters.len() {
                            return Err(bad(
                                what(ep),
                                format!(
                                    "clusters {start}..{} of a blob of {}",
                                    start + clusters.len(),
                                    b.clusters.len()
                                ),
                            ));
                        }
                        b.clusters[start..start + clusters.len()].copy_from_slice(&clusters);
                    }
                }
            }
        }
    }
    if let Some(&c) = b
        .clusters
        .iter()
        .find(|&&c| u64::from(c) >= sb.total_clusters())
    {
        return Err(bad(
            what(first),
            format!("cluster {c} of a store of {}", sb.total_clusters()),
        ));
    }
    Ok(b)
}

/// A store's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Every blob, by id.
    pub blobs: BTreeMap<u64, BlobMd>,
}

impl Metadata {
    /// Reads the blobs whose first pages are `starts` (a clean store: the
    /// used-blobid mask's bits).
    ///
    /// # Errors
    /// The first blob that does not read ([`read_blob`]).
    pub fn read(
        sb: &SuperBlock,
        starts: impl IntoIterator<Item = u32>,
        read: &mut PageReader<'_>,
    ) -> Result<Metadata, FormatError> {
        let mut m = Metadata::default();
        for p in starts {
            let b = read_blob(sb, p, read)?;
            m.blobs.insert(b.id, b);
        }
        Ok(m)
    }

    /// Finds every blob by scanning all metadata pages (a dirty store,
    /// whose masks are stale): a page that parses, is first in its chain
    /// and names itself starts a blob. Pages that do not parse are unused
    /// (never written, or torn); they are counted in the result.
    ///
    /// # Errors
    /// A blob whose chain does not read ([`read_blob`]).
    pub fn scan(
        sb: &SuperBlock,
        read: &mut PageReader<'_>,
    ) -> Result<(Metadata, u32), FormatError> {
        let mut starts = Vec::new();
        let mut unreadable = 0;
        for p in 0..sb.md.len {
            let bytes = read(p)?;
            if bytes.iter().all(|&x| x == 0) {
                continue;
            }
            match MdPage::parse(p, &bytes) {
                Ok(pg) if pg.sequence_num == 0 && pg.id == page_to_blobid(p) => starts.push(p),
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
        Ok((Metadata::read(sb, starts, read)?, unreadable))
    }

    /// The masks the metadata implies: used metadata pages (chains and
    /// extent pages), used clusters (the metadata's own clusters, then
    /// every blob's), used blob ids.
    pub fn masks(&self, sb: &SuperBlock) -> (Vec<bool>, Vec<bool>, Vec<bool>) {
        let mut pages = vec![false; sb.md.len as usize];
        let mut ids = vec![false; sb.md.len as usize];
        let mut clusters = vec![false; sb.total_clusters() as usize];
        // Clusters up to the end of the metadata region hold the store's
        // own structures.
        for c in clusters.iter_mut().take(sb.md_clusters() as usize) {
            *c = true;
        }
        for b in self.blobs.values() {
            ids[blobid_to_page(b.id) as usize] = true;
            for &p in b.pages.iter().chain(&b.extent_pages) {
                pages[p as usize] = true;
            }
            for &c in b.clusters.iter().filter(|&&c| c != 0) {
                clusters[c as usize] = true;
            }
        }
        (pages, clusters, ids)
    }

    /// SPDK's invariants (fsck): each used cluster owned by one blob and
    /// not inside the metadata's clusters, each parent a blob of the store,
    /// and, given the masks on disk, the masks saying what the metadata
    /// says. Returns every problem found, each naming what.
    pub fn check(&self, sb: &SuperBlock, on_disk: Option<[&[bool]; 3]>) -> Vec<String> {
        let mut problems = Vec::new();
        let (pages, clusters, ids) = self.masks(sb);
        let md_clusters = sb.md_clusters();
        let mut owner: BTreeMap<u32, u64> = BTreeMap::new();
        for b in self.blobs.values() {
            for &c in b.clusters.iter().filter(|&&c| c != 0) {
                if u64::from(c) < md_clusters {
                    problems.push(format!(
                        "blob {:#x} maps cluster {c}, which holds metadata",
                        b.id
                    ));
                }
                if let Some(o) = owner.insert(c, b.id) {
                    problems.push(format!("cluster {c} owned by blobs {o:#x} and {:#x}", b.id));
                }
            }
            if let Some(p) = b.parent()
                && !self.blobs.contains_key(&p)
            {
                problems.push(format!(
                    "blob {:#x}: parent {p:#x} is not in the store",
                    b.id
                ));
            }
        }
        if let Some([dp, dc, di]) = on_disk {
            for (name, want, have) in [
                ("used page", &pages, dp),
                ("used cluster", &clusters, dc),
                ("used blobid", &ids, di),
            ] {
                if want.len() != have.len() {
                    problems.push(format!(
                        "{name} mask: {} bits on disk, {} in the store",
                        have.len(),
                        want.len()
                    ));
                    continue;
                }
                for (i, (w, h)) in want.iter().zip(have.iter()).enumerate() {
                    if w != h {
                        problems.push(format!(
                            "{name} mask bit {i}: {} on disk, {} by the metadata",
                            u8::from(*h),
                            u8::from(*w)
                        ));
                    }
                }
            }
        }
        problems
    }
}
