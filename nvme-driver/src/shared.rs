//! State of a controller that its queue pairs on other cores read: the
//! register window, the reset generation, the controller state, namespace
//! block sizes, the admin queue (for queue re-creation) and requests from
//! queue pairs to the controller's admin poller (abort, reset).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dma::DmaMemory;

use crate::admin::AdminQueue;
use crate::regs::RegisterIo;

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
    /// Gone or failed for good: everything fails fast.
    Removed = 3,
}

impl CtrlrState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => CtrlrState::Initializing,
            1 => CtrlrState::Ready,
            2 => CtrlrState::Resetting,
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
    pub granted_queues: AtomicU32,
    pub mem: DmaMemory,
    pub admin_timeout: Duration,
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
            block_sizes: (0..1024).map(|_| AtomicU32::new(0)).collect(),
            admin: Mutex::new(admin),
            requests: Mutex::new(Vec::new()),
            free_qids: Mutex::new(Vec::new()),
            granted_queues: AtomicU32::new(0),
            mem,
            admin_timeout,
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
