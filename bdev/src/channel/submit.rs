//! Towards the module: the layer's own answers (SEEK defaults, COPY and
//! ABORT, RESET orchestration, NOT-SUPPORTED), write-zeroes emulation,
//! splitting, bounce buffers, then the module's `submit`.

use std::ptr::NonNull;
use std::rc::Rc;

use super::{ChanState, bounce, complete, continue_split, needs_split};
use crate::handle::IoHandle;
use crate::io::BdevIo;
use crate::types::{IoStatus, IoType};

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
            io.split = crate::io::Split::over(io, true);
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
            io.split = crate::io::Split::over(io, false);
            return continue_split(s, p);
        }
    }
    if io.ty.has_data()
        && io.bounce.is_none()
        && !(bounce::aligned(io.iovs(), props.required_alignment) && ops.accepts_iovs(io.iovs()))
        && bounce::bounce_in(s, io).is_err()
    {
        return complete(p, IoStatus::NoMem);
    }
    s.in_submit.set(s.in_submit.get() + 1);
    ops.submit(module_ch.as_ref(), IoHandle::new(p));
    s.in_submit.set(s.in_submit.get() - 1);
}
