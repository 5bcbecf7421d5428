//! Starting runtimes: core masks, pinning, more reactors than cores,
//! shutdown requests, statistics.

mod common;

use std::time::Duration;

use reactor::{CpuSet, Error, Runtime};

#[test]
fn bad_mask_is_an_error_naming_the_text() {
    match Runtime::start("0xfoo") {
        Err(Error::InvalidCoreMask { text, .. }) => assert_eq!(text, "0xfoo"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pinning_to_a_missing_core_is_a_clear_error() {
    match Runtime::start("[1000]") {
        Err(e @ Error::CoreUnavailable { core: 1000, .. }) => {
            assert!(e.to_string().contains("core 1000"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unpinned_runtime_may_have_more_reactors_than_cores() {
    let rt = Runtime::builder(CpuSet::parse("[0-5]").unwrap())
        .pin(false)
        .start()
        .unwrap();
    assert_eq!(rt.cores(), &[0, 1, 2, 3, 4, 5]);
    for core in 0..6 {
        assert_eq!(rt.run_on(core, reactor::current_core).unwrap(), Some(core));
    }
    assert!(matches!(
        rt.run_on(6, || ()),
        Err(Error::NoSuchCore { core: 6, .. })
    ));
    rt.shutdown().unwrap();
}

#[test]
fn pinned_runtime_on_cores_0_and_1() {
    let rt = common::two_cores(1024);
    let h = rt.handle();
    for core in [0, 1] {
        assert_eq!(rt.run_on(core, reactor::current_core).unwrap(), Some(core));
    }
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n = names.clone();
    rt.run_on(1, move || {
        n.lock()
            .unwrap()
            .push(std::thread::current().name().map(str::to_string))
    })
    .unwrap();
    assert_eq!(names.lock().unwrap()[0].as_deref(), Some("reactor_1"));
    // Figures are published at the end of each iteration.
    assert!(common::wait_for(Duration::from_secs(10), || h.all_stats()
        [1]
    .messages_run
        >= 2));
    assert_eq!(h.all_stats().len(), 2);
    let reactors = h.framework_get_reactors();
    assert_eq!(
        reactors.iter().map(|r| r.lcore).collect::<Vec<_>>(),
        vec![0, 1]
    );
    rt.shutdown().unwrap();
}

/// `request_shutdown` from a reactor wakes `Runtime::wait`.
#[test]
fn wait_returns_after_request_shutdown() {
    let rt = common::two_cores(1024);
    rt.send(1, || {
        reactor::register_timed_poller("stop", Duration::from_millis(10), || {
            reactor::request_shutdown();
            reactor::PollStatus::Busy
        });
    })
    .unwrap();
    rt.wait().unwrap();
}

/// A poller that sends forever keeps the work from draining: shutdown gives
/// up after the configured time and says so.
#[test]
fn endless_work_hits_the_drain_timeout() {
    let rt = Runtime::builder(CpuSet::parse("0x3").unwrap())
        .pin(false)
        .drain_timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    rt.run_on(0, || {
        reactor::register_poller("chatter", || {
            let _ = reactor::send(1, || ());
            reactor::PollStatus::Busy
        });
    })
    .unwrap();
    match rt.shutdown() {
        Err(Error::DrainTimeout { timeout }) => assert_eq!(timeout, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
}
