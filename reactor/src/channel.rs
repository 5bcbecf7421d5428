//! I/O devices and their per-core channels ([`IoDevice`], [`IoChannel`]).

use std::any::Any;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::executor::JoinHandle;
use crate::message::Message;
use crate::reactor::ReactorInner;
use crate::shared::{Mode, Shared};
use crate::{CoreId, Error, context, oneshot};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// Set in `DeviceInner::state` once unregistration began; the low bits
/// count live channels.
const UNREGISTERING: usize = 1 << (usize::BITS - 1);

type Done = Box<dyn FnOnce() + Send>;

struct Completion {
    done: Done,
    /// Where to run `done`: the runtime and core that asked to unregister.
    origin: Option<(std::sync::Weak<Shared>, usize)>,
}

type Constructor<C> = Box<dyn Fn(CoreId) -> C + Send + Sync>;

struct DeviceInner<C> {
    id: u64,
    name: String,
    create: Constructor<C>,
    state: AtomicUsize,
    on_unregistered: Mutex<Option<Completion>>,
}

impl<C> DeviceInner<C> {
    /// Counts a new channel unless unregistration began.
    fn acquire(&self) -> Result<(), Error> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & UNREGISTERING != 0 {
                return Err(Error::DeviceUnregistering {
                    name: self.name.clone(),
                });
            }
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Uncounts a destroyed channel; the last one of an unregistering
    /// device completes the unregistration.
    fn release(&self) {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        if prev == UNREGISTERING | 1 {
            self.complete();
        }
    }

    fn complete(&self) {
        let c = self
            .on_unregistered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(c) = c else { return };
        if let Some((shared, index)) = c.origin
            && let Some(shared) = shared.upgrade()
        {
            match shared.send_idx(index, Message::new(c.done), Mode::Send) {
                Ok(()) => return,
                // SAFETY: the message was built just above from a `Done`.
                Err((_, m)) => return unsafe { m.into_closure::<Done>() }(),
            }
        }
        (c.done)();
    }
}

/// A registered I/O device: the key under which each core keeps at most one
/// channel of type `C`. Cheap to clone; usable from any thread.
///
/// SPDK's `io_device` and `io_channel`, in Rust: a device registers a
/// constructor; the first [`get_io_channel`](IoDevice::get_io_channel) on a
/// core builds that core's channel, later ones on the same core share it (reference counted), and
/// the channel is destroyed (its `Drop` runs) on its core when the last
/// reference goes. [`for_each_channel`](IoDevice::for_each_channel) visits
/// the cores by message, one after the other, and calls a function on each
/// core that holds a channel. [`unregister`](IoDevice::unregister) refuses
/// new channels and completes once every channel is gone.
///
/// ```text
///   IoDevice<C> (Send + Sync, any core)
///        | get_io_channel() on core n
///        v
///   core n: channel table [device id -> Weak]  --> IoChannel<C> (Rc, !Send)
/// ```
///
/// ```
/// use std::cell::Cell;
/// use reactor::{SimRuntime, register_io_device};
///
/// // A per-core channel, e.g. a queue pair and its in-flight count.
/// struct Chan {
///     inflight: Cell<u32>,
/// }
/// let dev = register_io_device("null0", |_core| Chan { inflight: Cell::new(0) });
/// let sim = SimRuntime::new(2);
/// let ch = sim.enter(1, || dev.get_io_channel().unwrap());
/// ch.inflight.set(1);
/// assert_eq!(dev.channel_count(), 1);
/// sim.enter(1, || drop(ch)); // last reference: destroyed on core 1
/// assert_eq!(dev.channel_count(), 0);
/// ```
pub struct IoDevice<C: 'static> {
    inner: Arc<DeviceInner<C>>,
}

impl<C> Clone for IoDevice<C> {
    fn clone(&self) -> Self {
        IoDevice {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for IoDevice<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoDevice")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("channels", &self.channel_count())
            .finish()
    }
}

/// Registers an I/O device whose channels `create` builds, once per core, on
/// that core (it receives the core). The channel is destroyed by dropping
/// it, on its core, when the last [`IoChannel`] referring to it goes.
///
/// May be called from any thread. `create` must not ask for a channel of
/// the same device.
pub fn register_io_device<C: 'static>(
    name: impl Into<String>,
    create: impl Fn(CoreId) -> C + Send + Sync + 'static,
) -> IoDevice<C> {
    IoDevice {
        inner: Arc::new(DeviceInner {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            create: Box::new(create),
            state: AtomicUsize::new(0),
            on_unregistered: Mutex::new(None),
        }),
    }
}

impl<C: 'static> IoDevice<C> {
    /// The name given at registration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many cores hold a channel of this device now.
    pub fn channel_count(&self) -> usize {
        self.inner.state.load(Ordering::Acquire) & !UNREGISTERING
    }

    /// Whether [`unregister`](Self::unregister) was called.
    pub fn is_unregistering(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & UNREGISTERING != 0
    }

    /// This core's channel: created on first use, shared afterwards.
    ///
    /// # Errors
    /// [`Error::NotOnReactor`] off a reactor thread;
    /// [`Error::DeviceUnregistering`] when a new channel would be needed
    /// after [`unregister`](Self::unregister).
    pub fn get_io_channel(&self) -> Result<IoChannel<C>, Error> {
        let r = context::current().ok_or(Error::NotOnReactor {
            what: "get_io_channel",
        })?;
        if let Some(ch) = lookup::<C>(&r, self.inner.id) {
            return Ok(ch);
        }
        self.inner.acquire()?;
        struct Release<'a, C>(&'a DeviceInner<C>);
        impl<C> Drop for Release<'_, C> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let guard = Release(&self.inner);
        let value = (self.inner.create)(r.core);
        std::mem::forget(guard);
        let ch = Rc::new(ChannelInner {
            value: ManuallyDrop::new(value),
            device: self.inner.clone(),
            reactor: Rc::downgrade(&r),
            core: r.core,
        });
        let weak: Weak<dyn Any> = Rc::downgrade(&(ch.clone() as Rc<dyn Any>));
        r.channels.borrow_mut().insert(self.inner.id, weak);
        r.stats().channels.fetch_add(1, Ordering::Relaxed);
        Ok(IoChannel { inner: ch })
    }

    /// Calls `f` on the channel of every core that holds one, visiting the
    /// runtime's cores in order by message, then runs `done` on the calling
    /// core with `Ok(())`, or with the first `Err` returned by `f` (which
    /// stops the visit). A core that creates or drops its channel while the
    /// visit is under way is seen as it is when the visit reaches it.
    ///
    /// # Errors
    /// [`Error::NotOnReactor`] off a reactor thread; if the runtime stops
    /// before the visit ends, the rest is dropped with a log line and
    /// `done` is not called.
    pub fn for_each_channel<E: Send + 'static>(
        &self,
        f: impl FnMut(&IoChannel<C>) -> Result<(), E> + Send + 'static,
        done: impl FnOnce(Result<(), E>) + Send + 'static,
    ) -> Result<(), Error> {
        let r = context::current().ok_or(Error::NotOnReactor {
            what: "for_each_channel",
        })?;
        let visit = Box::new(Visit {
            id: self.inner.id,
            f: Box::new(f),
            done: Box::new(done),
            origin: r.index,
            next: 0,
            _channel: std::marker::PhantomData,
        });
        visit.hop(&r.shared);
        Ok(())
    }

    /// Like [`for_each_channel`](Self::for_each_channel), as a future of the
    /// visit's result (`Err(Error)` if the visit could not finish).
    pub fn for_each_channel_async<E: Send + 'static>(
        &self,
        f: impl FnMut(&IoChannel<C>) -> Result<(), E> + Send + 'static,
    ) -> JoinHandle<Result<(), E>> {
        let core = context::current().map(|r| r.core).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        match self.for_each_channel(f, move |res| tx.send(res)) {
            Ok(()) => JoinHandle::waiting(core, rx),
            Err(e) => JoinHandle::failed(core, e),
        }
    }

    /// Starts unregistering: no new channel can be created, and `done` runs
    /// once every existing channel is destroyed — by message on the calling
    /// core when called on a reactor, else on whichever thread released the
    /// last channel (or right away when there is none).
    ///
    /// # Errors
    /// [`Error::DeviceUnregistering`] if unregistration already began
    /// (`done` is then dropped).
    pub fn unregister(&self, done: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let origin = context::current().map(|r| (Arc::downgrade(&r.shared), r.index));
        {
            let mut slot = self
                .inner
                .on_unregistered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self.is_unregistering() || slot.is_some() {
                return Err(Error::DeviceUnregistering {
                    name: self.inner.name.clone(),
                });
            }
            *slot = Some(Completion {
                done: Box::new(done),
                origin,
            });
        }
        let prev = self.inner.state.fetch_or(UNREGISTERING, Ordering::AcqRel);
        if prev & !UNREGISTERING == 0 {
            self.inner.complete();
        }
        Ok(())
    }

    /// [`unregister`](Self::unregister) as a future that completes once the
    /// last channel is gone.
    pub fn unregister_async(&self) -> JoinHandle<()> {
        let core = context::current().map(|r| r.core).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        match self.unregister(move || tx.send(())) {
            Ok(()) => JoinHandle::waiting(core, rx),
            Err(e) => JoinHandle::failed(core, e),
        }
    }
}

fn lookup<C: 'static>(r: &ReactorInner, id: u64) -> Option<IoChannel<C>> {
    let strong = r.channels.borrow().get(&id)?.upgrade()?;
    let inner = strong.downcast::<ChannelInner<C>>().ok()?;
    Some(IoChannel { inner })
}

type VisitFn<C, E> = Box<dyn FnMut(&IoChannel<C>) -> Result<(), E> + Send>;

struct Visit<C: 'static, E> {
    id: u64,
    f: VisitFn<C, E>,
    done: Box<dyn FnOnce(Result<(), E>) + Send>,
    origin: usize,
    next: usize,
    _channel: std::marker::PhantomData<fn() -> C>,
}

impl<C: 'static, E: Send + 'static> Visit<C, E> {
    /// Sends the visit to its next core, or `done` home when finished.
    fn hop(mut self: Box<Self>, shared: &Arc<Shared>) {
        let target = self.next;
        let res = if target >= shared.cores.len() {
            let origin = self.origin;
            let done = self.done;
            shared.send_idx(origin, Message::new(move || done(Ok(()))), Mode::Send)
        } else {
            self.next += 1;
            shared.send_idx(target, Message::new(move || self.step()), Mode::Send)
        };
        if let Err((e, _)) = res {
            log::error!("for_each_channel abandoned: {e}");
        }
    }

    /// Runs on the visited core.
    fn step(mut self: Box<Self>) {
        let Some(r) = context::current() else { return };
        if let Some(ch) = lookup::<C>(&r, self.id)
            && let Err(e) = (self.f)(&ch)
        {
            drop(ch);
            let done = self.done;
            if let Err((e, _)) =
                r.shared
                    .send_idx(self.origin, Message::new(move || done(Err(e))), Mode::Send)
            {
                log::error!("for_each_channel could not report: {e}");
            }
            return;
        }
        let shared = r.shared.clone();
        drop(r);
        self.hop(&shared);
    }
}

struct ChannelInner<C: 'static> {
    value: ManuallyDrop<C>,
    device: Arc<DeviceInner<C>>,
    reactor: Weak<ReactorInner>,
    core: CoreId,
}

impl<C: 'static> Drop for ChannelInner<C> {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.upgrade() {
            let removed = {
                let mut table = r.channels.borrow_mut();
                // Only remove our own entry (a dead Weak), never a newer one.
                match table.get(&self.device.id) {
                    Some(w) if w.strong_count() == 0 => table.remove(&self.device.id),
                    _ => None,
                }
            };
            drop(removed);
            r.stats().channels.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: dropped exactly once, here, and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.value) };
        self.device.release();
    }
}

/// A core's channel of an [`IoDevice`]: a reference-counted handle (clone it
/// freely on this core) to the value the device's constructor built.
/// Not `Send`: a channel belongs to its core.
pub struct IoChannel<C: 'static> {
    inner: Rc<ChannelInner<C>>,
}

impl<C> Clone for IoChannel<C> {
    fn clone(&self) -> Self {
        IoChannel {
            inner: self.inner.clone(),
        }
    }
}

impl<C> Deref for IoChannel<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.inner.value
    }
}

impl<C: std::fmt::Debug> std::fmt::Debug for IoChannel<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoChannel")
            .field("device", &self.inner.device.name)
            .field("core", &self.inner.core)
            .field("value", &*self.inner.value)
            .finish()
    }
}

impl<C> IoChannel<C> {
    /// The core this channel belongs to.
    pub fn core(&self) -> CoreId {
        self.inner.core
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.inner.device.name
    }

    /// The device this channel belongs to.
    pub fn device(&self) -> IoDevice<C> {
        IoDevice {
            inner: self.inner.device.clone(),
        }
    }

    /// How many handles to this channel exist on its core.
    pub fn ref_count(&self) -> usize {
        Rc::strong_count(&self.inner)
    }
}
