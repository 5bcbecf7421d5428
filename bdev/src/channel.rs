//! Per-bdev, per-core I/O channels and the I/O path: bounds checks, the
//! pooled `BdevIo`s, splitting on the module's limits, write-zeroes
//! emulation, bounce buffers, NOT-SUPPORTED answers, NoMem queueing,
//! deferred completions, statistics.
//!
//! Everything here runs on the channel's core; nothing locks or allocates
//! per I/O (bounce buffers come from the core's DMA cache).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use dma::{DmaBuf, DmaCache};
use reactor::{IoChannel, PollStatus, Poller};

use crate::bdev::{Bdev, BdevInner};
use crate::desc::DescInner;
use crate::error::BdevError;
use crate::io::{BdevIo, IoCallback, IoHandle, MAX_IOV};
use crate::stats::ChannelStats;
use crate::types::{IoStatus, IoType, IoVec};

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
    pool: RefCell<Vec<Box<BdevIo>>>,
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
    stats: Arc<ChannelStats>,
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
}

impl Chan {
    pub(crate) fn new(bdev: Arc<BdevInner>, core: reactor::CoreId) -> Chan {
        let module_ch = bdev.ops.create_channel(core);
        if let Err(e) = &module_ch {
            log::error!("bdev {}: no channel on core {core}: {e}", bdev.props.name);
        }
        let pool_size = crate::env::io_pool_size();
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
    if busy {
        PollStatus::Busy
    } else {
        PollStatus::Idle
    }
}

impl ChanState {
    /// Something was queued for lack of resources: retry once half the
    /// I/O in the module (or all but 8 of it, whichever leaves more) has
    /// completed, as SPDK does.
    fn out_of_resources(&self) {
        let inflight = self.in_flight_in_module();
        self.nomem_threshold
            .set((inflight / 2).max(inflight.saturating_sub(8)));
        self.nomem_hit.set(true);
    }

    /// Whether the queued I/O should be tried again now.
    #[inline]
    fn retry_due(&self) -> bool {
        !self.nomem.borrow().is_empty() && self.in_flight_in_module() <= self.nomem_threshold.get()
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
        io.start = if self.track {
            crate::env::io_clock()
        } else {
            0
        };
        io.epoch = self.quiesce.epoch();
        self.outstanding.set(self.outstanding.get() + 1);
        self.in_submit.set(self.in_submit.get() + 1);
        submit(self, p);
        self.in_submit.set(self.in_submit.get() - 1);
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

    pub(crate) fn alloc_io(self: &Rc<Self>) -> Option<NonNull<BdevIo>> {
        let b = self.pool.borrow_mut().pop()?;
        let mut p = NonNull::from(Box::leak(b));
        // SAFETY: just taken from the pool: nothing else refers to it.
        let io = unsafe { p.as_mut() };
        io.ch = Some(self.clone());
        Some(p)
    }

    pub(crate) fn free_io(&self, io: NonNull<BdevIo>) {
        // SAFETY: every pooled I/O was leaked from a Box in `alloc_io`, and
        // it is returned exactly once, when it ends.
        let mut b = unsafe { Box::from_raw(io.as_ptr()) };
        b.recycle();
        self.pool.borrow_mut().push(b);
    }
}

/// A bdev's I/O channel on this core. Not `Send`: use it on the core that
/// got it.
///
/// It is bound to the descriptor it was got from: I/O carries that
/// descriptor's rights (read-only descriptors cannot write) and stops with it.
#[derive(Clone)]
pub struct BdevChannel {
    ch: IoChannel<Chan>,
    desc: Arc<DescInner>,
}

impl std::fmt::Debug for BdevChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevChannel")
            .field("bdev", &self.ch.state.bdev.props.name)
            .field("core", &self.ch.core())
            .finish()
    }
}

impl BdevChannel {
    pub(crate) fn get(bdev: &Bdev, desc: Arc<DescInner>) -> Result<BdevChannel, BdevError> {
        if reactor::current_core().is_none() {
            return Err(BdevError::NotOnReactor("get_io_channel"));
        }
        let ch = bdev.inner.io_device.get_io_channel().map_err(|e| match e {
            reactor::Error::DeviceUnregistering { .. } => {
                BdevError::Removing(bdev.name().to_owned())
            }
            other => BdevError::Module {
                module: bdev.module().to_owned(),
                reason: other.to_string(),
            },
        })?;
        if let Err(reason) = &ch.state.module_ch {
            return Err(BdevError::Module {
                module: bdev.module().to_owned(),
                reason: reason.clone(),
            });
        }
        Ok(BdevChannel { ch, desc })
    }

    fn state(&self) -> &Rc<ChanState> {
        &self.ch.state
    }

    /// The bdev's block size.
    pub fn block_size(&self) -> u32 {
        self.state().bdev.props.block_size
    }

    /// I/O in flight on this channel.
    pub fn outstanding(&self) -> usize {
        self.state().outstanding.get()
    }

    /// I/O objects the channel has.
    pub fn pool_size(&self) -> usize {
        self.state().pool_size
    }

    fn check(
        &self,
        ty: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        data: Option<usize>,
    ) -> Result<(), BdevError> {
        let b = &self.state().bdev;
        if self.desc.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BdevError::invalid(
                "descriptor",
                format!("closed; reopen {}", b.props.name),
            ));
        }
        if ty.writes() && !self.desc.writable() {
            return Err(BdevError::ReadOnly(b.props.name.clone()));
        }
        let size = b.num_blocks.load(std::sync::atomic::Ordering::Acquire);
        if matches!(ty, IoType::SeekData | IoType::SeekHole) {
            if offset_blocks >= size {
                return Err(BdevError::OutOfRange {
                    bdev: b.props.name.clone(),
                    offset_blocks,
                    num_blocks,
                    size_blocks: size,
                });
            }
            return Ok(());
        }
        let end = offset_blocks.checked_add(num_blocks);
        let needs_blocks = !matches!(ty, IoType::Reset | IoType::Abort);
        if needs_blocks && (num_blocks == 0 && ty != IoType::Flush || end.is_none_or(|e| e > size))
        {
            return Err(BdevError::OutOfRange {
                bdev: b.props.name.clone(),
                offset_blocks,
                num_blocks,
                size_blocks: size,
            });
        }
        if let Some(got) = data {
            let expected = num_blocks as usize * b.props.block_size as usize;
            if got != expected {
                return Err(BdevError::BufferSize { expected, got });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        ty: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        iovs: &[IoVec],
        buf: Option<DmaBuf>,
        fua: bool,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), (BdevError, Option<DmaBuf>)> {
        if ty == IoType::Zcopy {
            // Its rights and phases are set up by `zcopy_start` only.
            return Err((
                BdevError::invalid("I/O type", "zero-copy windows open with zcopy_start"),
                buf,
            ));
        }
        let args = (ty, offset_blocks, num_blocks, fua, cb, ctx);
        self.launch(args, iovs, buf, |_| {})
    }

    /// Takes an I/O from the pool, fills it, lets `setup` add to it, and
    /// sends it to the module.
    fn launch(
        &self,
        (ty, offset_blocks, num_blocks, fua, cb, ctx): (IoType, u64, u64, bool, IoCallback, usize),
        iovs: &[IoVec],
        buf: Option<DmaBuf>,
        setup: impl FnOnce(&mut BdevIo),
    ) -> Result<(), (BdevError, Option<DmaBuf>)> {
        let s = self.state();
        if iovs.len() > MAX_IOV {
            return Err((
                BdevError::invalid(
                    "iovs",
                    format!("{} segments, at most {MAX_IOV}", iovs.len()),
                ),
                buf,
            ));
        }
        let Some(mut p) = s.alloc_io() else {
            return Err((BdevError::NoMem(s.pool_size), buf));
        };
        // SAFETY: freshly allocated from the pool; exclusively ours.
        let io = unsafe { p.as_mut() };
        io.ty = ty;
        io.offset_blocks = offset_blocks;
        io.num_blocks = num_blocks;
        io.fua = fua;
        if !iovs.is_empty() {
            io.iov[..iovs.len()].copy_from_slice(iovs);
            io.iovcnt = iovs.len();
        }
        io.cb = Some(cb);
        io.ctx = ctx;
        io.buf = buf;
        io.start = if s.track { crate::env::io_clock() } else { 0 };
        setup(io);
        s.outstanding.set(s.outstanding.get() + 1);
        io.epoch = s.quiesce.epoch();
        if s.frozen.get() && !matches!(io.ty, IoType::Reset | IoType::Abort) {
            // A reset is under way: as SPDK, new I/O is aborted.
            s.in_submit.set(s.in_submit.get() + 1);
            complete(p, IoStatus::Aborted);
            s.in_submit.set(s.in_submit.get() - 1);
            return Ok(());
        }
        if s.quiesce.holds(io) {
            // In a quiesced range: waits for the unquiesce.
            s.quiesce.hold(p);
            return Ok(());
        }
        // Whatever completes during the submission (NOT-SUPPORTED, the
        // layer's own answers, a module that completes at once) is
        // delivered from the poller, never inside the caller's call.
        s.in_submit.set(s.in_submit.get() + 1);
        submit(s, p);
        s.in_submit.set(s.in_submit.get() - 1);
        Ok(())
    }

    /// Reads `num_blocks` at `offset_blocks` into `buf` (exactly that many
    /// bytes). `cb` gets the buffer back through [`BdevIo::take_buf`].
    ///
    /// # Errors
    /// Bounds, size and pool errors at once, with the buffer given back.
    pub fn read(
        &self,
        buf: DmaBuf,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.data_io(IoType::Read, buf, offset_blocks, num_blocks, false, cb, ctx)
    }

    /// Writes `buf` to `num_blocks` at `offset_blocks`, with Force Unit
    /// Access if `fua`.
    ///
    /// # Errors
    /// As [`BdevChannel::read`], and [`BdevError::ReadOnly`].
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        buf: DmaBuf,
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.data_io(IoType::Write, buf, offset_blocks, num_blocks, fua, cb, ctx)
    }

    /// Compares `num_blocks` at `offset_blocks` with `buf`
    /// ([`IoStatus::Miscompare`] when they differ).
    ///
    /// # Errors
    /// As [`BdevChannel::read`].
    pub fn compare(
        &self,
        buf: DmaBuf,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.data_io(
            IoType::Compare,
            buf,
            offset_blocks,
            num_blocks,
            false,
            cb,
            ctx,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn data_io(
        &self,
        ty: IoType,
        buf: DmaBuf,
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), (BdevError, DmaBuf)> {
        let len = num_blocks as usize * self.state().bdev.props.block_size as usize;
        if buf.len() < len {
            return Err((
                BdevError::BufferSize {
                    expected: len,
                    got: buf.len(),
                },
                buf,
            ));
        }
        if let Err(e) = self.check(ty, offset_blocks, num_blocks, None) {
            return Err((e, buf));
        }
        if ty == IoType::Zcopy {
            return Err((
                BdevError::invalid("I/O type", "zero-copy windows open with zcopy_start"),
                buf,
            ));
        }
        let iov = IoVec::of(&buf, 0, len);
        let args = (ty, offset_blocks, num_blocks, fua, cb, ctx);
        // One segment, set in place (no slice copy).
        self.launch(args, &[], Some(buf), |io| {
            io.iov[0] = iov;
            io.iovcnt = 1;
        })
        .map_err(|(e, b)| (e, b.expect("the buffer travels with the I/O")))
    }

    /// Submits an I/O over caller-managed segments (the path vbdevs use to
    /// pass their I/O to their base).
    ///
    /// # Safety
    /// The segments must stay valid, and untouched by the caller, until the
    /// callback runs.
    ///
    /// # Errors
    /// Bounds and pool errors at once.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn submit_iovs(
        &self,
        ty: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        iovs: &[IoVec],
        fua: bool,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        let data = ty.has_data().then(|| iovs.iter().map(|v| v.len).sum());
        self.check(ty, offset_blocks, num_blocks, data)?;
        let iovs = if ty.has_data() { iovs } else { &[] };
        self.start(ty, offset_blocks, num_blocks, iovs, None, fua, cb, ctx)
            .map_err(|(e, _)| e)
    }

    /// An I/O without data: Flush, Unmap, WriteZeroes (over a block range)
    /// or Reset (range ignored).
    ///
    /// # Errors
    /// Bounds and pool errors at once; a data type is refused.
    pub fn submit_nodata(
        &self,
        ty: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        if ty.has_data() {
            return Err(BdevError::invalid(
                "I/O type",
                format!("{} needs a buffer", ty.name()),
            ));
        }
        self.check(ty, offset_blocks, num_blocks, None)?;
        self.start(ty, offset_blocks, num_blocks, &[], None, false, cb, ctx)
            .map_err(|(e, _)| e)
    }

    /// Finds the first block at or after `offset_blocks` that holds data
    /// (SPDK's `spdk_bdev_seek_data`); `cb` reads it with
    /// [`BdevIo::seek_offset`] (the bdev's size when there is none). A
    /// module without SEEK_DATA: data everywhere (the offset itself).
    ///
    /// # Errors
    /// An offset at or beyond the end; pool errors.
    pub fn seek_data(
        &self,
        offset_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        self.check(IoType::SeekData, offset_blocks, 0, None)?;
        self.start(
            IoType::SeekData,
            offset_blocks,
            0,
            &[],
            None,
            false,
            cb,
            ctx,
        )
        .map_err(|(e, _)| e)
    }

    /// Finds the first block at or after `offset_blocks` in a hole (SPDK's
    /// `spdk_bdev_seek_hole`); a module without SEEK_HOLE: none (the
    /// bdev's size).
    ///
    /// # Errors
    /// As [`BdevChannel::seek_data`].
    pub fn seek_hole(
        &self,
        offset_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        self.check(IoType::SeekHole, offset_blocks, 0, None)?;
        self.start(
            IoType::SeekHole,
            offset_blocks,
            0,
            &[],
            None,
            false,
            cb,
            ctx,
        )
        .map_err(|(e, _)| e)
    }

    /// Copies `num_blocks` blocks from `src_offset_blocks` to
    /// `dst_offset_blocks` (SPDK's `spdk_bdev_copy_blocks`): by the module
    /// where it supports COPY, else by the layer with reads and writes of
    /// at most 128 KiB through a bounce buffer, one after the other.
    ///
    /// # Errors
    /// Either range out of bounds, a read-only descriptor, pool errors.
    pub fn copy(
        &self,
        dst_offset_blocks: u64,
        src_offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        self.check(IoType::Copy, dst_offset_blocks, num_blocks, None)?;
        self.check(IoType::Read, src_offset_blocks, num_blocks, None)?;
        let args = (IoType::Copy, dst_offset_blocks, num_blocks, false, cb, ctx);
        self.launch(args, &[], None, |io| {
            io.src_offset_blocks = src_offset_blocks
        })
        .map_err(|(e, _)| e)
    }

    /// Aborts the I/O submitted on this channel with context word `target`
    /// that the layer still holds (queued for resources, held by a
    /// quiesce): each ends with [`IoStatus::Aborted`]. `cb` gets Success
    /// when at least one was aborted, Failed when none could be (SPDK's
    /// `spdk_bdev_abort`; I/O already in the module's hands is not
    /// reached).
    ///
    /// # Errors
    /// Pool errors.
    pub fn abort(&self, target: usize, cb: IoCallback, ctx: usize) -> Result<(), BdevError> {
        self.check(IoType::Abort, 0, 0, None)?;
        let args = (IoType::Abort, 0, 0, false, cb, ctx);
        self.launch(args, &[], None, |io| io.abort_target = target)
            .map_err(|(e, _)| e)
    }

    /// Opens a zero-copy window on `num_blocks` at `offset_blocks` (SPDK's
    /// `spdk_bdev_zcopy_start`): the module lends the memory that holds
    /// those blocks — filled with their data when `populate` — and `cb`
    /// gets it as [`BdevIo::iovs`]. The window lasts for the callback,
    /// which reads or writes the segments in place and ends it with
    /// [`BdevIo::zcopy_end`] (committing or not). Only modules whose
    /// [`crate::Bdev::io_type_supported`] says so for [`IoType::Zcopy`]
    /// take it (malloc); for the rest `cb` gets NOT-SUPPORTED.
    ///
    /// The segments are the device's memory: writes to them outside a
    /// window meant to be committed, or after the callback, are the
    /// caller's bug.
    ///
    /// # Errors
    /// Bounds and pool errors at once; [`BdevError::ReadOnly`] for a window
    /// that is not populated (so meant for writing) on a read-only
    /// descriptor.
    pub fn zcopy_start(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        populate: bool,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        self.zcopy_launch(offset_blocks, num_blocks, populate, cb, ctx, None)
    }

    /// `zcopy_start` for a module's child window (`child.rs`).
    pub(crate) fn zcopy_launch(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        populate: bool,
        cb: IoCallback,
        ctx: usize,
        child_cb: Option<crate::child::ChildCallback>,
    ) -> Result<(), BdevError> {
        if !populate && !self.desc.writable() {
            return Err(BdevError::ReadOnly(self.state().bdev.props.name.clone()));
        }
        self.check(IoType::Zcopy, offset_blocks, num_blocks, None)?;
        let writable = self.desc.writable();
        let args = (IoType::Zcopy, offset_blocks, num_blocks, false, cb, ctx);
        self.launch(args, &[], None, |io| {
            io.zcopy.populate = populate;
            io.zcopy.writable = writable;
            io.child_cb = child_cb;
        })
        .map_err(|(e, _)| e)
    }

    /// Runs one I/O to its end as a future (control path, tests, NBD):
    /// resolves to the status and the buffer.
    pub async fn io(
        &self,
        ty: IoType,
        buf: Option<DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
    ) -> Result<(IoStatus, Option<DmaBuf>), BdevError> {
        type Done = (IoStatus, Option<DmaBuf>);
        type Slot = Rc<RefCell<(Option<Done>, Option<std::task::Waker>)>>;
        fn done(io: &mut BdevIo, status: IoStatus) {
            // SAFETY: `ctx` is the `Rc` leaked below, rebuilt exactly once.
            let slot: Slot = unsafe { Rc::from_raw(io.ctx() as *const RefCell<_>) };
            let mut s = slot.borrow_mut();
            s.0 = Some((status, io.take_buf()));
            if let Some(w) = s.1.take() {
                w.wake();
            }
        }
        let slot: Slot = Rc::new(RefCell::new((None, None)));
        let ctx = Rc::into_raw(slot.clone()) as usize;
        let submitted = match buf {
            Some(b) => self
                .data_io(ty, b, offset_blocks, num_blocks, fua, done, ctx)
                .map_err(|(e, _)| e),
            None => self.submit_nodata(ty, offset_blocks, num_blocks, done, ctx),
        };
        if let Err(e) = submitted {
            // SAFETY: the I/O was not started: the leaked reference is ours.
            drop(unsafe {
                Rc::from_raw(ctx as *const RefCell<(Option<Done>, Option<std::task::Waker>)>)
            });
            return Err(e);
        }
        // Woken by the completion (no spinning: a simulated runtime's
        // clock moves while the task waits).
        std::future::poll_fn(|cx| {
            let mut s = slot.borrow_mut();
            match s.0.take() {
                Some(r) => std::task::Poll::Ready(Ok(r)),
                None => {
                    s.1 = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }
}

/// What a submission asks for, before its data.
pub(crate) struct Request {
    pub src_offset_blocks: u64,
    pub ty: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub fua: bool,
    pub cb: IoCallback,
    pub ctx: usize,
}

impl BdevChannel {
    /// Starts a module's child I/O (see `child.rs`): checked as any
    /// submission; `done` is the module's callback, called by `cb`.
    pub(crate) fn submit_child_request(
        &self,
        req: Request,
        iovs: &[IoVec],
        buf: Option<DmaBuf>,
        done: crate::child::ChildCallback,
    ) -> Result<(), (BdevError, Option<DmaBuf>)> {
        if req.ty == IoType::Zcopy {
            return Err((
                BdevError::invalid("I/O type", "zero-copy windows are not child I/O"),
                buf,
            ));
        }
        let data = req.ty.has_data().then(|| iovs.iter().map(|v| v.len).sum());
        if let Err(e) = self.check(req.ty, req.offset_blocks, req.num_blocks, data) {
            return Err((e, buf));
        }
        if req.ty == IoType::Copy
            && let Err(e) = self.check(IoType::Read, req.src_offset_blocks, req.num_blocks, None)
        {
            return Err((e, buf));
        }
        let iovs = if req.ty.has_data() { iovs } else { &[] };
        let args = (
            req.ty,
            req.offset_blocks,
            req.num_blocks,
            req.fua,
            req.cb,
            req.ctx,
        );
        let src = req.src_offset_blocks;
        self.launch(args, iovs, buf, |io| {
            io.child_cb = Some(done);
            io.src_offset_blocks = src;
        })
    }
}

/// Sends an I/O towards the module: type support, write-zeroes emulation,
/// splitting, bounce buffering.
pub(crate) fn submit(s: &Rc<ChanState>, mut p: NonNull<BdevIo>) {
    // SAFETY: the I/O is in flight and owned by the layer right now.
    let io = unsafe { p.as_mut() };
    let b = &s.bdev;
    let ops = &b.ops;
    let props = &b.props;
    let Ok(module_ch) = s.module_ch.as_ref() else {
        return complete(p, IoStatus::Failed);
    };
    if io.parent.is_none() && !io.split.active {
        if io.ty == IoType::WriteZeroes && !s.supports(IoType::WriteZeroes) {
            if !s.supports(IoType::Write) {
                return complete(p, IoStatus::NotSupported);
            }
            io.split = crate::io::Split {
                active: true,
                zeroes: true,
                next: io.offset_blocks,
                end: io.offset_blocks + io.num_blocks,
                outstanding: 0,
                failed: None,
            };
            return continue_split(s, p);
        }
        match io.ty {
            IoType::SeekData if !s.supports(IoType::SeekData) => {
                io.seek = io.offset_blocks;
                return complete(p, IoStatus::Success);
            }
            IoType::SeekHole if !s.supports(IoType::SeekHole) => {
                io.seek = b.num_blocks.load(std::sync::atomic::Ordering::Acquire);
                return complete(p, IoStatus::Success);
            }
            IoType::Copy if !s.supports(IoType::Copy) => {
                if !(s.supports(IoType::Read) && s.supports(IoType::Write)) {
                    return complete(p, IoStatus::NotSupported);
                }
                return crate::emulate::copy_next(s, p);
            }
            IoType::Abort => return crate::emulate::abort(s, p),
            IoType::Reset if s.supports(IoType::Reset) && !io.layer_reset => {
                return crate::reset::start(s, p);
            }
            _ => {}
        }
        if !s.supports(io.ty) {
            return complete(p, IoStatus::NotSupported);
        }
        if needs_split(props, io) {
            io.split = crate::io::Split {
                active: true,
                zeroes: false,
                next: io.offset_blocks,
                end: io.offset_blocks + io.num_blocks,
                outstanding: 0,
                failed: None,
            };
            return continue_split(s, p);
        }
    }
    if io.ty.has_data()
        && io.bounce.is_none()
        && !(aligned(io.iovs(), props.required_alignment) && ops.accepts_iovs(io.iovs()))
    {
        let len = io.data_len();
        let bounce = match s.cache.borrow_mut().alloc(len) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("bdev {}: no bounce buffer of {len} bytes: {e}", props.name);
                return complete(p, IoStatus::NoMem);
            }
        };
        io.orig_iov = io.iov;
        io.orig_iovcnt = io.iovcnt;
        if io.ty != IoType::Read {
            let mut tmp_off = 0;
            for v in io.iovs() {
                // SAFETY: the submitter vouched for its segments; the bounce
                // buffer is ours and large enough.
                unsafe {
                    std::ptr::copy_nonoverlapping(v.ptr, bounce.as_ptr().add(tmp_off), v.len)
                };
                tmp_off += v.len;
            }
        }
        io.iov[0] = IoVec::of(&bounce, 0, len);
        io.iovcnt = 1;
        io.bounce = Some(bounce);
    }
    s.in_submit.set(s.in_submit.get() + 1);
    ops.submit(module_ch.as_ref(), IoHandle::new(p));
    s.in_submit.set(s.in_submit.get() - 1);
}

fn aligned(iovs: &[IoVec], align: usize) -> bool {
    align <= 1
        || iovs
            .iter()
            .all(|v| (v.ptr as usize).is_multiple_of(align) && v.len % align == 0)
}

fn needs_split(props: &crate::bdev::BdevProps, io: &BdevIo) -> bool {
    if !(io.ty.has_data() || matches!(io.ty, IoType::Unmap | IoType::WriteZeroes)) {
        return false;
    }
    if let Some(max) = props.max_transfer_blocks
        && io.num_blocks > max
    {
        return true;
    }
    if let Some(b) = props.optimal_io_boundary.filter(|&b| b > 0)
        && io.offset_blocks / b != (io.offset_blocks + io.num_blocks - 1) / b
    {
        return true;
    }
    false
}

/// Issues children of a split parent while there is room.
fn continue_split(s: &Rc<ChanState>, mut parent: NonNull<BdevIo>) {
    loop {
        // SAFETY: the parent is in flight and owned by the layer.
        let pio = unsafe { parent.as_mut() };
        let sp = pio.split;
        if sp.failed.is_some() || sp.next >= sp.end || sp.outstanding >= MAX_CHILDREN {
            break;
        }
        let props = &s.bdev.props;
        let bs = props.block_size as u64;
        let mut n = sp.end - sp.next;
        if let Some(max) = props.max_transfer_blocks {
            n = n.min(max.max(1));
        }
        if let Some(b) = props.optimal_io_boundary.filter(|&b| b > 0) {
            n = n.min(b - sp.next % b);
        }
        if sp.zeroes {
            n = n.min(ZERO_BUF as u64 / bs).max(1);
        }
        let Some(mut cp) = s.alloc_io() else {
            if sp.outstanding == 0 {
                // Nothing in flight will wake us: wait for completions.
                s.nomem.borrow_mut().push_back(parent);
                s.out_of_resources();
            }
            return;
        };
        // SAFETY: freshly allocated child, exclusively ours.
        let child = unsafe { cp.as_mut() };
        child.parent = Some(parent);
        child.offset_blocks = sp.next;
        child.num_blocks = n;
        child.fua = pio.fua;
        if sp.zeroes {
            child.ty = IoType::Write;
            let mut zb = s.zero_buf.borrow_mut();
            if zb.is_none() {
                match crate::env::memory().alloc(ZERO_BUF, 4096) {
                    Ok(mut b) => {
                        b.fill(0);
                        *zb = Some(b);
                    }
                    Err(e) => {
                        log::warn!("bdev {}: no zero buffer: {e}", props.name);
                        drop(zb);
                        s.free_io(cp);
                        pio.split.failed = Some(IoStatus::Failed);
                        break;
                    }
                }
            }
            child.iov[0] = IoVec::of(zb.as_ref().expect("allocated"), 0, (n * bs) as usize);
            child.iovcnt = 1;
        } else {
            child.ty = pio.ty;
            if pio.ty.has_data() {
                let skip = ((sp.next - pio.offset_blocks) * bs) as usize;
                match slice_iovs(pio.iovs(), skip, (n * bs) as usize, &mut child.iov) {
                    Some(c) => child.iovcnt = c,
                    None => {
                        log::warn!(
                            "bdev {}: split child needs more than {MAX_IOV} segments",
                            props.name
                        );
                        s.free_io(cp);
                        pio.split.failed = Some(IoStatus::Failed);
                        break;
                    }
                }
            }
        }
        pio.split.next += n;
        pio.split.outstanding += 1;
        submit(s, cp);
    }
    // SAFETY: as above.
    let pio = unsafe { parent.as_mut() };
    if pio.split.outstanding == 0 && (pio.split.next >= pio.split.end || pio.split.failed.is_some())
    {
        let st = pio.split.failed.unwrap_or(IoStatus::Success);
        pio.split.active = false;
        finish(s, parent, st);
    }
}

/// The segments covering `len` bytes from byte `skip` of `iovs`, written
/// into `out`; `None` if more than `out` holds.
pub(crate) fn slice_iovs(
    iovs: &[IoVec],
    mut skip: usize,
    mut len: usize,
    out: &mut [IoVec; MAX_IOV],
) -> Option<usize> {
    let mut n = 0;
    for v in iovs {
        if len == 0 {
            break;
        }
        if skip >= v.len {
            skip -= v.len;
            continue;
        }
        let take = (v.len - skip).min(len);
        *out.get_mut(n)? = v.sub(skip, take);
        n += 1;
        len -= take;
        skip = 0;
    }
    (len == 0).then_some(n)
}

/// Completion entry point (modules via `IoHandle`).
pub(crate) fn complete(p: NonNull<BdevIo>, status: IoStatus) {
    // SAFETY: the I/O is in flight; the module has given it back.
    let io = unsafe { &*p.as_ptr() };
    let s = io.ch.clone().expect("an in-flight I/O knows its channel");
    if status == IoStatus::NoMem {
        s.nomem.borrow_mut().push_back(p);
        s.out_of_resources();
        return;
    }
    if s.in_submit.get() > 0 {
        s.deferred.borrow_mut().push_back((p, status));
        return;
    }
    finish(&s, p, status);
}

/// Ends an I/O: bounce copy-back, statistics, the parent of a split child or
/// the submitter's callback, back to the pool, then queued retries.
pub(crate) fn finish(s: &Rc<ChanState>, mut p: NonNull<BdevIo>, status: IoStatus) {
    // SAFETY: the I/O is in flight and handed back to the layer.
    let io = unsafe { p.as_mut() };
    if let Some(bounce) = io.bounce.take() {
        if io.ty == IoType::Read && status.is_success() {
            let mut off = 0;
            for v in &io.orig_iov[..io.orig_iovcnt] {
                // SAFETY: the bounce buffer holds the data; the original
                // segments are the submitter's, valid until its callback.
                unsafe { std::ptr::copy_nonoverlapping(bounce.as_ptr().add(off), v.ptr, v.len) };
                off += v.len;
            }
        }
        io.iov = io.orig_iov;
        io.iovcnt = io.orig_iovcnt;
        s.cache.borrow_mut().free(bounce);
    }
    if let Some(mut parent) = io.parent {
        s.free_io(p);
        // SAFETY: the parent stays in flight while it has children.
        let pio = unsafe { parent.as_mut() };
        pio.split.outstanding -= 1;
        if !status.is_success() && pio.split.failed.is_none() {
            pio.split.failed = Some(status);
        }
        continue_split(s, parent);
        return;
    }
    if io.ty == IoType::Zcopy && io.zcopy.end.is_none() {
        return zcopy_started(s, p, status);
    }
    if io.ty != IoType::Zcopy {
        let bytes = match io.ty {
            IoType::Read
            | IoType::Write
            | IoType::Compare
            | IoType::Unmap
            | IoType::WriteZeroes
            | IoType::Copy => io.num_blocks * s.bdev.props.block_size as u64,
            _ => 0,
        };
        let ok =
            status.is_success() || (io.ty == IoType::Compare && status == IoStatus::Miscompare);
        if s.track {
            io.end = crate::env::io_clock();
            s.stats
                .record(io.ty, bytes, Some(io.end.saturating_sub(io.start)), ok);
        } else {
            s.stats.record(io.ty, bytes, None, ok);
        }
    }
    s.retire(io);
    let status = if io.zcopy.refused {
        IoStatus::Failed
    } else {
        status
    };
    if let Some(cb) = io.cb.take() {
        call_back(s, cb, io, status);
    }
    s.free_io(p);
    if s.retry_due() {
        retry_nomem(s);
    }
}

/// Calls the submitter's callback; with latency tracking, what it submits
/// takes this completion's time as its own start (no second clock read).
#[inline]
fn call_back(s: &ChanState, cb: IoCallback, io: &mut BdevIo, status: IoStatus) {
    if s.track && io.end != 0 {
        crate::env::with_completion_time(io.end, || cb(io, status));
    } else {
        cb(io, status);
    }
}

/// The start phase of a zero-copy I/O is done: its statistics (SPDK counts
/// the data of a window at its start: a read if populated, else a write),
/// the submitter's callback with the window, then the end phase the
/// callback asked for (or an end without commit), sent back to the module.
fn zcopy_started(s: &Rc<ChanState>, mut p: NonNull<BdevIo>, mut status: IoStatus) {
    // SAFETY: the I/O is in flight and handed back to the layer.
    let io = unsafe { p.as_mut() };
    let bytes = io.num_blocks * s.bdev.props.block_size as u64;
    // A window of the wrong size is the module's bug: the submitter gets
    // a failure, the module still gets its end (it may hold resources).
    let misfit = status.is_success() && io.data_len() as u64 != bytes;
    if misfit {
        log::error!(
            "bdev {}: zero-copy start lent {} bytes for {bytes}: failing it",
            s.bdev.props.name,
            io.data_len()
        );
        status = IoStatus::Failed;
    }
    let ty = if io.zcopy.populate {
        IoType::Read
    } else {
        IoType::Write
    };
    let latency = if s.track {
        io.end = crate::env::io_clock();
        Some(io.end.saturating_sub(io.start))
    } else {
        None
    };
    s.stats.record(ty, bytes, latency, status.is_success());
    let cb = io.cb.take();
    if !status.is_success() && !misfit {
        // No window was opened: nothing to end.
        s.retire(io);
        if let Some(cb) = cb {
            call_back(s, cb, io, status);
        }
        s.free_io(p);
        if s.retry_due() {
            retry_nomem(s);
        }
        return;
    }
    if let Some(cb) = cb {
        call_back(s, cb, io, status);
    }
    // A misfit window ends without commit or callback, failed.
    io.zcopy.refused = misfit;
    let (mut commit, cb, ctx) = match io.zcopy.end_req.take() {
        Some((commit, cb, ctx)) if !misfit => (commit, Some(cb), ctx),
        Some((_, _, ctx)) if io.child_cb.is_some() => {
            // A module's child window ended on a failed start: its parent
            // must not be lost.
            io.child_cb = None;
            crate::io::IoHandle::new(NonNull::new(ctx as *mut BdevIo).expect("parent"))
                .complete(IoStatus::Failed);
            (false, None, 0)
        }
        _ => (false, None, 0),
    };
    if commit && !io.zcopy.writable {
        log::error!(
            "bdev {}: zero-copy commit through a read-only descriptor refused",
            s.bdev.props.name
        );
        commit = false;
        // The end still goes to the module (it may hold resources for the
        // window); its callback learns of the refusal.
        io.zcopy.refused = true;
    }
    io.zcopy.end = Some(commit);
    io.cb = cb;
    io.ctx = ctx;
    io.start = io.end;
    io.end = 0;
    submit(s, p);
}

/// Submits again, in order, what a module refused for lack of resources,
/// until the module refuses again.
fn retry_nomem(s: &Rc<ChanState>) {
    let n = s.nomem.borrow().len();
    for _ in 0..n {
        let Some(mut p) = s.nomem.borrow_mut().pop_front() else {
            break;
        };
        s.nomem_hit.set(false);
        // SAFETY: queued I/O are in flight and owned by the layer.
        let io = unsafe { p.as_mut() };
        if io.split.active && io.parent.is_none() {
            continue_split(s, p);
        } else {
            submit(s, p);
        }
        if s.nomem_hit.get() {
            break;
        }
    }
}
