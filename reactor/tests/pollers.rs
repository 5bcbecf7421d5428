//! Pollers: busy/idle, timed periods, pausing and unregistering.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::two_cores;
use reactor::{PollStatus, SimRuntime};

/// Simulated time: a 10 ms poller runs exactly at 10, 20, 30 ... ms.
#[test]
fn timed_poller_period_exact_in_simulation() {
    let sim = SimRuntime::new(2);
    let runs = Rc::new(RefCell::new(Vec::new()));
    let r = runs.clone();
    sim.enter(1, move || {
        reactor::register_timed_poller("tick", Duration::from_millis(10), move || {
            r.borrow_mut().push(reactor::now());
            PollStatus::Busy
        })
    });
    sim.advance(Duration::from_millis(95));
    let expect: Vec<Duration> = (1..=9).map(|k| Duration::from_millis(10 * k)).collect();
    assert_eq!(*runs.borrow(), expect);
    let st = sim.handle().stats(1).unwrap();
    assert_eq!((st.timed_pollers, st.active_pollers), (1, 0));
}

/// A reactor that falls behind skips missed periods instead of bunching.
#[test]
fn late_timed_poller_skips_missed_runs() {
    let sim = SimRuntime::new(1);
    let runs = Rc::new(RefCell::new(Vec::new()));
    let r = runs.clone();
    sim.enter(0, move || {
        reactor::register_timed_poller("t", Duration::from_millis(10), move || {
            r.borrow_mut().push(reactor::now().as_millis());
            PollStatus::Idle
        })
    });
    // The core is stuck for 95 ms: one late run, then back on a period.
    sim.jump(Duration::from_millis(95));
    sim.poll(0);
    sim.advance(Duration::from_millis(25));
    assert_eq!(*runs.borrow(), vec![95, 105, 115]);
}

/// Real time: a 20 ms poller never runs before its deadline and runs about
/// as often as it should over a window (generous bounds: CI is loaded).
#[test]
fn timed_poller_period_honoured_on_real_reactor() {
    let rt = two_cores(1024);
    let period = Duration::from_millis(20);
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let start = rt
        .run_on(1, move || {
            let start = reactor::now();
            reactor::register_timed_poller("tick", period, move || {
                t.lock().unwrap().push(reactor::now());
                PollStatus::Busy
            });
            start
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    rt.shutdown().unwrap();
    let times = times.lock().unwrap();
    // About 20 runs expected; fewer when starved, never many more.
    assert!(
        (5..=21).contains(&times.len()),
        "{} runs in 400 ms of a 20 ms poller",
        times.len()
    );
    for (k, t) in times.iter().enumerate() {
        assert!(
            *t >= start + period * (k as u32 + 1),
            "run {k} at {t:?}, before its deadline"
        );
    }
}

/// Active pollers run every iteration; pause, resume and unregister work
/// from outside and from inside the poller itself; counts follow.
#[test]
fn pause_resume_unregister() {
    let sim = SimRuntime::new(1);
    let a = Rc::new(Cell::new(0u32));
    let b = Rc::new(Cell::new(0u32));
    let (ac, bc) = (a.clone(), b.clone());
    let (pa, _pb) = sim.enter(0, move || {
        let pa = reactor::register_poller("a", move || {
            ac.set(ac.get() + 1);
            PollStatus::Idle
        });
        // b pauses itself on its 3rd run and unregisters itself on its 5th.
        let pb = reactor::register_poller("b", move || {
            bc.set(bc.get() + 1);
            let me = reactor::current_poller().unwrap();
            assert_eq!(me.name(), "b");
            match bc.get() {
                3 => me.pause(),
                5 => me.unregister(),
                _ => {}
            }
            PollStatus::Busy
        });
        (pa, pb)
    });
    for _ in 0..5 {
        sim.poll(0);
    }
    assert_eq!((a.get(), b.get()), (5, 3));
    let st = sim.handle().stats(0).unwrap();
    assert_eq!((st.active_pollers, st.paused_pollers), (1, 1));
    pa.pause();
    assert!(pa.is_paused());
    sim.poll(0);
    assert_eq!(a.get(), 5);
    pa.resume();
    sim.poll(0);
    assert_eq!(a.get(), 6);
    pa.unregister();
    assert!(!pa.is_registered());
    sim.poll(0);
    assert_eq!(a.get(), 6);
    let st = sim.handle().stats(0).unwrap();
    assert_eq!((st.active_pollers, st.paused_pollers), (0, 1));
}

#[test]
fn paused_timed_poller_resumes_one_period_later() {
    let sim = SimRuntime::new(1);
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    let p = sim.enter(0, move || {
        reactor::register_timed_poller("t", Duration::from_millis(10), move || {
            r.set(r.get() + 1);
            PollStatus::Idle
        })
    });
    sim.advance(Duration::from_millis(25));
    assert_eq!(runs.get(), 2);
    p.pause();
    sim.advance(Duration::from_millis(50));
    assert_eq!(runs.get(), 2);
    assert_eq!(sim.handle().stats(0).unwrap().paused_pollers, 1);
    p.resume(); // at 75 ms: next run at 85 ms
    sim.advance(Duration::from_millis(9));
    assert_eq!(runs.get(), 2);
    sim.advance(Duration::from_millis(1));
    assert_eq!(runs.get(), 3);
    // Unregistering drops the closure (and what it captured) at once.
    p.unregister();
    assert_eq!(Rc::strong_count(&runs), 1);
}

/// A timed poller that unregisters itself from inside stops and releases
/// its captures.
#[test]
fn timed_poller_unregisters_itself() {
    let sim = SimRuntime::new(1);
    let token = Rc::new(());
    let t = token.clone();
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    sim.enter(0, move || {
        reactor::register_timed_poller("once", Duration::from_millis(1), move || {
            let _keep = &t;
            r.set(r.get() + 1);
            reactor::current_poller().unwrap().unregister();
            PollStatus::Busy
        })
    });
    sim.advance(Duration::from_millis(10));
    assert_eq!(runs.get(), 1);
    assert_eq!(Rc::strong_count(&token), 1);
}

/// Busy and idle time are accounted per iteration: the time until the
/// next iteration counts as busy when the iteration did work.
#[test]
fn busy_and_idle_ticks() {
    let sim = SimRuntime::new(1);
    let busy = Rc::new(Cell::new(true));
    let b = busy.clone();
    sim.enter(0, move || {
        reactor::register_poller("p", move || b.get().into())
    });
    sim.poll(0);
    for _ in 0..10 {
        sim.jump(Duration::from_millis(1));
        sim.poll(0);
    }
    busy.set(false);
    for _ in 0..5 {
        sim.jump(Duration::from_millis(1));
        sim.poll(0);
    }
    let st = sim.handle().stats(0).unwrap();
    assert_eq!(st.busy, 11_000_000, "{st:?}");
    assert_eq!(st.idle, 4_000_000, "{st:?}");
    assert_eq!(st.poller_runs, 16);
    assert_eq!(st.iterations, 16);
    let threads = sim.handle().thread_get_stats();
    assert_eq!(threads[0].name, "reactor_0");
    assert_eq!(threads[0].id, 1);
    assert_eq!(threads[0].active_pollers_count, 1);
    assert_eq!(threads[0].busy, st.busy);
    let reactors = sim.handle().framework_get_reactors();
    assert_eq!(reactors[0].lcore, 0);
    assert_eq!(reactors[0].busy, st.busy);
    assert_eq!(reactors[0].threads.len(), 1);
}
