//! The small local executor every reactor runs for control-path tasks.
//!
//! Tasks are `!Send` futures pinned to one reactor. A waker wakes its task
//! directly when called on the task's own reactor and by message otherwise.
//! A reactor with no ready task pays one empty-queue check per iteration.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

use crate::message::Message;
use crate::oneshot;
use crate::reactor::ReactorInner;
use crate::shared::{Mode, Shared};
use crate::{CoreId, Error, context};

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskKey {
    idx: u32,
    generation: u32,
}

struct Task {
    future: Option<BoxFuture>,
    scheduled: bool,
    waker: Waker,
}

struct Slot {
    generation: u32,
    task: Option<Task>,
}

#[derive(Default)]
pub(crate) struct Executor {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    ready: RefCell<VecDeque<TaskKey>>,
}

impl Executor {
    pub(crate) fn spawn(&self, r: &ReactorInner, future: BoxFuture) -> TaskKey {
        let mut slots = self.slots.borrow_mut();
        let idx = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    generation: 0,
                    task: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[idx as usize];
        let key = TaskKey {
            idx,
            generation: slot.generation,
        };
        let waker = Waker::from(Arc::new(TaskWaker {
            shared: Arc::downgrade(&r.shared),
            index: r.index,
            key,
        }));
        slot.task = Some(Task {
            future: Some(future),
            scheduled: true,
            waker,
        });
        self.ready.borrow_mut().push_back(key);
        key
    }

    pub(crate) fn schedule(&self, key: TaskKey) {
        let mut slots = self.slots.borrow_mut();
        if let Some(Slot {
            generation,
            task: Some(t),
        }) = slots.get_mut(key.idx as usize)
            && *generation == key.generation
            && !t.scheduled
        {
            t.scheduled = true;
            self.ready.borrow_mut().push_back(key);
        }
    }

    #[inline]
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Polls up to `batch` of the tasks ready now; returns how many.
    pub(crate) fn run_ready(&self, r: &ReactorInner, batch: usize) -> usize {
        let n = self.ready.borrow().len().min(batch);
        let mut polled = 0;
        for _ in 0..n {
            let Some(key) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            let taken = {
                let mut slots = self.slots.borrow_mut();
                match slots.get_mut(key.idx as usize) {
                    Some(Slot {
                        generation,
                        task: Some(t),
                    }) if *generation == key.generation => {
                        t.scheduled = false;
                        t.future.take().map(|f| (f, t.waker.clone()))
                    }
                    _ => None,
                }
            };
            let Some((mut future, waker)) = taken else {
                continue;
            };
            polled += 1;
            r.current_task.set(Some(key));
            let done = future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            r.current_task.set(None);
            if done {
                drop(future);
                self.remove(key);
            } else {
                let mut slots = self.slots.borrow_mut();
                if let Some(Slot {
                    generation,
                    task: Some(t),
                }) = slots.get_mut(key.idx as usize)
                    && *generation == key.generation
                {
                    t.future = Some(future);
                }
            }
        }
        polled
    }

    /// Forgets a finished (or panicked) task.
    pub(crate) fn remove(&self, key: TaskKey) {
        let task = {
            let mut slots = self.slots.borrow_mut();
            match slots.get_mut(key.idx as usize) {
                Some(slot) if slot.generation == key.generation && slot.task.is_some() => {
                    slot.generation = slot.generation.wrapping_add(1);
                    self.free.borrow_mut().push(key.idx);
                    slot.task.take()
                }
                _ => None,
            }
        };
        drop(task);
    }

    /// Drops every task (shutdown). Dropping a task may spawn or wake
    /// others; those are dropped too.
    pub(crate) fn clear(&self) {
        loop {
            let task = {
                let mut slots = self.slots.borrow_mut();
                slots.iter_mut().find_map(|s| s.task.take())
            };
            match task {
                Some(t) => drop(t),
                None => break,
            }
        }
        self.ready.borrow_mut().clear();
    }
}

struct TaskWaker {
    shared: Weak<Shared>,
    index: usize,
    key: TaskKey,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(r) = context::current()
            && r.index == self.index
            && std::ptr::eq(Arc::as_ptr(&r.shared), self.shared.as_ptr())
        {
            r.executor.schedule(self.key);
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let key = self.key;
        let msg = Message::new(move || {
            if let Some(r) = context::current() {
                r.executor.schedule(key);
            }
        });
        // A wake refused during shutdown leaves the task to be dropped.
        let _ = shared.send_idx(self.index, msg, Mode::Send);
    }
}

/// The result of a task or remote call: a future of `Ok(value)`, or
/// `Err` when the work could not be sent or ended without a result
/// (it panicked, or the runtime shut down first). Dropping it detaches the
/// work, which still runs.
#[must_use = "dropping a JoinHandle detaches the work; await it for the result"]
pub struct JoinHandle<T> {
    core: CoreId,
    inner: JoinInner<T>,
}

enum JoinInner<T> {
    Waiting(oneshot::Receiver<T>),
    Failed(Option<Error>),
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("core", &self.core)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    pub(crate) fn waiting(core: CoreId, rx: oneshot::Receiver<T>) -> JoinHandle<T> {
        JoinHandle {
            core,
            inner: JoinInner::Waiting(rx),
        }
    }

    pub(crate) fn failed(core: CoreId, e: Error) -> JoinHandle<T> {
        JoinHandle {
            core,
            inner: JoinInner::Failed(Some(e)),
        }
    }

    /// The core the work runs on.
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// Whether awaiting it would complete at once.
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            JoinInner::Waiting(rx) => rx.is_ready(),
            JoinInner::Failed(_) => true,
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let core = self.core;
        // JoinHandle is Unpin: all its fields are.
        let this = self.get_mut();
        match &mut this.inner {
            JoinInner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.map_err(|()| Error::Canceled { core })),
            JoinInner::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Canceled { core }))),
        }
    }
}

/// Spawns a task on the current reactor. The future need not be `Send`.
///
/// # Panics
/// When not called on a reactor thread.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let r = context::current().expect("spawn must be called on a reactor thread");
    spawn_here(&r, future)
}

pub(crate) fn spawn_here<T: 'static>(
    r: &Rc<ReactorInner>,
    future: impl Future<Output = T> + 'static,
) -> JoinHandle<T> {
    let (tx, rx) = oneshot::channel();
    r.executor.spawn(
        r,
        Box::pin(async move {
            tx.send(future.await);
        }),
    );
    JoinHandle::waiting(r.core, rx)
}

/// Runs a future to completion on the calling thread, parking between
/// wake-ups: how a thread that is not a reactor (a launcher, an RPC
/// connection thread) waits for a [`JoinHandle`]. Never call it on a reactor:
/// the thread would park instead of polling.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
