//! A controller: what a host's Connect on the admin queue creates and its
//! I/O queues join — its registers (CC, CSTS), keep-alive, negotiated
//! queue count, and its asynchronous events. Shared by the admin
//! connection and the I/O connections (possibly on other cores); touched
//! on the control path only (admin commands, connects, events), never per
//! I/O.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use super::ListenAddr;

/// Asynchronous event: notice (type 2), namespace attribute changed.
pub const AEN_NS_CHANGED: u32 = 0x0000_0002 | (0x04 << 16);
/// Asynchronous event: notice, asymmetric namespace access change.
pub const AEN_ANA_CHANGE: u32 = 0x0000_0302 | (0x0C << 16);
/// Async event config bit: namespace attribute notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// Async event config bit: ANA change notices.
pub const AEC_ANA: u32 = 1 << 11;

/// Events waiting for an Asynchronous Event Request.
#[derive(Debug, Default)]
pub struct Events {
    /// Completion dword 0 of each event not yet reported.
    pub pending: VecDeque<u32>,
    /// Namespaces changed since the host last read the Changed Namespace
    /// List log page.
    pub changed_ns: BTreeSet<u32>,
    /// A namespace-change event was reported and its log page not yet read
    /// (no second one until it is: the event is masked).
    pub ns_masked: bool,
    /// Same, for ANA changes.
    pub ana_masked: bool,
    /// ANA change count (the ANA log page's).
    pub ana_change_count: u64,
}

/// One queue pair as `nvmf_subsystem_get_qpairs` shows it.
#[derive(Clone, Debug)]
pub struct QpairInfo {
    /// Queue id (0: admin).
    pub qid: u16,
    /// The core serving it.
    pub core: u32,
    /// The host's address and port.
    pub peer: String,
    /// Unique connection id.
    pub conn: u64,
}

/// A controller.
#[derive(Debug)]
pub struct Controller {
    /// Controller id within its subsystem.
    pub cntlid: u16,
    /// The subsystem's NQN.
    pub subnqn: String,
    /// The host's NQN.
    pub hostnqn: String,
    /// The host identifier from Connect.
    pub hostid: [u8; 16],
    /// The listener the admin queue came through.
    pub listen: ListenAddr,
    /// A discovery controller.
    pub discovery: bool,
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    /// Controller configuration register.
    pub cc: AtomicU32,
    /// Controller status register.
    pub csts: AtomicU32,
    /// I/O queues granted (Set Features Number of Queues; at most the
    /// transport's maximum).
    pub io_queues: AtomicU16,
    /// Last keep-alive (or any admin command), `reactor::clock_ns`.
    pub last_keep_alive: AtomicU64,
    /// Set once the controller is torn down (keep-alive expired, host or
    /// subsystem removed, shutdown): its queues close.
    pub dead: AtomicBool,
    /// Asynchronous event configuration (Set Features 0x0B).
    pub aec: AtomicU32,
    /// Events for Asynchronous Event Requests.
    pub events: Mutex<Events>,
    /// Its queue pairs.
    pub qpairs: Mutex<Vec<QpairInfo>>,
}

impl Controller {
    /// A new controller, keep-alive counted from now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        listen: ListenAddr,
        discovery: bool,
        kato_ms: u32,
        io_queues: u16,
    ) -> Controller {
        Controller {
            cntlid,
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid,
            listen,
            discovery,
            kato_ms: AtomicU32::new(kato_ms),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            io_queues: AtomicU16::new(io_queues),
            last_keep_alive: AtomicU64::new(reactor::clock_ns()),
            dead: AtomicBool::new(false),
            aec: AtomicU32::new(AEC_NS_ATTR | AEC_ANA),
            events: Mutex::new(Events::default()),
            qpairs: Mutex::new(Vec::new()),
        }
    }

    /// The events, locked.
    pub fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue pairs, locked.
    pub fn qpairs(&self) -> std::sync::MutexGuard<'_, Vec<QpairInfo>> {
        self.qpairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that namespace `nsid` changed (added, removed, resized) and
    /// queues the notice unless one is outstanding or the host masked it.
    pub fn namespace_changed(&self, nsid: u32) {
        let mut e = self.events();
        e.changed_ns.insert(nsid);
        if !e.ns_masked && self.aec.load(Ordering::Acquire) & AEC_NS_ATTR != 0 {
            e.ns_masked = true;
            e.pending.push_back(AEN_NS_CHANGED);
        }
    }

    /// Records an ANA state change and queues its notice likewise.
    pub fn ana_changed(&self) {
        let mut e = self.events();
        e.ana_change_count += 1;
        if !e.ana_masked && self.aec.load(Ordering::Acquire) & AEC_ANA != 0 {
            e.ana_masked = true;
            e.pending.push_back(AEN_ANA_CHANGE);
        }
    }

    /// Tears the controller down: every queue sees it and closes.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
    }

    /// Whether it was torn down.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Whether the keep-alive timer expired at `now_ns`.
    pub fn keep_alive_expired(&self, now_ns: u64) -> bool {
        let kato = u64::from(self.kato_ms.load(Ordering::Acquire));
        kato != 0
            && now_ns.saturating_sub(self.last_keep_alive.load(Ordering::Acquire))
                > kato * 1_000_000
    }
}
