//! Module tests on the host: the data test on malloc, and the nvme module
//! over the software controller model (data, namespace resize and removal
//! arriving as bdev events).

mod common;

use nvme_driver::blocking::BlockingController;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bdev::modules::{malloc, nvme};
use bdev::{BdevEvent, IoStatus, IoType};
use common::{data_test, on, wait_until};
use dma::{DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::{Controller, ControllerOptions};

#[test]
fn malloc_passes_the_data_test() {
    common::runtime();
    malloc::create("m_data", 2 * 64 * 2048, 512, None).unwrap();
    data_test("m_data", 42);
    malloc::create("m_data4k", 2 * 16 * 1024, 4096, None).unwrap();
    data_test("m_data4k", 43);
    on(0, || async {
        malloc::delete("m_data").await.unwrap();
        malloc::delete("m_data4k").await.unwrap();
    });
}

/// A controller model with `namespaces` (block size, blocks), brought up
/// and attached on core 0 as `name` at `bdf` (with `policy`, else the
/// module's recovery options); the model and the bdev names.
fn attach_model(
    mem: &DmaMemory,
    cfg: SimConfig,
    name: &'static str,
    bdf: &'static str,
    policy: Option<nvme::Recovery>,
) -> (Arc<SimController>, Vec<String>) {
    let sim = Arc::new(SimController::new(mem.clone(), cfg));
    let s2 = sim.clone();
    let names = on(0, move || async move {
        let ctrlr = Controller::with_registers(
            name.to_lowercase(),
            s2,
            &bdev::memory(),
            ControllerOptions::default(),
        )
        .unwrap();
        let bdf = bdf.parse().unwrap();
        match policy {
            Some(p) => nvme::attach_with(name, bdf, ctrlr, p),
            None => nvme::attach(name, bdf, ctrlr),
        }
        .unwrap()
    });
    (sim, names)
}

#[test]
fn nvme_module_over_the_controller_model() {
    common::runtime();
    let mem = DmaMemory::new(DmaConfig::anonymous(512 << 20)).unwrap();
    bdev::set_memory(mem.clone());
    let (sim, names) = attach_model(
        &mem,
        SimConfig {
            namespaces: vec![(512, 65536), (4096, 8192)],
            mdts: 5,
            ..Default::default()
        },
        "Sim0",
        "0000:00:00.0",
        None,
    );
    assert_eq!(names, vec!["Sim0n1", "Sim0n2"]);
    let b = bdev::get("Sim0n1").unwrap();
    assert_eq!(
        (b.block_size(), b.num_blocks(), b.module()),
        (512, 65536, "nvme")
    );
    assert!(b.io_type_supported(IoType::Unmap) && b.io_type_supported(IoType::Compare));
    assert!(
        b.io_type_supported(IoType::Reset),
        "a bdev reset resets the controller"
    );
    assert_eq!(
        b.props().max_transfer_blocks,
        Some(256),
        "128 KiB MDTS in 512-byte blocks"
    );
    data_test("Sim0n1", 7);
    data_test("Sim0n2", 8);
    admin_in_progress_leaves_the_reactor_running(&sim);
    data_test("Sim0n1", 9);
    resets_under_load_lose_nothing();
    nvme::set_bdev_retry_count(0).unwrap();
    reset_with_the_queue_full(&sim);
    nvme::set_bdev_retry_count(3).unwrap();
    // A namespace resize in the controller reaches the bdev and its opener.
    let events: Arc<Mutex<Vec<BdevEvent>>> = Arc::default();
    let e2 = events.clone();
    let desc = on(1, move || async move {
        bdev::open("Sim0n2", false, move |_, e| e2.lock().unwrap().push(e)).unwrap()
    });
    sim.resize_namespace(2, 16384);
    wait_until("the resize event", {
        let events = events.clone();
        move || !events.lock().unwrap().is_empty()
    });
    assert_eq!(
        events.lock().unwrap()[0],
        BdevEvent::Resize {
            old_blocks: 8192,
            new_blocks: 16384
        }
    );
    assert_eq!(bdev::get("Sim0n2").unwrap().num_blocks(), 16384);
    on(1, move || async move {
        let ch = desc.get_io_channel().unwrap();
        read_one(&ch, 16383, 4096).await;
        drop(ch);
        drop(desc);
    });
    // A removed namespace unregisters its bdev.
    sim.remove_namespace(1);
    wait_until("Sim0n1 to go", || bdev::get("Sim0n1").is_none());
    on(0, || async {
        nvme::detach_controller("Sim0").await.unwrap()
    });
    assert!(bdev::get("Sim0n2").is_none());
    a_removed_controller_fails_its_io_and_its_bdevs_go(&mem);
    a_controller_that_does_not_come_back(&mem);
    assert!(nvme::controllers_list().is_empty());
}

/// A bdev reset (the controller's) with more I/O than the queue holds in
/// flight: the device holds every command, the reset hands them all back
/// at once (more than one poll reaps), the ones the queue could not take
/// wait in the layer and are aborted by its freeze: every I/O ends exactly
/// once, aborted, nothing panics, and the bdev works after the reset.
fn reset_with_the_queue_full(sim: &Arc<SimController>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ENDED: AtomicUsize = AtomicUsize::new(0);
    static ABORTED: AtomicUsize = AtomicUsize::new(0);
    static RESET: AtomicUsize = AtomicUsize::new(0);
    fn ended(_: &mut bdev::BdevIo, st: IoStatus) {
        if st == IoStatus::Aborted {
            ABORTED.fetch_add(1, Ordering::SeqCst);
        }
        ENDED.fetch_add(1, Ordering::SeqCst);
    }
    fn reset_done(_: &mut bdev::BdevIo, st: IoStatus) {
        assert_eq!(st, IoStatus::Success, "the reset");
        RESET.fetch_add(1, Ordering::SeqCst);
    }
    const N: usize = 300;
    sim.reserve_held(N);
    sim.hold_io(true);
    let s2 = sim.clone();
    on(0, move || async move {
        let desc = bdev::open("Sim0n1", true, |_: &str, _: BdevEvent| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        for i in 0..N as u64 {
            let buf = bdev::memory().alloc(512, 4096).unwrap();
            ch.read(buf, i, 1, ended, 0).unwrap();
        }
        // The device holds a full queue; the rest waits in the layer.
        let deadline = reactor::now() + Duration::from_secs(10);
        while s2.held() < 200 {
            assert!(reactor::now() < deadline, "the device holds {}", s2.held());
            reactor::yield_now().await;
        }
        assert!(
            s2.held() > REAP_MAX_HINT,
            "more in flight than one poll reaps"
        );
        ch.submit_nodata(IoType::Reset, 0, 0, reset_done, 0)
            .unwrap();
        while ENDED.load(Ordering::SeqCst) < N || RESET.load(Ordering::SeqCst) == 0 {
            assert!(
                reactor::now() < deadline,
                "{} of {N} ended",
                ENDED.load(Ordering::SeqCst)
            );
            reactor::yield_now().await;
        }
        assert_eq!(ABORTED.load(Ordering::SeqCst), N, "every I/O aborted, once");
        // Works after the reset (the device no longer holding I/O).
        s2.hold_io(false);
        read_one(&ch, 0, 512).await;
        drop(ch);
        drop(desc);
    });
    assert_eq!(ENDED.load(Ordering::SeqCst), N, "nothing completed twice");
}

/// An admin command and a controller reset in progress, their commands
/// held by the device: the reactor that owns the controller keeps running
/// its other pollers and answering messages (nothing on it waits), and
/// both finish once the device answers.
fn admin_in_progress_leaves_the_reactor_running(sim: &Arc<SimController>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    static TICKS: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    static FEATURE_DONE: AtomicBool = AtomicBool::new(false);
    static RESET_DONE: AtomicBool = AtomicBool::new(false);
    sim.hold_admin(true);
    on(0, || async {
        drop(reactor::register_poller("ticker", || {
            if STOP.load(Ordering::SeqCst)
                && let Some(p) = reactor::current_poller()
            {
                p.unregister();
            }
            TICKS.fetch_add(1, Ordering::SeqCst);
            reactor::PollStatus::Idle
        }));
        let c = nvme::controllers_list()
            .into_iter()
            .find(|c| c.name() == "Sim0")
            .unwrap();
        let c2 = c.clone();
        drop(reactor::spawn(async move {
            // Ends either way: answered, or aborted by the reset below.
            let _ = c2.admin().unwrap().get_feature(0x06, 0).await;
            FEATURE_DONE.store(true, Ordering::SeqCst);
        }));
        drop(reactor::spawn(async move {
            c.reset().await.unwrap();
            RESET_DONE.store(true, Ordering::SeqCst);
        }));
    });
    let t0 = TICKS.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let t1 = TICKS.load(Ordering::SeqCst);
    assert!(
        !RESET_DONE.load(Ordering::SeqCst),
        "the reset waits for the device"
    );
    assert!(
        t1 - t0 > 100,
        "core 0's other poller ran {} times in 200 ms while admin commands waited",
        t1 - t0
    );
    assert_eq!(on(0, || async { 42 }), 42, "core 0 answers messages");
    sim.hold_admin(false);
    let s2 = sim.clone();
    wait_until("the reset and the admin command to finish", move || {
        s2.release_held();
        RESET_DONE.load(Ordering::SeqCst) && FEATURE_DONE.load(Ordering::SeqCst)
    });
    STOP.store(true, Ordering::SeqCst);
}

/// SPDK's reconnect policy on a controller whose resets fail
/// (`ctrlr_loss_timeout_sec` 4, `reconnect_delay_sec` 1,
/// `fast_io_fail_timeout_sec` 2): I/O waits while it is retried and
/// completes once a reconnect succeeds; in a second outage I/O fails once
/// the fast-fail time passed, and the controller is deleted (its bdev
/// unregistered, its opener told) once the loss time passed.
fn a_controller_that_does_not_come_back(mem: &DmaMemory) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    static OK: AtomicUsize = AtomicUsize::new(0);
    static FAILED: AtomicUsize = AtomicUsize::new(0);
    static SUBMIT: AtomicUsize = AtomicUsize::new(0);
    static REMOVED: AtomicBool = AtomicBool::new(false);
    static CLOSED: AtomicBool = AtomicBool::new(false);
    fn ended(_: &mut bdev::BdevIo, st: IoStatus) {
        match st {
            IoStatus::Success => OK.fetch_add(1, Ordering::SeqCst),
            IoStatus::Failed => FAILED.fetch_add(1, Ordering::SeqCst),
            other => panic!("unexpected {other:?}"),
        };
    }
    let policy = nvme::Recovery {
        ctrlr_loss_timeout_sec: 4,
        reconnect_delay_sec: 1,
        fast_io_fail_timeout_sec: 2,
    };
    let one_ns = SimConfig {
        namespaces: vec![(512, 8192)],
        ..Default::default()
    };
    let (sim, _) = attach_model(mem, one_ns, "SimL", "0000:00:02.0", Some(policy));
    let ctrlr = || nvme::controller("SimL");
    // The opener on core 1 reads one block per SUBMIT step and closes on
    // Remove.
    on(1, || async {
        drop(reactor::spawn(async {
            let desc = bdev::open("SimLn1", true, |_, e| {
                if e == BdevEvent::Remove {
                    REMOVED.store(true, Ordering::SeqCst);
                }
            })
            .unwrap();
            let ch = desc.get_io_channel().unwrap();
            let mut n = 0;
            while !REMOVED.load(Ordering::SeqCst) {
                while n < SUBMIT.load(Ordering::SeqCst) {
                    let buf = bdev::memory().alloc(512, 4096).unwrap();
                    ch.read(buf, n as u64, 1, ended, 0).unwrap();
                    n += 1;
                }
                reactor::sleep(Duration::from_millis(1)).await;
            }
            drop(ch);
            drop(desc);
            CLOSED.store(true, Ordering::SeqCst);
        }));
    });
    // First outage: the reset fails; I/O waits; the device comes back.
    sim.refuse_enable(true);
    let c = ctrlr().unwrap();
    let c2 = c.clone();
    let e = on(0, move || async move {
        c2.reset().await.unwrap_err().to_string()
    });
    assert!(e.contains("fatal"), "{e}");
    SUBMIT.store(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (OK.load(Ordering::SeqCst), FAILED.load(Ordering::SeqCst)),
        (0, 0),
        "the read waits for a reconnect"
    );
    assert_eq!(c.state_name(), "reconnect_is_delayed");
    sim.refuse_enable(false);
    wait_until("the read after the reconnect", || {
        OK.load(Ordering::SeqCst) == 1
    });
    assert_eq!(c.state_name(), "enabled");
    // Second outage: past fast_io_fail_timeout_sec the I/O fails; past
    // ctrlr_loss_timeout_sec the controller is deleted.
    sim.refuse_enable(true);
    let c2 = c.clone();
    let start = std::time::Instant::now();
    assert!(on(0, move || async move { c2.reset().await.is_err() }));
    SUBMIT.store(2, Ordering::SeqCst);
    wait_until("the read to fail fast", || {
        FAILED.load(Ordering::SeqCst) == 1
    });
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(1800),
        "failed after {t:?}, before fast_io_fail_timeout_sec"
    );
    drop(c);
    wait_until("the controller to be deleted", || {
        CLOSED.load(Ordering::SeqCst)
            && bdev::get("SimLn1").is_none()
            && !nvme::controllers_list().iter().any(|c| c.name() == "SimL")
    });
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(3800),
        "deleted after {t:?}, before ctrlr_loss_timeout_sec"
    );
    assert_eq!(OK.load(Ordering::SeqCst), 1);
}

/// The nvme bdev reaps at most this many completions per poll.
const REAP_MAX_HINT: usize = 64;

/// Reads block `lba` (of `bs` bytes) and expects success.
async fn read_one(ch: &bdev::BdevChannel, lba: u64, bs: usize) {
    let buf = bdev::memory().alloc(bs, 4096).unwrap();
    let (st, _) = ch.io(IoType::Read, Some(buf), lba, 1, false).await.unwrap();
    assert_eq!(st, IoStatus::Success, "read of block {lba}");
}

/// Five controller resets (as `bdev_nvme_reset_controller` does them) while
/// 64 I/Os at a time run: with the default retry count, every I/O the
/// resets took from the controller is submitted again, none fails, none
/// completes twice.
fn resets_under_load_lose_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static OK: AtomicUsize = AtomicUsize::new(0);
    static FAILED: AtomicUsize = AtomicUsize::new(0);
    static RETRIED: AtomicUsize = AtomicUsize::new(0);
    fn one(io: &mut bdev::BdevIo, st: IoStatus) {
        if st == IoStatus::Success {
            OK.fetch_add(1, Ordering::SeqCst);
        } else {
            FAILED.fetch_add(1, Ordering::SeqCst);
        }
        if io.retries() > 0 {
            RETRIED.fetch_add(1, Ordering::SeqCst);
        }
    }
    assert_eq!(nvme::bdev_retry_count(), 3, "SPDK's default");
    const DEPTH: usize = 64;
    on(0, || async {
        let desc = bdev::open("Sim0n1", true, |_: &str, _: BdevEvent| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let ctrlr = nvme::controllers_list()
            .into_iter()
            .find(|c| c.name() == "Sim0")
            .unwrap();
        let mut submitted = 0usize;
        let mut resets = 0;
        let deadline = reactor::now() + Duration::from_secs(30);
        while resets < 5 || OK.load(Ordering::SeqCst) + FAILED.load(Ordering::SeqCst) < submitted {
            while resets < 5
                && submitted - OK.load(Ordering::SeqCst) - FAILED.load(Ordering::SeqCst) < DEPTH
            {
                let buf = bdev::memory().alloc(512, 4096).unwrap();
                ch.read(buf, (submitted % 4096) as u64, 1, one, 0).unwrap();
                submitted += 1;
            }
            if resets < 5 && submitted >= (resets + 1) * 500 {
                // At once: the reset takes the I/O in the controller's
                // hands (an orderly reset would let it complete first).
                ctrlr.reset_with_drain(None).await.unwrap();
                resets += 1;
            }
            assert!(reactor::now() < deadline, "stuck");
            reactor::yield_now().await;
        }
        assert_eq!(FAILED.load(Ordering::SeqCst), 0, "no I/O failed");
        assert_eq!(OK.load(Ordering::SeqCst), submitted, "each completed once");
        assert!(
            RETRIED.load(Ordering::SeqCst) > 0,
            "the resets took I/O from the controller"
        );
        println!(
            "{submitted} reads, 5 resets, {} retried",
            RETRIED.load(Ordering::SeqCst)
        );
        drop(ch);
        drop(desc);
    });
}

/// Surprise removal (every register reads all-ones): the I/O in flight
/// fails fast, every opener gets Remove, the bdevs and the controller go,
/// and nothing panics.
fn a_removed_controller_fails_its_io_and_its_bdevs_go(mem: &DmaMemory) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static FAILED: AtomicUsize = AtomicUsize::new(0);
    fn ended(_: &mut bdev::BdevIo, st: IoStatus) {
        assert_eq!(st, IoStatus::Failed, "an I/O of a removed controller");
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    let one_ns = SimConfig {
        namespaces: vec![(512, 8192)],
        ..Default::default()
    };
    let (sim, _) = attach_model(mem, one_ns, "SimR", "0000:00:01.0", None);
    let removed = Arc::new(AtomicUsize::new(0));
    let holder: Arc<Mutex<Option<bdev::Desc>>> = Arc::default();
    let (r2, h2) = (removed.clone(), holder.clone());
    sim.hold_io(true);
    on(1, move || async move {
        let (r3, h3) = (r2.clone(), h2.clone());
        let desc = bdev::open("SimRn1", true, move |_, e| {
            if e == BdevEvent::Remove {
                r3.fetch_add(1, Ordering::SeqCst);
                h3.lock().unwrap().take();
            }
        })
        .unwrap();
        let ch = desc.get_io_channel().unwrap();
        *h2.lock().unwrap() = Some(desc);
        for i in 0..8 {
            ch.read(bdev::memory().alloc(512, 4096).unwrap(), i, 1, ended, 0)
                .unwrap();
        }
        // The channel goes once its I/O has ended.
        drop(reactor::spawn(async move {
            while FAILED.load(Ordering::SeqCst) < 8 {
                reactor::yield_now().await;
            }
            drop(ch);
        }));
    });
    let s2 = sim.clone();
    wait_until("the device to hold the 8 reads", move || s2.held() == 8);
    sim.set_removed(true);
    wait_until("the I/O in flight to fail", || {
        FAILED.load(Ordering::SeqCst) == 8
    });
    wait_until("the bdev and the controller to go", || {
        bdev::get("SimRn1").is_none()
            && !nvme::controllers_list().iter().any(|c| c.name() == "SimR")
    });
    assert_eq!(removed.load(Ordering::SeqCst), 1, "its opener got Remove");
    assert!(holder.lock().unwrap().is_none());
}
