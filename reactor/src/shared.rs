//! State every reactor of one runtime shares: the rings, the statistics, the
//! life-cycle phase and the panic reports.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Clock;

use crate::message::Message;
use crate::ring::Inbox;
use crate::stats::StatsCell;
use crate::{CoreId, Error, IdleStrategy, context};

pub(crate) const RUNNING: u8 = 0;
pub(crate) const DRAINING: u8 = 1;
pub(crate) const STOPPED: u8 = 2;

/// Whether a send may wait (or queue) when the ring is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Never wait: report `RingFull`.
    Try,
    /// Queue (on a reactor) or wait (elsewhere) until there is room.
    Send,
}

/// Tunables fixed at start.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub ring_capacity: usize,
    pub message_batch: usize,
    pub task_batch: usize,
    pub idle: IdleStrategy,
    pub drain_timeout: Duration,
    /// A simulation: nobody drains a ring while a sender waits, so sending
    /// never waits.
    pub simulated: bool,
}

/// A panic caught on a reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicReport {
    /// The core it happened on.
    pub core: CoreId,
    /// What panicked: `"message"`, `"poller <name>"`, `"task"`.
    pub what: String,
    /// The panic's message.
    pub message: String,
}

impl PanicReport {
    /// The report as an [`Error::Panicked`].
    pub fn to_error(&self) -> Error {
        Error::Panicked {
            core: self.core,
            what: self.what.clone(),
            message: self.message.clone(),
        }
    }
}

pub(crate) struct Shared {
    pub cores: Vec<CoreId>,
    index_of: Vec<u32>,
    pub inboxes: Box<[Inbox]>,
    pub stats: Box<[StatsCell]>,
    phase: AtomicU8,
    /// Written by every outside sender: on its own cache line, away from
    /// `phase`, which every reactor reads all the time.
    external_active: Padded<AtomicUsize>,
    pub panics: Mutex<Vec<PanicReport>>,
    pub config: Config,
    pub clock: Clock,
    shutdown_requested: Mutex<bool>,
    shutdown_cv: Condvar,
}

impl Shared {
    pub(crate) fn new(cores: &[CoreId], config: Config) -> Shared {
        let top = cores.iter().copied().max().unwrap_or(0) as usize;
        let mut index_of = vec![u32::MAX; top + 1];
        for (i, c) in cores.iter().enumerate() {
            index_of[*c as usize] = i as u32;
        }
        Shared {
            cores: cores.to_vec(),
            index_of,
            inboxes: cores
                .iter()
                .map(|_| Inbox::new(cores.len(), config.ring_capacity))
                .collect(),
            stats: cores.iter().map(|_| StatsCell::default()).collect(),
            phase: AtomicU8::new(RUNNING),
            external_active: Padded(AtomicUsize::new(0)),
            panics: Mutex::new(Vec::new()),
            config,
            clock: Clock::new(),
            shutdown_requested: Mutex::new(false),
            shutdown_cv: Condvar::new(),
        }
    }

    /// The reactor index of `core`.
    #[inline]
    pub(crate) fn index(&self, core: CoreId) -> Result<usize, Error> {
        match self.index_of.get(core as usize) {
            Some(&i) if i != u32::MAX => Ok(i as usize),
            _ => Err(Error::NoSuchCore {
                core,
                cores: self.cores.clone(),
            }),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    pub(crate) fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    /// Sends to the reactor at `index`: through the current reactor's path
    /// when called on a reactor of this runtime, else the external path.
    #[inline]
    pub(crate) fn send_idx(
        self: &Arc<Self>,
        index: usize,
        msg: Message,
        mode: Mode,
    ) -> Result<(), (Error, Message)> {
        if let Some(r) = context::current()
            && Arc::ptr_eq(&r.shared, self)
        {
            return r.send_from_here(index, msg, mode);
        }
        self.send_external(index, msg, mode)
    }

    /// Sends from a thread that is not one of this runtime's reactors.
    fn send_external(
        &self,
        index: usize,
        mut msg: Message,
        mode: Mode,
    ) -> Result<(), (Error, Message)> {
        let core = self.cores[index];
        self.external_active.0.fetch_add(1, Ordering::SeqCst);
        let _guard = ExternalGuard(&self.external_active.0);
        if self.phase.load(Ordering::SeqCst) != RUNNING {
            return Err((Error::ShuttingDown { core }, msg));
        }
        let inbox = &self.inboxes[index];
        let mut spins = 0u32;
        loop {
            match inbox.push_external(msg) {
                Ok(()) => return Ok(()),
                Err(m) => msg = m,
            }
            if mode == Mode::Try || self.config.simulated {
                let capacity = inbox.capacity();
                return Err((Error::RingFull { core, capacity }, msg));
            }
            if self.phase() == STOPPED {
                return Err((Error::ShuttingDown { core }, msg));
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Waits until no external send is half-way through.
    pub(crate) fn wait_external_quiet(&self) {
        while self.external_active.0.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    pub(crate) fn record_panic(&self, report: PanicReport) {
        log::error!(
            "{} panicked on core {}: {}",
            report.what,
            report.core,
            report.message
        );
        self.panics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(report);
    }

    pub(crate) fn panics(&self) -> Vec<PanicReport> {
        self.panics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn request_shutdown(&self) {
        *self
            .shutdown_requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shutdown_cv.notify_all();
    }

    pub(crate) fn wait_shutdown_request(&self) {
        let mut g = self
            .shutdown_requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*g {
            g = self
                .shutdown_cv
                .wait(g)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Drops whatever is still in the rings after the reactors stopped and
    /// returns how many messages that was.
    ///
    /// # Safety
    /// Every reactor must be finished (threads joined, or the simulation
    /// torn down on this thread): the caller becomes the rings' consumer.
    pub(crate) unsafe fn discard_leftovers(&self) -> usize {
        let mut n = 0;
        for inbox in self.inboxes.iter() {
            // SAFETY: the caller guarantees no reactor consumes any more.
            while let Some(m) = unsafe { inbox.pop_any() } {
                drop(m);
                n += 1;
            }
        }
        n
    }
}

#[repr(align(128))]
struct Padded<T>(T);

struct ExternalGuard<'a>(&'a AtomicUsize);

impl Drop for ExternalGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
