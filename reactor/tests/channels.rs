//! I/O devices and channels: once per core, refcounted, destroyed with the
//! last reference, visited by `for_each_channel`, awaited by unregister.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::two_cores;
use reactor::{Error, IoChannel, SimRuntime, register_io_device};

/// A channel that records its construction and destruction.
struct Chan {
    core: u32,
    destroyed: Arc<Mutex<Vec<u32>>>,
}

impl Drop for Chan {
    fn drop(&mut self) {
        assert_eq!(
            reactor::current_core(),
            Some(self.core),
            "destroyed on its core"
        );
        self.destroyed.lock().unwrap().push(self.core);
    }
}

/// A simulation, a device, its construction count and destruction log.
type Fixture = (
    SimRuntime,
    reactor::IoDevice<Chan>,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<u32>>>,
);

fn device(sim_cores: usize) -> Fixture {
    let created = Arc::new(AtomicUsize::new(0));
    let destroyed = Arc::new(Mutex::new(Vec::new()));
    let (c, d) = (created.clone(), destroyed.clone());
    let dev = register_io_device("dev0", move |core| {
        c.fetch_add(1, Ordering::SeqCst);
        Chan {
            core,
            destroyed: d.clone(),
        }
    });
    (SimRuntime::new(sim_cores), dev, created, destroyed)
}

#[test]
fn channel_created_once_per_core_and_destroyed_with_last_reference() {
    let (sim, dev, created, destroyed) = device(2);
    let (a, b) = sim.enter(1, || {
        (dev.get_io_channel().unwrap(), dev.get_io_channel().unwrap())
    });
    assert_eq!(created.load(Ordering::SeqCst), 1);
    assert_eq!(a.core, 1);
    assert_eq!(a.ref_count(), 2);
    assert_eq!((a.core(), a.device_name()), (1, "dev0"));
    assert_eq!(a.device().channel_count(), 1);
    assert_eq!(dev.channel_count(), 1);
    let c0 = sim.enter(0, || dev.get_io_channel().unwrap());
    assert_eq!(created.load(Ordering::SeqCst), 2);
    assert_eq!(sim.handle().stats(1).unwrap().io_channels, 1);
    // Channels are dropped on their core (Chan::drop checks).
    sim.enter(1, || drop(a));
    assert!(destroyed.lock().unwrap().is_empty());
    sim.enter(1, || drop(b));
    assert_eq!(*destroyed.lock().unwrap(), vec![1]);
    assert_eq!(dev.channel_count(), 1);
    // A new one on core 1 is built afresh.
    let again = sim.enter(1, || dev.get_io_channel().unwrap());
    assert_eq!(created.load(Ordering::SeqCst), 3);
    sim.enter(1, || drop(again));
    sim.enter(0, || drop(c0));
    assert_eq!(dev.channel_count(), 0);
    assert_eq!(sim.handle().stats(0).unwrap().io_channels, 0);
    assert!(matches!(
        dev.get_io_channel(),
        Err(Error::NotOnReactor { .. })
    ));
}

#[test]
fn for_each_channel_visits_exactly_the_holders_then_done_on_origin() {
    let (sim, dev, _, _) = device(4);
    let held: Vec<IoChannel<Chan>> = [1u32, 3]
        .iter()
        .map(|c| sim.enter(*c, || dev.get_io_channel().unwrap()))
        .collect();
    let visited = Arc::new(Mutex::new(Vec::new()));
    let done_on = Arc::new(Mutex::new(None));
    let (v, d) = (visited.clone(), done_on.clone());
    sim.enter(2, || {
        dev.for_each_channel::<()>(
            move |ch| {
                assert_eq!(reactor::current_core(), Some(ch.core));
                v.lock().unwrap().push(ch.core);
                Ok(())
            },
            move |res| {
                assert!(res.is_ok());
                *d.lock().unwrap() = reactor::current_core();
            },
        )
        .unwrap()
    });
    sim.run_until_idle();
    assert_eq!(*visited.lock().unwrap(), vec![1, 3]);
    assert_eq!(*done_on.lock().unwrap(), Some(2));
    for ch in held {
        let core = ch.core();
        sim.enter(core, || drop(ch));
    }
}

#[test]
fn for_each_channel_stops_at_first_error() {
    let (sim, dev, _, _) = device(3);
    let held: Vec<IoChannel<Chan>> = (0..3u32)
        .map(|c| sim.enter(c, || dev.get_io_channel().unwrap()))
        .collect();
    let visited = Arc::new(Mutex::new(Vec::new()));
    let v = visited.clone();
    let res = sim.block_on(0, async move {
        dev.for_each_channel_async(move |ch| {
            v.lock().unwrap().push(ch.core);
            if ch.core == 1 { Err("stop") } else { Ok(()) }
        })
        .await
    });
    assert_eq!(res.unwrap().unwrap(), Err("stop"));
    assert_eq!(*visited.lock().unwrap(), vec![0, 1]);
    for (c, ch) in held.into_iter().enumerate() {
        sim.enter(c as u32, || drop(ch));
    }
}

#[test]
fn unregister_waits_for_the_last_channel() {
    let (sim, dev, _, destroyed) = device(2);
    let ch = sim.enter(1, || dev.get_io_channel().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    sim.enter(0, || {
        dev.unregister(move || {
            assert_eq!(reactor::current_core(), Some(0));
            d.store(true, Ordering::SeqCst);
        })
        .unwrap()
    });
    sim.run_until_idle();
    assert!(!done.load(Ordering::SeqCst), "a channel is still alive");
    // No new channel once unregistering; a second unregister is refused.
    assert!(matches!(
        sim.enter(0, || dev.get_io_channel()),
        Err(Error::DeviceUnregistering { .. })
    ));
    assert!(dev.unregister(|| ()).is_err());
    // The existing holder may still share its channel.
    let ch2 = sim.enter(1, || dev.get_io_channel().unwrap());
    sim.enter(1, || {
        drop(ch);
        drop(ch2);
    });
    sim.run_until_idle();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(*destroyed.lock().unwrap(), vec![1]);
}

#[test]
fn unregister_without_channels_completes_at_once() {
    let (sim, dev, _, _) = device(1);
    let r = sim.block_on(0, async move { dev.unregister_async().await });
    assert!(r.unwrap().is_ok());
}

/// On real reactors: channels held by pollers and tasks are destroyed on
/// their cores at shutdown.
#[test]
fn shutdown_runs_channel_destructors() {
    let destroyed = Arc::new(Mutex::new(Vec::new()));
    let d = destroyed.clone();
    let dev = register_io_device("dev1", move |core| Chan {
        core,
        destroyed: d.clone(),
    });
    let rt = two_cores(1024);
    for core in [0u32, 1] {
        let dev = dev.clone();
        rt.run_on(core, move || {
            let ch = dev.get_io_channel().unwrap();
            reactor::register_poller("holder", move || {
                let _ = &ch;
                reactor::PollStatus::Idle
            });
        })
        .unwrap();
    }
    assert_eq!(dev.channel_count(), 2);
    let done = Arc::new(AtomicBool::new(false));
    let dn = done.clone();
    dev.unregister(move || dn.store(true, Ordering::SeqCst))
        .unwrap();
    rt.shutdown().unwrap();
    let mut d = destroyed.lock().unwrap().clone();
    d.sort();
    assert_eq!(d, vec![0, 1]);
    assert_eq!(dev.channel_count(), 0);
    assert!(done.load(Ordering::SeqCst));
}
