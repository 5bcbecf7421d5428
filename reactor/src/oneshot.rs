//! A one-value channel for control-path results (task outputs, remote
//! calls). It takes a lock; the hot path never uses it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

enum State<T> {
    Empty(Option<Waker>),
    Full(T),
    Closed,
    Taken,
}

struct Inner<T> {
    state: Mutex<State<T>>,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half; dropping it unsent closes the channel.
pub(crate) struct Sender<T> {
    inner: Option<Arc<Inner<T>>>,
}

/// The receiving half: a future of `Ok(value)`, or `Err(())` when the sender
/// went away without sending.
pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Empty(None)),
    });
    (
        Sender {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) {
        if let Some(inner) = self.inner.take() {
            let prev = std::mem::replace(&mut *inner.lock(), State::Full(value));
            if let State::Empty(Some(w)) = prev {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let waker = {
                let mut st = inner.lock();
                match std::mem::replace(&mut *st, State::Closed) {
                    State::Empty(w) => w,
                    other => {
                        *st = other;
                        None
                    }
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Whether a value or a close is waiting.
    pub(crate) fn is_ready(&self) -> bool {
        !matches!(*self.inner.lock(), State::Empty(_))
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, ()>> {
        let mut st = self.inner.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Full(v) => Poll::Ready(Ok(v)),
            State::Closed | State::Taken => Poll::Ready(Err(())),
            State::Empty(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *st = State::Empty(Some(w));
                Poll::Pending
            }
        }
    }
}
