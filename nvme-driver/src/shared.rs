//! State of a controller that its queue pairs on other cores read: the
//! register window, the reset generation, the controller state, namespace
//! block sizes, the admin queue (held only for a moment: nothing waits
//! while holding it), the timeout settings, requests from queue pairs to
//! the controller's admin poller (abort, reset) and the queues being
//! deleted.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use dma::{DmaBuf, DmaMemory};

use crate::admin::{AdminEnd, AdminQueue};
use crate::regs::RegisterIo;

/// What a queue pair does about a command outstanding longer than the I/O
/// timeout (SPDK's `action_on_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TimeoutAction {
    /// Log it and keep waiting.
    None = 0,
    /// Abort the command; reset the controller if the Abort fails.
    Abort = 1,
    /// Reset the controller.
    Reset = 2,
}

impl TimeoutAction {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => TimeoutAction::Abort,
            2 => TimeoutAction::Reset,
            _ => TimeoutAction::None,
        }
    }

    /// SPDK's name for it (`none`, `abort`, `reset`).
    pub fn name(self) -> &'static str {
        match self {
            TimeoutAction::None => "none",
            TimeoutAction::Abort => "abort",
            TimeoutAction::Reset => "reset",
        }
    }
}

/// A queue being deleted on the controller: its rings stay allocated
/// until the controller has let go of them (the Delete commands
/// completed, or the controller was reset or removed).
pub(crate) struct Retired {
    pub qid: u16,
    /// Held, not read: freed with the entry.
    pub _rings: (DmaBuf, DmaBuf),
    pub generation: u64,
    /// The Delete command in flight: (ticket, deleting the SQ).
    pub step: Option<(u64, bool)>,
    pub sq_deleted: bool,
    /// A Delete failed: kept until the controller forgets the queue.
    pub stuck: bool,
}

/// Namespace ids the driver tracks (1..=MAX_NSID).
pub(crate) const MAX_NSID: usize = 1024;

/// The states a controller can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlrState {
    /// Being brought up for the first time.
    Initializing = 0,
    /// Ready for I/O.
    Ready = 1,
    /// Being reset: submissions are refused with "resetting".
    Resetting = 2,
    /// Gone or shut down: everything fails fast.
    Removed = 3,
    /// A reset failed: I/O is refused until another reset succeeds.
    Failed = 4,
}

impl CtrlrState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => CtrlrState::Initializing,
            1 => CtrlrState::Ready,
            2 => CtrlrState::Resetting,
            4 => CtrlrState::Failed,
            _ => CtrlrState::Removed,
        }
    }

    /// The state's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            CtrlrState::Initializing => "initializing",
            CtrlrState::Ready => "ready",
            CtrlrState::Resetting => "resetting",
            CtrlrState::Removed => "removed",
            CtrlrState::Failed => "failed",
        }
    }
}

/// Something a queue pair asks of the controller's admin poller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Abort a command that timed out.
    Abort { qid: u16, cid: u16 },
    /// Reset the controller (an abort did not help).
    Reset,
}

pub(crate) struct Shared {
    pub name: String,
    pub regs: Arc<dyn RegisterIo>,
    pub stride: usize,
    pub page_size: usize,
    pub max_transfer: AtomicU64,
    /// SGL data blocks: the alignment they need, 0 = PRPs only.
    pub sgl_align: AtomicU32,
    pub mqes: u32,
    state: AtomicU8,
    generation: AtomicU64,
    /// Block size per namespace id (index nsid - 1); 0 = inactive.
    pub block_sizes: Box<[AtomicU32]>,
    pub admin: Mutex<AdminQueue>,
    pub requests: Mutex<Vec<Request>>,
    pub free_qids: Mutex<Vec<u16>>,
    pub retired: Mutex<Vec<Retired>>,
    /// Each live queue pair's count of commands in the controller's hands
    /// (stored by the queue pair after each poll): what a drained reset
    /// waits for.
    loads: Mutex<Vec<Weak<AtomicU32>>>,
    pub granted_queues: AtomicU32,
    pub mem: DmaMemory,
    admin_timeout_us: AtomicU64,
    io_timeout_us: AtomicU64,
    timeout_action: AtomicU8,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        regs: Arc<dyn RegisterIo>,
        stride: usize,
        page_size: usize,
        mqes: u32,
        admin: AdminQueue,
        mem: DmaMemory,
        admin_timeout: Duration,
    ) -> Self {
        Shared {
            name,
            regs,
            stride,
            page_size,
            max_transfer: AtomicU64::new(u64::MAX),
            sgl_align: AtomicU32::new(0),
            mqes,
            state: AtomicU8::new(CtrlrState::Initializing as u8),
            generation: AtomicU64::new(0),
            block_sizes: (0..MAX_NSID).map(|_| AtomicU32::new(0)).collect(),
            admin: Mutex::new(admin),
            requests: Mutex::new(Vec::new()),
            free_qids: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            loads: Mutex::new(Vec::new()),
            granted_queues: AtomicU32::new(0),
            mem,
            admin_timeout_us: AtomicU64::new(admin_timeout.as_micros().max(1) as u64),
            io_timeout_us: AtomicU64::new(0),
            timeout_action: AtomicU8::new(TimeoutAction::None as u8),
        }
    }

    /// How long an admin command may take.
    pub fn admin_timeout(&self) -> Duration {
        Duration::from_micros(self.admin_timeout_us.load(Ordering::Relaxed))
    }

    pub fn set_admin_timeout(&self, t: Duration) {
        self.admin_timeout_us.store(
            t.as_micros().clamp(1, u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// The I/O command timeout (None: off).
    #[inline]
    pub fn io_timeout(&self) -> Option<Duration> {
        match self.io_timeout_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn set_io_timeout(&self, t: Option<Duration>, action: TimeoutAction) {
        self.timeout_action.store(action as u8, Ordering::Relaxed);
        self.io_timeout_us.store(
            t.map_or(0, |t| t.as_micros().clamp(1, u64::MAX as u128) as u64),
            Ordering::Relaxed,
        );
    }

    pub fn timeout_action(&self) -> TimeoutAction {
        TimeoutAction::from_u8(self.timeout_action.load(Ordering::Relaxed))
    }

    /// Gives queue `qid` back for reuse.
    pub fn free_qid(&self, qid: u16) {
        self.free_qids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(qid);
    }

    /// A counter of commands in the controller's hands for a new queue
    /// pair to keep (control path).
    pub fn register_load(&self) -> Arc<AtomicU32> {
        let a = Arc::new(AtomicU32::new(0));
        let mut l = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|w| w.strong_count() > 0);
        l.push(Arc::downgrade(&a));
        a
    }

    /// Commands the live queue pairs have in the controller's hands, as of
    /// their last polls.
    pub fn commands_in_device(&self) -> u64 {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .map(|a| a.load(Ordering::Acquire) as u64)
            .sum()
    }

    /// Whether queues are being deleted.
    pub fn retiring(&self) -> bool {
        !self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Advances the deletion of retired queues (Delete SQ, then Delete CQ,
    /// then the rings and the queue id are free); never waits. Queues of a
    /// controller reset or removed since they retired are simply freed:
    /// the controller forgot them.
    pub fn drive_retired(&self) {
        let Ok(mut retired) = self.retired.try_lock() else {
            return;
        };
        if retired.is_empty() {
            return;
        }
        let (state, generation) = (self.state(), self.generation());
        let timeout = self.admin_timeout();
        let mut admin = self.admin();
        let mut i = 0;
        while i < retired.len() {
            let r = &mut retired[i];
            if state == CtrlrState::Removed || r.generation != generation {
                if let Some((t, _)) = r.step.take() {
                    admin.forget(t);
                }
                let r = retired.swap_remove(i);
                self.free_qid(r.qid);
                continue;
            }
            if state != CtrlrState::Ready || r.stuck {
                i += 1;
                continue;
            }
            match r.step {
                None => {
                    let sqe = if r.sq_deleted {
                        crate::cmd::admin::delete_io_cq(r.qid)
                    } else {
                        crate::cmd::admin::delete_io_sq(r.qid)
                    };
                    if let Ok(t) = admin.start(sqe, &[], None, timeout) {
                        r.step = Some((t, !r.sq_deleted));
                    }
                    i += 1;
                }
                Some((t, sq)) => match admin.check(t, None) {
                    None => i += 1,
                    Some((AdminEnd::Done(Ok(_)), _)) if sq => {
                        r.step = None;
                        r.sq_deleted = true;
                        i += 1;
                    }
                    Some((AdminEnd::Done(Ok(_)), _)) => {
                        let r = retired.swap_remove(i);
                        self.free_qid(r.qid);
                    }
                    Some((AdminEnd::Done(Err(e)), _)) if sq => {
                        // No submission queue to delete (its creation did
                        // not finish): the completion queue next.
                        log::debug!("{}: deleting queue {} (SQ): {e}", self.name, r.qid);
                        r.step = None;
                        r.sq_deleted = true;
                        i += 1;
                    }
                    Some((end, _)) => {
                        // The controller refused or did not answer: it may
                        // still use the rings, so they stay until a reset
                        // or the removal makes it forget the queue.
                        log::warn!(
                            "{}: deleting queue {} ({}): {}",
                            self.name,
                            r.qid,
                            if sq { "SQ" } else { "CQ" },
                            match end {
                                AdminEnd::TimedOut => "timed out".to_string(),
                                AdminEnd::Done(r) =>
                                    r.err().map_or_else(String::new, |e| e.to_string()),
                            }
                        );
                        if end == AdminEnd::TimedOut {
                            self.request(Request::Reset);
                        }
                        r.step = None;
                        r.stuck = true;
                        i += 1;
                    }
                },
            }
        }
    }

    pub fn state(&self) -> CtrlrState {
        CtrlrState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: CtrlrState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Block size of namespace `nsid`, or 0 when it is not active.
    #[inline]
    pub fn block_size(&self, nsid: u32) -> u32 {
        nsid.checked_sub(1)
            .and_then(|i| self.block_sizes.get(i as usize))
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    pub fn admin(&self) -> MutexGuard<'_, AdminQueue> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request(&self, r: Request) {
        let mut q = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if !q.contains(&r) {
            q.push(r);
        }
    }

    /// Whether the registers read all-ones (the device is gone).
    pub fn registers_gone(&self) -> bool {
        self.regs.read32(crate::regs::Registers::CSTS) == u32::MAX
    }
}
