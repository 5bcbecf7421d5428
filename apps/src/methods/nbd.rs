//! NBD methods: start, stop and list exports (SPDK's `nbd_*` with
//! `nbd_device` also taking a Unix socket path or `nbd://HOST:PORT`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Ctx, Params, RpcResult};
use crate::jsonrpc::RpcError;
use crate::nbd;

pub(super) fn nbd_start_disk(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let bdev_name = p.str("bdev_name")?;
    let device = p.opt_str("nbd_device")?.ok_or_else(|| {
        RpcError::invalid_params(
            "'nbd_device' is required (/dev/nbdN, a socket path or nbd://HOST:PORT)",
        )
    })?;
    p.finish()?;
    let core = nbd::next_core(ctx.handle.cores());
    let dev = super::block_on(
        ctx.handle
            .spawn_on(core, move || async move { nbd::start(&bdev_name, &device) }),
    )
    .map_err(RpcError::internal)?
    .map_err(RpcError::errno)?;
    Ok(json!(dev))
}

pub(super) fn nbd_stop_disk(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let device = p.str("nbd_device")?;
    p.finish()?;
    nbd::stop(&device).map_err(RpcError::errno)?;
    Ok(json!(true))
}

pub(super) fn nbd_get_disks(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let device = p.opt_str("nbd_device")?;
    p.finish()?;
    let list = nbd::list(device.as_deref());
    if device.is_some() && list.is_empty() {
        return Err(RpcError::errno(-libc::ENODEV));
    }
    Ok(Value::Array(
        list.into_iter()
            .map(|(d, b)| json!({ "nbd_device": d, "bdev_name": b }))
            .collect(),
    ))
}

/// `nbd_start_disk` for every export.
pub(super) fn config() -> Vec<Value> {
    nbd::list(None)
        .into_iter()
        .map(|(d, b)| json!({ "method": "nbd_start_disk", "params": { "bdev_name": b, "nbd_device": d } }))
        .collect()
}
