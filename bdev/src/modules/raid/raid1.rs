//! raid1's I/O: a read goes to the readable member with the fewest reads
//! in flight on this core and, if it fails there, to the next one not
//! tried yet (a member's read error is not seen above while another member
//! has the data); a write, flush, unmap, write-zeroes or reset goes to
//! every member at once (fan-out, including a rebuild's target) and
//! succeeds when one member succeeded, the members that failed it taken out
//! of the RAID (degraded; the superblock records it).

use std::rc::Rc;

use crate::{
    BdevIo, Child, ChildData, FanChild, FanData, FanOutResult, IoHandle, IoStatus, IoType,
};

use super::io::RaidChannel;
use super::volume::member_failed;

/// Words of the I/O's module context raid1 uses.
const CTX_SLOT: usize = 0;
const CTX_TRIED: usize = 1;
const CTX_FANNED: usize = 2;

pub(crate) fn submit(ch: &RaidChannel, mut io: IoHandle) {
    match io.io().io_type() {
        IoType::Read => {
            io.io_mut().module_ctx[CTX_TRIED] = 0;
            read_next(ch, io);
        }
        _ => fan_out(ch, io),
    }
}

/// Sends a read to the least busy readable member not tried yet; fails it
/// when none is left.
fn read_next(ch: &RaidChannel, mut io: IoHandle) {
    let tried = io.io().module_ctx[CTX_TRIED];
    let slots = ch.slots.borrow();
    let pick = slots
        .iter()
        .enumerate()
        .filter(|(i, s)| s.as_ref().is_some_and(|s| s.readable) && tried & (1 << i) == 0)
        .min_by_key(|(i, _)| ch.outstanding[*i].get())
        .map(|(i, _)| i);
    let Some(slot) = pick else {
        drop(slots);
        io.complete(IoStatus::Failed);
        return;
    };
    let Some(s) = slots[slot].as_ref() else {
        return;
    };
    {
        let ctx = &mut io.io_mut().module_ctx;
        ctx[CTX_SLOT] = slot as u64;
        ctx[CTX_TRIED] |= 1 << slot;
    }
    let p = io.io();
    let child = Child {
        ty: IoType::Read,
        offset_blocks: s.offset + p.offset_blocks(),
        num_blocks: p.num_blocks(),
        fua: false,
        src_offset_blocks: 0,
        data: ChildData::Parent,
    };
    ch.outstanding[slot].set(ch.outstanding[slot].get() + 1);
    if let Err(r) = io.submit_child(&s.ch, child, read_done) {
        ch.outstanding[slot].set(ch.outstanding[slot].get().saturating_sub(1));
        r.fail_parent();
    }
}

fn read_done(parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    let slot = parent.io().module_ctx[CTX_SLOT] as usize;
    let Some(ch) = parent.module_channel::<Rc<RaidChannel>>() else {
        parent.complete(status);
        return;
    };
    if let Some(o) = ch.outstanding.get(slot) {
        o.set(o.get().saturating_sub(1));
    }
    if status == IoStatus::Success || status == IoStatus::NoMem {
        parent.complete(status);
        return;
    }
    let ch = ch.clone();
    read_next(&ch, parent);
}

/// Sends the I/O to every member that has a channel here.
fn fan_out(ch: &RaidChannel, mut io: IoHandle) {
    let ty = io.io().io_type();
    let slots = ch.slots.borrow();
    let mut used = 0u64;
    for (i, s) in slots.iter().enumerate() {
        if s.is_some() {
            used |= 1 << i;
        }
    }
    if used == 0 {
        drop(slots);
        io.complete(IoStatus::Failed);
        return;
    }
    io.io_mut().module_ctx[CTX_FANNED] = used;
    let p = io.io();
    let (offset, num, fua) = (p.offset_blocks(), p.num_blocks(), p.fua());
    let kids = slots.iter().flatten().map(|s| {
        (
            &s.ch,
            FanChild {
                ty,
                offset_blocks: if ty == IoType::Reset {
                    0
                } else {
                    s.offset + offset
                },
                num_blocks: if ty == IoType::Reset { 0 } else { num },
                fua,
                data: if ty.has_data() {
                    FanData::Parent
                } else {
                    FanData::None
                },
            },
        )
    });
    if let Err(r) = io.fan_out(kids, fanned_done) {
        r.fail_parent();
    }
}

fn fanned_done(parent: IoHandle, res: FanOutResult) {
    // A member that was out of I/O objects did not get the write: the
    // whole I/O goes again later (writing the same data twice where it
    // landed), never a success with a member behind.
    if (0..res.len()).any(|i| res.status(i) == IoStatus::NoMem) {
        parent.complete(IoStatus::NoMem);
        return;
    }
    let status = res.any();
    let failed = res.failed_mask();
    if failed != 0 && status == IoStatus::Success {
        // The members that failed it leave the RAID (not the last: then
        // the error would have been seen above, `any` is not Success).
        let used = parent.io().module_ctx[CTX_FANNED];
        if let Some(ch) = parent.module_channel::<Rc<RaidChannel>>() {
            let raid = &ch.raid;
            let mut child = 0;
            for slot in 0..64 {
                if used & (1 << slot) == 0 {
                    continue;
                }
                if failed & (1 << child) != 0 {
                    member_failed(raid, slot);
                }
                child += 1;
            }
        }
    }
    parent.complete(status);
}
