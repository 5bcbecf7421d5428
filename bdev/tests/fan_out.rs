//! Fan-out (`IoHandle::fan_out`): a test mirror vbdev over several members
//! sends each write, flush and unmap to every member at once; its children
//! run concurrently, each child's status comes back in its slot, a child
//! that cannot start starts none, and a parent refused for want of I/O
//! objects is retried and still lands exactly once. On one simulated core.

mod mirror;

use std::mem::ManuallyDrop;
use std::time::Duration;

use bdev::modules::{delay, error, malloc};
use bdev::{IoStatus, IoType};
use mirror::{Mode, NOMEM, RESULTS, mirror, nop};
use reactor::SimRuntime;

thread_local! {
    static SIM: ManuallyDrop<SimRuntime> = ManuallyDrop::new(SimRuntime::new(1));
}

fn on<T: 'static, F: std::future::Future<Output = T> + 'static>(f: impl FnOnce() -> F) -> T {
    SIM.with(|s| s.block_on(0, f()).unwrap())
}

fn enter<T>(f: impl FnOnce() -> T) -> T {
    SIM.with(|s| s.enter(0, f))
}

fn now() -> Duration {
    SIM.with(|s| s.now())
}

fn buf(len: usize, fill: u8) -> dma::DmaBuf {
    let mut b = bdev::memory().alloc(len, 4096).unwrap();
    b.fill(fill);
    b
}

fn writes(name: &str) -> u64 {
    bdev::get(name).unwrap().stats().of(IoType::Write).ops
}

#[test]
fn a_write_lands_on_every_member_and_reads_back() {
    enter(|| {
        for m in ["fa0", "fa1", "fa2"] {
            malloc::create(m, 1024, 512, None).unwrap();
        }
        mirror("fa_m", &["fa0", "fa1", "fa2"], 1024, Mode::Mirror, true);
    });
    on(|| async {
        let d = bdev::open("fa_m", true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let (st, _) = ch
            .io(IoType::Write, Some(buf(4096, 0x5a)), 16, 8, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let (st, _) = ch.io(IoType::Flush, None, 0, 1024, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        let (st, _) = ch.io(IoType::Unmap, None, 100, 4, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        for m in ["fa0", "fa1", "fa2"] {
            let md = bdev::open(m, false, nop).unwrap();
            let mc = md.get_io_channel().unwrap();
            let (st, b) = mc
                .io(IoType::Read, Some(buf(4096, 0)), 16, 8, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success);
            let mut got = vec![0u8; 4096];
            b.unwrap().read_at(0, &mut got);
            assert!(
                got.iter().all(|&x| x == 0x5a),
                "{m}: the write did not land"
            );
            let s = bdev::get(m).unwrap().stats();
            assert_eq!(
                (
                    s.of(IoType::Write).ops,
                    s.of(IoType::Flush).ops,
                    s.of(IoType::Unmap).ops
                ),
                (1, 1, 1),
                "{m}"
            );
        }
    });
    let r = RESULTS.with(|v| v.borrow_mut().drain(..).collect::<Vec<_>>());
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| r.len() == 3 && r.failed_mask() == 0));
}

#[test]
fn children_run_at_the_same_time() {
    let lat = delay::Latencies {
        avg_read_us: 10_000,
        p99_read_us: 10_000,
        avg_write_us: 10_000,
        p99_write_us: 10_000,
    };
    enter(|| {
        for i in 0..3 {
            malloc::create(&format!("fc{i}"), 1024, 512, None).unwrap();
            delay::create(&format!("fc{i}"), &format!("fcd{i}"), lat, None).unwrap();
        }
        mirror("fc_m", &["fcd0", "fcd1", "fcd2"], 1024, Mode::Mirror, true);
    });
    let took = on(|| async {
        let d = bdev::open("fc_m", true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let t = now();
        let (st, _) = ch
            .io(IoType::Write, Some(buf(512, 1)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        now() - t
    });
    // Three members of 10 ms each, at once: about 10 ms, not 30.
    assert!(
        took >= Duration::from_millis(10) && took < Duration::from_millis(20),
        "{took:?}"
    );
    RESULTS.with(|v| v.borrow_mut().clear());
}

#[test]
fn each_child_reports_its_own_status() {
    enter(|| {
        for m in ["fs0", "fs1"] {
            malloc::create(m, 1024, 512, None).unwrap();
        }
        error::create("fs1", None).unwrap();
        mirror("fs_m", &["fs0", "EE_fs1"], 1024, Mode::Mirror, true);
        error::inject_error("EE_fs1", "write", "failure", 1).unwrap();
    });
    on(|| async {
        let d = bdev::open("fs_m", true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let (st, _) = ch
            .io(IoType::Write, Some(buf(512, 2)), 0, 1, false)
            .await
            .unwrap();
        // The mirror's policy: any member that wrote is enough.
        assert_eq!(st, IoStatus::Success);
    });
    let r = RESULTS.with(|v| v.borrow_mut().pop()).unwrap();
    assert_eq!(r.status(0), IoStatus::Success);
    assert_eq!(r.status(1), IoStatus::Failed);
    assert_eq!(r.failed_mask(), 0b10);
    assert_eq!(r.all(), IoStatus::Failed);
    assert_eq!(r.any(), IoStatus::Success);
}

#[test]
fn a_child_that_cannot_start_starts_none() {
    enter(|| {
        malloc::create("fr0", 1024, 512, None).unwrap();
        malloc::create("fr1", 1024, 512, None).unwrap();
        // Smaller than the mirror: a write near the end is out of its range.
        malloc::create("fr2", 512, 512, None).unwrap();
        mirror("fr_m", &["fr0", "fr1", "fr2"], 1024, Mode::Mirror, true);
        malloc::create("fo0", 64, 512, None).unwrap();
        malloc::create("fo1", 64, 512, None).unwrap();
        mirror("fo_m", &["fo0", "fo1"], 64, Mode::OverlappingReads, true);
    });
    on(|| async {
        let d = bdev::open("fr_m", true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let (st, _) = ch
            .io(IoType::Write, Some(buf(512, 3)), 900, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Failed);
        // Inside every member: fine.
        let (st, _) = ch
            .io(IoType::Write, Some(buf(512, 3)), 10, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        // Two reads into the same bytes of the parent: refused.
        let o = bdev::open("fo_m", false, nop).unwrap();
        let och = o.get_io_channel().unwrap();
        let (st, _) = och
            .io(IoType::Read, Some(buf(512, 0)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Failed);
    });
    // The refused write reached no member; the good one reached all.
    assert_eq!((writes("fr0"), writes("fr1"), writes("fr2")), (1, 1, 1));
    assert_eq!(
        bdev::get("fo0").unwrap().stats().of(IoType::Read).ops
            + bdev::get("fo1").unwrap().stats().of(IoType::Read).ops,
        0
    );
    RESULTS.with(|v| v.borrow_mut().clear());
}

#[test]
fn parents_short_of_io_objects_are_retried_and_land_once() {
    enter(|| {
        malloc::create("fp0", 1024, 512, None).unwrap();
        malloc::create("fp1", 1024, 512, None).unwrap();
        mirror("fp_m", &["fp0", "fp1"], 1024, Mode::Mirror, true);
    });
    on(|| async {
        // The members' channels on this core get 8 I/O objects each (the
        // least there is; made first, then shared by the mirror's
        // channel): 20 writes at once cannot all fan out; the refused ones
        // are submitted again. (The other tests here never have more than
        // 3 I/Os in flight, whatever the pool size meanwhile.)
        bdev::set_io_pool_size(8);
        let members: Vec<_> = ["fp0", "fp1"]
            .iter()
            .map(|m| {
                let d = bdev::open(m, false, nop).unwrap();
                let c = d.get_io_channel().unwrap();
                (d, c)
            })
            .collect();
        bdev::set_io_pool_size(512);
        let d = bdev::open("fp_m", true, nop).unwrap();
        let ch = std::rc::Rc::new(d.get_io_channel().unwrap());
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let ch = ch.clone();
            tasks.push(reactor::spawn(async move {
                ch.io(IoType::Write, Some(buf(512, i as u8)), i, 1, false)
                    .await
                    .unwrap()
                    .0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), IoStatus::Success);
        }
        assert_eq!(members[0].1.pool_size(), 8);
        drop(members);
    });
    assert!(
        NOMEM.with(|n| n.get()) > 0,
        "no fan-out was short of I/O objects"
    );
    assert_eq!((writes("fp0"), writes("fp1")), (20, 20));
    RESULTS.with(|v| v.borrow_mut().clear());
}
