//! One reactor: the event loop of one core.
//!
//! Each iteration ([`ReactorInner::poll`]) takes the time as an argument, so
//! the same loop runs on a pinned thread ([`Runtime`](crate::Runtime)) or is
//! stepped by a test ([`SimRuntime`](crate::SimRuntime)). An iteration:
//!
//! ```text
//!   retry this core's backlog of sends that found a full ring
//!   run up to `message_batch` messages from the ring    (FIFO per sender)
//!   poll the async tasks that are ready (none: one empty check)
//!   run the active pollers                               (busy / idle)
//!   run the timers that are due: timed pollers, sleeps
//!   account the iteration as busy or idle
//! ```

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::context;
use crate::executor::{Executor, TaskKey};
use crate::message::Message;
use crate::poller::{PollStatus, PollerInner, PollerSet, PollerState};
use crate::shared::{Mode, PanicReport, STOPPED, Shared, panic_message};
use crate::stats::StatsCell;
use crate::timer::{TimerKind, TimerQueue};
use crate::{CoreId, Error};

pub(crate) struct ReactorInner {
    pub shared: Arc<Shared>,
    pub index: usize,
    pub core: CoreId,
    now_ns: Cell<u64>,
    last_ns: Cell<u64>,
    last_busy: Cell<bool>,
    /// Per destination: messages that found the ring full, kept in order.
    backlog: RefCell<Vec<VecDeque<Message>>>,
    backlog_len: Cell<usize>,
    sent: Cell<u64>,
    messages_run: Cell<u64>,
    poller_runs: Cell<u64>,
    tasks_polled: Cell<u64>,
    iterations: Cell<u64>,
    active_iterations: Cell<u64>,
    busy_ns: Cell<u64>,
    idle_ns: Cell<u64>,
    pub pollers: PollerSet,
    pub timers: TimerQueue,
    pub executor: Executor,
    /// Device id -> that device's channel on this core.
    pub channels: RefCell<HashMap<u64, Weak<dyn Any>>>,
    pub current_poller: RefCell<Option<Rc<PollerInner>>>,
    pub current_task: Cell<Option<TaskKey>>,
}

impl ReactorInner {
    pub(crate) fn new(shared: Arc<Shared>, index: usize, now_ns: u64) -> Rc<ReactorInner> {
        let n = shared.cores.len();
        Rc::new(ReactorInner {
            core: shared.cores[index],
            shared,
            index,
            now_ns: Cell::new(now_ns),
            last_ns: Cell::new(now_ns),
            last_busy: Cell::new(false),
            backlog: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            backlog_len: Cell::new(0),
            sent: Cell::new(0),
            messages_run: Cell::new(0),
            poller_runs: Cell::new(0),
            tasks_polled: Cell::new(0),
            iterations: Cell::new(0),
            active_iterations: Cell::new(0),
            busy_ns: Cell::new(0),
            idle_ns: Cell::new(0),
            pollers: PollerSet::default(),
            timers: TimerQueue::default(),
            executor: Executor::default(),
            channels: RefCell::new(HashMap::new()),
            current_poller: RefCell::new(None),
            current_task: Cell::new(None),
        })
    }

    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.now_ns.get()
    }

    /// The time now: read afresh on a real reactor (unlike `now_ns`, the
    /// iteration's start), the simulated time in a simulation.
    pub(crate) fn fresh_now_ns(&self) -> u64 {
        if self.shared.config.simulated {
            self.now_ns()
        } else {
            self.shared.clock.now_ns()
        }
    }

    #[inline]
    pub(crate) fn stats(&self) -> &StatsCell {
        &self.shared.stats[self.index]
    }

    /// After an idle iteration on a reactor without active pollers: watch
    /// the inbox for up to `checks` cheap looks (no clock read, no poller,
    /// no timer), returning as soon as a message is waiting. This cuts the
    /// delay before an idle reactor notices a message from a full
    /// iteration to one look; with active pollers it does nothing, so they
    /// still run every iteration.
    #[inline]
    pub(crate) fn watch_inbox(&self, checks: u32) -> bool {
        if !self.pollers.active.borrow().is_empty() || self.executor.has_ready() {
            return false;
        }
        let inbox = &self.shared.inboxes[self.index];
        for _ in 0..checks {
            // SAFETY: called on this reactor's thread, the inbox's consumer.
            if unsafe { inbox.has_pending() } {
                return true;
            }
        }
        false
    }

    /// The earliest timer deadline, if any (used by the simulation).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Sends from this reactor (the caller runs on it).
    ///
    /// Back-pressure: when the destination ring is full, `Mode::Send` keeps
    /// the message in this reactor's backlog for that destination and
    /// retries at the start of every iteration; later sends to the same
    /// destination queue behind it, so per-sender order holds. The backlog
    /// allocates only while a ring is full. `Mode::Try` gives the message
    /// back instead.
    #[inline]
    pub(crate) fn send_from_here(
        &self,
        index: usize,
        msg: Message,
        mode: Mode,
    ) -> Result<(), (Error, Message)> {
        if self.shared.phase() == STOPPED {
            let core = self.shared.cores[index];
            return Err((Error::ShuttingDown { core }, msg));
        }
        let inbox = &self.shared.inboxes[index];
        let msg = if self.backlog_len.get() == 0 || self.backlog.borrow()[index].is_empty() {
            // SAFETY: `self` is the reactor running on this thread (callers
            // reach it through the thread's current reactor), so this thread
            // is the only producer of the (self, index) ring.
            match unsafe { inbox.push_from(self.index, msg) } {
                Ok(()) => {
                    self.sent.set(self.sent.get() + 1);
                    return Ok(());
                }
                Err(m) => m,
            }
        } else {
            msg
        };
        if mode == Mode::Try {
            let core = self.shared.cores[index];
            let capacity = inbox.capacity();
            return Err((Error::RingFull { core, capacity }, msg));
        }
        self.backlog.borrow_mut()[index].push_back(msg);
        self.backlog_len.set(self.backlog_len.get() + 1);
        self.sent.set(self.sent.get() + 1);
        Ok(())
    }

    fn flush_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        let mut left = 0;
        for (index, queue) in backlog.iter_mut().enumerate() {
            let inbox = &self.shared.inboxes[index];
            while let Some(m) = queue.pop_front() {
                // SAFETY: as in `send_from_here`: we run on this reactor.
                if let Err(m) = unsafe { inbox.push_from(self.index, m) } {
                    queue.push_front(m);
                    break;
                }
            }
            left += queue.len();
        }
        self.backlog_len.set(left);
    }

    /// One iteration at time `now_ns`; returns whether it was busy.
    pub(crate) fn poll(self: &Rc<Self>, now_ns: u64) -> bool {
        let _enter = context::enter(self);
        self.poll_entered(now_ns)
    }

    /// [`poll`](Self::poll) for a caller that already made this reactor
    /// the current one (a reactor thread does so once).
    #[inline]
    pub(crate) fn poll_entered(&self, now_ns: u64) -> bool {
        let dt = now_ns.saturating_sub(self.last_ns.replace(now_ns));
        if self.last_busy.get() {
            self.busy_ns.set(self.busy_ns.get() + dt);
        } else {
            self.idle_ns.set(self.idle_ns.get() + dt);
        }
        self.now_ns.set(now_ns.max(self.now_ns.get()));
        let before = (
            self.sent.get(),
            self.messages_run.get(),
            self.tasks_polled.get(),
        );
        let busy = match catch_unwind(AssertUnwindSafe(|| self.poll_once(now_ns))) {
            Ok(busy) => busy,
            Err(payload) => {
                self.on_panic(payload.as_ref());
                true
            }
        };
        let after = (
            self.sent.get(),
            self.messages_run.get(),
            self.tasks_polled.get(),
        );
        let active = before != after || self.backlog_len.get() != 0;
        self.iterations.set(self.iterations.get() + 1);
        if active {
            self.active_iterations.set(self.active_iterations.get() + 1);
        }
        let busy = busy || active;
        self.last_busy.set(busy);
        self.publish();
        busy
    }

    fn poll_once(&self, now: u64) -> bool {
        if self.backlog_len.get() != 0 {
            self.flush_backlog();
        }
        let inbox = &self.shared.inboxes[self.index];
        let count = || self.messages_run.set(self.messages_run.get() + 1);
        // SAFETY: `poll` runs on this reactor's thread (or the simulation's
        // one thread), the only consumer of its inbox.
        let n = unsafe { inbox.drain(self.shared.config.message_batch, count) };
        let mut busy = n != 0;
        if self.executor.has_ready() {
            let polled = self.executor.run_ready(self, self.shared.config.task_batch);
            self.tasks_polled
                .set(self.tasks_polled.get() + polled as u64);
        }
        busy |= self.run_active_pollers();
        busy |= self.run_timers(now);
        busy
    }

    fn run_active_pollers(&self) -> bool {
        let mut busy = false;
        let mut i = 0;
        loop {
            let p = match self.pollers.active.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            i += 1;
            if p.state.get() == PollerState::Running {
                busy |= self.run_poller(&p) == PollStatus::Busy;
            }
        }
        self.pollers.sweep();
        busy
    }

    fn run_poller(&self, p: &Rc<PollerInner>) -> PollStatus {
        *self.current_poller.borrow_mut() = Some(p.clone());
        self.poller_runs.set(self.poller_runs.get() + 1);
        let status = match p.f.borrow_mut().as_mut() {
            Some(f) => f(),
            None => PollStatus::Idle,
        };
        *self.current_poller.borrow_mut() = None;
        if p.state.get() == PollerState::Unregistered {
            p.drop_fn_if_idle();
        }
        status
    }

    pub(crate) fn schedule_timed_poller(&self, p: &Rc<PollerInner>, deadline: u64) {
        p.in_heap.set(true);
        self.timers.insert(deadline, TimerKind::Poller(p.clone()));
    }

    fn run_timers(&self, now: u64) -> bool {
        let mut busy = false;
        while let Some((deadline, kind)) = self.timers.pop_due(now) {
            match kind {
                TimerKind::Sleep(s) => {
                    s.fire();
                    busy = true;
                }
                TimerKind::Poller(p) => {
                    p.in_heap.set(false);
                    if p.state.get() != PollerState::Running {
                        continue;
                    }
                    busy |= self.run_poller(&p) == PollStatus::Busy;
                    if p.state.get() == PollerState::Running && !p.in_heap.get() {
                        let next = deadline.saturating_add(p.period_ns);
                        let next = if next <= now {
                            now.saturating_add(p.period_ns)
                        } else {
                            next
                        };
                        self.schedule_timed_poller(&p, next);
                    }
                }
            }
        }
        self.pollers.sweep();
        busy
    }

    fn on_panic(&self, payload: &(dyn Any + Send)) {
        let message = panic_message(payload);
        let poller = self.current_poller.borrow_mut().take();
        let what = if let Some(p) = poller {
            let name = format!("poller {}", p.name);
            crate::poller::Poller { inner: p }.unregister();
            name
        } else if let Some(key) = self.current_task.take() {
            self.executor.remove(key);
            "task".to_string()
        } else {
            "message".to_string()
        };
        self.shared.record_panic(PanicReport {
            core: self.core,
            what,
            message,
        });
    }

    fn publish(&self) {
        let s = self.stats();
        s.busy_ns.store(self.busy_ns.get(), Relaxed);
        s.idle_ns.store(self.idle_ns.get(), Relaxed);
        s.messages_run.store(self.messages_run.get(), Relaxed);
        s.messages_sent.store(self.sent.get(), Relaxed);
        s.poller_runs.store(self.poller_runs.get(), Relaxed);
        s.tasks_polled.store(self.tasks_polled.get(), Relaxed);
        s.active_iterations
            .store(self.active_iterations.get(), Relaxed);
        // Released last: a reader that sees the new iteration count sees the
        // other figures of that iteration.
        s.iterations
            .store(self.iterations.get(), std::sync::atomic::Ordering::Release);
    }

    /// Runs what is left in the ring once the runtime stopped (sends from
    /// these messages are refused), catching panics.
    pub(crate) fn final_drain(self: &Rc<Self>) -> usize {
        let _enter = context::enter(self);
        let inbox = &self.shared.inboxes[self.index];
        let mut n = 0;
        // SAFETY: called on this reactor's thread, its inbox's one consumer.
        while let Some(m) = unsafe { inbox.pop_any() } {
            n += 1;
            self.messages_run.set(self.messages_run.get() + 1);
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| m.run())) {
                self.on_panic(payload.as_ref());
            }
        }
        n
    }

    /// Drops pollers, tasks and timers (and so the channels they hold) and
    /// reports channels still held elsewhere. Returns how many backlogged
    /// messages had to be dropped.
    pub(crate) fn teardown(self: &Rc<Self>) -> usize {
        let _enter = context::enter(self);
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.pollers.clear();
            self.executor.clear();
            drop(self.timers.take_all());
            let dropped: Vec<Message> = self
                .backlog
                .borrow_mut()
                .iter_mut()
                .flat_map(|q| q.drain(..))
                .collect();
            let n = dropped.len();
            drop(dropped);
            self.backlog_len.set(0);
            n
        }));
        let n = match result {
            Ok(n) => n,
            Err(payload) => {
                self.on_panic(payload.as_ref());
                0
            }
        };
        let alive = self
            .channels
            .borrow()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count();
        if alive != 0 {
            log::warn!(
                "core {}: {alive} I/O channel(s) still referenced at shutdown",
                self.core
            );
        }
        self.publish();
        self.pollers.update_counts(self);
        n
    }
}
