//! Bounce buffers: segments the module cannot take as they are (alignment,
//! its `accepts_iovs`) are replaced by one buffer from the core's DMA cache,
//! filled from them for writes and copied back to them after reads.

use super::ChanState;
use crate::io::BdevIo;
use crate::types::{IoStatus, IoType, IoVec};

/// Whether every segment starts and ends on `align` bytes.
pub(super) fn aligned(iovs: &[IoVec], align: usize) -> bool {
    align <= 1
        || iovs
            .iter()
            .all(|v| (v.ptr as usize).is_multiple_of(align) && v.len % align == 0)
}

/// Puts `io`'s data in a bounce buffer (the original segments kept aside).
///
/// # Errors
/// When the cache has no buffer that large (the I/O is then retried).
pub(super) fn bounce_in(s: &ChanState, io: &mut BdevIo) -> Result<(), ()> {
    let len = io.data_len();
    let bounce = match s.cache.borrow_mut().alloc(len) {
        Ok(b) => b,
        Err(e) => {
            log::warn!(
                "bdev {}: no bounce buffer of {len} bytes: {e}",
                s.bdev.props.name
            );
            return Err(());
        }
    };
    io.orig_iov = io.iov;
    io.orig_iovcnt = io.iovcnt;
    if io.ty != IoType::Read {
        let mut off = 0;
        for v in io.iovs() {
            // SAFETY: the submitter vouched for its segments; the bounce
            // buffer is ours and large enough.
            unsafe { std::ptr::copy_nonoverlapping(v.ptr, bounce.as_ptr().add(off), v.len) };
            off += v.len;
        }
    }
    io.iov[0] = IoVec::of(&bounce, 0, len);
    io.iovcnt = 1;
    io.bounce = Some(bounce);
    Ok(())
}

/// Gives `io` its own segments back (after a successful read, with the
/// data) and the bounce buffer back to the cache.
pub(super) fn bounce_out(s: &ChanState, io: &mut BdevIo, status: IoStatus) {
    let Some(bounce) = io.bounce.take() else {
        return;
    };
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
