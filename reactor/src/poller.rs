//! Pollers: functions a reactor calls on every iteration (active pollers) or
//! every period (timed pollers), each reporting whether it found work.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::reactor::ReactorInner;
use crate::{CoreId, context};

/// What a poller found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// It did work (counts the iteration as busy).
    Busy,
    /// It found nothing to do.
    Idle,
}

impl From<bool> for PollStatus {
    /// `true` is [`PollStatus::Busy`].
    fn from(busy: bool) -> PollStatus {
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PollerState {
    Running,
    Paused,
    Unregistered,
}

pub(crate) type PollFn = Box<dyn FnMut() -> PollStatus>;

pub(crate) struct PollerInner {
    pub name: String,
    pub core: CoreId,
    /// Zero for an active poller.
    pub period_ns: u64,
    pub state: Cell<PollerState>,
    pub f: RefCell<Option<PollFn>>,
    /// Whether a timed poller currently has an entry in the timer queue.
    pub in_heap: Cell<bool>,
    pub owner: Weak<ReactorInner>,
}

impl PollerInner {
    pub(crate) fn is_timed(&self) -> bool {
        self.period_ns != 0
    }

    /// Drops the closure now unless it is running (then the runner drops it
    /// when it returns).
    pub(crate) fn drop_fn_if_idle(&self) {
        let f = self.f.try_borrow_mut().ok().and_then(|mut f| f.take());
        drop(f);
    }
}

/// A handle to a registered poller: pause, resume or unregister it, from
/// anywhere on its core, including from inside the poller itself (see
/// [`current_poller`](crate::current_poller)). Dropping the handle leaves the
/// poller registered.
#[derive(Clone)]
pub struct Poller {
    pub(crate) inner: Rc<PollerInner>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("name", &self.inner.name)
            .field("core", &self.inner.core)
            .field("period_ns", &self.inner.period_ns)
            .field("state", &self.inner.state.get())
            .finish()
    }
}

impl Poller {
    /// The name given at registration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The core it runs on.
    pub fn core(&self) -> CoreId {
        self.inner.core
    }

    /// The period of a timed poller, `None` for an active one.
    pub fn period(&self) -> Option<Duration> {
        (self.inner.period_ns != 0).then(|| Duration::from_nanos(self.inner.period_ns))
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.inner.state.get() == PollerState::Paused
    }

    /// Whether it is still registered.
    pub fn is_registered(&self) -> bool {
        self.inner.state.get() != PollerState::Unregistered
    }

    /// Stops running it until [`resume`](Self::resume). No effect on an
    /// unregistered poller.
    pub fn pause(&self) {
        if self.inner.state.get() == PollerState::Running {
            self.inner.state.set(PollerState::Paused);
            if let Some(r) = self.inner.owner.upgrade() {
                r.pollers.update_counts(&r);
            }
        }
    }

    /// Runs it again; a timed poller next runs one period from now.
    pub fn resume(&self) {
        if self.inner.state.get() != PollerState::Paused {
            return;
        }
        self.inner.state.set(PollerState::Running);
        if let Some(r) = self.inner.owner.upgrade() {
            if self.inner.is_timed() && !self.inner.in_heap.get() {
                r.schedule_timed_poller(&self.inner, r.now_ns() + self.inner.period_ns);
            }
            r.pollers.update_counts(&r);
        }
    }

    /// Removes it: it never runs again and its closure (with whatever it
    /// captured) is dropped now, or as soon as it returns when it is the
    /// poller running.
    pub fn unregister(&self) {
        if self.inner.state.replace(PollerState::Unregistered) == PollerState::Unregistered {
            return;
        }
        self.inner.drop_fn_if_idle();
        if let Some(r) = self.inner.owner.upgrade() {
            r.pollers.dirty.set(true);
            r.pollers.update_counts(&r);
        }
    }
}

/// The pollers of one reactor.
#[derive(Default)]
pub(crate) struct PollerSet {
    pub active: RefCell<Vec<Rc<PollerInner>>>,
    pub timed: RefCell<Vec<Rc<PollerInner>>>,
    pub dirty: Cell<bool>,
}

impl PollerSet {
    /// Recomputes the poller counts in the reactor's statistics.
    pub(crate) fn update_counts(&self, r: &ReactorInner) {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut active, mut timed, mut paused) = (0u64, 0u64, 0u64);
        for p in self
            .active
            .borrow()
            .iter()
            .chain(self.timed.borrow().iter())
        {
            match p.state.get() {
                PollerState::Running if p.is_timed() => timed += 1,
                PollerState::Running => active += 1,
                PollerState::Paused => paused += 1,
                PollerState::Unregistered => {}
            }
        }
        let s = r.stats();
        s.active_pollers.store(active, Relaxed);
        s.timed_pollers.store(timed, Relaxed);
        s.paused_pollers.store(paused, Relaxed);
    }

    /// Removes unregistered pollers from the lists.
    pub(crate) fn sweep(&self) {
        if self.dirty.replace(false) {
            let keep = |p: &Rc<PollerInner>| p.state.get() != PollerState::Unregistered;
            self.active.borrow_mut().retain(keep);
            self.timed.borrow_mut().retain(keep);
        }
    }

    /// Unregisters every poller (shutdown).
    pub(crate) fn clear(&self) {
        let all: Vec<Rc<PollerInner>> = self
            .active
            .borrow_mut()
            .drain(..)
            .chain(self.timed.borrow_mut().drain(..))
            .collect();
        for p in &all {
            p.state.set(PollerState::Unregistered);
            p.drop_fn_if_idle();
        }
    }
}

/// Registers a poller on the current reactor, called on every iteration.
///
/// # Panics
/// When not called on a reactor thread.
pub fn register_poller(name: impl Into<String>, f: impl FnMut() -> PollStatus + 'static) -> Poller {
    register(name.into(), 0, Box::new(f))
}

/// Registers a poller on the current reactor, called once per `period`
/// (first one period from now). A zero period makes it an active poller.
/// The period is honoured as closely as the other work on the core allows;
/// when the reactor falls behind, missed runs are skipped, not bunched.
///
/// # Panics
/// When not called on a reactor thread.
pub fn register_timed_poller(
    name: impl Into<String>,
    period: Duration,
    f: impl FnMut() -> PollStatus + 'static,
) -> Poller {
    let ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
    register(name.into(), ns, Box::new(f))
}

fn register(name: String, period_ns: u64, f: PollFn) -> Poller {
    let r = context::current().expect("register_poller must be called on a reactor thread");
    let inner = Rc::new(PollerInner {
        name,
        core: r.core,
        period_ns,
        state: Cell::new(PollerState::Running),
        f: RefCell::new(Some(f)),
        in_heap: Cell::new(false),
        owner: Rc::downgrade(&r),
    });
    if period_ns == 0 {
        r.pollers.active.borrow_mut().push(inner.clone());
    } else {
        r.pollers.timed.borrow_mut().push(inner.clone());
        r.schedule_timed_poller(&inner, r.now_ns().saturating_add(period_ns));
    }
    r.pollers.update_counts(&r);
    Poller { inner }
}

/// The poller being run, when called from inside one (so it can pause or
/// unregister itself).
pub fn current_poller() -> Option<Poller> {
    let r = context::current()?;
    let p = r.current_poller.borrow().clone()?;
    Some(Poller { inner: p })
}
