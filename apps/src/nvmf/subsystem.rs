//! Subsystems: their identity (NQN, serial and model numbers), namespaces
//! (a claimed bdev each), the hosts allowed, the listeners with their ANA
//! states, and the controllers connected; and their JSON as SPDK shows it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bdev::Desc;
use serde_json::{Map, Value, json};

use super::ListenAddr;
use super::ctrlr::Controller;
use super::nqn::{format_uuid, upper_hex};

/// SPDK's default model number.
pub const DEFAULT_MODEL: &str = "SPDK bdev Controller";
/// SPDK's default serial number.
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
/// Namespaces a subsystem holds when `max_namespaces` is 0.
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// The highest controller id.
pub const MAX_CNTLID: u16 = 0xFFEF;

/// Asymmetric namespace access state of a listener for a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnaState {
    /// Optimized.
    Optimized,
    /// Non-optimized.
    NonOptimized,
    /// Inaccessible.
    Inaccessible,
}

impl AnaState {
    /// From "optimized", "non_optimized", "inaccessible" (any case).
    pub fn parse(s: &str) -> Option<AnaState> {
        match s.to_ascii_lowercase().as_str() {
            "optimized" => Some(AnaState::Optimized),
            "non_optimized" => Some(AnaState::NonOptimized),
            "inaccessible" => Some(AnaState::Inaccessible),
            _ => None,
        }
    }

    /// SPDK's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
        }
    }

    /// The ANA log page's state code.
    pub fn code(self) -> u8 {
        match self {
            AnaState::Optimized => 0x01,
            AnaState::NonOptimized => 0x02,
            AnaState::Inaccessible => 0x03,
        }
    }
}

/// A listener of a subsystem.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Its address.
    pub addr: ListenAddr,
    /// ANA state per group (index: group id - 1).
    pub ana: Vec<AnaState>,
}

/// A namespace: a bdev the subsystem claimed.
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// The bdev's name.
    pub bdev_name: String,
    /// Namespace UUID.
    pub uuid: [u8; 16],
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier (zero: none).
    pub eui64: [u8; 8],
    /// ANA group.
    pub anagrpid: u32,
    /// Not visible to hosts until added to them (kept for the interface:
    /// every namespace is visible here).
    pub no_auto_visible: bool,
    /// The claimed descriptor (closed when the last connection lets go).
    pub desc: Desc,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("nsid", &self.nsid)
            .field("bdev_name", &self.bdev_name)
            .finish()
    }
}

impl Namespace {
    /// Its identifiers (those set) and group, into `m`.
    fn ids(&self, m: &mut Map<String, Value>, ana_reporting: bool) {
        if self.nguid != [0; 16] {
            m.insert("nguid".into(), json!(upper_hex(&self.nguid)));
        }
        if self.eui64 != [0; 8] {
            m.insert("eui64".into(), json!(upper_hex(&self.eui64)));
        }
        if self.uuid != [0; 16] {
            m.insert("uuid".into(), json!(format_uuid(&self.uuid)));
        }
        if ana_reporting {
            m.insert("anagrpid".into(), json!(self.anagrpid));
        }
    }

    /// The namespace object `nvmf_get_subsystems` shows.
    pub fn to_json(&self, ana_reporting: bool) -> Value {
        let mut m = Map::new();
        m.insert("nsid".into(), json!(self.nsid));
        m.insert("bdev_name".into(), json!(self.bdev_name));
        m.insert("name".into(), json!(self.bdev_name));
        self.ids(&mut m, ana_reporting);
        Value::Object(m)
    }

    /// The `namespace` object save_config replays.
    pub fn config_json(&self, ana_reporting: bool) -> Value {
        let mut m = Map::new();
        m.insert("nsid".into(), json!(self.nsid));
        m.insert("bdev_name".into(), json!(self.bdev_name));
        self.ids(&mut m, ana_reporting);
        m.insert("no_auto_visible".into(), json!(self.no_auto_visible));
        Value::Object(m)
    }
}

/// An NVM subsystem.
#[derive(Debug)]
pub struct Subsystem {
    /// Its NQN.
    pub nqn: String,
    /// Serial number (20 bytes at most).
    pub serial: String,
    /// Model number (40 bytes at most).
    pub model: String,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// Hosts allowed (by NQN).
    pub hosts: Vec<String>,
    /// Most namespaces (and the highest nsid and ANA group).
    pub max_namespaces: u32,
    /// Report ANA (CMIC bit 3, ANA log page).
    pub ana_reporting: bool,
    /// Lowest controller id handed out.
    pub min_cntlid: u16,
    /// Highest controller id handed out.
    pub max_cntlid: u16,
    /// Namespaces by nsid.
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Controllers connected.
    pub controllers: Vec<Arc<Controller>>,
    /// The next controller id to try.
    pub next_cntlid: u16,
}

impl Subsystem {
    /// A subsystem with no namespace, host or listener.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nqn: &str,
        serial: &str,
        model: &str,
        allow_any_host: bool,
        max_namespaces: u32,
        ana_reporting: bool,
        min_cntlid: u16,
        max_cntlid: u16,
    ) -> Subsystem {
        Subsystem {
            nqn: nqn.to_owned(),
            serial: serial.to_owned(),
            model: model.to_owned(),
            allow_any_host,
            hosts: Vec::new(),
            max_namespaces,
            ana_reporting,
            min_cntlid,
            max_cntlid,
            namespaces: BTreeMap::new(),
            listeners: Vec::new(),
            controllers: Vec::new(),
            next_cntlid: min_cntlid,
        }
    }

    /// Whether host `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    /// A free controller id in [min, max], round-robin; None when all are
    /// taken.
    pub fn alloc_cntlid(&mut self) -> Option<u16> {
        let span = u32::from(self.max_cntlid - self.min_cntlid) + 1;
        for _ in 0..span {
            let c = self.next_cntlid;
            self.next_cntlid = if c >= self.max_cntlid {
                self.min_cntlid
            } else {
                c + 1
            };
            if !self.controllers.iter().any(|x| x.cntlid == c) {
                return Some(c);
            }
        }
        None
    }

    /// The listener at `addr`.
    pub fn listener(&self, addr: &ListenAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| &l.addr == addr)
    }

    /// The ANA state of group `grp` through `addr` (optimized when the
    /// listener is unknown).
    pub fn ana_state(&self, addr: &ListenAddr, grp: u32) -> AnaState {
        self.listener(addr)
            .and_then(|l| l.ana.get(grp.wrapping_sub(1) as usize).copied())
            .unwrap_or(AnaState::Optimized)
    }

    /// The object `nvmf_get_subsystems` shows.
    pub fn to_json(&self) -> Value {
        json!({
            "nqn": self.nqn,
            "subtype": "NVMe",
            "listen_addresses": self.listeners.iter().map(|l| l.addr.to_json()).collect::<Vec<_>>(),
            "allow_any_host": self.allow_any_host,
            "hosts": self.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
            "serial_number": self.serial,
            "model_number": self.model,
            "max_namespaces": self.max_namespaces,
            "min_cntlid": self.min_cntlid,
            "max_cntlid": self.max_cntlid,
            "namespaces": self.namespaces.values().map(|n| n.to_json(self.ana_reporting)).collect::<Vec<_>>(),
        })
    }

    /// The calls save_config replays for it: create, hosts, namespaces,
    /// listeners (SPDK's order).
    pub fn config(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "method": "nvmf_create_subsystem",
            "params": {
                "nqn": self.nqn,
                "allow_any_host": self.allow_any_host,
                "serial_number": self.serial,
                "model_number": self.model,
                "max_namespaces": self.max_namespaces,
                "min_cntlid": self.min_cntlid,
                "max_cntlid": self.max_cntlid,
                "ana_reporting": self.ana_reporting,
            }
        })];
        for h in &self.hosts {
            out.push(json!({"method": "nvmf_subsystem_add_host", "params": {"nqn": self.nqn, "host": h}}));
        }
        for ns in self.namespaces.values() {
            out.push(json!({
                "method": "nvmf_subsystem_add_ns",
                "params": {"nqn": self.nqn, "namespace": ns.config_json(self.ana_reporting)}
            }));
        }
        for l in &self.listeners {
            out.push(json!({
                "method": "nvmf_subsystem_add_listener",
                "params": {"nqn": self.nqn, "listen_address": l.addr.to_json(), "secure_channel": false}
            }));
            if self.ana_reporting {
                for (i, s) in l.ana.iter().enumerate() {
                    if *s != AnaState::Optimized {
                        out.push(json!({
                            "method": "nvmf_subsystem_listener_set_ana_state",
                            "params": {"nqn": self.nqn, "listen_address": l.addr.to_json(),
                                       "ana_state": s.as_str(), "anagrpid": i + 1}
                        }));
                    }
                }
            }
        }
        out
    }
}

/// Whether `s` is a valid serial (at most 20) or model (at most 40) number:
/// printable ASCII only.
pub fn valid_text(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x20..=0x7E).contains(&b))
}
