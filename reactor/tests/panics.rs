//! A panic inside a message, poller or task is reported with its core and
//! never hangs the runtime.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{two_cores, wait_for};
use reactor::{Error, PollStatus, SimRuntime};

fn quiet_panics() {
    // Keep the expected panics (on reactors and simulated ones, whose
    // messages contain "broke" or "boom") out of the test output.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string();
            if !(text.contains("broke") || text.contains("boom")) {
                default(info);
            }
        }));
    });
}

#[test]
fn panicking_message_is_reported_and_the_reactor_goes_on() {
    quiet_panics();
    let rt = two_cores(1024);
    let ran = Arc::new(AtomicUsize::new(0));
    rt.send(1, || panic!("boom in a message")).unwrap();
    for _ in 0..10 {
        let ran = ran.clone();
        rt.send(1, move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    assert!(wait_for(Duration::from_secs(10), || ran
        .load(Ordering::SeqCst)
        == 10));
    // A remote call whose closure panics resolves to Canceled, not a hang.
    let r = rt.run_on(1, || -> u32 { panic!("boom in a call") });
    assert!(matches!(r, Err(Error::Canceled { core: 1 })), "{r:?}");
    // The waiter is woken while the panic unwinds, just before the reactor
    // records it: give the record a moment.
    assert!(wait_for(Duration::from_secs(10), || rt
        .handle()
        .panics()
        .len()
        == 2));
    let panics = rt.handle().panics();
    assert_eq!(panics[0].core, 1);
    assert_eq!(panics[0].what, "message");
    assert_eq!(panics[0].message, "boom in a message");
    match rt.shutdown() {
        Err(Error::Panicked {
            core: 1,
            what,
            message,
        }) => {
            assert_eq!(what, "message");
            assert_eq!(message, "boom in a message");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn panicking_poller_is_unregistered_and_reported() {
    quiet_panics();
    let sim = SimRuntime::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let other = Arc::new(AtomicUsize::new(0));
    let o = other.clone();
    let p = sim.enter(0, move || {
        reactor::register_poller("steady", move || {
            o.fetch_add(1, Ordering::SeqCst);
            PollStatus::Idle
        });
        reactor::register_poller("faulty", move || {
            if r.fetch_add(1, Ordering::SeqCst) == 2 {
                panic!("poller broke");
            }
            PollStatus::Idle
        })
    });
    for _ in 0..6 {
        sim.poll(0);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(!p.is_registered());
    assert_eq!(other.load(Ordering::SeqCst), 6);
    let err = sim.shutdown().unwrap_err();
    assert_eq!(
        err.to_string(),
        "poller faulty panicked on core 0: poller broke"
    );
}

#[test]
fn panicking_task_cancels_its_join_handle() {
    quiet_panics();
    let sim = SimRuntime::new(2);
    let r = sim.block_on(0, async {
        let h = reactor::spawn_on(1, || async {
            reactor::sleep(Duration::from_millis(5)).await;
            panic!("task broke");
        });
        h.await
    });
    assert!(matches!(r, Ok(Err(Error::Canceled { core: 1 }))), "{r:?}");
    let p = &sim.handle().panics()[0];
    assert_eq!((p.core, p.what.as_str()), (1, "task"));
}
