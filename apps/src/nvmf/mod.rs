//! The NVMe-oF target over TCP, as SPDK's lib/nvmf: a transport, subsystems
//! with namespaces (any bdev), hosts and listeners, the discovery
//! subsystem, and the connections the kernel's `nvme-tcp` (or any NVMe/TCP
//! host) makes to them.
//!
//! ```text
//!  RPC (methods/nvmf.rs) ──> registry (this file, one Mutex, control path only)
//!                              │ listeners: a TcpListener per address, an accept
//!                              │ poller on reactor 0, each connection a task on
//!                              │ the next core (round-robin)
//!                              v
//!  host ──TCP──> conn.rs: PDUs (nvme_driver::tcp::pdu), ICReq/ICResp, capsules,
//!                R2T/H2CData, C2HData, digests, termination
//!                  ├ fabrics.rs: Connect, Property Get/Set
//!                  ├ admin.rs: Identify, Get Log Page, Features, AER, Keep Alive, Abort
//!                  ├ discovery.rs: the discovery log page
//!                  └ io.rs: read/write/flush/write zeroes/DSM/compare through the
//!                           connection core's BdevChannel of each namespace
//! ```
//!
//! Files, one concern each: [`nqn`] names, [`transport`] options,
//! [`ctrlr`] controllers and their events, [`subsystem`] subsystems and
//! namespaces.

pub mod admin;
pub mod cmd;
mod conn;
pub mod ctrlr;
pub mod discovery;
pub mod fabrics;
mod io;
pub mod nqn;
pub mod subsystem;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bdev::BdevEvent;
use reactor::PollStatus;

use serde_json::{Value, json};

use self::subsystem::Subsystem;
use self::transport::TcpOpts;

/// Address family of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Adrfam {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Adrfam {
    /// From "ipv4"/"IPv4"/"ipv6"/... (any case).
    pub fn parse(s: &str) -> Option<Adrfam> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" => Some(Adrfam::Ipv4),
            "ipv6" => Some(Adrfam::Ipv6),
            _ => None,
        }
    }

    /// SPDK's spelling: "IPv4", "IPv6".
    pub fn as_str(self) -> &'static str {
        match self {
            Adrfam::Ipv4 => "IPv4",
            Adrfam::Ipv6 => "IPv6",
        }
    }

    /// The discovery log entry's ADRFAM code.
    pub fn code(self) -> u8 {
        match self {
            Adrfam::Ipv4 => 1,
            Adrfam::Ipv6 => 2,
        }
    }
}

/// Where a subsystem listens (TCP only).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenAddr {
    /// Address family.
    pub adrfam: Adrfam,
    /// The address, as given.
    pub traddr: String,
    /// The port, as given.
    pub trsvcid: String,
}

impl ListenAddr {
    /// The `listen_address` object SPDK shows.
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": "TCP",
            "adrfam": self.adrfam.as_str(),
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
        })
    }

    /// The socket address to bind.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let port: u16 = self.trsvcid.parse().ok()?;
        let ip: std::net::IpAddr = self.traddr.parse().ok()?;
        match (self.adrfam, ip) {
            (Adrfam::Ipv4, std::net::IpAddr::V4(_)) | (Adrfam::Ipv6, std::net::IpAddr::V6(_)) => {
                Some(std::net::SocketAddr::new(ip, port))
            }
            _ => None,
        }
    }
}

/// The target: its transport and subsystems.
pub struct Target {
    /// The TCP transport, once created.
    pub transport: Option<TcpOpts>,
    /// Subsystems in creation order (the discovery subsystem is implicit).
    pub subsystems: Vec<Subsystem>,
    /// Listening sockets by address: how many subsystems use each.
    pub ports: BTreeMap<ListenAddr, Port>,
    /// Listeners added to the discovery subsystem itself (every listener
    /// answers discovery; these listen for it alone).
    pub discovery_listeners: Vec<ListenAddr>,
    /// Connections accepted since start (cumulative admin/I/O counts are
    /// in [`STATS`]).
    pub next_conn: u64,
}

/// A listening socket shared by the subsystems that listen on it.
pub struct Port {
    /// Subsystems listening here.
    pub refs: usize,
    /// Set to close the socket (its accept poller sees it).
    pub stop: Arc<AtomicBool>,
}

static TARGET: Mutex<Target> = Mutex::new(Target {
    transport: None,
    subsystems: Vec::new(),
    ports: BTreeMap::new(),
    discovery_listeners: Vec::new(),
    next_conn: 0,
});

/// Bumped at every change of any subsystem's namespaces or hosts: I/O
/// connections compare it once per turn and rebuild their namespace
/// table when it moved.
pub static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The target, locked (control path only: never held across an await).
pub fn target() -> MutexGuard<'static, Target> {
    TARGET.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a change to namespaces or hosts (see [`GENERATION`]).
pub fn bump() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Cumulative counters for `nvmf_get_stats`, per core index (each core's
/// on its own cache lines: the I/O path counts on them).
#[repr(align(128))]
pub struct Stats {
    /// Admin queue pairs ever connected.
    pub admin_qpairs: AtomicU64,
    /// I/O queue pairs ever connected.
    pub io_qpairs: AtomicU64,
    /// Admin queue pairs connected now.
    pub current_admin_qpairs: AtomicU64,
    /// I/O queue pairs connected now.
    pub current_io_qpairs: AtomicU64,
    /// Bdev I/O in flight now.
    pub pending_bdev_io: AtomicU64,
    /// NVMe commands completed.
    pub completed_nvme_io: AtomicU64,
}

/// The most cores counted in [`STATS`].
pub const MAX_STAT_CORES: usize = 256;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_STATS: Stats = Stats {
    admin_qpairs: AtomicU64::new(0),
    io_qpairs: AtomicU64::new(0),
    current_admin_qpairs: AtomicU64::new(0),
    current_io_qpairs: AtomicU64::new(0),
    pending_bdev_io: AtomicU64::new(0),
    completed_nvme_io: AtomicU64::new(0),
};

/// Per-core counters (index: the core's position in the reactor set).
pub static STATS: [Stats; MAX_STAT_CORES] = [ZERO_STATS; MAX_STAT_CORES];

/// Where accepted connections go next (round-robin over the cores).
static NEXT_CORE: AtomicUsize = AtomicUsize::new(0);

/// Takes a reference on the listening socket at `addr`, binding it (and
/// starting its accept poller on reactor 0 of `handle`) when it is the
/// first.
///
/// # Errors
/// The bind's error.
pub fn acquire_port(
    handle: &reactor::Handle,
    t: &mut Target,
    addr: &ListenAddr,
) -> Result<(), String> {
    if let Some(p) = t.ports.get_mut(addr) {
        p.refs += 1;
        return Ok(());
    }
    let sa = addr.socket_addr().ok_or_else(|| {
        format!(
            "'{}' port '{}' is not an address",
            addr.traddr, addr.trsvcid
        )
    })?;
    let l = std::net::TcpListener::bind(sa).map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (st, a) = (stop.clone(), addr.clone());
    let core = handle.cores()[0];
    handle
        .send(core, move || start_accepting(l, a, st))
        .map_err(|e| e.to_string())?;
    t.ports.insert(addr.clone(), Port { refs: 1, stop });
    Ok(())
}

/// Drops a reference on the listening socket at `addr`; the last one
/// closes it.
pub fn release_port(t: &mut Target, addr: &ListenAddr) {
    if let Some(p) = t.ports.get_mut(addr) {
        p.refs -= 1;
        if p.refs == 0 {
            p.stop.store(true, Ordering::Release);
            t.ports.remove(addr);
        }
    }
}

fn start_accepting(l: std::net::TcpListener, addr: ListenAddr, stop: Arc<AtomicBool>) {
    let mut listener = Some(l);
    reactor::register_timed_poller(
        format!("nvmf_accept_{}:{}", addr.traddr, addr.trsvcid),
        Duration::from_millis(2),
        move || {
            let Some(l) = listener.as_ref() else {
                return PollStatus::Idle;
            };
            if stop.load(Ordering::Acquire) {
                listener = None;
                if let Some(p) = reactor::current_poller() {
                    p.unregister();
                }
                return PollStatus::Busy;
            }
            let mut busy = false;
            loop {
                match l.accept() {
                    Ok((stream, _)) => {
                        busy = true;
                        let cores = reactor::cores();
                        let core = cores[NEXT_CORE.fetch_add(1, Ordering::Relaxed) % cores.len()];
                        let id = {
                            let mut t = target();
                            t.next_conn += 1;
                            t.next_conn
                        };
                        let a = addr.clone();
                        drop(reactor::spawn_on(core, move || conn::serve(stream, a, id)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("nvmf: accept on {}:{}: {e}", addr.traddr, addr.trsvcid);
                        break;
                    }
                }
            }
            PollStatus::from(busy)
        },
    );
}

/// A namespace's bdev changed: a resize is announced to the subsystem's
/// controllers (namespace attribute changed); a removal takes the
/// namespace out of the subsystem first.
pub fn namespace_event(subnqn: &str, nsid: u32, bdev_name: &str, ev: BdevEvent) {
    let dropped = {
        let mut t = target();
        let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == subnqn) else {
            return;
        };
        if s.namespaces
            .get(&nsid)
            .is_none_or(|n| n.bdev_name != bdev_name)
        {
            return;
        }
        let dropped = match ev {
            BdevEvent::Remove => {
                log::info!("nvmf: bdev {bdev_name} removed: namespace {nsid} of {subnqn} goes");
                s.namespaces.remove(&nsid)
            }
            BdevEvent::Resize { .. } => None,
        };
        for c in &s.controllers {
            c.namespace_changed(nsid);
        }
        bump();
        dropped
    };
    drop(dropped);
}

/// Shuts the target down: listeners closed, controllers torn down,
/// subsystems and the transport forgotten (their namespaces' descriptors
/// close as their connections end).
pub fn stop_all() {
    let mut t = target();
    for p in t.ports.values() {
        p.stop.store(true, Ordering::Release);
    }
    t.ports.clear();
    t.discovery_listeners.clear();
    for s in &t.subsystems {
        for c in &s.controllers {
            c.kill();
        }
    }
    let subs = std::mem::take(&mut t.subsystems);
    t.transport = None;
    bump();
    drop(t);
    drop(subs);
}
