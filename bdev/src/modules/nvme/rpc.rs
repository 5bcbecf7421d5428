//! The NVMe module's methods: attach a PCIe controller bound to vfio-pci
//! (a bdev per namespace), detach it, list controllers; its part of the
//! bdev subsystem's configuration is one attach per controller
//! ([`config`]).

use nvme_driver::ControllerOptions;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Ignored, Method, RpcError, bdev_err, decode, done};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_nvme_attach_controller", attach_controller),
        Method::new("bdev_nvme_detach_controller", detach_controller),
        Method::new("bdev_nvme_get_controllers", get_controllers),
        Method::new("bdev_nvme_reset_controller", reset_controller),
        Method::new("bdev_nvme_set_options", set_options),
    ]
}

/// `bdev_nvme_attach_controller` for every attached controller (the bdev
/// subsystem's first entries in `save_config`).
pub fn config() -> Vec<Value> {
    super::controllers_list()
        .iter()
        .map(|c| {
            json!({
                "method": "bdev_nvme_attach_controller",
                "params": { "name": c.name(), "trtype": "PCIe", "traddr": c.bdf().to_string() },
            })
        })
        .collect()
}

/// `bdev_nvme_attach_controller`'s parameters: PCIe only; the keys that
/// only matter for fabrics, multipath or reconnects are accepted and
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// The controller's name (its bdevs are `<name>n<nsid>`).
    pub name: String,
    /// The transport (`PCIe`, any case).
    pub trtype: String,
    /// The PCI address.
    pub traddr: String,
    /// I/O queues to ask for (clamped to 1..=65535).
    pub num_io_queues: Option<u32>,
    #[serde(rename = "adrfam")]
    _adrfam: Ignored,
    #[serde(rename = "trsvcid")]
    _trsvcid: Ignored,
    #[serde(rename = "priority")]
    _priority: Ignored,
    #[serde(rename = "subnqn")]
    _subnqn: Ignored,
    #[serde(rename = "hostnqn")]
    _hostnqn: Ignored,
    #[serde(rename = "hostaddr")]
    _hostaddr: Ignored,
    #[serde(rename = "hostsvcid")]
    _hostsvcid: Ignored,
    #[serde(rename = "prchk_reftag")]
    _prchk_reftag: Ignored,
    #[serde(rename = "prchk_guard")]
    _prchk_guard: Ignored,
    #[serde(rename = "hdgst")]
    _hdgst: Ignored,
    #[serde(rename = "ddgst")]
    _ddgst: Ignored,
    #[serde(rename = "fabrics_connect_timeout_us")]
    _fabrics_connect_timeout_us: Ignored,
    #[serde(rename = "multipath")]
    _multipath: Ignored,
    #[serde(rename = "ctrlr_loss_timeout_sec")]
    _ctrlr_loss_timeout_sec: Ignored,
    #[serde(rename = "reconnect_delay_sec")]
    _reconnect_delay_sec: Ignored,
    #[serde(rename = "fast_io_fail_timeout_sec")]
    _fast_io_fail_timeout_sec: Ignored,
    #[serde(rename = "psk")]
    _psk: Ignored,
    #[serde(rename = "max_bdevs")]
    _max_bdevs: Ignored,
    #[serde(rename = "dhchap_key")]
    _dhchap_key: Ignored,
    #[serde(rename = "dhchap_ctrlr_key")]
    _dhchap_ctrlr_key: Ignored,
    #[serde(rename = "allow_unrecognized_csi")]
    _allow_unrecognized_csi: Ignored,
    #[serde(rename = "multipath_opts")]
    _multipath_opts: Ignored,
}

/// `bdev_nvme_detach_controller`'s parameters (the path keys SPDK takes to
/// detach one path of several are ignored: a PCIe controller has one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachParams {
    /// The controller.
    pub name: String,
    #[serde(rename = "trtype")]
    _trtype: Ignored,
    #[serde(rename = "traddr")]
    _traddr: Ignored,
    #[serde(rename = "adrfam")]
    _adrfam: Ignored,
    #[serde(rename = "trsvcid")]
    _trsvcid: Ignored,
    #[serde(rename = "subnqn")]
    _subnqn: Ignored,
    #[serde(rename = "hostaddr")]
    _hostaddr: Ignored,
    #[serde(rename = "hostsvcid")]
    _hostsvcid: Ignored,
}

/// `bdev_nvme_get_controllers`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetControllersParams {
    /// Only this controller (every one when absent).
    pub name: Option<String>,
}

fn attach_controller(params: Value) -> Result<Call, RpcError> {
    let p: AttachParams = decode(params)?;
    if !p.trtype.eq_ignore_ascii_case("pcie") {
        log::info!(
            "bdev_nvme_attach_controller: transport {} is not supported",
            p.trtype
        );
        return Err(RpcError::errno(-libc::EINVAL));
    }
    let mut opts = ControllerOptions::default();
    if let Some(q) = p.num_io_queues {
        opts.io_queues = q.clamp(1, u16::MAX as u32) as u16;
    }
    Ok(Call::reactor(move || async move {
        super::attach_controller(&p.name, &p.traddr, opts)
            .map(|names| json!(names))
            .map_err(bdev_err)
    }))
}

fn detach_controller(params: Value) -> Result<Call, RpcError> {
    let p: DetachParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        done(super::detach_controller(&p.name).await)
    }))
}

/// `bdev_nvme_set_options`' parameters: the ones this module implements
/// (any other key is refused, not accepted and ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOptionsParams {
    /// How many times an I/O aborted by a controller reset is submitted
    /// again before it fails (-1: without limit; SPDK's default 3).
    pub bdev_retry_count: Option<i32>,
}

fn set_options(params: Value) -> Result<Call, RpcError> {
    let p: SetOptionsParams = decode(params)?;
    if let Some(n) = p.bdev_retry_count {
        super::set_bdev_retry_count(n).map_err(bdev_err)?;
    }
    Ok(Call::Done(json!(true)))
}

/// `bdev_nvme_reset_controller`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetParams {
    /// The controller.
    pub name: String,
    /// One controller of several paths (a PCIe controller has one: the
    /// value, if given, must be its controller ID).
    pub cntlid: Option<u16>,
}

/// Resets the controller: commands outstanding complete as aborted by the
/// reset, queues are re-created, its bdevs stay. `true`, or -ENODEV for an
/// unknown controller (or controller ID), as SPDK.
fn reset_controller(params: Value) -> Result<Call, RpcError> {
    let p: ResetParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let c = super::controllers_list()
            .into_iter()
            .find(|c| c.name() == p.name)
            .filter(|c| p.cntlid.is_none_or(|id| id == c.cntlid()))
            .ok_or_else(|| RpcError::errno(-libc::ENODEV))?;
        c.reset().map_err(bdev_err)?;
        Ok(json!(true))
    }))
}

fn get_controllers(params: Value) -> Result<Call, RpcError> {
    let p: GetControllersParams = decode(params)?;
    let list: Vec<Value> = super::controllers_list()
        .iter()
        .filter(|c| p.name.as_deref().is_none_or(|n| n == c.name()))
        .map(|c| c.info_json())
        .collect();
    if p.name.is_some() && list.is_empty() {
        return Err(RpcError::errno(-libc::ENODEV));
    }
    Ok(Call::Done(Value::Array(list)))
}
