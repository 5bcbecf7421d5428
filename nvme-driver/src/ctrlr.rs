//! The controller: bring-up, namespaces, I/O queue pair creation, admin
//! commands, asynchronous events, health checks, timeouts and reset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dma::{DmaBuf, DmaMemory};

use crate::admin::{AdminQueue, StartError};
use crate::cmd::admin as cmd;
use crate::error::NvmeError;
use crate::init::{Init, InitResult};
use crate::pci::{Bdf, VfioPci};
use crate::qcore::{PRP_LIST_ENTRIES, QueueCore};
use crate::qpair::IoQpair;
use crate::regs::{Cap, RegisterIo, Registers, Version, cc, csts};
use crate::shared::{CtrlrState, Request, Shared};
use crate::spec::{ErrorLogEntry, IdentifyController, IdentifyNamespace, SmartLog, Sqe, log_page};

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
    /// Deallocated blocks read back as zeroes (DLFEAT).
    pub deallocate_reads_zeroes: bool,
}

impl Namespace {
    fn from_identify(nsid: u32, id: &IdentifyNamespace) -> Self {
        Namespace {
            nsid,
            block_size: id.block_size(),
            blocks: id.nsze,
            metadata_size: id.current_format().map_or(0, |f| f.metadata_size),
            nguid: id.nguid,
            eui64: id.eui64,
            deallocate_reads_zeroes: id.deallocated_reads_zeroes(),
        }
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

/// A controller brought up and ready for I/O queue pairs.
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

impl Controller {
    /// Opens the PCIe controller at `bdf` (bound to vfio-pci) through the
    /// process's VFIO container, maps `mem` into the container and brings
    /// the controller up.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    pub fn open(bdf: Bdf, mem: &DmaMemory, opts: ControllerOptions) -> Result<Self, NvmeError> {
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
        Self::with_registers(name, regs, mem, opts)
    }

    /// Brings up a controller reached through `regs` (BAR0, or a device model
    /// in tests) whose DMA goes to `mem`.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    pub fn with_registers(
        name: String,
        regs: Arc<dyn RegisterIo>,
        mem: &DmaMemory,
        opts: ControllerOptions,
    ) -> Result<Self, NvmeError> {
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
            .clamp(2, cap.max_queue_entries().min(4096) as u16 - 1);
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
        let result = Init::new(cap, opts.io_queues, true).run(&shared, &scratch)?;
        let mut c = Controller {
            shared,
            cap,
            version,
            identify: result.identify.clone(),
            namespaces: BTreeMap::new(),
            scratch,
            handler: None,
            opts,
            aer_limit: 0,
            resets: 0,
        };
        c.apply(result);
        c.shared.set_state(CtrlrState::Ready);
        Ok(c)
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
        let fresh: BTreeMap<u32, Namespace> = r
            .namespaces
            .iter()
            .map(|(nsid, id)| (*nsid, Namespace::from_identify(*nsid, id)))
            .collect();
        let events = diff(&self.namespaces, &fresh);
        // Namespace by namespace, never all at once: queue pairs on other
        // cores read these while a reset re-identifies.
        for (i, b) in self.shared.block_sizes.iter().enumerate() {
            let size = fresh.get(&(i as u32 + 1)).map_or(0, |ns| ns.block_size);
            if b.load(Ordering::Relaxed) != size {
                b.store(size, Ordering::Relaxed);
            }
        }
        self.namespaces = fresh;
        self.shared.admin().post_aers(self.aer_limit);
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

    /// Resets performed so far.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Registers the handler of namespace events.
    pub fn set_ns_event_handler(&mut self, handler: NsEventHandler) {
        self.handler = Some(handler);
    }

    /// Creates an I/O queue pair with `depth` commands outstanding at most
    /// (up to CAP.MQES); move it to the core that will own it.
    ///
    /// # Errors
    /// [`NvmeError::InvalidDepth`], [`NvmeError::NoFreeQueue`], or the
    /// failing queue-creation command.
    pub fn create_io_qpair<C>(&self, depth: u32) -> Result<IoQpair<C>, NvmeError> {
        let max = self.shared.mqes - 1;
        if depth == 0 || depth > max {
            return Err(NvmeError::InvalidDepth {
                ctrlr: self.shared.name.clone(),
                asked: depth,
                max,
            });
        }
        self.ready()?;
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
        IoQpair::create(self.shared.clone(), qid, depth as u16).inspect_err(|_| {
            self.shared
                .free_qids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(qid);
        })
    }

    fn ready(&self) -> Result<(), NvmeError> {
        match self.shared.state() {
            CtrlrState::Ready => Ok(()),
            s => Err(NvmeError::NotReady {
                ctrlr: self.shared.name.clone(),
                state: s.name(),
            }),
        }
    }

    /// Runs one admin command, with the scratch page as its data when
    /// `data` is set. Returns DW0.
    fn admin_command(
        &mut self,
        sqe: Sqe,
        data: bool,
        command: &'static str,
    ) -> Result<u32, NvmeError> {
        let sh = &self.shared;
        let segs = [(self.scratch.iova(), 4096)];
        let r = sh
            .admin()
            .execute(sqe, if data { &segs } else { &[] }, sh.admin_timeout);
        match r {
            Ok(Some(Ok(dw0))) => Ok(dw0),
            Ok(Some(Err(source))) => Err(NvmeError::Admin {
                ctrlr: sh.name.clone(),
                command,
                source,
            }),
            Ok(None) | Err(StartError::Busy) => {
                sh.request(Request::Reset);
                Err(NvmeError::AdminTimeout {
                    ctrlr: sh.name.clone(),
                    command,
                    ms: sh.admin_timeout.as_millis() as u64,
                })
            }
            Err(StartError::Full) => Err(NvmeError::AdminQueueFull {
                ctrlr: sh.name.clone(),
                command,
            }),
            Err(StartError::Prp(source)) => Err(NvmeError::Prp {
                ctrlr: sh.name.clone(),
                source,
            }),
        }
    }

    /// Reads `out.len()` bytes (a multiple of 4) of log page `lid` for
    /// namespace `nsid` (0xffffffff: controller-wide).
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, out: &mut [u8]) -> Result<(), NvmeError> {
        self.ready()?;
        let mut done = 0;
        while done < out.len() {
            let n = (out.len() - done).min(4096);
            let n4 = n.div_ceil(4) * 4;
            self.admin_command(
                cmd::get_log_page(lid, nsid, n4, done as u64),
                true,
                "Get Log Page",
            )?;
            self.scratch.read_at(0, &mut out[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// SMART / Health Information, controller-wide.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub fn smart_log(&mut self) -> Result<SmartLog, NvmeError> {
        let mut b = [0u8; 512];
        self.get_log_page(log_page::SMART, 0xffff_ffff, &mut b)?;
        // SAFETY: SmartLog is repr(C), 512 bytes, made only of integers and
        // byte arrays, so every bit pattern is valid.
        Ok(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<SmartLog>()) })
    }

    /// The Error Information log, newest first (up to ELPE + 1 entries, at
    /// most 64).
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub fn error_log(&mut self) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let n = (self.identify.elpe as usize + 1).min(64);
        let mut b = vec![0u8; n * 64];
        self.get_log_page(log_page::ERROR, 0xffff_ffff, &mut b)?;
        Ok(b.chunks_exact(64)
            // SAFETY: ErrorLogEntry is repr(C), 64 bytes of integers: every
            // bit pattern is valid.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<ErrorLogEntry>()) })
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// Get Features: the current value (DW0) of feature `fid`.
    ///
    /// # Errors
    /// The failing command.
    pub fn get_feature(&mut self, fid: u8, nsid: u32) -> Result<u32, NvmeError> {
        self.ready()?;
        self.admin_command(cmd::get_features(fid, nsid), false, "Get Features")
    }

    /// Set Features: sets feature `fid` to `value` (CDW11); returns DW0.
    ///
    /// # Errors
    /// The failing command.
    pub fn set_feature(&mut self, fid: u8, value: u32) -> Result<u32, NvmeError> {
        self.ready()?;
        self.admin_command(cmd::set_features(fid, value), false, "Set Features")
    }

    /// Asks the controller to abort command `cid` on queue `qid`. Returns
    /// whether the controller says it was aborted (DW0 bit 0 clear).
    ///
    /// # Errors
    /// The failing Abort command.
    pub fn abort(&mut self, qid: u16, cid: u16) -> Result<bool, NvmeError> {
        self.ready()?;
        let dw0 = self.admin_command(cmd::abort(qid, cid), false, "Abort")?;
        Ok(dw0 & 1 == 0)
    }

    /// Formats namespace `nsid` with LBA format `lbaf` (erasing it), then
    /// re-reads the namespaces.
    ///
    /// # Errors
    /// [`NvmeError::Unsupported`] when the controller lacks Format NVM, or
    /// the failing command.
    pub fn format_nvm(&mut self, nsid: u32, lbaf: u8) -> Result<Vec<NsEvent>, NvmeError> {
        self.ready()?;
        if !self.identify.supports_format() {
            return Err(NvmeError::Unsupported {
                ctrlr: self.shared.name.clone(),
                what: "Format NVM (OACS bit 1)".into(),
            });
        }
        self.admin_command(cmd::format_nvm(nsid, lbaf), false, "Format NVM")?;
        self.rescan_namespaces()
    }

    /// Re-reads the active namespaces, updates the table I/O checks use, and
    /// reports (and hands to the handler) what changed.
    ///
    /// # Errors
    /// The failing Identify command.
    pub fn rescan_namespaces(&mut self) -> Result<Vec<NsEvent>, NvmeError> {
        self.ready()?;
        let mut nsids = Vec::new();
        loop {
            let after = nsids.last().copied().unwrap_or(0);
            self.admin_command(
                cmd::active_namespaces(after),
                true,
                "Identify (Active Namespace List)",
            )?;
            let mut b = [0u8; 4096];
            self.scratch.read_at(0, &mut b);
            let mut n = 0;
            for c in b.chunks_exact(4) {
                let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if id == 0 || id <= nsids.last().copied().unwrap_or(0) || id == u32::MAX {
                    break;
                }
                nsids.push(id);
                n += 1;
            }
            if n < 1024 || nsids.len() >= 1 << 16 {
                break;
            }
        }
        let mut fresh = BTreeMap::new();
        for nsid in nsids {
            self.admin_command(cmd::identify_namespace(nsid), true, "Identify Namespace")?;
            let mut b = [0u8; 4096];
            self.scratch.read_at(0, &mut b);
            let id = IdentifyNamespace::parse(&b);
            if id.is_active() {
                fresh.insert(nsid, Namespace::from_identify(nsid, &id));
            }
        }
        let events = diff(&self.namespaces, &fresh);
        for ev in &events {
            match ev {
                NsEvent::Removed(nsid) => {
                    if let Some(b) = self.shared.block_sizes.get(*nsid as usize - 1) {
                        b.store(0, Ordering::Relaxed);
                    }
                }
                NsEvent::Added(ns) | NsEvent::Resized { ns, .. } => {
                    if let Some(b) = self.shared.block_sizes.get(ns.nsid as usize - 1) {
                        b.store(ns.block_size, Ordering::Relaxed);
                    }
                }
            }
        }
        self.namespaces = fresh;
        self.deliver(&events);
        Ok(events)
    }

    fn deliver(&mut self, events: &[NsEvent]) {
        if let Some(h) = self.handler.as_mut() {
            for e in events {
                h(e);
            }
        }
    }

    /// The admin poller: call it periodically (a timed poller, every few
    /// milliseconds) on the core that owns the controller. It reaps
    /// asynchronous events (and re-reads the namespaces on a Namespace
    /// Attribute Changed notice), aborts timed-out commands, resets the
    /// controller on a fatal status or when asked, and notices removal.
    ///
    /// # Errors
    /// [`NvmeError::Removed`] once the controller is gone; errors of a reset.
    pub fn poll_admin(&mut self) -> Result<(), NvmeError> {
        if self.shared.state() == CtrlrState::Removed {
            return Err(NvmeError::Removed {
                ctrlr: self.shared.name.clone(),
            });
        }
        let st = self.shared.regs.read32(Registers::CSTS);
        if st == u32::MAX {
            self.mark_removed();
            return Err(NvmeError::Removed {
                ctrlr: self.shared.name.clone(),
            });
        }
        if st & csts::CFS != 0 {
            log::warn!("{}: controller fatal status; resetting", self.shared.name);
            return self.reset();
        }
        let events = {
            let mut admin = self.shared.admin();
            if !admin.busy() {
                let _ = admin.poll();
            }
            std::mem::take(&mut admin.events)
        };
        let requests = std::mem::take(
            &mut *self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if requests.contains(&Request::Reset) {
            return self.reset();
        }
        for r in requests {
            if let Request::Abort { qid, cid } = r {
                match self.abort(qid, cid) {
                    Ok(aborted) => log::info!(
                        "{}: abort of queue {qid} command {cid}: {}",
                        self.shared.name,
                        if aborted { "aborted" } else { "not aborted" }
                    ),
                    Err(e) => log::warn!(
                        "{}: abort of queue {qid} command {cid} failed: {e}",
                        self.shared.name
                    ),
                }
            }
        }
        for dw0 in events {
            self.handle_async_event(dw0)?;
        }
        let limit = self.aer_limit;
        self.shared.admin().post_aers(limit);
        Ok(())
    }

    fn handle_async_event(&mut self, dw0: u32) -> Result<(), NvmeError> {
        let kind = dw0 & 7;
        let info = (dw0 >> 8) & 0xff;
        let lid = ((dw0 >> 16) & 0xff) as u8;
        log::info!(
            "{}: asynchronous event type {kind} info {info:#x} log {lid:#x}",
            self.shared.name
        );
        // Reading the log page the event names re-arms the event.
        if lid != 0 {
            let mut b = vec![
                0u8;
                if lid == log_page::CHANGED_NS_LIST {
                    4096
                } else {
                    512
                }
            ];
            if let Err(e) = self.get_log_page(lid, 0xffff_ffff, &mut b) {
                log::warn!("{e}");
            }
        }
        const NOTICE: u32 = 2;
        const NS_ATTRIBUTE_CHANGED: u32 = 0;
        if kind == NOTICE && info == NS_ATTRIBUTE_CHANGED {
            self.rescan_namespaces()?;
        }
        Ok(())
    }

    fn mark_removed(&mut self) {
        log::warn!("{}: controller removed", self.shared.name);
        self.shared.set_state(CtrlrState::Removed);
        self.shared.admin().reset();
    }

    /// Resets the controller: refuses new I/O, disables the controller
    /// (which ends every command on it), re-initialises it and re-reads the
    /// namespaces. Queue pairs complete what was outstanding with
    /// "aborted by reset" and re-create their queues on their next poll.
    ///
    /// # Errors
    /// The step that failed; a controller that does not come back is marked
    /// removed.
    pub fn reset(&mut self) -> Result<(), NvmeError> {
        let sh = self.shared.clone();
        if sh.state() == CtrlrState::Removed {
            return Err(NvmeError::Removed {
                ctrlr: sh.name.clone(),
            });
        }
        log::info!("{}: resetting controller", sh.name);
        sh.set_state(CtrlrState::Resetting);
        self.resets += 1;
        // Disable: the controller stops processing and forgets every queue.
        let regs = &*sh.regs;
        let deadline = Instant::now() + Duration::from_millis(self.cap.timeout_ms().max(500));
        regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
        loop {
            let st = regs.read32(Registers::CSTS);
            if st == u32::MAX {
                self.mark_removed();
                return Err(NvmeError::Removed {
                    ctrlr: sh.name.clone(),
                });
            }
            if st & csts::RDY == 0 {
                break;
            }
            if Instant::now() > deadline {
                self.mark_removed();
                return Err(NvmeError::InitTimeout {
                    ctrlr: sh.name.clone(),
                    state: "reset-disable",
                    waited_ms: self.cap.timeout_ms().max(500),
                    csts: st,
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        sh.admin().reset();
        sh.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // From here on queue pairs fail what they had and wait for Ready.
        sh.bump_generation();
        match Init::new(self.cap, self.opts.io_queues, false).run(&sh, &self.scratch) {
            Ok(r) => {
                let events = self.apply(r);
                sh.set_state(CtrlrState::Ready);
                self.deliver(&events);
                Ok(())
            }
            Err(e) => {
                self.mark_removed();
                Err(e)
            }
        }
    }

    /// Asks for a reset from any thread holding a queue pair (it happens on
    /// the next [`Controller::poll_admin`]).
    pub fn request_reset(&self) {
        self.shared.request(Request::Reset);
    }

    /// Orderly shutdown: normal shutdown notification, then wait (bounded by
    /// CAP.TO) for the controller to finish. Queue pairs fail fast after.
    pub fn shutdown(&mut self) {
        let sh = &self.shared;
        if sh.state() == CtrlrState::Removed {
            return;
        }
        sh.set_state(CtrlrState::Removed);
        let regs = &*sh.regs;
        let v = regs.read32(Registers::CC);
        regs.write32(Registers::CC, (v & !cc::SHN_MASK) | cc::SHN_NORMAL);
        let deadline =
            Instant::now() + Duration::from_millis(self.cap.timeout_ms().clamp(500, 10_000));
        while Instant::now() < deadline {
            let st = regs.read32(Registers::CSTS);
            if st == u32::MAX || st & csts::SHST_MASK == csts::SHST_COMPLETE {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
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

fn diff(old: &BTreeMap<u32, Namespace>, new: &BTreeMap<u32, Namespace>) -> Vec<NsEvent> {
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
