//! Zero-copy windows (SPDK's zcopy): opening one, and what happens when its
//! start phase completes (the submitter's callback with the module's
//! memory, then the end phase it asked for).

use std::ptr::NonNull;
use std::rc::Rc;

use super::{BdevChannel, ChanState, call_back, retry_nomem, submit};
use crate::error::BdevError;
use crate::io::{BdevIo, IoCallback};
use crate::types::{IoStatus, IoType};

impl BdevChannel {
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
}

/// The start phase of a zero-copy I/O is done: its statistics (SPDK counts
/// the data of a window at its start: a read if populated, else a write),
/// the submitter's callback with the window, then the end phase the
/// callback asked for (or an end without commit), sent back to the module.
pub(super) fn zcopy_started(s: &Rc<ChanState>, mut p: NonNull<BdevIo>, mut status: IoStatus) {
    // SAFETY: the I/O is in flight and handed back to the layer.
    let io = unsafe { p.as_mut() };
    let bytes = s.io_bytes(io);
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
            crate::handle::IoHandle::new(NonNull::new(ctx as *mut BdevIo).expect("parent"))
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
