//! `IoHandle`: a module's token for one I/O in flight, and what a module
//! may do with the I/O through it (its data, its module channel, its
//! completion).

use std::ptr::NonNull;

use crate::io::BdevIo;
use crate::types::IoStatus;

/// The module's token for one I/O in flight: complete it exactly once with
/// [`IoHandle::complete`]. Dropping it uncompleted fails the I/O (with a log
/// line) rather than losing it.
pub struct IoHandle {
    io: NonNull<BdevIo>,
}

impl std::fmt::Debug for IoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let io = self.io();
        f.debug_struct("IoHandle")
            .field("type", &io.ty)
            .field("offset_blocks", &io.offset_blocks)
            .field("num_blocks", &io.num_blocks)
            .finish()
    }
}

impl IoHandle {
    pub(crate) fn new(io: NonNull<BdevIo>) -> Self {
        IoHandle { io }
    }

    /// The I/O.
    pub fn io(&self) -> &BdevIo {
        // SAFETY: the handle is the only way to the I/O while the module has
        // it; the I/O lives in its channel's pool until completed.
        unsafe { self.io.as_ref() }
    }

    /// The I/O, mutably (module context, module buffer).
    pub fn io_mut(&mut self) -> &mut BdevIo {
        // SAFETY: as in `io`, and `&mut self` makes the borrow unique.
        unsafe { self.io.as_mut() }
    }

    /// Completes the I/O. The submitter's callback runs now, or from the
    /// channel's poller when this is called inside the submission (so a
    /// callback that submits again never recurses without bound).
    pub fn complete(self, status: IoStatus) {
        let io = self.io;
        std::mem::forget(self);
        crate::channel::complete(io, status);
    }

    /// The module's own channel (its `BdevOps::Channel`) on the core the
    /// I/O runs on: for callbacks that get only the handle back.
    pub fn module_channel<C: 'static>(&self) -> Option<&C> {
        self.io().ch.as_ref()?.module_channel()?.downcast_ref::<C>()
    }

    /// The data segments as byte slices the module may read and write
    /// while it holds the handle (to fill a read, check or transform
    /// data). Empty for types without data.
    pub fn data_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        self.io_mut().data_mut()
    }

    /// The data segments as byte slices, for reading.
    pub fn data(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.io().data()
    }

    /// Copies `src` into the data from byte `offset`; returns bytes copied.
    pub fn copy_to_data(&mut self, offset: usize, src: &[u8]) -> usize {
        // SAFETY: as in `data_mut`.
        unsafe { self.io().copy_to_iovs(offset, src) }
    }

    /// Copies the data from byte `offset` into `dst`; returns bytes copied.
    pub fn copy_from_data(&self, offset: usize, dst: &mut [u8]) -> usize {
        // SAFETY: as in `data_mut`.
        unsafe { self.io().copy_from_iovs(offset, dst) }
    }

    /// Sets every data byte to `byte`.
    pub fn fill_data(&mut self, byte: u8) {
        for s in self.data_mut() {
            s.fill(byte);
        }
    }

    /// Sends the I/O back to the layer to be submitted to the module again
    /// later (as for [`IoStatus::NoMem`]: when I/O in the module completes,
    /// or at the next poll when none is in flight), counting the retry
    /// ([`BdevIo::retries`]). For a module whose device lost the command
    /// (a controller reset) and whose retry policy allows another try.
    pub fn retry(mut self) {
        let io = self.io_mut();
        io.retries = io.retries.saturating_add(1);
        self.complete(IoStatus::NoMem);
    }

    /// The raw pointer (the layer's child I/O passes it as the child's
    /// context word; `child.rs` rebuilds the handle with `IoHandle::new`).
    pub(crate) fn into_raw(self) -> usize {
        let p = self.io.as_ptr() as usize;
        std::mem::forget(self);
        p
    }
}

impl Drop for IoHandle {
    fn drop(&mut self) {
        log::error!("{self:?} dropped without completion: failing it");
        crate::channel::complete(self.io, IoStatus::Failed);
    }
}
