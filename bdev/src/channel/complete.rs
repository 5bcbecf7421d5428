//! Completion: the module's `IoHandle::complete` lands here; completions
//! inside a submission are deferred to the poller; `finish` copies a
//! bounce buffer back, counts the statistics, ends a split child into its
//! parent or calls the submitter back, and frees the I/O.

use std::ptr::NonNull;
use std::rc::Rc;

use super::{ChanState, bounce, continue_split, retry_nomem, zcopy_started};
use crate::io::{BdevIo, IoCallback};
use crate::types::{IoStatus, IoType};

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
    if io.bounce.is_some() {
        bounce::bounce_out(s, io, status);
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
            | IoType::Copy => s.io_bytes(io),
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
        if io.start != 0 {
            tally(s, io);
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

/// Counts a timed I/O in the channel's histogram, if it keeps one.
#[inline]
fn tally(s: &ChanState, io: &BdevIo) {
    let mut h = s.histogram.borrow_mut();
    let Some(h) = h.as_mut() else { return };
    if s.histogram_opc.get().is_some_and(|t| t != io.ty) {
        return;
    }
    let end = if io.end != 0 {
        io.end
    } else {
        crate::env::io_clock()
    };
    h[crate::histogram::index(end.saturating_sub(io.start))] += 1;
}

/// Calls the submitter's callback; with latency tracking, what it submits
/// takes this completion's time as its own start (no second clock read).
#[inline]
pub(super) fn call_back(s: &ChanState, cb: IoCallback, io: &mut BdevIo, status: IoStatus) {
    if s.track && io.end != 0 {
        crate::env::with_completion_time(io.end, || cb(io, status));
    } else {
        cb(io, status);
    }
}
