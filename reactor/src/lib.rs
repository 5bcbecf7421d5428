//! Per-core poll-mode runtime: one reactor thread per core, pinned, running
//! pollers and draining lockless message rings from the other cores.
//!
//! Owns: reactor threads and their pinning, cross-core message rings,
//! pollers (busy/idle, timed), per-core I/O channels of registered I/O
//! devices, the small local executor for control-path tasks, shutdown and
//! per-reactor statistics.
//!
//! Must not: block a reactor thread, take a lock or allocate on the hot path,
//! or know anything about storage (no DMA, no devices, no bdevs).
//!
//! # Shape
//!
//! ```text
//!   launcher thread (owns Runtime)          any thread (Handle)
//!        | start / run_on / shutdown               | send
//!        v                                         v
//!   +-----------+  SPSC ring (0 -> 1)  +---------------------------+
//!   | reactor 0 | -------------------> | reactor 1                 |
//!   |  pollers  | <------------------- |  inbox: one SPSC ring per |
//!   |  tasks    |  SPSC ring (1 -> 0)  |  sending reactor + one    |
//!   |  channels |                      |  MPSC ring for the rest   |
//!   +-----------+                      +---------------------------+
//!   one pinned thread per core; each iteration: messages, ready tasks,
//!   active pollers, due timers (timed pollers, sleeps), statistics
//! ```
//!
//! * **Hot path** — [`send`] from a reactor of a closure of up to
//!   [`INLINE_BYTES`] bytes allocates nothing, takes
//!   no lock and makes no system call: it is one write of a 64-byte slot of
//!   the ring from this reactor to the destination (stamped slots, no
//!   read-modify-write instruction; see `spsc.rs`). Pollers and I/O
//!   channels are plain closures and `Rc`s. The async executor costs a
//!   reactor one empty-queue check per iteration.
//! * **Back-pressure** — rings are bounded. A reactor sending into a full
//!   ring keeps the message, in order, in its own backlog and retries every
//!   iteration (so two reactors flooding each other cannot deadlock);
//!   another thread's [`Handle::send`] waits for room; [`try_send`] hands
//!   the closure back. No message is ever dropped silently: a refused one
//!   is an `Err` to its sender.
//! * **Order** — messages from one sender (a reactor, or one other thread)
//!   run in the order sent; there is no order between different senders.
//! * **Control path** — [`spawn`], [`on_core`]`(n, f).await`, [`sleep`].
//! * **Panics** — a panic in a message, poller or task is caught on its
//!   reactor, logged and recorded with its core ([`Handle::panics`]); the
//!   reactor goes on (a panicking poller is unregistered, a panicking task
//!   dropped, and whoever awaits its result gets [`Error::Canceled`]);
//!   [`Runtime::shutdown`] returns the first one as [`Error::Panicked`].
//! * **Tests** — [`SimRuntime`] steps several reactors in one thread on a
//!   simulated clock.
//!
//! # Example
//!
//! Two reactors (cores 0 and 1) pass a message back and forth, then shut
//! down:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! let rt = reactor::Runtime::builder("0x3".parse().unwrap())
//!     .pin(false) // pinning works too; unpinned runs on any machine
//!     .start()
//!     .unwrap();
//! let hops = Arc::new(AtomicU32::new(0));
//! let h = hops.clone();
//! rt.send(0, move || {
//!     h.fetch_add(1, Ordering::SeqCst);
//!     // Now on core 0: send on to core 1.
//!     reactor::send(1, move || {
//!         assert_eq!(reactor::current_core(), Some(1));
//!         h.fetch_add(1, Ordering::SeqCst);
//!     })
//!     .unwrap();
//! })
//! .unwrap();
//! // A task on core 0 awaits a result computed on core 1.
//! let v = rt
//!     .block_on(0, || async { reactor::on_core(1, || 20 + 22).await })
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(v, 42);
//! rt.shutdown().unwrap(); // drains the queued messages first
//! assert_eq!(hops.load(Ordering::SeqCst), 2);
//! ```

mod channel;
mod clock;
mod context;
mod cpuset;
mod error;
mod executor;
mod message;
mod oneshot;
mod poller;
mod reactor;
mod ring;
mod runtime;
mod shared;
mod sim;
mod spsc;
mod stats;
mod timer;

use std::future::Future;
use std::time::Duration;

pub use channel::{IoChannel, IoDevice, register_io_device};
pub use cpuset::{CpuSet, MAX_CORES};
pub use error::Error;
pub use executor::{JoinHandle, block_on as block_on_thread, spawn};
pub use message::INLINE_BYTES;
pub use poller::{PollStatus, Poller, current_poller, register_poller, register_timed_poller};
pub use runtime::{Builder, Handle, IdleStrategy, Runtime, TrySendError};
pub use shared::PanicReport;
pub use sim::{MAX_IDLE_ROUNDS, SimRuntime};
pub use stats::{ReactorInfo, ReactorStats, TICK_RATE, ThreadStats};
pub use timer::{Sleep, YieldNow, sleep, yield_now};

/// A core number (SPDK's `lcore`): reactors are named by the CPU they run
/// on.
pub type CoreId = u32;

/// A cheap monotonic clock for per-operation timestamps on any thread:
/// nanoseconds since the process first read it. `rdtsc` scaled by a factor
/// calibrated once where the TSC is invariant (a few ns; `Instant::now()`
/// costs about 270 ns under QEMU TCG), `Instant` elsewhere.
#[inline]
pub fn clock_ns() -> u64 {
    static CLOCK: std::sync::OnceLock<clock::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(clock::Clock::new).now_ns()
}

/// The core of the reactor running on this thread, `None` off reactors.
#[inline]
pub fn current_core() -> Option<CoreId> {
    context::current().map(|r| r.core)
}

/// A handle to the runtime of the current reactor, `None` off reactors.
pub fn handle() -> Option<Handle> {
    context::current().map(|r| Handle {
        shared: r.shared.clone(),
    })
}

/// The cores of the current reactor's runtime (empty off reactors).
pub fn cores() -> Vec<CoreId> {
    context::current()
        .map(|r| r.shared.cores.clone())
        .unwrap_or_default()
}

/// The current reactor's clock: time since the runtime started, read once
/// per iteration (simulated time under [`SimRuntime`]).
///
/// # Panics
/// When not called on a reactor thread.
pub fn now() -> Duration {
    let r = context::current().expect("reactor::now must be called on a reactor thread");
    Duration::from_nanos(r.now_ns())
}

/// Sends `f` to run on `core`, from a reactor. See [`Handle::send`] for the
/// ordering and back-pressure rules.
///
/// # Errors
/// [`Error::NotOnReactor`] off reactor threads, otherwise as
/// [`Handle::send`].
#[inline]
pub fn send(core: CoreId, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    let Some(r) = context::current() else {
        return Err(Error::NotOnReactor { what: "send" });
    };
    let index = r.shared.index(core)?;
    r.send_from_here(index, message::Message::new(f), shared::Mode::Send)
        .map_err(|(e, _)| e)
}

/// Sends `f` to `core` unless the ring is full; see [`Handle::try_send`].
///
/// # Errors
/// [`TrySendError`] with the closure; its error is [`Error::NotOnReactor`]
/// off reactor threads.
pub fn try_send<F: FnOnce() + Send + 'static>(core: CoreId, f: F) -> Result<(), TrySendError<F>> {
    let Some(r) = context::current() else {
        return Err(TrySendError {
            error: Error::NotOnReactor { what: "try_send" },
            message: f,
        });
    };
    let index = match r.shared.index(core) {
        Ok(i) => i,
        Err(error) => return Err(TrySendError { error, message: f }),
    };
    r.send_from_here(index, message::Message::new(f), shared::Mode::Try)
        .map_err(|(error, m)| TrySendError {
            error,
            // SAFETY: `m` is the message built from `f` just above.
            message: unsafe { m.into_closure::<F>() },
        })
}

/// Runs `f` on `core` and resolves to its result; see [`Handle::on_core`].
/// Off reactor threads it resolves to [`Error::NotOnReactor`].
pub fn on_core<R: Send + 'static>(
    core: CoreId,
    f: impl FnOnce() -> R + Send + 'static,
) -> JoinHandle<R> {
    match handle() {
        Some(h) => h.on_core(core, f),
        None => JoinHandle::failed(core, Error::NotOnReactor { what: "on_core" }),
    }
}

/// Spawns the future `f` builds as a task on `core`; see
/// [`Handle::spawn_on`]. Off reactor threads it resolves to
/// [`Error::NotOnReactor`].
pub fn spawn_on<Fut>(
    core: CoreId,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> JoinHandle<Fut::Output>
where
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    match handle() {
        Some(h) => h.spawn_on(core, f),
        None => JoinHandle::failed(core, Error::NotOnReactor { what: "spawn_on" }),
    }
}

/// Asks the runtime's owner to shut down (like `spdk_app_stop`): wakes
/// [`Runtime::wait`]. No effect off reactor threads.
pub fn request_shutdown() {
    if let Some(r) = context::current() {
        r.shared.request_shutdown();
    }
}
