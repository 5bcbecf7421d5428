//! Splitting: an I/O larger than the module's maximum transfer, or crossing
//! its optimal boundary, goes down as children (at most `MAX_CHILDREN` at
//! once); emulated write zeroes are children writing the zero buffer.

use std::ptr::NonNull;
use std::rc::Rc;

use super::{ChanState, MAX_CHILDREN, ZERO_BUF, finish, submit};
use crate::io::{BdevIo, MAX_IOV};
use crate::types::{IoStatus, IoType, IoVec};

pub(super) fn needs_split(props: &crate::bdev::BdevProps, io: &BdevIo) -> bool {
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
pub(super) fn continue_split(s: &Rc<ChanState>, mut parent: NonNull<BdevIo>) {
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
