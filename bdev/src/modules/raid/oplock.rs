//! One control operation at a time on a RAID (create, examine's assembly,
//! a member's removal or failure, a rebuild's start and end, delete): an
//! asynchronous lock, so an operation that awaits I/O (superblock writes,
//! quiesce) never interleaves with another. The I/O path never takes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    held: bool,
    waiters: Vec<Waker>,
}

/// The lock.
#[derive(Clone, Default)]
pub(crate) struct OpLock {
    state: Arc<Mutex<State>>,
}

/// Held while alive; dropping it lets a waiter in.
pub(crate) struct OpGuard {
    state: Arc<Mutex<State>>,
}

impl OpLock {
    /// Waits for the lock.
    pub fn lock(&self) -> impl Future<Output = OpGuard> + use<> {
        Acquire {
            state: self.state.clone(),
        }
    }
}

struct Acquire {
    state: Arc<Mutex<State>>,
}

impl Future for Acquire {
    type Output = OpGuard;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpGuard> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.held {
            s.held = true;
            return Poll::Ready(OpGuard {
                state: self.state.clone(),
            });
        }
        s.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        // Every waiter tries again (a handful at most, on the control
        // path): one gets it, the others wait anew; a waiter that went
        // away cannot strand the rest.
        let waiters = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.held = false;
            std::mem::take(&mut s.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}
