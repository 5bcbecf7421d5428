//! The blob store on a bdev: init, load (with recovery), unload, blob
//! creation, opening and deletion, resize, and the metadata writes
//! everything else is made of.
//!
//! Crash safety rests on three rules, with 4 KiB metadata page writes
//! atomic (a device whose atomic write unit is at least a page):
//! - A blob's metadata changes by one write of its first page (at its id's
//!   own page): the rest of the new chain and any new extent pages go to
//!   free pages first and are flushed before it, so after a crash the
//!   first page names either the whole old chain or the whole new one.
//! - Nothing is freed in memory (pages, clusters, ids) before the write
//!   that stops using it is durable: a crash never finds a page or cluster
//!   used by two blobs, one of them through a stale pointer.
//! - While open, the super block says "not clean": the masks on disk are
//!   written only at unload, and a crash is recovered by scanning every
//!   metadata page (SPDK's replay), then repairing a snapshot caught half
//!   made (`SNAPTMP`) or a snapshot deletion caught half done (`SNAPRM`).
//!
//! Every metadata operation is durable when it returns (its last write is
//! followed by a FLUSH of the device); a thin blob's new cluster is zeroed
//! (or filled from its parent) and flushed before the metadata naming it
//! is written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dma::DmaBuf;

use super::error::BlobError;
use super::handle::{
    Blob, BlobState, Esnap, FLAG_READ_ONLY, Frozen, XATTR_EXTERNAL_SNAPSHOT, drop_xattr,
    fix_internal_flag, open_esnap, put_xattr,
};
use super::load::{LoadError, Loaded};
use super::mask::{Mask, MaskType};
use super::metadata::{
    BlobMd, FLAG_EXTENT_TABLE, FLAG_EXTERNAL_SNAPSHOT, FLAG_THIN_PROV, Metadata, XATTR_SNAPSHOT,
};
use super::serialize::{self, EXTENTS_PER_PAGE};
use super::super_block::SuperBlock;
use super::{PAGE_SIZE, blobid_to_page, page_to_blobid};
use crate::{BdevChannel, Desc, IoStatus, IoType};

/// The internal xattr of a snapshot being made: the id of the blob it is
/// taken from (removed when the snapshot is complete).
pub const XATTR_SNAPSHOT_PENDING: &str = "SNAPTMP";
/// The internal xattr of a snapshot being deleted into its clone: the
/// clone's id.
pub const XATTR_SNAPSHOT_REMOVING: &str = "SNAPRM";

/// How a new store treats the device's data region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClearMethod {
    /// Leave it (new clusters are zeroed when allocated anyway).
    None,
    /// Unmap it (SPDK's default).
    #[default]
    Unmap,
    /// Write zeroes over it.
    WriteZeroes,
}

/// A new store's parameters.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes per cluster (a multiple of 4 KiB).
    pub cluster_size: u32,
    /// Metadata pages (None: one per cluster, SPDK's default).
    pub md_pages: Option<u32>,
    /// The store's type (up to 15 bytes; SPDK's lvstore: "LVOLSTORE").
    pub bstype: String,
    /// What to do with the data region.
    pub clear: ClearMethod,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cluster_size: 1 << 20,
            md_pages: None,
            bstype: String::new(),
            clear: ClearMethod::Unmap,
        }
    }
}

/// A new blob's parameters.
#[derive(Clone, Debug, Default)]
pub struct BlobOptions {
    /// Size in clusters.
    pub num_clusters: u64,
    /// Thin provisioned (clusters allocated on first write).
    pub thin: bool,
    /// Public xattrs.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub(crate) struct State {
    pub sb: SuperBlock,
    pub pages: Vec<bool>,
    pub clusters: Vec<bool>,
    pub ids: Vec<bool>,
    pub free_clusters: u64,
    /// Where the next cluster search starts.
    pub hint: usize,
    pub blobs: BTreeMap<u64, Arc<BlobState>>,
}

impl State {
    /// A free metadata page for a chain's continuation or an extent page:
    /// never page 0, which an extent table's 0 cannot name (it means "no
    /// page"); page 0 is only ever a blob's first page.
    fn claim_page(&mut self) -> Result<u32, BlobError> {
        let p = self
            .pages
            .iter()
            .skip(1)
            .position(|u| !u)
            .map(|p| p + 1)
            .ok_or_else(|| BlobError::NoSpace("every metadata page is used".into()))?;
        self.pages[p] = true;
        Ok(p as u32)
    }

    pub(crate) fn claim_cluster(&mut self) -> Result<u32, BlobError> {
        let n = self.clusters.len();
        let at = (self.hint..n)
            .chain(0..self.hint)
            .find(|&c| !self.clusters[c])
            .ok_or_else(|| BlobError::NoSpace("every cluster is allocated".into()))?;
        self.clusters[at] = true;
        self.free_clusters -= 1;
        self.hint = at + 1;
        Ok(at as u32)
    }

    pub(crate) fn release_cluster(&mut self, c: u32) {
        if let Some(u) = self.clusters.get_mut(c as usize)
            && *u
        {
            *u = false;
            self.free_clusters += 1;
        }
    }

    fn release_page(&mut self, p: u32) {
        if let Some(u) = self.pages.get_mut(p as usize) {
            *u = false;
        }
    }
}

pub(crate) struct Inner {
    /// The device, open for writing; taken by [`Blobstore::close`].
    pub desc: Mutex<Option<Desc>>,
    pub bdev: crate::Bdev,
    pub io_unit: u32,
    pub cluster_size: u32,
    pub md_start: u32,
    pub state: Mutex<State>,
    pub unloaded: AtomicBool,
}

/// An open blob store. Clones share it.
#[derive(Clone)]
pub struct Blobstore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobstore")
            .field("bdev", &self.inner.bdev.name())
            .finish()
    }
}

/// A store's I/O channel on this core: what a blob's I/O goes through
/// (the device's channel for the store's descriptor). Not `Send`.
pub struct BlobChannel(BdevChannel);

impl std::ops::Deref for BlobChannel {
    type Target = BdevChannel;

    fn deref(&self) -> &BdevChannel {
        &self.0
    }
}

/// What a check of the store found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Blobs on disk.
    pub blobs: usize,
    /// What is wrong (empty: consistent), each naming what.
    pub problems: Vec<String>,
}

fn chan(desc: &Desc) -> Result<BdevChannel, BlobError> {
    desc.get_io_channel()
        .map_err(|e| BlobError::io("the device's I/O channel", e))
}

async fn run(
    ch: &BdevChannel,
    ty: IoType,
    buf: Option<DmaBuf>,
    lba: u64,
    n: u64,
    what: &str,
) -> Result<Option<DmaBuf>, BlobError> {
    let (st, buf) = ch
        .io(ty, buf, lba, n, false)
        .await
        .map_err(|e| BlobError::io(what, e))?;
    if st != IoStatus::Success {
        if let Some(b) = buf {
            ch.free_buf(b);
        }
        return Err(BlobError::io(what, format!("{st:?}")));
    }
    Ok(buf)
}

/// Writes pages (index from the device's start, bytes) through `ch`.
async fn write_dev_pages(ch: &BdevChannel, pages: &[(u64, Vec<u8>)]) -> Result<(), BlobError> {
    let bs = u64::from(ch.block_size());
    for (p, bytes) in pages {
        let mut buf = ch
            .alloc_buf(bytes.len())
            .map_err(|e| BlobError::io("a metadata buffer", e))?;
        buf.write_at(0, bytes);
        let what = format!("writing metadata page {p}");
        let lba = p * PAGE_SIZE as u64 / bs;
        let n = bytes.len() as u64 / bs;
        if let Some(b) = run(ch, IoType::Write, Some(buf), lba, n, &what).await? {
            ch.free_buf(b);
        }
    }
    Ok(())
}

async fn flush_dev(ch: &BdevChannel, blocks: u64) -> Result<(), BlobError> {
    run(ch, IoType::Flush, None, 0, blocks, "flushing the device").await?;
    Ok(())
}

async fn zero_dev(ch: &BdevChannel, lba: u64, n: u64, unmap: bool) -> Result<(), BlobError> {
    let ty = if unmap {
        IoType::Unmap
    } else {
        IoType::WriteZeroes
    };
    // In pieces the layer passes through without splitting concerns.
    let step = (1u64 << 30) / u64::from(ch.block_size());
    let mut at = lba;
    while at < lba + n {
        let k = step.min(lba + n - at);
        run(ch, ty, None, at, k, "clearing the device").await?;
        at += k;
    }
    Ok(())
}

impl Blobstore {
    fn new(desc: Desc, loaded: Loaded) -> Blobstore {
        let sb = loaded.sb;
        let (pages, clusters, ids) = loaded.metadata.masks(&sb);
        let free_clusters = clusters.iter().filter(|u| !**u).count() as u64;
        let mut blobs = BTreeMap::new();
        for (id, md) in loaded.metadata.blobs {
            blobs.insert(id, Arc::new(BlobState::new(md)));
        }
        for b in blobs.values() {
            let p = b.md().parent();
            if let Some(p) = p.and_then(|p| blobs.get(&p)) {
                b.set_parent(Some(p.clone()));
            }
            let ext = {
                let m = b.md();
                (m.invalid_flags & FLAG_EXTERNAL_SNAPSHOT != 0)
                    .then(|| {
                        m.internal_xattr(XATTR_EXTERNAL_SNAPSHOT)
                            .map(<[u8]>::to_vec)
                    })
                    .flatten()
            };
            if let Some(id) = ext {
                // Missing now: degraded until it appears.
                let dev = open_esnap(b, &id, sb.io_unit_size);
                *b.esnap.lock().unwrap_or_else(|e| e.into_inner()) = Some(Esnap { id, dev });
            }
        }
        Blobstore {
            inner: Arc::new(Inner {
                bdev: desc.bdev().clone(),
                io_unit: sb.io_unit_size,
                cluster_size: sb.cluster_size,
                md_start: sb.md.start,
                state: Mutex::new(State {
                    sb,
                    pages,
                    clusters,
                    ids,
                    free_clusters,
                    hint: 0,
                    blobs,
                }),
                desc: Mutex::new(Some(desc)),
                unloaded: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn channel(&self) -> Result<BdevChannel, BlobError> {
        if self.inner.unloaded.load(Ordering::Acquire) {
            return Err(BlobError::Unloaded);
        }
        let d = self.inner.desc.lock().unwrap_or_else(|e| e.into_inner());
        chan(d.as_ref().ok_or(BlobError::Unloaded)?)
    }

    /// This core's I/O channel for blobs of this store.
    ///
    /// # Errors
    /// [`BlobError::Unloaded`]; the device's refusal.
    pub fn io_channel(&self) -> Result<BlobChannel, BlobError> {
        self.channel().map(BlobChannel)
    }

    /// Makes a new, empty store on the bdev `desc` opened (writable; the
    /// caller claims it): the metadata region zeroed, the data region
    /// cleared as `opts.clear` says, the super block written (not clean
    /// while the store is open), all durable.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] for options the device cannot take (block
    /// size, cluster size, too small); device errors.
    pub async fn init(desc: Desc, opts: &StoreOptions) -> Result<Blobstore, BlobError> {
        let bdev = desc.bdev().clone();
        let bs = bdev.block_size();
        if bs as usize > PAGE_SIZE || !PAGE_SIZE.is_multiple_of(bs as usize) {
            return Err(BlobError::invalid(
                "block size",
                format!("{bs} bytes: a blob store needs blocks dividing 4 KiB"),
            ));
        }
        if opts.cluster_size == 0 || !(opts.cluster_size as usize).is_multiple_of(PAGE_SIZE) {
            return Err(BlobError::invalid(
                "cluster size",
                format!("{}: a multiple of 4096 bytes", opts.cluster_size),
            ));
        }
        let dev_bytes = bdev.num_blocks() * u64::from(bs);
        let mut sb = SuperBlock::layout(
            dev_bytes,
            bs,
            opts.cluster_size,
            opts.md_pages,
            &opts.bstype,
        )?;
        let ch = chan(&desc)?;
        let per_page = PAGE_SIZE as u64 / u64::from(bs);
        // Everything after the super block up to the end of the metadata.
        zero_dev(&ch, per_page, (sb.md.end() - 1) * per_page, false).await?;
        let data_from = sb.md_clusters() * u64::from(sb.cluster_size) / u64::from(bs);
        let data_to = sb.total_clusters() * u64::from(sb.cluster_size) / u64::from(bs);
        match opts.clear {
            ClearMethod::None => {}
            ClearMethod::Unmap if bdev.io_type_supported(IoType::Unmap) => {
                zero_dev(&ch, data_from, data_to - data_from, true).await?
            }
            ClearMethod::Unmap => {}
            ClearMethod::WriteZeroes => {
                zero_dev(&ch, data_from, data_to - data_from, false).await?
            }
        }
        sb.clean = false;
        write_dev_pages(&ch, &[(0, sb.encode())]).await?;
        flush_dev(&ch, bdev.num_blocks()).await?;
        let loaded = Loaded {
            used_pages: Vec::new(),
            used_clusters: Vec::new(),
            used_blobids: Vec::new(),
            metadata: Metadata::default(),
            recovered: false,
            unreadable_pages: 0,
            problems: Vec::new(),
            sb,
        };
        Ok(Blobstore::new(desc, loaded))
    }

    /// Loads the store on the bdev `desc` opened: clean (the masks) or
    /// dirty (every metadata page scanned, half-made snapshots and
    /// half-done snapshot deletions repaired), then marks it not clean on
    /// disk while it is open.
    ///
    /// # Errors
    /// [`BlobError::Load`]: no store, or metadata that is not SPDK's
    /// format (naming the page); device errors.
    pub async fn load(desc: Desc) -> Result<Blobstore, BlobError> {
        let loaded = super::load::load(&desc).await?;
        let recovered = loaded.recovered;
        let store = Blobstore::new(desc, loaded);
        if recovered {
            store.repair().await?;
        }
        let ch = store.channel()?;
        let sb = {
            let mut s = store.state();
            s.sb.clean = false;
            s.sb.encode()
        };
        write_dev_pages(&ch, &[(0, sb)]).await?;
        flush_dev(&ch, store.dev_blocks()).await?;
        Ok(store)
    }

    /// Writes the masks, then the super block marked clean, durably; the
    /// store is closed afterwards (every call fails with
    /// [`BlobError::Unloaded`]).
    ///
    /// # Errors
    /// [`BlobError::Busy`] while a blob is open; device errors (the store
    /// stays open, not clean on disk).
    pub async fn unload(&self) -> Result<(), BlobError> {
        let ch = self.channel()?;
        let (masks, sb) = {
            let s = self.state();
            if let Some(b) = s
                .blobs
                .values()
                .find(|b| b.opens.load(Ordering::Acquire) > 0)
            {
                return Err(BlobError::Busy {
                    id: b.id,
                    why: "open".into(),
                });
            }
            let mut out = Vec::new();
            for (kind, bits, r) in [
                (MaskType::UsedPages, &s.pages, s.sb.used_page_mask),
                (MaskType::UsedClusters, &s.clusters, s.sb.used_cluster_mask),
                (MaskType::UsedBlobIds, &s.ids, s.sb.used_blobid_mask),
            ] {
                let m = Mask {
                    kind,
                    bits: bits.clone(),
                };
                out.push((u64::from(r.start), m.encode(r.len as usize * PAGE_SIZE)?));
            }
            let mut sb = s.sb.clone();
            sb.clean = true;
            (out, sb)
        };
        write_dev_pages(&ch, &masks).await?;
        flush_dev(&ch, self.dev_blocks()).await?;
        write_dev_pages(&ch, &[(0, sb.encode())]).await?;
        flush_dev(&ch, self.dev_blocks()).await?;
        self.inner.unloaded.store(true, Ordering::Release);
        self.state().blobs.clear();
        Ok(())
    }

    /// Closes the device without writing anything (after [`Blobstore::unload`],
    /// or when the device went away): every call fails with
    /// [`BlobError::Unloaded`] from now on, and the descriptor is closed
    /// once the channels got from it are gone.
    pub fn close(&self) {
        self.inner.unloaded.store(true, Ordering::Release);
        self.state().blobs.clear();
        self.inner
            .desc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Destroys the store: its super block is zeroed (durably), so the
    /// device no longer holds a store, then it is closed.
    ///
    /// # Errors
    /// [`BlobError::Busy`] while a blob is open or held (nothing
    /// changed); device errors.
    pub async fn destroy(&self) -> Result<(), BlobError> {
        let ch = self.channel()?;
        {
            let s = self.state();
            if let Some(b) = s
                .blobs
                .values()
                .find(|b| b.opens.load(Ordering::Acquire) > 0 || b.busy.load(Ordering::Acquire) > 0)
            {
                return Err(BlobError::Busy {
                    id: b.id,
                    why: "open or held by an operation".into(),
                });
            }
        }
        write_dev_pages(&ch, &[(0, vec![0u8; PAGE_SIZE])]).await?;
        flush_dev(&ch, self.dev_blocks()).await?;
        drop(ch);
        self.close();
        Ok(())
    }

    /// The bdev the store is on.
    pub fn bdev(&self) -> &crate::Bdev {
        &self.inner.bdev
    }

    /// Whether an operation holds blob `id` ([`Blobstore::hold`]).
    pub fn is_held(&self, id: u64) -> bool {
        self.blob(id)
            .is_ok_and(|st| st.busy.load(Ordering::Acquire) > 0)
    }

    /// Whether blob `id` could be deleted now, counting `own` open handles
    /// of the caller's as closed (a volume's own bdev keeps its blob open):
    /// not held by an operation, not a snapshot with two or more clones.
    ///
    /// # Errors
    /// [`BlobError::Busy`] naming what holds it; [`BlobError::NotFound`].
    pub fn check_delete(&self, id: u64, own: usize) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        deletable(&st, self.clones(id).len(), own)
    }

    pub(crate) fn dev_blocks(&self) -> u64 {
        self.inner.bdev.num_blocks()
    }

    /// The device's block (the store's I/O unit) in bytes.
    pub fn io_unit_size(&self) -> u32 {
        self.inner.io_unit
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u32 {
        self.inner.cluster_size
    }

    /// I/O units per cluster.
    pub fn units_per_cluster(&self) -> u64 {
        u64::from(self.inner.cluster_size / self.inner.io_unit)
    }

    /// Clusters in the store, the metadata's included.
    pub fn total_clusters(&self) -> u64 {
        self.state().clusters.len() as u64
    }

    /// Clusters blobs can have.
    pub fn total_data_clusters(&self) -> u64 {
        let s = self.state();
        s.clusters.len() as u64 - s.sb.md_clusters()
    }

    /// Free clusters.
    pub fn free_clusters(&self) -> u64 {
        self.state().free_clusters
    }

    /// The store's type, as stored.
    pub fn bstype(&self) -> String {
        self.state().sb.bstype_str()
    }

    /// The application's super blob.
    pub fn super_blob(&self) -> Option<u64> {
        let id = self.state().sb.super_blob;
        (id != u64::MAX).then_some(id)
    }

    /// Records `id` as the application's super blob, durably.
    ///
    /// # Errors
    /// [`BlobError::NotFound`]; device errors.
    pub async fn set_super_blob(&self, id: u64) -> Result<(), BlobError> {
        let ch = self.channel()?;
        let sb = {
            let mut s = self.state();
            if !s.blobs.contains_key(&id) {
                return Err(BlobError::NotFound(id));
            }
            s.sb.super_blob = id;
            s.sb.encode()
        };
        write_dev_pages(&ch, &[(0, sb)]).await?;
        flush_dev(&ch, self.dev_blocks()).await
    }

    /// Every blob's id, in order.
    pub fn blob_ids(&self) -> Vec<u64> {
        self.state().blobs.keys().copied().collect()
    }

    /// The blobs whose parent is `id`.
    pub fn clones(&self, id: u64) -> Vec<u64> {
        self.state()
            .blobs
            .values()
            .filter(|b| b.parent().is_some_and(|p| p.id == id))
            .map(|b| b.id)
            .collect()
    }

    pub(crate) fn blob(&self, id: u64) -> Result<Arc<BlobState>, BlobError> {
        if self.inner.unloaded.load(Ordering::Acquire) {
            return Err(BlobError::Unloaded);
        }
        self.state()
            .blobs
            .get(&id)
            .cloned()
            .ok_or(BlobError::NotFound(id))
    }

    /// Opens blob `id` (reference counted: each handle closes on drop).
    ///
    /// # Errors
    /// [`BlobError::NotFound`].
    pub fn open_blob(&self, id: u64) -> Result<Blob, BlobError> {
        let st = self.blob(id)?;
        st.opens.fetch_add(1, Ordering::AcqRel);
        Ok(Blob {
            store: self.clone(),
            st,
            released: AtomicBool::new(false),
        })
    }

    /// Marks blob `id` busy (an operation holds it: a copy, a checksum)
    /// until the guard is dropped: its deletion fails with EBUSY meanwhile.
    ///
    /// # Errors
    /// [`BlobError::NotFound`].
    pub fn hold(&self, id: u64) -> Result<BusyGuard, BlobError> {
        let st = self.blob(id)?;
        st.busy.fetch_add(1, Ordering::AcqRel);
        Ok(BusyGuard(st))
    }

    /// Zeroes clusters `cs` of the device, then flushes.
    pub(crate) async fn zero_clusters(
        &self,
        ch: &BdevChannel,
        cs: &[u32],
    ) -> Result<(), BlobError> {
        let upc = self.units_per_cluster();
        for (first, n) in runs(cs) {
            zero_dev(ch, u64::from(first) * upc, n * upc, false).await?;
        }
        if !cs.is_empty() {
            flush_dev(ch, self.dev_blocks()).await?;
        }
        Ok(())
    }

    /// Creates a blob, durably; returns its id. A thick blob's clusters
    /// are zeroed first.
    ///
    /// # Errors
    /// [`BlobError::NoSpace`] (nothing changed); [`BlobError::Invalid`]
    /// for an xattr that does not fit; device errors.
    pub async fn create_blob(&self, opts: &BlobOptions) -> Result<u64, BlobError> {
        let mut md = BlobMd {
            num_clusters: opts.num_clusters,
            invalid_flags: FLAG_EXTENT_TABLE | if opts.thin { FLAG_THIN_PROV } else { 0 },
            ..BlobMd::default()
        };
        for (n, v) in &opts.xattrs {
            if n.is_empty() || n.len() + v.len() > 4000 {
                return Err(BlobError::invalid(
                    format!("xattr {n:?}"),
                    "1 to 4000 bytes of name and value",
                ));
            }
            put_xattr(&mut md.xattrs, n, v);
        }
        self.create_with(md, None).await
    }

    /// Creates blob `md` (its id assigned here), its parent set in memory
    /// after it is written. Thick clusters (`md.clusters` empty, not thin)
    /// are allocated and zeroed.
    pub(crate) async fn create_with(
        &self,
        mut md: BlobMd,
        parent: Option<Arc<BlobState>>,
    ) -> Result<u64, BlobError> {
        let ch = self.channel()?;
        let thin = md.invalid_flags & FLAG_THIN_PROV != 0;
        let mut fresh = Vec::new();
        let page = {
            let mut s = self.state();
            if !thin && md.clusters.is_empty() {
                if s.free_clusters < md.num_clusters {
                    return Err(BlobError::NoSpace(format!(
                        "{} clusters asked, {} free",
                        md.num_clusters, s.free_clusters
                    )));
                }
                for _ in 0..md.num_clusters {
                    fresh.push(s.claim_cluster()?);
                }
            }
            let free = s
                .pages
                .iter()
                .zip(&s.ids)
                .position(|(p, i)| !p && !i)
                .ok_or_else(|| BlobError::NoSpace("every metadata page is used".into()));
            match free {
                Ok(p) => {
                    s.pages[p] = true;
                    s.ids[p] = true;
                    p as u32
                }
                Err(e) => {
                    for c in &fresh {
                        s.release_cluster(*c);
                    }
                    return Err(e);
                }
            }
        };
        let id = page_to_blobid(page);
        md.id = id;
        if !fresh.is_empty() {
            md.clusters = fresh.clone();
        } else if md.clusters.is_empty() {
            md.clusters = vec![0; md.num_clusters as usize];
        }
        let st = Arc::new(BlobState::new(BlobMd {
            id,
            pages: Vec::new(),
            ..BlobMd::default()
        }));
        let res = async {
            self.zero_clusters(&ch, &fresh).await?;
            self.persist(&st, md.clone(), true).await
        }
        .await;
        if let Err(e) = res {
            let mut s = self.state();
            for c in &fresh {
                s.release_cluster(*c);
            }
            s.release_page(page);
            s.ids[page as usize] = false;
            return Err(e);
        }
        let st = Arc::new(BlobState::new(st.written().clone()));
        st.set_parent(parent);
        self.state().blobs.insert(id, st);
        Ok(id)
    }

    /// Writes blob `st`'s metadata as `new` says (the caller holds its
    /// lock, or it is not yet in the store): extent pages that changed,
    /// then the chain (new pages for all but the first), the first page
    /// last; durable when `durable` or when pages are freed. On success
    /// `st`'s metadata is `new` with where it now lies on disk.
    pub(crate) async fn persist(
        &self,
        st: &BlobState,
        mut new: BlobMd,
        durable: bool,
    ) -> Result<(), BlobError> {
        let ch = self.channel()?;
        let old = st.written().clone();
        new.id = st.id;
        // Always written with an extent table (a blob SPDK stored as runs
        // is converted), so the flag that tells readers so goes with it.
        new.invalid_flags |= FLAG_EXTENT_TABLE;
        let first = blobid_to_page(st.id);
        let nslots = serialize::slots(new.num_clusters);
        let mut table = vec![0u32; nslots];
        let mut fresh: Vec<u32> = Vec::new();
        let mut writes: Vec<(u32, Vec<u8>)> = Vec::new();
        let res: Result<Vec<(u32, Vec<u8>)>, BlobError> = (|| {
            let mut s = self.state();
            // Slots whose entries change, and whether anything but extent
            // page contents changes (then the chain is rewritten, and a
            // changed extent page goes to a new page rather than over the
            // one the old chain names: a crash keeps the old blob whole).
            let mut changed = Vec::new();
            let mut chain_changes = old.pages.is_empty()
                || old.num_clusters != new.num_clusters
                || old.invalid_flags != new.invalid_flags
                || old.data_ro_flags != new.data_ro_flags
                || old.md_ro_flags != new.md_ro_flags
                || old.xattrs != new.xattrs
                || old.internal_xattrs != new.internal_xattrs
                || old.extent_table.len() != nslots;
            for (slot, t) in table.iter_mut().enumerate() {
                let a = slot * EXTENTS_PER_PAGE;
                let b = (a + EXTENTS_PER_PAGE).min(new.clusters.len());
                let range = &new.clusters[a.min(b)..b];
                let was = old.extent_table.get(slot).copied().unwrap_or(0);
                if range.iter().all(|&c| c == 0) {
                    chain_changes |= was != 0;
                    continue;
                }
                *t = was;
                let ob = (a + EXTENTS_PER_PAGE).min(old.clusters.len());
                if was != 0 && old.clusters.get(a.min(ob)..ob) == Some(range) {
                    continue;
                }
                chain_changes |= was == 0;
                changed.push(slot);
            }
            for slot in changed {
                if table[slot] == 0 || chain_changes {
                    table[slot] = s.claim_page()?;
                    fresh.push(table[slot]);
                }
                writes.push((
                    table[slot],
                    serialize::extent_page(st.id, slot, &new.clusters)?,
                ));
            }
            new.extent_table = table.clone();
            new.extent_pages = table.iter().copied().filter(|&p| p != 0).collect();
            let packed = serialize::pack(st.id, serialize::chain_descriptors(&new))?;
            let old_packed = if old.pages.is_empty() {
                None
            } else {
                Some(serialize::pack(st.id, serialize::chain_descriptors(&old))?)
            };
            if old_packed.as_ref() == Some(&packed) {
                new.pages = old.pages.clone();
                return Ok(Vec::new());
            }
            let mut at = vec![first];
            for _ in 1..packed.len() {
                let p = s.claim_page()?;
                fresh.push(p);
                at.push(p);
            }
            new.pages = at.clone();
            Ok(serialize::chain_pages(st.id, packed, &at)?)
        })();
        let unclaim = |fresh: &[u32]| {
            let mut s = self.state();
            for &p in fresh {
                s.release_page(p);
            }
        };
        let chain = match res {
            Ok(c) => c,
            Err(e) => {
                unclaim(&fresh);
                return Err(e);
            }
        };
        // Pages no longer used: old chain pages past the first, extent
        // pages of slots now empty or gone.
        let mut freed: Vec<u32> = Vec::new();
        if !chain.is_empty() {
            freed.extend(old.pages.iter().copied().filter(|&p| p != first));
        }
        freed.extend(
            old.extent_table
                .iter()
                .copied()
                .filter(|&p| p != 0 && !new.extent_table.contains(&p)),
        );
        let md_start = u64::from(self.inner.md_start);
        let dev = |v: &[(u32, Vec<u8>)]| -> Vec<(u64, Vec<u8>)> {
            v.iter()
                .map(|(p, b)| (md_start + u64::from(*p), b.clone()))
                .collect()
        };
        let result = async {
            let (head, rest): (Vec<_>, Vec<_>) = chain.into_iter().partition(|(p, _)| *p == first);
            writes.extend(rest);
            write_dev_pages(&ch, &dev(&writes)).await?;
            if !head.is_empty() {
                if !writes.is_empty() {
                    flush_dev(&ch, self.dev_blocks()).await?;
                }
                write_dev_pages(&ch, &dev(&head)).await?;
            }
            if durable || !freed.is_empty() {
                flush_dev(&ch, self.dev_blocks()).await?;
            }
            Ok::<(), BlobError>(())
        }
        .await;
        if let Err(e) = result {
            unclaim(&fresh);
            return Err(e);
        }
        {
            let mut s = self.state();
            for p in freed {
                s.release_page(p);
            }
        }
        *st.written() = new.clone();
        // Xattrs changed in memory while this was written (neither what
        // was on disk nor what was written) stay, for the next sync.
        let mut cur = st.md();
        let keep_x = cur.xattrs != old.xattrs && cur.xattrs != new.xattrs;
        let keep_i = cur.internal_xattrs != old.internal_xattrs
            && cur.internal_xattrs != new.internal_xattrs;
        let (x, i) = (cur.xattrs.clone(), cur.internal_xattrs.clone());
        *cur = new;
        if keep_x {
            cur.xattrs = x;
        }
        if keep_i {
            cur.internal_xattrs = i;
            fix_internal_flag(&mut cur);
        }
        Ok(())
    }

    /// Resizes blob `st` (see [`Blob::resize`]).
    pub(crate) async fn resize(&self, st: &Arc<BlobState>, n: u64) -> Result<(), BlobError> {
        let ch = self.channel()?;
        let cur = st.num_clusters.load(Ordering::Acquire);
        if n > u64::from(u32::MAX) {
            return Err(BlobError::invalid("size", format!("{n} clusters")));
        }
        let _frozen = if n < cur {
            st.gate.freeze().await;
            Some(Frozen(&st.gate))
        } else {
            None
        };
        let _l = st.lock.lock().await;
        let mut md = st.md().clone();
        let thin = md.invalid_flags & FLAG_THIN_PROV != 0;
        let mut fresh = Vec::new();
        if n > md.num_clusters && !thin {
            let mut s = self.state();
            let need = n - md.num_clusters;
            if s.free_clusters < need {
                return Err(BlobError::NoSpace(format!(
                    "{need} clusters asked, {} free",
                    s.free_clusters
                )));
            }
            for _ in 0..need {
                fresh.push(s.claim_cluster()?);
            }
        }
        let dropped: Vec<u32> = md
            .clusters
            .iter()
            .skip(n as usize)
            .copied()
            .filter(|&c| c != 0)
            .collect();
        md.clusters.resize(n as usize, 0);
        if !fresh.is_empty() {
            let from = md.num_clusters as usize;
            md.clusters[from..].copy_from_slice(&fresh);
        }
        md.num_clusters = n;
        let res = async {
            self.zero_clusters(&ch, &fresh).await?;
            self.persist(st, md.clone(), true).await
        }
        .await;
        if let Err(e) = res {
            let mut s = self.state();
            for c in fresh {
                s.release_cluster(c);
            }
            return Err(e);
        }
        st.map.replace(&md.clusters);
        st.num_clusters.store(n, Ordering::Release);
        let mut s = self.state();
        for c in dropped {
            s.release_cluster(c);
        }
        Ok(())
    }

    /// Deletes blob `id`, atomically: it must be closed, not held by an
    /// operation and without clones (a snapshot with one clone is merged
    /// into it first); then one write of its first page removes it, and
    /// only once that is durable are its pages and clusters freed. A
    /// failure leaves it whole.
    ///
    /// # Errors
    /// [`BlobError::Busy`] (open, held, or a snapshot with two or more
    /// clones); [`BlobError::NotFound`]; device errors.
    pub async fn delete_blob(&self, id: u64) -> Result<(), BlobError> {
        self.delete_blob_with(id, ClearMethod::None).await
    }

    /// [`Blobstore::delete_blob`], the clusters it frees cleared as
    /// `clear` says once the deletion is durable (a snapshot merged into
    /// its clone frees none: they are the clone's).
    ///
    /// # Errors
    /// As [`Blobstore::delete_blob`].
    pub async fn delete_blob_with(&self, id: u64, clear: ClearMethod) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        let clones = self.clones(id);
        if clones.len() == 1 {
            return super::snapshot::delete_into_clone(self, &st, clones[0]).await;
        }
        let _l = st.lock.lock().await;
        self.check_deletable(&st, clones.len())?;
        self.erase_with(&st, clear).await
    }

    pub(crate) fn check_deletable(&self, st: &BlobState, clones: usize) -> Result<(), BlobError> {
        deletable(st, clones, 0)
    }

    /// Removes blob `st` from disk (its first page zeroed, durably) and
    /// then from memory, freeing what only it used. Pages and clusters
    /// other blobs still name (`keep`) stay.
    pub(crate) async fn erase(&self, st: &BlobState) -> Result<(), BlobError> {
        self.erase_with(st, ClearMethod::None).await
    }

    /// [`Blobstore::erase`], clearing the clusters it frees (unmap or
    /// write zeroes) after the deletion is durable and before they can be
    /// allocated again: SPDK's lvol `clear_method`. A clearing failure is
    /// logged; the deletion stands.
    pub(crate) async fn erase_with(
        &self,
        st: &BlobState,
        clear: ClearMethod,
    ) -> Result<(), BlobError> {
        let ch = self.channel()?;
        let first = blobid_to_page(st.id);
        let md_start = u64::from(self.inner.md_start);
        write_dev_pages(&ch, &[(md_start + u64::from(first), vec![0u8; PAGE_SIZE])]).await?;
        flush_dev(&ch, self.dev_blocks()).await?;
        let md = st.written().clone();
        let freed: Vec<u32> = {
            let mut s = self.state();
            s.blobs.remove(&st.id);
            // What other blobs still use (a repair erases a snapshot that
            // shares its original's clusters and extent pages; a merged
            // snapshot's clusters are its clone's now).
            let mut used_pages = std::collections::BTreeSet::new();
            let mut used_clusters = std::collections::BTreeSet::new();
            for b in s.blobs.values() {
                let m = b.written();
                used_pages.extend(m.pages.iter().chain(&m.extent_pages).copied());
                used_clusters.extend(m.clusters.iter().copied().filter(|&c| c != 0));
            }
            for p in md.pages.iter().chain(&md.extent_pages) {
                if !used_pages.contains(p) {
                    s.release_page(*p);
                }
            }
            s.release_page(first);
            s.ids[first as usize] = false;
            md.clusters
                .iter()
                .copied()
                .filter(|&c| c != 0 && !used_clusters.contains(&c))
                .collect()
        };
        // Still marked used in memory while they are cleared.
        if clear != ClearMethod::None && !freed.is_empty() {
            let upc = self.units_per_cluster();
            let unmap =
                clear == ClearMethod::Unmap && self.inner.bdev.io_type_supported(IoType::Unmap);
            for (c, n) in runs(&freed) {
                if let Err(e) = zero_dev(&ch, u64::from(c) * upc, n * upc, unmap).await {
                    log::warn!("blob {:#x}: clearing {n} freed clusters at {c}: {e}", st.id);
                }
            }
            if let Err(e) = flush_dev(&ch, self.dev_blocks()).await {
                log::warn!("blob {:#x}: flushing after clearing: {e}", st.id);
            }
        }
        let mut s = self.state();
        for c in freed {
            s.release_cluster(c);
        }
        Ok(())
    }

    /// After a dirty load: finishes or undoes what a crash interrupted.
    async fn repair(&self) -> Result<(), BlobError> {
        let blobs: Vec<Arc<BlobState>> = self.state().blobs.values().cloned().collect();
        for b in blobs {
            let (pending, removing) = {
                let m = b.md();
                let id = |v: Option<&[u8]>| {
                    v.and_then(|v| v.get(..8))
                        .and_then(|v| v.try_into().ok())
                        .map(u64::from_le_bytes)
                };
                (
                    id(m.internal_xattr(XATTR_SNAPSHOT_PENDING)),
                    id(m.internal_xattr(XATTR_SNAPSHOT_REMOVING)),
                )
            };
            if let Some(orig) = pending {
                // A snapshot being made: complete when its original reads
                // from it already, else it never was.
                let done = self
                    .blob(orig)
                    .ok()
                    .is_some_and(|o| o.md().parent() == Some(b.id));
                if done {
                    self.drop_internal(&b, XATTR_SNAPSHOT_PENDING).await?;
                } else {
                    self.erase(&b).await?;
                    continue;
                }
            }
            if let Some(clone) = removing {
                // A snapshot being merged into its clone: done when the
                // clone no longer reads from it.
                let merged = self
                    .blob(clone)
                    .ok()
                    .is_none_or(|c| c.md().parent() != Some(b.id));
                if merged {
                    self.erase(&b).await?;
                } else {
                    self.drop_internal(&b, XATTR_SNAPSHOT_REMOVING).await?;
                }
            }
        }
        // Parents as they now are.
        let s = self.state();
        for b in s.blobs.values() {
            let p = b.md().parent().and_then(|p| s.blobs.get(&p)).cloned();
            b.set_parent(p);
        }
        Ok(())
    }

    pub(crate) async fn drop_internal(&self, st: &BlobState, name: &str) -> Result<(), BlobError> {
        let mut md = st.md().clone();
        if drop_xattr(&mut md.internal_xattrs, name) {
            fix_internal_flag(&mut md);
            self.persist(st, md, true).await?;
        }
        Ok(())
    }

    /// Checks the store as it is on disk (SPDK's invariants: chains,
    /// CRCs, each cluster owned by one blob) and against memory (the same
    /// blobs, the same clusters allocated: no leak).
    ///
    /// # Errors
    /// A store that no longer loads (the reason names the page).
    pub async fn check(&self) -> Result<CheckReport, BlobError> {
        let ch = self.channel()?;
        let l = super::load::load_via(&ch)
            .await
            .map_err(|e: LoadError| BlobError::Load(e))?;
        let mut problems = l.problems.clone();
        let s = self.state();
        let (_, clusters, _) = l.metadata.masks(&l.sb);
        for (i, (&disk, &mem)) in clusters.iter().zip(&s.clusters).enumerate() {
            if disk != mem {
                problems.push(format!(
                    "cluster {i}: {} on disk, {} in memory",
                    if disk { "used" } else { "free" },
                    if mem { "used" } else { "free" }
                ));
            }
        }
        let on_disk: Vec<u64> = l.metadata.blobs.keys().copied().collect();
        let in_mem: Vec<u64> = s.blobs.keys().copied().collect();
        if on_disk != in_mem {
            problems.push(format!("blobs {on_disk:x?} on disk, {in_mem:x?} in memory"));
        }
        for b in l.metadata.blobs.values() {
            for name in [XATTR_SNAPSHOT_PENDING, XATTR_SNAPSHOT_REMOVING] {
                if b.internal_xattr(name).is_some() {
                    problems.push(format!("blob {:#x} keeps {name}", b.id));
                }
            }
        }
        Ok(CheckReport {
            blobs: l.metadata.blobs.len(),
            problems,
        })
    }

    /// Grows the store to the device's current size (the bdev got
    /// bigger): the cluster mask region must have room for the new bits.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] when the device did not grow or the mask
    /// region cannot hold it; device errors.
    pub async fn grow(&self) -> Result<u64, BlobError> {
        let ch = self.channel()?;
        let bytes = self.dev_blocks() * u64::from(self.inner.io_unit);
        let sb = {
            let mut s = self.state();
            let total = bytes / u64::from(self.inner.cluster_size);
            let have = s.clusters.len() as u64;
            if total <= have {
                return Err(BlobError::invalid(
                    "grow",
                    format!("the device holds {total} clusters, the store has {have}"),
                ));
            }
            let room = (u64::from(s.sb.used_cluster_mask.len) * PAGE_SIZE as u64 - 5) * 8;
            if total > room {
                return Err(BlobError::invalid(
                    "grow",
                    format!("{total} clusters; the used-cluster mask holds {room}"),
                ));
            }
            s.clusters.resize(total as usize, false);
            s.free_clusters += total - have;
            s.sb.size = bytes;
            s.sb.encode()
        };
        write_dev_pages(&ch, &[(0, sb)]).await?;
        flush_dev(&ch, self.dev_blocks()).await?;
        Ok(self.total_clusters())
    }
}

/// Whether blob `st` with `clones` clones can go, `own` of its opens not
/// counting: not open, not held, at most one clone.
fn deletable(st: &BlobState, clones: usize, own: usize) -> Result<(), BlobError> {
    let busy = |why: String| Err(BlobError::Busy { id: st.id, why });
    if st.opens.load(Ordering::Acquire) > own {
        return busy("open".into());
    }
    if st.busy.load(Ordering::Acquire) > 0 {
        return busy("an operation holds it".into());
    }
    if clones > 1 {
        return busy(format!("{clones} clones depend on it"));
    }
    Ok(())
}

/// Device clusters `cs` as runs of consecutive ones: (first, count).
fn runs(cs: &[u32]) -> Vec<(u32, u64)> {
    let mut sorted = cs.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u32, u64)> = Vec::new();
    for c in sorted {
        match out.last_mut() {
            Some((f, n)) if u64::from(*f) + *n == u64::from(c) => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}

/// Keeps a blob busy while alive ([`Blobstore::hold`]).
pub struct BusyGuard(Arc<BlobState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The read-only flags a snapshot carries.
pub(crate) fn mark_read_only(md: &mut BlobMd) {
    md.data_ro_flags |= FLAG_READ_ONLY;
}

/// Sets or removes the parent xattr of `md`.
pub(crate) fn set_parent_xattr(md: &mut BlobMd, parent: Option<u64>) {
    match parent {
        Some(p) => put_xattr(&mut md.internal_xattrs, XATTR_SNAPSHOT, &p.to_le_bytes()),
        None => {
            drop_xattr(&mut md.internal_xattrs, XATTR_SNAPSHOT);
        }
    }
    fix_internal_flag(md);
}
