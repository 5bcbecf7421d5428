//! The submit and complete paths allocate nothing: a counting global
//! allocator watches the driver's submission (with the doorbell) and its
//! completion reaping. The device model's own work (executing commands) is
//! kept outside the measured windows by holding commands and releasing them
//! in between.

use nvme_driver::blocking::BlockingController;
use std::sync::Arc;

use dma::{DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::{Controller, ControllerOptions, IoQpair};

#[global_allocator]
static ALLOC: testkit::CountingAlloc = testkit::CountingAlloc;

/// Heap calls (allocations and frees) this thread made while `f` ran.
fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let (r, n) = testkit::counted(f);
    (r, n.total())
}

#[test]
fn submit_and_complete_allocate_nothing() {
    let mem = DmaMemory::new(DmaConfig::anonymous(64 << 20)).unwrap();
    let sim = Arc::new(SimController::new(mem.clone(), SimConfig::default()));
    let ctrlr = Controller::with_registers(
        "sim0".into(),
        sim.clone(),
        &mem,
        ControllerOptions::default(),
    )
    .unwrap();
    let mut qp: IoQpair<u64> = ctrlr.connect_io_qpair(64).unwrap();
    let mut cache = mem.cache();
    // Warm up: the cache's first refill and the completion closure's state.
    let mut bufs: Vec<dma::DmaBuf> = (0..64).map(|_| cache.alloc(4096).unwrap()).collect();
    let mut big = mem.alloc(128 * 1024, 4096).unwrap();
    big.fill(1);
    sim.reserve_held(1024);
    let mut completed = 0u64;
    for round in 0..20u64 {
        sim.hold_io(true);
        let (_, n) = counted(|| {
            // 4 KiB reads, a 128 KiB write through a PRP list, a flush.
            for (i, b) in bufs.iter().enumerate().take(60) {
                qp.read(2, i as u64, 1, &[(b.iova(), 4096)], round * 100 + i as u64)
                    .unwrap();
            }
            qp.write(2, 100, 32, &[(big.iova(), 128 * 1024)], false, 99)
                .unwrap();
            qp.write_zeroes(2, 200, 4, false, 98).unwrap();
            qp.flush(2, 97).unwrap();
            qp.ring_doorbell();
        });
        assert_eq!(n, 0, "round {round}: submission allocated {n} times");
        sim.hold_io(false);
        sim.release_held();
        let (k, n) = counted(|| {
            let mut k = 0;
            while qp.outstanding() > 0 {
                k += qp.process_completions(32, |_ctx, r| {
                    assert!(r.is_ok());
                    completed += 1;
                });
            }
            k
        });
        assert_eq!(k, 63);
        assert_eq!(n, 0, "round {round}: completion allocated {n} times");
        // Buffers taken from and returned to the per-core cache: no allocation.
        let (_, n) = counted(|| {
            let b = bufs.pop().unwrap();
            cache.free(b);
            bufs.push(cache.alloc(4096).unwrap());
        });
        assert_eq!(n, 0, "per-core DMA cache allocated {n} times");
    }
    assert_eq!(completed, 20 * 63);
}
