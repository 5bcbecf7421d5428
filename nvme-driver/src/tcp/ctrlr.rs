//! An NVMe/TCP controller seen from the host: the admin queue's connection
//! and the controller's bring-up over it (Connect, Property Get CAP/VS,
//! Property Set CC.EN, CSTS.RDY, Identify, Number of Queues, the active
//! namespaces), keep-alive, resets (a new association: new connections, a
//! new controller id) and shutdown. Everything advances by
//! [`TcpController::poll_admin`] on the owning core, never waiting: the
//! bring-up is an `async` sequence polled with a no-op waker, each poll
//! moving the socket along.
//!
//! A lost connection (the target closed it, a keep-alive went unanswered,
//! a queue pair's connection failed or a command timed out) resets the
//! controller: every queue pair completes its outstanding commands as
//! aborted by a reset and connects again once the admin queue is back. A
//! reset that fails leaves the controller [`CtrlrState::Failed`]; the
//! owner decides when to try again (`reconnect_delay_sec`).

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::conn::{ConnParams, CqeResult, FABRICS, HostConn};
use super::qpair::TcpQpair;
use crate::cmd::admin as acmd;
use crate::ctrlr::{Namespace, NsEventHandler, ns_diff};
use crate::error::NvmeError;
use crate::shared::{CtrlrState, TimeoutAction};
use crate::spec::{IdentifyController, IdentifyNamespace, Sqe};

const PROP_SET: u32 = 0x00;
const PROP_GET: u32 = 0x04;
const REG_CAP: u32 = 0x00;
const REG_VS: u32 = 0x08;
const REG_CC: u32 = 0x14;
const REG_CSTS: u32 = 0x1C;
/// CC with EN, IOSQES = 6 (64 bytes), IOCQES = 4 (16 bytes).
const CC_ENABLED: u32 = 1 | 6 << 16 | 4 << 20;
/// CC.SHN normal shutdown.
const CC_SHN_NORMAL: u32 = 1 << 14;
/// Admin queue entries.
const ADMIN_DEPTH: u16 = 32;
/// In-capsule data the admin queue takes (NVMe/TCP: 8 KiB).
const ADMIN_IN_CAPSULE: usize = 8192;
/// The largest transfer this host asks for in one command.
const MAX_TRANSFER: usize = 1 << 20;

/// Where and how to reach an NVMe/TCP controller.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// The target's address and port.
    pub addr: SocketAddr,
    /// The subsystem's NQN.
    pub subnqn: String,
    /// This host's NQN.
    pub hostnqn: String,
    /// This host's identifier.
    pub hostid: [u8; 16],
    /// Ask for header digests.
    pub hdgst: bool,
    /// Ask for data digests.
    pub ddgst: bool,
    /// I/O queues to ask for.
    pub io_queues: u16,
    /// Keep Alive Timeout (a keep-alive goes every half of it; zero: none).
    pub keep_alive: Duration,
    /// How long an admin command, or a connection's bring-up, may take.
    pub admin_timeout: Duration,
}

/// What the controller's queue pairs share with it (any core).
pub(crate) struct TcpShared {
    pub(crate) name: String,
    pub(crate) opts: TcpOptions,
    state: AtomicU8,
    generation: AtomicU64,
    pub(crate) cntlid: AtomicU16,
    pub(crate) io_in_capsule: AtomicU32,
    io_queues: AtomicU16,
    pub(crate) max_depth: AtomicU32,
    qids: Mutex<Vec<bool>>,
    reset_requested: AtomicBool,
    /// I/O timeout in microseconds (0: none) and whether it resets.
    io_timeout_us: AtomicU64,
    pub(crate) timeout_resets: AtomicBool,
}

impl TcpShared {
    pub(crate) fn state(&self) -> CtrlrState {
        CtrlrState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: CtrlrState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A queue pair lost its connection (or a command timed out): the
    /// admin poller resets the controller.
    pub(crate) fn request_reset(&self, why: &str) {
        if !self.reset_requested.swap(true, Ordering::AcqRel) {
            log::warn!("{}: {why}: resetting the controller", self.name);
        }
    }

    pub(crate) fn io_timeout(&self) -> Option<Duration> {
        match self.io_timeout_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        let mut q = self.qids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = q.get_mut(usize::from(qid)) {
            *b = false;
        }
    }

    /// The parameters of a connection for queue `qid` of `depth` entries.
    pub(crate) fn conn_params(&self, qid: u16, depth: u16) -> ConnParams {
        let o = &self.opts;
        ConnParams {
            addr: o.addr,
            qid,
            depth,
            cntlid: if qid == 0 {
                0xFFFF
            } else {
                self.cntlid.load(Ordering::Acquire)
            },
            kato_ms: o.keep_alive.as_millis().min(u32::MAX as u128) as u32,
            subnqn: o.subnqn.clone(),
            hostnqn: o.hostnqn.clone(),
            hostid: o.hostid,
            hdgst: o.hdgst,
            ddgst: o.ddgst,
            connect_timeout: o.admin_timeout,
            in_capsule: if qid == 0 {
                ADMIN_IN_CAPSULE
            } else {
                self.io_in_capsule.load(Ordering::Acquire) as usize
            },
        }
    }
}

/// An admin command's context: its tag and its data buffer (whose heap
/// memory the connection reads or fills until the command completes).
struct AdminOp {
    tag: u64,
    buf: Vec<u8>,
}

/// The admin queue: its connection and the commands that completed.
struct AdminQ {
    conn: HostConn<AdminOp>,
    done: Vec<(u64, CqeResult, Vec<u8>)>,
    next: u64,
}

impl AdminQ {
    fn poll(&mut self) {
        let d = &mut self.done;
        self.conn.poll(|op, r| d.push((op.tag, r, op.buf)));
    }

    fn start(&mut self, sqe: Sqe, mut buf: Vec<u8>, to_ctrl: bool) -> Result<u64, String> {
        self.next += 1;
        let tag = self.next;
        let seg = [(buf.as_mut_ptr(), buf.len())];
        let segs: &[(*mut u8, usize)] = if buf.is_empty() { &[] } else { &seg };
        // SAFETY: the buffer moves into the command's context, which the
        // connection holds until the command completes; moving a Vec does
        // not move its heap memory, which nothing else touches meanwhile.
        let r = unsafe { self.conn.submit(sqe, segs, to_ctrl, AdminOp { tag, buf }) };
        r.map(|_| tag).map_err(|(why, _)| format!("{why:?}"))
    }

    fn take(&mut self, tag: u64) -> Option<(CqeResult, Vec<u8>)> {
        let i = self.done.iter().position(|d| d.0 == tag)?;
        let (_, r, b) = self.done.swap_remove(i);
        Some((r, b))
    }
}

fn transport_err(name: &str, what: impl Into<String>) -> NvmeError {
    NvmeError::Transport {
        ctrlr: name.to_owned(),
        what: what.into(),
    }
}

fn unreachable_err(name: &str, what: impl Into<String>) -> NvmeError {
    NvmeError::Unreachable {
        ctrlr: name.to_owned(),
        what: what.into(),
    }
}

/// Runs one admin command to its end (or `timeout`).
async fn command(
    q: &mut AdminQ,
    name: &str,
    command: &'static str,
    sqe: Sqe,
    buf: Vec<u8>,
    to_ctrl: bool,
    timeout: Duration,
) -> Result<([u32; 2], Vec<u8>), NvmeError> {
    let tag = q
        .start(sqe, buf, to_ctrl)
        .map_err(|why| transport_err(name, format!("{command} not sent: {why}")))?;
    let deadline = Instant::now() + timeout;
    poll_fn(|_| {
        q.poll();
        if q.conn.is_dead() {
            let why = q.conn.why().unwrap_or("closed").to_owned();
            return Poll::Ready(Err(transport_err(
                name,
                format!("{command}: connection lost: {why}"),
            )));
        }
        if let Some((r, b)) = q.take(tag) {
            return Poll::Ready(r.map(|d| (d, b)).map_err(|source| NvmeError::Admin {
                ctrlr: name.to_owned(),
                command,
                source,
            }));
        }
        if Instant::now() > deadline {
            q.conn.close(format!("{command} unanswered"));
            return Poll::Ready(Err(NvmeError::AdminTimeout {
                ctrlr: name.to_owned(),
                command,
                ms: timeout.as_millis() as u64,
            }));
        }
        Poll::Pending
    })
    .await
}

fn property_get(ofst: u32, size8: bool) -> Sqe {
    let mut s = Sqe::new(FABRICS, PROP_GET);
    s.cdw10 = u32::from(size8);
    s.cdw11 = ofst;
    s
}

fn property_set(ofst: u32, value: u32) -> Sqe {
    let mut s = Sqe::new(FABRICS, PROP_SET);
    s.cdw11 = ofst;
    s.cdw12 = value;
    s
}

/// Waits (by polls) until `at`.
async fn sleep_until(at: Instant) {
    poll_fn(|_| {
        if Instant::now() >= at {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// What a bring-up found.
struct Up {
    admin: AdminQ,
    cntlid: u16,
    identify: IdentifyController,
    namespaces: Vec<(u32, IdentifyNamespace)>,
    io_queues: u16,
    in_capsule: u32,
    max_depth: u32,
}

/// Connects the admin queue and brings the controller up.
async fn bring_up(sh: Arc<TcpShared>) -> Result<Up, NvmeError> {
    let name = sh.name.clone();
    let to = sh.opts.admin_timeout;
    let conn = HostConn::start(sh.conn_params(0, ADMIN_DEPTH))
        .map_err(|e| unreachable_err(&name, format!("connect to {}: {e}", sh.opts.addr)))?;
    let mut q = AdminQ {
        conn,
        done: Vec::new(),
        next: 0,
    };
    poll_fn(|_| {
        q.poll();
        if q.conn.is_live() {
            Poll::Ready(Ok(()))
        } else if q.conn.is_dead() {
            let why = q.conn.why().unwrap_or("closed").to_owned();
            Poll::Ready(Err(if q.conn.reached() {
                transport_err(&name, why)
            } else {
                unreachable_err(&name, why)
            }))
        } else {
            Poll::Pending
        }
    })
    .await?;
    let cntlid = q.conn.cntlid();
    let (cap, _) = command(
        &mut q,
        &name,
        "Property Get (CAP)",
        property_get(REG_CAP, true),
        Vec::new(),
        false,
        to,
    )
    .await?;
    let cap = u64::from(cap[0]) | u64::from(cap[1]) << 32;
    let mqes = (cap & 0xFFFF) as u32 + 1;
    let ready_timeout = Duration::from_millis(((cap >> 24) & 0xFF).max(1) * 500);
    let (vs, _) = command(
        &mut q,
        &name,
        "Property Get (VS)",
        property_get(REG_VS, false),
        Vec::new(),
        false,
        to,
    )
    .await?;
    log::debug!(
        "{name}: CAP {cap:#x}, version {}.{}",
        vs[0] >> 16,
        (vs[0] >> 8) & 0xFF
    );
    command(
        &mut q,
        &name,
        "Property Set (CC.EN)",
        property_set(REG_CC, CC_ENABLED),
        Vec::new(),
        false,
        to,
    )
    .await?;
    let deadline = Instant::now() + ready_timeout;
    loop {
        let (csts, _) = command(
            &mut q,
            &name,
            "Property Get (CSTS)",
            property_get(REG_CSTS, false),
            Vec::new(),
            false,
            to,
        )
        .await?;
        if csts[0] & 2 != 0 {
            return Err(NvmeError::Fatal {
                ctrlr: name,
                state: "enable",
            });
        }
        if csts[0] & 1 != 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(NvmeError::InitTimeout {
                ctrlr: name,
                state: "waiting for CSTS.RDY",
                waited_ms: ready_timeout.as_millis() as u64,
                csts: csts[0],
            });
        }
        sleep_until(Instant::now() + Duration::from_millis(1)).await;
    }
    let (_, page) = command(
        &mut q,
        &name,
        "Identify Controller",
        acmd::identify_controller(),
        vec![0u8; 4096],
        false,
        to,
    )
    .await?;
    let mut b = [0u8; 4096];
    b.copy_from_slice(&page);
    let identify = IdentifyController::parse(&b);
    // IOCCSZ (in 16-byte units, the 64-byte command included).
    let ioccsz = u32::from_le_bytes([b[1792], b[1793], b[1794], b[1795]]);
    let in_capsule = (ioccsz * 16).saturating_sub(64);
    let want = sh.opts.io_queues.max(1) - 1;
    let (nq, _) = command(
        &mut q,
        &name,
        "Set Features (Number of Queues)",
        acmd::set_num_queues(want, want),
        Vec::new(),
        false,
        to,
    )
    .await?;
    let io_queues = ((nq[0] & 0xFFFF).min(nq[0] >> 16) + 1).min(u32::from(want) + 1) as u16;
    let mut nsids = Vec::new();
    loop {
        let after = nsids.last().copied().unwrap_or(0);
        let (_, page) = command(
            &mut q,
            &name,
            "Identify (Active Namespace List)",
            acmd::active_namespaces(after),
            vec![0u8; 4096],
            false,
            to,
        )
        .await?;
        b.copy_from_slice(&page);
        let n = crate::init::parse_ns_list(&b, &mut nsids);
        if n < 1024 || nsids.len() >= 1 << 16 {
            break;
        }
    }
    let mut namespaces = Vec::new();
    for nsid in nsids {
        let (_, page) = command(
            &mut q,
            &name,
            "Identify Namespace",
            acmd::identify_namespace(nsid),
            vec![0u8; 4096],
            false,
            to,
        )
        .await?;
        b.copy_from_slice(&page);
        let mut id = IdentifyNamespace::parse(&b);
        if !id.is_active() {
            continue;
        }
        match command(
            &mut q,
            &name,
            "Identify (Namespace Identification Descriptors)",
            acmd::identify_ns_descriptors(nsid),
            vec![0u8; 4096],
            false,
            to,
        )
        .await
        {
            Ok((_, page)) => {
                b.copy_from_slice(&page);
                id.add_descriptors(&b);
            }
            Err(e @ NvmeError::Admin { .. }) => {
                log::debug!("{name}: namespace {nsid}: no identification descriptors: {e}");
            }
            Err(e) => return Err(e),
        }
        namespaces.push((nsid, id));
    }
    Ok(Up {
        admin: q,
        cntlid,
        identify,
        namespaces,
        io_queues,
        in_capsule,
        max_depth: mqes,
    })
}

type BringUp = Pin<Box<dyn Future<Output = Result<Up, NvmeError>> + Send>>;

enum Phase {
    /// Connecting and bringing the controller up (first time or reset).
    Starting(BringUp),
    /// Up: the admin queue is polled for keep-alives.
    Ready(AdminQ),
    /// A bring-up failed; waiting for the owner to start another.
    Failed,
    /// Shutdown notified, waiting for the answer until the deadline.
    ShuttingDown(AdminQ, Option<u64>, Instant),
    /// Shut down (or given up): nothing more happens.
    Down,
}

/// An NVMe/TCP controller (one association: an admin queue and the I/O
/// queues its queue pairs connect).
pub struct TcpController {
    sh: Arc<TcpShared>,
    phase: Phase,
    identify: IdentifyController,
    namespaces: BTreeMap<u32, Namespace>,
    resets: u64,
    resets_done: u64,
    last_error: Option<String>,
    keep_alive: Option<(u64, Instant)>,
    next_keep_alive: Instant,
    handler: Option<NsEventHandler>,
    max_transfer: usize,
}

impl std::fmt::Debug for TcpController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpController")
            .field("name", &self.sh.name)
            .field("addr", &self.sh.opts.addr)
            .field("subnqn", &self.sh.opts.subnqn)
            .field("state", &self.sh.state())
            .finish()
    }
}

impl TcpController {
    /// Starts connecting to the controller `opts` names, as `name`; the
    /// bring-up advances by [`TcpController::poll_admin`] until
    /// [`TcpController::state`] is ready (or failed, with
    /// [`TcpController::last_reset_error`] saying why).
    pub fn connect(name: &str, opts: TcpOptions) -> TcpController {
        let sh = Arc::new(TcpShared {
            name: name.to_owned(),
            state: AtomicU8::new(CtrlrState::Initializing as u8),
            generation: AtomicU64::new(0),
            cntlid: AtomicU16::new(0),
            io_in_capsule: AtomicU32::new(0),
            io_queues: AtomicU16::new(0),
            max_depth: AtomicU32::new(0),
            qids: Mutex::new(Vec::new()),
            reset_requested: AtomicBool::new(false),
            io_timeout_us: AtomicU64::new(0),
            timeout_resets: AtomicBool::new(false),
            opts,
        });
        let fut: BringUp = Box::pin(bring_up(sh.clone()));
        TcpController {
            sh,
            phase: Phase::Starting(fut),
            identify: IdentifyController::parse(&[0u8; 4096]),
            namespaces: BTreeMap::new(),
            resets: 1,
            resets_done: 0,
            last_error: None,
            keep_alive: None,
            next_keep_alive: Instant::now(),
            handler: None,
            max_transfer: MAX_TRANSFER,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.sh.name
    }

    /// How it is reached.
    pub fn options(&self) -> &TcpOptions {
        &self.sh.opts
    }

    /// The controller id of the current association.
    pub fn cntlid(&self) -> u16 {
        self.sh.cntlid.load(Ordering::Acquire)
    }

    /// Identify Controller data (of the last bring-up).
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// The largest transfer of one command in bytes (MDTS, at most 1 MiB).
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// Its state.
    pub fn state(&self) -> CtrlrState {
        self.sh.state()
    }

    /// Resets (and the first bring-up) started.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Resets (and the first bring-up) finished, well or not.
    pub fn resets_done(&self) -> u64 {
        self.resets_done
    }

    /// Why the last bring-up failed.
    pub fn last_reset_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Where namespace changes found by a reset go.
    pub fn set_ns_event_handler(&mut self, handler: NsEventHandler) {
        self.handler = Some(handler);
    }

    /// The I/O timeout: a command outstanding longer resets the controller
    /// (`Abort` does too: NVMe/TCP commands are not aborted one by one
    /// here); `None` or [`TimeoutAction::None`] turns it off.
    pub fn set_io_timeout(&self, timeout: Option<Duration>, action: TimeoutAction) {
        let us = match (timeout, action) {
            (Some(t), a) if a != TimeoutAction::None => t.as_micros().max(1) as u64,
            _ => 0,
        };
        self.sh.io_timeout_us.store(us, Ordering::Relaxed);
        self.sh.timeout_resets.store(us != 0, Ordering::Relaxed);
    }

    /// How long an admin command (and a connection's bring-up) may take.
    pub fn set_admin_timeout(&mut self, _timeout: Duration) {
        // Fixed at connect time (it is part of the options); kept for the
        // PCIe controller's interface.
    }

    /// A queue pair of `depth` entries (at most what CAP.MQES allows) on
    /// the next free I/O queue id; it connects itself by its polls.
    ///
    /// # Errors
    /// [`NvmeError::NoFreeQueue`] when every granted queue is in use;
    /// [`NvmeError::InvalidDepth`] for a depth under 2.
    pub fn create_io_qpair<C>(&self, depth: u32) -> Result<TcpQpair<C>, NvmeError> {
        let max = self.sh.max_depth.load(Ordering::Acquire).max(2);
        let depth = depth.min(max);
        if depth < 2 {
            return Err(NvmeError::InvalidDepth {
                ctrlr: self.sh.name.clone(),
                asked: depth,
                max,
            });
        }
        let granted = self.sh.io_queues.load(Ordering::Acquire);
        let mut q = self.sh.qids.lock().unwrap_or_else(|p| p.into_inner());
        q.resize(usize::from(granted) + 1, false);
        let Some(qid) = (1..=usize::from(granted)).find(|&i| !q[i]) else {
            return Err(NvmeError::NoFreeQueue {
                ctrlr: self.sh.name.clone(),
                granted,
            });
        };
        q[qid] = true;
        drop(q);
        Ok(TcpQpair::new(self.sh.clone(), qid as u16, depth as u16))
    }

    /// Advances the control path: the bring-up, keep-alives, a reset after
    /// a lost connection. Never waits.
    ///
    /// # Errors
    /// A bring-up that failed (the controller is failed now).
    pub fn poll_admin(&mut self) -> Result<(), NvmeError> {
        match &mut self.phase {
            Phase::Starting(fut) => {
                let mut cx = Context::from_waker(Waker::noop());
                match fut.as_mut().poll(&mut cx) {
                    Poll::Pending => Ok(()),
                    Poll::Ready(Ok(up)) => {
                        self.up(up);
                        Ok(())
                    }
                    Poll::Ready(Err(e)) => {
                        self.resets_done = self.resets;
                        self.last_error = Some(e.to_string());
                        self.phase = Phase::Failed;
                        self.sh.set_state(CtrlrState::Failed);
                        Err(e)
                    }
                }
            }
            Phase::Ready(q) => {
                q.poll();
                let now = Instant::now();
                if let Some((tag, since)) = self.keep_alive {
                    if let Some((r, _)) = q.take(tag) {
                        self.keep_alive = None;
                        if let Err(e) = r {
                            log::warn!("{}: Keep Alive failed: {e}", self.sh.name);
                        }
                    } else if now.duration_since(since) > self.sh.opts.admin_timeout {
                        q.conn.close("Keep Alive unanswered");
                    }
                }
                q.done.clear();
                let ka = self.sh.opts.keep_alive;
                if !ka.is_zero() && self.keep_alive.is_none() && now >= self.next_keep_alive {
                    self.next_keep_alive = now + ka / 2;
                    if let Ok(tag) = q.start(Sqe::new(0x18, 0), Vec::new(), false) {
                        self.keep_alive = Some((tag, now));
                    }
                }
                let lost = q
                    .conn
                    .is_dead()
                    .then(|| q.conn.why().unwrap_or("closed").to_owned());
                let asked = self.sh.reset_requested.swap(false, Ordering::AcqRel);
                if let Some(why) = lost {
                    log::warn!("{}: admin connection lost ({why}): resetting", self.sh.name);
                    self.start_reset()?;
                } else if asked {
                    self.start_reset()?;
                }
                Ok(())
            }
            Phase::Failed | Phase::ShuttingDown(..) | Phase::Down => Ok(()),
        }
    }

    fn up(&mut self, up: Up) {
        let sh = &self.sh;
        self.identify = up.identify;
        self.max_transfer = self
            .identify
            .max_transfer(4096)
            .unwrap_or(MAX_TRANSFER)
            .min(MAX_TRANSFER);
        sh.cntlid.store(up.cntlid, Ordering::Release);
        sh.io_in_capsule.store(up.in_capsule, Ordering::Release);
        sh.io_queues.store(up.io_queues, Ordering::Release);
        sh.max_depth.store(up.max_depth, Ordering::Release);
        let mut fresh = BTreeMap::new();
        for (nsid, id) in up.namespaces {
            match Namespace::checked(nsid, &id) {
                Ok(ns) => {
                    fresh.insert(nsid, ns);
                }
                Err(what) => log::warn!("{}: namespace {nsid} left out: {what}", sh.name),
            }
        }
        let first = self.resets_done == 0;
        let events = ns_diff(&self.namespaces, &fresh);
        self.namespaces = fresh;
        if !first && let Some(h) = self.handler.as_mut() {
            for e in &events {
                h(e);
            }
        }
        log::info!(
            "{}: connected to {} at {} (controller id {}, {} I/O queues)",
            sh.name,
            sh.opts.subnqn,
            sh.opts.addr,
            up.cntlid,
            up.io_queues
        );
        sh.reset_requested.store(false, Ordering::Release);
        self.resets_done = self.resets;
        self.last_error = None;
        self.keep_alive = None;
        self.next_keep_alive = Instant::now() + self.sh.opts.keep_alive / 2;
        self.phase = Phase::Ready(up.admin);
        self.sh.set_state(CtrlrState::Ready);
    }

    /// Starts a reset (or joins the one in progress): the connections
    /// close, queue pairs hand back their commands as aborted by the reset,
    /// and a new association is brought up by
    /// [`TcpController::poll_admin`].
    ///
    /// # Errors
    /// [`NvmeError::NotReady`] once shut down.
    pub fn start_reset(&mut self) -> Result<(), NvmeError> {
        match self.phase {
            Phase::Starting(_) => return Ok(()),
            Phase::ShuttingDown(..) | Phase::Down => {
                return Err(NvmeError::NotReady {
                    ctrlr: self.sh.name.clone(),
                    state: "shut down",
                });
            }
            Phase::Ready(_) | Phase::Failed => {}
        }
        self.resets += 1;
        self.sh.set_state(CtrlrState::Resetting);
        self.sh.generation.fetch_add(1, Ordering::AcqRel);
        // Dropping the admin queue closes its connection.
        self.phase = Phase::Starting(Box::pin(bring_up(self.sh.clone())));
        Ok(())
    }

    /// [`TcpController::start_reset`]: a fabrics reset drops the
    /// connections at once (the commands they carried are handed back as
    /// aborted by the reset and submitted again).
    ///
    /// # Errors
    /// As [`TcpController::start_reset`].
    pub fn start_reset_drained(&mut self, _drain: Duration) -> Result<(), NvmeError> {
        self.start_reset()
    }

    /// Starts shutting down: CC.SHN is set (a normal shutdown), the queue
    /// pairs fail what they hold; [`TcpController::poll_shutdown`] ends it.
    pub fn start_shutdown(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        self.sh.set_state(CtrlrState::Removed);
        self.sh.generation.fetch_add(1, Ordering::AcqRel);
        if let Phase::Ready(mut q) = phase {
            let tag = q
                .start(
                    property_set(REG_CC, CC_ENABLED | CC_SHN_NORMAL),
                    Vec::new(),
                    false,
                )
                .ok();
            let deadline = Instant::now() + Duration::from_secs(1);
            self.phase = Phase::ShuttingDown(q, tag, deadline);
        }
    }

    /// Advances a shutdown; ready once the controller answered (or a second
    /// passed) and the connection is closed.
    pub fn poll_shutdown(&mut self) -> Poll<()> {
        if let Phase::ShuttingDown(q, tag, deadline) = &mut self.phase {
            q.poll();
            let answered = tag.is_none_or(|t| q.take(t).is_some());
            if !answered && !q.conn.is_dead() && Instant::now() < *deadline {
                return Poll::Pending;
            }
            q.conn.close("shut down");
            self.phase = Phase::Down;
        }
        if matches!(
            self.phase,
            Phase::Starting(_) | Phase::Ready(_) | Phase::Failed
        ) {
            self.start_shutdown();
            return self.poll_shutdown();
        }
        Poll::Ready(())
    }
}

impl Drop for TcpController {
    fn drop(&mut self) {
        self.sh.set_state(CtrlrState::Removed);
        self.sh.generation.fetch_add(1, Ordering::AcqRel);
    }
}
