//! RESET as SPDK's bdev layer does it: one reset of a bdev at a time (the
//! others wait for it); every channel is frozen — new I/O ends ABORTED and
//! I/O queued in the layer for resources or for QoS is aborted — then, if the module
//! set a drain timeout ([`crate::BdevProps::reset_io_drain_timeout`]), the
//! layer waits up to that long for the I/O in flight to end and, if it
//! does, the reset succeeds without reaching the module; otherwise (or
//! with no timeout) the module gets the reset and aborts what it holds.
//! Then every channel thaws and the reset completes.
//!
//! ```text
//!   reset ─> wait for the bdev's other reset ─> freeze every channel
//!        ─> drained within the timeout? ── yes ──────────────┐
//!                 └─ no / no timeout ─> module's reset ──────┤
//!                                                            v
//!                                  thaw every channel, complete the reset
//! ```

use std::cell::Cell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::bdev::Bdev;
use crate::channel::{ChanState, complete, finish};
use crate::io::BdevIo;
use crate::types::{IoStatus, IoType};

/// How often the drain is checked.
const DRAIN_CHECK: Duration = Duration::from_micros(100);

/// Starts the reset `p` (a top-level RESET on channel `s`).
pub(crate) fn start(s: &Rc<ChanState>, p: NonNull<BdevIo>) {
    s.resets.set(s.resets.get() + 1);
    let s = s.clone();
    drop(reactor::spawn(async move {
        let status = run(&s).await;
        s.resets.set(s.resets.get() - 1);
        complete(p, status);
    }));
}

async fn run(s: &Rc<ChanState>) -> IoStatus {
    let bdev = Bdev {
        inner: s.bdev.clone(),
    };
    // One at a time.
    while s.bdev.reset_active.swap(true, Ordering::AcqRel) {
        reactor::sleep(DRAIN_CHECK).await;
    }
    s.bdev.frozen.store(true, Ordering::Release);
    if let Err(e) = bdev.visit_channels(freeze).await {
        log::warn!("bdev {}: reset: freezing channels: {e}", bdev.name());
    }
    let drained = match s.bdev.props.reset_io_drain_timeout {
        Some(t) if !t.is_zero() => drain(&bdev, t).await,
        _ => false,
    };
    let status = if drained {
        IoStatus::Success
    } else {
        module_reset(s).await
    };
    s.bdev.frozen.store(false, Ordering::Release);
    if let Err(e) = bdev.visit_channels(|c| c.frozen.set(false)).await {
        log::warn!("bdev {}: reset: thawing channels: {e}", bdev.name());
    }
    s.bdev.reset_active.store(false, Ordering::Release);
    status
}

/// On one channel: new I/O is refused from now on; what waits in the
/// layer for resources is aborted.
fn freeze(s: &Rc<ChanState>) {
    s.frozen.set(true);
    let n = s.nomem_queue().len();
    for _ in 0..n {
        let Some(v) = s.nomem_queue().pop_front() else {
            break;
        };
        // SAFETY: queued I/O are in flight and owned by the layer.
        let io = unsafe { &mut *v.as_ptr() };
        if io.parent.is_none() {
            io.split.active = false;
        }
        finish(s, v, IoStatus::Aborted);
    }
    // I/O waiting for QoS is aborted too (as SPDK's reset does).
    while let Some(v) = s.qos_pop() {
        finish(s, v, IoStatus::Aborted);
    }
}

/// Waits up to `timeout` for every channel's I/O (resets aside) to end.
async fn drain(bdev: &Bdev, timeout: Duration) -> bool {
    let deadline = reactor::now() + timeout;
    loop {
        let busy = Arc::new(AtomicUsize::new(0));
        let b = busy.clone();
        let visited = bdev
            .visit_channels(move |c| {
                b.fetch_add(
                    c.outstanding().saturating_sub(c.resets.get()),
                    Ordering::AcqRel,
                );
            })
            .await;
        if visited.is_ok() && busy.load(Ordering::Acquire) == 0 {
            return true;
        }
        if reactor::now() >= deadline {
            return false;
        }
        reactor::sleep(DRAIN_CHECK).await;
    }
}

type Slot = Rc<Cell<(Option<IoStatus>, Option<std::task::Waker>)>>;

/// Sends a RESET to the module (through the layer's own I/O on `s`) and
/// waits for it.
async fn module_reset(s: &Rc<ChanState>) -> IoStatus {
    fn done(io: &mut BdevIo, st: IoStatus) {
        // SAFETY: `ctx` is the `Rc` leaked in `module_reset`, rebuilt once.
        let slot: Slot = unsafe { Rc::from_raw(io.ctx as *const Cell<_>) };
        let (_, w) = slot.take();
        slot.set((Some(st), None));
        if let Some(w) = w {
            w.wake();
        }
    }
    let p = loop {
        match s.alloc_io() {
            Some(p) => break p,
            // Every I/O object is in use: they end (frozen) soon.
            None => reactor::sleep(DRAIN_CHECK).await,
        }
    };
    let slot: Slot = Rc::new(Cell::new((None, None)));
    // SAFETY: freshly allocated, exclusively ours.
    let io = unsafe { &mut *p.as_ptr() };
    io.ty = IoType::Reset;
    io.layer_reset = true;
    io.cb = Some(done);
    io.ctx = Rc::into_raw(slot.clone()) as usize;
    s.launch_internal(p);
    std::future::poll_fn(|cx| {
        let (st, _) = slot.take();
        match st {
            Some(st) => std::task::Poll::Ready(st),
            None => {
                slot.set((None, Some(cx.waker().clone())));
                std::task::Poll::Pending
            }
        }
    })
    .await
}
