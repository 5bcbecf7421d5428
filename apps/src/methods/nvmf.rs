//! NVMe-oF target methods, as SPDK v24.09's `nvmf_*`: names, parameters,
//! result shapes and error codes and texts (SPDK's `invalid.sh` greps
//! some of them; where SPDK says only "Invalid parameters", the reason
//! follows it here).

use std::sync::Arc;

use ::bdev::rpc::{False, Unsupported};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, Params, RpcResult};
use crate::jsonrpc::RpcError;
use crate::nvmf::subsystem::{
    AnaState, DEFAULT_MAX_NAMESPACES, DEFAULT_MODEL, DEFAULT_SERIAL, Listener, MAX_CNTLID,
    Namespace, Subsystem, valid_text,
};
use crate::nvmf::transport::{CreateParams, TcpOpts};
use crate::nvmf::{self, Adrfam, ListenAddr, nqn};

/// SPDK's name for its one target.
const TGT_NAME: &str = "nvmf_tgt";

fn err(code: i32, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
    }
}

/// -32602 "Invalid parameters", with the reason after it.
fn invalid(why: impl std::fmt::Display) -> RpcError {
    err(-32602, format!("Invalid parameters: {why}"))
}

fn decode<T: serde::de::DeserializeOwned>(p: Params) -> Result<T, RpcError> {
    ::bdev::rpc::decode(Value::Object(p.map)).map_err(RpcError::from)
}

fn check_tgt(tgt: &Option<String>, dot: bool) -> Result<(), RpcError> {
    match tgt {
        Some(t) if t != TGT_NAME => Err(err(
            -32603,
            if dot {
                "Unable to find a target."
            } else {
                "Unable to find a target"
            },
        )),
        _ => Ok(()),
    }
}

/// SPDK's client's shortcut for the discovery subsystem.
fn is_discovery(nqn: &str) -> bool {
    nqn == nqn::DISCOVERY_NQN || nqn == "discovery"
}

fn no_subsystem(nqn: &str) -> RpcError {
    invalid(format!("no subsystem with NQN {nqn}"))
}

/// A `listen_address` object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenParams {
    trtype: String,
    adrfam: Option<String>,
    traddr: String,
    trsvcid: Option<String>,
}

impl ListenParams {
    fn addr(&self) -> Result<ListenAddr, RpcError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(invalid(format!(
                "trtype '{}' (only TCP is served)",
                self.trtype
            )));
        }
        let adrfam = match &self.adrfam {
            None => Adrfam::Ipv4,
            Some(a) => {
                Adrfam::parse(a).ok_or_else(|| invalid(format!("adrfam '{a}' (IPv4 or IPv6)")))?
            }
        };
        let trsvcid = self.trsvcid.clone().unwrap_or_else(|| "4420".into());
        if self.traddr.len() > 255 || trsvcid.len() > 31 {
            return Err(invalid("traddr or trsvcid too long"));
        }
        let a = ListenAddr {
            adrfam,
            traddr: self.traddr.clone(),
            trsvcid,
        };
        if a.socket_addr().is_none() {
            return Err(invalid(format!(
                "'{}' port '{}' is not an {} address and port",
                a.traddr,
                a.trsvcid,
                adrfam.as_str()
            )));
        }
        Ok(a)
    }
}

pub(super) fn nvmf_create_transport(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: CreateParams = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return Err(invalid(format!("Invalid transport type '{}'", p.trtype)));
    }
    let mut t = nvmf::target();
    if t.transport.is_some() {
        return Err(err(
            -32603,
            format!("Transport type '{}' already exists", p.trtype),
        ));
    }
    let opts = TcpOpts::from_params(&p).map_err(|why| {
        err(
            -32603,
            format!("Transport type '{}' create failed: {why}", p.trtype),
        )
    })?;
    log::info!("nvmf: TCP transport created: {opts:?}");
    t.transport = Some(opts);
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    trtype: Option<String>,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_get_transports(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: GetTransports = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let t = nvmf::target();
    match (&p.trtype, &t.transport) {
        (Some(tt), Some(o)) if tt.eq_ignore_ascii_case("tcp") => Ok(json!([o.to_json()])),
        (Some(_), _) => Err(RpcError::errno(-libc::ENODEV)),
        (None, Some(o)) => Ok(json!([o.to_json()])),
        (None, None) => Ok(json!([])),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    serial_number: Option<String>,
    model_number: Option<String>,
    tgt_name: Option<String>,
    max_namespaces: Option<u32>,
    allow_any_host: Option<bool>,
    ana_reporting: Option<bool>,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    max_discard_size_kib: Option<u64>,
    max_write_zeroes_size_kib: Option<u64>,
    // Newer SPDK's (its PyPI client sends them as false).
    #[serde(rename = "passthrough")]
    _passthrough: Unsupported<False>,
    #[serde(rename = "enable_nssr")]
    _enable_nssr: Unsupported<False>,
}

pub(super) fn nvmf_create_subsystem(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: CreateSubsystem = decode(p)?;
    if let Some(t) = &p.tgt_name
        && t != TGT_NAME
    {
        return Err(err(-32603, format!("Unable to find target {t}")));
    }
    let _ = (p.max_discard_size_kib, p.max_write_zeroes_size_kib);
    let mut t = nvmf::target();
    if let Some(why) = nqn::invalid_reason(&p.nqn) {
        return Err(err(
            -32603,
            format!("Unable to create subsystem {}: NQN {why}", p.nqn),
        ));
    }
    if p.nqn == nqn::DISCOVERY_NQN || t.subsystems.iter().any(|s| s.nqn == p.nqn) {
        return Err(err(
            -32603,
            format!("Unable to create subsystem {}: it already exists", p.nqn),
        ));
    }
    let serial = p.serial_number.unwrap_or_else(|| DEFAULT_SERIAL.into());
    if !valid_text(&serial, 20) {
        return Err(err(-32602, format!("Invalid SN {serial}")));
    }
    let model = p.model_number.unwrap_or_else(|| DEFAULT_MODEL.into());
    if !valid_text(&model, 40) {
        return Err(err(-32602, format!("Invalid MN {model}")));
    }
    let (min, max) = (
        p.min_cntlid.unwrap_or(1),
        p.max_cntlid.unwrap_or(MAX_CNTLID),
    );
    if !(1..=MAX_CNTLID).contains(&min) || !(1..=MAX_CNTLID).contains(&max) || min > max {
        return Err(err(-32602, format!("Invalid cntlid range [{min}-{max}]")));
    }
    let max_ns = match p.max_namespaces {
        None | Some(0) => DEFAULT_MAX_NAMESPACES,
        Some(n) => n.min(1024),
    };
    t.subsystems.push(Subsystem::new(
        &p.nqn,
        &serial,
        &model,
        p.allow_any_host.unwrap_or(false),
        max_ns,
        p.ana_reporting.unwrap_or(false),
        min,
        max,
    ));
    nvmf::bump();
    log::info!("nvmf: subsystem {} created", p.nqn);
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnOnly {
    nqn: String,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_delete_subsystem(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: NqnOnly = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let removed = {
        let mut t = nvmf::target();
        let Some(i) = t.subsystems.iter().position(|s| s.nqn == p.nqn) else {
            return Err(no_subsystem(&p.nqn));
        };
        let s = t.subsystems.remove(i);
        for c in &s.controllers {
            c.kill();
        }
        let addrs: Vec<ListenAddr> = s.listeners.iter().map(|l| l.addr.clone()).collect();
        for a in &addrs {
            nvmf::release_port(&mut t, a);
        }
        nvmf::bump();
        s
    };
    // The namespaces' descriptors close on reactor 0 (once connections
    // let go of them).
    let ns: Vec<Arc<Namespace>> = removed.namespaces.values().cloned().collect();
    drop(removed);
    ctx.on_reactor(move || async move { drop(ns) })?;
    log::info!("nvmf: subsystem {} deleted", p.nqn);
    Ok(json!(true))
}

pub(super) fn nvmf_get_subsystems(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: Option<String>,
        tgt_name: Option<String>,
    }
    let p: P = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let t = nvmf::target();
    let discovery = json!({
        "nqn": nqn::DISCOVERY_NQN,
        "subtype": "Discovery",
        "listen_addresses": t.discovery_listeners.iter().map(ListenAddr::to_json).collect::<Vec<_>>(),
        "allow_any_host": true,
        "hosts": [],
    });
    match p.nqn {
        Some(n) if is_discovery(&n) => Ok(json!([discovery])),
        Some(n) => match t.subsystems.iter().find(|s| s.nqn == n) {
            Some(s) => Ok(json!([s.to_json()])),
            None => Err(RpcError::errno(-libc::ENODEV)),
        },
        None => {
            let mut v = vec![discovery];
            v.extend(t.subsystems.iter().map(Subsystem::to_json));
            Ok(Value::Array(v))
        }
    }
}

#[derive(Debug, Deserialize)]
struct AddListener {
    nqn: String,
    listen_address: ListenParams,
    tgt_name: Option<String>,
    secure_channel: Option<bool>,
    ana_state: Option<String>,
}

pub(super) fn nvmf_subsystem_add_listener(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: AddListener = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let addr = p.listen_address.addr()?;
    let state = match &p.ana_state {
        None => AnaState::Optimized,
        Some(s) => AnaState::parse(s).ok_or_else(|| invalid(format!("ana_state '{s}'")))?,
    };
    let mut t = nvmf::target();
    if is_discovery(&p.nqn) {
        if t.transport.is_none() {
            return Err(invalid("the TCP transport is not created"));
        }
        if t.discovery_listeners.contains(&addr) {
            return Err(invalid(format!(
                "{}:{} is already a discovery listener",
                addr.traddr, addr.trsvcid
            )));
        }
        nvmf::acquire_port(&ctx.handle, &mut t, &addr).map_err(|e| {
            invalid(format!(
                "cannot listen on {}:{}: {e}",
                addr.traddr, addr.trsvcid
            ))
        })?;
        t.discovery_listeners.push(addr);
        nvmf::bump();
        return Ok(json!(true));
    }
    let Some(i) = t.subsystems.iter().position(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    if p.secure_channel == Some(true) {
        if t.subsystems[i].allow_any_host {
            return Err(err(
                -32603,
                "Cannot establish secure channel, when 'allow_any_host' is set",
            ));
        }
        return Err(invalid("secure_channel (TLS) is not supported"));
    }
    if t.transport.is_none() {
        return Err(invalid("the TCP transport is not created"));
    }
    if t.subsystems[i].listener(&addr).is_some() {
        return Err(invalid(format!(
            "{} {}:{} is already a listener of {}",
            addr.adrfam.as_str(),
            addr.traddr,
            addr.trsvcid,
            p.nqn
        )));
    }
    nvmf::acquire_port(&ctx.handle, &mut t, &addr).map_err(|e| {
        invalid(format!(
            "cannot listen on {}:{}: {e}",
            addr.traddr, addr.trsvcid
        ))
    })?;
    let s = &mut t.subsystems[i];
    let groups = s.max_namespaces as usize;
    s.listeners.push(Listener {
        addr: addr.clone(),
        ana: vec![state; groups],
    });
    nvmf::bump();
    log::info!(
        "nvmf: {} listening on {}:{}",
        p.nqn,
        addr.traddr,
        addr.trsvcid
    );
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveListener {
    nqn: String,
    listen_address: ListenParams,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_subsystem_remove_listener(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: RemoveListener = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let addr = p.listen_address.addr()?;
    let mut t = nvmf::target();
    if is_discovery(&p.nqn) {
        let Some(i) = t.discovery_listeners.iter().position(|a| *a == addr) else {
            return Err(invalid(format!(
                "{}:{} is not a discovery listener",
                addr.traddr, addr.trsvcid
            )));
        };
        t.discovery_listeners.remove(i);
        nvmf::release_port(&mut t, &addr);
        nvmf::bump();
        return Ok(json!(true));
    }
    let Some(i) = t.subsystems.iter().position(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    let s = &mut t.subsystems[i];
    let Some(li) = s.listeners.iter().position(|l| l.addr == addr) else {
        return Err(invalid(format!(
            "{}:{} is not a listener of {}",
            addr.traddr, addr.trsvcid, p.nqn
        )));
    };
    s.listeners.remove(li);
    // Queues that came in through it are disconnected.
    for c in &s.controllers {
        if c.listen == addr {
            c.kill();
        }
    }
    nvmf::release_port(&mut t, &addr);
    nvmf::bump();
    Ok(json!(true))
}

pub(super) fn nvmf_subsystem_get_listeners(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: NqnOnly = decode(p)?;
    check_tgt(&p.tgt_name, false)?;
    let t = nvmf::target();
    if is_discovery(&p.nqn) {
        return Ok(Value::Array(
            t.discovery_listeners
                .iter()
                .map(|a| json!({ "address": a.to_json() }))
                .collect(),
        ));
    }
    let Some(s) = t.subsystems.iter().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    Ok(Value::Array(
        s.listeners
            .iter()
            .map(|l| {
                let mut v = json!({ "address": l.addr.to_json() });
                if s.ana_reporting {
                    v["ana_states"] = Value::Array(
                        l.ana
                            .iter()
                            .enumerate()
                            .map(|(i, a)| json!({"ana_group": i + 1, "ana_state": a.as_str()}))
                            .collect(),
                    );
                }
                v
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAna {
    nqn: String,
    listen_address: ListenParams,
    ana_state: String,
    tgt_name: Option<String>,
    anagrpid: Option<u32>,
}

pub(super) fn nvmf_subsystem_listener_set_ana_state(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: SetAna = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let mut t = nvmf::target();
    let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
        return Err(err(
            -32602,
            format!("Unable to find subsystem with NQN {}", p.nqn),
        ));
    };
    let addr = p.listen_address.addr()?;
    let state = AnaState::parse(&p.ana_state)
        .ok_or_else(|| invalid(format!("ana_state '{}'", p.ana_state)))?;
    let max = s.max_namespaces;
    let Some(l) = s.listeners.iter_mut().find(|l| l.addr == addr) else {
        return Err(err(
            -32603,
            format!(
                "error setting ANA state: -22 ({}:{} is not a listener)",
                addr.traddr, addr.trsvcid
            ),
        ));
    };
    match p.anagrpid {
        None | Some(0) => l.ana.iter_mut().for_each(|a| *a = state),
        Some(g) if g <= max => l.ana[g as usize - 1] = state,
        Some(g) => {
            return Err(err(
                -32603,
                format!("error setting ANA state: -22 (ANA group {g} over {max})"),
            ));
        }
    }
    for c in &s.controllers {
        if c.listen == addr {
            c.ana_changed();
        }
    }
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NsParams {
    bdev_name: String,
    nsid: Option<u32>,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    anagrpid: Option<u32>,
    ptpl_file: Option<String>,
    no_auto_visible: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_subsystem_add_ns(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: AddNs = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let n = p.namespace;
    if n.ptpl_file.is_some() {
        return Err(invalid(
            "ptpl_file (persistent reservations) is not supported",
        ));
    }
    let nguid = match &n.nguid {
        None => None,
        Some(h) => Some(
            nqn::parse_hex(h, 16).ok_or_else(|| invalid(format!("nguid '{h}' (32 hex digits)")))?,
        ),
    };
    let eui64 = match &n.eui64 {
        None => [0u8; 8],
        Some(h) => {
            let v = nqn::parse_hex(h, 8)
                .ok_or_else(|| invalid(format!("eui64 '{h}' (16 hex digits)")))?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&v);
            a
        }
    };
    let uuid = match &n.uuid {
        None => None,
        Some(u) => Some(nqn::parse_uuid(u).ok_or_else(|| invalid(format!("uuid '{u}'")))?),
    };
    // The nsid and group, checked against the subsystem before the bdev is
    // touched.
    let (nsid, anagrpid) = {
        let t = nvmf::target();
        let Some(s) = t.subsystems.iter().find(|s| s.nqn == p.nqn) else {
            return Err(no_subsystem(&p.nqn));
        };
        let nsid = match n.nsid {
            None | Some(0) => (1..=s.max_namespaces)
                .find(|i| !s.namespaces.contains_key(i))
                .ok_or_else(|| {
                    invalid(format!(
                        "{} has {} namespaces, its maximum",
                        p.nqn, s.max_namespaces
                    ))
                })?,
            Some(i) if i > s.max_namespaces || i == u32::MAX => {
                return Err(invalid(format!(
                    "nsid {i} over the subsystem's max_namespaces {}",
                    s.max_namespaces
                )));
            }
            Some(i) if s.namespaces.contains_key(&i) => {
                return Err(invalid(format!("nsid {i} is already in use")));
            }
            Some(i) => i,
        };
        let grp = match n.anagrpid {
            None | Some(0) => nsid,
            Some(g) if g > s.max_namespaces => {
                return Err(invalid(format!(
                    "anagrpid {g} over the subsystem's max_namespaces {}",
                    s.max_namespaces
                )));
            }
            Some(g) => g,
        };
        (nsid, grp)
    };
    let (nqn_c, bdev_name) = (p.nqn.clone(), n.bdev_name.clone());
    let desc = ctx
        .on_reactor(move || async move {
            let (sub, name) = (nqn_c.clone(), bdev_name.clone());
            let mut d = ::bdev::open(&bdev_name, true, move |_, ev| {
                nvmf::namespace_event(&sub, nsid, &name, ev)
            })?;
            d.claim("NVMe-oF Target")?;
            Ok::<_, ::bdev::BdevError>(d)
        })?
        .map_err(|e| invalid(format!("bdev {}: {e}", n.bdev_name)))?;
    let bdev_uuid = nqn::parse_uuid(desc.bdev().uuid()).unwrap_or([0; 16]);
    let ns = Arc::new(Namespace {
        nsid,
        bdev_name: n.bdev_name.clone(),
        uuid: uuid.unwrap_or(bdev_uuid),
        nguid: nguid
            .map(|v| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&v);
                a
            })
            .unwrap_or(bdev_uuid),
        eui64,
        anagrpid,
        no_auto_visible: n.no_auto_visible.unwrap_or(false),
        desc,
    });
    let mut t = nvmf::target();
    let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
        drop(t);
        ctx.on_reactor(move || async move { drop(ns) })?;
        return Err(no_subsystem(&p.nqn));
    };
    if s.namespaces.contains_key(&nsid) {
        drop(t);
        ctx.on_reactor(move || async move { drop(ns) })?;
        return Err(invalid(format!("nsid {nsid} is already in use")));
    }
    s.namespaces.insert(nsid, ns);
    for c in &s.controllers {
        c.namespace_changed(nsid);
    }
    nvmf::bump();
    log::info!("nvmf: {} namespace {nsid} is bdev {}", p.nqn, n.bdev_name);
    Ok(json!(nsid))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_subsystem_remove_ns(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: RemoveNs = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let ns = {
        let mut t = nvmf::target();
        let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
            return Err(no_subsystem(&p.nqn));
        };
        let Some(ns) = s.namespaces.remove(&p.nsid) else {
            return Err(invalid(format!("{} has no namespace {}", p.nqn, p.nsid)));
        };
        for c in &s.controllers {
            c.namespace_changed(p.nsid);
        }
        nvmf::bump();
        ns
    };
    ctx.on_reactor(move || async move { drop(ns) })?;
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
struct AddHost {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
    psk: Option<String>,
}

pub(super) fn nvmf_subsystem_add_host(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: AddHost = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    if p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() || p.psk.is_some() {
        return Err(invalid(
            "dhchap_key, dhchap_ctrlr_key and psk are not supported",
        ));
    }
    let mut t = nvmf::target();
    let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    if let Some(why) = nqn::invalid_reason(&p.host) {
        return Err(err(-32603, format!("Internal error: host NQN {why}")));
    }
    if !s.hosts.contains(&p.host) {
        s.hosts.push(p.host);
    }
    nvmf::bump();
    Ok(json!(true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveHost {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
}

pub(super) fn nvmf_subsystem_remove_host(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: RemoveHost = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let mut t = nvmf::target();
    let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    let Some(i) = s.hosts.iter().position(|h| *h == p.host) else {
        return Err(err(
            -32603,
            format!("Internal error: {} is not a host of {}", p.host, p.nqn),
        ));
    };
    s.hosts.remove(i);
    if !s.allow_any_host {
        for c in &s.controllers {
            if c.hostnqn == p.host {
                c.kill();
            }
        }
    }
    nvmf::bump();
    Ok(json!(true))
}

pub(super) fn nvmf_subsystem_allow_any_host(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: String,
        allow_any_host: bool,
        tgt_name: Option<String>,
    }
    let p: P = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let mut t = nvmf::target();
    let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    s.allow_any_host = p.allow_any_host;
    nvmf::bump();
    Ok(json!(true))
}

pub(super) fn nvmf_subsystem_get_controllers(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: NqnOnly = decode(p)?;
    check_tgt(&p.tgt_name, false)?;
    let t = nvmf::target();
    let Some(s) = t.subsystems.iter().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    Ok(Value::Array(
        s.controllers
            .iter()
            .filter(|c| !c.is_dead())
            .map(|c| {
                json!({
                    "cntlid": c.cntlid,
                    "hostnqn": c.hostnqn,
                    "hostid": nqn::format_uuid(&c.hostid),
                    // SPDK counts the admin queue too.
                    "num_io_qpairs": c.qpairs().len(),
                })
            })
            .collect(),
    ))
}

pub(super) fn nvmf_subsystem_get_qpairs(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    let p: NqnOnly = decode(p)?;
    check_tgt(&p.tgt_name, false)?;
    let cores = ctx.handle.cores();
    let t = nvmf::target();
    let Some(s) = t.subsystems.iter().find(|s| s.nqn == p.nqn) else {
        return Err(no_subsystem(&p.nqn));
    };
    let mut out = Vec::new();
    for c in s.controllers.iter().filter(|c| !c.is_dead()) {
        for q in c.qpairs().iter() {
            let group = cores.iter().position(|&x| x == q.core).unwrap_or(0);
            let (peer_addr, peer_port) = q.peer.rsplit_once(':').unwrap_or((&q.peer, ""));
            out.push(json!({
                "cntlid": c.cntlid,
                "qid": q.qid,
                "state": "enabled",
                "thread": format!("nvmf_tgt_poll_group_{group:03}"),
                "hostnqn": c.hostnqn,
                "listen_address": c.listen.to_json(),
                "peer_address": {
                    "trtype": "TCP",
                    "adrfam": c.listen.adrfam.as_str(),
                    "traddr": peer_addr.trim_start_matches('[').trim_end_matches(']'),
                    "trsvcid": peer_port,
                },
            }));
        }
    }
    Ok(Value::Array(out))
}

pub(super) fn nvmf_get_stats(ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        tgt_name: Option<String>,
    }
    let p: P = decode(p)?;
    check_tgt(&p.tgt_name, true)?;
    let has_transport = nvmf::target().transport.is_some();
    let groups: Vec<Value> = ctx
        .handle
        .cores()
        .iter()
        .enumerate()
        .take(nvmf::MAX_STAT_CORES)
        .map(|(i, _)| {
            let s = &nvmf::STATS[i];
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            json!({
                "name": format!("nvmf_tgt_poll_group_{i:03}"),
                "admin_qpairs": g(&s.admin_qpairs),
                "io_qpairs": g(&s.io_qpairs),
                "current_admin_qpairs": g(&s.current_admin_qpairs),
                "current_io_qpairs": g(&s.current_io_qpairs),
                "pending_bdev_io": g(&s.pending_bdev_io),
                "completed_nvme_io": g(&s.completed_nvme_io),
                "transports": if has_transport { json!([{"trtype": "TCP"}]) } else { json!([]) },
            })
        })
        .collect();
    Ok(json!({
        "tick_rate": 1_000_000_000u64,
        "poll_groups": groups,
    }))
}

/// The nvmf subsystem's configuration: the transport, then each subsystem
/// (create, hosts, namespaces, listeners).
pub(super) fn config() -> Vec<Value> {
    let t = nvmf::target();
    let mut out = Vec::new();
    if let Some(o) = &t.transport {
        out.push(json!({"method": "nvmf_create_transport", "params": o.to_json()}));
    }
    for a in &t.discovery_listeners {
        out.push(json!({
            "method": "nvmf_subsystem_add_listener",
            "params": {"nqn": nqn::DISCOVERY_NQN, "listen_address": a.to_json(), "secure_channel": false}
        }));
    }
    for s in &t.subsystems {
        out.extend(s.config());
    }
    out
}
