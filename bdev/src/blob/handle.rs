//! A blob in memory: its metadata ([`BlobMd`], as last written plus
//! changes not yet synced), the cluster map the I/O path reads from every
//! core without a lock, the gate that freezes its I/O for a snapshot or a
//! shrink, its operation lock, and the counts that make it busy (open
//! handles, running operations). [`Blob`] is an open handle.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::error::BlobError;
use super::metadata::{BlobMd, FLAG_INTERNAL_XATTR, FLAG_THIN_PROV};
use super::store::Blobstore;
use crate::oplock::OpLock;

/// SPDK's read-only flag (in `data_ro_flags`).
pub const FLAG_READ_ONLY: u64 = 1 << 0;

type Map = Box<[AtomicU32]>;

/// A blob's cluster map (blob cluster → device cluster, 0: unallocated),
/// read by the I/O path on every core without a lock. An entry changes
/// under the blob's operation lock; a resize publishes a new map, and the
/// old ones stay allocated until the blob is dropped, so a reader holding
/// one is never left with freed memory.
pub(crate) struct ClusterMap {
    cur: AtomicPtr<Map>,
    // Boxed twice: `cur` points at a `Map`, which must not move when the
    // `Vec` grows.
    #[allow(clippy::vec_box)]
    all: Mutex<Vec<Box<Map>>>,
}

impl ClusterMap {
    pub fn new(clusters: &[u32]) -> ClusterMap {
        let m = ClusterMap {
            cur: AtomicPtr::new(std::ptr::null_mut()),
            all: Mutex::new(Vec::new()),
        };
        m.replace(clusters);
        m
    }

    fn view(&self) -> &[AtomicU32] {
        let p = self.cur.load(Ordering::Acquire);
        // SAFETY: `cur` always points at a map boxed in `all`, set before
        // any reader can see the `ClusterMap`; boxes in `all` are never
        // dropped or moved before `self` is (the `Vec` moves only the
        // boxes' pointers), so the map outlives the borrow of `self`.
        unsafe { &*p }
    }

    /// The device cluster of blob cluster `i` (0: unallocated or past the
    /// map).
    pub fn get(&self, i: u64) -> u32 {
        self.view()
            .get(i as usize)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Sets blob cluster `i` (the caller holds the blob's lock).
    pub fn set(&self, i: u64, c: u32) {
        if let Some(e) = self.view().get(i as usize) {
            e.store(c, Ordering::Release);
        }
    }

    /// Publishes a new map (the caller holds the blob's lock).
    pub fn replace(&self, clusters: &[u32]) {
        let mut b: Box<Map> = Box::new(clusters.iter().map(|&c| AtomicU32::new(c)).collect());
        let p: *mut Map = &mut *b;
        self.all.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        self.cur.store(p, Ordering::Release);
    }
}

/// Freezes a blob's I/O: new I/O waits, and the freezer waits for the I/O
/// in flight to finish.
#[derive(Default)]
pub(crate) struct IoGate {
    inflight: AtomicU64,
    frozen: AtomicU32,
    waiters: Mutex<Vec<Waker>>,
}

/// One I/O in flight through the gate.
pub(crate) struct GateGuard<'a>(&'a IoGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let g = self.0;
        if g.inflight.fetch_sub(1, Ordering::SeqCst) == 1 && g.frozen.load(Ordering::SeqCst) > 0 {
            g.wake_all();
        }
    }
}

impl IoGate {
    fn wake_all(&self) {
        let w = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        for w in w {
            w.wake();
        }
    }

    fn wait_until<'a>(
        &'a self,
        cond: impl Fn(&IoGate) -> bool + 'a,
    ) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if cond(self) {
                return Poll::Ready(());
            }
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(cx.waker().clone());
            // Checked again after registering: a change between the two
            // woke the list this waker is now in, or is seen here.
            if cond(self) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Lets one I/O through (waiting while frozen).
    pub async fn enter(&self) -> GateGuard<'_> {
        loop {
            if self.frozen.load(Ordering::SeqCst) == 0 {
                self.inflight.fetch_add(1, Ordering::SeqCst);
                if self.frozen.load(Ordering::SeqCst) == 0 {
                    return GateGuard(self);
                }
                drop(GateGuard(self));
            }
            self.wait_until(|g| g.frozen.load(Ordering::SeqCst) == 0)
                .await;
        }
    }

    /// Stops new I/O and waits for the I/O in flight.
    pub async fn freeze(&self) {
        self.frozen.fetch_add(1, Ordering::SeqCst);
        self.wait_until(|g| g.inflight.load(Ordering::SeqCst) == 0)
            .await;
    }

    /// Undoes one [`IoGate::freeze`].
    pub fn thaw(&self) {
        if self.frozen.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake_all();
        }
    }
}

/// A frozen gate, thawed when dropped.
pub(crate) struct Frozen<'a>(pub &'a IoGate);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// A blob in memory.
pub(crate) struct BlobState {
    pub id: u64,
    /// Metadata: as written, plus xattr changes not yet synced.
    pub md: Mutex<BlobMd>,
    /// Metadata as on disk (what the next write is compared with).
    pub written: Mutex<BlobMd>,
    /// Xattrs or flags changed since the last write.
    pub dirty: AtomicBool,
    pub map: ClusterMap,
    /// Size in clusters (the I/O path's bound).
    pub num_clusters: AtomicU64,
    pub read_only: AtomicBool,
    pub thin: AtomicBool,
    /// The snapshot unallocated clusters are read from.
    pub parent: Mutex<Option<Arc<BlobState>>>,
    pub lock: OpLock,
    pub gate: IoGate,
    /// Open handles.
    pub opens: AtomicUsize,
    /// Operations holding it (a copy, a checksum, a merge...).
    pub busy: AtomicUsize,
    /// Its external snapshot, if it is an external-snapshot clone.
    pub esnap: Mutex<Option<Esnap>>,
}

impl BlobState {
    pub fn new(md: BlobMd) -> BlobState {
        BlobState {
            id: md.id,
            map: ClusterMap::new(&md.clusters),
            num_clusters: AtomicU64::new(md.num_clusters),
            read_only: AtomicBool::new(md.data_ro_flags & FLAG_READ_ONLY != 0),
            thin: AtomicBool::new(md.invalid_flags & FLAG_THIN_PROV != 0),
            written: Mutex::new(md.clone()),
            md: Mutex::new(md),
            dirty: AtomicBool::new(false),
            parent: Mutex::new(None),
            lock: OpLock::default(),
            gate: IoGate::default(),
            opens: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            esnap: Mutex::new(None),
        }
    }

    pub fn md(&self) -> MutexGuard<'_, BlobMd> {
        self.md.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn written(&self) -> MutexGuard<'_, BlobMd> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn parent(&self) -> Option<Arc<BlobState>> {
        self.parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_parent(&self, p: Option<Arc<BlobState>>) {
        *self.parent.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Where blob cluster `i` reads from: its own cluster, else the first
    /// ancestor's that has it, else the external snapshot at the chain's
    /// end, else zeros.
    pub fn resolve(&self, i: u64) -> Src {
        let c = self.map.get(i);
        if c != 0 {
            return Src::Dev(c);
        }
        if let Some(s) = self.esnap_src() {
            return s;
        }
        let mut p = self.parent();
        while let Some(b) = p {
            if i >= b.num_clusters.load(Ordering::Acquire) {
                return Src::Zeros;
            }
            let c = b.map.get(i);
            if c != 0 {
                return Src::Dev(c);
            }
            if let Some(s) = b.esnap_src() {
                return s;
            }
            p = b.parent();
        }
        Src::Zeros
    }

    fn esnap_src(&self) -> Option<Src> {
        let e = self.esnap.lock().unwrap_or_else(|e| e.into_inner());
        e.as_ref().map(|e| match &e.dev {
            Some(d) => Src::Esnap(d.clone()),
            None => Src::Missing(e.name()),
        })
    }

    /// The external snapshot at the end of its chain is missing.
    pub fn degraded(&self) -> bool {
        let missing = |b: &BlobState| matches!(b.esnap_src(), Some(Src::Missing(_)));
        if missing(self) {
            return true;
        }
        let mut p = self.parent();
        while let Some(b) = p {
            if missing(&b) {
                return true;
            }
            p = b.parent();
        }
        false
    }
}

/// Where a blob cluster's data is.
pub(crate) enum Src {
    /// A device cluster of the store.
    Dev(u32),
    /// The external snapshot (its bytes at the cluster's offset; zeros
    /// past its end).
    Esnap(Arc<EsnapDev>),
    /// The external snapshot, missing (its name): the blob is degraded.
    Missing(String),
    /// Nowhere: zeros.
    Zeros,
}

/// SPDK's internal xattr naming a blob's external snapshot (the lvol
/// layer stores the bdev's UUID, NUL-terminated).
pub const XATTR_EXTERNAL_SNAPSHOT: &str = "EXTSNAP";

/// An external snapshot: another bdev a blob reads its unallocated
/// clusters from.
pub(crate) struct Esnap {
    /// Its id as stored.
    pub id: Vec<u8>,
    /// The bdev, open read-only; None while missing.
    pub dev: Option<Arc<EsnapDev>>,
}

impl Esnap {
    /// Its id as text (up to the first NUL).
    pub fn name(&self) -> String {
        let end = self
            .id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.id.len());
        String::from_utf8_lossy(&self.id[..end]).into_owned()
    }
}

/// An open external snapshot.
pub(crate) struct EsnapDev {
    pub desc: crate::Desc,
    pub block_size: u32,
    pub bytes: u64,
}

/// Opens the external snapshot named `id` (a bdev's UUID or name) for
/// blob `st`, read-only; its removal makes the blob degraded. None when
/// there is no such bdev or its blocks do not divide `unit`.
pub(crate) fn open_esnap(st: &Arc<BlobState>, id: &[u8], unit: u32) -> Option<Arc<EsnapDev>> {
    let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    let name = std::str::from_utf8(&id[..end]).ok()?;
    let bdev = crate::get(name).or_else(|| crate::list().into_iter().find(|b| b.uuid() == name))?;
    let bs = bdev.block_size();
    if bs == 0 || bs > unit || !unit.is_multiple_of(bs) {
        log::warn!(
            "blob {:#x}: external snapshot {name} has {bs}-byte blocks; the store's unit is {unit}",
            st.id
        );
        return None;
    }
    let weak = Arc::downgrade(st);
    let desc = crate::open(bdev.name(), false, move |_, ev| {
        if let crate::BdevEvent::Remove = ev
            && let Some(st) = weak.upgrade()
        {
            // Degraded from now on; the descriptor closes when the I/O
            // that holds it is done.
            let dev = st
                .esnap
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|e| e.dev.take());
            if reactor::current_core().is_some() {
                drop(reactor::spawn(async move { drop(dev) }));
            }
        }
    })
    .ok()?;
    Some(Arc::new(EsnapDev {
        block_size: bs,
        bytes: bdev.num_blocks() * u64::from(bs),
        desc,
    }))
}

/// Sets or replaces xattr `name` in `list`.
pub(crate) fn put_xattr(list: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &str, value: &[u8]) {
    match list.iter_mut().find(|(n, _)| n == name.as_bytes()) {
        Some(e) => e.1 = value.to_vec(),
        None => list.push((name.as_bytes().to_vec(), value.to_vec())),
    }
}

/// Removes xattr `name` from `list`; whether it was there.
pub(crate) fn drop_xattr(list: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &str) -> bool {
    let n = list.len();
    list.retain(|(k, _)| k != name.as_bytes());
    list.len() != n
}

/// Sets the internal-xattr flag as SPDK does: on while any is stored.
pub(crate) fn fix_internal_flag(md: &mut BlobMd) {
    if md.internal_xattrs.is_empty() {
        md.invalid_flags &= !FLAG_INTERNAL_XATTR;
    } else {
        md.invalid_flags |= FLAG_INTERNAL_XATTR;
    }
}

/// An open blob. Dropping it closes it (as [`Blob::close`]).
pub struct Blob {
    pub(crate) store: Blobstore,
    pub(crate) st: Arc<BlobState>,
    /// Closed already ([`Blob::release`]).
    pub(crate) released: AtomicBool,
}

impl Drop for Blob {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("id", &self.st.id).finish()
    }
}

impl Blob {
    /// Its id.
    pub fn id(&self) -> u64 {
        self.st.id
    }

    /// Its size in clusters.
    pub fn num_clusters(&self) -> u64 {
        self.st.num_clusters.load(Ordering::Acquire)
    }

    /// Its size in I/O units (the device's blocks).
    pub fn num_io_units(&self) -> u64 {
        self.num_clusters() * self.store.units_per_cluster()
    }

    /// Clusters allocated to it (not its ancestors').
    pub fn allocated_clusters(&self) -> u64 {
        self.st.md().clusters.iter().filter(|&&c| c != 0).count() as u64
    }

    /// Thin provisioned.
    pub fn is_thin(&self) -> bool {
        self.st.thin.load(Ordering::Acquire)
    }

    /// Read-only (a snapshot, or set so).
    pub fn is_read_only(&self) -> bool {
        self.st.read_only.load(Ordering::Acquire)
    }

    /// The snapshot it reads unallocated clusters from.
    pub fn parent(&self) -> Option<u64> {
        self.st.parent().map(|p| p.id)
    }

    /// The external snapshot it reads unallocated clusters from (its id
    /// as stored, up to the NUL), if it is an external-snapshot clone.
    pub fn external_parent(&self) -> Option<String> {
        self.st
            .esnap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Esnap::name)
    }

    /// An external snapshot at the end of its chain is missing: reads of
    /// clusters that would come from it fail until it is back
    /// ([`crate::blob::Blobstore::refresh_external_snapshots`]).
    pub fn is_degraded(&self) -> bool {
        self.st.degraded()
    }

    /// Whether blob cluster `i` is allocated to it.
    pub fn is_allocated(&self, i: u64) -> bool {
        self.st.map.get(i) != 0
    }

    /// Whether blob cluster `i` reads zeros (neither it nor an ancestor
    /// nor an external snapshot has it).
    pub fn reads_zeros(&self, i: u64) -> bool {
        matches!(self.st.resolve(i), Src::Zeros)
    }

    /// Public xattr `name`.
    pub fn xattr(&self, name: &str) -> Option<Vec<u8>> {
        self.st.md().xattr(name).map(<[u8]>::to_vec)
    }

    /// Internal xattr `name`.
    pub fn internal_xattr(&self, name: &str) -> Option<Vec<u8>> {
        self.st.md().internal_xattr(name).map(<[u8]>::to_vec)
    }

    /// Public xattr names, in the order stored.
    pub fn xattr_names(&self) -> Vec<String> {
        self.st
            .md()
            .xattrs
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    fn check_md_writable(&self) -> Result<(), BlobError> {
        if self.st.md().md_ro_flags & FLAG_READ_ONLY != 0 {
            return Err(BlobError::ReadOnly(self.st.id));
        }
        Ok(())
    }

    /// Sets public xattr `name` in memory ([`Blob::sync_md`] writes it).
    ///
    /// # Errors
    /// [`BlobError::Invalid`] for a name or value over 4 KiB;
    /// [`BlobError::ReadOnly`] when the metadata is read-only.
    pub fn set_xattr(&self, name: &str, value: &[u8]) -> Result<(), BlobError> {
        self.set_any_xattr(false, name, value)
    }

    /// Sets internal xattr `name` in memory (as [`Blob::set_xattr`]).
    ///
    /// # Errors
    /// As [`Blob::set_xattr`].
    pub fn set_internal_xattr(&self, name: &str, value: &[u8]) -> Result<(), BlobError> {
        self.set_any_xattr(true, name, value)
    }

    fn set_any_xattr(&self, internal: bool, name: &str, value: &[u8]) -> Result<(), BlobError> {
        self.check_md_writable()?;
        if name.is_empty() || name.len() + value.len() > 4000 || value.len() > u16::MAX as usize {
            return Err(BlobError::invalid(
                format!("xattr {name:?}"),
                format!(
                    "{} bytes of name and value; 1 to 4000 fit",
                    name.len() + value.len()
                ),
            ));
        }
        let mut md = self.st.md();
        if internal {
            put_xattr(&mut md.internal_xattrs, name, value);
            fix_internal_flag(&mut md);
        } else {
            put_xattr(&mut md.xattrs, name, value);
        }
        self.st.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes public xattr `name` in memory.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] naming it when it is not set; read-only
    /// metadata.
    pub fn remove_xattr(&self, name: &str) -> Result<(), BlobError> {
        self.remove_any_xattr(false, name)
    }

    /// Removes internal xattr `name` in memory.
    ///
    /// # Errors
    /// As [`Blob::remove_xattr`].
    pub fn remove_internal_xattr(&self, name: &str) -> Result<(), BlobError> {
        self.remove_any_xattr(true, name)
    }

    fn remove_any_xattr(&self, internal: bool, name: &str) -> Result<(), BlobError> {
        self.check_md_writable()?;
        let mut md = self.st.md();
        let gone = if internal {
            let g = drop_xattr(&mut md.internal_xattrs, name);
            fix_internal_flag(&mut md);
            g
        } else {
            drop_xattr(&mut md.xattrs, name)
        };
        if !gone {
            return Err(BlobError::invalid(format!("xattr {name:?}"), "not set"));
        }
        self.st.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes the metadata changed in memory (xattrs), durably.
    ///
    /// # Errors
    /// Device errors; no free metadata page.
    pub async fn sync_md(&self) -> Result<(), BlobError> {
        let _l = self.st.lock.lock().await;
        // Cleared first: a change made while this write is under way sets
        // it again, for the next sync.
        if !self.st.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let md = self.st.md().clone();
        let r = self.store.persist(&self.st, md, true).await;
        if r.is_err() {
            self.st.dirty.store(true, Ordering::Release);
        }
        r
    }

    /// Makes the blob read-only (data and metadata), durably.
    ///
    /// # Errors
    /// As [`Blob::sync_md`].
    pub async fn set_read_only(&self) -> Result<(), BlobError> {
        let _l = self.st.lock.lock().await;
        let mut md = self.st.md().clone();
        md.data_ro_flags |= FLAG_READ_ONLY;
        self.store.persist(&self.st, md, true).await?;
        self.st.read_only.store(true, Ordering::Release);
        Ok(())
    }

    /// Resizes the blob to `num_clusters`, durably: a thick blob gets new
    /// clusters zeroed; a smaller size frees the clusters past it (its I/O
    /// is frozen meanwhile).
    ///
    /// # Errors
    /// [`BlobError::ReadOnly`]; [`BlobError::NoSpace`] when a thick blob's
    /// new clusters are not free (nothing changed); device errors.
    pub async fn resize(&self, num_clusters: u64) -> Result<(), BlobError> {
        if self.is_read_only() {
            return Err(BlobError::ReadOnly(self.st.id));
        }
        self.store.resize(&self.st, num_clusters).await
    }

    /// Closes the handle (the blob stays in the store).
    pub fn close(self) {}

    /// Another handle to the same blob that does not count as open (for
    /// I/O tasks of an owner that holds a counted one).
    pub(crate) fn view(&self) -> Blob {
        Blob {
            store: self.store.clone(),
            st: self.st.clone(),
            released: AtomicBool::new(true),
        }
    }

    /// Closes the handle where it is shared (a volume's bdev, whose
    /// table may outlive its unregistration): it no longer counts as open
    /// (the blob can be deleted); reading its state stays safe.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.st.opens.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
