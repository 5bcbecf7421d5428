//! The bdev layer's own methods: listing and statistics, examine; plus the
//! bdev subsystem's configuration for `save_config`. The modules' methods
//! live with the modules (`bdev/src/modules/<name>/rpc.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::{Bdev, IoType};
use serde_json::{Map, Value, json};

use super::{Ctx, Params, RpcResult};
use crate::jsonrpc::RpcError;

/// SPDK's `supported_io_types` keys, in its order; the ones without an
/// [`IoType`] here are always false.
const SPDK_IO_TYPES: [&str; 20] = [
    "read",
    "write",
    "unmap",
    "flush",
    "reset",
    "nvme_admin",
    "nvme_io",
    "nvme_io_md",
    "write_zeroes",
    "zcopy",
    "get_zone_info",
    "zone_management",
    "zone_append",
    "compare",
    "compare_and_write",
    "abort",
    "seek_hole",
    "seek_data",
    "copy",
    "nvme_iov_md",
];

/// One `bdev_get_bdevs` entry.
pub fn bdev_json(b: &Bdev) -> Value {
    let mut io = Map::new();
    for key in SPDK_IO_TYPES {
        let ty = IoType::ALL.iter().find(|t| t.name() == key);
        io.insert(
            key.into(),
            json!(ty.is_some_and(|t| b.io_type_supported(*t))),
        );
    }
    let claimed = b.claimed_by();
    let qos = b.qos_limits();
    let mut v = json!({
        "name": b.name(),
        "aliases": b.aliases(),
        "product_name": b.product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "uuid": b.uuid(),
        "assigned_rate_limits": qos
            .named()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<Map<String, Value>>(),
        "claimed": claimed.is_some(),
        "zoned": false,
        "supported_io_types": io,
        "driver_specific": match b.dump_info_json() {
            Value::Null => json!({}),
            v => v,
        },
    });
    if let Some(t) = b.claim_type() {
        v["claim_type"] = json!(t.name());
    }
    if let Some(t) = &b.props().creation_time {
        v["creation_time"] = json!(t);
    }
    v
}

pub(super) fn bdev_get_bdevs(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.opt_str("name")?;
    let timeout = p.opt_u64("timeout")?.unwrap_or(0);
    p.finish()?;
    let Some(name) = name else {
        return Ok(Value::Array(bdev::list().iter().map(bdev_json).collect()));
    };
    let deadline = Instant::now() + Duration::from_millis(timeout);
    loop {
        if let Some(b) = bdev::get(&name) {
            return Ok(json!([bdev_json(&b)]));
        }
        if Instant::now() >= deadline {
            return Err(RpcError::errno(-libc::ENODEV));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(super) fn bdev_get_iostat(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.opt_str("name")?;
    let names = p.opt_str_list("names")?;
    p.unsupported("per_channel", json!(false))?;
    // Reset after reading, as `bdev_reset_iostat` does.
    let reset = match p.opt_str("reset_mode")? {
        Some(v) => reset_mode("reset_mode", &v)?,
        None => None,
    };
    p.finish()?;
    let list: Vec<Bdev> = match (name, names) {
        (Some(n), _) => vec![bdev::get(&n).ok_or_else(|| RpcError::errno(-libc::ENODEV))?],
        (None, Some(ns)) => ns
            .iter()
            .map(|n| bdev::get(n).ok_or_else(|| RpcError::errno(-libc::ENODEV)))
            .collect::<Result<_, _>>()?,
        (None, None) => bdev::list(),
    };
    let bdevs: Vec<Value> = list
        .iter()
        .map(|b| {
            let s = b.stats();
            let r = s.of(IoType::Read);
            let w = s.of(IoType::Write);
            let u = s.of(IoType::Unmap);
            json!({
                "name": b.name(),
                "bytes_read": r.bytes,
                "num_read_ops": r.ops,
                "bytes_written": w.bytes,
                "num_write_ops": w.ops,
                "bytes_unmapped": u.bytes,
                "num_unmap_ops": u.ops,
                "bytes_copied": 0,
                "num_copy_ops": 0,
                "read_latency_ticks": r.latency_ns,
                "max_read_latency_ticks": r.max_latency_ns,
                "min_read_latency_ticks": r.min_latency_ns,
                "write_latency_ticks": w.latency_ns,
                "max_write_latency_ticks": w.max_latency_ns,
                "min_write_latency_ticks": w.min_latency_ns,
                "unmap_latency_ticks": u.latency_ns,
                "max_unmap_latency_ticks": u.max_latency_ns,
                "min_unmap_latency_ticks": u.min_latency_ns,
                "copy_latency_ticks": 0,
                "max_copy_latency_ticks": 0,
                "min_copy_latency_ticks": 0,
                "io_error": {},
                "queue_depth_polling_period": 0,
                "queue_depth": 0,
                "io_time": 0,
                "weighted_io_time": 0,
            })
        })
        .collect();
    if let Some(mode) = reset {
        reset_stats(ctx, list, mode)?;
    }
    Ok(json!({
        "tick_rate": reactor::TICK_RATE,
        "ticks": ctx.started.elapsed().as_nanos() as u64,
        "bdevs": bdevs,
    }))
}

/// SPDK's reset mode `v` of parameter `key`: all, maxmin, error, none
/// (None: no reset).
fn reset_mode(key: &str, v: &str) -> Result<Option<bdev::StatsReset>, RpcError> {
    Ok(match v {
        "none" => None,
        "all" => Some(bdev::StatsReset::All),
        "maxmin" => Some(bdev::StatsReset::MaxMin),
        "error" => Some(bdev::StatsReset::Errors),
        other => {
            return Err(RpcError::invalid_params(format!(
                "{key} {other:?}: all, maxmin, error or none"
            )));
        }
    })
}

fn reset_stats(ctx: &Arc<Ctx>, list: Vec<Bdev>, mode: bdev::StatsReset) -> Result<(), RpcError> {
    ctx.on_reactor(move || async move {
        for b in list {
            b.reset_stats(mode).await.map_err(super::bdev_err)?;
        }
        Ok::<(), RpcError>(())
    })?
}

/// Resets the I/O statistics of one bdev (`name`) or of all, as SPDK's
/// `bdev_reset_iostat`: every counter (`mode` "all", the default), only the
/// latency extremes ("maxmin"), only the error counts ("error"), or
/// nothing ("none"); -ENODEV for an unknown bdev.
pub(super) fn bdev_reset_iostat(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.opt_str("name")?;
    let mode = match p.opt_str("mode")? {
        Some(v) => reset_mode("mode", &v)?,
        None => Some(bdev::StatsReset::All),
    };
    p.finish()?;
    let list: Vec<Bdev> = match name {
        Some(n) => vec![bdev::get(&n).ok_or_else(|| RpcError::errno(-libc::ENODEV))?],
        None => bdev::list(),
    };
    if let Some(mode) = mode {
        reset_stats(ctx, list, mode)?;
    }
    Ok(json!(true))
}

/// `bdev_set_qos_limit`: rate limits of one bdev (SPDK's units: I/O per
/// second rounded up to a multiple of 1000, MiB per second; 0 removes a
/// limit, a key left out keeps it). -19 for an unknown bdev, -22 when no
/// limit is given.
pub(super) fn bdev_set_qos_limit(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    let update = bdev::QosUpdate {
        rw_ios_per_sec: p.opt_u64("rw_ios_per_sec")?,
        rw_mbytes_per_sec: p.opt_u64("rw_mbytes_per_sec")?,
        r_mbytes_per_sec: p.opt_u64("r_mbytes_per_sec")?,
        w_mbytes_per_sec: p.opt_u64("w_mbytes_per_sec")?,
    };
    p.finish()?;
    let b = bdev::get(&name).ok_or_else(|| RpcError::errno(-libc::ENODEV))?;
    if update.is_empty() {
        return Err(RpcError {
            code: -libc::EINVAL,
            message: "No rate limits specified".into(),
        });
    }
    if let Some(ios) = update.rw_ios_per_sec
        && ios % bdev::MIN_IOS_PER_SEC != 0
    {
        log::warn!(
            "bdev {name}: rate limit {ios} is not a multiple of {}: rounded up",
            bdev::MIN_IOS_PER_SEC
        );
    }
    ctx.on_reactor(move || async move { b.set_qos_limits(update) })?
        .map_err(super::bdev_err)?;
    Ok(json!(true))
}

/// `bdev_enable_histogram`: starts (`enable` true) or stops a bdev's
/// latency histograms, of every I/O type or of `opc` (SPDK's type names).
pub(super) fn bdev_enable_histogram(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    let enable = p
        .opt_bool("enable")?
        .ok_or_else(|| RpcError::invalid_params("missing enable"))?;
    let opc = match p.opt_str("opc")? {
        None => None,
        Some(o) => Some(
            IoType::ALL
                .iter()
                .copied()
                .find(|t| t.name() == o)
                .ok_or_else(|| RpcError::invalid_params("Invalid Io type"))?,
        ),
    };
    p.finish()?;
    let b = bdev::get(&name).ok_or_else(|| RpcError::errno(-libc::ENODEV))?;
    ctx.on_reactor(move || async move { b.enable_histogram(enable, opc).await })?
        .map_err(super::bdev_err)?;
    Ok(json!(true))
}

/// `bdev_get_histogram`: the merged histogram in SPDK's layout (base64,
/// `bucket_shift`, `tsc_rate`); -EFAULT ("Bad address", as SPDK) when
/// histograms are off.
pub(super) fn bdev_get_histogram(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    p.finish()?;
    let b = bdev::get(&name).ok_or_else(|| RpcError::errno(-libc::ENODEV))?;
    let h = ctx
        .on_reactor(move || async move { b.histogram().await })?
        .map_err(super::bdev_err)?;
    let Some(h) = h else {
        return Err(RpcError {
            code: crate::jsonrpc::INTERNAL_ERROR,
            message: "Bad address".into(),
        });
    };
    Ok(json!({
        "histogram": h,
        "bucket_shift": bdev::HISTOGRAM_BUCKET_SHIFT,
        "tsc_rate": bdev::HISTOGRAM_TICK_RATE,
    }))
}

pub(super) fn bdev_wait_for_examine(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    ctx.on_reactor(bdev::wait_for_examine)?;
    Ok(json!(true))
}

/// The bdev subsystem's configuration: what modules write themselves (NVMe
/// controllers) first, then the layer's (each module's configuration,
/// every bdev's creating call after the bdevs it stands on, from the
/// claims graph, then `bdev_wait_for_examine`).
pub(super) fn config() -> Vec<Value> {
    let mut out: Vec<Value> = bdev::modules::rpc_config("bdev");
    out.extend(bdev::config_calls());
    out
}
