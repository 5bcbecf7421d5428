//! Framework methods: version, method list, reactors and threads,
//! subsystems and their configuration (what `spdk-rpc save_config` and
//! `load_config` call), start-up and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{Ctx, Params, RpcResult, Stop};
use crate::jsonrpc::RpcError;

/// The SPDK release whose RPC interface this appliance follows.
pub const SPDK_COMPAT: (u64, u64) = (24, 9);

pub(super) fn spdk_get_version(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    let (major, minor) = SPDK_COMPAT;
    Ok(json!({
        "version": format!(
            "SPDK v{major}.{minor:02} compatible (rust-storage-stack appliance {})",
            env!("CARGO_PKG_VERSION")
        ),
        "fields": { "major": major, "minor": minor, "patch": 0, "suffix": "" },
    }))
}

pub(super) fn rpc_get_methods(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let current = p.opt_bool("current")?.unwrap_or(false);
    p.opt_bool("include_aliases")?;
    p.finish()?;
    let init = ctx.initialized.load(Ordering::Acquire);
    let mut names: Vec<String> = super::table()
        .iter()
        .filter(|m| !current || if init { m.runtime } else { m.startup })
        .map(|m| m.name.to_owned())
        .collect();
    if !current || init {
        names.extend(ctx.app_method_names());
    }
    Ok(json!(names))
}

pub(super) fn framework_start_init(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    ctx.initialized.store(true, Ordering::Release);
    Ok(json!(true))
}

pub(super) fn framework_wait_init(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    while !ctx.initialized.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(json!(true))
}

pub(super) fn framework_get_subsystems(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    Ok(Value::Array(
        super::SUBSYSTEMS
            .iter()
            .map(|(s, d)| json!({ "subsystem": s, "depends_on": d }))
            .collect(),
    ))
}

pub(super) fn framework_get_config(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    // Batches are never produced, so both forms are the flat list.
    p.opt_bool("with_batches")?;
    p.finish()?;
    Ok(Value::Array(super::subsystem_config(&name)?))
}

pub(super) fn spdk_kill_instance(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let sig = p.str("sig_name")?;
    p.finish()?;
    match sig.as_str() {
        "SIGINT" | "SIGTERM" | "SIGQUIT" | "SIGHUP" | "SIGUSR1" => {
            ctx.request_stop(Stop::Rpc(sig));
            Ok(json!(true))
        }
        "SIGKILL" => {
            // SAFETY: kill(2) on our own pid; no memory is involved.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            Ok(json!(true))
        }
        _ => Err(RpcError::errno(-libc::EINVAL)),
    }
}

pub(super) fn framework_get_reactors(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    let reactors: Vec<Value> = ctx
        .handle
        .framework_get_reactors()
        .into_iter()
        .map(|r| {
            json!({
                "lcore": r.lcore,
                "busy": r.busy,
                "idle": r.idle,
                "irq": r.irq,
                "sys": r.sys,
                "in_interrupt": false,
                "core_freq": 0,
                "lw_threads": r.threads.iter().map(|t| json!({
                    "name": t.name,
                    "id": t.id,
                    "cpumask": format!("{:x}", 1u128 << (r.lcore % 128)),
                    "elapsed": t.busy + t.idle,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "tick_rate": reactor::TICK_RATE,
        "pid": std::process::id(),
        "reactors": reactors,
    }))
}

pub(super) fn thread_get_stats(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    p.finish()?;
    let cores = ctx.handle.cores().to_vec();
    let threads: Vec<Value> = ctx
        .handle
        .thread_get_stats()
        .into_iter()
        .zip(cores)
        .map(|(t, core)| {
            json!({
                "name": t.name,
                "id": t.id,
                "cpumask": format!("{:x}", 1u128 << (core % 128)),
                "busy": t.busy,
                "idle": t.idle,
                "active_pollers_count": t.active_pollers_count,
                "timed_pollers_count": t.timed_pollers_count,
                "paused_pollers_count": t.paused_pollers_count,
            })
        })
        .collect();
    Ok(json!({ "tick_rate": reactor::TICK_RATE, "threads": threads }))
}
