//! The deterministic, single-thread runtime for tests ([`SimRuntime`]).

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::executor::spawn_here;
use crate::reactor::ReactorInner;
use crate::shared::{Config, DRAINING, STOPPED, Shared};
use crate::{Builder, CoreId, CpuSet, Error, Handle, context};

/// How many rounds [`SimRuntime::run_until_idle`] runs at most (a poller
/// that always reports busy would otherwise never let it return).
pub const MAX_IDLE_ROUNDS: usize = 100_000;

/// A deterministic runtime for tests: several reactors stepped one
/// iteration at a time in the calling thread, on a clock the test advances
/// (SPDK's `ut_multithread`).
///
/// Everything that runs on a [`Runtime`](crate::Runtime) runs here
/// unchanged — messages, pollers, timed pollers, tasks, `sleep`, channels,
/// `for_each_channel` — but interleavings and time are chosen by the test.
///
/// ```
/// use std::time::Duration;
/// use reactor::{SimRuntime, PollStatus};
///
/// let sim = SimRuntime::new(2);
/// let hits = std::rc::Rc::new(std::cell::Cell::new(0));
/// let h = hits.clone();
/// sim.enter(1, move || {
///     reactor::register_timed_poller("tick", Duration::from_millis(10), move || {
///         h.set(h.get() + 1);
///         PollStatus::Busy
///     });
/// });
/// sim.advance(Duration::from_millis(35));
/// assert_eq!(hits.get(), 3);
/// let v = sim.block_on(0, async {
///     reactor::on_core(1, || reactor::current_core()).await
/// });
/// assert_eq!(v.unwrap().unwrap(), Some(1));
/// ```
///
/// Not `Send`: it lives in the test's thread. Sends from outside the
/// simulated reactors (the test itself) go to the outside ring, and a full
/// one is reported as [`Error::RingFull`] instead of waiting.
pub struct SimRuntime {
    shared: Arc<Shared>,
    reactors: Vec<Rc<ReactorInner>>,
    now: Cell<u64>,
    stopped: Cell<bool>,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRuntime")
            .field("cores", &self.shared.cores)
            .field("now", &self.now())
            .finish()
    }
}

impl SimRuntime {
    /// `cores` reactors numbered `0..cores`, default settings, time zero.
    ///
    /// # Panics
    /// If `cores` is 0 or above [`MAX_CORES`](crate::MAX_CORES).
    pub fn new(cores: usize) -> SimRuntime {
        let set = CpuSet::from_cores(0..cores as CoreId).expect("1..=MAX_CORES simulated cores");
        Builder::new(set).simulate()
    }

    pub(crate) fn from_parts(cores: &[CoreId], config: Config) -> SimRuntime {
        let shared = Arc::new(Shared::new(cores, config));
        let reactors = (0..cores.len())
            .map(|i| ReactorInner::new(shared.clone(), i, 0))
            .collect();
        SimRuntime {
            shared,
            reactors,
            now: Cell::new(0),
            stopped: Cell::new(false),
        }
    }

    /// A handle (send, statistics) usable from the test.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The simulated cores.
    pub fn cores(&self) -> &[CoreId] {
        &self.shared.cores
    }

    /// The simulated time since start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now.get())
    }

    fn reactor(&self, core: CoreId) -> &Rc<ReactorInner> {
        let i = self
            .shared
            .index(core)
            .unwrap_or_else(|e| panic!("SimRuntime: {e}"));
        &self.reactors[i]
    }

    /// Runs one iteration of `core` at the current time; returns whether it
    /// was busy.
    ///
    /// # Panics
    /// If `core` is not simulated.
    pub fn poll(&self, core: CoreId) -> bool {
        self.reactor(core).poll(self.now.get())
    }

    /// One iteration of every core, in core order; whether any was busy.
    pub fn poll_all(&self) -> bool {
        let mut busy = false;
        for r in &self.reactors {
            busy |= r.poll(self.now.get());
        }
        busy
    }

    /// Polls every core until a round finds all idle (at most
    /// [`MAX_IDLE_ROUNDS`] rounds); returns the number of rounds.
    pub fn run_until_idle(&self) -> usize {
        let mut rounds = 0;
        while rounds < MAX_IDLE_ROUNDS {
            rounds += 1;
            if !self.poll_all() {
                break;
            }
        }
        rounds
    }

    /// Moves the clock forward by `d` and runs until idle. Timers that fall
    /// inside `d` fire at their own deadlines, in order, as they would in
    /// real time (the clock steps from deadline to deadline).
    pub fn advance(&self, d: Duration) {
        let target = self
            .now
            .get()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.run_until_idle();
        while let Some(next) = self.next_deadline() {
            if next > target {
                break;
            }
            self.now.set(next.max(self.now.get()));
            self.run_until_idle();
        }
        self.now.set(target.max(self.now.get()));
        self.run_until_idle();
    }

    /// Moves the clock forward by `d` without running anything, as if every
    /// core had been stuck in one long iteration; the next polls see the
    /// new time.
    pub fn jump(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.now.set(self.now.get().saturating_add(ns));
    }

    /// The earliest timer deadline on any core.
    fn next_deadline(&self) -> Option<u64> {
        self.reactors.iter().filter_map(|r| r.next_deadline()).min()
    }

    /// Runs `f` as if on `core` (as SPDK's `set_thread`): `current_core`,
    /// `send`, `spawn`, pollers and channels all act on that core. Nothing
    /// is polled.
    ///
    /// # Panics
    /// If `core` is not simulated.
    pub fn enter<R>(&self, core: CoreId, f: impl FnOnce() -> R) -> R {
        let _enter = context::enter(self.reactor(core));
        f()
    }

    /// Spawns `future` on `core` and runs the simulation until it completes,
    /// moving the clock to the next timer whenever everything is idle.
    ///
    /// # Errors
    /// [`Error::Stalled`] when nothing is left to run and no timer is
    /// pending while the future is still waiting; [`Error::Canceled`] if it
    /// panicked.
    pub fn block_on<T: 'static>(
        &self,
        core: CoreId,
        future: impl Future<Output = T> + 'static,
    ) -> Result<T, Error> {
        let mut handle = {
            let r = self.reactor(core);
            let _enter = context::enter(r);
            spawn_here(r, future)
        };
        loop {
            self.run_until_idle();
            if handle.is_finished() {
                return crate::executor::block_on(&mut handle);
            }
            match self.next_deadline() {
                Some(next) => self.now.set(next.max(self.now.get())),
                None => return Err(Error::Stalled),
            }
        }
    }

    /// Shuts down like [`Runtime::shutdown`](crate::Runtime::shutdown):
    /// refuses outside work, runs until idle, then tears every core down.
    ///
    /// # Errors
    /// The first panic caught on any core.
    pub fn shutdown(self) -> Result<(), Error> {
        self.stop();
        match self.shared.panics().first() {
            Some(p) => Err(p.to_error()),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        self.shared.set_phase(DRAINING);
        self.run_until_idle();
        self.shared.set_phase(STOPPED);
        for r in &self.reactors {
            r.final_drain();
        }
        for r in &self.reactors {
            r.teardown();
        }
        // SAFETY: the simulated reactors only run on this thread, inside
        // calls on `self`, and are torn down.
        unsafe { self.shared.discard_leftovers() };
    }
}

impl Drop for SimRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}
