//! The NVMe module's methods: attach a PCIe controller bound to vfio-pci
//! (a bdev per namespace), detach it, list controllers, reset one, read
//! its health, set the module's options; its part of the bdev subsystem's
//! configuration is the options, then one attach per controller
//! ([`config`]).

use nvme_driver::{ControllerOptions, TimeoutAction};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Recovery;
use crate::BdevError;
use crate::rpc::{Call, Ignored, Method, RpcError, bdev_err, decode, done};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_nvme_attach_controller", attach_controller),
        Method::new("bdev_nvme_detach_controller", detach_controller),
        Method::new("bdev_nvme_get_controllers", get_controllers),
        Method::new("bdev_nvme_reset_controller", reset_controller),
        Method::new("bdev_nvme_set_options", set_options),
        Method::new(
            "bdev_nvme_get_controller_health_info",
            get_controller_health_info,
        ),
        Method::new("bdev_nvme_send_cmd", send_cmd),
        Method::new("bdev_nvme_set_hotplug", set_hotplug),
    ]
}

/// `bdev_nvme_attach_controller` for every attached controller (the bdev
/// subsystem's first entries in `save_config`).
pub fn config() -> Vec<Value> {
    let o = super::options();
    let mut out = vec![json!({
        "method": "bdev_nvme_set_options",
        "params": {
            "action_on_timeout": o.action_on_timeout.name(),
            "timeout_us": o.timeout_us,
            "timeout_admin_us": o.timeout_admin_us,
            "keep_alive_timeout_ms": o.keep_alive_timeout_ms,
            "transport_retry_count": o.transport_retry_count,
            "bdev_retry_count": o.bdev_retry_count,
            "ctrlr_loss_timeout_sec": o.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": o.reconnect_delay_sec,
            "fast_io_fail_timeout_sec": o.fast_io_fail_timeout_sec,
        },
    })];
    let (enable, period_us) = super::hotplug::settings();
    out.push(json!({
        "method": "bdev_nvme_set_hotplug",
        "params": { "period_us": period_us, "enable": enable },
    }));
    out.extend(super::controllers_list().iter().map(|c| {
        let r = c.recovery();
        let mut params = json!({
            "name": c.name(),
            "ctrlr_loss_timeout_sec": r.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": r.reconnect_delay_sec,
            "fast_io_fail_timeout_sec": r.fast_io_fail_timeout_sec,
        });
        let t = c.trid().json();
        for (k, v) in t.as_object().into_iter().flatten() {
            params[k] = v.clone();
        }
        if let super::Trid::Tcp {
            hostnqn,
            hdgst,
            ddgst,
            ..
        } = c.trid()
        {
            params["hostnqn"] = json!(hostnqn);
            params["hdgst"] = json!(hdgst);
            params["ddgst"] = json!(ddgst);
        }
        json!({ "method": "bdev_nvme_attach_controller", "params": params })
    }));
    out
}

/// `bdev_nvme_attach_controller`'s parameters: PCIe or TCP; the keys that
/// only matter for other transports or features not here (protection
/// information checks, multipath options) are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// The controller's name (its bdevs are `<name>n<nsid>`).
    pub name: String,
    /// The transport (`PCIe` or `TCP`, any case).
    pub trtype: String,
    /// The PCI address, or the target's IP address.
    pub traddr: String,
    /// I/O queues to ask for (clamped to 1..=65535).
    pub num_io_queues: Option<u32>,
    /// `ipv4` or `ipv6` (TCP; any case).
    pub adrfam: Option<String>,
    /// The target's port (TCP).
    pub trsvcid: Option<String>,
    /// The subsystem (TCP).
    pub subnqn: Option<String>,
    /// The host NQN to connect as (TCP; the process's default when absent).
    pub hostnqn: Option<String>,
    /// Header digests (TCP).
    pub hdgst: Option<bool>,
    /// Data digests (TCP).
    pub ddgst: Option<bool>,
    /// How long connecting may take (TCP).
    pub fabrics_connect_timeout_us: Option<u64>,
    /// `disable` (the default), `failover` or `multipath`: one path per
    /// controller here, so a second path under the same name is refused.
    pub multipath: Option<String>,
    /// A TLS pre-shared key (not supported: refused).
    pub psk: Option<String>,
    /// A DH-HMAC-CHAP key (not supported: refused).
    pub dhchap_key: Option<String>,
    #[serde(rename = "hostaddr")]
    _hostaddr: Ignored,
    #[serde(rename = "hostsvcid")]
    _hostsvcid: Ignored,
    #[serde(rename = "priority")]
    _priority: Ignored,
    /// Newer SPDK clients send it (false by default); SQ flow control
    /// stays on here (the target's SQHD is followed).
    #[serde(rename = "disable_sq_flow_control")]
    _disable_sq_flow_control: Ignored,
    #[serde(rename = "prchk_reftag")]
    _prchk_reftag: Ignored,
    #[serde(rename = "prchk_guard")]
    _prchk_guard: Ignored,
    /// This controller's reconnect policy (the module's options when
    /// none of the three is given).
    pub ctrlr_loss_timeout_sec: Option<i32>,
    /// Seconds between reconnect attempts.
    pub reconnect_delay_sec: Option<u32>,
    /// Seconds after which I/O to a failed controller fails.
    pub fast_io_fail_timeout_sec: Option<u32>,
    #[serde(rename = "max_bdevs")]
    _max_bdevs: Ignored,
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
    let tcp = p.trtype.eq_ignore_ascii_case("tcp");
    if !tcp && !p.trtype.eq_ignore_ascii_case("pcie") {
        log::error!(
            "bdev_nvme_attach_controller: transport {} is not supported (PCIe, TCP)",
            p.trtype
        );
        return Err(RpcError::errno(-libc::EINVAL));
    }
    let invalid = |what: String| {
        log::error!("bdev_nvme_attach_controller: {what}");
        RpcError {
            code: -32602,
            message: what,
        }
    };
    let mut opts = ControllerOptions::default();
    if let Some(q) = p.num_io_queues {
        opts.io_queues = q.clamp(1, u16::MAX as u32) as u16;
    }
    let recovery = (p.ctrlr_loss_timeout_sec.is_some()
        || p.reconnect_delay_sec.is_some()
        || p.fast_io_fail_timeout_sec.is_some())
    .then(|| {
        let d = super::options().recovery();
        Recovery {
            ctrlr_loss_timeout_sec: p.ctrlr_loss_timeout_sec.unwrap_or(d.ctrlr_loss_timeout_sec),
            reconnect_delay_sec: p.reconnect_delay_sec.unwrap_or(d.reconnect_delay_sec),
            fast_io_fail_timeout_sec: p
                .fast_io_fail_timeout_sec
                .unwrap_or(d.fast_io_fail_timeout_sec),
        }
    });
    if let Some(r) = recovery
        && let Err(why) = r.validate()
    {
        log::error!("bdev_nvme_attach_controller: {why}");
        return Err(RpcError::errno(-libc::EINVAL));
    }
    if let Some(m) = p.multipath.as_deref()
        && !["disable", "failover", "multipath"].contains(&m)
    {
        return Err(invalid(format!(
            "multipath {m:?}: disable, failover or multipath"
        )));
    }
    if !tcp {
        return Ok(Call::reactor(move || async move {
            super::attach_controller(&p.name, &p.traddr, opts, recovery)
                .await
                .map(|names| json!(names))
                .map_err(bdev_err)
        }));
    }
    if p.psk.is_some() || p.dhchap_key.is_some() {
        return Err(invalid(
            "TLS (psk) and DH-HMAC-CHAP (dhchap_key) are not supported by this initiator".into(),
        ));
    }
    if let Some(f) = p.adrfam.as_deref()
        && !f.eq_ignore_ascii_case("ipv4")
        && !f.eq_ignore_ascii_case("ipv6")
    {
        return Err(invalid(format!("adrfam {f:?}: IPv4 or IPv6")));
    }
    let Some(svc) = p.trsvcid.as_deref() else {
        return Err(invalid("trsvcid: the port is required for TCP".into()));
    };
    let trsvcid: u16 = svc
        .parse()
        .ok()
        .filter(|&v| v != 0)
        .ok_or_else(|| invalid(format!("trsvcid {svc:?}: a port number 1..=65535")))?;
    let Some(subnqn) = p.subnqn.clone() else {
        return Err(invalid(
            "subnqn: the subsystem NQN is required for TCP".into(),
        ));
    };
    let t = super::TcpAttach {
        traddr: p.traddr.clone(),
        trsvcid,
        subnqn,
        hostnqn: p.hostnqn.clone(),
        hdgst: p.hdgst.unwrap_or(false),
        ddgst: p.ddgst.unwrap_or(false),
        io_queues: opts.io_queues,
        connect_timeout: p
            .fabrics_connect_timeout_us
            .filter(|&us| us > 0)
            .map(std::time::Duration::from_micros),
    };
    Ok(Call::reactor(move || async move {
        super::attach_tcp_controller(&p.name, t, recovery)
            .await
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

/// `bdev_nvme_set_options`' parameters: SPDK's names and types; what is
/// not given keeps its current value. The keys that only matter for the
/// fabrics transports, multipath or features this module does not have are
/// accepted and ignored (Longhorn and SPDK's scripts send them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOptionsParams {
    /// `none`, `abort` or `reset`.
    pub action_on_timeout: Option<String>,
    /// I/O command timeout in microseconds (0: off).
    pub timeout_us: Option<u64>,
    /// Admin command timeout in microseconds (0: `timeout_us`).
    pub timeout_admin_us: Option<u64>,
    /// Keep Alive timeout (fabrics).
    pub keep_alive_timeout_ms: Option<u32>,
    /// Transport error retries (fabrics).
    pub transport_retry_count: Option<u32>,
    /// Submissions again of an I/O a reset took (-1: without limit).
    pub bdev_retry_count: Option<i32>,
    /// Seconds a failed controller is retried before it is deleted.
    pub ctrlr_loss_timeout_sec: Option<i32>,
    /// Seconds between reconnect attempts.
    pub reconnect_delay_sec: Option<u32>,
    /// Seconds after which I/O to a failed controller fails.
    pub fast_io_fail_timeout_sec: Option<u32>,
    #[serde(rename = "retry_count")]
    _retry_count: Ignored,
    #[serde(rename = "arbitration_burst")]
    _arbitration_burst: Ignored,
    #[serde(rename = "low_priority_weight")]
    _low_priority_weight: Ignored,
    #[serde(rename = "medium_priority_weight")]
    _medium_priority_weight: Ignored,
    #[serde(rename = "high_priority_weight")]
    _high_priority_weight: Ignored,
    #[serde(rename = "nvme_adminq_poll_period_us")]
    _nvme_adminq_poll_period_us: Ignored,
    #[serde(rename = "nvme_ioq_poll_period_us")]
    _nvme_ioq_poll_period_us: Ignored,
    #[serde(rename = "io_queue_requests")]
    _io_queue_requests: Ignored,
    #[serde(rename = "delay_cmd_submit")]
    _delay_cmd_submit: Ignored,
    #[serde(rename = "transport_ack_timeout")]
    _transport_ack_timeout: Ignored,
    #[serde(rename = "disable_auto_failback")]
    _disable_auto_failback: Ignored,
    #[serde(rename = "generate_uuids")]
    _generate_uuids: Ignored,
    #[serde(rename = "transport_tos")]
    _transport_tos: Ignored,
    #[serde(rename = "nvme_error_stat")]
    _nvme_error_stat: Ignored,
    #[serde(rename = "rdma_srq_size")]
    _rdma_srq_size: Ignored,
    #[serde(rename = "io_path_stat")]
    _io_path_stat: Ignored,
    #[serde(rename = "allow_accel_sequence")]
    _allow_accel_sequence: Ignored,
    #[serde(rename = "rdma_max_cq_size")]
    _rdma_max_cq_size: Ignored,
    #[serde(rename = "rdma_cm_event_timeout_ms")]
    _rdma_cm_event_timeout_ms: Ignored,
    #[serde(rename = "dhchap_digests")]
    _dhchap_digests: Ignored,
    #[serde(rename = "dhchap_dhgroups")]
    _dhchap_dhgroups: Ignored,
}

/// Sets the module's options: SPDK's semantics and answers — -1 "RPC not
/// permitted with nvme controllers already attached" once a controller is
/// attached, the -32603 decode error for an unknown `action_on_timeout`,
/// -22 for values that break SPDK's rules (the rule goes to the log).
fn set_options(params: Value) -> Result<Call, RpcError> {
    let p: SetOptionsParams = decode(params)?;
    let mut o = super::options();
    if let Some(a) = &p.action_on_timeout {
        o.action_on_timeout = match a.as_str() {
            "none" => TimeoutAction::None,
            "abort" => TimeoutAction::Abort,
            "reset" => TimeoutAction::Reset,
            _ => {
                log::info!("Invalid parameter value: action_on_timeout");
                return Err(RpcError {
                    code: -32603,
                    message: "spdk_json_decode_object failed".into(),
                });
            }
        };
    }
    macro_rules! take {
        ($($k:ident),*) => { $( if let Some(v) = p.$k { o.$k = v; } )* };
    }
    take!(
        timeout_us,
        timeout_admin_us,
        keep_alive_timeout_ms,
        transport_retry_count,
        bdev_retry_count,
        ctrlr_loss_timeout_sec,
        reconnect_delay_sec,
        fast_io_fail_timeout_sec
    );
    match super::set_options(o) {
        Ok(()) => Ok(Call::Done(json!(true))),
        Err(BdevError::NotPermitted(why)) => Err(RpcError {
            code: -1,
            message: why,
        }),
        Err(e) => {
            log::error!("{e}; Failed to set nvme opts.");
            Err(RpcError::errno(-libc::EINVAL))
        }
    }
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

/// Resets the controller (an orderly reset: see `NvmeCtrlr::reset`);
/// queues are re-created, its bdevs stay. `true`, or -ENODEV for an
/// unknown controller (or controller ID), as SPDK.
fn reset_controller(params: Value) -> Result<Call, RpcError> {
    let p: ResetParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let c = super::controller(&p.name)
            .filter(|c| p.cntlid.is_none_or(|id| id == c.cntlid()))
            .ok_or_else(|| RpcError::errno(-libc::ENODEV))?;
        c.reset().await.map_err(bdev_err)?;
        Ok(json!(true))
    }))
}

/// The controllers (or the one named), as SPDK lists them, each
/// `ctrlrs[]` entry with the controller's Error Information log
/// (`error_log`: the entries in use, newest first; empty when the log
/// cannot be read). An unknown name is SPDK's code 22 "Controller NAME
/// does not exist".
fn get_controllers(params: Value) -> Result<Call, RpcError> {
    let p: GetControllersParams = decode(params)?;
    let list: Vec<_> = super::controllers_list()
        .into_iter()
        .filter(|c| p.name.as_deref().is_none_or(|n| n == c.name()))
        .collect();
    if let Some(n) = &p.name
        && list.is_empty()
    {
        return Err(RpcError {
            code: libc::EINVAL,
            message: format!("Controller {n} does not exist"),
        });
    }
    Ok(Call::reactor(move || async move {
        let mut out = Vec::new();
        for c in list {
            let mut v = c.info_json();
            let Ok(admin) = c.admin() else {
                // NVMe/TCP: the log is not read over its admin queue here.
                v["ctrlrs"][0]["error_log"] = json!([]);
                out.push(v);
                continue;
            };
            let log = match admin.error_log(c.error_log_entries()).await {
                Ok(entries) => entries.iter().map(error_entry_json).collect(),
                Err(e) => {
                    log::info!("bdev_nvme_get_controllers: {}: error log: {e}", c.name());
                    Vec::new()
                }
            };
            v["ctrlrs"][0]["error_log"] = Value::Array(log);
            out.push(v);
        }
        Ok(Value::Array(out))
    }))
}

/// One Error Information log entry as JSON.
fn error_entry_json(e: &nvme_driver::spec::ErrorLogEntry) -> Value {
    let st = e.status >> 1;
    json!({
        "error_count": e.error_count,
        "sqid": e.sqid,
        "cid": e.cid,
        "sct": (st >> 8) & 7,
        "sc": st & 0xff,
        "dnr": (st >> 14) & 1 == 1,
        "param_error_location": e.param_error_location,
        "lba": e.lba,
        "nsid": e.nsid,
    })
}

/// `bdev_nvme_get_controller_health_info`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthParams {
    /// The controller.
    pub name: String,
}

/// The controller's SMART / Health Information log, with SPDK's keys (the
/// per-sensor `temperature_sensor_celsius` entries, which SPDK repeats as
/// one key, are left out: a JSON object here has each key once); -32603 "Device not found" for an unknown controller and
/// "Internal error." when the log cannot be read, as SPDK.
fn get_controller_health_info(params: Value) -> Result<Call, RpcError> {
    // No parameters at all (null, which the server hands over as an empty
    // object) is SPDK's "Missing device name".
    if params.is_null() || params.as_object().is_some_and(|o| o.is_empty()) {
        return Err(RpcError {
            code: -32603,
            message: "Missing device name".into(),
        });
    }
    let p: HealthParams = decode(params).map_err(|_| RpcError {
        code: -32603,
        message: "Invalid parameters".into(),
    })?;
    Ok(Call::reactor(move || async move {
        let Some(c) = super::controller(&p.name) else {
            log::error!("nvme ctrlr name '{}' does not exist", p.name);
            return Err(RpcError {
                code: -32603,
                message: "Device not found".into(),
            });
        };
        let internal = |e: &dyn std::fmt::Display| {
            log::error!("bdev_nvme_get_controller_health_info: {e}");
            RpcError {
                code: -32603,
                message: "Internal error.".into(),
            }
        };
        let admin = c.admin().map_err(|e| internal(&e))?;
        let smart = admin.smart_log().await.map_err(|e| internal(&e))?;
        let (model, serial, firmware) = c.identity();
        Ok(health_json(
            &model,
            &serial,
            &firmware,
            &c.bdf().map(|b| b.to_string()).unwrap_or_default(),
            &smart,
        ))
    }))
}

/// SPDK's health report of a SMART log (celsius = kelvin - 273).
pub fn health_json(
    model: &str,
    serial: &str,
    firmware: &str,
    traddr: &str,
    s: &nvme_driver::spec::SmartLog,
) -> Value {
    use nvme_driver::spec::le128;
    let celsius = |k: u16| k as i64 - 273;
    let mut m = serde_json::Map::new();
    m.insert("model_number".into(), json!(model.trim_end()));
    m.insert("serial_number".into(), json!(serial.trim_end()));
    m.insert("firmware_revision".into(), json!(firmware.trim_end()));
    m.insert("traddr".into(), json!(traddr));
    m.insert("critical_warning".into(), json!(s.critical_warning));
    m.insert(
        "temperature_celsius".into(),
        json!(celsius(s.temperature_kelvin())),
    );
    m.insert(
        "available_spare_percentage".into(),
        json!(s.available_spare),
    );
    m.insert(
        "available_spare_threshold_percentage".into(),
        json!(s.available_spare_threshold),
    );
    m.insert("percentage_used".into(), json!(s.percentage_used));
    for (k, v) in [
        ("data_units_read", &s.data_units_read),
        ("data_units_written", &s.data_units_written),
        ("host_read_commands", &s.host_read_commands),
        ("host_write_commands", &s.host_write_commands),
        ("controller_busy_time", &s.controller_busy_time),
        ("power_cycles", &s.power_cycles),
        ("power_on_hours", &s.power_on_hours),
        ("unsafe_shutdowns", &s.unsafe_shutdowns),
        ("media_errors", &s.media_errors),
        ("num_err_log_entries", &s.num_err_log_entries),
    ] {
        m.insert(k.into(), json!(le128(v)));
    }
    m.insert(
        "warning_temperature_time_minutes".into(),
        json!(s.warning_temperature_time()),
    );
    m.insert(
        "critical_composite_temperature_time_minutes".into(),
        json!(s.critical_temperature_time()),
    );
    Value::Object(m)
}

/// `bdev_nvme_send_cmd`'s parameters (SPDK's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendCmdParams {
    /// The controller.
    pub name: String,
    /// `admin` (I/O commands go through the bdevs here).
    pub cmd_type: String,
    /// `c2h` (controller to host) or `h2c`.
    pub data_direction: String,
    /// The 64-byte command, base64.
    pub cmdbuf: String,
    /// The data to send (h2c), base64.
    pub data: Option<String>,
    /// Bytes to receive (c2h).
    pub data_len: Option<u32>,
    /// Metadata (not supported: must be absent or empty).
    pub metadata: Option<String>,
    /// Metadata length (not supported: must be absent or 0).
    pub metadata_len: Option<u32>,
    /// Timeout in milliseconds (the admin timeout applies).
    #[serde(rename = "timeout_ms")]
    _timeout_ms: Ignored,
}

/// SPDK's base64 for `bdev_nvme_send_cmd`: the URL-safe alphabet, padded
/// on output; input in either alphabet, padded or not.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    let s: String = s
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    B64.decode(s)
}

/// Passes an admin command through to a controller, as SPDK's
/// `bdev_nvme_send_cmd`: the result carries the completion entry
/// (`cpl`) and, for c2h, the data (`data`), in SPDK's URL-safe base64; the
/// command's own data pointers are replaced by the appliance's buffer.
fn send_cmd(params: Value) -> Result<Call, RpcError> {
    use base64::Engine;
    let p: SendCmdParams = decode(params)?;
    let invalid = |why: String| {
        log::error!("bdev_nvme_send_cmd: {why}");
        RpcError::errno(-libc::EINVAL)
    };
    if p.cmd_type != "admin" {
        return Err(invalid(format!(
            "cmd_type {:?}: only admin commands are passed through (I/O goes through the bdevs)",
            p.cmd_type
        )));
    }
    if p.metadata.as_deref().is_some_and(|m| !m.is_empty()) || p.metadata_len.unwrap_or(0) != 0 {
        return Err(invalid("metadata is not supported".into()));
    }
    let cmd = b64_decode(&p.cmdbuf).map_err(|e| invalid(format!("cmdbuf: {e}")))?;
    let cmd: [u8; 64] = cmd
        .try_into()
        .map_err(|c: Vec<u8>| invalid(format!("cmdbuf holds {} bytes, not 64", c.len())))?;
    let sqe = nvme_driver::spec::Sqe::from_bytes(&cmd);
    let (out, in_len) = match p.data_direction.as_str() {
        "h2c" => {
            let d = b64_decode(p.data.as_deref().unwrap_or(""))
                .map_err(|e| invalid(format!("data: {e}")))?;
            (Some(d), 0usize)
        }
        "c2h" => (None, p.data_len.unwrap_or(0) as usize),
        other => return Err(invalid(format!("data_direction {other:?}: c2h or h2c"))),
    };
    if out.as_ref().map_or(0, |d| d.len()).max(in_len) > 1 << 20 {
        return Err(invalid("data beyond 1 MiB".into()));
    }
    Ok(Call::reactor(move || async move {
        let Some(c) = super::controller(&p.name) else {
            return Err(RpcError::errno(-libc::ENODEV));
        };
        let admin = c.admin().map_err(|e| {
            log::error!("bdev_nvme_send_cmd: {e}");
            RpcError::errno(-libc::ENOTSUP)
        })?;
        let r = admin
            .passthru(sqe, out.as_deref(), in_len)
            .await
            .map_err(|e| {
                log::error!("bdev_nvme_send_cmd: {e}");
                RpcError::errno(-libc::EIO)
            })?;
        let mut m = serde_json::Map::new();
        m.insert("cpl".into(), json!(B64.encode(r.cqe_bytes())));
        if in_len > 0 {
            m.insert("data".into(), json!(B64.encode(&r.data)));
        }
        Ok(Value::Object(m))
    }))
}

/// `bdev_nvme_set_hotplug`'s parameters (SPDK's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugParams {
    /// On or off.
    pub enable: bool,
    /// Scan period in microseconds (0 or absent: 100 ms; at most 10 s).
    pub period_us: Option<u64>,
}

/// Turns PCIe hotplug on or off (see [`super::hotplug`]).
fn set_hotplug(params: Value) -> Result<Call, RpcError> {
    let p: HotplugParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        super::hotplug::set(p.enable, p.period_us.unwrap_or(0));
        Ok(json!(true))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_cmd_base64_is_spdk_url_safe_and_lenient_on_input() {
        use base64::Engine;
        let bytes = [0xfbu8, 0xff, 0xbf, 0x01];
        assert_eq!(B64.encode(bytes), "-_-_AQ==", "URL-safe, padded, as SPDK");
        for s in ["-_-_AQ==", "-_-_AQ", "+/+/AQ==", "+/+/AQ"] {
            assert_eq!(b64_decode(s).unwrap(), bytes, "{s}");
        }
        assert!(b64_decode("!!").is_err());
    }
}
