//! The blob store's JSON-RPC method: `bdev_blobstore_check` (ours; SPDK
//! has none): the store's check (fsck) on a bdev, read-only — the bdev
//! may be claimed by the store's user — naming every problem.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Method, RpcError, bdev_err, decode};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![Method::new("bdev_blobstore_check", check)]
}

/// `bdev_blobstore_check`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    /// The bdev holding the store.
    pub bdev_name: String,
}

fn check(params: Value) -> Result<Call, RpcError> {
    let p: CheckParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let desc = crate::open(&p.bdev_name, false, |_, _| {}).map_err(bdev_err)?;
        let l = super::load::load(&desc).await.map_err(|e| {
            let code = match e {
                super::load::LoadError::Io { .. } => libc::EIO,
                _ => libc::EINVAL,
            };
            RpcError {
                code: -code,
                message: format!("bdev {}: {e}", p.bdev_name),
            }
        })?;
        let used = l.used_clusters.iter().filter(|u| **u).count();
        Ok(json!({
            "bdev_name": p.bdev_name,
            "bstype": l.sb.bstype_str(),
            "clean": l.sb.clean,
            "recovered": l.recovered,
            "cluster_size": l.sb.cluster_size,
            "io_unit_size": l.sb.io_unit_size,
            "total_clusters": l.sb.total_clusters(),
            "used_clusters": used,
            "blobs": l.metadata.blobs.len(),
            "unreadable_pages": l.unreadable_pages,
            "problems": l.problems,
        }))
    }))
}
