//! Where the bdev I/O of an export's connection task meets that task again
//! (NBD, NVMe/TCP): each slot of the task has a tag, leaked as the I/O's
//! context word ([`Completions::ctx`]) and rebuilt once by [`io_done`],
//! which queues (slot, status, buffer) and wakes the task. One reference
//! per I/O in flight, so a completion after the task is gone stays sound.
//! All on the task's core: no lock, no allocation per I/O.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bdev::{BdevIo, IoStatus};
use dma::DmaBuf;

/// A finished I/O: its slot, status and buffer.
pub type Completion = (u16, IoStatus, Option<DmaBuf>);

struct Done {
    ready: RefCell<VecDeque<Completion>>,
    waker: Cell<Option<Waker>>,
}

/// A slot's tag (the context word of the slot's I/O).
struct Tag {
    done: Rc<Done>,
    index: u16,
}

/// The completion queue of one task with `slots` slots.
pub struct Completions {
    done: Rc<Done>,
    tags: Vec<Rc<Tag>>,
}

impl Completions {
    /// A queue for slots `0..slots`.
    pub fn new(slots: usize) -> Completions {
        let done = Rc::new(Done {
            ready: RefCell::new(VecDeque::with_capacity(slots)),
            waker: Cell::new(None),
        });
        let tags = (0..slots as u16)
            .map(|index| {
                Rc::new(Tag {
                    done: done.clone(),
                    index,
                })
            })
            .collect();
        Completions { done, tags }
    }

    /// The context word for an I/O of slot `slot`, to submit with
    /// [`io_done`] as its callback; give it back with
    /// [`Completions::not_started`] if the submission fails.
    pub fn ctx(&self, slot: u16) -> usize {
        Rc::into_raw(self.tags[slot as usize].clone()) as usize
    }

    /// Takes back the context word of an I/O that was not started.
    ///
    /// # Safety
    /// `ctx` comes from [`Completions::ctx`] and its I/O was refused at
    /// submission (so [`io_done`] never runs for it); each such word is
    /// given back once.
    pub unsafe fn not_started(ctx: usize) {
        // SAFETY: per the contract, `ctx` is a leaked `Rc<Tag>` that nothing
        // else will rebuild.
        drop(unsafe { Rc::from_raw(ctx as *const Tag) });
    }

    /// The next finished I/O.
    pub fn pop(&self) -> Option<Completion> {
        self.done.ready.borrow_mut().pop_front()
    }

    /// Waits up to `d` for a completion (woken at once by one).
    pub async fn wait(&self, d: Duration) {
        let mut sleep = std::pin::pin!(reactor::sleep(d));
        std::future::poll_fn(|cx| {
            if !self.done.ready.borrow().is_empty() {
                return Poll::Ready(());
            }
            self.done.waker.set(Some(cx.waker().clone()));
            sleep.as_mut().poll(cx)
        })
        .await;
        self.done.waker.take();
    }
}

/// The bdev completion callback of I/O submitted with a
/// [`Completions::ctx`] word.
pub fn io_done(io: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is an `Rc<Tag>` leaked by `Completions::ctx` for this
    // I/O; it is rebuilt exactly once, here.
    let tag = unsafe { Rc::from_raw(io.ctx() as *const Tag) };
    tag.done
        .ready
        .borrow_mut()
        .push_back((tag.index, status, io.take_buf()));
    if let Some(w) = tag.done.waker.take() {
        w.wake();
    }
}
