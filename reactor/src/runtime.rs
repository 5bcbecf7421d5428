//! Starting, using and stopping a set of reactors.
//!
//! The thread that calls [`Builder::start`] is a launcher, not a reactor:
//! every core of the set gets its own pinned reactor thread (named
//! `reactor_<core>`), and the launcher keeps the [`Runtime`] to send work,
//! wait for results ([`Runtime::run_on`], [`Runtime::block_on`]) and shut
//! down. An application's main thread typically starts the runtime, hands
//! work to the reactors and then sits in [`Runtime::wait`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::executor::{JoinHandle, block_on, spawn_here};
use crate::message::Message;
use crate::oneshot;
use crate::reactor::ReactorInner;
use crate::shared::{Config, DRAINING, Mode, PanicReport, STOPPED, Shared};
use crate::stats::{ReactorInfo, ReactorStats, ThreadStats, cpu_irq_sys};
use crate::{CoreId, CpuSet, Error, SimRuntime, context};

/// What a reactor thread does when an iteration found no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Poll again at once: lowest latency, one core fully used (SPDK's
    /// behaviour).
    Spin,
    /// After `after` idle iterations in a row, yield the CPU to other
    /// threads (`sched_yield`) between iterations. Costs well under a
    /// microsecond when nothing else wants the core.
    Yield {
        /// Idle iterations before yielding.
        after: u32,
    },
    /// After `after` idle iterations in a row, sleep `duration` between
    /// iterations (saves power; adds up to `duration` of latency).
    Sleep {
        /// Idle iterations before sleeping.
        after: u32,
        /// How long to sleep.
        duration: Duration,
    },
}

impl Default for IdleStrategy {
    /// `Yield { after: 256 }`: pure polling while there is work, and room
    /// for other threads (tests, a second runtime) on a shared machine.
    fn default() -> Self {
        IdleStrategy::Yield { after: 256 }
    }
}

/// Configures and starts a [`Runtime`] (or a [`SimRuntime`]).
#[derive(Clone, Debug)]
pub struct Builder {
    cores: CpuSet,
    pin: bool,
    config: Config,
}

impl Builder {
    /// A builder for reactors on `cores`, with defaults: pinned, rings of
    /// 4096 messages, batches of 256 messages per ring and 64 tasks per iteration,
    /// [`IdleStrategy::default`], and 10 s to drain at shutdown.
    pub fn new(cores: CpuSet) -> Builder {
        Builder {
            cores,
            pin: true,
            config: Config {
                ring_capacity: 4096,
                message_batch: 256,
                task_batch: 64,
                idle: IdleStrategy::default(),
                drain_timeout: Duration::from_secs(10),
                simulated: false,
            },
        }
    }

    /// Whether to pin each reactor thread to its core (default true).
    /// Without pinning, cores are just names: a runtime may then have more
    /// reactors than the machine has cores.
    pub fn pin(mut self, pin: bool) -> Builder {
        self.pin = pin;
        self
    }

    /// Capacity of each message ring, rounded up to a power of two (at
    /// least 2). Each core has one ring per sending reactor (allocated on
    /// first use) and one for all other threads.
    pub fn ring_capacity(mut self, messages: usize) -> Builder {
        self.config.ring_capacity = messages.max(2).next_power_of_two();
        self
    }

    /// Most messages run from each incoming ring per iteration before the
    /// pollers get their turn (at least 1).
    pub fn message_batch(mut self, messages: usize) -> Builder {
        self.config.message_batch = messages.max(1);
        self
    }

    /// Most task polls per iteration (at least 1).
    pub fn task_batch(mut self, tasks: usize) -> Builder {
        self.config.task_batch = tasks.max(1);
        self
    }

    /// What an idle reactor thread does.
    pub fn idle(mut self, idle: IdleStrategy) -> Builder {
        self.config.idle = idle;
        self
    }

    /// How long shutdown waits for queued work to drain.
    pub fn drain_timeout(mut self, timeout: Duration) -> Builder {
        self.config.drain_timeout = timeout;
        self
    }

    /// Starts one reactor thread per core.
    ///
    /// # Errors
    /// [`Error::CoreUnavailable`] when pinning to a core this process may
    /// not use, [`Error::PinFailed`] or [`Error::SpawnThread`] when the OS
    /// refuses; nothing is left running then.
    pub fn start(self) -> Result<Runtime, Error> {
        let cores = self.cores.cores().to_vec();
        if self.pin {
            let available: Vec<CoreId> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .iter()
                .map(|c| c.id as CoreId)
                .collect();
            if let Some(&core) = cores.iter().find(|c| !available.contains(c)) {
                return Err(Error::CoreUnavailable { core, available });
            }
        }
        let shared = Arc::new(Shared::new(&cores, self.config));
        let mut rt = Runtime {
            handle: Handle {
                shared: shared.clone(),
            },
            threads: Vec::new(),
            done: false,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (index, &core) in cores.iter().enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let pin = self.pin;
            let spawned = thread::Builder::new()
                .name(format!("reactor_{core}"))
                .spawn(move || reactor_thread(shared, index, pin, ready));
            match spawned {
                Ok(t) => rt.threads.push((core, t)),
                Err(source) => {
                    let _ = rt.stop();
                    return Err(Error::SpawnThread { core, source });
                }
            }
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..cores.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => break,
            }
        }
        if let Some(e) = failure {
            let _ = rt.stop();
            return Err(e);
        }
        Ok(rt)
    }

    /// A simulated runtime with these cores and settings, stepped by the
    /// caller in the current thread (pinning and idle strategy do not
    /// apply).
    pub fn simulate(self) -> SimRuntime {
        let mut config = self.config;
        config.simulated = true;
        SimRuntime::from_parts(self.cores.cores(), config)
    }
}

fn reactor_thread(
    shared: Arc<Shared>,
    index: usize,
    pin: bool,
    ready: std::sync::mpsc::Sender<Result<(), Error>>,
) {
    let core = shared.cores[index];
    if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: core as usize }) {
        let _ = ready.send(Err(Error::PinFailed { core }));
        return;
    }
    let clock = || shared.clock.now_ns();
    let r = ReactorInner::new(shared.clone(), index, clock());
    let _ = ready.send(Ok(()));
    drop(ready);
    let idle = shared.config.idle;
    let mut idle_run = 0u32;
    let enter = context::enter(&r);
    loop {
        let busy = r.poll_entered(clock());
        if shared.phase() == STOPPED {
            break;
        }
        if busy {
            idle_run = 0;
            continue;
        }
        idle_run = idle_run.saturating_add(1);
        if r.watch_inbox(32) {
            continue;
        }
        match idle {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield { after } if idle_run >= after => thread::yield_now(),
            IdleStrategy::Sleep { after, duration } if idle_run >= after => thread::sleep(duration),
            _ => std::hint::spin_loop(),
        }
    }
    drop(enter);
    let drained = r.final_drain();
    if drained != 0 {
        log::debug!("core {core}: ran {drained} message(s) after stop");
    }
    let dropped = r.teardown();
    if dropped != 0 {
        log::warn!("core {core}: dropped {dropped} undeliverable message(s) at shutdown");
    }
}

/// A running set of reactors.
///
/// The thread that calls [`Builder::start`] is a launcher, not a reactor:
/// every core of the set gets its own pinned reactor thread (named
/// `reactor_<core>`), so reactor 0 is as free of outside work as the
/// others, and the launcher keeps the `Runtime` to send work, wait for
/// results ([`run_on`](Self::run_on), [`block_on`](Self::block_on)) and shut
/// down. An application's main thread typically starts the runtime, hands
/// work to the reactors and then sits in [`wait`](Self::wait) until a
/// reactor calls [`request_shutdown`](crate::request_shutdown).
///
/// Dropping it shuts it down (errors are then only logged; call
/// [`shutdown`](Self::shutdown) to see them).
pub struct Runtime {
    handle: Handle,
    threads: Vec<(CoreId, thread::JoinHandle<()>)>,
    done: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cores", &self.cores())
            .finish()
    }
}

impl Runtime {
    /// A [`Builder`] for reactors on `cores`.
    pub fn builder(cores: CpuSet) -> Builder {
        Builder::new(cores)
    }

    /// Starts pinned reactors with default settings on a core mask or list
    /// in SPDK's syntax (`"0x3"`, `"[0,1]"`).
    ///
    /// # Errors
    /// [`Error::InvalidCoreMask`] for bad text, else as [`Builder::start`].
    pub fn start(mask: &str) -> Result<Runtime, Error> {
        Builder::new(CpuSet::parse(mask)?).start()
    }

    /// A handle usable from any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The reactors' cores, in order.
    pub fn cores(&self) -> &[CoreId] {
        &self.handle.shared.cores
    }

    /// Same as [`Handle::send`].
    ///
    /// # Errors
    /// As [`Handle::send`].
    pub fn send(&self, core: CoreId, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        self.handle.send(core, f)
    }

    /// Runs `f` on `core` and waits for its result (launcher side).
    ///
    /// # Errors
    /// [`Error::WouldBlock`] on a reactor thread of this runtime, otherwise
    /// as [`Handle::on_core`].
    pub fn run_on<R: Send + 'static>(
        &self,
        core: CoreId,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.handle.check_not_reactor("run_on")?;
        block_on(self.handle.on_core(core, f))
    }

    /// Spawns the future that `f` builds as a task on `core` and waits for
    /// its output (launcher side).
    ///
    /// # Errors
    /// [`Error::WouldBlock`] on a reactor thread of this runtime, otherwise
    /// as [`Handle::spawn_on`].
    pub fn block_on<Fut>(
        &self,
        core: CoreId,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> Result<Fut::Output, Error>
    where
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.handle.check_not_reactor("block_on")?;
        block_on(self.handle.spawn_on(core, f))
    }

    /// Waits until someone calls [`request_shutdown`](crate::request_shutdown)
    /// (or [`Handle::request_shutdown`]), then shuts down.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub fn wait(self) -> Result<(), Error> {
        self.handle.shared.wait_shutdown_request();
        self.shutdown()
    }

    /// Stops accepting work from outside the reactors, lets the reactors run
    /// until no message or ready task is left anywhere (messages the
    /// reactors send each other meanwhile are still delivered), then stops
    /// them: each one runs what is left in its ring, drops its pollers,
    /// tasks and timers — and with them the channels they hold, whose
    /// destructors run on their core — and its thread is joined.
    ///
    /// # Errors
    /// The first panic caught on any reactor ([`Error::Panicked`]), else
    /// [`Error::DrainTimeout`] if the work never drained (pollers that keep
    /// sending messages), in which case the rest was dropped.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let shared = self.handle.shared.clone();
        shared.set_phase(DRAINING);
        shared.wait_external_quiet();
        let timed_out = !self.wait_quiescent(&shared);
        shared.set_phase(STOPPED);
        for (core, t) in self.threads.drain(..) {
            if let Err(payload) = t.join() {
                shared.record_panic(PanicReport {
                    core,
                    what: "reactor loop".into(),
                    message: crate::shared::panic_message(payload.as_ref()),
                });
            }
        }
        // SAFETY: every reactor thread has been joined above.
        let left = unsafe { shared.discard_leftovers() };
        if left != 0 {
            log::warn!("dropped {left} message(s) sent while the runtime stopped");
        }
        if let Some(p) = shared.panics().first() {
            return Err(p.to_error());
        }
        if timed_out {
            return Err(Error::DrainTimeout {
                timeout: shared.config.drain_timeout,
            });
        }
        Ok(())
    }

    /// Waits until two successive observations, each after every reactor
    /// completed two more iterations, see no reactor do any message or task
    /// work and every ring empty. Returns false on timeout.
    fn wait_quiescent(&self, shared: &Shared) -> bool {
        let deadline = Instant::now() + shared.config.drain_timeout;
        let snapshot = || -> Vec<(u64, u64)> {
            shared
                .stats
                .iter()
                .map(|s| {
                    let it = s.iterations.load(Ordering::Acquire);
                    (it, s.active_iterations.load(Ordering::Relaxed))
                })
                .collect()
        };
        let alive = |i: usize| self.threads.get(i).is_some_and(|t| !t.1.is_finished());
        loop {
            let s1 = snapshot();
            loop {
                let now = snapshot();
                let caught_up = (0..now.len()).all(|i| now[i].0 >= s1[i].0 + 2 || !alive(i));
                if caught_up {
                    break;
                }
                if Instant::now() > deadline {
                    return false;
                }
                thread::sleep(Duration::from_micros(20));
            }
            let s2 = snapshot();
            let quiet = (0..s2.len()).all(|i| s2[i].1 == s1[i].1 || !alive(i));
            if quiet && shared.inboxes.iter().all(|r| r.is_empty()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("runtime shutdown: {e}");
        }
    }
}

/// A cheap, cloneable, `Send + Sync` handle to a runtime (real or
/// simulated): send messages, call cores, read statistics, request
/// shutdown — from any thread.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("cores", &self.shared.cores)
            .finish()
    }
}

/// A message that was not queued, handed back with the reason.
pub struct TrySendError<F> {
    /// Why: [`Error::RingFull`], [`Error::NoSuchCore`] or
    /// [`Error::ShuttingDown`].
    pub error: Error,
    /// The closure, not run.
    pub message: F,
}

impl<F> std::fmt::Debug for TrySendError<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrySendError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<F> std::fmt::Display for TrySendError<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<F> std::error::Error for TrySendError<F> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Handle {
    /// The reactors' cores, in order.
    pub fn cores(&self) -> &[CoreId] {
        &self.shared.cores
    }

    /// Queues `f` to run on `core`'s reactor. Messages from one sender run
    /// in the order sent; no message is dropped or run twice.
    ///
    /// When the destination ring is full: on a reactor thread the message
    /// waits in the sending reactor's backlog (in order, retried every
    /// iteration, so the sender never blocks); on any other thread `send`
    /// waits for room. Use [`try_send`](Self::try_send) to get the message
    /// back instead.
    ///
    /// # Errors
    /// [`Error::NoSuchCore`]; [`Error::ShuttingDown`] once shutdown began
    /// (from outside the reactors) or ended; [`Error::RingFull`] only in a
    /// [`SimRuntime`] sending from outside a reactor. On error `f` is
    /// dropped unrun.
    #[inline]
    pub fn send(&self, core: CoreId, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let index = self.shared.index(core)?;
        self.shared
            .send_idx(index, Message::new(f), Mode::Send)
            .map_err(|(e, _)| e)
    }

    /// Queues `f` on `core` unless its ring is full (or a backlog to it is
    /// pending on this reactor), in which case `f` comes back.
    ///
    /// # Errors
    /// [`TrySendError`] with the closure and the reason.
    #[inline]
    pub fn try_send<F: FnOnce() + Send + 'static>(
        &self,
        core: CoreId,
        f: F,
    ) -> Result<(), TrySendError<F>> {
        let index = match self.shared.index(core) {
            Ok(i) => i,
            Err(error) => return Err(TrySendError { error, message: f }),
        };
        self.shared
            .send_idx(index, Message::new(f), Mode::Try)
            .map_err(|(error, m)| TrySendError {
                error,
                // SAFETY: `m` is the message built from `f` just above.
                message: unsafe { m.into_closure::<F>() },
            })
    }

    /// Runs `f` on `core` and resolves to its result, from a task on any
    /// core (or, with [`Runtime::run_on`], from the launcher).
    /// Resolves to [`Error::Canceled`] if `f` panicked or the runtime
    /// stopped first, or to the sending error.
    pub fn on_core<R: Send + 'static>(
        &self,
        core: CoreId,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let (tx, rx) = oneshot::channel();
        match self.send(core, move || tx.send(f())) {
            Ok(()) => JoinHandle::waiting(core, rx),
            Err(e) => JoinHandle::failed(core, e),
        }
    }

    /// Builds a future on `core` with `f` (so the future itself need not be
    /// `Send`), spawns it there as a task, and resolves to its output.
    pub fn spawn_on<Fut>(
        &self,
        core: CoreId,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> JoinHandle<Fut::Output>
    where
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(core, move || {
            if let Some(r) = context::current() {
                let future = f();
                drop(spawn_here(&r, async move { tx.send(future.await) }));
            }
        });
        match sent {
            Ok(()) => JoinHandle::waiting(core, rx),
            Err(e) => JoinHandle::failed(core, e),
        }
    }

    /// One reactor's counters.
    ///
    /// # Errors
    /// [`Error::NoSuchCore`].
    pub fn stats(&self, core: CoreId) -> Result<ReactorStats, Error> {
        let i = self.shared.index(core)?;
        Ok(self.shared.stats[i].snapshot(core))
    }

    /// Every reactor's counters, in core order.
    pub fn all_stats(&self) -> Vec<ReactorStats> {
        self.shared
            .cores
            .iter()
            .zip(self.shared.stats.iter())
            .map(|(c, s)| s.snapshot(*c))
            .collect()
    }

    /// The answer of SPDK's `framework_get_reactors`.
    pub fn framework_get_reactors(&self) -> Vec<ReactorInfo> {
        self.all_stats()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (irq, sys) = cpu_irq_sys(s.core);
                ReactorInfo {
                    lcore: s.core,
                    busy: s.busy,
                    idle: s.idle,
                    irq,
                    sys,
                    threads: vec![ThreadStats::from_stats(i, s)],
                }
            })
            .collect()
    }

    /// The answer of SPDK's `thread_get_stats`.
    pub fn thread_get_stats(&self) -> Vec<ThreadStats> {
        self.all_stats()
            .iter()
            .enumerate()
            .map(|(i, s)| ThreadStats::from_stats(i, s))
            .collect()
    }

    /// Asks the owner of the runtime to shut it down: wakes
    /// [`Runtime::wait`]. Returns at once.
    pub fn request_shutdown(&self) {
        self.shared.request_shutdown();
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.phase() != crate::shared::RUNNING
    }

    /// The panics caught so far, oldest first.
    pub fn panics(&self) -> Vec<PanicReport> {
        self.shared.panics()
    }

    pub(crate) fn check_not_reactor(&self, what: &'static str) -> Result<(), Error> {
        match context::current() {
            Some(r) if Arc::ptr_eq(&r.shared, &self.shared) => {
                Err(Error::WouldBlock { what, core: r.core })
            }
            _ => Ok(()),
        }
    }
}
