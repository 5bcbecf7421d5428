//! The local async executor: spawn, on_core, spawn_on, sleep.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::two_cores;
use reactor::{Error, SimRuntime};

#[test]
fn spawn_and_await_local_task() {
    let sim = SimRuntime::new(1);
    let v = sim.block_on(0, async {
        // A !Send future is fine on its own core.
        let shared = Rc::new(Cell::new(1));
        let s = shared.clone();
        let h = reactor::spawn(async move {
            s.set(s.get() + 1);
            s.get() * 10
        });
        let v = h.await.unwrap();
        v + shared.get()
    });
    assert_eq!(v.unwrap(), 22);
}

#[test]
fn sleep_uses_the_reactor_clock() {
    let sim = SimRuntime::new(2);
    let t = sim.block_on(1, async {
        let t0 = reactor::now();
        reactor::sleep(Duration::from_millis(30)).await;
        reactor::sleep(Duration::from_millis(12)).await;
        reactor::now() - t0
    });
    assert_eq!(t.unwrap(), Duration::from_millis(42));
    assert_eq!(sim.now(), Duration::from_millis(42));
}

#[test]
fn on_core_round_trips_between_cores() {
    let sim = SimRuntime::new(3);
    let r = sim.block_on(0, async {
        let mut trail = vec![reactor::current_core().unwrap()];
        for core in [2, 1, 2] {
            trail.push(
                reactor::on_core(core, reactor::current_core)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        trail
    });
    assert_eq!(r.unwrap(), vec![0, 2, 1, 2]);
    // A bad core resolves to an error, not a hang.
    let e = sim.block_on(0, async { reactor::on_core(9, || ()).await });
    assert!(matches!(e.unwrap(), Err(Error::NoSuchCore { core: 9, .. })));
}

#[test]
fn tasks_interleave_with_yield_now() {
    let sim = SimRuntime::new(1);
    let log = Rc::new(std::cell::RefCell::new(Vec::new()));
    let l = log.clone();
    sim.block_on(0, async move {
        let mut hs = Vec::new();
        for id in 0..2 {
            let l = l.clone();
            hs.push(reactor::spawn(async move {
                for step in 0..3 {
                    l.borrow_mut().push((id, step));
                    reactor::yield_now().await;
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
    })
    .unwrap();
    assert_eq!(
        *log.borrow(),
        vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    );
}

#[test]
fn stalled_simulation_is_an_error() {
    let sim = SimRuntime::new(1);
    let r = sim.block_on(0, std::future::pending::<()>());
    assert!(matches!(r, Err(Error::Stalled)));
}

/// On real reactors: a task on core 0 awaits work on core 1 and sleeps.
#[test]
fn real_reactors_spawn_on_core_and_sleep() {
    let rt = two_cores(1024);
    let out = rt
        .block_on(0, || async {
            let a = reactor::on_core(1, reactor::current_core).await.unwrap();
            let t0 = std::time::Instant::now();
            reactor::sleep(Duration::from_millis(20)).await;
            let slept = t0.elapsed();
            let b = reactor::spawn_on(1, || async {
                reactor::yield_now().await;
                reactor::current_core()
            })
            .await
            .unwrap();
            (a, b, slept)
        })
        .unwrap();
    assert_eq!((out.0, out.1), (Some(1), Some(1)));
    assert!(out.2 >= Duration::from_millis(20));
    // Off the reactors there is no current runtime.
    assert!(reactor::handle().is_none());
    assert!(rt.run_on(0, || reactor::handle().is_some()).unwrap());
    rt.shutdown().unwrap();
}
