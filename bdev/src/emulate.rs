//! What the layer does itself for I/O types a module lacks: COPY by reads
//! and writes through a bounce buffer, and ABORT of I/O still queued in the
//! layer. (SEEK_DATA/SEEK_HOLE defaults and WRITE_ZEROES by writes live in
//! the submission path, `channel.rs`.)

use std::ptr::NonNull;
use std::rc::Rc;

use crate::channel::{ChanState, complete, finish};
use crate::io::BdevIo;
use crate::types::{IoStatus, IoType, IoVec};

/// Most bytes one step of an emulated COPY moves.
pub const COPY_CHUNK_BYTES: usize = 128 * 1024;

/// Starts (or resumes, after a NoMem) the next step of an emulated COPY:
/// read a chunk of the source into a bounce buffer.
pub(crate) fn copy_next(s: &Rc<ChanState>, mut p: NonNull<BdevIo>) {
    // SAFETY: the COPY is in flight and owned by the layer.
    let io = unsafe { p.as_mut() };
    if io.copied >= io.num_blocks {
        return complete(p, IoStatus::Success);
    }
    let bs = s.bdev.props.block_size as u64;
    let n = (io.num_blocks - io.copied).min((COPY_CHUNK_BYTES as u64 / bs).max(1));
    let len = (n * bs) as usize;
    let buf = match s.cache().alloc(len) {
        Ok(b) => b,
        Err(e) => {
            log::warn!(
                "bdev {}: no {len}-byte bounce buffer for COPY: {e}",
                s.bdev.props.name
            );
            return complete(p, IoStatus::NoMem);
        }
    };
    let at = io.src_offset_blocks + io.copied;
    let iov = IoVec::of(&buf, 0, len);
    step(s, p, (IoType::Read, at, n, false), iov, buf, copy_read_done);
}

/// Launches one step of a COPY over the bounce buffer `buf` (segment
/// `iov`), `done` called with the COPY as the context word; without an I/O
/// object the buffer goes back and the COPY waits for resources (the step
/// is done again later).
fn step(
    s: &Rc<ChanState>,
    p: NonNull<BdevIo>,
    (ty, offset_blocks, num_blocks, fua): (IoType, u64, u64, bool),
    iov: IoVec,
    buf: dma::DmaBuf,
    done: crate::io::IoCallback,
) {
    let Some(mut cp) = s.alloc_io() else {
        s.cache().free(buf);
        return complete(p, IoStatus::NoMem);
    };
    // SAFETY: freshly allocated, exclusively ours.
    let child = unsafe { cp.as_mut() };
    child.ty = ty;
    child.offset_blocks = offset_blocks;
    child.num_blocks = num_blocks;
    child.fua = fua;
    child.iov[0] = iov;
    child.iovcnt = 1;
    child.buf = Some(buf);
    child.cb = Some(done);
    child.ctx = p.as_ptr() as usize;
    s.launch_internal(cp);
}

/// The chunk is read: write it at the destination.
fn copy_read_done(child: &mut BdevIo, status: IoStatus) {
    let p = NonNull::new(child.ctx as *mut BdevIo).expect("the COPY");
    let s = child.ch.clone().expect("an I/O knows its channel");
    let Some(buf) = child.buf.take() else {
        return complete(p, IoStatus::Failed);
    };
    if !status.is_success() {
        s.cache().free(buf);
        return complete(p, status);
    }
    // SAFETY: the COPY is in flight (waiting for this child).
    let io = unsafe { p.as_ref() };
    // Without an I/O object the chunk is read again later.
    let args = (
        IoType::Write,
        io.offset_blocks + io.copied,
        child.num_blocks,
        io.fua,
    );
    step(&s, p, args, child.iov[0], buf, copy_write_done);
}

/// The chunk is written: on to the next.
fn copy_write_done(child: &mut BdevIo, status: IoStatus) {
    let p = NonNull::new(child.ctx as *mut BdevIo).expect("the COPY");
    let s = child.ch.clone().expect("an I/O knows its channel");
    if let Some(buf) = child.buf.take() {
        s.cache().free(buf);
    }
    if !status.is_success() {
        return complete(p, status);
    }
    // SAFETY: the COPY is in flight (waiting for this child).
    unsafe { (*p.as_ptr()).copied += child.num_blocks };
    copy_next(&s, p);
}

/// Whether `q` (queued in the layer) is an I/O its submitter may abort.
fn abortable(q: NonNull<BdevIo>, target: usize) -> bool {
    // SAFETY: queued I/O are in flight and owned by the layer.
    let io = unsafe { q.as_ref() };
    io.parent.is_none()
        && io.ctx == target
        && io.cb.is_some()
        && io.child_cb.is_none()
        && !(io.split.active && io.split.outstanding > 0)
        && !(io.ty == IoType::Zcopy && io.zcopy.end.is_some())
}

/// ABORT: ends every queued I/O of this channel submitted with the target
/// context word, then the ABORT itself.
pub(crate) fn abort(s: &Rc<ChanState>, p: NonNull<BdevIo>) {
    // SAFETY: the ABORT is in flight and owned by the layer.
    let target = unsafe { p.as_ref() }.abort_target;
    let mut n = 0usize;
    loop {
        let pos = s.nomem_queue().iter().position(|q| abortable(*q, target));
        let Some(v) = pos.and_then(|i| s.nomem_queue().remove(i)) else {
            break;
        };
        n += 1;
        finish_aborted(s, v);
    }
    while let Some(v) = s.quiesce.take_held(|q| abortable(q, target)) {
        n += 1;
        finish_aborted(s, v);
    }
    while let Some(v) = s.qos_take(|q| abortable(q, target)) {
        n += 1;
        finish_aborted(s, v);
    }
    complete(
        p,
        if n > 0 {
            IoStatus::Success
        } else {
            IoStatus::Failed
        },
    );
}

fn finish_aborted(s: &Rc<ChanState>, v: NonNull<BdevIo>) {
    // The victim leaves split bookkeeping as a whole I/O.
    // SAFETY: removed from its queue: in flight and owned by the layer.
    unsafe { (*v.as_ptr()).split.active = false };
    finish(s, v, IoStatus::Aborted);
}
