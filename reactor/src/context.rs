//! Which reactor the current thread is running (if any).
//!
//! A reactor thread enters its reactor for every iteration; the simulated
//! runtime enters whichever reactor it is stepping, so one OS thread can play
//! several cores in turn.

use std::cell::RefCell;
use std::rc::Rc;

use crate::reactor::ReactorInner;

thread_local! {
    static CURRENT: RefCell<Option<Rc<ReactorInner>>> = const { RefCell::new(None) };
}

/// The reactor being run on this thread, if any.
#[inline]
pub(crate) fn current() -> Option<Rc<ReactorInner>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Restores the previous current reactor when dropped.
pub(crate) struct Enter {
    prev: Option<Rc<ReactorInner>>,
}

/// Makes `r` the current reactor until the guard is dropped.
pub(crate) fn enter(r: &Rc<ReactorInner>) -> Enter {
    let prev = CURRENT.with(|c| c.replace(Some(r.clone())));
    Enter { prev }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let _ = CURRENT.try_with(|c| c.replace(prev));
    }
}
