//! `BdevChannel`: the submission API (checks, the safe buffer-owning
//! calls, caller-managed segments, the layer's own types, the future form)
//! and the common launch every submission goes through.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use dma::DmaBuf;
use reactor::IoChannel;

use super::{Chan, ChanState, complete};
use crate::bdev::Bdev;
use crate::desc::DescInner;
use crate::error::BdevError;
use crate::io::{BdevIo, IoCallback, MAX_IOV};
use crate::types::{IoStatus, IoType, IoVec};

/// A bdev's I/O channel on this core. Not `Send`: use it on the core that
/// got it.
///
/// It is bound to the descriptor it was got from: I/O carries that
/// descriptor's rights (read-only descriptors cannot write) and stops with it.
#[derive(Clone)]
pub struct BdevChannel {
    pub(super) ch: IoChannel<Chan>,
    pub(super) desc: Arc<DescInner>,
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

    pub(super) fn state(&self) -> &Rc<ChanState> {
        &self.ch.state
    }

    /// The bdev's block size.
    pub fn block_size(&self) -> u32 {
        self.state().bdev.props.block_size
    }

    /// The bdev's size in blocks now.
    pub fn num_blocks(&self) -> u64 {
        self.state()
            .bdev
            .num_blocks
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// I/O in flight on this channel.
    pub fn outstanding(&self) -> usize {
        self.state().outstanding.get()
    }

    /// I/O objects the channel has.
    pub fn pool_size(&self) -> usize {
        self.state().pool_size
    }

    /// A DMA buffer of at least `len` bytes from this core's buffer cache:
    /// the common sizes (up to 128 KiB) come without allocation or lock;
    /// give it back with [`BdevChannel::free_buf`]. Its length may exceed
    /// `len` (the size class); the buffer-owning calls accept that.
    ///
    /// # Errors
    /// [`BdevError::NoBuffer`] when DMA memory is exhausted.
    pub fn alloc_buf(&self, len: usize) -> Result<DmaBuf, BdevError> {
        self.state()
            .cache()
            .alloc(len)
            .map_err(|e| BdevError::NoBuffer {
                len,
                reason: e.to_string(),
            })
    }

    /// Returns a buffer to this core's cache (one of another size or
    /// memory is freed).
    pub fn free_buf(&self, buf: DmaBuf) {
        self.state().cache().free(buf);
    }

    pub(super) fn check(
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
    pub(super) fn launch(
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
        io.start = if s.timed() { crate::env::io_clock() } else { 0 };
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
        if s.qos_holds(io) {
            // Over the bdev's rate limits: waits for a slice's refill.
            s.qos_push(p);
            return Ok(());
        }
        s.submit_deferring(p);
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
        self.seek(IoType::SeekData, offset_blocks, cb, ctx)
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
        self.seek(IoType::SeekHole, offset_blocks, cb, ctx)
    }

    fn seek(
        &self,
        ty: IoType,
        offset_blocks: u64,
        cb: IoCallback,
        ctx: usize,
    ) -> Result<(), BdevError> {
        self.check(ty, offset_blocks, 0, None)?;
        self.start(ty, offset_blocks, 0, &[], None, false, cb, ctx)
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
        fan_slot: u8,
    ) -> Result<(), (BdevError, Option<DmaBuf>)> {
        if let Err(e) = self.check_child(req.ty, req.offset_blocks, req.num_blocks, iovs) {
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
            io.fan_slot = fan_slot;
        })
    }

    /// The checks a child I/O passes before it starts: not a zero-copy
    /// window, within bounds and rights, its data the size of its blocks.
    pub(crate) fn check_child(
        &self,
        ty: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        iovs: &[IoVec],
    ) -> Result<(), BdevError> {
        if ty == IoType::Zcopy {
            return Err(BdevError::invalid(
                "I/O type",
                "zero-copy windows are not child I/O",
            ));
        }
        let data = ty.has_data().then(|| iovs.iter().map(|v| v.len).sum());
        self.check(ty, offset_blocks, num_blocks, data)
    }

    /// I/O objects free in this channel's pool.
    pub(crate) fn free_ios(&self) -> usize {
        self.state().pool.borrow().len()
    }

    /// Whether `other` is this same channel (the same pool).
    pub(crate) fn same_channel(&self, other: &BdevChannel) -> bool {
        Rc::ptr_eq(self.state(), other.state())
    }
}
