//! The controller: bring-up, namespaces, I/O queue pair creation, admin
//! commands, asynchronous events, health checks, timeouts and reset.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use dma::{DmaBuf, DmaMemory};

use crate::admin::AdminQueue;
use crate::client::AdminClient;
use crate::error::NvmeError;
use crate::init::{Init, InitResult};
use crate::pci::{Bdf, VfioPci};
use crate::qcore::{PRP_LIST_ENTRIES, QueueCore};
use crate::qpair::IoQpair;
use crate::regs::{Cap, RegisterIo, Registers, Version, cc, csts};
use crate::shared::{CtrlrState, Request, Shared, TimeoutAction};
use crate::spec::{IdentifyController, IdentifyNamespace, log_page};

/// Options for bringing up a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// I/O queues to ask the controller for.
    pub io_queues: u16,
    /// Admin queue depth.
    pub admin_depth: u16,
    /// Time an admin command may take.
    pub admin_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queues: 16,
            admin_depth: 32,
            admin_timeout: Duration::from_secs(10),
        }
    }
}

/// An active namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Metadata bytes per block (0 for plain formats).
    pub metadata_size: u16,
    /// Globally unique identifier (zero if not reported).
    pub nguid: [u8; 16],
    /// IEEE EUI-64 (zero if not reported).
    pub eui64: [u8; 8],
    /// UUID (zero if not reported).
    pub uuid: [u8; 16],
    /// Deallocated blocks read back as zeroes (DLFEAT).
    pub deallocate_reads_zeroes: bool,
}

impl Namespace {
    /// The namespace as Identify Namespace describes it, checked: an LBA
    /// data size below 512 bytes or beyond 2^31 (LBADS), metadata the bdev
    /// layer cannot carry, a size that overflows, or an id beyond what the
    /// driver tracks is an error naming the field.
    pub fn checked(nsid: u32, id: &IdentifyNamespace) -> Result<Self, String> {
        if nsid == 0 || nsid as usize > crate::shared::MAX_NSID {
            return Err(format!(
                "namespace id {nsid} is outside 1..={}",
                crate::shared::MAX_NSID
            ));
        }
        let Some(fmt) = id.current_format() else {
            return Err(format!(
                "FLBAS selects LBA format {} of {}",
                (id.flbas & 0x0f) | ((id.flbas >> 5) & 3) << 4,
                id.lba_formats.len()
            ));
        };
        if fmt.data_size < 512 {
            return Err("the LBA format's data size (LBADS) is below 512 bytes or invalid".into());
        }
        if fmt.metadata_size != 0 {
            return Err(format!(
                "the LBA format carries {} bytes of metadata per block (not supported)",
                fmt.metadata_size
            ));
        }
        if id.nsze.checked_mul(fmt.data_size as u64).is_none() {
            return Err(format!(
                "NSZE {} blocks of {} bytes overflows",
                id.nsze, fmt.data_size
            ));
        }
        Ok(Namespace {
            nsid,
            block_size: fmt.data_size,
            blocks: id.nsze,
            metadata_size: fmt.metadata_size,
            nguid: id.nguid,
            eui64: id.eui64,
            uuid: id.uuid,
            deallocate_reads_zeroes: id.deallocated_reads_zeroes(),
        })
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
}

/// A change of the namespace set, reported after a Namespace Attribute
/// Changed event (or a rescan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsEvent {
    /// A namespace became active.
    Added(Namespace),
    /// A namespace went away.
    Removed(u32),
    /// A namespace changed size (or format).
    Resized {
        /// The namespace as it is now.
        ns: Namespace,
        /// Its size in blocks before.
        old_blocks: u64,
    },
}

/// Handler of namespace events.
pub type NsEventHandler = Box<dyn FnMut(&NsEvent) + Send>;

/// An admin sequence the controller runs for itself (a namespace rescan
/// after an event, an abort of a timed-out command), polled by
/// [`Controller::poll_admin`].
type Task = Pin<Box<dyn Future<Output = TaskEnd> + Send>>;

enum TaskEnd {
    Nothing,
    Namespaces(Result<Vec<(u32, IdentifyNamespace)>, NvmeError>),
    AbortFailed { qid: u16, cid: u16 },
}

enum ResetPhase {
    /// New I/O refused; waiting (until `deadline`) for the commands in the
    /// controller's hands to complete before it is disabled.
    Drain { deadline: Instant },
    /// CC.EN cleared; waiting for CSTS.RDY to clear (bounded by CAP.TO).
    Disable { deadline: Instant },
    /// Bring-up again from programming the admin queue.
    Init(Box<Init>),
}

/// A controller brought up and ready for I/O queue pairs. Owned by one
/// core, which calls [`Controller::poll_admin`] every millisecond or so:
/// resets, namespace rescans and aborts advance there, step by step;
/// nothing in this type waits (the waiting versions are in
/// [`crate::blocking`], for threads that are not reactors).
pub struct Controller {
    shared: Arc<Shared>,
    cap: Cap,
    version: Version,
    identify: IdentifyController,
    namespaces: BTreeMap<u32, Namespace>,
    scratch: DmaBuf,
    handler: Option<NsEventHandler>,
    opts: ControllerOptions,
    aer_limit: usize,
    resets: u64,
    resets_done: u64,
    last_reset_error: Option<String>,
    reset: Option<ResetPhase>,
    shutdown_deadline: Option<Instant>,
    tasks: Vec<Task>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.shared.name)
            .field("model", &self.identify.model)
            .field("serial", &self.identify.serial)
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

/// A controller being brought up: [`Starting::poll`] advances it without
/// waiting until it is ready (or failed).
pub struct Starting {
    shared: Arc<Shared>,
    cap: Cap,
    version: Version,
    scratch: Option<DmaBuf>,
    opts: ControllerOptions,
    init: Init,
}

impl std::fmt::Debug for Starting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starting")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Starting {
    /// Advances bring-up as far as it goes without waiting.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    pub fn poll(&mut self) -> Poll<Result<Controller, NvmeError>> {
        let Some(scratch) = self.scratch.as_ref() else {
            return Poll::Ready(Err(NvmeError::NotReady {
                ctrlr: self.shared.name.clone(),
                state: "finished",
            }));
        };
        let result = match self.init.poll(&self.shared, scratch) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.shared.set_state(CtrlrState::Removed);
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(r)) => r,
        };
        let Some(scratch) = self.scratch.take() else {
            return Poll::Pending;
        };
        let mut c = Controller {
            shared: self.shared.clone(),
            cap: self.cap,
            version: self.version,
            identify: result.identify.clone(),
            namespaces: BTreeMap::new(),
            scratch,
            handler: None,
            opts: self.opts.clone(),
            aer_limit: 0,
            resets: 0,
            resets_done: 0,
            last_reset_error: None,
            reset: None,
            shutdown_deadline: None,
            tasks: Vec::new(),
        };
        c.apply(result);
        c.shared.set_state(CtrlrState::Ready);
        Poll::Ready(Ok(c))
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl Controller {
    /// Opens the PCIe controller at `bdf` (bound to vfio-pci) through the
    /// process's VFIO container, maps `mem` into the container and starts
    /// bringing the controller up.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    pub fn open_start(
        bdf: Bdf,
        mem: &DmaMemory,
        opts: ControllerOptions,
    ) -> Result<Starting, NvmeError> {
        let name = bdf.to_string();
        let lease = dma::vfio::DeviceLease::new(mem);
        let pci = VfioPci::open(bdf)?;
        pci.enable_bus_master()?;
        let bar0 = pci.map_bar0()?;
        let container = dma::vfio::container()
            .map_err(|source| crate::pci::PciError::Container { bdf, source })?;
        mem.attach(container).map_err(|source| NvmeError::Dma {
            ctrlr: name.clone(),
            source,
        })?;
        let regs = Arc::new(PciRegisters {
            bar0,
            _pci: pci,
            _lease: lease,
        });
        Self::start(name, regs, mem, opts)
    }

    /// Starts bringing up a controller reached through `regs` (BAR0, or a
    /// device model in tests) whose DMA goes to `mem`. The registers read
    /// here are checked: a value the driver cannot work with is an error
    /// naming it.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and what it reported.
    pub fn start(
        name: String,
        regs: Arc<dyn RegisterIo>,
        mem: &DmaMemory,
        opts: ControllerOptions,
    ) -> Result<Starting, NvmeError> {
        let cap = Cap(regs.read64(Registers::CAP));
        if cap.0 == u64::MAX {
            return Err(NvmeError::Removed { ctrlr: name });
        }
        let version = Version::from(regs.read32(Registers::VS));
        if !cap.supports_nvm_command_set() {
            return Err(NvmeError::Unsupported {
                ctrlr: name,
                what: "CAP.CSS lacks the NVM command set".into(),
            });
        }
        if cap.max_queue_entries() < 2 {
            return Err(NvmeError::Unsupported {
                ctrlr: name,
                what: format!(
                    "CAP.MQES is {} (queues of {} entries; at least 2 are needed)",
                    cap.max_queue_entries().saturating_sub(1),
                    cap.max_queue_entries()
                ),
            });
        }
        let page = 4096;
        if cap.min_page_size() > page || cap.max_page_size() < page {
            return Err(NvmeError::Unsupported {
                ctrlr: name,
                what: format!(
                    "memory page sizes {}..{} exclude 4096",
                    cap.min_page_size(),
                    cap.max_page_size()
                ),
            });
        }
        let dma_err = |source| NvmeError::Dma {
            ctrlr: name.clone(),
            source,
        };
        let admin_depth = opts
            .admin_depth
            .clamp(2, (cap.max_queue_entries().min(4096) - 1) as u16);
        let core = QueueCore::new(
            0,
            admin_depth,
            mem,
            regs.clone(),
            cap.doorbell_stride(),
            page,
        )
        .map_err(dma_err)?;
        let scratch = mem.alloc(4096, 4096).map_err(dma_err)?;
        let shared = Arc::new(Shared::new(
            name,
            regs,
            cap.doorbell_stride(),
            page,
            cap.max_queue_entries(),
            AdminQueue::new(core),
            mem.clone(),
            opts.admin_timeout,
        ));
        Ok(Starting {
            init: Init::new(cap, opts.io_queues, true),
            shared,
            cap,
            version,
            scratch: Some(scratch),
            opts,
        })
    }

    /// Takes in what bring-up learned; returns the namespace events.
    fn apply(&mut self, r: InitResult) -> Vec<NsEvent> {
        let page_cap = PRP_LIST_ENTRIES * self.shared.page_size;
        let mdts = r
            .identify
            .max_transfer(self.cap.min_page_size())
            .unwrap_or(usize::MAX);
        self.shared
            .max_transfer
            .store(mdts.min(page_cap) as u64, Ordering::Relaxed);
        self.shared
            .sgl_align
            .store(r.identify.sgl_alignment().unwrap_or(0), Ordering::Relaxed);
        self.identify = r.identify;
        self.aer_limit = (self.identify.aerl as usize + 1).min(4);
        {
            let mut free = self
                .shared
                .free_qids
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let granted = r.granted_queues;
            let old = self
                .shared
                .granted_queues
                .swap(granted as u32, Ordering::Relaxed);
            if old == 0 {
                *free = (1..=granted).rev().collect();
            }
        }
        let events = self.take_namespaces(r.namespaces);
        self.shared.admin().post_aers(self.aer_limit);
        events
    }

    /// Replaces the namespace table with `list` (Identify data checked:
    /// a namespace the driver cannot address is left out, with a warning
    /// naming the field); updates what queue pairs check and returns what
    /// changed.
    fn take_namespaces(&mut self, list: Vec<(u32, IdentifyNamespace)>) -> Vec<NsEvent> {
        let mut fresh = BTreeMap::new();
        for (nsid, id) in list {
            match Namespace::checked(nsid, &id) {
                Ok(ns) => {
                    fresh.insert(nsid, ns);
                }
                Err(what) => log::warn!("{}: namespace {nsid} left out: {what}", self.shared.name),
            }
        }
        let events = ns_diff(&self.namespaces, &fresh);
        // Namespace by namespace, never all at once: queue pairs on other
        // cores read these while a reset re-identifies.
        for (i, b) in self.shared.block_sizes.iter().enumerate() {
            let size = fresh.get(&(i as u32 + 1)).map_or(0, |ns| ns.block_size);
            if b.load(Ordering::Relaxed) != size {
                b.store(size, Ordering::Relaxed);
            }
        }
        self.namespaces = fresh;
        events
    }

    /// The controller's name (its PCI address).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Controller Capabilities.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// Version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// One active namespace.
    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.get(&nsid)
    }

    /// Largest transfer one command may carry, in bytes (MDTS, and this
    /// driver's one PRP list page per command). Larger transfers are
    /// rejected at submission; the bdev layer splits them.
    pub fn max_transfer(&self) -> usize {
        self.shared.max_transfer.load(Ordering::Relaxed) as usize
    }

    /// I/O queues the controller granted.
    pub fn io_queues(&self) -> u16 {
        self.shared.granted_queues.load(Ordering::Relaxed) as u16
    }

    /// The controller's state.
    pub fn state(&self) -> CtrlrState {
        self.shared.state()
    }

    /// Resets started so far.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Resets finished so far (succeeded or failed).
    pub fn resets_done(&self) -> u64 {
        self.resets_done
    }

    /// Why the last reset failed (None: it succeeded, or none ran).
    pub fn last_reset_error(&self) -> Option<&str> {
        self.last_reset_error.as_deref()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A handle for admin commands from any core (see [`AdminClient`]).
    pub fn admin(&self) -> AdminClient {
        AdminClient {
            shared: self.shared.clone(),
        }
    }

    /// Registers the handler of namespace events.
    pub fn set_ns_event_handler(&mut self, handler: NsEventHandler) {
        self.handler = Some(handler);
    }

    /// Sets the I/O command timeout (None: off) and what queue pairs do
    /// when a command outlives it; applies to every queue pair at its next
    /// poll.
    pub fn set_io_timeout(&self, timeout: Option<Duration>, action: TimeoutAction) {
        self.shared.set_io_timeout(timeout, action);
    }

    /// Sets how long an admin command may take before the controller is
    /// reset.
    pub fn set_admin_timeout(&self, timeout: Duration) {
        self.shared.set_admin_timeout(timeout);
    }

    /// Creates an I/O queue pair with `depth` commands outstanding at most
    /// (up to CAP.MQES); move it to the core that will own it. It is
    /// created on the controller by its own polls
    /// ([`IoQpair::process_completions`]), without waiting: until then
    /// submissions are refused as "resetting" ([`IoQpair::is_connected`]
    /// tells).
    ///
    /// # Errors
    /// [`NvmeError::InvalidDepth`], [`NvmeError::NoFreeQueue`],
    /// [`NvmeError::Removed`], or the ring memory.
    pub fn create_io_qpair<C>(&self, depth: u32) -> Result<IoQpair<C>, NvmeError> {
        let max = self.shared.mqes - 1;
        if depth == 0 || depth > max {
            return Err(NvmeError::InvalidDepth {
                ctrlr: self.shared.name.clone(),
                asked: depth,
                max,
            });
        }
        if self.shared.state() == CtrlrState::Removed {
            return Err(NvmeError::Removed {
                ctrlr: self.shared.name.clone(),
            });
        }
        self.shared.drive_retired();
        let qid = self
            .shared
            .free_qids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| NvmeError::NoFreeQueue {
                ctrlr: self.shared.name.clone(),
                granted: self.io_queues(),
            })?;
        IoQpair::new(self.shared.clone(), qid, depth as u16)
            .inspect_err(|_| self.shared.free_qid(qid))
    }

    /// The admin poller: call it periodically (every millisecond or so) on
    /// the core that owns the controller. Without waiting, it reaps admin
    /// completions and asynchronous events (a Namespace Attribute Changed
    /// notice starts a rescan), advances a reset in progress, starts the
    /// reset or abort a queue pair asked for (or that an admin timeout or
    /// a fatal status calls for), deletes retired queues, and notices
    /// removal.
    ///
    /// # Errors
    /// [`NvmeError::Removed`] once the controller is gone; the error of a
    /// reset that failed (once, when it fails).
    pub fn poll_admin(&mut self) -> Result<(), NvmeError> {
        let sh = self.shared.clone();
        if sh.state() == CtrlrState::Removed {
            return Err(NvmeError::Removed {
                ctrlr: sh.name.clone(),
            });
        }
        let st = sh.regs.read32(Registers::CSTS);
        if st == u32::MAX {
            self.mark_removed();
            return Err(NvmeError::Removed {
                ctrlr: sh.name.clone(),
            });
        }
        if self.shutdown_deadline.is_some() {
            return Ok(());
        }
        if self.reset.is_some() {
            return self.advance_reset(st);
        }
        if sh.state() == CtrlrState::Failed {
            // A reset failed: only another reset (asked for by the owner)
            // brings it back.
            return Ok(());
        }
        if st & csts::CFS != 0 {
            log::warn!("{}: controller fatal status; resetting", sh.name);
            return self.start_reset();
        }
        let (events, timed_out) = {
            let mut admin = sh.admin();
            admin.poll();
            admin.expire(Instant::now());
            let t = std::mem::take(&mut admin.timed_out);
            (std::mem::take(&mut admin.events), t)
        };
        if timed_out > 0 {
            log::warn!(
                "{}: {timed_out} admin command(s) timed out; resetting",
                sh.name
            );
            return self.start_reset();
        }
        sh.drive_retired();
        let requests = std::mem::take(&mut *sh.requests.lock().unwrap_or_else(|p| p.into_inner()));
        if requests.contains(&Request::Reset) {
            return self.start_reset();
        }
        for r in requests {
            if let Request::Abort { qid, cid } = r {
                let admin = self.admin();
                self.tasks.push(Box::pin(async move {
                    match admin.abort(qid, cid).await {
                        Ok(true) => {
                            log::info!("{}: queue {qid} command {cid} aborted", admin.name());
                            TaskEnd::Nothing
                        }
                        Ok(false) => {
                            log::warn!(
                                "{}: queue {qid} command {cid} could not be aborted",
                                admin.name()
                            );
                            TaskEnd::AbortFailed { qid, cid }
                        }
                        Err(e) => {
                            log::warn!(
                                "{}: abort of queue {qid} command {cid} failed: {e}",
                                admin.name()
                            );
                            TaskEnd::AbortFailed { qid, cid }
                        }
                    }
                }));
            }
        }
        for dw0 in events {
            self.async_event(dw0);
        }
        self.run_tasks()?;
        let limit = self.aer_limit;
        sh.admin().post_aers(limit);
        Ok(())
    }

    /// Polls the admin sequences in flight once each.
    fn run_tasks(&mut self) -> Result<(), NvmeError> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut ended = Vec::new();
        self.tasks.retain_mut(|t| match t.as_mut().poll(&mut cx) {
            Poll::Ready(end) => {
                ended.push(end);
                false
            }
            Poll::Pending => true,
        });
        for end in ended {
            match end {
                TaskEnd::Nothing => {}
                TaskEnd::Namespaces(Ok(list)) => {
                    let events = self.take_namespaces(list);
                    self.deliver(&events);
                }
                TaskEnd::Namespaces(Err(e)) => {
                    log::warn!("{}: namespace rescan: {e}", self.shared.name)
                }
                TaskEnd::AbortFailed { qid, cid } => {
                    // As SPDK: an abort that fails resets the controller.
                    log::warn!(
                        "{}: the abort of queue {qid} command {cid} failed; resetting",
                        self.shared.name
                    );
                    return self.start_reset();
                }
            }
        }
        Ok(())
    }

    fn async_event(&mut self, dw0: u32) {
        let kind = dw0 & 7;
        let info = (dw0 >> 8) & 0xff;
        let lid = ((dw0 >> 16) & 0xff) as u8;
        log::info!(
            "{}: asynchronous event type {kind} info {info:#x} log {lid:#x}",
            self.shared.name
        );
        const NOTICE: u32 = 2;
        const NS_ATTRIBUTE_CHANGED: u32 = 0;
        let rescan = kind == NOTICE && info == NS_ATTRIBUTE_CHANGED;
        let admin = self.admin();
        self.tasks.push(Box::pin(async move {
            // Reading the log page the event names re-arms the event.
            if lid != 0 {
                let len = if lid == log_page::CHANGED_NS_LIST {
                    4096
                } else {
                    512
                };
                if let Err(e) = admin.get_log_page(lid, 0xffff_ffff, len).await {
                    log::warn!("{e}");
                }
            }
            if rescan {
                TaskEnd::Namespaces(admin.identify_namespaces().await)
            } else {
                TaskEnd::Nothing
            }
        }));
    }

    /// Re-reads the namespaces from `list` (what
    /// [`AdminClient::identify_namespaces`] returned) and delivers what
    /// changed to the handler; returns the events.
    pub fn update_namespaces(&mut self, list: Vec<(u32, IdentifyNamespace)>) -> Vec<NsEvent> {
        let events = self.take_namespaces(list);
        self.deliver(&events);
        events
    }

    fn deliver(&mut self, events: &[NsEvent]) {
        if let Some(h) = self.handler.as_mut() {
            for e in events {
                h(e);
            }
        }
    }

    fn mark_removed(&mut self) {
        log::warn!("{}: controller removed", self.shared.name);
        self.shared.set_state(CtrlrState::Removed);
        self.shared.admin().reset();
        self.tasks.clear();
        if self.reset.take().is_some() {
            self.resets_done += 1;
            self.last_reset_error = Some("controller removed".into());
        }
    }

    /// Starts a reset (or joins the one in progress): new I/O is refused,
    /// the controller is disabled (which ends every command on it), then
    /// brought up again and the namespaces re-read, all by
    /// [`Controller::poll_admin`]. Queue pairs complete what was
    /// outstanding with "aborted by reset" and create their queues again
    /// on their next polls. [`Controller::resets_done`] counts it when it
    /// ends; a failed reset leaves the controller [`CtrlrState::Failed`]
    /// (another reset may bring it back).
    ///
    /// # Errors
    /// [`NvmeError::Removed`] for a removed controller.
    pub fn start_reset(&mut self) -> Result<(), NvmeError> {
        self.begin_reset(None)
    }

    /// Starts an orderly reset (or joins the one in progress): new I/O is
    /// refused at once, and the controller is disabled only once the
    /// commands in its hands have completed (each queue pair's polls
    /// deliver them as usual), or `drain` has passed, whichever is first.
    /// An administrator's reset needs no command aborted; and some
    /// emulated controllers (QEMU 7.2's) are fragile when disabled with
    /// I/O in flight.
    ///
    /// # Errors
    /// [`NvmeError::Removed`] for a removed controller.
    pub fn start_reset_drained(&mut self, drain: Duration) -> Result<(), NvmeError> {
        self.begin_reset(Some(drain))
    }

    fn begin_reset(&mut self, drain: Option<Duration>) -> Result<(), NvmeError> {
        let sh = self.shared.clone();
        if sh.state() == CtrlrState::Removed {
            return Err(NvmeError::Removed {
                ctrlr: sh.name.clone(),
            });
        }
        if self.reset.is_some() {
            return Ok(());
        }
        log::info!("{}: resetting controller", sh.name);
        sh.set_state(CtrlrState::Resetting);
        self.resets += 1;
        self.tasks.clear();
        self.reset = Some(match drain {
            Some(d) if sh.commands_in_device() > 0 => ResetPhase::Drain {
                deadline: Instant::now() + d,
            },
            _ => self.disable(),
        });
        Ok(())
    }

    /// Clears CC.EN; the phase that waits for CSTS.RDY to follow.
    fn disable(&self) -> ResetPhase {
        let regs = &*self.shared.regs;
        regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
        ResetPhase::Disable {
            deadline: Instant::now() + Duration::from_millis(self.cap.timeout_ms().max(500)),
        }
    }

    fn advance_reset(&mut self, st: u32) -> Result<(), NvmeError> {
        let sh = self.shared.clone();
        loop {
            match self.reset.as_mut() {
                None => return Ok(()),
                Some(ResetPhase::Drain { deadline }) => {
                    let left = sh.commands_in_device();
                    if left > 0 && Instant::now() <= *deadline {
                        return Ok(());
                    }
                    if left > 0 {
                        log::warn!(
                            "{}: {left} command(s) still in the controller after the reset's drain time; disabling it anyway",
                            sh.name
                        );
                    }
                    let next = self.disable();
                    self.reset = Some(next);
                    // CSTS as the disable left it, on the next poll.
                    return Ok(());
                }
                Some(ResetPhase::Disable { deadline }) => {
                    if st & csts::RDY != 0 {
                        if Instant::now() > *deadline {
                            let e = NvmeError::InitTimeout {
                                ctrlr: sh.name.clone(),
                                state: "reset-disable",
                                waited_ms: self.cap.timeout_ms().max(500),
                                csts: st,
                            };
                            return self.reset_failed(e);
                        }
                        return Ok(());
                    }
                    // Disabled: the controller forgot every queue.
                    sh.admin().reset();
                    sh.requests
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    // From here on queue pairs fail what they had and wait
                    // for Ready.
                    sh.bump_generation();
                    sh.drive_retired();
                    self.reset = Some(ResetPhase::Init(Box::new(Init::new(
                        self.cap,
                        self.opts.io_queues,
                        false,
                    ))));
                }
                Some(ResetPhase::Init(init)) => match init.poll(&sh, &self.scratch) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Err(e)) => return self.reset_failed(e),
                    Poll::Ready(Ok(r)) => {
                        self.reset = None;
                        let events = self.apply(r);
                        sh.set_state(CtrlrState::Ready);
                        self.resets_done += 1;
                        self.last_reset_error = None;
                        log::info!("{}: reset done", sh.name);
                        self.deliver(&events);
                        return Ok(());
                    }
                },
            }
        }
    }

    fn reset_failed(&mut self, e: NvmeError) -> Result<(), NvmeError> {
        self.reset = None;
        self.resets_done += 1;
        self.last_reset_error = Some(e.to_string());
        if matches!(e, NvmeError::Removed { .. }) {
            self.mark_removed();
        } else {
            log::warn!("{}: reset failed: {e}", self.shared.name);
            self.shared.admin().reset();
            self.shared.bump_generation();
            self.shared.set_state(CtrlrState::Failed);
        }
        Err(e)
    }

    /// Asks for a reset from any thread holding a queue pair (it starts at
    /// the next [`Controller::poll_admin`]).
    pub fn request_reset(&self) {
        self.shared.request(Request::Reset);
    }

    /// Starts an orderly shutdown: the normal shutdown notification; queue
    /// pairs fail fast from now on. [`Controller::poll_shutdown`] tells
    /// when the controller finished (bounded by CAP.TO).
    pub fn start_shutdown(&mut self) {
        let sh = &self.shared;
        if sh.state() == CtrlrState::Removed {
            return;
        }
        sh.set_state(CtrlrState::Removed);
        self.tasks.clear();
        self.reset = None;
        let regs = &*sh.regs;
        let v = regs.read32(Registers::CC);
        regs.write32(Registers::CC, (v & !cc::SHN_MASK) | cc::SHN_NORMAL);
        self.shutdown_deadline =
            Some(Instant::now() + Duration::from_millis(self.cap.timeout_ms().clamp(500, 10_000)));
    }

    /// Whether the shutdown [`Controller::start_shutdown`] began is over
    /// (the controller reports it complete, is gone, or took longer than
    /// CAP.TO); the controller is disabled then.
    pub fn poll_shutdown(&mut self) -> Poll<()> {
        let Some(deadline) = self.shutdown_deadline else {
            return Poll::Ready(());
        };
        let regs = &*self.shared.regs;
        let st = regs.read32(Registers::CSTS);
        if st == u32::MAX
            || st & csts::SHST_MASK == csts::SHST_COMPLETE
            || Instant::now() > deadline
        {
            if st != u32::MAX {
                regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
            }
            self.shutdown_deadline = None;
            self.shared.admin().reset();
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Whether the controller is shut down or gone (nothing left to wait
    /// for when it is dropped).
    pub(crate) fn needs_shutdown(&self) -> bool {
        self.shared.state() != CtrlrState::Removed || self.shutdown_deadline.is_some()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.needs_shutdown() {
            // Its owner did not shut it down: do it here, waiting (bounded
            // by CAP.TO). Reactors shut controllers down with the polled
            // calls first.
            crate::blocking::finish_shutdown(self);
        }
    }
}

/// The registers of a controller opened through VFIO, owning what keeps them
/// valid. Queue pairs hold it (through the shared state) as long as they
/// live; the fields are dropped in order: BAR0 is unmapped, then the device
/// closed (its group can leave the container, which needs no open device
/// file), then the lease released (the last one detaches the DMA memory).
struct PciRegisters {
    bar0: crate::pci::Bar0,
    _pci: VfioPci,
    _lease: dma::vfio::DeviceLease,
}

impl RegisterIo for PciRegisters {
    fn read32(&self, offset: usize) -> u32 {
        self.bar0.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.bar0.write32(offset, value)
    }
}

pub(crate) fn ns_diff(
    old: &BTreeMap<u32, Namespace>,
    new: &BTreeMap<u32, Namespace>,
) -> Vec<NsEvent> {
    let mut events = Vec::new();
    for (nsid, ns) in new {
        match old.get(nsid) {
            None => events.push(NsEvent::Added(ns.clone())),
            Some(o) if o.blocks != ns.blocks || o.block_size != ns.block_size => {
                events.push(NsEvent::Resized {
                    ns: ns.clone(),
                    old_blocks: o.blocks,
                })
            }
            Some(_) => {}
        }
    }
    for nsid in old.keys() {
        if !new.contains_key(nsid) {
            events.push(NsEvent::Removed(*nsid));
        }
    }
    events
}
