//! Quiesce (SPDK's `spdk_bdev_quiesce`/`_range`): new I/O to a block range
//! (or the whole bdev) waits, the I/O in flight drains, then the caller
//! goes on (resize, snapshot, a RAID rebuild window, a FLUSH barrier);
//! unquiesce lets the held I/O go.
//!
//! Each channel keeps its own copy of the bdev's quiesced ranges, changed
//! only by messages to its core ([`crate::Bdev::for_each_channel`]), so the
//! I/O path checks them without a lock: one flag when nothing is
//! quiesced. Draining counts generations: a quiesce bumps each channel's
//! generation, and the I/O submitted before it (every one in flight then,
//! whatever its range: they are finite) must end before the quiesce
//! completes. New I/O outside the range flows meanwhile.
//!
//! ```text
//!   quiesce_range(r) ─for_each_channel─> core n: ranges += r, gen += 1,
//!        │                                       old I/O in flight: k
//!        │ (each core: k reaches 0)              new I/O in r: held
//!        v
//!   Ok(())      unquiesce_range(r) ─for_each_channel─> ranges -= r, held I/O go
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bdev::{Bdev, BdevInner};
use crate::channel::ChanState;
use crate::error::BdevError;
use crate::io::BdevIo;
use crate::types::IoType;

/// A count of channels still draining, with the waker of the task waiting
/// for it to reach zero (decremented on whichever core drains).
struct Countdown {
    left: AtomicUsize,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Countdown {
    fn new(n: usize) -> Countdown {
        Countdown {
            left: AtomicUsize::new(n),
            waker: std::sync::Mutex::new(None),
        }
    }

    fn add(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let w = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.left.load(Ordering::Acquire) == 0 {
                return std::task::Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            // Drained meanwhile: do not wait for a wake that has passed.
            if self.left.load(Ordering::Acquire) == 0 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// One quiesced range: blocks `start..end`, taken by `module`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QRange {
    pub id: u64,
    pub start: u64,
    pub end: u64,
    pub module: String,
}

/// A channel's view of the quiesced ranges.
pub(crate) struct ChannelQuiesce {
    any: Cell<bool>,
    ranges: RefCell<Vec<QRange>>,
    held: RefCell<VecDeque<NonNull<BdevIo>>>,
    epoch: Cell<u32>,
    /// I/O in flight from before the latest generation bump.
    old: Cell<usize>,
    /// Called when `old` reaches zero.
    waiters: RefCell<Vec<Box<dyn FnOnce()>>>,
}

impl ChannelQuiesce {
    /// A new channel starts with the bdev's ranges.
    pub fn new(bdev: &BdevInner) -> ChannelQuiesce {
        let ranges = bdev.quiesced().clone();
        ChannelQuiesce {
            any: Cell::new(!ranges.is_empty()),
            ranges: RefCell::new(ranges),
            held: RefCell::new(VecDeque::new()),
            epoch: Cell::new(0),
            old: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
        }
    }

    #[inline]
    pub fn epoch(&self) -> u32 {
        self.epoch.get()
    }

    pub fn held(&self) -> usize {
        self.held.borrow().len()
    }

    /// Whether `io` (just submitted) must wait.
    #[inline]
    pub fn holds(&self, io: &BdevIo) -> bool {
        self.any.get() && overlaps_any(&self.ranges.borrow(), io)
    }

    /// Takes out the first held I/O `pick` chooses.
    pub fn take_held(&self, pick: impl Fn(NonNull<BdevIo>) -> bool) -> Option<NonNull<BdevIo>> {
        let mut h = self.held.borrow_mut();
        let i = h.iter().position(|q| pick(*q))?;
        h.remove(i)
    }

    pub fn hold(&self, io: NonNull<BdevIo>) {
        self.held.borrow_mut().push_back(io);
    }

    /// A top-level I/O of generation `epoch` ended.
    #[inline]
    pub fn retired(&self, epoch: u32) {
        if epoch != self.epoch.get() {
            let left = self.old.get().saturating_sub(1);
            self.old.set(left);
            if left == 0 {
                let w = std::mem::take(&mut *self.waiters.borrow_mut());
                for f in w {
                    f();
                }
            }
        }
    }
}

fn overlaps(r: &QRange, io: &BdevIo) -> bool {
    if io.ty == IoType::Abort {
        // It acts on the layer's queues, held I/O included.
        return false;
    }
    if io.ty == IoType::Reset {
        // A reset concerns the whole device.
        return true;
    }
    let start = io.offset_blocks;
    let end = start.saturating_add(io.num_blocks.max(1));
    start < r.end && r.start < end
}

fn overlaps_any(ranges: &[QRange], io: &BdevIo) -> bool {
    ranges.iter().any(|r| overlaps(r, io))
}

/// On one channel: adds `r`, starts a generation, and calls `drained`
/// (now or later on this core) once the I/O in flight before it ended.
fn add_range(s: &Rc<ChanState>, r: &QRange, drained: Box<dyn FnOnce()>) {
    let q = &s.quiesce;
    {
        let mut ranges = q.ranges.borrow_mut();
        if !ranges.iter().any(|x| x.id == r.id) {
            ranges.push(r.clone());
        }
    }
    q.any.set(true);
    let held = q.held.borrow().len();
    let epoch = q.epoch.get().wrapping_add(1);
    q.epoch.set(epoch);
    for p in q.held.borrow().iter() {
        // SAFETY: held I/O are in flight and owned by the layer; only
        // their generation changes (they are not in flight below).
        unsafe { (*p.as_ptr()).epoch = epoch };
    }
    // Every I/O not held is from an older generation now.
    q.old.set(s.outstanding().saturating_sub(held));
    if q.old.get() == 0 {
        drained();
    } else {
        q.waiters.borrow_mut().push(drained);
    }
}

/// On one channel: removes range `id` and lets go the held I/O no range
/// holds any more.
fn remove_range(s: &Rc<ChanState>, id: u64) {
    let q = &s.quiesce;
    q.ranges.borrow_mut().retain(|r| r.id != id);
    q.any.set(!q.ranges.borrow().is_empty());
    let n = q.held.borrow().len();
    for _ in 0..n {
        let Some(p) = q.held.borrow_mut().pop_front() else {
            break;
        };
        // SAFETY: as in `add_range`.
        let io = unsafe { &mut *p.as_ptr() };
        if overlaps_any(&q.ranges.borrow(), io) {
            q.held.borrow_mut().push_back(p);
            continue;
        }
        io.epoch = q.epoch.get();
        crate::channel::submit(s, p);
    }
}

impl Bdev {
    /// Quiesces the whole bdev for `module`: see [`Bdev::quiesce_range`].
    ///
    /// # Errors
    /// As [`Bdev::quiesce_range`].
    pub async fn quiesce(&self, module: &str) -> Result<(), BdevError> {
        self.quiesce_range(module, 0, u64::MAX).await
    }

    /// Lets the whole bdev's I/O go again.
    ///
    /// # Errors
    /// As [`Bdev::unquiesce_range`].
    pub async fn unquiesce(&self, module: &str) -> Result<(), BdevError> {
        self.unquiesce_range(module, 0, u64::MAX).await
    }

    /// Quiesces `num_blocks` blocks from `offset_blocks` for `module`
    /// (SPDK's `spdk_bdev_quiesce_range`): I/O submitted from now on that
    /// touches the range (and resets) waits on every core; completes once
    /// every I/O that was in flight has ended. I/O elsewhere flows.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for an empty range, or one that overlaps a
    /// range quiesced already; [`BdevError::Removing`] when the bdev is
    /// going away.
    pub async fn quiesce_range(
        &self,
        module: &str,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Result<(), BdevError> {
        if num_blocks == 0 {
            return Err(BdevError::invalid("quiesce range", "no blocks"));
        }
        let r = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let r = QRange {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                start: offset_blocks,
                end: offset_blocks.saturating_add(num_blocks),
                module: module.to_owned(),
            };
            let mut list = self.inner.quiesced();
            if let Some(x) = list.iter().find(|x| x.start < r.end && r.start < x.end) {
                return Err(BdevError::invalid(
                    "quiesce range",
                    format!(
                        "blocks {}..{} of {} overlap {}..{} quiesced by {}",
                        r.start,
                        r.end,
                        self.name(),
                        x.start,
                        x.end,
                        x.module
                    ),
                ));
            }
            list.push(r.clone());
            r
        };
        // Channels not drained yet (+1 until the visit is over).
        let pending = Arc::new(Countdown::new(1));
        let visit = {
            let (r, pending) = (r.clone(), pending.clone());
            self.visit_channels(move |s| {
                pending.add();
                let p = pending.clone();
                add_range(s, &r, Box::new(move || p.done()));
            })
        };
        if let Err(e) = visit.await {
            self.inner.quiesced().retain(|x| x.id != r.id);
            return Err(e);
        }
        pending.done();
        pending.wait().await;
        log::debug!(
            "bdev {}: blocks {}..{} quiesced by {module}",
            self.name(),
            r.start,
            r.end
        );
        Ok(())
    }

    /// Ends the quiesce of exactly this range by `module` (SPDK's
    /// `spdk_bdev_unquiesce_range`): the I/O held for it is submitted.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] when `module` has no such range quiesced.
    pub async fn unquiesce_range(
        &self,
        module: &str,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Result<(), BdevError> {
        let end = offset_blocks.saturating_add(num_blocks);
        let id = {
            let mut list = self.inner.quiesced();
            let Some(i) = list
                .iter()
                .position(|x| x.start == offset_blocks && x.end == end && x.module == module)
            else {
                return Err(BdevError::invalid(
                    "unquiesce range",
                    format!(
                        "{module} has not quiesced blocks {offset_blocks}..{end} of {}",
                        self.name()
                    ),
                ));
            };
            list.remove(i).id
        };
        self.visit_channels(move |s| remove_range(s, id)).await
    }

    /// Whether any range is quiesced.
    pub fn is_quiesced(&self) -> bool {
        !self.inner.quiesced().is_empty()
    }
}
