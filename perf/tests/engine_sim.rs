//! nvme-perf's engine against the driver's software controller model: I/O
//! counts, the read/write mix, the share of the namespace a worker uses,
//! verify mode (including a block corrupted behind the worker's back through
//! a second queue pair), errors, and the measured window.

use nvme_driver::blocking::BlockingController;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dma::{DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::spec::io_opcode;
use nvme_driver::{CommandError, Controller, ControllerOptions, IoQpair};
use perf::clock::Clock;
use perf::nvme::engine::{Window, Worker, WorkerParams};
use perf::pattern;

struct Rig {
    mem: DmaMemory,
    sim: Arc<SimController>,
    ctrlr: Controller,
}

/// Namespace 1: 512-byte blocks, 1 MiB; namespace 2: 4096-byte blocks, 1 MiB.
fn rig() -> Rig {
    let mem = DmaMemory::new(DmaConfig::anonymous(128 << 20)).unwrap();
    let sim = Arc::new(SimController::new(
        mem.clone(),
        SimConfig {
            namespaces: vec![(512, 2048), (4096, 256)],
            ..SimConfig::default()
        },
    ));
    let ctrlr = Controller::with_registers(
        "sim0".into(),
        sim.clone(),
        &mem,
        ControllerOptions {
            admin_timeout: Duration::from_secs(2),
            ..ControllerOptions::default()
        },
    )
    .unwrap();
    Rig { mem, sim, ctrlr }
}

fn params(nsid: u32, block_size: u32) -> WorkerParams {
    WorkerParams {
        nsid,
        block_size,
        io_size: 4096,
        depth: 8,
        read_percent: 100,
        random: true,
        verify: false,
        first_unit: 0,
        units: 1 << 20 >> 12, // the whole 1 MiB namespace in 4 KiB units
        seed: 7,
        io_limit: Some(2000),
    }
}

fn worker(r: &Rig, p: WorkerParams) -> Worker {
    let qp = r.ctrlr.connect_io_qpair::<u32>(p.depth).unwrap();
    Worker::new(qp, &r.mem, "sim0".into(), 0, p, Clock::os(), 42).unwrap()
}

/// Polls until the worker is done; panics if it never is.
fn run_to_end(w: &mut Worker) {
    let stop = AtomicBool::new(false);
    for _ in 0..10_000_000 {
        if !w.poll(&stop) {
            return;
        }
    }
    panic!("worker never finished ({} outstanding)", w.outstanding());
}

#[test]
fn random_reads_run_to_the_limit_and_count_every_io() {
    let r = rig();
    let mut w = worker(&r, params(1, 512));
    w.start(Window::ALL);
    run_to_end(&mut w);
    assert_eq!(w.outstanding(), 0);
    let [ios, reads, writes, errors, verified, mismatches] = w.counts();
    assert_eq!((ios, reads, writes), (2000, 2000, 0));
    assert_eq!((errors, verified, mismatches), (0, 0, 0));
    assert_eq!(r.sim.command_count(false, io_opcode::READ), 2000);
    assert_eq!(r.sim.command_count(false, io_opcode::WRITE), 0);
    let (res, fatal) = w.into_result();
    assert!(fatal.is_none());
    assert_eq!(res.latency.count(), 2000);
    assert!(res.latency.min_ns() <= res.latency.max_ns());
    assert_eq!(res.io_size, 4096);
    assert!(res.batches > 0 && res.batches <= 2000);
}

#[test]
fn the_mix_follows_the_read_percentage() {
    let r = rig();
    let mut w = worker(
        &r,
        WorkerParams {
            read_percent: 70,
            io_limit: Some(20_000),
            ..params(2, 4096)
        },
    );
    w.start(Window::ALL);
    run_to_end(&mut w);
    let [ios, reads, writes, ..] = w.counts();
    assert_eq!(ios, 20_000);
    assert_eq!(reads + writes, ios);
    let share = reads as f64 / ios as f64;
    assert!((0.68..0.72).contains(&share), "read share {share}");
    assert_eq!(r.sim.command_count(false, io_opcode::WRITE), writes);
}

/// Sequential writes (verify patterns, so the media says which LBA got
/// what) cover exactly the worker's share: units 10..26 of namespace 1.
#[test]
fn sequential_writes_cover_exactly_the_share() {
    let r = rig();
    let p = WorkerParams {
        read_percent: 0,
        random: false,
        verify: true,
        first_unit: 10,
        units: 16,
        depth: 4,
        io_limit: Some(16),
        ..params(1, 512)
    };
    let mut w = worker(&r, p);
    w.start(Window::ALL);
    run_to_end(&mut w);
    assert_eq!(w.counts()[2], 16, "16 writes");
    let media = r.sim.read_media(1, 0, 1 << 20);
    for lba in 0..2048u64 {
        let block = &media[lba as usize * 512..][..512];
        let word0 = u64::from_le_bytes(block[..8].try_into().unwrap());
        let inside = (80..208).contains(&lba); // units 10..26 x 8 blocks
        if inside {
            assert_eq!(word0, lba, "LBA {lba} carries its own address");
        } else {
            assert!(
                block.iter().all(|&b| b == 0),
                "LBA {lba} outside the share was written"
            );
        }
    }
    for u in 0..16 {
        let (generation, busy) = w.unit_state(u).unwrap();
        assert!(generation > 0 && !busy, "unit {u}");
        assert_eq!(w.unit_lba(u), (10 + u) * 8);
    }
}

#[test]
fn verify_passes_on_a_healthy_device() {
    let r = rig();
    for (nsid, bs) in [(1, 512), (2, 4096)] {
        let mut w = worker(
            &r,
            WorkerParams {
                read_percent: 50,
                verify: true,
                units: 64,
                io_limit: Some(10_000),
                ..params(nsid, bs)
            },
        );
        w.start(Window::ALL);
        run_to_end(&mut w);
        let [ios, reads, writes, errors, verified, mismatches] = w.counts();
        assert_eq!(ios, 10_000);
        assert_eq!((errors, mismatches), (0, 0), "ns {nsid}");
        assert!(
            reads > 3000 && writes > 3000,
            "ns {nsid}: {reads} reads {writes} writes"
        );
        assert_eq!(verified, reads, "every read was checked");
        assert!(w.first_mismatch().is_none());
    }
}

/// On a share mostly never written, random reads still follow -M: they aim
/// at units already written.
#[test]
fn verify_reads_follow_the_mix() {
    let r = rig();
    let mut w = worker(
        &r,
        WorkerParams {
            read_percent: 70,
            verify: true,
            io_limit: Some(5_000),
            ..params(1, 512)
        },
    );
    w.start(Window::ALL);
    run_to_end(&mut w);
    let [ios, reads, _, _, verified, mismatches] = w.counts();
    let share = reads as f64 / ios as f64;
    assert!(share > 0.66, "read share {share}");
    assert_eq!((verified, mismatches), (reads, 0));
}

/// Writes `byte` over `blocks` blocks at `lba` through `qp` (a second
/// queue pair: behind the worker's back).
fn corrupt(r: &Rig, qp: &mut IoQpair<u32>, nsid: u32, lba: u64, blocks: u64, block_size: usize) {
    let mut buf = r.mem.alloc(blocks as usize * block_size, 4096).unwrap();
    buf.fill(0xA5);
    qp.write(nsid, lba, blocks, &[(buf.iova(), buf.len())], false, 99)
        .unwrap();
    let mut done: Vec<(u32, Result<u32, CommandError>)> = Vec::new();
    while qp.outstanding() > 0 {
        qp.process_completions(8, |c, res| done.push((c, res)));
    }
    assert!(matches!(done.as_slice(), [(99, Ok(_))]), "{done:?}");
}

/// Every unit is written once (with -M 100 a read of an unwritten unit
/// becomes a write), then only read; one 512-byte block of unit 7 is then
/// overwritten through a second queue pair and the worker's next read of
/// that unit reports it, at the right LBA.
#[test]
fn verify_catches_a_block_corrupted_behind_its_back() {
    let r = rig();
    let mut w = worker(
        &r,
        WorkerParams {
            read_percent: 100,
            verify: true,
            units: 32,
            depth: 4,
            io_limit: None,
            ..params(1, 512)
        },
    );
    let stop = AtomicBool::new(false);
    w.start(Window::ALL);
    let all_written = |w: &Worker| (0..32).all(|u| w.unit_state(u).unwrap().0 > 0);
    for _ in 0..100_000 {
        if all_written(&w) {
            break;
        }
        assert!(w.poll(&stop));
    }
    assert!(all_written(&w), "every unit written");
    assert_eq!(w.counts()[5], 0, "no mismatch before the corruption");
    let mut other = r.ctrlr.connect_io_qpair::<u32>(4).unwrap();
    let target = w.unit_lba(7) + 2;
    corrupt(&r, &mut other, 1, target, 1, 512);
    for _ in 0..1_000_000 {
        assert!(w.poll(&stop));
        if w.counts()[5] > 0 {
            break;
        }
    }
    let m = w.first_mismatch().expect("the corrupted block was caught");
    assert_eq!(m.lba, target);
    assert_eq!(m.offset, 0, "its first word (the LBA) already differs");
    assert_eq!(m.found, 0xA5A5_A5A5_A5A5_A5A5);
    assert_eq!(m.expected, target);
    // The worker goes on (every mismatch is counted) and stops cleanly.
    w.stop();
    run_to_end(&mut w);
    let (res, fatal) = w.into_result();
    assert!(fatal.is_none());
    assert!(res.mismatches >= 1);
    assert!(res.verified > res.mismatches);
    // The same pattern module agrees: the rest of that unit is intact.
    let media = r.sim.read_media(1, (target as usize + 1) * 512, 512);
    assert!(
        pattern::check(&media, 512, target + 1, 0).is_err(),
        "tags are per run"
    );
}

#[test]
fn failed_ios_are_counted_and_the_run_ends() {
    let r = rig();
    let mut w = worker(
        &r,
        WorkerParams {
            io_limit: Some(400),
            ..params(2, 4096)
        },
    );
    let stop = AtomicBool::new(false);
    w.start(Window::ALL);
    while w.counts()[0] < 100 {
        assert!(w.poll(&stop));
    }
    // The namespace goes away under the worker: the model fails every
    // command to it from now on.
    r.sim.remove_namespace(2);
    run_to_end(&mut w);
    let [ios, _, _, errors, ..] = w.counts();
    assert!(ios >= 100);
    assert!(errors > 0);
    assert_eq!(ios + errors, 400, "every I/O completed once, well or not");
    let (res, _) = w.into_result();
    assert_eq!(res.errors, errors);
}

/// With a real clock: only completions inside the window count, the window
/// length is what is reported, and outstanding I/Os are drained at the end.
#[test]
fn the_window_bounds_what_is_measured() {
    let r = rig();
    let clock = Clock::os();
    let qp = r.ctrlr.connect_io_qpair::<u32>(8).unwrap();
    let p = WorkerParams {
        io_limit: None,
        ..params(1, 512)
    };
    let mut w = Worker::new(qp, &r.mem, "sim0".into(), 3, p, clock, 1).unwrap();
    let now = clock.now();
    let window = Window {
        start: now + clock.ns_to_ticks(20_000_000),
        end: now + clock.ns_to_ticks(120_000_000),
    };
    w.start(window);
    run_to_end(&mut w);
    assert_eq!(w.outstanding(), 0);
    let (res, fatal) = w.into_result();
    assert!(fatal.is_none());
    assert_eq!(res.core, 3);
    assert_eq!(res.elapsed_ns, 100_000_000);
    assert!(res.ios > 0);
    assert_eq!(res.latency.count(), res.ios);
    // More I/Os were done than counted: the warm-up ones.
    assert!(r.sim.command_count(false, io_opcode::READ) > res.ios);
}

#[test]
fn bad_parameters_are_refused() {
    let r = rig();
    let qp = r.ctrlr.connect_io_qpair::<u32>(8).unwrap();
    let e = Worker::new(
        qp,
        &r.mem,
        "sim0".into(),
        0,
        WorkerParams {
            io_size: 1000,
            ..params(1, 512)
        },
        Clock::os(),
        0,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("not a multiple of the block size 512"),
        "{e}"
    );
    let qp = r.ctrlr.connect_io_qpair::<u32>(8).unwrap();
    let e = Worker::new(
        qp,
        &r.mem,
        "sim0".into(),
        0,
        WorkerParams {
            verify: true,
            units: 8,
            ..params(1, 512)
        },
        Clock::os(),
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("verify needs more units"), "{e}");
}

/// An early stop (SIGINT) ends the window there: I/Os completing while the
/// worker drains are not counted, and the reported time is the time run.
#[test]
fn an_early_stop_ends_the_window() {
    let r = rig();
    let clock = Clock::os();
    let qp = r.ctrlr.connect_io_qpair::<u32>(8).unwrap();
    let p = WorkerParams {
        io_limit: None,
        ..params(1, 512)
    };
    let mut w = Worker::new(qp, &r.mem, "sim0".into(), 0, p, clock, 1).unwrap();
    let now = clock.now();
    w.start(Window {
        start: now,
        end: now + clock.ns_to_ticks(60_000_000_000),
    });
    let stop = AtomicBool::new(false);
    while w.counts()[0] < 1000 {
        assert!(w.poll(&stop));
    }
    let counted = w.counts()[0];
    assert!(w.outstanding() > 0);
    w.stop();
    run_to_end(&mut w);
    assert_eq!(w.counts()[0], counted, "drained I/Os are not counted");
    let (res, _) = w.into_result();
    assert!(
        res.elapsed_ns > 0 && res.elapsed_ns < 10_000_000_000,
        "{}",
        res.elapsed_ns
    );
    assert_eq!(res.latency.count(), counted);
}
