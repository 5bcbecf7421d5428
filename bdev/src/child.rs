//! Child I/O: how a module passes (part of) an I/O it was given down to
//! another bdev and gets its own completion back, without `unsafe`.
//!
//! The module hands its [`IoHandle`] to [`IoHandle::submit_child`] with a
//! description of the child ([`Child`]) and a [`ChildCallback`]; the layer
//! keeps the parent in flight, builds the child over the parent's segments
//! (all, or a byte range of them), or over a buffer of the module's, sends
//! it through the base channel's whole path (bounds, splitting, bounce
//! buffers, out-of-resources retries), and calls the callback on this core
//! with the parent's handle back when the child ends.
//!
//! ```text
//!   module.submit(ch, io) ──io.submit_child(&ch.base, Child, done)──> base channel
//!                                                                       │
//!   done(parent: IoHandle, child: &mut BdevIo, status) <────────────────┘
//!        └─ parent.complete(status) / another child / a module buffer back
//! ```

use std::ptr::NonNull;

use dma::DmaBuf;

use crate::channel::BdevChannel;
use crate::error::BdevError;
use crate::handle::IoHandle;
use crate::io::BdevIo;
use crate::types::{IoStatus, IoType, IoVec};

/// The data a child I/O carries.
#[derive(Debug)]
pub enum ChildData {
    /// None (flush, unmap, write zeroes, reset, seek...).
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
    /// A buffer of the module's (the child's blocks from its start),
    /// handed back to the callback
    /// through [`BdevIo::take_buf`] of the child.
    Buf(DmaBuf),
}

/// One child I/O: what to do where on the base.
#[derive(Debug)]
pub struct Child {
    /// The I/O type.
    pub ty: IoType,
    /// First block on the base.
    pub offset_blocks: u64,
    /// Blocks.
    pub num_blocks: u64,
    /// Force Unit Access (writes).
    pub fua: bool,
    /// COPY: the first block copied from (0 for the other types).
    pub src_offset_blocks: u64,
    /// Its data.
    pub data: ChildData,
}

impl Child {
    /// The parent's own request (type, range, FUA, segments) unchanged.
    pub fn same_as(parent: &BdevIo) -> Child {
        Child {
            ty: parent.io_type(),
            offset_blocks: parent.offset_blocks(),
            num_blocks: parent.num_blocks(),
            fua: parent.fua(),
            src_offset_blocks: parent.src_offset_blocks(),
            data: if parent.io_type().has_data() {
                ChildData::Parent
            } else {
                ChildData::None
            },
        }
    }
}

/// Called on the parent's core when a child ends, with the parent's handle
/// (complete it, or send another child), the child (its buffer, its
/// seek result) and the child's status.
pub type ChildCallback = fn(parent: IoHandle, child: &mut BdevIo, status: IoStatus);

/// A child the base did not take: the parent's handle back, the reason and
/// the module's buffer if the child carried one.
#[derive(Debug)]
pub struct ChildRefused {
    /// The parent, still the module's to complete.
    pub parent: IoHandle,
    /// Why the child was not started.
    pub error: BdevError,
    /// The buffer of [`ChildData::Buf`], given back.
    pub buf: Option<DmaBuf>,
}

impl ChildRefused {
    /// The status to complete the parent with: `NoMem` when the base was
    /// out of I/O objects (the layer submits the parent again later),
    /// else `Failed`.
    pub fn status(&self) -> IoStatus {
        if matches!(self.error, BdevError::NoMem(_)) {
            IoStatus::NoMem
        } else {
            IoStatus::Failed
        }
    }

    /// Completes the parent with [`ChildRefused::status`].
    pub fn fail_parent(self) {
        let st = self.status();
        self.parent.complete(st);
    }
}

/// The child's completion as the layer sees it: back to the module's
/// callback with the parent's handle.
pub(crate) fn child_done(child: &mut BdevIo, status: IoStatus) {
    let cb = child
        .child_cb
        .take()
        .expect("a child I/O carries its module's callback");
    let parent = NonNull::new(child.ctx as *mut BdevIo).expect("a child I/O knows its parent");
    let mut parent = IoHandle::new(parent);
    if matches!(child.ty, IoType::SeekData | IoType::SeekHole) {
        // A passed-through seek answers for the parent (the module may
        // still change it).
        parent.io_mut().seek = child.seek;
    }
    cb(parent, child, status);
}

impl IoHandle {
    /// Sends a child I/O to `base` (a channel of a bdev this module opened)
    /// on behalf of this I/O; `done` runs with this handle back when the
    /// child ends.
    ///
    /// # Errors
    /// [`ChildRefused`] (with this handle) when the child cannot start:
    /// bounds, rights, a range outside the parent's data, no I/O object.
    pub fn submit_child(
        self,
        base: &BdevChannel,
        child: Child,
        done: ChildCallback,
    ) -> Result<(), ChildRefused> {
        let parent = self.io();
        let mut iov = [IoVec::EMPTY; crate::MAX_IOV];
        let (cnt, buf) = match child.data {
            ChildData::None => (0, None),
            ChildData::Parent => {
                let v = parent.iovs();
                iov[..v.len()].copy_from_slice(v);
                (v.len(), None)
            }
            ChildData::ParentRange { offset, len } => {
                match crate::channel::slice_iovs(parent.iovs(), offset, len, &mut iov) {
                    Some(n) => (n, None),
                    None => {
                        let error = BdevError::invalid(
                            "child data",
                            format!(
                                "bytes {offset}..{} are not within the parent's {} bytes \
                                 in {} segments",
                                offset.saturating_add(len),
                                parent.data_len(),
                                crate::MAX_IOV
                            ),
                        );
                        return Err(ChildRefused {
                            parent: self,
                            error,
                            buf: None,
                        });
                    }
                }
            }
            ChildData::Buf(b) => {
                // The child's blocks from the buffer's start (a cache's
                // buffer may be longer than asked for).
                let want = (child.num_blocks as usize).saturating_mul(base.block_size() as usize);
                let len = if child.ty.has_data() { want } else { 0 };
                if len > b.len() {
                    return Err(ChildRefused {
                        parent: self,
                        error: BdevError::BufferSize {
                            expected: len,
                            got: b.len(),
                        },
                        buf: Some(b),
                    });
                }
                iov[0] = IoVec::of(&b, 0, len);
                (1, Some(b))
            }
        };
        let raw = self.into_raw();
        let req = crate::channel::Request {
            src_offset_blocks: child.src_offset_blocks,
            ty: child.ty,
            offset_blocks: child.offset_blocks,
            num_blocks: child.num_blocks,
            fua: child.fua,
            cb: child_done,
            ctx: raw,
        };
        // The segments are the parent's (in flight until `done` has run:
        // the module holds no handle meanwhile) or the module's buffer,
        // which travels with the child.
        match base.submit_child_request(req, &iov[..cnt], buf, done, 0) {
            Ok(()) => Ok(()),
            Err((error, buf)) => Err(ChildRefused {
                parent: IoHandle::new(NonNull::new(raw as *mut BdevIo).expect("non-null")),
                error,
                buf,
            }),
        }
    }

    /// Passes this I/O to `base` unchanged ([`Child::same_as`]); a refused
    /// child completes it at once ([`ChildRefused::fail_parent`]).
    pub fn forward(self, base: &BdevChannel, done: ChildCallback) {
        let child = Child::same_as(self.io());
        if let Err(r) = self.submit_child(base, child, done) {
            r.fail_parent();
        }
    }
}

impl IoHandle {
    /// Opens a zero-copy window on `base` for `num_blocks` at
    /// `offset_blocks` on behalf of this I/O ([`BdevChannel::zcopy_start`]
    /// as a child): `done` gets this handle back with the window as the
    /// child ([`BdevIo::segments`], filled with the blocks when
    /// `populate`), and ends it with [`BdevIo::end_child_window`].
    ///
    /// # Errors
    /// [`ChildRefused`] (with this handle) when the window cannot open.
    pub fn open_child_window(
        self,
        base: &BdevChannel,
        offset_blocks: u64,
        num_blocks: u64,
        populate: bool,
        done: ChildCallback,
    ) -> Result<(), ChildRefused> {
        let raw = self.into_raw();
        base.zcopy_launch(
            offset_blocks,
            num_blocks,
            populate,
            child_done,
            raw,
            Some(done),
        )
        .map_err(|error| ChildRefused {
            parent: IoHandle::new(NonNull::new(raw as *mut BdevIo).expect("non-null")),
            error,
            buf: None,
        })
    }
}

impl BdevIo {
    /// In the callback of [`IoHandle::open_child_window`], when the window
    /// opened: ends it once the callback returns — with `commit`, what was
    /// written into its segments becomes the blocks' data — and `done`
    /// gets `parent` back when the base is done.
    pub fn end_child_window(&mut self, commit: bool, parent: IoHandle, done: ChildCallback) {
        self.child_cb = Some(done);
        self.zcopy_end(commit, child_done, parent.into_raw());
    }
}

/// The [`ChildCallback`] that completes the parent with the child's status
/// (a plain pass-through).
pub fn complete_parent(parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    parent.complete(status);
}
