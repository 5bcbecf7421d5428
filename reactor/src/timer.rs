//! The reactor's timer queue (timed pollers and `sleep`) and the `Sleep`
//! future.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::context;
use crate::poller::PollerInner;

pub(crate) enum TimerKind {
    Poller(Rc<PollerInner>),
    Sleep(Rc<SleepState>),
}

struct Entry {
    deadline: u64,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so the `BinaryHeap` pops the earliest deadline first (and
    /// among equal deadlines, the first inserted).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// Deadlines in nanoseconds of the reactor's clock.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: RefCell<BinaryHeap<Entry>>,
    seq: Cell<u64>,
}

impl TimerQueue {
    pub(crate) fn insert(&self, deadline: u64, kind: TimerKind) {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.heap.borrow_mut().push(Entry {
            deadline,
            seq,
            kind,
        });
    }

    /// The earliest entry due at `now`, removed.
    #[inline]
    pub(crate) fn pop_due(&self, now: u64) -> Option<(u64, TimerKind)> {
        let mut heap = self.heap.borrow_mut();
        if heap.peek()?.deadline > now {
            return None;
        }
        heap.pop().map(|e| (e.deadline, e.kind))
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.borrow().peek().map(|e| e.deadline)
    }

    /// Empties the queue (shutdown); the entries are dropped by the caller,
    /// outside the borrow.
    pub(crate) fn take_all(&self) -> Vec<TimerKind> {
        std::mem::take(&mut *self.heap.borrow_mut())
            .into_vec()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

pub(crate) struct SleepState {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl SleepState {
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        let w = self.waker.borrow_mut().take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A future that completes after a duration of the reactor's clock; see
/// [`sleep`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    duration: Duration,
    state: Option<Rc<SleepState>>,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("duration", &self.duration)
            .finish()
    }
}

/// Completes at least `duration` after it is first polled, by the clock of
/// the reactor it runs on (the simulated clock under
/// [`SimRuntime`](crate::SimRuntime)). A zero duration completes at once.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        duration,
        state: None,
    }
}

impl Future for Sleep {
    type Output = ();

    /// # Panics
    /// When first polled off a reactor thread.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.duration.is_zero() {
            return Poll::Ready(());
        }
        match &self.state {
            Some(s) if s.fired.get() => Poll::Ready(()),
            Some(s) => {
                let mut w = s.waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            None => {
                let r = context::current().expect("sleep must be polled on a reactor thread");
                let state = Rc::new(SleepState {
                    fired: Cell::new(false),
                    waker: RefCell::new(Some(cx.waker().clone())),
                });
                let ns = u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX);
                r.timers.insert(
                    r.fresh_now_ns().saturating_add(ns),
                    TimerKind::Sleep(state.clone()),
                );
                self.state = Some(state);
                Poll::Pending
            }
        }
    }
}

/// A future that lets the reactor run its other work once before it
/// completes.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug, Default)]
pub struct YieldNow {
    yielded: bool,
}

/// Gives the reactor one turn (messages, pollers, other tasks) and resumes.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
