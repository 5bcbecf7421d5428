//! Volume operations: create, delete, snapshot, clone (of a snapshot or
//! of another bdev), rename, resize, read-only, inflate, decouple, set
//! parent, xattrs. Each runs under its store's operation lock and is
//! durable when it returns; one that moves clusters under a volume
//! quiesces its bdev meanwhile.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::lvs::{cstr, from_cstr, name_xattr};
use super::{Lvol, LvolError, Lvs, MODULE, check_name, vol};
use crate::blob::{BlobError, BlobOptions, ClearMethod};

/// Longhorn's xattr holding a volume's creation time (RFC 3339, UTC).
pub const XATTR_CREATION_TIME: &str = "creation_time";

/// The xattr names the volume layer keeps for itself (not settable by
/// users: SPDK's and Longhorn's).
pub const RESERVED: [&str; 4] = [
    "name",
    "uuid",
    XATTR_CREATION_TIME,
    super::jobs::XATTR_CHECKSUM,
];

/// Now, as RFC 3339 in UTC to the second (`2026-11-28T03:22:14Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The xattrs every new volume gets: SPDK's `name` and `uuid`, Longhorn's
/// `creation_time`, then the caller's.
fn volume_xattrs(name: &str, uuid: &str, extra: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut x = vec![
        ("name".to_owned(), name_xattr(name)),
        ("uuid".to_owned(), cstr(uuid)),
        (XATTR_CREATION_TIME.to_owned(), cstr(&now_rfc3339())),
    ];
    x.extend(extra.iter().cloned());
    x
}

fn check_free_name(lvs: &Lvs, name: &str) -> Result<(), LvolError> {
    check_name("lvol", name)?;
    if lvs.lvol_named(name).is_some() {
        return Err(LvolError::Exists(format!(
            "lvol with name {name} already exists in lvstore {}",
            lvs.name()
        )));
    }
    Ok(())
}

/// Runs `f` with the bdevs `names` quiesced (their I/O held and drained):
/// their fast path does not pass the blob's I/O gate, so an operation
/// that moves clusters must not run while their I/O flows.
///
/// # Errors
/// [`LvolError::Busy`] when a bdev cannot be quiesced (another quiesce
/// overlaps, it is going away): `f` does not run.
async fn quiesced<T>(
    names: &[String],
    f: impl std::future::Future<Output = T>,
) -> Result<T, LvolError> {
    let mut held = Vec::new();
    let mut failed = None;
    for n in names {
        if let Some(b) = crate::get(n) {
            match b.quiesce(MODULE).await {
                Ok(()) => held.push(b),
                Err(e) => {
                    failed = Some(LvolError::Busy(format!("quiescing {n}: {e}")));
                    break;
                }
            }
        }
    }
    let r = match failed {
        None => Ok(f.await),
        Some(e) => Err(e),
    };
    for b in held {
        if let Err(e) = b.unquiesce(MODULE).await {
            log::warn!("lvol: unquiescing {}: {e}", b.name());
        }
    }
    r
}

/// EBUSY while an operation (a copy, a checksum, an inflate) holds
/// `lvol`'s blob: what changes its clusters or parent waits for it.
fn not_held(lvs: &Lvs, lvol: &Lvol) -> Result<(), LvolError> {
    if lvs.store.is_held(lvol.blob_id) {
        return Err(LvolError::Busy(format!(
            "lvol {}: an operation (copy, checksum, inflate) holds it",
            lvol.alias()
        )));
    }
    Ok(())
}

/// The most clusters a volume may have (its maps take 8 bytes a cluster
/// in memory: 128 MiB here; 64 TiB of 4 MiB clusters).
pub const MAX_CLUSTERS: u64 = 1 << 24;

fn check_clusters(what: &str, n: u64) -> Result<(), LvolError> {
    if n > MAX_CLUSTERS {
        return Err(LvolError::Invalid(format!(
            "{what}: {n} clusters; at most {MAX_CLUSTERS}"
        )));
    }
    Ok(())
}

/// Makes blob `id` of `lvs` a volume named `name` with `uuid` and
/// registers its bdev; the blob is deleted again when that fails.
async fn adopt(lvs: &Arc<Lvs>, id: u64, name: &str, uuid: &str) -> Result<Arc<Lvol>, LvolError> {
    let lvol = Arc::new(Lvol {
        lvs: Arc::downgrade(lvs),
        blob_id: id,
        uuid: uuid.to_owned(),
        name: Mutex::new(name.to_owned()),
        clear: Mutex::new(ClearMethod::Unmap),
    });
    let blob = lvs.store.open_blob(id)?;
    lvs.add_lvol(lvol.clone());
    if let Err(e) = vol::register(lvs, lvol.clone(), blob) {
        lvs.remove_lvol(id);
        if let Err(d) = lvs.store.delete_blob(id).await {
            log::error!("lvol: blob {id:#x} of {name} stays in the store: {d}");
        }
        return Err(e.into());
    }
    Ok(lvol)
}

/// Bytes to clusters, rounded up (SPDK's `spdk_divide_round_up`).
fn clusters_for(lvs: &Lvs, bytes: u64) -> u64 {
    bytes.div_ceil(u64::from(lvs.store.cluster_size()))
}

/// Creates volume `name` of `size` bytes (rounded up to clusters) in
/// `lvs`; returns its UUID (its bdev's name).
///
/// # Errors
/// [`LvolError::Exists`] for a taken name; [`LvolError::Invalid`] for a
/// bad name or UUID; ENOSPC when a thick volume's clusters are not free;
/// device errors.
pub async fn create(
    lvs: &Arc<Lvs>,
    name: &str,
    size: u64,
    thin: bool,
    uuid: Option<&str>,
) -> Result<String, LvolError> {
    create_with(lvs, name, size, thin, uuid, ClearMethod::Unmap).await
}

/// [`create`] with the clear method its clusters get when it is deleted
/// (SPDK's `clear_method`: kept in memory; the default after a restart).
///
/// # Errors
/// As [`create`].
pub async fn create_with(
    lvs: &Arc<Lvs>,
    name: &str,
    size: u64,
    thin: bool,
    uuid: Option<&str>,
    clear: ClearMethod,
) -> Result<String, LvolError> {
    let _op = lvs.op.lock().await;
    check_free_name(lvs, name)?;
    let uuid = match uuid {
        Some(u) => super::super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    if crate::get(&uuid).is_some() {
        return Err(LvolError::Exists(format!("a bdev named {uuid} exists")));
    }
    let n = clusters_for(lvs, size);
    if n == 0 {
        return Err(LvolError::Invalid(format!(
            "lvol {name}: size 0; at least one cluster is needed"
        )));
    }
    check_clusters(&format!("lvol {name}"), n)?;
    if !thin && n > lvs.store.free_clusters() {
        return Err(LvolError::NoSpace(format!(
            "lvol {name}: {n} clusters; lvstore {} has {} free",
            lvs.name(),
            lvs.store.free_clusters()
        )));
    }
    let id = lvs
        .store
        .create_blob(&BlobOptions {
            num_clusters: n,
            thin,
            xattrs: volume_xattrs(name, &uuid, &[]),
        })
        .await?;
    let lvol = adopt(lvs, id, name, &uuid).await?;
    *lvol.clear.lock().unwrap_or_else(|e| e.into_inner()) = clear;
    log::info!("lvol: {}/{name} ({uuid}) created, {n} clusters", lvs.name());
    Ok(uuid)
}

/// Deletes `lvol`: refused with EBUSY, the volume left whole, while an
/// operation holds its blob or it is a snapshot with two or more clones.
/// A snapshot with one clone is merged into it.
///
/// # Errors
/// [`LvolError::Busy`]; device errors (the volume is registered again).
pub async fn delete(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    let id = lvol.blob_id;
    let busy = |e: BlobError| LvolError::Busy(format!("lvol {}: {e}", lvol.alias()));
    let own = usize::from(crate::get(&lvol.uuid).is_some());
    lvs.store.check_delete(id, own).map_err(busy)?;
    // A snapshot merged into its one clone changes that clone's clusters:
    // not while an operation (a checksum) holds the clone.
    let clones = lvs.store.clones(id);
    if let [c] = clones[..]
        && lvs.store.is_held(c)
    {
        return Err(LvolError::Busy(format!(
            "lvol {}: its clone is held by an operation",
            lvol.alias()
        )));
    }
    if crate::get(&lvol.uuid).is_some() {
        crate::unregister(&lvol.uuid).await?;
    }
    let merged_into: Vec<String> = clones
        .iter()
        .filter_map(|c| lvs.lvol_of_blob(*c))
        .map(|l| l.uuid.clone())
        .collect();
    if let [c] = clones[..]
        && let Ok(b) = lvs.store.open_blob(c)
        && b.is_read_only()
        && super::jobs::drop_checksums(&b)
        && let Err(e) = b.sync_md().await
    {
        log::warn!("lvol: dropping the checksum of blob {c:#x}: {e}");
    }
    // The clusters it frees are cleared as asked, once the deletion is
    // durable and before anyone can have them (a merge frees none).
    let clear = *lvol.clear.lock().unwrap_or_else(|e| e.into_inner());
    let r = quiesced(&merged_into, lvs.store.delete_blob_with(id, clear)).await;
    let r = match r {
        Ok(r) => r.map_err(|e| match e {
            BlobError::Busy { .. } => busy(e),
            e => e.into(),
        }),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        // Whole again: its bdev back.
        match lvs.store.open_blob(id) {
            Ok(b) => {
                if let Err(r) = vol::register(lvs, lvol.clone(), b) {
                    log::error!("lvol: {}: registering again: {r}", lvol.alias());
                }
            }
            Err(o) => log::error!("lvol: {}: reopening: {o}", lvol.alias()),
        }
        return Err(e);
    }
    lvs.remove_lvol(id);
    log::info!("lvol: {} deleted", lvol.alias());
    Ok(())
}

/// Takes snapshot `name` of `lvol` with public `xattrs`; returns the
/// snapshot's UUID. The volume becomes a thin clone of it.
///
/// # Errors
/// A taken or bad name; EINVAL for a snapshot of a snapshot; device
/// errors.
pub async fn snapshot(
    lvs: &Arc<Lvs>,
    lvol: &Arc<Lvol>,
    name: &str,
    xattrs: &[(String, Vec<u8>)],
) -> Result<String, LvolError> {
    let _op = lvs.op.lock().await;
    check_free_name(lvs, name)?;
    not_held(lvs, lvol)?;
    for (k, _) in xattrs {
        if RESERVED.contains(&k.as_str()) {
            return Err(LvolError::Invalid(format!(
                "xattr {k} is the volume's own; it cannot be set"
            )));
        }
    }
    let uuid = crate::new_uuid();
    let x = volume_xattrs(name, &uuid, xattrs);
    let sid = quiesced(
        std::slice::from_ref(&lvol.uuid),
        lvs.store.create_snapshot(lvol.blob_id, &x),
    )
    .await??;
    adopt(lvs, sid, name, &uuid).await?;
    log::info!(
        "lvol: snapshot {}/{name} of {} taken",
        lvs.name(),
        lvol.alias()
    );
    Ok(uuid)
}

/// Makes clone `name` of snapshot `snap`; returns its UUID.
///
/// # Errors
/// EINVAL when `snap` is not a snapshot; a taken name; device errors.
pub async fn clone(lvs: &Arc<Lvs>, snap: &Arc<Lvol>, name: &str) -> Result<String, LvolError> {
    let _op = lvs.op.lock().await;
    check_free_name(lvs, name)?;
    let uuid = crate::new_uuid();
    let id = lvs
        .store
        .create_clone(snap.blob_id, &volume_xattrs(name, &uuid, &[]))
        .await?;
    adopt(lvs, id, name, &uuid).await?;
    Ok(uuid)
}

/// Makes clone `name` in `lvs` of bdev `esnap` (an external snapshot, by
/// name or UUID): as big as it, rounded up to clusters; returns its UUID.
///
/// # Errors
/// ENODEV for a missing bdev; a taken name; EINVAL when its blocks do not
/// divide the store's; device errors.
pub async fn clone_bdev(lvs: &Arc<Lvs>, esnap: &str, name: &str) -> Result<String, LvolError> {
    let _op = lvs.op.lock().await;
    check_free_name(lvs, name)?;
    let b = crate::get(esnap)
        .or_else(|| crate::list().into_iter().find(|b| b.uuid() == esnap))
        .ok_or_else(|| LvolError::NotFound(format!("bdev {esnap} does not exist")))?;
    if b.module() == MODULE && lvs.lvols().iter().any(|l| l.uuid == b.name()) {
        return Err(LvolError::Invalid(format!(
            "bdev {esnap} is a volume of lvstore {}: use bdev_lvol_clone",
            lvs.name()
        )));
    }
    let n = clusters_for(lvs, b.num_blocks() * u64::from(b.block_size()));
    check_clusters(&format!("bdev {esnap}"), n)?;
    let uuid = crate::new_uuid();
    let id = lvs
        .store
        .create_external_clone(&cstr(b.uuid()), n, &volume_xattrs(name, &uuid, &[]))
        .await?;
    adopt(lvs, id, name, &uuid).await?;
    Ok(uuid)
}

/// Renames `lvol` to `new` (its xattr, then its bdev's alias).
///
/// # Errors
/// A taken or bad name; device errors.
pub async fn rename(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>, new: &str) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    if lvol.name() == new {
        return Ok(());
    }
    check_free_name(lvs, new)?;
    let b = lvs.store.open_blob(lvol.blob_id)?;
    let old_alias = lvol.alias();
    b.set_xattr("name", &name_xattr(new))?;
    if let Err(e) = b.sync_md().await {
        let _ = b.set_xattr("name", &name_xattr(&lvol.name()));
        return Err(e.into());
    }
    lvol.set_name(new);
    crate::set_alias(&lvol.uuid, Some(&old_alias), &lvol.alias())?;
    Ok(())
}

/// Resizes `lvol` to `size` bytes (rounded up to clusters).
///
/// # Errors
/// EPERM for a snapshot; ENOSPC when a thick volume cannot grow; device
/// errors.
pub async fn resize(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>, size: u64) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    let b = lvs.store.open_blob(lvol.blob_id)?;
    if b.is_read_only() {
        return Err(LvolError::NotPermitted(format!(
            "lvol {} is read-only",
            lvol.alias()
        )));
    }
    // Size 0 is allowed, as SPDK (the bdev has no blocks until it grows).
    let n = clusters_for(lvs, size);
    check_clusters(&format!("lvol {}", lvol.alias()), n)?;
    let had = b.num_clusters();
    if n == had {
        return Ok(());
    }
    if n < had {
        not_held(lvs, lvol)?;
        quiesced(std::slice::from_ref(&lvol.uuid), b.resize(n)).await??;
    } else {
        b.resize(n).await?;
    }
    match crate::get(&lvol.uuid) {
        Some(bd) => bd.notify_blockcnt_change(b.num_io_units()),
        // A volume of no clusters has no bdev (one found so at load):
        // it has one again.
        None if n > 0 => {
            vol::register(lvs, lvol.clone(), lvs.store.open_blob(lvol.blob_id)?)?;
        }
        None => {}
    }
    Ok(())
}

/// Makes `lvol` read-only.
///
/// # Errors
/// Device errors.
pub async fn set_read_only(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    let b = lvs.store.open_blob(lvol.blob_id)?;
    quiesced(std::slice::from_ref(&lvol.uuid), b.set_read_only()).await??;
    Ok(())
}

/// Inflates `lvol` (every cluster its own; no parent, not thin), or with
/// `all` false decouples it from its parent (the parent's clusters copied;
/// it stays thin). A snapshot's stored checksums are dropped first.
///
/// # Errors
/// EINVAL for decoupling a volume without a parent; ENOSPC; device
/// errors.
pub async fn detach(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>, all: bool) -> Result<(), LvolError> {
    let _busy = {
        // Held from here, under the store's lock: a snapshot, set parent
        // or another detach waits for it (EBUSY) instead of racing it.
        let _op = lvs.op.lock().await;
        not_held(lvs, lvol)?;
        let hold = lvs.store.hold(lvol.blob_id)?;
        // A snapshot's own clusters are about to change: its checksums go.
        let b = lvs.store.open_blob(lvol.blob_id)?;
        if b.is_read_only() && super::jobs::drop_checksums(&b) {
            b.sync_md().await?;
        }
        hold
    };
    // Long: not under the store's lock.
    if all {
        lvs.store.inflate(lvol.blob_id).await?;
    } else {
        lvs.store.decouple_parent(lvol.blob_id).await?;
    }
    Ok(())
}

/// Detaches `lvol` from its parent snapshot without copying (Longhorn's
/// `bdev_lvol_detach_parent`): what it does not own reads zeros after.
///
/// # Errors
/// EINVAL without a parent or with an external one; device errors.
pub async fn detach_parent(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    not_held(lvs, lvol)?;
    quiesced(
        std::slice::from_ref(&lvol.uuid),
        lvs.store.detach_parent(lvol.blob_id),
    )
    .await??;
    Ok(())
}

/// Makes snapshot `parent` the parent of thin `lvol` (SPDK's
/// `bdev_lvol_set_parent`).
///
/// # Errors
/// EEXIST: the parent already; EINVAL: `lvol` not thin, `parent` not a
/// snapshot, larger than the volume, or a loop; device errors.
pub async fn set_parent(
    lvs: &Arc<Lvs>,
    lvol: &Arc<Lvol>,
    parent: &Arc<Lvol>,
) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    let b = lvs.store.open_blob(lvol.blob_id)?;
    let p = lvs.store.open_blob(parent.blob_id)?;
    if b.parent() == Some(parent.blob_id) {
        return Err(LvolError::Exists(format!(
            "snapshot {} is the parent of {} already",
            parent.alias(),
            lvol.alias()
        )));
    }
    if p.num_clusters() > b.num_clusters() {
        return Err(LvolError::Invalid(format!(
            "snapshot {} ({} clusters) is larger than lvol {} ({})",
            parent.alias(),
            p.num_clusters(),
            lvol.alias(),
            b.num_clusters()
        )));
    }
    drop((b, p));
    not_held(lvs, lvol)?;
    quiesced(
        std::slice::from_ref(&lvol.uuid),
        lvs.store.set_parent(lvol.blob_id, parent.blob_id),
    )
    .await??;
    Ok(())
}

/// Makes bdev `esnap` the external parent of thin `lvol` (SPDK's
/// `bdev_lvol_set_parent_bdev`).
///
/// # Errors
/// ENODEV for a missing bdev; EINVAL for a volume that is not thin or the
/// same parent; device errors.
pub async fn set_parent_bdev(
    lvs: &Arc<Lvs>,
    lvol: &Arc<Lvol>,
    esnap: &str,
) -> Result<(), LvolError> {
    let _op = lvs.op.lock().await;
    let e = crate::get(esnap)
        .or_else(|| crate::list().into_iter().find(|b| b.uuid() == esnap))
        .ok_or_else(|| LvolError::NotFound(format!("bdev {esnap} does not exist")))?;
    if e.module() == MODULE && lvs.lvols().iter().any(|l| l.uuid == e.name()) {
        return Err(LvolError::Invalid(format!(
            "bdev {esnap} is a volume of the same lvstore; use bdev_lvol_set_parent"
        )));
    }
    let b = lvs.store.open_blob(lvol.blob_id)?;
    if b.external_parent().as_deref() == Some(e.uuid()) {
        return Err(LvolError::Invalid(format!(
            "bdev {esnap} is the external parent of {} already",
            lvol.alias()
        )));
    }
    drop(b);
    not_held(lvs, lvol)?;
    quiesced(
        std::slice::from_ref(&lvol.uuid),
        lvs.store.set_external_parent(lvol.blob_id, &cstr(e.uuid())),
    )
    .await??;
    Ok(())
}

/// Sets user xattr `name` of `lvol` to `value` (stored with a NUL, as
/// Longhorn's fork does), durably.
///
/// # Errors
/// EINVAL for a reserved or bad name; device errors.
pub async fn set_xattr(
    lvs: &Arc<Lvs>,
    lvol: &Arc<Lvol>,
    name: &str,
    value: &str,
) -> Result<(), LvolError> {
    if RESERVED.contains(&name) {
        return Err(LvolError::Invalid(format!(
            "xattr {name} is the volume's own; it cannot be set"
        )));
    }
    let _op = lvs.op.lock().await;
    // A snapshot's user xattrs can change too (its data cannot).
    let b = lvs.store.open_blob(lvol.blob_id)?;
    b.set_xattr(name, &cstr(value))?;
    b.sync_md().await?;
    Ok(())
}

/// User xattr `name` of `lvol` as text (None when not set).
///
/// # Errors
/// The blob is gone.
pub fn get_xattr(lvs: &Lvs, lvol: &Lvol, name: &str) -> Result<Option<String>, LvolError> {
    let b = lvs.store.open_blob(lvol.blob_id)?;
    Ok(b.xattr(name).map(|v| from_cstr(&v)))
}

/// The clear method a caller named, as the blob store's.
///
/// # Errors
/// [`LvolError::Invalid`] for an unknown name.
pub fn clear_method(s: &str) -> Result<ClearMethod, LvolError> {
    match s {
        "none" => Ok(ClearMethod::None),
        "unmap" => Ok(ClearMethod::Unmap),
        "write_zeroes" => Ok(ClearMethod::WriteZeroes),
        o => Err(LvolError::Invalid(format!(
            "clear_method {o:?}: none, unmap or write_zeroes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
