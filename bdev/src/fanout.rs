//! Fan-out: one I/O a module was given sent to several bases at once (a
//! mirror's write to every member; a flush, unmap or reset to every member
//! of a stripe), the parent ending once the last child has.
//!
//! ```text
//!   module.submit(ch, io) ──io.fan_out([(base0, child0), (base1, child1)…], done)
//!        phase 1: every child checked (type, bounds, rights, data range)
//!                 and every base's pool has room ─ else Err(ChildRefused),
//!                 nothing started
//!        phase 2: the parent's join state set (n children in flight), then
//!                 every child launched (completions never run inside a
//!                 launch: they are deferred to the base's poller)
//!   each child ends ──> its status in its slot; the last one ──>
//!        done(parent: IoHandle, FanOutResult) ─ the module completes it
//! ```
//!
//! The join state lives in the parent's pooled [`BdevIo`]: nothing is
//! allocated per I/O. Children share the parent's segments (all of them or
//! a byte range); two children that read may not write the same bytes
//! (refused).

use std::ptr::NonNull;

use crate::channel::BdevChannel;
use crate::child::ChildRefused;
use crate::error::BdevError;
use crate::handle::IoHandle;
use crate::io::{BdevIo, MAX_IOV};
use crate::types::{IoStatus, IoType, IoVec};

/// The most children one fan-out has.
pub const MAX_FAN_OUT: usize = 32;

/// The data a fanned-out child carries: the parent's, never a buffer of
/// its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanData {
    /// None (flush, unmap, write zeroes, reset).
    None,
    /// All of the parent's segments.
    Parent,
    /// `len` bytes of the parent's segments from byte `offset`.
    ParentRange {
        /// First byte, within the parent's data.
        offset: usize,
        /// Bytes.
        len: usize,
    },
}

/// One child of a fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanChild {
    /// The I/O type (not zero-copy, not copy).
    pub ty: IoType,
    /// First block on the base.
    pub offset_blocks: u64,
    /// Blocks.
    pub num_blocks: u64,
    /// Force Unit Access (writes).
    pub fua: bool,
    /// Its data.
    pub data: FanData,
}

impl FanChild {
    /// The parent's own request (type, range, FUA, all its data).
    pub fn same_as(parent: &BdevIo) -> FanChild {
        FanChild {
            ty: parent.io_type(),
            offset_blocks: parent.offset_blocks(),
            num_blocks: parent.num_blocks(),
            fua: parent.fua(),
            data: if parent.io_type().has_data() {
                FanData::Parent
            } else {
                FanData::None
            },
        }
    }
}

/// How every child of a fan-out ended, in the order they were given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanOutResult {
    n: u8,
    status: [IoStatus; MAX_FAN_OUT],
}

impl FanOutResult {
    /// Children.
    pub fn len(&self) -> usize {
        usize::from(self.n)
    }

    /// Whether there were none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Child `i`'s status (`Failed` beyond the children).
    pub fn status(&self, i: usize) -> IoStatus {
        if i < self.len() {
            self.status[i]
        } else {
            IoStatus::Failed
        }
    }

    /// Bit `i` set for each child `i` that did not succeed.
    pub fn failed_mask(&self) -> u32 {
        (0..self.len())
            .filter(|&i| self.status[i] != IoStatus::Success)
            .fold(0, |m, i| m | (1 << i))
    }

    /// Success when every child succeeded, else the first failure.
    pub fn all(&self) -> IoStatus {
        self.status[..self.len()]
            .iter()
            .copied()
            .find(|s| *s != IoStatus::Success)
            .unwrap_or(IoStatus::Success)
    }

    /// Success when any child succeeded, else [`FanOutResult::all`].
    pub fn any(&self) -> IoStatus {
        if self.status[..self.len()].contains(&IoStatus::Success) {
            IoStatus::Success
        } else {
            self.all()
        }
    }
}

/// Called on the parent's core once every child of a fan-out has ended,
/// with the parent's handle (complete it, or fan out again) and the
/// children's statuses.
pub type FanOutCallback = fn(parent: IoHandle, result: FanOutResult);

/// A parent's join state while its children are in flight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FanState {
    n: u8,
    outstanding: u8,
    status: [IoStatus; MAX_FAN_OUT],
    done: Option<FanOutCallback>,
}

impl Default for FanState {
    fn default() -> Self {
        FanState {
            n: 0,
            outstanding: 0,
            status: [IoStatus::Success; MAX_FAN_OUT],
            done: None,
        }
    }
}

/// The segments of `data` over the parent's `iovs`, into `out`; None when
/// the range is not within them.
fn child_iovs(data: FanData, iovs: &[IoVec], out: &mut [IoVec; MAX_IOV]) -> Option<usize> {
    match data {
        FanData::None => Some(0),
        FanData::Parent => {
            out[..iovs.len()].copy_from_slice(iovs);
            Some(iovs.len())
        }
        FanData::ParentRange { offset, len } => crate::channel::slice_iovs(iovs, offset, len, out),
    }
}

/// The parent's bytes a reading child writes into, as a range.
fn read_range(c: &FanChild, parent_len: usize) -> Option<(usize, usize)> {
    if c.ty != IoType::Read {
        return None;
    }
    match c.data {
        FanData::None => None,
        FanData::Parent => Some((0, parent_len)),
        FanData::ParentRange { offset, len } => Some((offset, offset.saturating_add(len))),
    }
}

/// Every fanned-out child's callback: records its status in its slot;
/// the last one hands the parent and the result to the module.
fn fan_child_done(mut parent: IoHandle, child: &mut BdevIo, status: IoStatus) {
    let slot = usize::from(child.fan_slot);
    let f = &mut parent.io_mut().fan;
    if let Some(s) = f.status.get_mut(slot) {
        *s = status;
    }
    f.outstanding = f.outstanding.saturating_sub(1);
    if f.outstanding > 0 {
        // Siblings are still in flight: the join keeps the parent.
        let _ = parent.into_raw();
        return;
    }
    finish(parent);
}

/// Ends a fan-out whose children have all ended: the module's callback
/// with the result (the join state cleared first, so it may fan out again).
fn finish(mut parent: IoHandle) {
    let f = std::mem::take(&mut parent.io_mut().fan);
    let result = FanOutResult {
        n: f.n,
        status: f.status,
    };
    match f.done {
        Some(done) => done(parent, result),
        None => parent.complete(result.all()),
    }
}

impl IoHandle {
    /// Sends children of this I/O to several bases at once (at most
    /// [`MAX_FAN_OUT`]); `done` runs with this handle back and every
    /// child's status once the last has ended. All or nothing: when one
    /// child cannot start, none does.
    ///
    /// # Errors
    /// [`ChildRefused`] (with this handle) when a child cannot start: no
    /// children or too many, a zero-copy or copy child, bounds, rights, a
    /// range outside the parent's data, reading children writing the same
    /// bytes, or a base out of I/O objects (`NoMem`: the parent is
    /// submitted again later when failed with [`ChildRefused::fail_parent`]).
    pub fn fan_out<'a>(
        self,
        children: impl IntoIterator<Item = (&'a BdevChannel, FanChild)>,
        done: FanOutCallback,
    ) -> Result<(), ChildRefused> {
        let mut list: [Option<(&BdevChannel, FanChild)>; MAX_FAN_OUT] = [None; MAX_FAN_OUT];
        let mut n = 0usize;
        for c in children {
            if n == MAX_FAN_OUT {
                return Err(refuse(
                    self,
                    BdevError::invalid("fan-out", format!("more than {MAX_FAN_OUT} children")),
                ));
            }
            list[n] = Some(c);
            n += 1;
        }
        if n == 0 {
            return Err(refuse(self, BdevError::invalid("fan-out", "no children")));
        }
        let kids = &list[..n];
        // Phase 1: everything that could refuse a child, before any starts.
        let parent_len = self.io().data_len();
        let mut scratch = [IoVec::EMPTY; MAX_IOV];
        for (i, (base, c)) in kids.iter().flatten().enumerate() {
            if matches!(c.ty, IoType::Zcopy | IoType::Copy) {
                let e = BdevError::invalid(
                    "fan-out child",
                    format!("{} is not fanned out", c.ty.name()),
                );
                return Err(refuse(self, e));
            }
            let Some(cnt) = child_iovs(c.data, self.io().iovs(), &mut scratch) else {
                let e = BdevError::invalid(
                    "fan-out child data",
                    format!(
                        "child {i}: {:?} is not within the parent's {parent_len} bytes in {MAX_IOV} segments",
                        c.data
                    ),
                );
                return Err(refuse(self, e));
            };
            if let Err(e) = base.check_child(c.ty, c.offset_blocks, c.num_blocks, &scratch[..cnt]) {
                return Err(refuse(self, e));
            }
            if let Some((a, b)) = read_range(c, parent_len) {
                let overlaps = kids[..i]
                    .iter()
                    .flatten()
                    .filter_map(|(_, o)| read_range(o, parent_len))
                    .any(|(x, y)| a < y && x < b);
                if overlaps {
                    let e = BdevError::invalid(
                        "fan-out child data",
                        format!("child {i} reads into bytes another child reads into"),
                    );
                    return Err(refuse(self, e));
                }
            }
            // This base's pool must hold this child and the earlier ones
            // sent to it.
            let on_base = kids[..=i]
                .iter()
                .flatten()
                .filter(|(b, _)| b.same_channel(base))
                .count();
            if on_base > base.free_ios() {
                return Err(refuse(self, BdevError::NoMem(base.pool_size())));
            }
        }
        // Phase 2: the join state first (every child counted), then the
        // launches; no child's completion runs inside its launch.
        let mut me = self;
        let mut piov = [IoVec::EMPTY; MAX_IOV];
        let pcnt = me.io().iovs().len();
        piov[..pcnt].copy_from_slice(me.io().iovs());
        me.io_mut().fan = FanState {
            n: n as u8,
            outstanding: n as u8,
            status: [IoStatus::Success; MAX_FAN_OUT],
            done: Some(done),
        };
        let raw = me.into_raw();
        for (i, (base, c)) in kids.iter().flatten().enumerate() {
            let cnt = child_iovs(c.data, &piov[..pcnt], &mut scratch).unwrap_or(0);
            let req = crate::channel::Request {
                src_offset_blocks: 0,
                ty: c.ty,
                offset_blocks: c.offset_blocks,
                num_blocks: c.num_blocks,
                fua: c.fua,
                cb: crate::child::child_done,
                ctx: raw,
            };
            if let Err((e, _)) =
                base.submit_child_request(req, &scratch[..cnt], None, fan_child_done, i as u8)
            {
                // Checked above, so not expected: the child counts as
                // failed and the others go on.
                log::error!("fan-out child {i} refused after its checks: {e}");
                let mut parent = IoHandle::new(NonNull::new(raw as *mut BdevIo).expect("non-null"));
                let f = &mut parent.io_mut().fan;
                f.status[i] = if matches!(e, BdevError::NoMem(_)) {
                    IoStatus::NoMem
                } else {
                    IoStatus::Failed
                };
                f.outstanding -= 1;
                if f.outstanding == 0 {
                    // Only the last child can bring it to 0 here: every
                    // launched sibling is still in flight.
                    finish(parent);
                    return Ok(());
                }
                let _ = parent.into_raw();
            }
        }
        Ok(())
    }
}

fn refuse(parent: IoHandle, error: BdevError) -> ChildRefused {
    ChildRefused {
        parent,
        error,
        buf: None,
    }
}
