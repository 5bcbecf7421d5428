//! NVMe methods: attach a PCIe controller bound to vfio-pci (a bdev per
//! namespace), detach it, list controllers.

use std::sync::Arc;

use bdev::modules::nvme;
use serde_json::{Value, json};

use super::{Ctx, Params, RpcResult, bdev_err};
use crate::jsonrpc::RpcError;

/// Parameters of SPDK's `bdev_nvme_attach_controller` that only matter for
/// fabrics, multipath or reconnects: accepted and ignored for PCIe.
const FABRIC_ONLY: [&str; 22] = [
    "adrfam",
    "trsvcid",
    "priority",
    "subnqn",
    "hostnqn",
    "hostaddr",
    "hostsvcid",
    "prchk_reftag",
    "prchk_guard",
    "hdgst",
    "ddgst",
    "fabrics_connect_timeout_us",
    "multipath",
    "ctrlr_loss_timeout_sec",
    "reconnect_delay_sec",
    "fast_io_fail_timeout_sec",
    "psk",
    "max_bdevs",
    "dhchap_key",
    "dhchap_ctrlr_key",
    "allow_unrecognized_csi",
    "multipath_opts",
];

pub(super) fn bdev_nvme_attach_controller(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    let trtype = p.str("trtype")?;
    let traddr = p.str("traddr")?;
    let io_queues = p.opt_u32("num_io_queues")?;
    for k in FABRIC_ONLY {
        p.ignore(k);
    }
    p.finish()?;
    if !trtype.eq_ignore_ascii_case("pcie") {
        log::info!("bdev_nvme_attach_controller: transport {trtype} is not supported");
        return Err(RpcError::errno(-libc::EINVAL));
    }
    let mut opts = nvme_driver::ControllerOptions::default();
    if let Some(q) = io_queues {
        opts.io_queues = q.clamp(1, u16::MAX as u32) as u16;
    }
    let names = ctx
        .on_reactor(move || async move { nvme::attach_controller(&name, &traddr, opts) })?
        .map_err(bdev_err)?;
    Ok(json!(names))
}

pub(super) fn bdev_nvme_detach_controller(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    for k in [
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "subnqn",
        "hostaddr",
        "hostsvcid",
    ] {
        p.ignore(k);
    }
    p.finish()?;
    ctx.on_reactor(move || async move { nvme::detach_controller(&name).await })?
        .map_err(bdev_err)?;
    Ok(json!(true))
}

pub(super) fn bdev_nvme_get_controllers(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.opt_str("name")?;
    p.finish()?;
    let list: Vec<Value> = nvme::controllers_list()
        .iter()
        .filter(|c| name.as_deref().is_none_or(|n| n == c.name()))
        .map(|c| c.info_json())
        .collect();
    if name.is_some() && list.is_empty() {
        return Err(RpcError::errno(-libc::ENODEV));
    }
    Ok(Value::Array(list))
}

/// `bdev_nvme_attach_controller` for every attached controller.
pub(super) fn config() -> Vec<Value> {
    nvme::controllers_list()
        .iter()
        .map(|c| {
            json!({
                "method": "bdev_nvme_attach_controller",
                "params": { "name": c.name(), "trtype": "PCIe", "traddr": c.bdf().to_string() },
            })
        })
        .collect()
}
