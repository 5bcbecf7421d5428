//! nvme-perf's hot loop allocates nothing: a counting global allocator
//! watches `Worker::poll` (reaping, latency recording, verify checks,
//! choosing offsets, filling patterns, submitting, the doorbell). The device
//! model's own work is kept outside the counted windows by holding commands
//! and releasing them in between.

use nvme_driver::blocking::BlockingController;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use dma::{DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::{Controller, ControllerOptions};
use perf::clock::Clock;
use perf::nvme::engine::{Window, Worker, WorkerParams};

#[global_allocator]
static ALLOC: testkit::CountingAlloc = testkit::CountingAlloc;

/// Heap calls (allocations and frees) this thread made while `f` ran.
fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let (r, n) = testkit::counted(f);
    (r, n.total())
}

#[test]
fn the_poll_loop_allocates_nothing() {
    // The counter works: a Vec is one allocation and one free.
    assert_eq!(counted(|| drop(std::hint::black_box(vec![1u8]))).1, 2);
    for (verify, random, clock) in [
        (false, true, Clock::os()),
        (
            true,
            true,
            Clock::choose(perf::clock::ClockChoice::Auto).unwrap(),
        ),
        (true, false, Clock::os()),
    ] {
        let mem = DmaMemory::new(DmaConfig::anonymous(64 << 20)).unwrap();
        let sim = Arc::new(SimController::new(
            mem.clone(),
            SimConfig {
                namespaces: vec![(512, 4096)],
                ..SimConfig::default()
            },
        ));
        let ctrlr = Controller::with_registers(
            "sim0".into(),
            sim.clone(),
            &mem,
            ControllerOptions::default(),
        )
        .unwrap();
        let qp = ctrlr.connect_io_qpair::<u32>(16).unwrap();
        let p = WorkerParams {
            nsid: 1,
            block_size: 512,
            io_size: 4096,
            depth: 16,
            read_percent: 50,
            random,
            verify,
            first_unit: 0,
            units: 256,
            seed: 3,
            io_limit: None,
        };
        let mut w = Worker::new(qp, &mem, "sim0".into(), 0, p, clock, 9).unwrap();
        sim.reserve_held(64);
        sim.hold_io(true);
        let stop = AtomicBool::new(false);
        let now = clock.now();
        w.start(Window {
            start: now,
            end: now + clock.ns_to_ticks(3_600_000_000_000),
        });
        let mut allocations = 0;
        for _ in 0..500 {
            sim.release_held();
            let (running, n) = counted(|| w.poll(&stop));
            assert!(running);
            allocations += n;
        }
        let [ios, reads, writes, errors, verified, mismatches] = w.counts();
        assert!(ios >= 16 * 400, "{ios}");
        assert!(reads > 0 && writes > 0);
        assert_eq!((errors, mismatches), (0, 0));
        assert_eq!(verified > 0, verify);
        assert_eq!(
            allocations, 0,
            "verify {verify}, random {random}: allocations in the poll loop"
        );
    }
}
