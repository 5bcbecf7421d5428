//! Per-bdev, per-core I/O channels and the I/O path, one concern per file:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the channel's state, its creation and poller |
//! | `api.rs` | `BdevChannel`: checks and every submission call |
//! | `pool.rs` | the pooled `BdevIo`s |
//! | `submit.rs` | towards the module: the layer's own answers, emulations, then the module |
//! | `split.rs` | splitting on the module's limits, write-zeroes children |
//! | `bounce.rs` | bounce buffers for segments the module cannot take |
//! | `zcopy.rs` | zero-copy windows |
//! | `retry.rs` | out-of-resources queueing and retries |
//! | `complete.rs` | deferred completions, statistics, callbacks |
//!
//! Everything here runs on the channel's core; nothing locks or allocates
//! per I/O (bounce buffers come from the core's DMA cache).

mod api;
mod bounce;
mod complete;
mod pool;
mod retry;
mod split;
mod submit;
mod zcopy;

pub use api::BdevChannel;
pub(crate) use api::Request;
use complete::call_back;
pub(crate) use complete::{complete, finish};
use retry::retry_nomem;
pub(crate) use split::slice_iovs;
use split::{continue_split, needs_split};
pub(crate) use submit::submit;
use zcopy::zcopy_started;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use dma::{DmaBuf, DmaCache};
use reactor::{PollStatus, Poller};

use crate::bdev::BdevInner;
use crate::io::BdevIo;
use crate::stats::ChannelStats;
use crate::types::{IoStatus, IoType};

/// Children of one split I/O in flight at once.
const MAX_CHILDREN: u32 = 8;
/// Size of each channel's zero buffer for emulated write zeroes.
const ZERO_BUF: usize = 128 * 1024;

/// The value the reactor keeps per core for each bdev.
pub struct Chan {
    pub(crate) state: Rc<ChanState>,
    poller: Option<Poller>,
}

pub(crate) struct ChanState {
    pub bdev: Arc<BdevInner>,
    module_ch: Result<Box<dyn Any>, String>,
    // Boxed: an I/O's address must not move while it is in flight.
    #[allow(clippy::vec_box)]
    pub(super) pool: RefCell<Vec<Box<BdevIo>>>,
    pool_size: usize,
    nomem: RefCell<VecDeque<NonNull<BdevIo>>>,
    /// Queued I/O is retried once the I/O in the module falls to this
    /// (SPDK's `nomem_threshold`), not on every completion.
    nomem_threshold: Cell<usize>,
    /// Set when a module answers NoMem (a retry round stops there).
    nomem_hit: Cell<bool>,
    deferred: RefCell<VecDeque<(NonNull<BdevIo>, IoStatus)>>,
    in_submit: Cell<u32>,
    outstanding: Cell<usize>,
    pub(crate) stats: Arc<ChannelStats>,
    /// Per-I/O latency tracking (a snapshot of the layer's setting).
    track: bool,
    /// The module's `io_type_supported`, one bit per type (asked once,
    /// when the channel is made).
    supported: u16,
    /// A reset froze the channel: new I/O ends ABORTED (`reset.rs`).
    pub(crate) frozen: Cell<bool>,
    /// Resets submitted on this channel and not yet completed.
    pub(crate) resets: Cell<usize>,
    /// Quiesced ranges and the I/O held by them (`quiesce.rs`).
    pub(crate) quiesce: crate::quiesce::ChannelQuiesce,
    cache: RefCell<DmaCache>,
    zero_buf: RefCell<Option<DmaBuf>>,
    /// I/O over the bdev's QoS limits, in order, until a slice refills.
    pub(crate) qos_queue: RefCell<VecDeque<NonNull<BdevIo>>>,
    /// This channel's side of the bdev's QoS (credit dealt to it).
    pub(crate) qos_ch: Arc<crate::qos::ChannelQos>,
    /// This channel's latency histogram (`bdev_enable_histogram`).
    pub(crate) histogram: RefCell<Option<Box<[u64]>>>,
    /// The I/O type the histogram counts (None: all).
    pub(crate) histogram_opc: Cell<Option<IoType>>,
}

impl Chan {
    pub(crate) fn new(bdev: Arc<BdevInner>, core: reactor::CoreId) -> Chan {
        let module_ch = bdev.ops.create_channel(core);
        if let Err(e) = &module_ch {
            log::error!("bdev {}: no channel on core {core}: {e}", bdev.props.name);
        }
        let pool_size = crate::env::io_pool_size();
        let hist_opc = *bdev.histogram_opc.lock().unwrap_or_else(|p| p.into_inner());
        let stats = Arc::new(ChannelStats::default());
        bdev.channel_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&stats));
        let state = Rc::new(ChanState {
            module_ch,
            pool: RefCell::new((0..pool_size).map(|_| Box::new(BdevIo::new())).collect()),
            pool_size,
            nomem: RefCell::new(VecDeque::with_capacity(pool_size)),
            nomem_threshold: Cell::new(0),
            nomem_hit: Cell::new(false),
            deferred: RefCell::new(VecDeque::with_capacity(pool_size * 2)),
            in_submit: Cell::new(0),
            outstanding: Cell::new(0),
            stats,
            track: crate::env::latency_tracking(),
            supported: IoType::ALL
                .iter()
                .filter(|t| bdev.ops.io_type_supported(**t))
                .fold(0, |m, t| m | 1 << t.index()),
            quiesce: crate::quiesce::ChannelQuiesce::new(&bdev),
            frozen: Cell::new(bdev.frozen.load(std::sync::atomic::Ordering::Acquire)),
            resets: Cell::new(0),
            cache: RefCell::new(crate::env::memory().cache()),
            zero_buf: RefCell::new(None),
            qos_queue: RefCell::new(VecDeque::new()),
            qos_ch: bdev.qos.register(),
            histogram: RefCell::new(
                bdev.histogram
                    .load(std::sync::atomic::Ordering::Acquire)
                    .then(crate::histogram::new),
            ),
            histogram_opc: Cell::new(hist_opc),
            bdev,
        });
        let weak: Weak<ChanState> = Rc::downgrade(&state);
        let name = format!("bdev_channel_{}", state.bdev.props.name);
        let poller = reactor::current_core().map(|_| {
            reactor::register_poller(name, move || match weak.upgrade() {
                Some(s) => poll(&s),
                None => PollStatus::Idle,
            })
        });
        Chan { state, poller }
    }
}

impl Drop for Chan {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        // Completions deferred but not yet delivered are delivered now.
        poll(&self.state);
        let mut retired = self
            .state
            .bdev
            .retired_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.state.stats.add_into(&mut retired);
        if self.state.outstanding.get() > 0 {
            log::error!(
                "bdev {}: channel destroyed with {} I/O outstanding",
                self.state.bdev.props.name,
                self.state.outstanding.get()
            );
        }
    }
}

/// The channel poller: delivers completions deferred from inside
/// submissions, and retries I/O a module refused for lack of resources when
/// nothing else on the channel would trigger it.
fn poll(s: &Rc<ChanState>) -> PollStatus {
    let mut busy = false;
    // Only what was deferred before this poll: callbacks that submit again
    // defer new completions, which wait for the next poll (so the reactor's
    // other work gets its turn).
    let n = s.deferred.borrow().len();
    for _ in 0..n {
        let next = s.deferred.borrow_mut().pop_front();
        let Some((io, status)) = next else { break };
        busy = true;
        finish(s, io, status);
    }
    if !s.nomem.borrow().is_empty() && s.in_flight_in_module() == 0 {
        busy = true;
        retry_nomem(s);
    }
    if !s.qos_queue.borrow().is_empty() {
        busy |= release_qos(s);
    }
    if busy {
        PollStatus::Busy
    } else {
        PollStatus::Idle
    }
}

/// Submits the I/O waiting for QoS that the balances admit now (all of
/// it once no limit is left), in order.
fn release_qos(s: &Rc<ChanState>) -> bool {
    let mut released = false;
    loop {
        let front = s.qos_queue.borrow().front().copied();
        let Some(p) = front else { break };
        // SAFETY: queued I/O are in flight and owned by the layer.
        let io = unsafe { p.as_ref() };
        if s.bdev.qos.active() && !s.bdev.qos.admit_waiting(&s.qos_ch, io.ty, s.io_bytes(io)) {
            break;
        }
        s.qos_pop();
        released = true;
        s.submit_deferring(p);
    }
    released
}

impl ChanState {
    /// Sends an I/O towards the module; whatever completes during the
    /// submission (NOT-SUPPORTED, the layer's own answers, a module that
    /// completes at once) is delivered from the poller, never inside the
    /// caller's call.
    #[inline]
    pub(crate) fn submit_deferring(self: &Rc<Self>, p: NonNull<BdevIo>) {
        self.in_submit.set(self.in_submit.get() + 1);
        submit(self, p);
        self.in_submit.set(self.in_submit.get() - 1);
    }

    /// The bytes an I/O moves or covers (statistics, QoS).
    #[inline]
    pub(crate) fn io_bytes(&self, io: &BdevIo) -> u64 {
        io.num_blocks * self.bdev.props.block_size as u64
    }

    /// Whether a new I/O must wait for QoS: a limit is set, its type
    /// counts, and either I/O waits already (order is kept) or the
    /// balances refuse it.
    #[inline]
    pub(crate) fn qos_holds(&self, io: &BdevIo) -> bool {
        self.bdev.qos.active()
            && crate::qos::Qos::counts(io.ty)
            && (!self.qos_queue.borrow().is_empty()
                || !self.bdev.qos.admit(io.ty, self.io_bytes(io)))
    }

    /// Queues an I/O for QoS (publishing how much waits).
    pub(crate) fn qos_push(&self, p: NonNull<BdevIo>) {
        let mut q = self.qos_queue.borrow_mut();
        q.push_back(p);
        self.qos_ch.set_waiting(q.len());
    }

    /// Takes the first I/O waiting for QoS.
    pub(crate) fn qos_pop(&self) -> Option<NonNull<BdevIo>> {
        let mut q = self.qos_queue.borrow_mut();
        let p = q.pop_front();
        self.qos_ch.set_waiting(q.len());
        p
    }

    /// Takes the waiting I/O that `pick` chooses.
    pub(crate) fn qos_take(
        &self,
        pick: impl Fn(NonNull<BdevIo>) -> bool,
    ) -> Option<NonNull<BdevIo>> {
        let mut q = self.qos_queue.borrow_mut();
        let i = q.iter().position(|p| pick(*p))?;
        let p = q.remove(i);
        self.qos_ch.set_waiting(q.len());
        p
    }

    /// Whether I/O is timed: latency tracking or a histogram.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        self.track || self.histogram.borrow().is_some()
    }

    /// Starts (with `opc`: of that type only) or drops this channel's
    /// histogram; on the channel's core.
    pub(crate) fn set_histogram(&self, on: bool, opc: Option<IoType>) {
        *self.histogram.borrow_mut() = on.then(crate::histogram::new);
        self.histogram_opc.set(opc);
    }

    /// Whether the module handles `ty`.
    #[inline]
    fn supports(&self, ty: IoType) -> bool {
        self.supported & (1 << ty.index()) != 0
    }

    /// The module's channel, when it could be made.
    pub(crate) fn module_channel(&self) -> Option<&dyn Any> {
        self.module_ch.as_ref().ok().map(|b| b.as_ref())
    }

    fn in_flight_in_module(&self) -> usize {
        self.outstanding
            .get()
            .saturating_sub(self.nomem.borrow().len() + self.quiesce.held())
    }

    /// The core's DMA cache (bounce buffers).
    pub(crate) fn cache(&self) -> std::cell::RefMut<'_, DmaCache> {
        self.cache.borrow_mut()
    }

    /// The queue of I/O refused by the module for lack of resources.
    pub(crate) fn nomem_queue(&self) -> std::cell::RefMut<'_, VecDeque<NonNull<BdevIo>>> {
        self.nomem.borrow_mut()
    }

    /// Starts an I/O the layer makes itself (an emulation's step) as a
    /// top-level I/O of this channel: counted, timed, through the whole
    /// submission path.
    pub(crate) fn launch_internal(self: &Rc<Self>, mut p: NonNull<BdevIo>) {
        // SAFETY: freshly allocated by the caller, exclusively the layer's.
        let io = unsafe { p.as_mut() };
        io.start = if self.timed() {
            crate::env::io_clock()
        } else {
            0
        };
        io.epoch = self.quiesce.epoch();
        self.outstanding.set(self.outstanding.get() + 1);
        self.submit_deferring(p);
    }

    /// I/O objects in use (in flight, queued or held).
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// A top-level I/O is over: uncounted (and, if it was in flight when a
    /// quiesce began, counted towards that quiesce's drain).
    fn retire(&self, io: &BdevIo) {
        self.outstanding.set(self.outstanding.get() - 1);
        self.quiesce.retired(io.epoch);
    }
}
