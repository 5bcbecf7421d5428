//! A test vbdev over several members that fans out (`IoHandle::fan_out`)
//! every write, flush and unmap to all of them, reads from the first:
//! shared by the fan-out tests and the allocation-free run.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::sync::Mutex;

use bdev::{
    BdevChannel, BdevEvent, BdevOps, BdevProps, Desc, FanChild, FanOutResult, IoHandle, IoStatus,
    IoType,
};
use reactor::CoreId;

thread_local! {
    /// The results recording mirrors saw, in completion order.
    pub static RESULTS: RefCell<Vec<FanOutResult>> = const { RefCell::new(Vec::new()) };
    /// Fan-outs refused for want of I/O objects.
    pub static NOMEM: Cell<u64> = const { Cell::new(0) };
}

pub fn nop(_: &str, _: BdevEvent) {}

/// What the mirror does with a request: to every member, or a test of a
/// refusal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes, flushes, unmaps to every member; reads from member 0.
    Mirror,
    /// Reads fanned out to two members into the same bytes (refused).
    OverlappingReads,
}

struct Mirror {
    members: Mutex<Vec<Desc>>,
    mode: Mode,
    record: bool,
}

struct MirrorChannel {
    bases: Vec<BdevChannel>,
}

/// Records the result, completes with "any member succeeded".
fn recorded_done(parent: IoHandle, r: FanOutResult) {
    RESULTS.with(|v| v.borrow_mut().push(r));
    parent.complete(r.any());
}

/// Completes with "any member succeeded".
fn mirror_done(parent: IoHandle, r: FanOutResult) {
    parent.complete(r.any());
}

impl BdevOps for Mirror {
    type Channel = MirrorChannel;

    fn create_channel(&self, _core: CoreId) -> Result<MirrorChannel, String> {
        let m = self.members.lock().unwrap();
        Ok(MirrorChannel {
            bases: m
                .iter()
                .map(|d| d.get_io_channel().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
        })
    }

    fn submit(&self, ch: &MirrorChannel, io: IoHandle) {
        let done = if self.record {
            recorded_done
        } else {
            mirror_done
        };
        let r = match (io.io().io_type(), self.mode) {
            (IoType::Read, Mode::Mirror) => {
                io.forward(&ch.bases[0], bdev::complete_parent);
                return;
            }
            (IoType::Read, Mode::OverlappingReads) => {
                let c = FanChild::same_as(io.io());
                io.fan_out(ch.bases.iter().map(|b| (b, c)), done)
            }
            _ => {
                let c = FanChild::same_as(io.io());
                io.fan_out(ch.bases.iter().map(|b| (b, c)), done)
            }
        };
        if let Err(refused) = r {
            if refused.status() == IoStatus::NoMem {
                NOMEM.with(|n| n.set(n.get() + 1));
            }
            refused.fail_parent();
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(
            ty,
            IoType::Read | IoType::Write | IoType::Flush | IoType::Unmap
        )
    }

    fn destruct(&self) {
        self.members.lock().unwrap().clear();
    }
}

/// A mirror `name` over `members` (each opened for writing); `record`:
/// its fan-out results go to [`RESULTS`].
pub fn mirror(name: &str, members: &[&str], blocks: u64, mode: Mode, record: bool) {
    let descs = members
        .iter()
        .map(|m| bdev::open(m, true, nop).unwrap())
        .collect();
    bdev::register(
        "mirror_test",
        BdevProps::new(name, "mirror", 512, blocks),
        Mirror {
            members: Mutex::new(descs),
            mode,
            record,
        },
    )
    .unwrap();
}
