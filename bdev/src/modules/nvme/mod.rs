//! The NVMe bdev module: attaches a PCIe controller through the driver and
//! registers one bdev per active namespace, named `<controller>n<nsid>`.
//! Each core's channel owns a queue pair polled by a poller on that core;
//! an admin poller on the attaching core reaps asynchronous events, so a
//! namespace resize reaches the bdev (and everything stacked on it) as a
//! Resize event, and a removed namespace unregisters its bdev.

pub mod rpc;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nvme_driver::pci::Bdf;
use nvme_driver::{
    CommandError, Controller, ControllerOptions, IoQpair, NsEvent, NvmeError, StatusKind,
    SubmitErrorKind,
};
use reactor::{PollStatus, Poller};
use serde_json::json;

use crate::{Bdev, BdevError, BdevOps, BdevProps, IoHandle, IoStatus, IoType, IoVec, MAX_IOV};

/// Queue depth of each core's queue pair.
const QPAIR_DEPTH: u32 = 256;
/// Completions reaped per poll.
const REAP_MAX: usize = 64;

/// An attached controller.
pub struct NvmeCtrlr {
    name: String,
    bdf: Bdf,
    ctrlr: Mutex<Controller>,
    /// Set by `detach_controller`: the admin poller unregisters itself
    /// (on its own core) at its next run.
    detached: AtomicBool,
}

static CONTROLLERS: Mutex<BTreeMap<String, Arc<NvmeCtrlr>>> = Mutex::new(BTreeMap::new());

fn controllers() -> MutexGuard<'static, BTreeMap<String, Arc<NvmeCtrlr>>> {
    CONTROLLERS.lock().unwrap_or_else(|p| p.into_inner())
}

impl NvmeCtrlr {
    fn lock(&self) -> MutexGuard<'_, Controller> {
        self.ctrlr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PCI address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The controller ID (Identify Controller CNTLID).
    pub fn cntlid(&self) -> u16 {
        self.lock().identify().cntlid
    }

    /// Resets the controller (disable, enable, admin and I/O queues
    /// re-created; commands outstanding then complete as aborted by the
    /// reset on their queue pair's next poll).
    ///
    /// # Errors
    /// [`BdevError::Module`] with the driver's reason.
    pub fn reset(&self) -> Result<(), BdevError> {
        self.lock().reset().map_err(|e| BdevError::Module {
            module: "nvme".into(),
            reason: format!("{}: reset: {e}", self.name),
        })
    }

    /// `bdev_nvme_get_controllers`' entry for it.
    pub fn info_json(&self) -> serde_json::Value {
        let c = self.lock();
        let id = c.identify();
        json!({
            "name": self.name,
            "ctrlrs": [{
                "state": c.state().name(),
                "trid": { "trtype": "PCIe", "traddr": self.bdf.to_string() },
                "cntlid": id.cntlid,
                "host": { "nqn": "", "addr": "", "svcid": "" },
            }],
        })
    }
}

struct NvmeNs {
    ctrlr: Arc<NvmeCtrlr>,
    nsid: u32,
    supports_compare: bool,
    supports_write_zeroes: bool,
    supports_dsm: bool,
    model: String,
    serial: String,
}

/// Per-core state: this core's queue pair and its poller.
pub struct NvmeChannel {
    qpair: Rc<RefCell<IoQpair<IoHandle>>>,
    poller: Poller,
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        self.poller.unregister();
        // Deliver whatever completed; the rest fails when the queue pair goes.
        let mut q = self.qpair.borrow_mut();
        let start = std::time::Instant::now();
        while q.outstanding() > 0 && start.elapsed() < Duration::from_secs(5) {
            q.process_completions(REAP_MAX, |h, r| h.complete(status_of(r)));
        }
    }
}

/// SPDK's `bdev_retry_count`: how many times an I/O the controller lost
/// (aborted by a reset) is submitted again before it fails ABORTED to its
/// submitter; -1: without limit. SPDK's default, 3.
static BDEV_RETRY_COUNT: AtomicI32 = AtomicI32::new(3);

/// Sets `bdev_retry_count` (see [`bdev_retry_count`]).
///
/// # Errors
/// [`BdevError::Invalid`] below -1.
pub fn set_bdev_retry_count(n: i32) -> Result<(), BdevError> {
    if n < -1 {
        return Err(BdevError::invalid(
            "bdev_retry_count",
            format!("{n}: -1 (no limit) or a count"),
        ));
    }
    BDEV_RETRY_COUNT.store(n, Ordering::Relaxed);
    Ok(())
}

/// How many times an I/O aborted by a controller reset is submitted again
/// (-1: without limit).
pub fn bdev_retry_count() -> i32 {
    BDEV_RETRY_COUNT.load(Ordering::Relaxed)
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
        let qp: IoQpair<IoHandle> = self
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
                drop(q);
                let n = done.len();
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
        let mut segs = [(0u64, 0usize); MAX_IOV];
        let cnt = r.iovs().len();
        for (s, v) in segs.iter_mut().zip(r.iovs()) {
            *s = (v.iova, v.len);
        }
        let Ok(mut q) = ch.qpair.try_borrow_mut() else {
            return io.complete(IoStatus::NoMem);
        };
        let nsid = self.nsid;
        let res = match ty {
            IoType::Read => q.read(nsid, lba, n, &segs[..cnt], io),
            IoType::Write => q.write(nsid, lba, n, &segs[..cnt], fua, io),
            IoType::Compare => q.compare(nsid, lba, n, &segs[..cnt], io),
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
                // bdev_nvme resets the controller as well).
                let st = match self.ctrlr.reset() {
                    Ok(()) => IoStatus::Success,
                    Err(e) => {
                        log::warn!("{e}");
                        IoStatus::Failed
                    }
                };
                return io.complete(st);
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
                SubmitErrorKind::Removed => IoStatus::Aborted,
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
        let mut segs = [(0u64, 0usize); MAX_IOV];
        for (s, v) in segs.iter_mut().zip(iovs) {
            *s = (v.iova, v.len);
        }
        // Rules only; the length limit is the layer's split (max transfer).
        nvme_driver::prp::validate(&segs[..iovs.len()], 4096).is_ok()
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "nvme": [{
            "pci_address": self.ctrlr.bdf.to_string(),
            "trid": { "trtype": "PCIe", "traddr": self.ctrlr.bdf.to_string() },
            "ctrlr_data": { "model_number": self.model, "serial_number": self.serial },
            "ns_data": { "id": self.nsid },
        }]})
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
    if ns.nguid != [0; 16] {
        let h: String = ns.nguid.iter().map(|b| format!("{b:02x}")).collect();
        props.uuid = Some(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ));
    }
    let ops = NvmeNs {
        ctrlr: c.clone(),
        nsid: ns.nsid,
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
/// reactor: the admin poller lives on the calling core. DMA goes to the
/// layer's memory ([`crate::set_memory`] with hugepage memory).
///
/// # Errors
/// [`BdevError::Exists`] for a taken name, [`BdevError::Invalid`] for a
/// malformed address, [`BdevError::Module`] when the controller cannot be
/// opened (with the driver's reason).
pub fn attach_controller(
    name: &str,
    traddr: &str,
    opts: ControllerOptions,
) -> Result<Vec<String>, BdevError> {
    reactor::current_core().ok_or(BdevError::NotOnReactor("bdev_nvme_attach_controller"))?;
    if controllers().contains_key(name) {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let bdf: Bdf = traddr
        .parse()
        .map_err(|e: nvme_driver::pci::BdfError| BdevError::invalid("traddr", e.to_string()))?;
    if controllers().values().any(|c| c.bdf == bdf) {
        return Err(BdevError::Exists(format!("controller at {bdf}")));
    }
    let ctrlr = Controller::open(bdf, &crate::memory(), opts).map_err(|e| BdevError::Module {
        module: "nvme".into(),
        reason: e.to_string(),
    })?;
    attach(name, bdf, ctrlr)
}

/// Attaches a controller already brought up (through VFIO by
/// [`attach_controller`], or a device model in tests) as `name`, with `bdf`
/// as its address; registers its namespaces' bdevs and returns their names.
/// Must run on a reactor: the admin poller lives on the calling core.
///
/// # Errors
/// [`BdevError::Exists`] for a taken name.
pub fn attach(name: &str, bdf: Bdf, mut ctrlr: Controller) -> Result<Vec<String>, BdevError> {
    reactor::current_core().ok_or(BdevError::NotOnReactor("bdev_nvme_attach_controller"))?;
    if controllers().contains_key(name) {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let namespaces: Vec<nvme_driver::Namespace> = ctrlr.namespaces().cloned().collect();
    let ctrlr_name = name.to_owned();
    ctrlr.set_ns_event_handler(Box::new(move |ev| on_ns_event(&ctrlr_name, ev)));
    let c = Arc::new(NvmeCtrlr {
        name: name.to_owned(),
        bdf,
        ctrlr: Mutex::new(ctrlr),
        detached: AtomicBool::new(false),
    });
    controllers().insert(name.to_owned(), c.clone());
    let weak = Arc::downgrade(&c);
    // Left registered (dropping the handle does not stop it) until it sees
    // the controller detached.
    drop(reactor::register_timed_poller(
        format!("nvme_admin_{name}"),
        Duration::from_millis(10),
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
            // Admin work runs under the controller lock; namespace events raised
            // inside are delivered after it (see `on_ns_event`).
            let r = c.lock().poll_admin();
            match r {
                Err(NvmeError::Removed { .. }) if !c.detached.swap(true, Ordering::AcqRel) => {
                    // Surprise removal (registers read all-ones): its queue
                    // pairs fail their I/O at their next poll; its bdevs go
                    // (Remove to every opener), then the controller.
                    log::warn!(
                        "nvme {}: controller removed; unregistering its bdevs",
                        c.name
                    );
                    let name = c.name.clone();
                    drop(reactor::spawn(async move { remove_gone(&name).await }));
                }
                Err(e) => log::debug!("nvme {}: {e}", c.name),
                Ok(()) => {}
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
            drop(reactor::spawn(async move {
                if let Err(e) = crate::unregister(&name).await {
                    log::warn!("{name}: unregister after namespace removal: {e}");
                }
            }));
        }
        NsEvent::Added(ns) => {
            let (ctrlr, ns) = (ctrlr.to_owned(), ns.clone());
            drop(reactor::spawn(async move {
                let c = controllers().get(&ctrlr).cloned();
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
/// openers), stops its admin poller and shuts the controller down.
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
    c.lock().shutdown();
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

/// A controller that went away by itself: its bdevs are unregistered
/// (their openers get Remove and close), then it leaves the list (no
/// shutdown: there is no device to talk to).
async fn remove_gone(name: &str) {
    for b in bdevs_of(name) {
        if let Err(e) = crate::unregister(&b).await {
            log::warn!("nvme {name}: unregistering {b} after removal: {e}");
        }
    }
    controllers().remove(name);
    log::info!("nvme {name}: removed");
}

/// The attached controllers.
pub fn controllers_list() -> Vec<Arc<NvmeCtrlr>> {
    controllers().values().cloned().collect()
}
