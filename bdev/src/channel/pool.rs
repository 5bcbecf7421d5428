//! The channel's pool of `BdevIo`s, made when the channel is: taken for
//! each I/O (and each split child), given back when it ends.

use std::ptr::NonNull;
use std::rc::Rc;

use super::ChanState;
use crate::io::BdevIo;

impl ChanState {
    pub(crate) fn alloc_io(self: &Rc<Self>) -> Option<NonNull<BdevIo>> {
        let b = self.pool.borrow_mut().pop()?;
        let mut p = NonNull::from(Box::leak(b));
        // SAFETY: just taken from the pool: nothing else refers to it.
        let io = unsafe { p.as_mut() };
        io.ch = Some(self.clone());
        Some(p)
    }

    pub(crate) fn free_io(&self, io: NonNull<BdevIo>) {
        // SAFETY: every pooled I/O was leaked from a Box in `alloc_io`, and
        // it is returned exactly once, when it ends.
        let mut b = unsafe { Box::from_raw(io.as_ptr()) };
        b.recycle();
        self.pool.borrow_mut().push(b);
    }
}
