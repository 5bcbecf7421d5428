//! `BdevIo`: one I/O, from a per-channel pool preallocated at channel
//! creation, with room for the module's per-I/O context inline; and
//! its data segments as the layer vouches for them (`Segments`).

use std::ptr::NonNull;
use std::rc::Rc;

use dma::DmaBuf;

use crate::channel::ChanState;
use crate::types::{IoStatus, IoType, IoVec};

/// Segments one I/O carries at most.
pub const MAX_IOV: usize = 16;

/// Words of inline per-I/O context a module may use (SPDK's driver_ctx).
pub const MODULE_CTX_WORDS: usize = 16;

/// What the submitter is called with when its I/O ends: the I/O (its
/// context word, its buffer) and the status. Runs on the submitting core.
pub type IoCallback = fn(io: &mut BdevIo, status: IoStatus);

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Split {
    pub active: bool,
    /// Write zeroes emulated with writes of the channel's zero buffer.
    pub zeroes: bool,
    pub next: u64,
    pub end: u64,
    pub outstanding: u32,
    pub failed: Option<IoStatus>,
}

impl Split {
    /// A split of all of `io`'s blocks, none issued yet (`zeroes`: write
    /// zeroes emulated with writes).
    pub fn over(io: &BdevIo, zeroes: bool) -> Split {
        Split {
            active: true,
            zeroes,
            next: io.offset_blocks,
            end: io.offset_blocks + io.num_blocks,
            outstanding: 0,
            failed: None,
        }
    }
}

/// The phase of a zero-copy I/O ([`IoType::Zcopy`]) as its module sees
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZcopyPhase {
    /// Lend memory for the range: give its segments with
    /// [`BdevIo::set_zcopy_iovs`] and complete. With `populate` they must
    /// hold the blocks' data; without, their contents are undefined (the
    /// submitter is about to overwrite them).
    Start {
        /// Whether the segments must hold the blocks' current data.
        populate: bool,
    },
    /// The submitter is done with the segments lent at the start: with
    /// `commit`, what it wrote there becomes the blocks' data (a module
    /// whose segments are the medium itself has nothing to do).
    End {
        /// Whether to make the segments' contents the blocks' data.
        commit: bool,
    },
}

/// The zero-copy state of an I/O.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Zcopy {
    /// `Some(commit)` once in the end phase.
    pub end: Option<bool>,
    pub populate: bool,
    /// Whether the descriptor may write (commit).
    pub writable: bool,
    /// The end the start callback asked for: commit, callback, context.
    pub end_req: Option<(bool, IoCallback, usize)>,
    /// A commit was asked through a read-only descriptor: the end fails.
    pub refused: bool,
}

/// Data segments valid for reading for `'a` (an I/O's, or a buffer's):
/// what a data-moving kernel (the AES-XTS cipher) may read without further
/// promises.
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    iovs: &'a [IoVec],
}

impl<'a> Segments<'a> {
    /// The segments.
    pub fn iovs(&self) -> &'a [IoVec] {
        self.iovs
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.iovs.iter().map(|v| v.len).sum()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Data segments valid for reading and writing for `'a`, held exclusively.
#[derive(Debug)]
pub struct SegmentsMut<'a> {
    iovs: SegStore<'a>,
}

#[derive(Debug)]
enum SegStore<'a> {
    Slice(&'a [IoVec]),
    One(IoVec, std::marker::PhantomData<&'a mut DmaBuf>),
}

impl<'a> SegmentsMut<'a> {
    /// The first `len` bytes of `buf` (a DMA buffer held here, not in any
    /// I/O).
    ///
    /// # Panics
    /// When `len` is beyond the buffer.
    pub fn of_buf(buf: &'a mut DmaBuf, len: usize) -> SegmentsMut<'a> {
        SegmentsMut {
            iovs: SegStore::One(IoVec::of(buf, 0, len), std::marker::PhantomData),
        }
    }

    /// The segments.
    pub fn iovs(&self) -> &[IoVec] {
        match &self.iovs {
            SegStore::Slice(s) => s,
            SegStore::One(v, _) => std::slice::from_ref(v),
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.iovs().iter().map(|v| v.len).sum()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments as byte slices, for reading and writing.
    pub fn data_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        self.iovs().iter().map(|v| {
            // SAFETY: valid and held exclusively for `'a` (how a
            // `SegmentsMut` is made), borrowed uniquely here; segments do
            // not overlap each other.
            unsafe { std::slice::from_raw_parts_mut(v.ptr, v.len) }
        })
    }
}

/// One I/O.
pub struct BdevIo {
    pub(crate) ty: IoType,
    pub(crate) offset_blocks: u64,
    pub(crate) num_blocks: u64,
    pub(crate) fua: bool,
    pub(crate) iov: [IoVec; MAX_IOV],
    pub(crate) iovcnt: usize,
    pub(crate) cb: Option<IoCallback>,
    pub(crate) ctx: usize,
    /// A module's child I/O: the module's callback (`ctx` is the parent).
    pub(crate) child_cb: Option<crate::child::ChildCallback>,
    pub(crate) buf: Option<DmaBuf>,
    pub(crate) ch: Option<Rc<ChanState>>,
    pub(crate) parent: Option<NonNull<BdevIo>>,
    pub(crate) split: Split,
    pub(crate) bounce: Option<DmaBuf>,
    pub(crate) orig_iov: [IoVec; MAX_IOV],
    pub(crate) orig_iovcnt: usize,
    /// Submission time, [`reactor::clock_ns`].
    pub(crate) start: u64,
    /// Completion time (0 until completed, or without latency tracking).
    pub(crate) end: u64,
    /// The channel's quiesce generation at submission.
    pub(crate) epoch: u32,
    /// COPY: the first source block.
    pub(crate) src_offset_blocks: u64,
    /// SEEK_DATA/SEEK_HOLE: the answer.
    pub(crate) seek: u64,
    /// ABORT: the context word of the I/O to abort.
    pub(crate) abort_target: usize,
    /// COPY emulated by the layer: blocks copied so far.
    pub(crate) copied: u64,
    /// Times a module sent this I/O back to be submitted again
    /// ([`crate::IoHandle::retry`]).
    pub(crate) retries: u32,
    /// The RESET the layer sends the module (not orchestrated again).
    pub(crate) layer_reset: bool,
    pub(crate) zcopy: Zcopy,
    /// A parent's fan-out: its children in flight and their statuses.
    pub(crate) fan: crate::fanout::FanState,
    /// A fanned-out child: its slot in the parent's result.
    pub(crate) fan_slot: u8,
    /// Inline scratch space for the module handling the I/O.
    pub module_ctx: [u64; MODULE_CTX_WORDS],
    /// A DMA buffer the module may attach (dropped, freed, when the I/O ends
    /// unless the module takes it back first).
    pub module_buf: Option<DmaBuf>,
}

impl BdevIo {
    pub(crate) fn new() -> Self {
        BdevIo {
            ty: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            fua: false,
            iov: [IoVec::EMPTY; MAX_IOV],
            iovcnt: 0,
            cb: None,
            ctx: 0,
            child_cb: None,
            buf: None,
            ch: None,
            parent: None,
            split: Split::default(),
            bounce: None,
            orig_iov: [IoVec::EMPTY; MAX_IOV],
            orig_iovcnt: 0,
            start: 0,
            end: 0,
            epoch: 0,
            src_offset_blocks: 0,
            seek: 0,
            abort_target: 0,
            copied: 0,
            retries: 0,
            layer_reset: false,
            zcopy: Zcopy::default(),
            fan: crate::fanout::FanState::default(),
            fan_slot: 0,
            module_ctx: [0; MODULE_CTX_WORDS],
            module_buf: None,
        }
    }

    /// The I/O type.
    pub fn io_type(&self) -> IoType {
        self.ty
    }

    /// First block.
    pub fn offset_blocks(&self) -> u64 {
        self.offset_blocks
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Force Unit Access (writes).
    pub fn fua(&self) -> bool {
        self.fua
    }

    /// COPY: the first block copied from (`offset_blocks` is the first
    /// block copied to).
    pub fn src_offset_blocks(&self) -> u64 {
        self.src_offset_blocks
    }

    /// Times a module has sent this I/O back to be submitted again.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// SEEK_DATA/SEEK_HOLE, in the callback: the block found (the bdev's
    /// size when none).
    pub fn seek_offset(&self) -> u64 {
        self.seek
    }

    /// SEEK_DATA/SEEK_HOLE, for the module: the answer.
    pub fn set_seek_offset(&mut self, offset_blocks: u64) {
        self.seek = offset_blocks;
    }

    /// The data segments (empty for types without data).
    pub fn iovs(&self) -> &[IoVec] {
        &self.iov[..self.iovcnt]
    }

    /// The data segments, for reading: valid while this I/O is in a
    /// module's hands or in its submitter's callback (the submitter's
    /// buffer or segments, a zero-copy window lent by the module).
    pub fn segments(&self) -> Segments<'_> {
        Segments { iovs: self.iovs() }
    }

    /// The data segments, for reading and writing; as
    /// [`BdevIo::segments`].
    pub fn segments_mut(&mut self) -> SegmentsMut<'_> {
        SegmentsMut {
            iovs: SegStore::Slice(&self.iov[..self.iovcnt]),
        }
    }

    /// The data segments as byte slices, for reading (see
    /// [`BdevIo::segments`]).
    pub fn data(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iovs().iter().map(|v| {
            // SAFETY: every segment an I/O carries is valid while the I/O
            // is in a module's hands or in its submitter's callback, the
            // only places a `&BdevIo` is reachable from (the safe API owns
            // its buffer; `submit_iovs` makes it the caller's promise).
            unsafe { std::slice::from_raw_parts(v.ptr.cast_const(), v.len) }
        })
    }

    /// The data segments as byte slices, for reading and writing.
    pub fn data_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        self.iov[..self.iovcnt].iter().map(|v| {
            // SAFETY: as in `data`; segments do not overlap each other (the
            // promise of `submit_iovs`), and `&mut self` is unique.
            unsafe { std::slice::from_raw_parts_mut(v.ptr, v.len) }
        })
    }

    /// Total bytes of the data segments.
    pub fn data_len(&self) -> usize {
        self.iovs().iter().map(|v| v.len).sum()
    }

    /// In the submitter's callback: nanoseconds from submission to
    /// completion as the layer measured them (`None` with latency tracking
    /// off, [`crate::set_latency_tracking`]). Costs no clock read.
    pub fn latency_ns(&self) -> Option<u64> {
        (self.end != 0).then(|| self.end.saturating_sub(self.start))
    }

    /// The submitter's context word.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// The buffer given with the safe submission API, handed back.
    pub fn take_buf(&mut self) -> Option<DmaBuf> {
        self.buf.take()
    }

    /// The buffer given with the safe submission API.
    pub fn buf(&self) -> Option<&DmaBuf> {
        self.buf.as_ref()
    }

    /// The phase of a zero-copy I/O; `None` for other types.
    pub fn zcopy_phase(&self) -> Option<ZcopyPhase> {
        if self.ty != IoType::Zcopy {
            return None;
        }
        Some(match self.zcopy.end {
            None => ZcopyPhase::Start {
                populate: self.zcopy.populate,
            },
            Some(commit) => ZcopyPhase::End { commit },
        })
    }

    /// For the module, in the start phase of a zero-copy I/O: the segments
    /// of its own memory that hold the I/O's blocks, in order (exactly
    /// `num_blocks` blocks; they must stay valid until the end phase
    /// completes).
    ///
    /// # Errors
    /// [`crate::BdevError::Invalid`] when this is not a zero-copy start or there
    /// are more than [`MAX_IOV`] segments.
    pub fn set_zcopy_iovs(&mut self, iovs: &[IoVec]) -> Result<(), crate::BdevError> {
        if self
            .zcopy_phase()
            .is_none_or(|p| matches!(p, ZcopyPhase::End { .. }))
        {
            return Err(crate::BdevError::invalid(
                "I/O",
                "segments are lent only in a zero-copy start",
            ));
        }
        if iovs.len() > MAX_IOV {
            return Err(crate::BdevError::invalid(
                "iovs",
                format!("{} segments, at most {MAX_IOV}", iovs.len()),
            ));
        }
        self.iov[..iovs.len()].copy_from_slice(iovs);
        self.iovcnt = iovs.len();
        Ok(())
    }

    /// For the submitter, inside the callback of a successful
    /// [`crate::BdevChannel::zcopy_start`]: ends the window once the
    /// callback returns — with `commit`, what was written into
    /// [`BdevIo::iovs`] becomes the blocks' data — and calls `cb` with
    /// `ctx` when the module is done. A start callback that does not call
    /// this ends the window without commit and without a callback. A commit
    /// through a read-only descriptor fails the end ([`IoStatus::Failed`]).
    pub fn zcopy_end(&mut self, commit: bool, cb: IoCallback, ctx: usize) {
        self.zcopy.end_req = Some((commit, cb, ctx));
    }

    /// Copies `src` into the data segments from byte `offset` (for modules
    /// that move data by CPU, like malloc). Returns bytes copied.
    ///
    /// # Safety
    /// The segments must be valid memory not accessed by a device now (true
    /// for every I/O submitted to a module that does not hand them to one).
    pub unsafe fn copy_to_iovs(&self, mut offset: usize, src: &[u8]) -> usize {
        let mut done = 0;
        for v in self.iovs() {
            if offset >= v.len {
                offset -= v.len;
                continue;
            }
            let n = (v.len - offset).min(src.len() - done);
            // SAFETY: the caller vouches for the segment; `n` fits both sides.
            unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), v.ptr.add(offset), n) };
            done += n;
            offset = 0;
            if done == src.len() {
                break;
            }
        }
        done
    }

    /// Copies from the data segments starting at byte `offset` into `dst`.
    /// Returns bytes copied.
    ///
    /// # Safety
    /// As [`BdevIo::copy_to_iovs`].
    pub unsafe fn copy_from_iovs(&self, mut offset: usize, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for v in self.iovs() {
            if offset >= v.len {
                offset -= v.len;
                continue;
            }
            let n = (v.len - offset).min(dst.len() - done);
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(v.ptr.add(offset), dst[done..].as_mut_ptr(), n)
            };
            done += n;
            offset = 0;
            if done == dst.len() {
                break;
            }
        }
        done
    }

    /// Resets the I/O for reuse from the pool.
    pub(crate) fn recycle(&mut self) {
        self.cb = None;
        self.ctx = 0;
        self.child_cb = None;
        self.buf = None;
        self.ch = None;
        self.parent = None;
        self.split = Split::default();
        self.bounce = None;
        self.iovcnt = 0;
        self.orig_iovcnt = 0;
        self.module_buf = None;
        self.fua = false;
        self.end = 0;
        self.copied = 0;
        self.retries = 0;
        self.seek = 0;
        self.layer_reset = false;
        self.zcopy = Zcopy::default();
        self.fan = crate::fanout::FanState::default();
        self.fan_slot = 0;
    }
}
