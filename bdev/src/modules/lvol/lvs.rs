//! Lvstores: made on a bdev, found again by examine (tasting), renamed,
//! grown, deleted, unloaded at shutdown, and dropped when their bdev goes
//! away.

use std::sync::{Arc, Mutex};

use super::{
    Lvol, LvolError, Lvs, MODULE, NAME_MAX, add_store, check_name, lock, remove_store, stores, vol,
};
use crate::blob::super_block::SuperBlock;
use crate::blob::{BlobOptions, Blobstore, ClearMethod, PAGE_SIZE, StoreOptions};
use crate::oplock::OpLock;
use crate::{BdevEvent, ClaimType, Desc, IoStatus, IoType};

/// The fewest metadata pages a new lvstore gets.
pub const MIN_MD_PAGES: u64 = 64;

/// A new lvstore's parameters (`bdev_lvol_create_lvstore`).
#[derive(Clone, Debug)]
pub struct LvsOptions {
    /// Bytes per cluster (SPDK's default: 4 MiB).
    pub cluster_size: u32,
    /// What to do with the data region.
    pub clear: ClearMethod,
    /// Metadata pages per 100 clusters (SPDK's default: 100).
    pub md_pages_per_cluster_ratio: u32,
}

impl Default for LvsOptions {
    fn default() -> Self {
        LvsOptions {
            cluster_size: 4 << 20,
            clear: ClearMethod::Unmap,
            md_pages_per_cluster_ratio: 100,
        }
    }
}

/// A string xattr as SPDK stores it: the text and a NUL.
pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A stored string xattr as text (up to its first NUL).
pub(crate) fn from_cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A volume's `name` xattr: NUL-padded to 64 bytes, as SPDK writes it.
pub(crate) fn name_xattr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(NAME_MAX, 0);
    v
}

/// Bases removed while their store was being made or loaded (no store
/// to drop yet): the making or loading drops it when done.
static REMOVED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether `base` was removed while its store was being made or loaded
/// (forgetting it).
fn removed_meanwhile(base: &str) -> bool {
    let mut r = lock(&REMOVED);
    let was = r.iter().any(|b| b == base);
    r.retain(|b| b != base);
    was
}

fn on_base_event(base: &str, ev: BdevEvent) {
    match ev {
        BdevEvent::Remove if !stores().iter().any(|l| l.base == base) => {
            lock(&REMOVED).push(base.to_owned());
        }
        BdevEvent::Remove => {
            let base = base.to_owned();
            let task = move || async move { hot_remove(&base).await };
            if reactor::current_core().is_some() {
                drop(reactor::spawn(task()));
            } else if let Some(h) = crate::handle() {
                let core = h.cores()[0];
                drop(h.spawn_on(core, task));
            }
        }
        BdevEvent::Resize { .. } => {
            log::info!("lvol: base {base} resized; bdev_lvol_grow_lvstore takes the new space");
        }
    }
}

/// Opens `base` for writing and claims it for the module.
fn open_base(base: &str) -> Result<Desc, LvolError> {
    removed_meanwhile(base);
    let b = base.to_owned();
    let mut desc =
        crate::open(base, true, move |_, ev| on_base_event(&b, ev)).map_err(|e| match e {
            crate::BdevError::NotFound(_) => {
                LvolError::NotFound(format!("bdev {base} does not exist"))
            }
            e => LvolError::Bdev(e),
        })?;
    desc.claim_for(MODULE, None, ClaimType::ExclusiveWrite, 0)?;
    Ok(desc)
}

/// Makes lvstore `name` on bdev `base`; returns its UUID.
///
/// # Errors
/// [`LvolError::NotFound`] for a missing bdev; [`LvolError::Exists`] for
/// a taken name; [`LvolError::Invalid`] for a bad name or cluster size;
/// [`LvolError::Bdev`] when the bdev is claimed; device errors.
pub async fn create(base: &str, name: &str, opts: &LvsOptions) -> Result<String, LvolError> {
    check_name("lvstore", name)?;
    if stores().iter().any(|l| l.name() == name) {
        return Err(LvolError::Exists(format!("lvstore {name} exists")));
    }
    if opts.cluster_size < PAGE_SIZE as u32 || !opts.cluster_size.is_multiple_of(PAGE_SIZE as u32) {
        return Err(LvolError::Invalid(format!(
            "cluster_sz {}: a multiple of 4096 is needed",
            opts.cluster_size
        )));
    }
    let desc = open_base(base)?;
    let bdev = desc.bdev().clone();
    let total = bdev.num_blocks() * u64::from(bdev.block_size()) / u64::from(opts.cluster_size);
    // At least 64 pages (256 KiB): every metadata change here writes its
    // new pages beside the old ones before the switch (crash safety), so
    // a store of a few clusters needs a few spare pages; on 1 MiB or
    // larger clusters they fit in the first cluster with the rest.
    let md_pages = (u64::from(opts.md_pages_per_cluster_ratio) * total / 100).max(MIN_MD_PAGES);
    let so = StoreOptions {
        cluster_size: opts.cluster_size,
        md_pages: Some(u32::try_from(md_pages).unwrap_or(u32::MAX)),
        bstype: super::BSTYPE.into(),
        clear: opts.clear,
    };
    let store = Blobstore::init(desc, &so).await?;
    let uuid = crate::new_uuid();
    let made = async {
        let sup = store
            .create_blob(&BlobOptions {
                num_clusters: 0,
                thin: false,
                xattrs: vec![("uuid".into(), cstr(&uuid)), ("name".into(), cstr(name))],
            })
            .await?;
        store.set_super_blob(sup).await?;
        Ok::<u64, LvolError>(sup)
    }
    .await;
    let sup = match made {
        Ok(s) => s,
        Err(e) => {
            let _ = store.unload().await;
            store.close();
            return Err(e);
        }
    };
    // A name taken meanwhile (two creations racing): the later one goes.
    if stores().iter().any(|l| l.name() == name) {
        let _ = store.destroy().await;
        return Err(LvolError::Exists(format!("lvstore {name} exists")));
    }
    add_store(Arc::new(Lvs {
        uuid: uuid.clone(),
        name: Mutex::new(name.to_owned()),
        base: base.to_owned(),
        store,
        super_blob: sup,
        lvols: Mutex::new(Vec::new()),
        op: OpLock::default(),
    }));
    if removed_meanwhile(base) {
        hot_remove(base).await;
        return Err(LvolError::NotFound(format!("bdev {base} went away")));
    }
    log::info!("lvol: lvstore {name} ({uuid}) made on {base}");
    Ok(uuid)
}

/// Reads block 0 of `name`: whether it holds an lvstore's super block.
async fn is_lvstore(desc: &Desc) -> bool {
    let Ok(ch) = desc.get_io_channel() else {
        return false;
    };
    let bs = ch.block_size() as usize;
    if bs == 0 || bs > PAGE_SIZE || !PAGE_SIZE.is_multiple_of(bs) {
        return false;
    }
    let Ok(buf) = ch.alloc_buf(PAGE_SIZE) else {
        return false;
    };
    let n = (PAGE_SIZE / bs) as u64;
    if ch.num_blocks() < n {
        ch.free_buf(buf);
        return false;
    }
    let Ok((st, buf)) = ch.io(IoType::Read, Some(buf), 0, n, false).await else {
        return false;
    };
    let Some(buf) = buf else {
        return false;
    };
    let mut page = vec![0u8; PAGE_SIZE];
    buf.read_at(0, &mut page);
    ch.free_buf(buf);
    st == IoStatus::Success
        && SuperBlock::parse(&page).is_ok_and(|sb| sb.bstype_str() == super::BSTYPE)
}

/// Examine: a new bdev holding an lvstore gets it loaded and its volumes
/// registered; any new bdev may be an external snapshot a volume waited
/// for.
pub(crate) async fn examine(name: String) {
    for s in stores() {
        s.store.refresh_external_snapshots();
    }
    let Some(b) = crate::get(&name) else {
        return;
    };
    if b.claimed_by().is_some() {
        return;
    }
    {
        let Ok(probe) = crate::open(&name, false, |_, _| {}) else {
            return;
        };
        if !is_lvstore(&probe).await {
            return;
        }
    }
    if let Err(e) = load(&name).await {
        log::error!("lvol: the lvstore on {name} did not load: {e}");
    }
}

/// Loads the lvstore on bdev `base` and registers its volumes.
///
/// # Errors
/// The store's load failure; an lvstore of the same name or UUID loaded
/// already (this one is left alone).
pub async fn load(base: &str) -> Result<Arc<Lvs>, LvolError> {
    let desc = open_base(base)?;
    let store = Blobstore::load(desc).await?;
    let named = async {
        let sup = store.super_blob().ok_or_else(|| {
            LvolError::Invalid(format!("the lvstore on {base} has no super blob"))
        })?;
        let b = store.open_blob(sup)?;
        let uuid = b.xattr("uuid").map(|v| from_cstr(&v));
        let name = b.xattr("name").map(|v| from_cstr(&v));
        match (uuid, name) {
            (Some(u), Some(n)) if !n.is_empty() => Ok((sup, u.to_ascii_lowercase(), n)),
            _ => Err(LvolError::Invalid(format!(
                "the lvstore on {base}: its super blob lacks a name or UUID"
            ))),
        }
    }
    .await;
    let (sup, uuid, name) = match named {
        Ok(x) => x,
        Err(e) => {
            let _ = store.unload().await;
            store.close();
            return Err(e);
        }
    };
    if let Some(o) = stores().iter().find(|l| l.uuid == uuid || l.name() == name) {
        let _ = store.unload().await;
        store.close();
        return Err(LvolError::Exists(format!(
            "lvstore {name} ({uuid}) on {base}: lvstore {} ({}) on {} is loaded already",
            o.name(),
            o.uuid,
            o.base
        )));
    }
    let lvs = Arc::new(Lvs {
        uuid: uuid.clone(),
        name: Mutex::new(name.clone()),
        base: base.to_owned(),
        store,
        super_blob: sup,
        lvols: Mutex::new(Vec::new()),
        op: OpLock::default(),
    });
    add_store(lvs.clone());
    for id in lvs.store.blob_ids() {
        if id == sup {
            continue;
        }
        let Ok(blob) = lvs.store.open_blob(id) else {
            continue;
        };
        let lname = blob.xattr("name").map(|v| from_cstr(&v));
        let luuid = blob
            .xattr("uuid")
            .map(|v| from_cstr(&v).to_ascii_lowercase());
        let (Some(lname), Some(luuid)) = (lname, luuid) else {
            log::warn!("lvol: lvstore {name}: blob {id:#x} has no name or UUID; not a volume");
            continue;
        };
        let lvol = Arc::new(Lvol {
            lvs: Arc::downgrade(&lvs),
            blob_id: id,
            uuid: luuid,
            name: Mutex::new(lname),
            clear: Mutex::new(ClearMethod::Unmap),
        });
        lvs.add_lvol(lvol.clone());
        if let Err(e) = vol::register(&lvs, lvol.clone(), blob) {
            log::error!("lvol: {}: its bdev: {e}", lvol.alias());
        }
    }
    if removed_meanwhile(base) {
        hot_remove(base).await;
        return Err(LvolError::NotFound(format!("bdev {base} went away")));
    }
    log::info!(
        "lvol: lvstore {name} ({uuid}) loaded from {base} with {} volumes",
        lvs.lvols().len()
    );
    Ok(lvs)
}

/// Unregisters the bdevs of `lvs`'s volumes (each closes its blob).
async fn unregister_volumes(lvs: &Lvs) {
    for l in lvs.lvols() {
        if crate::get(&l.uuid).is_some()
            && let Err(e) = crate::unregister(&l.uuid).await
        {
            log::warn!("lvol: unregistering {}: {e}", l.alias());
        }
    }
}

/// The base of a store went away: its volumes' bdevs go, the store is
/// unloaded where the device still takes writes, and forgotten.
async fn hot_remove(base: &str) {
    let Some(lvs) = stores().into_iter().find(|l| l.base == base) else {
        return;
    };
    let _op = lvs.op.lock().await;
    remove_store(&lvs.uuid);
    unregister_volumes(&lvs).await;
    if let Err(e) = lvs.store.unload().await {
        log::warn!(
            "lvol: lvstore {} on removed {base}: unload: {e}",
            lvs.name()
        );
    }
    lvs.store.close();
    lock(&lvs.lvols).clear();
    log::info!("lvol: lvstore {} gone with its base {base}", lvs.name());
}

/// Unloads every store (the module's fini: every bdev on them is gone
/// already).
pub(crate) async fn unload_all() {
    for lvs in stores() {
        let _op = lvs.op.lock().await;
        unregister_volumes(&lvs).await;
        if let Err(e) = lvs.store.unload().await {
            log::warn!("lvol: lvstore {}: unload: {e}", lvs.name());
        }
        lvs.store.close();
        remove_store(&lvs.uuid);
        lock(&lvs.lvols).clear();
    }
}

/// Deletes lvstore `lvs` (SPDK's `bdev_lvol_delete_lvstore`): its volumes'
/// bdevs go, the store is destroyed (its super block zeroed) and the base
/// released. Nothing is removed while a volume is busy.
///
/// # Errors
/// [`LvolError::Busy`] when a volume is held by an operation (a copy, a
/// checksum); device errors.
pub async fn delete(lvs: &Arc<Lvs>) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    if let Some(l) = lvs.lvols().iter().find(|l| lvs.store.is_held(l.blob_id)) {
        return Err(LvolError::Busy(format!(
            "lvstore {}: an operation holds volume {}",
            lvs.name(),
            l.name()
        )));
    }
    remove_store(&lvs.uuid);
    unregister_volumes(lvs).await;
    lock(&lvs.lvols).clear();
    if let Err(e) = lvs.store.destroy().await {
        log::error!("lvol: lvstore {}: destroy: {e}", lvs.name());
        lvs.store.close();
        return Err(e.into());
    }
    log::info!("lvol: lvstore {} deleted", lvs.name());
    Ok(())
}

/// Renames lvstore `lvs` to `new` (its super blob, then every volume's
/// alias).
///
/// # Errors
/// [`LvolError::Exists`] for a taken name; a bad name; device errors.
pub async fn rename(lvs: &Arc<Lvs>, new: &str) -> Result<(), LvolError> {
    check_name("lvstore", new)?;
    let _op = lvs.op.lock().await;
    if lvs.name() == new {
        return Ok(());
    }
    if stores().iter().any(|l| l.name() == new) {
        return Err(LvolError::Exists(format!("lvstore {new} exists")));
    }
    let b = lvs.store.open_blob(lvs.super_blob)?;
    let old = lvs.name();
    b.set_xattr("name", &cstr(new))?;
    if let Err(e) = b.sync_md().await {
        let _ = b.set_xattr("name", &cstr(&old));
        return Err(e.into());
    }
    *lock(&lvs.name) = new.to_owned();
    for l in lvs.lvols() {
        let was = format!("{old}/{}", l.name());
        if let Err(e) = crate::set_alias(&l.uuid, Some(&was), &l.alias()) {
            log::warn!("lvol: alias {was} -> {}: {e}", l.alias());
        }
    }
    Ok(())
}

/// Grows lvstore `lvs` to its base's size now (nothing to do when the
/// base did not grow); returns its clusters.
///
/// # Errors
/// The blob store's: the cluster mask has no room for the new size.
pub async fn grow(lvs: &Arc<Lvs>) -> Result<u64, LvolError> {
    let _op = lvs.op.lock().await;
    let s = &lvs.store;
    let room = s.bdev().num_blocks() * u64::from(s.io_unit_size()) / u64::from(s.cluster_size());
    if room <= s.total_clusters() {
        // Nothing new: done, as SPDK's live grow.
        return Ok(s.total_clusters());
    }
    Ok(s.grow().await?)
}

/// `bdev_lvol_get_lvstores`' entry for `lvs`.
pub fn info(lvs: &Lvs) -> serde_json::Value {
    let s = &lvs.store;
    serde_json::json!({
        "uuid": lvs.uuid,
        "name": lvs.name(),
        "base_bdev": lvs.base,
        "total_data_clusters": s.total_data_clusters(),
        "free_clusters": s.free_clusters(),
        "block_size": s.io_unit_size(),
        "cluster_size": s.cluster_size(),
    })
}
