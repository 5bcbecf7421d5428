//! A message: a `FnOnce() + Send` stored inline when it is small.
//!
//! The ring slots hold `Message`s by value. A closure of at most
//! [`INLINE_BYTES`] bytes (a function pointer and a few context words — the
//! shape of SPDK's `fn + ctx`) is stored in the message itself, so sending it
//! allocates nothing; a larger closure is boxed once.

use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit, align_of, size_of};
use std::ptr;

const INLINE_WORDS: usize = 6;

/// How many bytes of captured state a closure may have and still travel
/// without allocation.
pub const INLINE_BYTES: usize = INLINE_WORDS * size_of::<usize>();

struct VTable {
    /// Moves the closure out of the storage and calls it.
    call: unsafe fn(*mut u8),
    /// Drops the closure in place without calling it.
    drop: unsafe fn(*mut u8),
}

struct Shim<F>(PhantomData<F>);

impl<F: FnOnce()> Shim<F> {
    const FITS: bool = size_of::<F>() <= INLINE_BYTES && align_of::<F>() <= align_of::<usize>();

    /// # Safety
    /// `p` holds an initialised `F`, which this consumes.
    unsafe fn call_inline(p: *mut u8) {
        // SAFETY: the caller guarantees `p` holds an initialised, aligned `F`
        // that nobody reads again.
        let f = unsafe { ptr::read(p.cast::<F>()) };
        f();
    }

    /// # Safety
    /// `p` holds an initialised `F`, which this drops.
    unsafe fn drop_inline(p: *mut u8) {
        // SAFETY: as for `call_inline`.
        unsafe { ptr::drop_in_place(p.cast::<F>()) }
    }

    /// # Safety
    /// `p` holds an initialised `Box<F>`, which this consumes.
    unsafe fn call_boxed(p: *mut u8) {
        // SAFETY: the caller guarantees `p` holds an initialised `Box<F>`
        // that nobody reads again.
        let f = unsafe { ptr::read(p.cast::<Box<F>>()) };
        f();
    }

    /// # Safety
    /// `p` holds an initialised `Box<F>`, which this drops.
    unsafe fn drop_boxed(p: *mut u8) {
        // SAFETY: as for `call_boxed`.
        unsafe { ptr::drop_in_place(p.cast::<Box<F>>()) }
    }

    const INLINE: VTable = VTable {
        call: Self::call_inline,
        drop: Self::drop_inline,
    };
    const BOXED: VTable = VTable {
        call: Self::call_boxed,
        drop: Self::drop_boxed,
    };
}

/// A type-erased `FnOnce() + Send + 'static`, 56 bytes, so that a ring slot
/// (message plus crossbeam's stamp) is one 64-byte cache line.
pub(crate) struct Message {
    vtable: &'static VTable,
    data: MaybeUninit<[usize; INLINE_WORDS]>,
}

// SAFETY: a `Message` is only ever built from an `F: Send` (see `new`), and
// owns that value exclusively, so moving it to another thread is sound.
unsafe impl Send for Message {}

impl Message {
    /// Wraps `f`, inline when it fits, boxed otherwise.
    #[inline]
    pub(crate) fn new<F: FnOnce() + Send + 'static>(f: F) -> Message {
        let mut data = MaybeUninit::<[usize; INLINE_WORDS]>::uninit();
        let p = data.as_mut_ptr().cast::<u8>();
        if Shim::<F>::FITS {
            // SAFETY: `FITS` checked that `F` is no larger than the storage
            // and needs no more alignment than `usize`, which the storage has.
            unsafe { ptr::write(p.cast::<F>(), f) };
            Message {
                vtable: &Shim::<F>::INLINE,
                data,
            }
        } else {
            // SAFETY: a `Box<F>` is one pointer: it fits and is aligned.
            unsafe { ptr::write(p.cast::<Box<F>>(), Box::new(f)) };
            Message {
                vtable: &Shim::<F>::BOXED,
                data,
            }
        }
    }

    /// Runs the closure, consuming the message.
    #[inline]
    pub(crate) fn run(self) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `data` holds the value `vtable` was chosen for (see `new`);
        // `me` is never dropped, so the value is consumed exactly once.
        unsafe { (me.vtable.call)(me.data.as_mut_ptr().cast()) }
    }

    /// Takes the closure back out (used to hand a message that could not be
    /// queued back to its sender).
    ///
    /// # Safety
    /// The message must have been built by `Message::new::<F>` for this `F`.
    pub(crate) unsafe fn into_closure<F: FnOnce() + Send + 'static>(self) -> F {
        let mut me = ManuallyDrop::new(self);
        let p = me.data.as_mut_ptr().cast::<u8>();
        if Shim::<F>::FITS {
            // SAFETY: the caller guarantees the message holds an inline `F`;
            // `me` is never dropped, so it is read exactly once.
            unsafe { ptr::read(p.cast::<F>()) }
        } else {
            // SAFETY: as above, for a boxed `F`.
            unsafe { *ptr::read(p.cast::<Box<F>>()) }
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        // SAFETY: the message still owns its value (run and into_closure
        // bypass this drop); it is dropped exactly once.
        unsafe { (self.vtable.drop)(self.data.as_mut_ptr().cast()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn slot_is_one_cache_line() {
        assert_eq!(size_of::<Message>(), 56);
    }

    #[test]
    fn inline_and_boxed_run_and_drop_once() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        Message::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .run();
        let h = hits.clone();
        let big = [7u64; 32];
        Message::new(move || {
            h.fetch_add(big[3] as usize, Ordering::SeqCst);
        })
        .run();
        assert_eq!(hits.load(Ordering::SeqCst), 8);
        // Dropped unrun: the captured Arc is released.
        let h = hits.clone();
        drop(Message::new(move || drop(h)));
        let h = hits.clone();
        drop(Message::new(move || {
            let _ = (&h, big);
        }));
        assert_eq!(Arc::strong_count(&hits), 1);
    }

    #[test]
    fn into_closure_gives_it_back() {
        fn roundtrip<F: FnOnce() + Send + 'static>(f: F) -> F {
            // SAFETY: built from exactly this closure type.
            unsafe { Message::new(f).into_closure::<F>() }
        }
        let v = Arc::new(1);
        let v2 = v.clone();
        let f = roundtrip(move || drop(v2));
        assert_eq!(Arc::strong_count(&v), 2);
        f();
        assert_eq!(Arc::strong_count(&v), 1);
    }
}
