//! Snapshots, clones, and the deletion of a snapshot into its one clone,
//! each crash safe:
//!
//! - Snapshot of blob X: X's I/O frozen; a new read-only blob S written
//!   with X's clusters and `SNAPTMP` = X (durable); X rewritten as a thin
//!   clone of S with no clusters (durable); `SNAPTMP` dropped from S. A
//!   crash between the first two writes leaves S unfinished (X does not
//!   read from it): the load erases S; between the last two, S is
//!   finished by the load.
//! - Clone of a read-only blob: one new thin blob naming it as parent.
//! - Deleting snapshot S with one clone C: `SNAPRM` = C on S (durable); C
//!   takes S's clusters where it has none and S's parent as its own
//!   (durable); S erased. A crash before C's write undoes the deletion at
//!   load, after it completes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error::BlobError;
use super::handle::{BlobState, Frozen, Src, XATTR_EXTERNAL_SNAPSHOT, drop_xattr, put_xattr};
use super::metadata::{BlobMd, FLAG_EXTENT_TABLE, FLAG_EXTERNAL_SNAPSHOT, FLAG_THIN_PROV};
use super::store::{
    Blobstore, XATTR_SNAPSHOT_PENDING, XATTR_SNAPSHOT_REMOVING, mark_read_only, set_parent_xattr,
};

impl Blobstore {
    /// Takes a snapshot of blob `id` with public `xattrs`; returns the
    /// snapshot's id. The blob becomes a thin clone of it; its I/O waits
    /// meanwhile.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] for a read-only blob; [`BlobError::NoSpace`]
    /// for no free metadata page; device errors (the blob is unchanged).
    pub async fn create_snapshot(
        &self,
        id: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<u64, BlobError> {
        let x = self.blob(id)?;
        if x.read_only.load(Ordering::Acquire) {
            return Err(BlobError::invalid(
                format!("blob {id:#x}"),
                "read-only: a snapshot of it would be a copy",
            ));
        }
        x.gate.freeze().await;
        let _frozen = Frozen(&x.gate);
        let _l = x.lock.lock().await;
        let xm = x.md().clone();
        let mut sm = BlobMd {
            num_clusters: xm.num_clusters,
            clusters: xm.clusters.clone(),
            invalid_flags: (xm.invalid_flags & FLAG_THIN_PROV) | FLAG_EXTENT_TABLE,
            ..BlobMd::default()
        };
        mark_read_only(&mut sm);
        for (n, v) in xattrs {
            put_xattr(&mut sm.xattrs, n, v);
        }
        set_parent_xattr(&mut sm, xm.parent());
        // An external-snapshot clone's snapshot takes its external
        // snapshot with it.
        let ext = xm
            .internal_xattr(XATTR_EXTERNAL_SNAPSHOT)
            .map(<[u8]>::to_vec);
        if let Some(e) = &ext {
            put_xattr(&mut sm.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT, e);
            sm.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT | FLAG_THIN_PROV;
        }
        put_xattr(
            &mut sm.internal_xattrs,
            XATTR_SNAPSHOT_PENDING,
            &id.to_le_bytes(),
        );
        super::handle::fix_internal_flag(&mut sm);
        if sm.clusters.is_empty() {
            sm.clusters = vec![0; sm.num_clusters as usize];
            sm.invalid_flags |= FLAG_THIN_PROV;
        }
        let sid = self.create_with(sm, x.parent()).await?;
        let s = self.blob(sid)?;
        let mut nm = xm.clone();
        nm.clusters = vec![0; xm.num_clusters as usize];
        nm.invalid_flags |= FLAG_THIN_PROV;
        nm.invalid_flags &= !FLAG_EXTERNAL_SNAPSHOT;
        drop_xattr(&mut nm.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT);
        set_parent_xattr(&mut nm, Some(sid));
        if let Err(e) = self.persist(&x, nm.clone(), true).await {
            // X is as it was; S never finished: gone again.
            let _ = self.erase(&s).await;
            return Err(e);
        }
        x.map.replace(&nm.clusters);
        x.thin.store(true, Ordering::Release);
        let e = x.esnap.lock().unwrap_or_else(|e| e.into_inner()).take();
        *s.esnap.lock().unwrap_or_else(|e| e.into_inner()) = e;
        x.set_parent(Some(s.clone()));
        // A failure here leaves SNAPTMP, which the next load clears.
        self.drop_internal(&s, XATTR_SNAPSHOT_PENDING).await?;
        Ok(sid)
    }

    /// Makes a thin clone of read-only blob `id` with public `xattrs`;
    /// returns the clone's id.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] when the blob is not read-only;
    /// [`BlobError::NoSpace`]; device errors.
    pub async fn create_clone(
        &self,
        id: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<u64, BlobError> {
        let s = self.blob(id)?;
        if !s.read_only.load(Ordering::Acquire) {
            return Err(BlobError::invalid(
                format!("blob {id:#x}"),
                "not read-only: only a snapshot can be cloned",
            ));
        }
        let _l = s.lock.lock().await;
        let n = s.num_clusters.load(Ordering::Acquire);
        let mut md = BlobMd {
            num_clusters: n,
            clusters: vec![0; n as usize],
            invalid_flags: FLAG_THIN_PROV | FLAG_EXTENT_TABLE,
            ..BlobMd::default()
        };
        for (k, v) in xattrs {
            put_xattr(&mut md.xattrs, k, v);
        }
        set_parent_xattr(&mut md, Some(id));
        self.create_with(md, Some(s.clone())).await
    }
}

/// Deletes snapshot `s` whose one clone is `clone_id` (see the module).
pub(crate) async fn delete_into_clone(
    store: &Blobstore,
    s: &Arc<BlobState>,
    clone_id: u64,
) -> Result<(), BlobError> {
    let c = store.blob(clone_id)?;
    store.check_deletable(s, 1)?;
    c.gate.freeze().await;
    let _frozen = Frozen(&c.gate);
    let (_a, _b) = if s.id < c.id {
        let a = s.lock.lock().await;
        (a, c.lock.lock().await)
    } else {
        let b = c.lock.lock().await;
        (s.lock.lock().await, b)
    };
    store.check_deletable(s, store.clones(s.id).len())?;
    if c.parent().map(|p| p.id) != Some(s.id) {
        return Err(BlobError::Busy {
            id: s.id,
            why: "its clones changed meanwhile".into(),
        });
    }
    let mut sm = s.md().clone();
    put_xattr(
        &mut sm.internal_xattrs,
        XATTR_SNAPSHOT_REMOVING,
        &clone_id.to_le_bytes(),
    );
    super::handle::fix_internal_flag(&mut sm);
    store.persist(s, sm.clone(), true).await?;
    let mut cm = c.md().clone();
    let grand = s.parent();
    // Past the snapshot's end the clone read zeros; where the grandparent
    // has data there, the clone gets zeroed clusters of its own, so the
    // deletion changes nothing it reads.
    let exposed: Vec<usize> = (sm.clusters.len()..cm.clusters.len())
        .filter(|&i| cm.clusters[i] == 0)
        .filter(|&i| {
            grand
                .as_ref()
                .is_some_and(|g| !matches!(g.resolve(i as u64), Src::Zeros))
                || s.esnap.lock().unwrap_or_else(|e| e.into_inner()).is_some()
        })
        .collect();
    let claimed: Result<Vec<u32>, BlobError> = {
        let mut st = store.state();
        let mut fresh = Vec::new();
        let mut err = None;
        for _ in &exposed {
            match st.claim_cluster() {
                Ok(k) => fresh.push(k),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(e) => {
                for k in fresh {
                    st.release_cluster(k);
                }
                Err(e)
            }
            None => Ok(fresh),
        }
    };
    let fresh = match claimed {
        Ok(f) => f,
        Err(e) => {
            let _ = store.drop_internal(s, XATTR_SNAPSHOT_REMOVING).await;
            return Err(e);
        }
    };
    for (&i, &k) in exposed.iter().zip(&fresh) {
        cm.clusters[i] = k;
    }
    for (i, e) in cm.clusters.iter_mut().enumerate() {
        if *e == 0 {
            *e = sm.clusters.get(i).copied().unwrap_or(0);
        }
    }
    set_parent_xattr(&mut cm, grand.as_ref().map(|g| g.id));
    if let Some(e) = sm.internal_xattr(XATTR_EXTERNAL_SNAPSHOT) {
        put_xattr(&mut cm.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT, e);
        cm.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT;
    }
    let res = async {
        let ch = store.channel()?;
        store.zero_clusters(&ch, &fresh).await?;
        store.persist(&c, cm.clone(), true).await
    }
    .await;
    if let Err(e) = res {
        {
            let mut st = store.state();
            for k in fresh {
                st.release_cluster(k);
            }
        }
        let _ = store.drop_internal(s, XATTR_SNAPSHOT_REMOVING).await;
        return Err(e);
    }
    c.map.replace(&cm.clusters);
    c.set_parent(grand);
    let e = s.esnap.lock().unwrap_or_else(|e| e.into_inner()).take();
    if e.is_some() {
        *c.esnap.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
    store.erase(s).await
}

impl Blobstore {
    /// Inflates blob `id`: every cluster it does not have is allocated
    /// (filled from its ancestors, or zeros), then it forgets its parent
    /// and is no longer thin. It reads the same throughout; I/O goes on
    /// meanwhile, and it is busy (not deletable) until done.
    ///
    /// # Errors
    /// [`BlobError::NoSpace`] (the clusters allocated so far stay, the
    /// parent too); device errors.
    pub async fn inflate(&self, id: u64) -> Result<(), BlobError> {
        self.detach(id, true).await
    }

    /// Decouples blob `id` from its parent: the clusters its parent has
    /// are copied into it, then the parent's parent (or external
    /// snapshot) becomes its parent (it stays thin), as SPDK. As
    /// [`Blobstore::inflate`] otherwise.
    ///
    /// # Errors
    /// As [`Blobstore::inflate`]; [`BlobError::Invalid`] without a parent.
    pub async fn decouple_parent(&self, id: u64) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        let ext = st.esnap.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if st.parent().is_none() && !ext {
            return Err(BlobError::invalid(
                format!("blob {id:#x}"),
                "has no parent to decouple from",
            ));
        }
        self.detach(id, false).await
    }

    async fn detach(&self, id: u64, all: bool) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        // A snapshot may be detached too: it reads the same afterwards
        // (its clusters filled from its ancestors).
        let _busy = self.hold(id)?;
        let ch = self.channel()?;
        let n = st.num_clusters.load(Ordering::Acquire);
        // Decoupling takes one step up the chain (as SPDK): the clusters
        // the parent has are copied in, and the parent's parent (or its
        // external snapshot) becomes the blob's. An external snapshot of
        // the blob's own is copied whole.
        let parent = st.parent();
        for i in 0..n {
            if st.map.get(i) != 0 {
                continue;
            }
            let take = if all {
                true
            } else {
                match &parent {
                    Some(p) => i < p.num_clusters.load(Ordering::Acquire) && p.map.get(i) != 0,
                    None => !matches!(st.resolve(i), Src::Zeros),
                }
            };
            if take {
                self.allocate_cluster(&ch, &st, i).await?;
            }
        }
        let (next, next_esnap) = match (&parent, all) {
            (Some(p), false) => {
                let e = p
                    .esnap
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|e| (e.id.clone(), e.dev.clone()));
                (p.parent(), e)
            }
            _ => (None, None),
        };
        let _l = st.lock.lock().await;
        let mut md = st.md().clone();
        set_parent_xattr(&mut md, next.as_ref().map(|g| g.id));
        drop_xattr(&mut md.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT);
        md.invalid_flags &= !FLAG_EXTERNAL_SNAPSHOT;
        if let Some((eid, _)) = &next_esnap {
            put_xattr(&mut md.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT, eid);
            md.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT;
        }
        super::handle::fix_internal_flag(&mut md);
        if all {
            md.invalid_flags &= !FLAG_THIN_PROV;
        }
        // Clusters allocated by writes meanwhile are in `md` already; a
        // shrink meanwhile left fewer.
        self.persist(&st, md, true).await?;
        st.set_parent(next);
        *st.esnap.lock().unwrap_or_else(|e| e.into_inner()) =
            next_esnap.map(|(id, dev)| super::handle::Esnap { id, dev });
        if all {
            st.thin.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Detaches blob `id` from its parent without copying anything
    /// (Longhorn's `detach_parent`): its unallocated clusters read zeros
    /// from then on. A blob that is not thin is left as it is.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] without a parent, or when the parent is an
    /// external snapshot; device errors.
    pub async fn detach_parent(&self, id: u64) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        let bad = |why: &str| Err(BlobError::invalid(format!("blob {id:#x}"), why));
        if st.esnap.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return bad("its parent is an external snapshot");
        }
        if st.parent().is_none() {
            return bad("has no parent to detach from");
        }
        if !st.thin.load(Ordering::Acquire) {
            return Ok(());
        }
        st.gate.freeze().await;
        let _frozen = Frozen(&st.gate);
        let _l = st.lock.lock().await;
        let mut md = st.md().clone();
        set_parent_xattr(&mut md, None);
        self.persist(&st, md, true).await?;
        st.set_parent(None);
        Ok(())
    }

    /// Makes snapshot `parent` the parent of thin blob `id` (its
    /// unallocated clusters read from `parent` from now on: the caller
    /// knows they hold what the blob should show, as after a shallow
    /// copy). `parent` must be read-only and not `id` or a descendant of
    /// it.
    ///
    /// # Errors
    /// [`BlobError::Invalid`] for a blob that is not thin, a parent that is
    /// not a snapshot, the same parent, or a loop; device errors.
    pub async fn set_parent(&self, id: u64, parent: u64) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        let p = self.blob(parent)?;
        let bad = |why: &str| Err(BlobError::invalid(format!("blob {id:#x}"), why));
        if !st.thin.load(Ordering::Acquire) {
            return bad("not thin provisioned");
        }
        if !p.read_only.load(Ordering::Acquire) {
            return bad("the new parent is not a snapshot");
        }
        if st.parent().is_some_and(|q| q.id == parent) {
            return bad("it is the parent already");
        }
        let mut a = Some(p.clone());
        while let Some(b) = a {
            if b.id == id {
                return bad("the new parent descends from it");
            }
            a = b.parent();
        }
        st.gate.freeze().await;
        let _frozen = Frozen(&st.gate);
        let _l = st.lock.lock().await;
        let mut md = st.md().clone();
        set_parent_xattr(&mut md, Some(parent));
        drop_xattr(&mut md.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT);
        md.invalid_flags &= !FLAG_EXTERNAL_SNAPSHOT;
        super::handle::fix_internal_flag(&mut md);
        self.persist(&st, md, true).await?;
        st.set_parent(Some(p));
        *st.esnap.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Creates a thin clone of an external snapshot: bdev `esnap_id` (its
    /// UUID or name, stored as given, as SPDK's lvol stores the bdev's
    /// UUID with its NUL), `num_clusters` big; returns its id. Its
    /// unallocated clusters read from that bdev (zeros past its end).
    ///
    /// # Errors
    /// [`BlobError::Invalid`] when no such bdev is there or its blocks do
    /// not divide the store's I/O unit; [`BlobError::NoSpace`]; device
    /// errors.
    pub async fn create_external_clone(
        &self,
        esnap_id: &[u8],
        num_clusters: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<u64, BlobError> {
        let mut md = BlobMd {
            num_clusters,
            clusters: vec![0; num_clusters as usize],
            invalid_flags: FLAG_THIN_PROV | FLAG_EXTENT_TABLE | FLAG_EXTERNAL_SNAPSHOT,
            ..BlobMd::default()
        };
        for (k, v) in xattrs {
            put_xattr(&mut md.xattrs, k, v);
        }
        put_xattr(&mut md.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT, esnap_id);
        super::handle::fix_internal_flag(&mut md);
        let probe = std::sync::Arc::new(BlobState::new(BlobMd::default()));
        if super::handle::open_esnap(&probe, esnap_id, self.io_unit_size()).is_none() {
            return Err(BlobError::invalid(
                "external snapshot",
                format!(
                    "{}: no such bdev, or its blocks do not divide {}",
                    String::from_utf8_lossy(esnap_id).trim_end_matches('\0'),
                    self.io_unit_size()
                ),
            ));
        }
        let id = self.create_with(md, None).await?;
        let st = self.blob(id)?;
        let dev = super::handle::open_esnap(&st, esnap_id, self.io_unit_size());
        *st.esnap.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::handle::Esnap {
            id: esnap_id.to_vec(),
            dev,
        });
        Ok(id)
    }

    /// Makes bdev `esnap_id` the external parent of thin blob `id` (as
    /// [`Blobstore::set_parent`], for an external snapshot).
    ///
    /// # Errors
    /// [`BlobError::Invalid`] for a blob that is not thin or a bdev that
    /// is not there; device errors.
    pub async fn set_external_parent(&self, id: u64, esnap_id: &[u8]) -> Result<(), BlobError> {
        let st = self.blob(id)?;
        if !st.thin.load(Ordering::Acquire) {
            return Err(BlobError::invalid(
                format!("blob {id:#x}"),
                "not thin provisioned",
            ));
        }
        let dev =
            super::handle::open_esnap(&st, esnap_id, self.io_unit_size()).ok_or_else(|| {
                BlobError::invalid(
                    "external snapshot",
                    format!(
                        "{}: no such bdev, or its blocks do not divide {}",
                        String::from_utf8_lossy(esnap_id).trim_end_matches('\0'),
                        self.io_unit_size()
                    ),
                )
            })?;
        st.gate.freeze().await;
        let _frozen = Frozen(&st.gate);
        let _l = st.lock.lock().await;
        let mut md = st.md().clone();
        set_parent_xattr(&mut md, None);
        put_xattr(&mut md.internal_xattrs, XATTR_EXTERNAL_SNAPSHOT, esnap_id);
        md.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT;
        super::handle::fix_internal_flag(&mut md);
        self.persist(&st, md, true).await?;
        st.set_parent(None);
        *st.esnap.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::handle::Esnap {
            id: esnap_id.to_vec(),
            dev: Some(dev),
        });
        Ok(())
    }

    /// Opens the external snapshots that are missing, where their bdevs
    /// are now there (the volume layer calls it when bdevs appear);
    /// returns how many blobs are still degraded.
    pub fn refresh_external_snapshots(&self) -> usize {
        let blobs: Vec<std::sync::Arc<BlobState>> = self.state().blobs.values().cloned().collect();
        let unit = self.io_unit_size();
        let mut still = 0;
        for b in blobs {
            let id = {
                let e = b.esnap.lock().unwrap_or_else(|e| e.into_inner());
                match e.as_ref() {
                    Some(e) if e.dev.is_none() => e.id.clone(),
                    _ => continue,
                }
            };
            let dev = super::handle::open_esnap(&b, &id, unit);
            if dev.is_none() {
                still += 1;
            }
            if let Some(e) = b.esnap.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                e.dev = dev;
            }
        }
        still
    }
}
