//! Longhorn's lvol methods (its SPDK fork, as its Go client
//! longhorn/go-spdk-helper calls them): user xattrs, the fragmentation
//! map, detaching a parent, snapshot checksums, range shallow copies and
//! deep copies.

use serde::Deserialize;
use serde_json::{Value, json};

use super::rpc::{ByName, CheckCopyParams, ShallowCopyParams, lvol_err, task};
use super::{jobs, lvol_by_bdev, ops};
use crate::rpc::{Call, Method, RpcError, decode};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_lvol_set_xattr", set_xattr),
        Method::new("bdev_lvol_get_xattr", get_xattr),
        Method::new("bdev_lvol_get_fragmap", get_fragmap),
        Method::new("bdev_lvol_detach_parent", detach_parent),
        Method::new("bdev_lvol_register_snapshot_checksum", |p| {
            register_checksum(p, false)
        }),
        Method::new("bdev_lvol_register_snapshot_range_checksums", |p| {
            register_checksum(p, true)
        }),
        Method::new("bdev_lvol_get_snapshot_checksum", get_checksum),
        Method::new("bdev_lvol_stop_snapshot_checksum", stop_checksum),
        Method::new(
            "bdev_lvol_get_snapshot_range_checksums",
            get_range_checksums,
        ),
        Method::new("bdev_lvol_start_range_shallow_copy", start_range_copy),
        Method::new("bdev_lvol_start_deep_copy", start_deep_copy),
        Method::new("bdev_lvol_check_deep_copy", check_deep_copy),
    ]
}

/// `bdev_lvol_set_xattr`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetXattrParams {
    /// The volume.
    pub name: String,
    /// The xattr's name.
    pub xattr_name: String,
    /// Its value.
    pub xattr_value: String,
}

fn set_xattr(params: Value) -> Result<Call, RpcError> {
    let p: SetXattrParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        ops::set_xattr(&s, &l, &p.xattr_name, &p.xattr_value).await?;
        Ok(json!(true))
    })
}

/// `bdev_lvol_get_xattr`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetXattrParams {
    /// The volume.
    pub name: String,
    /// The xattr's name.
    pub xattr_name: String,
}

fn get_xattr(params: Value) -> Result<Call, RpcError> {
    let p: GetXattrParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let (s, l) = lvol_by_bdev(&p.name).map_err(lvol_err)?;
        match ops::get_xattr(&s, &l, &p.xattr_name).map_err(lvol_err)? {
            Some(v) => Ok(json!(v)),
            // Longhorn's fork answers an internal error with ENOENT's text.
            None => Err(RpcError {
                code: -32603,
                message: crate::rpc::strerror(libc::ENOENT),
            }),
        }
    }))
}

/// `bdev_lvol_get_fragmap`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmapParams {
    /// The volume.
    pub name: String,
    /// First byte (a multiple of the cluster size; default 0).
    pub offset: Option<u64>,
    /// Bytes (a multiple of the cluster size; default: to the end).
    pub size: Option<u64>,
}

fn get_fragmap(params: Value) -> Result<Call, RpcError> {
    let p: FragmapParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        jobs::fragmap(&s, &l, p.offset.unwrap_or(0), p.size.unwrap_or(0))
    })
}

fn detach_parent(params: Value) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        ops::detach_parent(&s, &l).await?;
        Ok(json!(true))
    })
}

/// Longhorn's answer for a checksum that failed: -32603 with the errno's
/// text ("Interrupted system call" when stopped).
fn internal(errno: i32) -> RpcError {
    RpcError {
        code: -32603,
        message: crate::rpc::strerror(errno),
    }
}

fn register_checksum(params: Value, range: bool) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    Ok(Call::reactor(move || async move {
        let (s, l) = lvol_by_bdev(&p.name).map_err(lvol_err)?;
        match jobs::checksum(&s, &l, range).await {
            Ok(()) => Ok(json!(true)),
            Err(jobs::ChecksumError::Stopped) => Err(internal(libc::EINTR)),
            Err(jobs::ChecksumError::Lvol(e)) => {
                log::info!("rpc: lvol: {e}");
                Err(internal(e.errno()))
            }
        }
    }))
}

fn get_checksum(params: Value) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    Ok(Call::reactor(move || async move {
        // Any failure is -19, as Longhorn's fork answers.
        let (s, l) = lvol_by_bdev(&p.name).map_err(lvol_err)?;
        let c = jobs::get_checksum(&s, &l).map_err(|e| {
            log::info!("rpc: lvol: {e}");
            RpcError::errno(libc::ENODEV)
        })?;
        Ok(json!({ "checksum": c }))
    }))
}

fn stop_checksum(params: Value) -> Result<Call, RpcError> {
    let p: ByName = decode(params)?;
    task(move || async move {
        let (_, l) = lvol_by_bdev(&p.name)?;
        jobs::stop_checksum(&l);
        Ok(json!(true))
    })
}

/// `bdev_lvol_get_snapshot_range_checksums`' parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeChecksumsParams {
    /// The snapshot.
    pub name: String,
    /// The first cluster.
    pub cluster_start_index: u64,
    /// How many.
    pub cluster_count: u64,
}

fn get_range_checksums(params: Value) -> Result<Call, RpcError> {
    let p: RangeChecksumsParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.name)?;
        let v = jobs::get_range_checksums(&s, &l, p.cluster_start_index, p.cluster_count)?;
        Ok(Value::Array(
            v.into_iter()
                .map(|(i, c)| json!({ "cluster_index": i, "checksum": c }))
                .collect(),
        ))
    })
}

/// `bdev_lvol_start_range_shallow_copy`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeCopyParams {
    /// The read-only volume copied.
    pub src_lvol_name: String,
    /// The bdev written.
    pub dst_bdev_name: String,
    /// The cluster indexes to copy (or unmap, where the volume does not
    /// own them).
    pub clusters: Vec<u64>,
}

fn start_range_copy(params: Value) -> Result<Call, RpcError> {
    let p: RangeCopyParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.src_lvol_name)?;
        let id =
            jobs::start_copy(&s, &l, &p.dst_bdev_name, jobs::CopyKind::Range(p.clusters)).await?;
        Ok(json!({ "operation_id": id }))
    })
}

fn start_deep_copy(params: Value) -> Result<Call, RpcError> {
    let p: ShallowCopyParams = decode(params)?;
    task(move || async move {
        let (s, l) = lvol_by_bdev(&p.src_lvol_name)?;
        let id = jobs::start_copy(&s, &l, &p.dst_bdev_name, jobs::CopyKind::Deep).await?;
        Ok(json!({ "operation_id": id }))
    })
}

fn check_deep_copy(params: Value) -> Result<Call, RpcError> {
    let p: CheckCopyParams = decode(params)?;
    let v = jobs::copy_status(p.operation_id, true).ok_or_else(|| RpcError::errno(libc::ENODEV))?;
    Ok(Call::Done(v))
}
