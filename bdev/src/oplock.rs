//! One control operation at a time on an object — a RAID (create,
//! examine's assembly, a member's removal or failure, each rebuild window,
//! delete), a blob (metadata changes, cluster allocation): an asynchronous
//! lock handed over in arrival order, so an operation that awaits I/O
//! (superblock or metadata writes, quiesce) never interleaves with
//! another, and one taking it again and again (a rebuild, window after
//! window) cannot starve the others. Usable from any core.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    held: bool,
    next_ticket: u64,
    /// Waiters in arrival order.
    queue: VecDeque<(u64, Waker)>,
    /// The waiter the lock was handed to, not yet woken into its guard.
    granted: Option<u64>,
}

impl State {
    /// The holder leaves: the first waiter gets it, else it is free.
    fn hand_over(&mut self) {
        match self.queue.pop_front() {
            Some((t, w)) => {
                self.granted = Some(t);
                w.wake();
            }
            None => self.held = false,
        }
    }
}

/// The lock.
#[derive(Clone, Default)]
pub(crate) struct OpLock {
    state: Arc<Mutex<State>>,
}

/// Held while alive; dropping it hands the lock to the next waiter.
pub(crate) struct OpGuard {
    state: Arc<Mutex<State>>,
}

impl OpLock {
    /// Waits for the lock, in arrival order.
    pub fn lock(&self) -> impl Future<Output = OpGuard> + use<> {
        Acquire {
            state: self.state.clone(),
            ticket: None,
            done: false,
        }
    }
}

struct Acquire {
    state: Arc<Mutex<State>>,
    ticket: Option<u64>,
    done: bool,
}

impl Future for Acquire {
    type Output = OpGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpGuard> {
        let state = self.state.clone();
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        match self.ticket {
            None if !s.held && s.queue.is_empty() && s.granted.is_none() => {
                s.held = true;
            }
            None => {
                let t = s.next_ticket;
                s.next_ticket += 1;
                s.queue.push_back((t, cx.waker().clone()));
                self.ticket = Some(t);
                return Poll::Pending;
            }
            Some(t) if s.granted == Some(t) => s.granted = None,
            Some(t) => {
                if let Some(w) = s.queue.iter_mut().find(|(x, _)| *x == t) {
                    w.1 = cx.waker().clone();
                }
                return Poll::Pending;
            }
        }
        self.done = true;
        Poll::Ready(OpGuard {
            state: self.state.clone(),
        })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // A waiter that goes away: out of the queue, or, if the lock was
        // handed to it already, on to the next.
        let (Some(t), false) = (self.ticket, self.done) else {
            return;
        };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.granted == Some(t) {
            s.granted = None;
            s.hand_over();
        } else {
            s.queue.retain(|(x, _)| *x != t);
        }
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hand_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn handed_over_in_arrival_order_and_a_dropped_waiter_passes_it_on() {
        let lock = OpLock::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let g = reactor::block_on_thread(lock.lock());
        let n = Arc::new(AtomicUsize::new(0));
        let mut waiters: Vec<Option<Pin<Box<dyn Future<Output = ()>>>>> = Vec::new();
        for i in 0..3 {
            let (l, o, n) = (lock.clone(), order.clone(), n.clone());
            waiters.push(Some(Box::pin(async move {
                let _g = l.lock().await;
                o.lock().unwrap().push(i);
                n.fetch_add(1, Ordering::SeqCst);
            })));
        }
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for w in waiters.iter_mut().flatten() {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        // The second waiter goes away while queued; then the lock is let
        // go: the first, then the third get it.
        waiters[1] = None;
        drop(g);
        for _ in 0..3 {
            for slot in waiters.iter_mut() {
                if let Some(w) = slot
                    && w.as_mut().poll(&mut cx).is_ready()
                {
                    *slot = None;
                }
            }
        }
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert_eq!(*order.lock().unwrap(), vec![0, 2]);
        // Free again.
        drop(reactor::block_on_thread(lock.lock()));
    }
}
