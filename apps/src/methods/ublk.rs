//! ublk methods, as SPDK names and shapes them: `ublk_create_target`,
//! `ublk_destroy_target`, `ublk_start_disk`, `ublk_stop_disk`,
//! `ublk_get_disks`, `ublk_recover_disk`. Failures answer with the
//! negative errno as the code (SPDK's way for these methods) and a message
//! that says what failed.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Ctx, Params, RpcResult};
use crate::jsonrpc::RpcError;
use crate::ublk::{self, UblkError};

fn fail(e: UblkError) -> RpcError {
    RpcError {
        code: -e.errno,
        message: e.message,
    }
}

fn id_param(p: &mut Params, key: &str) -> Result<Option<u32>, RpcError> {
    p.opt_u32(key)
}

pub(super) fn ublk_create_target(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let cpumask = p.opt_str("cpumask")?;
    // SPDK 24.09+: copy through the char device instead of NEED_GET_DATA;
    // this server always uses NEED_GET_DATA, so "disabled" is what it does.
    p.ignore("disable_user_copy");
    p.finish()?;
    ublk::create_target(ctx.handle.cores(), cpumask.as_deref()).map_err(fail)?;
    Ok(json!(true))
}

pub(super) fn ublk_destroy_target(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    ublk::destroy_target().map_err(fail)?;
    Ok(json!(true))
}

pub(super) fn ublk_start_disk(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let bdev_name = p.str("bdev_name")?;
    let id = id_param(&mut p, "ublk_id")?
        .ok_or_else(|| RpcError::from(::bdev::rpc::required("ublk_id")))?;
    let num_queues = p.opt_u32("num_queues")?.unwrap_or(ublk::DEFAULT_QUEUES);
    let queue_depth = p
        .opt_u32("queue_depth")?
        .unwrap_or(ublk::DEFAULT_QUEUE_DEPTH);
    p.finish()?;
    let id =
        ublk::start_disk(&ctx.handle, &bdev_name, id, num_queues, queue_depth).map_err(fail)?;
    Ok(json!(id))
}

pub(super) fn ublk_stop_disk(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let id = id_param(&mut p, "ublk_id")?
        .ok_or_else(|| RpcError::from(::bdev::rpc::required("ublk_id")))?;
    p.finish()?;
    ublk::stop_disk(id).map_err(fail)?;
    Ok(json!(true))
}

pub(super) fn ublk_recover_disk(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let bdev_name = p.str("bdev_name")?;
    let id = id_param(&mut p, "ublk_id")?
        .ok_or_else(|| RpcError::from(::bdev::rpc::required("ublk_id")))?;
    p.finish()?;
    let id = ublk::recover_disk(&ctx.handle, &bdev_name, id).map_err(fail)?;
    Ok(json!(id))
}

pub(super) fn ublk_get_disks(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    // SPDK lists every disk for a missing id or 0.
    let id = id_param(&mut p, "ublk_id")?.filter(|&i| i != 0);
    p.finish()?;
    let list = ublk::list(id);
    if let Some(i) = id
        && list.is_empty()
    {
        return Err(fail(UblkError {
            errno: libc::ENODEV,
            message: format!("No such device: no ublk {i}"),
        }));
    }
    Ok(Value::Array(
        list.into_iter()
            .map(|d| {
                json!({
                    "ublk_device": format!("/dev/ublkb{}", d.id),
                    "id": d.id,
                    "queue_depth": d.queue_depth,
                    "num_queues": d.num_queues,
                    "bdev_name": d.bdev_name,
                })
            })
            .collect(),
    ))
}

/// `ublk_create_target` (when there is a target) and `ublk_start_disk`
/// for every disk.
pub(super) fn config() -> Vec<Value> {
    let Some(mask) = ublk::target_cpumask() else {
        return Vec::new();
    };
    let mut v = vec![match mask {
        Some(m) => json!({ "method": "ublk_create_target", "params": { "cpumask": m } }),
        None => json!({ "method": "ublk_create_target", "params": {} }),
    }];
    v.extend(ublk::list(None).into_iter().map(|d| {
        json!({
            "method": "ublk_start_disk",
            "params": {
                "bdev_name": d.bdev_name,
                "ublk_id": d.id,
                "num_queues": d.num_queues,
                "queue_depth": d.queue_depth,
            }
        })
    }));
    v
}
