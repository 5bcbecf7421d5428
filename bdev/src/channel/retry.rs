//! Out of resources: what a module refused with NoMem (or what found the
//! channel's pool empty) waits in a queue and is submitted again once half
//! the I/O in the module has completed (SPDK's `nomem_threshold`), in
//! order, until the module refuses again; the channel's poller retries
//! when nothing is in flight that would.

use std::rc::Rc;

use super::{ChanState, continue_split, submit};

impl ChanState {
    /// Something was queued for lack of resources: retry once half the
    /// I/O in the module (or all but 8 of it, whichever leaves more) has
    /// completed, as SPDK does.
    pub(super) fn out_of_resources(&self) {
        let inflight = self.in_flight_in_module();
        self.nomem_threshold
            .set((inflight / 2).max(inflight.saturating_sub(8)));
        self.nomem_hit.set(true);
    }

    /// Whether the queued I/O should be tried again now.
    #[inline]
    pub(super) fn retry_due(&self) -> bool {
        !self.nomem.borrow().is_empty() && self.in_flight_in_module() <= self.nomem_threshold.get()
    }
}

/// Submits again, in order, what a module refused for lack of resources,
/// until the module refuses again.
pub(super) fn retry_nomem(s: &Rc<ChanState>) {
    let n = s.nomem.borrow().len();
    for _ in 0..n {
        let Some(mut p) = s.nomem.borrow_mut().pop_front() else {
            break;
        };
        s.nomem_hit.set(false);
        // SAFETY: queued I/O are in flight and owned by the layer.
        let io = unsafe { p.as_mut() };
        if io.split.active && io.parent.is_none() {
            continue_split(s, p);
        } else {
            submit(s, p);
        }
        if s.nomem_hit.get() {
            break;
        }
    }
}
