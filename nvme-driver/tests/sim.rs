//! Host tests of the driver against the software controller model: bring-up,
//! data integrity through PRP lists and ring wrap, errors, queue full, reset
//! under load, timeouts, removal, namespace events, admin commands.

use nvme_driver::TimeoutAction;
use nvme_driver::blocking::BlockingController;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dma::{DmaBuf, DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::spec::io_opcode;
use nvme_driver::{
    CommandError, Controller, ControllerOptions, CtrlrState, IoQpair, NsEvent, StatusKind,
    SubmitErrorKind,
};

struct Rig {
    mem: DmaMemory,
    sim: Arc<SimController>,
    ctrlr: Controller,
}

fn rig_with(cfg: SimConfig) -> Rig {
    let mem = DmaMemory::new(DmaConfig::anonymous(256 << 20)).unwrap();
    let sim = Arc::new(SimController::new(mem.clone(), cfg));
    let ctrlr = Controller::with_registers(
        "sim0".into(),
        sim.clone(),
        &mem,
        ControllerOptions {
            admin_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    Rig { mem, sim, ctrlr }
}

fn rig() -> Rig {
    rig_with(SimConfig::default())
}

/// A seeded xorshift generator: tests print the seed they use.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn wait_all<C>(qp: &mut IoQpair<C>, done: &mut Vec<(C, Result<u32, CommandError>)>) {
    for _ in 0..10_000 {
        qp.process_completions(64, |c, r| done.push((c, r)));
        if qp.outstanding() == 0 {
            return;
        }
    }
    panic!("{} commands never completed", qp.outstanding());
}

#[test]
fn bring_up_reports_identity_and_namespaces() {
    let r = rig();
    let id = r.ctrlr.identify();
    assert_eq!(id.serial, "SIM0001");
    assert_eq!(id.model, "rss simulated controller");
    assert_eq!(id.vid, 0x1b36);
    assert!(id.supports_write_zeroes() && id.supports_dsm() && id.supports_compare());
    assert!(id.has_volatile_write_cache());
    let ns: Vec<_> = r
        .ctrlr
        .namespaces()
        .map(|n| (n.nsid, n.block_size, n.blocks))
        .collect();
    assert_eq!(ns, vec![(1, 512, 8192), (2, 4096, 1024)]);
    assert_eq!(r.ctrlr.max_transfer(), 128 * 1024);
    assert_eq!(r.ctrlr.io_queues(), 8);
    assert_eq!(r.ctrlr.state(), CtrlrState::Ready);
    assert_eq!(r.ctrlr.version().to_string(), "1.4.0");
}

/// Writes random patterns at random LBAs with random lengths from buffers
/// misaligned within a page (so PRP lists with offsets), many more I/Os than
/// the queue depth, then reads every block back and checks the media too.
#[test]
fn random_writes_read_back_through_prp_lists_and_ring_wrap() {
    let r = rig();
    let seed = 0x5eed_0001u64 ^ std::process::id() as u64;
    eprintln!("seed {seed:#x}");
    let mut rng = Rng(seed | 1);
    let mut qp: IoQpair<usize> = r.ctrlr.connect_io_qpair(8).unwrap();
    for &(nsid, bs, blocks) in &[(1u32, 512usize, 8192u64), (2, 4096, 1024)] {
        let mut expected = vec![0u8; bs * blocks as usize];
        let mut bufs: Vec<(DmaBuf, usize, u64, usize)> = Vec::new();
        let mut done = Vec::new();
        for i in 0..300usize {
            let max_blocks = (128 * 1024 / bs) as u64;
            let n = 1 + rng.below(max_blocks) as usize;
            let lba = rng.below(blocks - n as u64 + 1);
            let offset = 4 * rng.below(1024) as usize; // dword-aligned, inside a page
            let mut buf = r.mem.alloc(offset + n * bs, 4096).unwrap();
            let data: Vec<u8> = (0..n * bs).map(|_| rng.next() as u8).collect();
            buf.write_at(offset, &data);
            expected[lba as usize * bs..(lba as usize + n) * bs].copy_from_slice(&data);
            let seg = [(buf.iova() + offset as u64, n * bs)];
            let mut ctx = i;
            loop {
                match qp.write(nsid, lba, n as u64, &seg, false, ctx) {
                    Ok(()) => break,
                    Err(e) => {
                        assert_eq!(e.kind, SubmitErrorKind::QueueFull);
                        ctx = e.ctx;
                        qp.process_completions(64, |c, res| done.push((c, res)));
                    }
                }
            }
            bufs.push((buf, offset, lba, n));
        }
        wait_all(&mut qp, &mut done);
        assert_eq!(done.len(), 300);
        assert!(done.iter().all(|(_, res)| res.is_ok()), "{done:?}");
        assert_eq!(r.sim.read_media(nsid, 0, expected.len()), expected);
        // Read everything back in 64 KiB pieces into misaligned buffers.
        let piece = 65536 / bs;
        let mut reads = Vec::new();
        for start in (0..blocks as usize).step_by(piece) {
            let off = 4 * rng.below(1024) as usize;
            let buf = r.mem.alloc(off + piece * bs, 4096).unwrap();
            let seg = [(buf.iova() + off as u64, piece * bs)];
            let mut ctx = start;
            loop {
                match qp.read(nsid, start as u64, piece as u64, &seg, ctx) {
                    Ok(()) => break,
                    Err(e) => {
                        ctx = e.ctx;
                        qp.process_completions(64, |_, res| assert!(res.is_ok()));
                    }
                }
            }
            reads.push((buf, off, start));
        }
        let mut rd = Vec::new();
        wait_all(&mut qp, &mut rd);
        for (buf, off, start) in reads {
            let mut got = vec![0u8; piece * bs];
            buf.read_at(off, &mut got);
            assert_eq!(
                got,
                expected[start * bs..(start + piece) * bs],
                "ns {nsid} lba {start}"
            );
        }
    }
    assert!(
        qp.stats().queue_full > 0,
        "the test must overrun the queue depth"
    );
}

#[test]
fn scatter_gather_segments_land_in_order() {
    let r = rig();
    let mut qp: IoQpair<()> = r.ctrlr.connect_io_qpair(4).unwrap();
    // 12 KiB from three separate pages (the first one at an offset of 3 KiB).
    let mut a = r.mem.alloc(8192, 4096).unwrap();
    let mut b = r.mem.alloc(4096, 4096).unwrap();
    let mut c = r.mem.alloc(4096, 4096).unwrap();
    a.write_at(3072, &[1u8; 1024]);
    b.fill(2);
    c.write_at(0, &[3u8; 4096]);
    let segs = [(a.iova() + 3072, 1024), (b.iova(), 4096), (c.iova(), 3072)];
    qp.write(1, 10, 16, &segs, false, ()).unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    assert!(done[0].1.is_ok());
    let media = r.sim.read_media(1, 10 * 512, 8192);
    assert!(media[..1024].iter().all(|&x| x == 1));
    assert!(media[1024..5120].iter().all(|&x| x == 2));
    assert!(media[5120..].iter().all(|&x| x == 3));
    // A segment that leaves a hole inside a page is refused before submission.
    let bad = [(a.iova(), 1024), (b.iova(), 4096)];
    let e = qp.write(1, 0, 10, &bad, false, ()).unwrap_err();
    assert!(matches!(e.kind, SubmitErrorKind::Prp(_)), "{e}");
}

#[test]
fn doorbell_is_rung_once_per_batch() {
    let r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(32).unwrap();
    let buf = r.mem.alloc(4096 * 16, 4096).unwrap();
    let before = r.sim.doorbell_writes();
    for i in 0..16u32 {
        qp.read(
            1,
            i as u64 * 8,
            8,
            &[(buf.iova() + i as u64 * 4096, 4096)],
            i,
        )
        .unwrap();
    }
    assert_eq!(
        r.sim.doorbell_writes(),
        before,
        "nothing rung before the poll"
    );
    let mut done = Vec::new();
    qp.process_completions(64, |c, res| done.push((c, res)));
    assert_eq!(
        r.sim.doorbell_writes(),
        before + 1,
        "one doorbell for 16 commands"
    );
    wait_all(&mut qp, &mut done);
    assert_eq!(done.len(), 16);
}

#[test]
fn errors_from_the_device_and_from_submission() {
    let r = rig();
    let mut qp: IoQpair<&'static str> = r.ctrlr.connect_io_qpair(8).unwrap();
    let buf = r.mem.alloc(256 * 1024, 4096).unwrap();
    // Past the end: the device answers LBA Out of Range; no crash.
    qp.read(1, 8190, 4, &[(buf.iova(), 2048)], "past end")
        .unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    let (ctx, res) = done.pop().unwrap();
    assert_eq!(ctx, "past end");
    let status = res.unwrap_err().status().unwrap();
    assert_eq!(status.kind(), StatusKind::LbaOutOfRange);
    assert!(status.dnr());
    // Refused before reaching the device, with the context handed back.
    let e = qp
        .read(9, 0, 1, &[(buf.iova(), 512)], "bad ns")
        .unwrap_err();
    assert_eq!(
        (e.kind, e.ctx),
        (SubmitErrorKind::InvalidNamespace(9), "bad ns")
    );
    let e = qp.read(1, 0, 2, &[(buf.iova(), 512)], "short").unwrap_err();
    assert_eq!(
        e.kind,
        SubmitErrorKind::LengthMismatch {
            expected: 1024,
            got: 512
        }
    );
    let e = qp
        .read(1, 0, 512, &[(buf.iova(), 256 * 1024)], "big")
        .unwrap_err();
    assert_eq!(
        e.kind,
        SubmitErrorKind::TooLarge {
            bytes: 256 * 1024,
            max: 128 * 1024
        }
    );
    let e = qp.write_zeroes(1, 0, 0, false, "zero").unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::BadBlockCount(0));
    let e = qp.deallocate(1, &[], "none").unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::BadRangeCount(0));
    // The error names the status.
    assert_eq!(status.to_string(), "LBA Out of Range (SCT 0h, SC 80h, DNR)");
}

#[test]
fn flush_write_zeroes_deallocate_and_compare() {
    let r = rig();
    let mut qp: IoQpair<u8> = r.ctrlr.connect_io_qpair(8).unwrap();
    let mut buf = r.mem.alloc(8 * 4096, 4096).unwrap();
    buf.fill(0xee);
    let seg = [(buf.iova(), 8 * 4096)];
    qp.write(2, 0, 8, &seg, true, 1).unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    qp.flush(2, 2).unwrap();
    qp.compare(2, 0, 8, &seg, 3).unwrap();
    wait_all(&mut qp, &mut done);
    assert!(done.iter().all(|(_, res)| res.is_ok()), "{done:?}");
    done.clear();
    qp.write_zeroes(2, 1, 2, false, 4).unwrap();
    qp.deallocate(2, &[(5, 1), (7, 1)], 5).unwrap();
    wait_all(&mut qp, &mut done);
    assert!(done.iter().all(|(_, res)| res.is_ok()), "{done:?}");
    let media = r.sim.read_media(2, 0, 8 * 4096);
    for blk in 0..8 {
        let zero = matches!(blk, 1 | 2 | 5 | 7);
        let want = if zero { 0 } else { 0xee };
        assert!(
            media[blk * 4096..(blk + 1) * 4096]
                .iter()
                .all(|&x| x == want),
            "block {blk}"
        );
    }
    // Compare against changed media now fails with Compare Failure.
    done.clear();
    qp.compare(2, 0, 8, &seg, 6).unwrap();
    wait_all(&mut qp, &mut done);
    assert_eq!(
        done[0].1.unwrap_err().status().unwrap().kind(),
        StatusKind::CompareFailure
    );
    assert_eq!(r.sim.command_count(false, io_opcode::FLUSH), 1);
}

#[test]
fn queue_full_is_reported_not_blocking() {
    let r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(4).unwrap();
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    for i in 0..4 {
        qp.read(2, 0, 1, &[(buf.iova(), 4096)], i).unwrap();
    }
    let e = qp.read(2, 0, 1, &[(buf.iova(), 4096)], 99).unwrap_err();
    assert_eq!((e.kind, e.ctx), (SubmitErrorKind::QueueFull, 99));
    qp.ring_doorbell();
    assert_eq!(r.sim.held(), 4);
    r.sim.hold_io(false);
    r.sim.release_held();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    let mut ids: Vec<u32> = done.iter().map(|d| d.0).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 5).unwrap();
}

/// A reset while commands are outstanding: each completes exactly once
/// (here as aborted by reset, since the device held them), the queue pair
/// re-creates its queue, and new I/O works.
#[test]
fn reset_under_load_loses_nothing_and_completes_nothing_twice() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(64).unwrap();
    let buf = r.mem.alloc(4096, 4096).unwrap();
    let mut done: Vec<(u32, Result<u32, CommandError>)> = Vec::new();
    // Some complete before the reset, some are held by the device.
    for i in 0..10 {
        qp.read(2, i as u64, 1, &[(buf.iova(), 4096)], i).unwrap();
    }
    wait_all(&mut qp, &mut done);
    r.sim.hold_io(true);
    for i in 10..50 {
        qp.read(2, i as u64, 1, &[(buf.iova(), 4096)], i).unwrap();
    }
    qp.ring_doorbell();
    assert_eq!(r.sim.held(), 40);
    r.sim.hold_io(false);
    r.ctrlr.reset().unwrap();
    assert_eq!(r.ctrlr.resets(), 1);
    // Submissions between the reset and the queue pair's next poll are
    // refused, not lost.
    let e = qp.read(2, 0, 1, &[(buf.iova(), 4096)], 1000).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::Resetting);
    wait_all(&mut qp, &mut done);
    let mut seen = vec![0u32; 50];
    for (c, res) in &done {
        seen[*c as usize] += 1;
        if *c >= 10 {
            assert_eq!(*res, Err(CommandError::AbortedByReset));
        } else {
            assert!(res.is_ok());
        }
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "each command completed exactly once: {seen:?}"
    );
    assert_eq!(qp.stats().reconnects, 1);
    // Usable again.
    done.clear();
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 77).unwrap();
    wait_all(&mut qp, &mut done);
    assert_eq!(done, vec![(77, Ok(0))]);
}

#[test]
fn timed_out_command_is_aborted() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(8).unwrap();
    qp.set_timeout(Some((Duration::from_millis(30), TimeoutAction::Abort)));
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 1).unwrap();
    let mut done = Vec::new();
    let start = std::time::Instant::now();
    while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
        qp.process_completions(16, |c, res| done.push((c, res)));
        r.ctrlr.poll_admin().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].1.unwrap_err().status().unwrap().kind(),
        StatusKind::AbortRequested
    );
    assert_eq!(r.ctrlr.resets(), 0);
}

#[test]
fn command_the_abort_cannot_reach_leads_to_a_reset() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(8).unwrap();
    qp.set_timeout(Some((Duration::from_millis(30), TimeoutAction::Abort)));
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    r.sim.ignore_abort(true);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 1).unwrap();
    let mut done = Vec::new();
    let start = std::time::Instant::now();
    while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
        qp.process_completions(16, |c, res| done.push((c, res)));
        r.ctrlr.poll_admin().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(done, vec![(1, Err(CommandError::AbortedByReset))]);
    assert_eq!(r.ctrlr.resets(), 1);
}

#[test]
fn fatal_status_triggers_a_reset() {
    let mut r = rig();
    r.sim.set_fatal();
    // The poll that sees the fatal status starts the reset; later polls
    // finish it (nothing waits inside one).
    r.ctrlr.poll_admin().unwrap();
    assert_eq!(r.ctrlr.resets(), 1);
    assert_eq!(r.ctrlr.state(), CtrlrState::Resetting);
    let mut polls = 1;
    while r.ctrlr.resets_done() < 1 {
        r.ctrlr.poll_admin().unwrap();
        polls += 1;
        assert!(polls < 10_000, "the reset never ended");
    }
    assert_eq!(r.ctrlr.state(), CtrlrState::Ready);
    let mut qp: IoQpair<()> = r.ctrlr.connect_io_qpair(4).unwrap();
    let buf = r.mem.alloc(512, 4096).unwrap();
    qp.read(1, 0, 1, &[(buf.iova(), 512)], ()).unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    assert!(done[0].1.is_ok());
}

#[test]
fn removed_controller_fails_fast_without_hanging() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(8).unwrap();
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    for i in 0..3 {
        qp.read(2, 0, 1, &[(buf.iova(), 4096)], i).unwrap();
    }
    qp.ring_doorbell();
    r.sim.set_removed(true);
    assert!(matches!(
        r.ctrlr.poll_admin(),
        Err(nvme_driver::NvmeError::Removed { .. })
    ));
    assert_eq!(r.ctrlr.state(), CtrlrState::Removed);
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    assert_eq!(done.len(), 3);
    assert!(
        done.iter()
            .all(|(_, res)| *res == Err(CommandError::ControllerRemoved))
    );
    let e = qp.read(2, 0, 1, &[(buf.iova(), 4096)], 9).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::Removed);
    assert!(r.ctrlr.connect_io_qpair::<()>(4).is_err());
    assert!(r.ctrlr.reset().is_err());
}

#[test]
fn removal_is_noticed_by_a_queue_pair_with_timeouts() {
    let r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(8).unwrap();
    qp.set_timeout(Some((Duration::from_millis(20), TimeoutAction::Abort)));
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 1).unwrap();
    qp.ring_doorbell();
    r.sim.set_removed(true);
    let mut done = Vec::new();
    let start = std::time::Instant::now();
    while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
        qp.process_completions(16, |c, res| done.push((c, res)));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(done, vec![(1, Err(CommandError::ControllerRemoved))]);
}

#[test]
fn namespace_changes_arrive_as_events() {
    let mut r = rig();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    r.ctrlr
        .set_ns_event_handler(Box::new(move |e| sink.lock().unwrap().push(e.clone())));
    r.sim.resize_namespace(1, 16384);
    r.ctrlr.poll_admin().unwrap();
    {
        let ev = events.lock().unwrap();
        assert_eq!(ev.len(), 1, "{ev:?}");
        match &ev[0] {
            NsEvent::Resized { ns, old_blocks } => {
                assert_eq!((ns.nsid, ns.blocks, *old_blocks), (1, 16384, 8192));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(r.ctrlr.namespace(1).unwrap().blocks, 16384);
    // The grown range is usable at once.
    let mut qp: IoQpair<()> = r.ctrlr.connect_io_qpair(4).unwrap();
    let buf = r.mem.alloc(512, 4096).unwrap();
    qp.read(1, 16000, 1, &[(buf.iova(), 512)], ()).unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    assert!(done[0].1.is_ok());
    // Removal of a namespace: event, and I/O to it is refused.
    r.sim.remove_namespace(2);
    r.ctrlr.poll_admin().unwrap();
    assert_eq!(events.lock().unwrap().last(), Some(&NsEvent::Removed(2)));
    let e = qp.read(2, 0, 1, &[(buf.iova(), 512)], ()).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::InvalidNamespace(2));
}

#[test]
fn admin_commands_log_pages_and_features() {
    let mut r = rig();
    let smart = r.ctrlr.smart_log().unwrap();
    assert_eq!(smart.temperature_kelvin(), 300);
    assert_eq!(smart.available_spare, 100);
    assert_eq!(smart.power_cycle_count(), 1);
    assert!(r.ctrlr.error_log().unwrap().is_empty());
    let queues = r.ctrlr.get_feature(0x07, 0).unwrap();
    assert_eq!(queues & 0xffff, 7);
    r.ctrlr.set_feature(0x06, 1).unwrap();
    // An unknown feature is refused with the device's status named.
    let e = r.ctrlr.get_feature(0x7f, 0).unwrap_err().to_string();
    assert!(
        e.contains("Get Features") && e.contains("Invalid Field in Command"),
        "{e}"
    );
    // Every granted queue can be created, one more cannot.
    let qps: Vec<IoQpair<()>> = (0..8)
        .map(|_| r.ctrlr.connect_io_qpair(4).unwrap())
        .collect();
    let e = r.ctrlr.connect_io_qpair::<()>(4).unwrap_err().to_string();
    assert!(e.contains("no free I/O queue"), "{e}");
    drop(qps);
    let _again: IoQpair<()> = r.ctrlr.connect_io_qpair(4).unwrap();
    let e = r
        .ctrlr
        .connect_io_qpair::<()>(5000)
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue depth 5000"), "{e}");
    // Format back to zeroes with 4096-byte blocks on namespace 1.
    let events = r.ctrlr.format_nvm(1, 1).unwrap();
    assert!(matches!(&events[..], [NsEvent::Resized { ns, .. }] if ns.block_size == 4096));
}

#[test]
fn queue_pairs_on_two_threads_at_once() {
    let mut r = rig();
    let qps: Vec<IoQpair<u64>> = (0..2)
        .map(|_| r.ctrlr.connect_io_qpair(16).unwrap())
        .collect();
    let handles: Vec<_> = qps
        .into_iter()
        .enumerate()
        .map(|(t, mut qp)| {
            let mem = r.mem.clone();
            std::thread::spawn(move || {
                // Each thread owns half of namespace 2.
                let base = t as u64 * 512;
                let mut buf = mem.alloc(4096 * 512, 4096).unwrap();
                for b in 0..512u64 {
                    buf.write_at(b as usize * 4096, &[(b as u8) ^ (t as u8 * 0x55); 4096]);
                }
                let mut done = Vec::new();
                for b in 0..512u64 {
                    let seg = [(buf.iova() + b * 4096, 4096)];
                    let mut ctx = b;
                    while let Err(e) = qp.write(2, base + b, 1, &seg, false, ctx) {
                        ctx = e.ctx;
                        qp.process_completions(64, |c, res| done.push((c, res)));
                    }
                }
                wait_all(&mut qp, &mut done);
                assert!(done.iter().all(|d| d.1.is_ok()));
                qp
            })
        })
        .collect();
    let qps: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for t in 0..2usize {
        let media = r.sim.read_media(2, t * 512 * 4096, 512 * 4096);
        for b in 0..512usize {
            assert!(
                media[b * 4096..(b + 1) * 4096]
                    .iter()
                    .all(|&x| x == (b as u8) ^ (t as u8 * 0x55))
            );
        }
    }
    drop(qps);
    r.ctrlr.poll_admin().unwrap();
}

/// A reset with a whole queue (256 commands) in the device's hands: every
/// one comes back aborted by the reset, exactly once, and the queue works
/// after.
#[test]
fn reset_with_256_commands_in_flight() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(256).unwrap();
    let buf = r.mem.alloc(512, 4096).unwrap();
    r.sim.reserve_held(256);
    r.sim.hold_io(true);
    for i in 0..256 {
        qp.read(1, i as u64, 1, &[(buf.iova(), 512)], i).unwrap();
    }
    let e = qp.read(1, 0, 1, &[(buf.iova(), 512)], 999).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::QueueFull);
    qp.ring_doorbell();
    assert_eq!(r.sim.held(), 256);
    r.sim.hold_io(false);
    r.ctrlr.reset().unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    let mut seen = vec![0u32; 256];
    for (c, res) in &done {
        seen[*c as usize] += 1;
        assert_eq!(*res, Err(CommandError::AbortedByReset));
    }
    assert!(seen.iter().all(|&n| n == 1), "each exactly once");
    while !qp.is_connected() {
        qp.process_completions(64, |_, _| {});
    }
    done.clear();
    qp.read(1, 0, 1, &[(buf.iova(), 512)], 7).unwrap();
    wait_all(&mut qp, &mut done);
    assert_eq!(done, vec![(7, Ok(0))]);
}

/// Polls the queue pair and the admin poller until `until` holds (5 s at
/// most), for `at_least` in any case.
fn poll_for(
    r: &mut Rig,
    qp: &mut IoQpair<u32>,
    done: &mut Vec<(u32, Result<u32, CommandError>)>,
    at_least: Duration,
    until: impl Fn(&[(u32, Result<u32, CommandError>)]) -> bool,
) {
    let start = std::time::Instant::now();
    while (start.elapsed() < at_least || !until(done)) && start.elapsed() < Duration::from_secs(5) {
        qp.process_completions(16, |c, res| done.push((c, res)));
        r.ctrlr.poll_admin().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A controller with a 20 ms I/O timeout and `action`, a queue pair, and
/// one read (context 1) the device holds.
fn one_read_held_with_timeout(action: TimeoutAction) -> (Rig, IoQpair<u32>, DmaBuf) {
    let r = rig();
    r.ctrlr
        .set_io_timeout(Some(Duration::from_millis(20)), action);
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(8).unwrap();
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 1).unwrap();
    (r, qp, buf)
}

/// `action_on_timeout` none (the controller-wide setting): the timed-out
/// command is only logged: no abort, no reset; it completes when the
/// device answers.
#[test]
fn timeout_with_action_none_only_logs() {
    use nvme_driver::spec::admin_opcode;
    let (mut r, mut qp, _buf) = one_read_held_with_timeout(TimeoutAction::None);
    let mut done = Vec::new();
    poll_for(
        &mut r,
        &mut qp,
        &mut done,
        Duration::from_millis(150),
        |_| true,
    );
    assert!(done.is_empty(), "still waiting for the device");
    assert_eq!(r.sim.command_count(true, admin_opcode::ABORT), 0);
    assert_eq!(r.ctrlr.resets(), 0);
    r.sim.release_held();
    wait_all(&mut qp, &mut done);
    assert_eq!(done, vec![(1, Ok(0))]);
}

/// `action_on_timeout` reset: the controller is reset, the command comes
/// back aborted by it; no Abort is sent.
#[test]
fn timeout_with_action_reset_resets_the_controller() {
    use nvme_driver::spec::admin_opcode;
    let (mut r, mut qp, _buf) = one_read_held_with_timeout(TimeoutAction::Reset);
    let mut done = Vec::new();
    poll_for(&mut r, &mut qp, &mut done, Duration::ZERO, |d| {
        !d.is_empty()
    });
    assert_eq!(done, vec![(1, Err(CommandError::AbortedByReset))]);
    assert_eq!(r.ctrlr.resets(), 1);
    assert_eq!(r.sim.command_count(true, admin_opcode::ABORT), 0);
}

/// `action_on_timeout` abort, set controller-wide: the Abort ends the
/// command with "aborted as requested"; no reset.
#[test]
fn timeout_with_action_abort_aborts_the_command() {
    use nvme_driver::spec::admin_opcode;
    let (mut r, mut qp, _buf) = one_read_held_with_timeout(TimeoutAction::Abort);
    let mut done = Vec::new();
    poll_for(&mut r, &mut qp, &mut done, Duration::ZERO, |d| {
        !d.is_empty()
    });
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].1.unwrap_err().status().unwrap().kind(),
        StatusKind::AbortRequested
    );
    assert_eq!(r.sim.command_count(true, admin_opcode::ABORT), 1);
    assert_eq!(r.ctrlr.resets(), 0);
}

/// An admin command that outlives the admin timeout resets the
/// controller; its waiter gets the timeout error; the controller works
/// after.
#[test]
fn admin_timeout_resets_the_controller() {
    let mut r = rig();
    r.ctrlr.set_admin_timeout(Duration::from_millis(30));
    r.sim.hold_admin(true);
    let e = r.ctrlr.get_feature(0x06, 0).unwrap_err().to_string();
    assert!(e.contains("timed out"), "{e}");
    r.sim.hold_admin(false);
    let start = std::time::Instant::now();
    while r.ctrlr.resets_done() < 1 {
        r.ctrlr.poll_admin().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "no reset");
    }
    assert_eq!(r.ctrlr.state(), CtrlrState::Ready);
    r.ctrlr.get_feature(0x06, 0).unwrap();
}

/// Identify Namespace selecting an LBA format with a zero data size: that
/// namespace is left out (an error naming the field in the log), the
/// others work, I/O to it is refused; nothing panics.
#[test]
fn a_namespace_with_a_zero_lba_data_size_is_left_out() {
    let mem = DmaMemory::new(DmaConfig::anonymous(64 << 20)).unwrap();
    let sim = Arc::new(SimController::new(mem.clone(), SimConfig::default()));
    sim.report_zero_lba_size(2);
    let c =
        Controller::with_registers("sim0".into(), sim, &mem, ControllerOptions::default()).unwrap();
    let ids: Vec<u32> = c.namespaces().map(|n| n.nsid).collect();
    assert_eq!(ids, vec![1]);
    let mut qp: IoQpair<u32> = c.connect_io_qpair(4).unwrap();
    let buf = mem.alloc(4096, 4096).unwrap();
    let e = qp.read(2, 0, 1, &[(buf.iova(), 4096)], 0).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::InvalidNamespace(2));
    qp.read(1, 0, 1, &[(buf.iova(), 512)], 1).unwrap();
    let mut done = Vec::new();
    wait_all(&mut qp, &mut done);
    assert_eq!(done, vec![(1, Ok(0))]);
}

/// A controller whose registers read all-ones at bring-up (already gone)
/// is an error naming it, not a panic.
#[test]
fn all_ones_registers_at_bring_up_are_an_error() {
    let mem = DmaMemory::new(DmaConfig::anonymous(16 << 20)).unwrap();
    let sim = Arc::new(SimController::new(mem.clone(), SimConfig::default()));
    sim.set_removed(true);
    let e = Controller::with_registers("sim0".into(), sim, &mem, ControllerOptions::default())
        .unwrap_err();
    assert!(matches!(e, nvme_driver::NvmeError::Removed { .. }), "{e}");
    assert!(e.to_string().contains("all-ones"), "{e}");
}

/// An orderly (drained) reset: new I/O is refused at once, the commands in
/// the controller's hands complete normally, and only then is the
/// controller disabled; a command that never completes is taken by the
/// reset once the drain time passed.
#[test]
fn a_drained_reset_lets_io_in_flight_complete() {
    let mut r = rig();
    let mut qp: IoQpair<u32> = r.ctrlr.connect_io_qpair(16).unwrap();
    let buf = r.mem.alloc(4096, 4096).unwrap();
    r.sim.hold_io(true);
    for i in 0..8 {
        qp.read(2, i, 1, &[(buf.iova(), 4096)], i as u32).unwrap();
    }
    let mut done = Vec::new();
    qp.process_completions(16, |c, res| done.push((c, res)));
    assert_eq!(r.sim.held(), 8);
    r.ctrlr.start_reset_drained(Duration::from_secs(5)).unwrap();
    for _ in 0..5 {
        r.ctrlr.poll_admin().unwrap();
    }
    assert_eq!(r.ctrlr.state(), CtrlrState::Resetting);
    assert_eq!(r.ctrlr.resets_done(), 0, "waiting for the device");
    let e = qp.read(2, 9, 1, &[(buf.iova(), 4096)], 99).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::Resetting, "new I/O refused");
    r.sim.hold_io(false);
    r.sim.release_held();
    let start = std::time::Instant::now();
    while r.ctrlr.resets_done() < 1 {
        qp.process_completions(16, |c, res| done.push((c, res)));
        r.ctrlr.poll_admin().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "reset stuck");
    }
    done.sort_by_key(|d| d.0);
    assert_eq!(done, (0..8).map(|i| (i, Ok(0))).collect::<Vec<_>>());
    while !qp.is_connected() {
        qp.process_completions(16, |_, _| {});
    }
    assert_eq!(r.ctrlr.state(), CtrlrState::Ready);
    // A command that never completes: taken once the drain time passed.
    r.sim.hold_io(true);
    qp.read(2, 0, 1, &[(buf.iova(), 4096)], 50).unwrap();
    qp.process_completions(16, |_, _| {});
    r.ctrlr
        .start_reset_drained(Duration::from_millis(50))
        .unwrap();
    done.clear();
    let start = std::time::Instant::now();
    while done.is_empty() {
        qp.process_completions(16, |c, res| done.push((c, res)));
        r.ctrlr.poll_admin().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "reset stuck");
    }
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(done, vec![(50, Err(CommandError::AbortedByReset))]);
}
