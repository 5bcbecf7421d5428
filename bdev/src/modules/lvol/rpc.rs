//! SPDK's lvol methods (v24.09): lvstores (`bdev_lvol_create_lvstore`,
//! `_delete_lvstore`, `_get_lvstores`, `_rename_lvstore`,
//! `_grow_lvstore`), volumes (`bdev_lvol_create`, `_delete`,
//! `_get_lvols`, `_snapshot`, `_clone`, `_clone_bdev`, `_rename`,
//! `_resize`, `_set_read_only`, `_inflate`, `_decouple_parent`,
//! `_set_parent`, `_set_parent_bdev`) and shallow copies
//! (`bdev_lvol_start_shallow_copy`, `_check_shallow_copy`), with SPDK's
//! parameters, results and error codes. Longhorn's additions are in
//! [`super::longhorn_rpc`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{LvolError, jobs, lvol_by_bdev, lvs, lvs_by, ops};
use crate::rpc::{Call, Method, RpcError, decode};

/// The methods (SPDK's and Longhorn's).
pub fn methods() -> Vec<Method> {
    let mut m = vec![
        Method::new("bdev_lvol_create_lvstore", create_lvstore),
        Method::new("bdev_lvol_delete_lvstore", delete_lvstore),
        Method::new("bdev_lvol_get_lvstores", get_lvstores),
        Method::new("bdev_lvol_rename_lvstore", rename_lvstore),
        Method::new("bdev_lvol_grow_lvstore", grow_lvstore),
        Method::new("bdev_lvol_create", create),
        Method::new("bdev_lvol_delete", delete),
        Method::new("bdev_lvol_get_lvols", get_lvols),
        Method::new("bdev_lvol_snapshot", snapshot),
        Method::new("bdev_lvol_clone", clone),
        Method::new("bdev_lvol_clone_bdev", clone_bdev),
        Method::new("bdev_lvol_rename", rename),
        Method::new("bdev_lvol_resize", resize),
        Method::new("bdev_lvol_set_read_only", set_read_only),
        Method::new("bdev_lvol_inflate", |p| detach(p, true)),
        Method::new("bdev_lvol_decouple_parent", |p| detach(p, false)),
        Method::new("bdev_lvol_set_parent", set_parent),
        Method::new("bdev_lvol_set_parent_bdev", set_parent_bdev),
        Method::new("bdev_lvol_start_shallow_copy", start_shallow_copy),
        Method::new("bdev_lvol_check_shallow_copy", check_copy),
    ];
    m.extend(super::longhorn_rpc::methods());
    m
}

/// The answer for a failed volume operation: its errno and that errno's
/// text, as SPDK answers (the reason goes to the log).
pub fn lvol_err(e: LvolError) -> RpcError {
    log::info!("rpc: lvol: {e}");
    RpcError::errno(e.errno())
}

/// Runs `f` on reactor 0, answering its value or its error.
pub(crate) fn task<F, Fut>(f: F) -> Result<Call, RpcError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Value, LvolError>> + 'static,
{
    Ok(Call::reactor(
        move || async move { f().await.map_err(lvol_err) },
    ))
}

/// `bdev_lvol_create_lvstore`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLvstoreParams {
    /// The base bdev.
    pub bdev_name: String,
    /// The store's name.
    pub lvs_name: String,
    /// Bytes per cluster (default 4 MiB).
    pub cluster_sz: Option<u32>,
    /// "none", "unmap" (default) or "write_zeroes".
    pub clear_method: Option<String>,
    /// Metadata pages per 100 clusters (default 100).
    pub num_md_pages_per_cluster_ratio: Option<u32>,
    /// SPDK 25's metadata page size: only 4096 here.
    pub md_page_size: Option<u32>,
}

fn create_lvstore(params: Value) -> Result<Call, RpcError> {
    let p: CreateLvstoreParams = decode(params)?;
    let mut o = lvs::LvsOptions::default();
    if let Some(c) = p.cluster_sz {
        o.cluster_size = c;
    }
    if let Some(c) = &p.clear_method {
        o.clear = ops::clear_method(c).map_err(|_| RpcError {
            code: crate::rpc::INVALID_PARAMS,
            message: "Invalid clear_method parameter".into(),
        })?;
    }
    if let Some(r) = p.num_md_pages_per_cluster_ratio {
        o.md_pages_per_cluster_ratio = r;
    }
    if let Some(s) = p.md_page_size
        && s != crate::blob::PAGE_SIZE as u32
    {
        return Err(RpcError::errno(libc::EINVAL));
    }
    task(move || async move {
        let uuid = lvs::create(&p.bdev_name, &p.lvs_name, &o).await?;
        Ok(json!(uuid))
    })
}

/// Parameters naming a store by exactly one of `uuid` and `lvs_name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvsRef {
    /// The store's UUID.
    pub uuid: Option<String>,
    /// The store's name.
    pub lvs_name: Option<String>,
}

fn delete_lvstore(params: Value) -> Result<Call, RpcError> {
    let p: LvsRef = decode(params)?;
    task(move || async move {
        let l = lvs_by(p.uuid.as_deref(), p.lvs_name.as_deref())?;
        lvs::delete(&l).await?;
        Ok(json!(true))
    })
}

fn grow_lvstore(params: Value) -> Result<Call, RpcError> {
    let p: LvsRef = decode(params)?;
    task(move || async move {
        let l = lvs_by(p.uuid.as_deref(), p.lvs_name.as_deref())?;
        lvs::grow(&l).await?;
        Ok(json!(true))
    })
}

fn get_lvstores(params: Value) -> Result<Call, RpcError> {
    let p: LvsRef = decode(params)?;
    task(move || async move {
        let all = if p.uuid.is_none() && p.lvs_name.is_none() {
            super::stores()
        } else {
            vec![lvs_by(p.uuid.as_deref(), p.lvs_name.as_deref())?]
        };
        Ok(Value::Array(all.iter().map(|l| lvs::info(l)).collect()))
    })
}

/// `bdev_lvol_rename_lvstore`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameParams {
    /// The current name.
    pub old_name: String,
    /// The new name.
    pub new_name: String,
}

fn rename_lvstore(params: Value) -> Result<Call, RpcError> {
    let p: RenameParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        // SPDK's own answer for an unknown store here.
        let l = lvs_by(None, Some(&p.old_name)).map_err(|_| RpcError {
            code: -libc::ENOENT,
            message: format!("Lvol store {} not found", p.old_name),
        })?;
        lvs::rename(&l, &p.new_name).await.map_err(lvol_err)?;
        Ok(json!(true))
    }))
}

/// `bdev_lvol_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The store's UUID (or `lvs_name`).
    pub uuid: Option<String>,
    /// The store's name (or `uuid`).
    pub lvs_name: Option<String>,
    /// The volume's name.
    pub lvol_name: String,
    /// Size in MiB (rounded up to clusters).
    pub size_in_mib: u64,
    /// Thin provisioned.
    pub thin_provision: Option<bool>,
    /// "none", "unmap" (default) or "write_zeroes": how its clusters are
    /// cleared when it is deleted.
    pub clear_method: Option<String>,
    /// The volume's UUID (a new one when absent).
    pub lvol_uuid: Option<String>,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    let clear = match &p.clear_method {
        Some(c) => ops::clear_method(c).map_err(|_| RpcError {
            code: -libc::EINVAL,
            message: "Invalid clean_method option".into(),
        })?,
        None => crate::blob::ClearMethod::Unmap,
    };
    task(move || async move {
        let l = lvs_by(p.uuid.as_deref(), p.lvs_name.as_deref())?;
        let size = p.size_in_mib.checked_mul(1 << 20).ok_or_else(|| {
            LvolError::Invalid(format!("size_in_mib {} is too large", p.size_in_mib))
        })?;
        let uuid = ops::create_with(
            &l,
            &p.lvol_name,
            size,
            p.thin_provision.unwrap_or(false),
            p.lvol_uuid.as_deref(),
            clear,
        )
        .await?;
        Ok(json!(uuid))
    })
}

/// `{"name": ...}`: a volume's bdev (name, UUID or alias).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    /// The volume.
    pub name: String,
}

fn delete(params: Value) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        ops::delete(&s, &l).await?;
        Ok(json!(true))
    })
}

fn set_read_only(params: Value) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        ops::set_read_only(&s, &l).await?;
        Ok(json!(true))
    })
}

fn detach(params: Value, all: bool) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        ops::detach(&s, &l, all).await?;
        Ok(json!(true))
    })
}

/// `bdev_lvol_get_lvols`' parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetLvolsParams {
    /// Only this store (UUID).
    pub lvs_uuid: Option<String>,
    /// Only this store (name).
    pub lvs_name: Option<String>,
}

fn get_lvols(params: Value) -> Result<Call, RpcError> {
    let p: GetLvolsParams = decode(params)?;
    task(move || async move {
        let all = if p.lvs_uuid.is_none() && p.lvs_name.is_none() {
            super::stores()
        } else {
            vec![lvs_by(p.lvs_uuid.as_deref(), p.lvs_name.as_deref())?]
        };
        let mut out = Vec::new();
        for s in &all {
            for l in s.lvols() {
                if let Ok(v) = lvol_json(s, &l) {
                    out.push(v);
                }
            }
        }
        Ok(Value::Array(out))
    })
}

/// `bdev_lvol_get_lvols`' entry for a volume: SPDK's fields, then
/// Longhorn's (`num_allocated_clusters`, `xattrs`, `creation_time`...).
pub fn lvol_json(s: &super::Lvs, l: &super::Lvol) -> Result<Value, LvolError> {
    let b = s.store.open_blob(l.blob_id)?;
    let mut xattrs = BTreeMap::new();
    for n in b.xattr_names() {
        if n == "name" || n == "uuid" {
            continue;
        }
        if let Some(v) = b.xattr(&n) {
            xattrs.insert(n, super::lvs::from_cstr(&v));
        }
    }
    Ok(json!({
        "alias": l.alias(),
        "uuid": l.uuid,
        "name": l.name(),
        "is_thin_provisioned": b.is_thin(),
        "is_snapshot": b.is_read_only(),
        "is_clone": b.parent().is_some(),
        "is_esnap_clone": b.external_parent().is_some(),
        "is_degraded": b.is_degraded(),
        "lvs": { "name": s.name(), "uuid": s.uuid },
        "num_allocated_clusters": b.allocated_clusters(),
        "creation_time": xattrs.get(ops::XATTR_CREATION_TIME).cloned().unwrap_or_default(),
        "xattrs": xattrs,
    }))
}

/// `bdev_lvol_snapshot`'s parameters (with Longhorn's `xattrs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    /// The volume.
    pub lvol_name: String,
    /// The snapshot's name.
    pub snapshot_name: String,
    /// Longhorn: user xattrs the snapshot carries, `{"name": "value"}`.
    pub xattrs: Option<BTreeMap<String, String>>,
}

fn snapshot(params: Value) -> Result<Call, RpcError> {
    let p: SnapshotParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.lvol_name)?;
        let x: Vec<(String, Vec<u8>)> = p
            .xattrs
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, super::lvs::cstr(&v)))
            .collect();
        let uuid = ops::snapshot(&s, &l, &p.snapshot_name, &x).await?;
        Ok(json!(uuid))
    })
}

/// `bdev_lvol_clone`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneParams {
    /// The snapshot.
    pub snapshot_name: String,
    /// The clone's name.
    pub clone_name: String,
}

fn clone(params: Value) -> Result<Call, RpcError> {
    let p: CloneParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.snapshot_name)?;
        let uuid = ops::clone(&s, &l, &p.clone_name).await?;
        Ok(json!(uuid))
    })
}

/// `bdev_lvol_clone_bdev`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneBdevParams {
    /// The external snapshot (name or UUID).
    pub bdev: String,
    /// The store the clone goes into.
    pub lvs_name: String,
    /// The clone's name.
    pub clone_name: String,
}

fn clone_bdev(params: Value) -> Result<Call, RpcError> {
    let p: CloneBdevParams = decode(params)?;
    task(move || async move {
        let s = lvs_by(None, Some(&p.lvs_name))?;
        let uuid = ops::clone_bdev(&s, &p.bdev, &p.clone_name).await?;
        Ok(json!(uuid))
    })
}

fn rename(params: Value) -> Result<Call, RpcError> {
    let p: RenameParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.old_name)?;
        ops::rename(&s, &l, &p.new_name).await?;
        Ok(json!(true))
    })
}

/// `bdev_lvol_resize`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    /// The volume.
    pub name: String,
    /// The new size in MiB (rounded up to clusters).
    pub size_in_mib: u64,
}

fn resize(params: Value) -> Result<Call, RpcError> {
    let p: ResizeParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        let size = p.size_in_mib.checked_mul(1 << 20).ok_or_else(|| {
            LvolError::Invalid(format!("size_in_mib {} is too large", p.size_in_mib))
        })?;
        ops::resize(&s, &l, size).await?;
        Ok(json!(true))
    })
}

/// `bdev_lvol_set_parent` and `_set_parent_bdev`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParentParams {
    /// The volume.
    pub lvol_name: String,
    /// The new parent (a snapshot, or a bdev).
    pub parent_name: String,
}

fn set_parent(params: Value) -> Result<Call, RpcError> {
    let p: SetParentParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.lvol_name)?;
        let (ps, pl) = lvol_by_bdev(&p.parent_name)?;
        if ps.uuid != s.uuid {
            return Err(LvolError::Invalid(format!(
                "{} and {} are in different lvstores",
                p.lvol_name, p.parent_name
            )));
        }
        ops::set_parent(&s, &l, &pl).await?;
        Ok(json!(true))
    })
}

fn set_parent_bdev(params: Value) -> Result<Call, RpcError> {
    let p: SetParentParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.lvol_name)?;
        ops::set_parent_bdev(&s, &l, &p.parent_name).await?;
        Ok(json!(true))
    })
}

/// `bdev_lvol_start_shallow_copy`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShallowCopyParams {
    /// The read-only volume copied.
    pub src_lvol_name: String,
    /// The bdev its clusters are written to.
    pub dst_bdev_name: String,
}

fn start_shallow_copy(params: Value) -> Result<Call, RpcError> {
    let p: ShallowCopyParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.src_lvol_name)?;
        let id = jobs::start_copy(&s, &l, &p.dst_bdev_name, jobs::CopyKind::Shallow).await?;
        Ok(json!({ "operation_id": id }))
    })
}

/// `bdev_lvol_check_shallow_copy`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCopyParams {
    /// What `bdev_lvol_start_shallow_copy` answered.
    pub operation_id: u32,
}

fn check_copy(params: Value) -> Result<Call, RpcError> {
    let p: CheckCopyParams = decode(params)?;
    // An unknown (or finished and read) operation: -19, as SPDK.
    let v =
        jobs::copy_status(p.operation_id, false).ok_or_else(|| RpcError::errno(libc::ENODEV))?;
    Ok(Call::Done(v))
}
