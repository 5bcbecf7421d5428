//! The NVMe bdev module: attaches a controller through the driver — PCIe
//! through VFIO, or NVMe/TCP (`trtype tcp`: the driver's host, one
//! connection per queue) — and registers one bdev per active namespace,
//! named `<controller>n<nsid>`. Both transports go through the driver's
//! one interface ([`AnyController`], [`AnyQpair`]).
//! Each core's channel owns a queue pair polled by a poller on that core;
//! an admin poller on the attaching core (every millisecond) advances the
//! controller's control path: asynchronous events (a namespace resize
//! reaches the bdev as a Resize event, an added namespace registers a
//! bdev, a removed one unregisters it), timeouts, resets and removal.
//!
//! Nothing here waits on a reactor thread: bring-up, resets, admin
//! commands and shutdown are polled state machines or futures that sleep
//! on the reactor's timer between polls; the controller's lock is held
//! only for a non-waiting call and never by the I/O path.
//!
//! Recovery follows SPDK's `bdev_nvme` options ([`NvmeOptions`]): I/O a
//! reset took is submitted again (`bdev_retry_count`); commands past
//! `timeout_us` are aborted or the controller reset (`action_on_timeout`);
//! a controller whose reset failed is retried every `reconnect_delay_sec`,
//! fails its I/O fast after `fast_io_fail_timeout_sec` and is deleted
//! after `ctrlr_loss_timeout_sec`.

pub mod hotplug;
pub mod options;
pub mod rpc;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use nvme_driver::pci::Bdf;
use nvme_driver::tcp::{TcpController, TcpOptions};
use nvme_driver::{
    AdminClient, AnyController, AnyQpair, CommandError, Controller, ControllerOptions, CtrlrState,
    DataSeg, NsEvent, NvmeError, StatusKind, SubmitErrorKind,
};
use reactor::{PollStatus, Poller};
use serde_json::json;

pub use options::{
    NvmeOptions, Recovery, bdev_retry_count, options, set_bdev_retry_count, set_options,
};

use crate::{Bdev, BdevError, BdevOps, BdevProps, IoHandle, IoStatus, IoType, IoVec, MAX_IOV};

/// Queue depth of each core's queue pair.
const QPAIR_DEPTH: u32 = 256;
/// Completions reaped per poll.
const REAP_MAX: usize = 64;
/// Period of the admin poller and of waits for the control path.
const ADMIN_PERIOD: Duration = Duration::from_millis(1);
/// How long a requested reset (RPC, bdev RESET) lets the commands in the
/// controller's hands complete before it disables the controller.
const RESET_DRAIN: Duration = Duration::from_secs(2);

/// Where a controller whose reset failed stands (SPDK's reconnect logic).
#[derive(Debug, Default)]
struct Reconnect {
    /// When the first reset of this outage failed (reactor clock).
    failed_since: Option<Duration>,
    /// When the next reset is due.
    next_try: Option<Duration>,
}

/// How a controller is reached (SPDK's transport ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trid {
    /// A PCIe function bound to vfio-pci.
    Pcie(Bdf),
    /// An NVMe/TCP subsystem.
    Tcp {
        /// Address (as given: an IPv4 or IPv6 literal).
        traddr: String,
        /// Port.
        trsvcid: u16,
        /// `IPv4` or `IPv6`.
        adrfam: &'static str,
        /// Subsystem NQN.
        subnqn: String,
        /// Host NQN it connects as.
        hostnqn: String,
        /// Header digests asked for.
        hdgst: bool,
        /// Data digests asked for.
        ddgst: bool,
    },
}

impl Trid {
    /// SPDK's `trid` object.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Trid::Pcie(b) => json!({ "trtype": "PCIe", "traddr": b.to_string() }),
            Trid::Tcp {
                traddr,
                trsvcid,
                adrfam,
                subnqn,
                ..
            } => json!({
                "trtype": "TCP",
                "adrfam": adrfam,
                "traddr": traddr,
                "trsvcid": trsvcid.to_string(),
                "subnqn": subnqn,
            }),
        }
    }
}

/// An attached controller.
pub struct NvmeCtrlr {
    name: String,
    trid: Trid,
    /// Locked only for a call that does not wait, never across an await
    /// and never by the I/O path.
    ctrlr: Mutex<AnyController>,
    /// Admin commands by futures (PCIe only).
    admin: Option<AdminClient>,
    recovery: Recovery,
    reconnect: Mutex<Reconnect>,
    /// I/O submitted while the controller is failed fails at once (instead
    /// of waiting for a reconnect).
    fail_fast: AtomicBool,
    /// Set by `detach_controller` (or when the controller went): the admin
    /// poller unregisters itself (on its own core) at its next run.
    detached: AtomicBool,
}

static CONTROLLERS: Mutex<BTreeMap<String, Arc<NvmeCtrlr>>> = Mutex::new(BTreeMap::new());

fn controllers() -> MutexGuard<'static, BTreeMap<String, Arc<NvmeCtrlr>>> {
    CONTROLLERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn module_err(name: &str, what: &str, e: impl std::fmt::Display) -> BdevError {
    BdevError::Module {
        module: "nvme".into(),
        reason: format!("{name}: {what}: {e}"),
    }
}

/// Polls `f` every [`ADMIN_PERIOD`] on the reactor's timer until it is
/// ready.
async fn poll_until<T>(mut f: impl FnMut() -> Poll<T>) -> T {
    loop {
        if let Poll::Ready(v) = f() {
            return v;
        }
        reactor::sleep(ADMIN_PERIOD).await;
    }
}

impl NvmeCtrlr {
    fn lock(&self) -> MutexGuard<'_, AnyController> {
        self.ctrlr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PCI address (None for a fabrics controller).
    pub fn bdf(&self) -> Option<Bdf> {
        match &self.trid {
            Trid::Pcie(b) => Some(*b),
            Trid::Tcp { .. } => None,
        }
    }

    /// How it is reached.
    pub fn trid(&self) -> &Trid {
        &self.trid
    }

    /// The controller ID (Identify Controller CNTLID).
    pub fn cntlid(&self) -> u16 {
        self.lock().identify().cntlid
    }

    /// The recovery options it runs with.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Admin commands to it (futures; any core).
    ///
    /// # Errors
    /// [`BdevError::Module`] for an NVMe/TCP controller (its admin queue
    /// carries only its bring-up and keep-alives here).
    pub fn admin(&self) -> Result<&AdminClient, BdevError> {
        self.admin.as_ref().ok_or_else(|| {
            module_err(
                &self.name,
                "admin command",
                "not available on an NVMe/TCP controller",
            )
        })
    }

    /// Identify Controller's model, serial and firmware revision.
    pub fn identity(&self) -> (String, String, String) {
        let c = self.lock();
        let id = c.identify();
        (id.model.clone(), id.serial.clone(), id.firmware.clone())
    }

    /// Entries of the Error Information log page the controller keeps
    /// (ELPE + 1).
    pub fn error_log_entries(&self) -> usize {
        self.lock().identify().elpe as usize + 1
    }

    /// Resets the controller: new I/O waits in the layer, the commands in
    /// the controller's hands complete (for up to 2 s), then it is
    /// disabled and brought up again, admin and I/O queues re-created (a
    /// command still outstanding then completes as aborted by the reset and
    /// goes again while `bdev_retry_count` allows). Joins a reset already
    /// in progress (one at a time). Waits on the reactor's timer, never on
    /// the thread.
    ///
    /// # Errors
    /// [`BdevError::Module`] with the driver's reason.
    pub async fn reset(&self) -> Result<(), BdevError> {
        self.reset_with_drain(Some(RESET_DRAIN)).await
    }

    /// [`NvmeCtrlr::reset`] with the given drain time (None: the controller
    /// is disabled at once, taking the commands in its hands, as a reset
    /// for a timeout does).
    ///
    /// # Errors
    /// [`BdevError::Module`] with the driver's reason.
    pub async fn reset_with_drain(&self, drain: Option<Duration>) -> Result<(), BdevError> {
        let target = {
            let mut c = self.lock();
            match drain {
                Some(d) => c.start_reset_drained(d),
                None => c.start_reset(),
            }
            .map_err(|e| module_err(&self.name, "reset", e))?;
            c.resets()
        };
        poll_until(|| {
            let c = self.lock();
            if c.resets_done() < target {
                return Poll::Pending;
            }
            Poll::Ready(match c.state() {
                CtrlrState::Ready => Ok(()),
                s => Err(module_err(
                    &self.name,
                    "reset",
                    c.last_reset_error().unwrap_or(s.name()),
                )),
            })
        })
        .await
    }

    /// SPDK's name for the controller's state (`enabled`, `resetting`,
    /// `reconnect_is_delayed`, `failed`, `deleting`).
    pub fn state_name(&self) -> &'static str {
        if self.detached.load(Ordering::Acquire) {
            return "deleting";
        }
        let st = self.lock().state();
        match st {
            CtrlrState::Ready => "enabled",
            CtrlrState::Initializing | CtrlrState::Resetting => "resetting",
            CtrlrState::Failed
                if self
                    .reconnect
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next_try
                    .is_some() =>
            {
                "reconnect_is_delayed"
            }
            CtrlrState::Failed => "failed",
            CtrlrState::Removed => "deleting",
        }
    }

    /// `bdev_nvme_get_controllers`' entry for it.
    pub fn info_json(&self) -> serde_json::Value {
        let cntlid = self.cntlid();
        let hostnqn = match &self.trid {
            Trid::Tcp { hostnqn, .. } => hostnqn.as_str(),
            Trid::Pcie(_) => "",
        };
        json!({
            "name": self.name,
            "ctrlrs": [{
                "state": self.state_name(),
                "trid": self.trid.json(),
                "cntlid": cntlid,
                "host": { "nqn": hostnqn, "addr": "", "svcid": "" },
            }],
        })
    }

    /// The admin poller's work after a reset failed: another reset every
    /// `reconnect_delay_sec`; I/O fails fast once `fast_io_fail_timeout_sec`
    /// passed (at once when no reconnect is configured); the controller is
    /// deleted once `ctrlr_loss_timeout_sec` passed. Returns whether the
    /// controller is to be deleted.
    fn after_failure(&self, c: &mut AnyController) -> bool {
        let now = reactor::now();
        let r = self.recovery;
        let mut rc = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
        if c.state() != CtrlrState::Failed {
            if c.state() == CtrlrState::Ready {
                if rc.failed_since.is_some() {
                    log::info!("nvme {}: reconnected", self.name);
                }
                *rc = Reconnect::default();
                self.fail_fast.store(false, Ordering::Release);
            }
            return false;
        }
        if r.reconnect_delay_sec == 0 {
            // SPDK's default: no reconnects; the controller stays failed
            // (its I/O fails) until a reset succeeds.
            self.fail_fast.store(true, Ordering::Release);
            return false;
        }
        let since = *rc.failed_since.get_or_insert(now);
        let elapsed = now.saturating_sub(since);
        if r.ctrlr_loss_timeout_sec > 0
            && elapsed >= Duration::from_secs(r.ctrlr_loss_timeout_sec as u64)
        {
            log::warn!(
                "nvme {}: not back after ctrlr_loss_timeout_sec ({} s): deleting it",
                self.name,
                r.ctrlr_loss_timeout_sec
            );
            return true;
        }
        if r.fast_io_fail_timeout_sec > 0
            && elapsed >= Duration::from_secs(r.fast_io_fail_timeout_sec as u64)
            && !self.fail_fast.swap(true, Ordering::AcqRel)
        {
            log::warn!(
                "nvme {}: fast_io_fail_timeout_sec ({} s) passed: failing its I/O",
                self.name,
                r.fast_io_fail_timeout_sec
            );
        }
        let due = *rc
            .next_try
            .get_or_insert(now + Duration::from_secs(r.reconnect_delay_sec as u64));
        if now >= due {
            rc.next_try = None;
            log::info!("nvme {}: reconnecting", self.name);
            if let Err(e) = c.start_reset() {
                log::warn!("nvme {}: reconnect: {e}", self.name);
            }
        }
        false
    }
}

struct NvmeNs {
    ctrlr: Arc<NvmeCtrlr>,
    nsid: u32,
    /// Data goes by address (NVMe/TCP), not by PRPs.
    tcp: bool,
    supports_compare: bool,
    supports_write_zeroes: bool,
    supports_dsm: bool,
    model: String,
    serial: String,
}

/// Per-core state: this core's queue pair and its poller.
pub struct NvmeChannel {
    qpair: Rc<RefCell<AnyQpair<IoHandle>>>,
    poller: Poller,
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        self.poller.unregister();
        // Deliver whatever completed, without waiting; a command still in
        // the controller's hands is failed to its submitter when the queue
        // pair goes (its handle fails on drop), and the queue pair's rings
        // stay with the controller until it has deleted the queue.
        if let Ok(mut q) = self.qpair.try_borrow_mut() {
            q.process_completions(QPAIR_DEPTH as usize, |h, r| h.complete(status_of(r)));
        }
    }
}

/// Ends `h` with the controller's answer `r`: an I/O the controller lost
/// to a reset goes back to the layer for another try while
/// `bdev_retry_count` allows.
fn finish_io(h: IoHandle, r: Result<u32, CommandError>) {
    if r == Err(CommandError::AbortedByReset) {
        let limit = bdev_retry_count();
        if limit < 0 || h.io().retries() < limit as u32 {
            return h.retry();
        }
    }
    h.complete(status_of(r));
}

fn status_of(r: Result<u32, CommandError>) -> IoStatus {
    match r {
        Ok(_) => IoStatus::Success,
        Err(CommandError::Status(s)) if s.kind() == StatusKind::CompareFailure => {
            IoStatus::Miscompare
        }
        Err(CommandError::AbortedByReset) => IoStatus::Aborted,
        Err(e) => {
            log::warn!("nvme I/O failed: {e}");
            IoStatus::Failed
        }
    }
}

impl BdevOps for NvmeNs {
    type Channel = NvmeChannel;

    fn create_channel(&self, core: reactor::CoreId) -> Result<NvmeChannel, String> {
        // The queue is created on the controller by the poller's first
        // polls; I/O before that waits in the layer (refused as NoMem).
        let qp: AnyQpair<IoHandle> = self
            .ctrlr
            .lock()
            .create_io_qpair(QPAIR_DEPTH)
            .map_err(|e| e.to_string())?;
        let qpair = Rc::new(RefCell::new(qp));
        let q = Rc::downgrade(&qpair);
        let done: RefCell<Vec<(IoHandle, Result<u32, CommandError>)>> =
            RefCell::new(Vec::with_capacity(QPAIR_DEPTH as usize + REAP_MAX));
        let poller = reactor::register_poller(
            format!("nvme_{}n{}_core{core}", self.ctrlr.name, self.nsid),
            move || {
                let Some(q) = q.upgrade() else {
                    return PollStatus::Idle;
                };
                let Ok(mut q) = q.try_borrow_mut() else {
                    return PollStatus::Idle;
                };
                // Handles are completed after the borrow ends: a completion
                // callback may submit to this queue pair again. A reset or
                // a removal hands back every outstanding command at once
                // (up to the queue's depth, more than one poll's reap), so
                // the list has room for the whole queue, made once.
                let mut done = done.borrow_mut();
                q.process_completions(REAP_MAX, |h, r| done.push((h, r)));
                let connecting = !q.is_connected();
                drop(q);
                let n = done.len();
                if connecting && n == 0 {
                    return PollStatus::Idle;
                }
                for (h, r) in done.drain(..) {
                    finish_io(h, r);
                }
                if n > 0 {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            },
        );
        Ok(NvmeChannel { qpair, poller })
    }

    fn submit(&self, ch: &NvmeChannel, io: IoHandle) {
        let r = io.io();
        let (ty, lba, n, fua) = (r.io_type(), r.offset_blocks(), r.num_blocks(), r.fua());
        let mut segs = [DataSeg {
            ptr: std::ptr::null_mut(),
            iova: 0,
            len: 0,
        }; MAX_IOV];
        let cnt = r.iovs().len();
        for (s, v) in segs.iter_mut().zip(r.iovs()) {
            *s = DataSeg {
                ptr: v.ptr,
                iova: v.iova,
                len: v.len,
            };
        }
        let Ok(mut q) = ch.qpair.try_borrow_mut() else {
            return io.complete(IoStatus::NoMem);
        };
        let nsid = self.nsid;
        let res = match ty {
            // SAFETY: the buffers belong to the I/O, which the queue pair
            // holds as the command's context until it completes; the layer
            // touches them only after that.
            IoType::Read => unsafe { q.read(nsid, lba, n, &segs[..cnt], io) },
            // SAFETY: as for the read.
            IoType::Write => unsafe { q.write(nsid, lba, n, &segs[..cnt], fua, io) },
            // SAFETY: as for the read.
            IoType::Compare => unsafe { q.compare(nsid, lba, n, &segs[..cnt], io) },
            IoType::Flush => q.flush(nsid, io),
            IoType::WriteZeroes => q.write_zeroes(nsid, lba, n, false, io),
            IoType::Unmap => {
                // One range per 2^32 - 1 blocks, 256 ranges per command.
                let mut ranges = [(0u64, 0u32); 256];
                let (mut at, mut left, mut k) = (lba, n, 0);
                while left > 0 && k < 256 {
                    let len = left.min(u32::MAX as u64);
                    ranges[k] = (at, len as u32);
                    at += len;
                    left -= len;
                    k += 1;
                }
                if left > 0 {
                    drop(q);
                    log::warn!("unmap of {n} blocks is larger than one command carries");
                    return io_fail(io);
                }
                q.deallocate(nsid, &ranges[..k], io)
            }
            IoType::Reset => {
                drop(q);
                // The layer has frozen every channel of this bdev and runs
                // one reset at a time; the controller's other namespaces'
                // I/O completes as aborted by the reset too (SPDK's
                // bdev_nvme resets the controller as well). The reset runs
                // as a task; the I/O completes when it ends.
                let c = self.ctrlr.clone();
                drop(reactor::spawn(async move {
                    let st = match c.reset().await {
                        Ok(()) => IoStatus::Success,
                        Err(e) => {
                            log::warn!("{e}");
                            IoStatus::Failed
                        }
                    };
                    io.complete(st);
                }));
                return;
            }
            IoType::Zcopy | IoType::SeekData | IoType::SeekHole | IoType::Copy | IoType::Abort => {
                drop(q);
                return io.complete(IoStatus::NotSupported);
            }
        };
        drop(q);
        if let Err(e) = res {
            let st = match e.kind {
                SubmitErrorKind::QueueFull | SubmitErrorKind::Resetting => IoStatus::NoMem,
                // A reset failed: the I/O waits for a reconnect unless the
                // options say to fail it (see `NvmeCtrlr::after_failure`).
                SubmitErrorKind::Failed if !self.ctrlr.fail_fast.load(Ordering::Acquire) => {
                    IoStatus::NoMem
                }
                // As the I/O the removal took from the controller.
                SubmitErrorKind::Failed | SubmitErrorKind::Removed => IoStatus::Failed,
                other => {
                    log::warn!("nvme {}n{nsid}: I/O refused: {other}", self.ctrlr.name);
                    IoStatus::Failed
                }
            };
            e.ctx.complete(st);
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        match ty {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Compare => self.supports_compare,
            IoType::WriteZeroes => self.supports_write_zeroes,
            IoType::Unmap => self.supports_dsm,
            IoType::Zcopy | IoType::SeekData | IoType::SeekHole | IoType::Copy | IoType::Abort => {
                false
            }
        }
    }

    fn accepts_iovs(&self, iovs: &[IoVec]) -> bool {
        if self.tcp {
            // Copied to and from the socket: any layout.
            return true;
        }
        let mut segs = [(0u64, 0usize); MAX_IOV];
        for (s, v) in segs.iter_mut().zip(iovs) {
            *s = (v.iova, v.len);
        }
        // Rules only; the length limit is the layer's split (max transfer).
        nvme_driver::prp::validate(&segs[..iovs.len()], 4096).is_ok()
    }

    fn dump_info_json(&self) -> serde_json::Value {
        let mut v = json!({ "nvme": [{
            "trid": self.ctrlr.trid.json(),
            "ctrlr_data": { "model_number": self.model, "serial_number": self.serial },
            "ns_data": { "id": self.nsid },
        }]});
        if let Some(b) = self.ctrlr.bdf() {
            v["nvme"][0]["pci_address"] = json!(b.to_string());
        }
        v
    }
}

fn io_fail(io: IoHandle) {
    io.complete(IoStatus::Failed)
}

fn register_ns(c: &Arc<NvmeCtrlr>, ns: &nvme_driver::Namespace) -> Result<Bdev, BdevError> {
    let ctrlr = c.lock();
    let id = ctrlr.identify();
    let name = format!("{}n{}", c.name, ns.nsid);
    // Device data: an LBA format the layer cannot use is an error naming
    // it, not a division by zero.
    if ns.block_size < 512 || !ns.block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "namespace",
            format!(
                "{}: namespace {} reports an LBA data size of {} bytes (Identify Namespace LBAF)",
                c.name, ns.nsid, ns.block_size
            ),
        ));
    }
    let mut props = BdevProps::new(&name, "NVMe disk", ns.block_size, ns.blocks);
    props.required_alignment = 4;
    props.max_transfer_blocks = Some((ctrlr.max_transfer() / ns.block_size as usize).max(1) as u64);
    props.write_cache = id.has_volatile_write_cache();
    props.uuid = Some(namespace_uuid(ns, &id.serial));
    let ops = NvmeNs {
        ctrlr: c.clone(),
        nsid: ns.nsid,
        tcp: matches!(c.trid, Trid::Tcp { .. }),
        supports_compare: id.supports_compare(),
        supports_write_zeroes: id.supports_write_zeroes(),
        supports_dsm: id.supports_dsm(),
        model: id.model.clone(),
        serial: id.serial.clone(),
    };
    drop(ctrlr);
    crate::register("nvme", props, ops)
}

/// Attaches the PCIe controller at `traddr` (bound to vfio-pci) as `name`
/// and registers a bdev per namespace; returns their names. Must run on a
/// reactor: the admin poller lives on the calling core; bring-up is polled
/// on the reactor's timer. DMA goes to the layer's memory
/// ([`crate::set_memory`] with hugepage memory).
///
/// # Errors
/// [`BdevError::Exists`] for a taken name, [`BdevError::Invalid`] for a
/// malformed address, [`BdevError::Module`] when the controller cannot be
/// opened or brought up (with the driver's reason; nothing is left
/// registered, so a later attach may succeed).
pub async fn attach_controller(
    name: &str,
    traddr: &str,
    opts: ControllerOptions,
    recovery: Option<Recovery>,
) -> Result<Vec<String>, BdevError> {
    reactor::current_core().ok_or(BdevError::NotOnReactor("bdev_nvme_attach_controller"))?;
    if controllers().contains_key(name) {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let bdf: Bdf = traddr
        .parse()
        .map_err(|e: nvme_driver::pci::BdfError| BdevError::invalid("traddr", e.to_string()))?;
    if controllers().values().any(|c| c.bdf() == Some(bdf)) {
        return Err(BdevError::Exists(format!("controller at {bdf}")));
    }
    let mut starting = Controller::open_start(bdf, &crate::memory(), opts)
        .map_err(|e| module_err(name, "attach", e))?;
    let ctrlr = poll_until(|| starting.poll())
        .await
        .map_err(|e| module_err(name, "attach", e))?;
    attach_with(
        name,
        bdf,
        ctrlr,
        recovery.unwrap_or_else(|| options().recovery()),
    )
}

/// What `bdev_nvme_attach_controller -t tcp` asks for.
#[derive(Clone, Debug)]
pub struct TcpAttach {
    /// The target's address (an IPv4 or IPv6 literal).
    pub traddr: String,
    /// Its port.
    pub trsvcid: u16,
    /// The subsystem.
    pub subnqn: String,
    /// This host's NQN (the process's default when None).
    pub hostnqn: Option<String>,
    /// Header digests.
    pub hdgst: bool,
    /// Data digests.
    pub ddgst: bool,
    /// I/O queues to ask for.
    pub io_queues: u16,
    /// How long connecting may take (None: the admin timeout, 10 s by
    /// default).
    pub connect_timeout: Option<Duration>,
}

/// This process's host identifier (random, made once) and the host NQN
/// SPDK derives from it (`nqn.2014-08.org.nvmexpress:uuid:<hostid>`).
pub fn default_host() -> ([u8; 16], String) {
    static HOST: std::sync::OnceLock<([u8; 16], String)> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let mut id = [0u8; 16];
        // SAFETY: getrandom writes at most `id.len()` bytes into `id`.
        let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
        if n != id.len() as isize {
            // No entropy source: the time and pid still make it unique
            // on this machine.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            id[..8].copy_from_slice(&(t as u64).to_le_bytes());
            id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        }
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        let nqn = format!(
            "nqn.2014-08.org.nvmexpress:uuid:{}",
            crate::registry::format_uuid(&id)
        );
        (id, nqn)
    })
    .clone()
}

/// Connects to the NVMe/TCP subsystem `t` as controller `name` (with the
/// given reconnect policy, or the module's) and registers a bdev per
/// namespace; returns their names. Must run on a reactor: the connection
/// is polled on the reactor's timer, the admin poller lives on this core.
///
/// # Errors
/// [`BdevError::Exists`] for a taken name or a subsystem already attached
/// at that address; [`BdevError::Invalid`] for a malformed address;
/// [`BdevError::Module`] when the connection or the bring-up fails (with
/// the reason: refused, no such subsystem, host not allowed, timed out).
pub async fn attach_tcp_controller(
    name: &str,
    t: TcpAttach,
    recovery: Option<Recovery>,
) -> Result<Vec<String>, BdevError> {
    reactor::current_core().ok_or(BdevError::NotOnReactor("bdev_nvme_attach_controller"))?;
    if controllers().contains_key(name) {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let ip: std::net::IpAddr = t.traddr.parse().map_err(|_| {
        BdevError::invalid(
            "traddr",
            format!("{:?} is not an IPv4 or IPv6 address", t.traddr),
        )
    })?;
    if t.trsvcid == 0 {
        return Err(BdevError::invalid("trsvcid", "port 0"));
    }
    if t.subnqn.is_empty() || t.subnqn.len() > 223 {
        return Err(BdevError::invalid(
            "subnqn",
            format!("{:?}: 1 to 223 bytes", t.subnqn),
        ));
    }
    let (hostid, default_nqn) = default_host();
    let hostnqn = t.hostnqn.clone().unwrap_or(default_nqn);
    if hostnqn.is_empty() || hostnqn.len() > 223 {
        return Err(BdevError::invalid(
            "hostnqn",
            format!("{hostnqn:?}: 1 to 223 bytes"),
        ));
    }
    let trid = Trid::Tcp {
        traddr: t.traddr.clone(),
        trsvcid: t.trsvcid,
        adrfam: if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        subnqn: t.subnqn.clone(),
        hostnqn: hostnqn.clone(),
        hdgst: t.hdgst,
        ddgst: t.ddgst,
    };
    let same = |c: &Arc<NvmeCtrlr>| match (&c.trid, &trid) {
        (
            Trid::Tcp {
                traddr: a,
                trsvcid: p,
                subnqn: s,
                hostnqn: h,
                ..
            },
            Trid::Tcp {
                traddr: a2,
                trsvcid: p2,
                subnqn: s2,
                hostnqn: h2,
                ..
            },
        ) => a == a2 && p == p2 && s == s2 && h == h2,
        _ => false,
    };
    if let Some(c) = controllers().values().find(|c| same(c)) {
        return Err(BdevError::Exists(format!(
            "{} at {}:{} (as controller {})",
            t.subnqn, t.traddr, t.trsvcid, c.name
        )));
    }
    let o = options();
    let admin_timeout = o.admin_timeout().unwrap_or(Duration::from_secs(10));
    let opts = TcpOptions {
        addr: std::net::SocketAddr::new(ip, t.trsvcid),
        subnqn: t.subnqn.clone(),
        hostnqn,
        hostid,
        hdgst: t.hdgst,
        ddgst: t.ddgst,
        io_queues: t.io_queues.max(1),
        keep_alive: Duration::from_millis(u64::from(o.keep_alive_timeout_ms)),
        admin_timeout: t.connect_timeout.unwrap_or(admin_timeout),
    };
    let mut ctrlr = TcpController::connect(name, opts);
    let up = poll_until(|| {
        if let Err(e) = ctrlr.poll_admin() {
            return Poll::Ready(Err(e));
        }
        match ctrlr.state() {
            CtrlrState::Ready => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    if let Err(e) = up {
        ctrlr.start_shutdown();
        poll_until(|| ctrlr.poll_shutdown()).await;
        // As SPDK answers: nothing reachable there is ENODEV, a controller
        // that answered and failed (Connect refused, timed out) EIO.
        return Err(match e {
            NvmeError::Unreachable { .. } => BdevError::Os {
                what: format!("{name}: attach: {e}"),
                errno: libc::ENODEV,
            },
            e => module_err(name, "attach", e),
        });
    }
    attach_any(
        name,
        trid,
        AnyController::Tcp(ctrlr),
        recovery.unwrap_or_else(|| o.recovery()),
    )
}

/// Attaches a controller already brought up (through VFIO by
/// [`attach_controller`], or a device model in tests) as `name`, with `bdf`
/// as its address, with the global recovery options; registers its
/// namespaces' bdevs and returns their names. Must run on a reactor: the
/// admin poller lives on the calling core.
///
/// # Errors
/// [`BdevError::Exists`] for a taken name.
pub fn attach(name: &str, bdf: Bdf, ctrlr: Controller) -> Result<Vec<String>, BdevError> {
    attach_with(name, bdf, ctrlr, options().recovery())
}

/// [`attach`] with this controller's own reconnect policy (what
/// `bdev_nvme_attach_controller`'s `ctrlr_loss_timeout_sec`,
/// `reconnect_delay_sec` and `fast_io_fail_timeout_sec` set).
///
/// # Errors
/// [`BdevError::Exists`] for a taken name.
pub fn attach_with(
    name: &str,
    bdf: Bdf,
    ctrlr: Controller,
    recovery: Recovery,
) -> Result<Vec<String>, BdevError> {
    attach_any(name, Trid::Pcie(bdf), AnyController::Pcie(ctrlr), recovery)
}

/// Registers controller `ctrlr` (up) as `name`: its admin poller on this
/// core, a bdev per namespace.
fn attach_any(
    name: &str,
    trid: Trid,
    mut ctrlr: AnyController,
    recovery: Recovery,
) -> Result<Vec<String>, BdevError> {
    reactor::current_core().ok_or(BdevError::NotOnReactor("bdev_nvme_attach_controller"))?;
    if controllers().contains_key(name) {
        // Shut the controller down without waiting here (dropping it would
        // wait for the shutdown).
        ctrlr.start_shutdown();
        drop(reactor::spawn(async move {
            poll_until(|| ctrlr.poll_shutdown()).await;
        }));
        return Err(BdevError::Exists(name.to_owned()));
    }
    let o = options();
    ctrlr.set_io_timeout(o.io_timeout(), o.action_on_timeout);
    if let Some(t) = o.admin_timeout() {
        ctrlr.set_admin_timeout(t);
    }
    let namespaces: Vec<nvme_driver::Namespace> = ctrlr.namespaces();
    let ctrlr_name = name.to_owned();
    ctrlr.set_ns_event_handler(Box::new(move |ev| on_ns_event(&ctrlr_name, ev)));
    let c = Arc::new(NvmeCtrlr {
        name: name.to_owned(),
        trid,
        admin: ctrlr.admin(),
        ctrlr: Mutex::new(ctrlr),
        recovery,
        reconnect: Mutex::new(Reconnect::default()),
        fail_fast: AtomicBool::new(false),
        detached: AtomicBool::new(false),
    });
    controllers().insert(name.to_owned(), c.clone());
    let weak = Arc::downgrade(&c);
    // Left registered (dropping the handle does not stop it) until it sees
    // the controller detached.
    drop(reactor::register_timed_poller(
        format!("nvme_admin_{name}"),
        ADMIN_PERIOD,
        move || {
            let Some(c) = weak
                .upgrade()
                .filter(|c| !c.detached.load(Ordering::Acquire))
            else {
                if let Some(p) = reactor::current_poller() {
                    p.unregister();
                }
                return PollStatus::Idle;
            };
            // Nothing in here waits: the poll advances what is in progress
            // and returns. Namespace events raised inside are handed to
            // tasks (see `on_ns_event`).
            let (r, delete) = {
                let mut g = c.lock();
                let r = g.poll_admin();
                let delete = c.after_failure(&mut g);
                (r, delete)
            };
            let gone = matches!(r, Err(NvmeError::Removed { .. }));
            match r {
                Err(NvmeError::Removed { .. }) => {}
                Err(e) => log::warn!("nvme {}: {e}", c.name),
                Ok(()) => {}
            }
            if (gone || delete) && !c.detached.swap(true, Ordering::AcqRel) {
                // Surprise removal (registers read all-ones), or the
                // controller stayed failed past ctrlr_loss_timeout_sec: its
                // queue pairs fail their I/O; its bdevs go (Remove to every
                // opener), then the controller.
                log::warn!("nvme {}: controller gone; unregistering its bdevs", c.name);
                c.fail_fast.store(true, Ordering::Release);
                if delete {
                    c.lock().start_shutdown();
                }
                let name = c.name.clone();
                drop(reactor::spawn(async move { remove_gone(&name).await }));
            }
            PollStatus::Idle
        },
    ));
    let mut names = Vec::new();
    for ns in &namespaces {
        match register_ns(&c, ns) {
            Ok(b) => names.push(b.name().to_owned()),
            Err(e) => log::error!("nvme {name}: namespace {}: {e}", ns.nsid),
        }
    }
    Ok(names)
}

/// Namespace events from the admin poller (called with the controller
/// locked): sizes follow at once; additions and removals are done in a task
/// after the lock is released.
fn on_ns_event(ctrlr: &str, ev: &NsEvent) {
    match ev {
        NsEvent::Resized { ns, .. } => {
            if let Some(b) = crate::get(&format!("{ctrlr}n{}", ns.nsid)) {
                b.notify_blockcnt_change(ns.blocks);
            }
        }
        NsEvent::Removed(nsid) => {
            let name = format!("{ctrlr}n{nsid}");
            log::info!("nvme {ctrlr}: namespace {nsid} went away; unregistering {name}");
            drop(reactor::spawn(async move {
                if let Err(e) = crate::unregister(&name).await {
                    log::warn!("{name}: unregister after namespace removal: {e}");
                }
            }));
        }
        NsEvent::Added(ns) => {
            let (ctrlr, ns) = (ctrlr.to_owned(), ns.clone());
            log::info!("nvme {ctrlr}: namespace {} appeared", ns.nsid);
            drop(reactor::spawn(async move {
                let c = controller(&ctrlr);
                if let Some(c) = c
                    && let Err(e) = register_ns(&c, &ns)
                {
                    log::error!("nvme {ctrlr}: new namespace {}: {e}", ns.nsid);
                }
            }));
        }
    }
}

/// Detaches controller `name`: unregisters its bdevs (waiting for their
/// openers), stops its admin poller and shuts the controller down (polled
/// on the reactor's timer, bounded by CAP.TO).
///
/// # Errors
/// [`BdevError::NotFound`] when no controller has that name.
pub async fn detach_controller(name: &str) -> Result<(), BdevError> {
    let c = controllers()
        .get(name)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    for b in bdevs_of(name) {
        crate::unregister(&b).await?;
    }
    c.detached.store(true, Ordering::Release);
    controllers().remove(name);
    // Detached by request: hotplug does not attach it again.
    if let Some(bdf) = c.bdf() {
        hotplug::skip(bdf);
    }
    c.lock().start_shutdown();
    poll_until(|| c.lock().poll_shutdown()).await;
    Ok(())
}

/// The names of controller `name`'s bdevs (`<name>n<nsid>`).
fn bdevs_of(name: &str) -> Vec<String> {
    let prefix = format!("{name}n");
    crate::list()
        .into_iter()
        .filter(|b| {
            b.module() == "nvme"
                && b.name()
                    .strip_prefix(&prefix)
                    .is_some_and(|r| r.parse::<u32>().is_ok())
        })
        .map(|b| b.name().to_owned())
        .collect()
}

/// A controller that went away by itself (or was given up on): its bdevs
/// are unregistered (their openers get Remove and close), then it leaves
/// the list.
async fn remove_gone(name: &str) {
    for b in bdevs_of(name) {
        if let Err(e) = crate::unregister(&b).await {
            log::warn!("nvme {name}: unregistering {b} after removal: {e}");
        }
    }
    let c = controllers().remove(name);
    if let Some(c) = c {
        poll_until(|| c.lock().poll_shutdown()).await;
    }
    log::info!("nvme {name}: removed");
}

/// The attached controller `name`.
pub fn controller(name: &str) -> Option<Arc<NvmeCtrlr>> {
    controllers().get(name).cloned()
}

/// The attached controllers.
pub fn controllers_list() -> Vec<Arc<NvmeCtrlr>> {
    controllers().values().cloned().collect()
}

/// A namespace's bdev UUID, stable across restarts: its UUID (from the
/// Namespace Identification Descriptors), else its NGUID, else one derived
/// from the controller's serial number and the namespace id (as SPDK's
/// `generate_uuids` does, with a hash of its own: an RFC 9562 version 8
/// UUID).
pub(crate) fn namespace_uuid(ns: &nvme_driver::Namespace, serial: &str) -> String {
    let bytes = if ns.uuid != [0; 16] {
        ns.uuid
    } else if ns.nguid != [0; 16] {
        ns.nguid
    } else {
        // FNV-1a 64 over "serial:nsid", twice with different offsets.
        let key = format!("{}:{}", serial.trim(), ns.nsid);
        let fnv = |basis: u64| {
            key.bytes().fold(basis, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
        b[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        b
    };
    crate::registry::format_uuid(&bytes)
}

#[cfg(test)]
mod uuid_tests {
    use super::namespace_uuid;

    #[test]
    fn uuid_then_nguid_then_derived() {
        let mut ns = nvme_driver::Namespace {
            nsid: 1,
            block_size: 512,
            blocks: 8,
            metadata_size: 0,
            nguid: [0; 16],
            eui64: [0; 8],
            uuid: [0; 16],
            deallocate_reads_zeroes: false,
        };
        let derived = namespace_uuid(&ns, "SN1 ");
        assert_eq!(
            derived,
            namespace_uuid(&ns, "SN1"),
            "stable, serial trimmed"
        );
        assert_eq!(&derived[14..15], "8", "version 8: {derived}");
        assert!("89ab".contains(&derived[19..20]), "RFC variant: {derived}");
        assert_ne!(derived, namespace_uuid(&ns, "SN2"));
        ns.nsid = 2;
        assert_ne!(derived, namespace_uuid(&ns, "SN1"));
        ns.nguid = [0x11; 16];
        assert_eq!(
            namespace_uuid(&ns, "SN1"),
            "11111111-1111-1111-1111-111111111111"
        );
        ns.uuid = [0xab; 16];
        assert_eq!(
            namespace_uuid(&ns, "SN1"),
            "abababab-abab-abab-abab-abababababab"
        );
    }
}
