//! The crate's one error type.

use std::time::Duration;

use crate::CoreId;

/// Everything that can fail in the runtime, with what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A core mask or core list could not be parsed.
    #[error("invalid core mask {text:?}: {reason}")]
    InvalidCoreMask {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A core was named that is not one of the runtime's reactors.
    #[error("core {core} is not in this runtime (its cores are {cores:?})")]
    NoSuchCore {
        /// The core asked for.
        core: CoreId,
        /// The cores the runtime has.
        cores: Vec<CoreId>,
    },
    /// A reactor was asked to be pinned to a core this process cannot run on.
    #[error(
        "cannot pin a reactor to core {core}: not available to this process (available: {available:?})"
    )]
    CoreUnavailable {
        /// The core asked for.
        core: CoreId,
        /// The cores this process may run on.
        available: Vec<CoreId>,
    },
    /// Pinning the reactor thread failed although the core looked available.
    #[error("pinning the reactor thread to core {core} failed")]
    PinFailed {
        /// The core asked for.
        core: CoreId,
    },
    /// Starting a reactor thread failed.
    #[error("starting the reactor thread for core {core} failed")]
    SpawnThread {
        /// The core the thread was for.
        core: CoreId,
        /// Why the OS refused.
        #[source]
        source: std::io::Error,
    },
    /// The destination's message ring is full (only `try_send` reports this;
    /// `send` queues or waits instead).
    #[error("message ring of core {core} is full ({capacity} messages)")]
    RingFull {
        /// The destination core.
        core: CoreId,
        /// The ring's capacity.
        capacity: usize,
    },
    /// The runtime is shutting down and no longer accepts this work.
    #[error("runtime is shutting down: work for core {core} not accepted")]
    ShuttingDown {
        /// The destination core.
        core: CoreId,
    },
    /// A function that needs a reactor was called from a thread that is not
    /// running one.
    #[error("{what} must be called on a reactor thread")]
    NotOnReactor {
        /// The function called.
        what: &'static str,
    },
    /// A blocking wait was attempted on a reactor thread of the same runtime,
    /// which would deadlock it.
    #[error("{what} would block reactor {core} (use the async form on a reactor)")]
    WouldBlock {
        /// The function called.
        what: &'static str,
        /// The reactor that would have blocked.
        core: CoreId,
    },
    /// A new channel was asked of an I/O device that is being unregistered.
    #[error("I/O device {name:?} is being unregistered")]
    DeviceUnregistering {
        /// The device's name.
        name: String,
    },
    /// A task or remote call ended without producing its result: it
    /// panicked, or the runtime shut down before it ran.
    #[error("work on core {core} was cancelled before completing (panicked or shut down)")]
    Canceled {
        /// The core the work was on.
        core: CoreId,
    },
    /// A message, poller or task panicked on a reactor.
    #[error("{what} panicked on core {core}: {message}")]
    Panicked {
        /// The core it ran on.
        core: CoreId,
        /// What panicked: `"message"`, `"poller <name>"` or `"task"`.
        what: String,
        /// The panic's message.
        message: String,
    },
    /// Shutdown gave up waiting for queued work to drain.
    #[error("shutdown did not drain queued work within {timeout:?}")]
    DrainTimeout {
        /// The configured limit.
        timeout: Duration,
    },
    /// A simulated run could make no further progress (no work, no timer).
    #[error("simulated runtime stalled: nothing left to run and no timer pending")]
    Stalled,
}
