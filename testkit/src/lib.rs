//! Test support shared by the workspace's tests (a dev-dependency only).
//!
//! [`CountingAlloc`]: a global allocator that forwards to the system's and
//! counts, per thread and only while counting is on, the allocations
//! (`alloc`, `alloc_zeroed`, `realloc`) and frees it serves. The tests
//! that prove an I/O path allocates nothing install it
//! (`#[global_allocator] static A: testkit::CountingAlloc =
//! testkit::CountingAlloc;`) and measure with [`counted`], or with
//! [`start`] and [`stop`] around a window a closure cannot wrap; with
//! `TESTKIT_TRAP_ALLOC=N`, the first allocation counted in the N-th window
//! prints its stack and aborts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The counting allocator.
pub struct CountingAlloc;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    /// This counting window is the one `TESTKIT_TRAP_ALLOC` names: its
    /// first counted allocation prints where it came from and aborts.
    static TRAP: Cell<bool> = const { Cell::new(false) };
    /// Counting windows started on this thread.
    static WINDOWS: Cell<u64> = const { Cell::new(0) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

/// Counts one event in `counter` if this thread counts (`try_with`: never
/// during thread teardown; the bookkeeping itself allocates nothing).
fn bump(counter: &'static std::thread::LocalKey<Cell<u64>>) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = counter.try_with(|c| c.set(c.get() + 1));
            if std::ptr::eq(counter, &ALLOCS) && TRAP.try_with(Cell::get).unwrap_or(false) {
                // Off first: printing the trace allocates.
                on.set(false);
                eprintln!(
                    "testkit: counted allocation at\n{}",
                    std::backtrace::Backtrace::force_capture()
                );
                std::process::abort();
            }
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting on the side touches only thread-local cells.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What this thread did with the heap while counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations, zeroed allocations and reallocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
}

impl Counts {
    /// Every heap call.
    pub fn total(&self) -> u64 {
        self.allocs + self.frees
    }
}

/// Resets this thread's counts and starts counting. With the environment
/// variable `TESTKIT_TRAP_ALLOC=N`, the first allocation counted in this
/// thread's N-th counting window (1 when N is not a number) prints its
/// stack and aborts: to find where an allocation-free path allocates.
pub fn start() {
    let window = WINDOWS.with(|w| {
        w.set(w.get() + 1);
        w.get()
    });
    let trap = std::env::var("TESTKIT_TRAP_ALLOC")
        .ok()
        .map(|v| v.parse().unwrap_or(1))
        == Some(window);
    TRAP.with(|t| t.set(trap));
    ALLOCS.with(|c| c.set(0));
    FREES.with(|c| c.set(0));
    ON.with(|o| o.set(true));
}

/// Stops counting on this thread; what was counted since [`start`].
pub fn stop() -> Counts {
    ON.with(|o| o.set(false));
    Counts {
        allocs: ALLOCS.with(Cell::get),
        frees: FREES.with(Cell::get),
    }
}

/// Runs `f` counting this thread's heap calls: its result and the counts.
/// (Counts only where [`CountingAlloc`] is the global allocator.)
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    start();
    let r = f();
    (r, stop())
}
