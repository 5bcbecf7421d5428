//! Host tests of the bdev layer on two simulated cores (`reactor::SimRuntime`:
//! deterministic, no sleeps, time moves only to the next deadline): I/O
//! from every core, unregister with I/O in flight, claims, resize through
//! stacked vbdevs, removal of a base, asynchronous examine, splitting and
//! bounce buffers, NOT-SUPPORTED answers, error injection, delay,
//! statistics, zero-copy windows.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bdev::modules::{delay, error, malloc, null, passthru};
use bdev::{BdevError, BdevEvent, BdevOps, BdevProps, Desc, IoHandle, IoStatus, IoType, IoVec};
use dma::DmaBuf;
use reactor::SimRuntime;

thread_local! {
    /// Each test (its own thread) has its own two simulated cores, left to
    /// the process's end (not torn down in thread-local destruction, where
    /// the reactor's own thread-locals are gone).
    static SIM: ManuallyDrop<SimRuntime> = ManuallyDrop::new(SimRuntime::new(2));
}

/// Runs `f`'s future on simulated `core` to its end (the clock moves to
/// the next deadline whenever every core is idle) and returns its output.
fn on<T: 'static, F: std::future::Future<Output = T> + 'static>(
    core: u32,
    f: impl FnOnce() -> F,
) -> T {
    SIM.with(|s| s.block_on(core, f()).unwrap())
}

/// Runs `f` as if on `core` (nothing is polled).
fn enter<T>(core: u32, f: impl FnOnce() -> T) -> T {
    SIM.with(|s| s.enter(core, f))
}

/// Runs every core until all are idle (messages delivered, tasks run).
fn settle() {
    SIM.with(|s| {
        s.run_until_idle();
    });
}

/// The simulated time.
fn now() -> Duration {
    SIM.with(|s| s.now())
}

fn buf(len: usize, fill: u8) -> DmaBuf {
    let mut b = bdev::memory().alloc(len, 4096).unwrap();
    b.fill(fill);
    b
}

fn nop(_: &str, _: BdevEvent) {}

#[test]
fn io_from_every_core_to_one_bdev() {
    malloc::create("m_cores", 2048, 512, None).unwrap();
    for core in [0u32, 1] {
        on(core, move || async move {
            let desc = bdev::open("m_cores", true, nop).unwrap();
            let ch = desc.get_io_channel().unwrap();
            // Each core owns its half; many I/Os in flight with callbacks.
            static DONE: AtomicUsize = AtomicUsize::new(0);
            fn cb(io: &mut bdev::BdevIo, st: IoStatus) {
                assert_eq!(st, IoStatus::Success, "write at {}", io.offset_blocks());
                DONE.fetch_add(1, Ordering::SeqCst);
            }
            let before = DONE.load(Ordering::SeqCst);
            for i in 0..256u64 {
                let lba = core as u64 * 1024 + i * 4;
                ch.write(buf(2048, (lba % 251) as u8), lba, 4, false, cb, 0)
                    .unwrap();
            }
            while DONE.load(Ordering::SeqCst) < before + 256 {
                reactor::yield_now().await;
            }
            for i in 0..256u64 {
                let lba = core as u64 * 1024 + i * 4;
                let (st, b) = ch
                    .io(IoType::Read, Some(buf(2048, 0)), lba, 4, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                let mut got = vec![0u8; 2048];
                b.unwrap().read_at(0, &mut got);
                assert!(
                    got.iter().all(|&x| x == (lba % 251) as u8),
                    "core {core} lba {lba}"
                );
            }
            drop(ch);
            drop(desc);
        });
    }
    let st = bdev::get("m_cores").unwrap().stats();
    assert_eq!(st.of(IoType::Write).ops, 512);
    assert_eq!(st.of(IoType::Read).ops, 512);
    assert_eq!(st.of(IoType::Write).bytes, 512 * 2048);
    assert!(st.of(IoType::Read).max_latency_ns >= st.of(IoType::Read).min_latency_ns);
    on(0, || async { malloc::delete("m_cores").await.unwrap() });
    assert!(bdev::get("m_cores").is_none());
}

#[test]
fn bounds_rights_and_unsupported_types() {
    null::create("n_bounds", 100, 512, None, null::ReadFill::Zeroes).unwrap();
    on(0, || async {
        let ro = bdev::open("n_bounds", false, nop).unwrap();
        let ch = ro.get_io_channel().unwrap();
        let e = ch
            .io(IoType::Read, Some(buf(1024, 0)), 99, 2, false)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                BdevError::OutOfRange {
                    offset_blocks: 99,
                    num_blocks: 2,
                    size_blocks: 100,
                    ..
                }
            ),
            "{e}"
        );
        let e = ch
            .io(IoType::Read, Some(buf(1024, 0)), u64::MAX, 2, false)
            .await
            .unwrap_err();
        assert!(matches!(e, BdevError::OutOfRange { .. }), "no wrap: {e}");
        let e = ch
            .io(IoType::Write, Some(buf(512, 0)), 0, 1, false)
            .await
            .unwrap_err();
        assert_eq!(e, BdevError::ReadOnly("n_bounds".into()));
        let e = ch
            .io(IoType::Read, Some(buf(512, 0)), 0, 2, false)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            BdevError::BufferSize {
                expected: 1024,
                got: 512
            }
        );
        // Compare is not a null bdev's: NOT-SUPPORTED, not a failure.
        let (st, _) = ch
            .io(IoType::Compare, Some(buf(512, 0)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::NotSupported);
        // Reads fill zeroes.
        let (st, b) = ch
            .io(IoType::Read, Some(buf(512, 0xaa)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        assert_eq!(b.unwrap().read_volatile::<u64>(0), 0);
        drop(ch);
    });
    assert!(
        !bdev::get("n_bounds")
            .unwrap()
            .io_type_supported(IoType::Compare)
    );
    on(0, || async { null::delete("n_bounds").await.unwrap() });
}

#[test]
fn claims_conflict_with_a_clear_error() {
    malloc::create("m_claim", 64, 512, None).unwrap();
    passthru::create("m_claim", "pt_claim", None).unwrap();
    let e = passthru::create("m_claim", "pt_claim2", None).unwrap_err();
    assert!(
        matches!(&e, BdevError::Claimed { bdev, holder }
            if bdev == "m_claim" && holder.starts_with("passthru")),
        "{e:?}"
    );
    assert_eq!(e.errno(), -1, "EPERM as SPDK");
    assert!(e.to_string().contains("claimed by passthru"));
    let e = bdev::open("m_claim", true, nop).unwrap_err();
    assert!(matches!(e, BdevError::Claimed { .. }));
    // Reading is still allowed.
    let ro = bdev::open("m_claim", false, nop).unwrap();
    let mut w = bdev::open("pt_claim", true, nop).unwrap();
    w.claim("test").unwrap();
    assert!(matches!(w.claim("test"), Err(BdevError::Claimed { .. })));
    drop(w);
    drop(ro);
    on(0, || async {
        passthru::delete("pt_claim").await.unwrap();
        // The claim went with the passthru bdev.
        assert!(bdev::get("m_claim").unwrap().claimed_by().is_none());
        malloc::delete("m_claim").await.unwrap();
    });
}

/// null -> passthru -> passthru: resizing the null bdev reaches every layer
/// and every opener (the first seed's bug in SPDK).
#[test]
fn resize_reaches_every_opener_through_two_vbdevs() {
    null::create("n_rs", 1024 * 2048, 512, None, null::ReadFill::Zeroes).unwrap();
    passthru::create("n_rs", "pt_rs1", None).unwrap();
    passthru::create("pt_rs1", "pt_rs2", None).unwrap();
    let seen: Arc<Mutex<Vec<(String, BdevEvent)>>> = Arc::default();
    let s2 = seen.clone();
    let desc = on(1, move || async move {
        let s = s2.clone();
        bdev::open("pt_rs2", false, move |n, e| {
            s.lock().unwrap().push((n.to_owned(), e))
        })
        .unwrap()
    });
    enter(0, || null::resize("n_rs", 2048).unwrap());
    settle();
    let want = 2048 * 2048;
    assert_eq!(bdev::get("pt_rs1").unwrap().num_blocks(), want);
    assert_eq!(bdev::get("pt_rs2").unwrap().num_blocks(), want);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(
            "pt_rs2".to_owned(),
            BdevEvent::Resize {
                old_blocks: 1024 * 2048,
                new_blocks: want
            }
        )]
    );
    // I/O at the new end works through both layers.
    on(1, move || async move {
        let ch = desc.get_io_channel().unwrap();
        let (st, _) = ch
            .io(IoType::Read, Some(buf(512, 1)), want - 1, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        drop(ch);
        drop(desc);
    });
    assert!(null::resize("n_rs", 0).is_err());
    assert!(null::resize("pt_rs1", 1).is_err(), "only null bdevs resize");
    // Removing the base removes both vbdevs.
    on(0, || async { null::delete("n_rs").await.unwrap() });
    settle();
    assert!(
        bdev::get("pt_rs1").is_none()
            && bdev::get("pt_rs2").is_none()
            && bdev::get("n_rs").is_none()
    );
}

/// Unregistering a bdev with I/O in flight: the opener gets Remove, its I/O
/// all complete, then the bdev goes.
#[test]
fn unregister_while_io_is_in_flight() {
    malloc::create("m_unreg", 256, 512, None).unwrap();
    delay::create(
        "m_unreg",
        "d_unreg",
        delay::Latencies {
            avg_read_us: 30_000,
            p99_read_us: 30_000,
            avg_write_us: 30_000,
            p99_write_us: 30_000,
        },
        None,
    )
    .unwrap();
    static COMPLETED: AtomicUsize = AtomicUsize::new(0);
    static OK: AtomicUsize = AtomicUsize::new(0);
    let holder: Arc<Mutex<Option<Desc>>> = Arc::default();
    let removed = Arc::new(AtomicUsize::new(0));
    let (h2, r2) = (holder.clone(), removed.clone());
    on(1, move || async move {
        let (h3, r3) = (h2.clone(), r2.clone());
        let desc = bdev::open("d_unreg", true, move |_, ev| {
            if ev == BdevEvent::Remove {
                r3.fetch_add(1, Ordering::SeqCst);
                // Close once the I/O has drained (the test's own rule).
                let h4 = h3.clone();
                drop(reactor::spawn(async move {
                    while COMPLETED.load(Ordering::SeqCst) < 32 {
                        reactor::sleep(Duration::from_millis(1)).await;
                    }
                    h4.lock().unwrap().take();
                }));
            }
        })
        .unwrap();
        let ch = desc.get_io_channel().unwrap();
        fn cb(_: &mut bdev::BdevIo, st: IoStatus) {
            if st == IoStatus::Success {
                OK.fetch_add(1, Ordering::SeqCst);
            }
            COMPLETED.fetch_add(1, Ordering::SeqCst);
        }
        for i in 0..32 {
            ch.read(buf(512, 0), i, 1, cb, 0).unwrap();
        }
        *h2.lock().unwrap() = Some(desc);
        // The channel is put back once its I/O has completed.
        drop(reactor::spawn(async move {
            while COMPLETED.load(Ordering::SeqCst) < 32 {
                reactor::sleep(Duration::from_millis(1)).await;
            }
            drop(ch);
        }));
    });
    let t = now();
    on(0, || async { delay::delete("d_unreg").await.unwrap() });
    assert!(
        now() - t >= Duration::from_millis(20),
        "unregister waited for the I/O: {:?}",
        now() - t
    );
    assert_eq!(removed.load(Ordering::SeqCst), 1);
    assert_eq!(COMPLETED.load(Ordering::SeqCst), 32);
    assert_eq!(OK.load(Ordering::SeqCst), 32);
    assert!(bdev::get("d_unreg").is_none());
    // The base is free again.
    assert!(bdev::get("m_unreg").unwrap().claimed_by().is_none());
    on(0, || async { malloc::delete("m_unreg").await.unwrap() });
}

/// A module with strict limits that records what reaches it: the layer
/// must split on max transfer and boundary, and bounce misaligned buffers.
struct Strict {
    data: Mutex<Vec<u8>>,
    seen: Mutex<Vec<(IoType, u64, u64, bool)>>,
    write_zeroes: bool,
}

impl BdevOps for Strict {
    type Channel = ();
    fn create_channel(&self, _: u32) -> Result<(), String> {
        Ok(())
    }
    fn submit(&self, _: &(), io: IoHandle) {
        let r = io.io();
        let aligned = r
            .iovs()
            .iter()
            .all(|v| (v.ptr as usize).is_multiple_of(512) && v.len % 512 == 0);
        self.seen
            .lock()
            .unwrap()
            .push((r.io_type(), r.offset_blocks(), r.num_blocks(), aligned));
        let off = r.offset_blocks() as usize * 512;
        let len = r.num_blocks() as usize * 512;
        let mut d = self.data.lock().unwrap();
        // SAFETY: the layer hands valid segments.
        unsafe {
            match r.io_type() {
                IoType::Read => {
                    r.copy_to_iovs(0, &d[off..off + len]);
                }
                IoType::Write => {
                    r.copy_from_iovs(0, &mut d[off..off + len]);
                }
                IoType::WriteZeroes => d[off..off + len].fill(0),
                _ => {}
            }
        }
        io.complete(IoStatus::Success);
    }
    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(ty, IoType::Read | IoType::Write)
            || (ty == IoType::WriteZeroes && self.write_zeroes)
    }
}

#[test]
fn splitting_and_bounce_buffers_with_odd_alignment() {
    let mut props = BdevProps::new("strict", "test", 512, 1024);
    props.max_transfer_blocks = Some(8);
    props.optimal_io_boundary = Some(16);
    props.required_alignment = 512;
    let strict = bdev::register(
        "strict",
        props,
        Strict {
            data: Mutex::new(vec![0; 1024 * 512]),
            seen: Mutex::default(),
            write_zeroes: false,
        },
    )
    .unwrap();
    on(0, || async {
        let desc = bdev::open("strict", true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        // 40 blocks at block 5 from a buffer at byte offset 3, in two
        // segments (1000 bytes, then the rest).
        let mut b = bdev::memory().alloc(40 * 512 + 8, 4096).unwrap();
        let pattern: Vec<u8> = (0..40 * 512).map(|i| (i * 7 % 253) as u8).collect();
        b.write_at(3, &pattern);
        let iovs = [IoVec::of(&b, 3, 1000), IoVec::of(&b, 1003, 40 * 512 - 1000)];
        static DONE: AtomicU64 = AtomicU64::new(0);
        fn cb(_: &mut bdev::BdevIo, st: IoStatus) {
            assert_eq!(st, IoStatus::Success);
            DONE.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: `b` lives until the completion is seen below.
        unsafe {
            ch.submit_iovs(IoType::Write, 5, 40, &iovs, false, cb, 0)
                .unwrap()
        };
        while DONE.load(Ordering::SeqCst) < 1 {
            reactor::yield_now().await;
        }
        // Read back into another misaligned place.
        let r = bdev::memory().alloc(40 * 512 + 8, 4096).unwrap();
        let riov = [IoVec::of(&r, 5, 40 * 512)];
        // SAFETY: as above.
        unsafe {
            ch.submit_iovs(IoType::Read, 5, 40, &riov, false, cb, 0)
                .unwrap()
        };
        while DONE.load(Ordering::SeqCst) < 2 {
            reactor::yield_now().await;
        }
        let mut got = vec![0u8; 40 * 512];
        r.read_at(5, &mut got);
        assert_eq!(got, pattern);
        // Write zeroes, emulated with writes (the module lacks it).
        let (st, _) = ch
            .io(IoType::WriteZeroes, None, 10, 20, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let (st, rb) = ch
            .io(
                IoType::Read,
                Some(bdev::memory().alloc(40 * 512, 4096).unwrap()),
                5,
                40,
                false,
            )
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let mut got = vec![0u8; 40 * 512];
        rb.unwrap().read_at(0, &mut got);
        for blk in 0..40usize {
            let lba = 5 + blk;
            let want: &[u8] = if (10..30).contains(&lba) {
                &[0u8; 512]
            } else {
                &pattern[blk * 512..(blk + 1) * 512]
            };
            assert_eq!(&got[blk * 512..(blk + 1) * 512], want, "block {lba}");
        }
        // Unmap is not supported at all: NOT-SUPPORTED.
        let (st, _) = ch.io(IoType::Unmap, None, 0, 1, false).await.unwrap();
        assert_eq!(st, IoStatus::NotSupported);
        drop(ch);
        drop(desc);
    });
    let s = strict.ops_as::<Strict>().unwrap();
    let seen = s.seen.lock().unwrap().clone();
    for (ty, off, n, aligned) in &seen {
        assert!(*n <= 8, "{ty:?} at {off}: {n} blocks beyond max transfer");
        if *ty != IoType::WriteZeroes {
            assert_eq!(
                off / 16,
                (off + n - 1) / 16,
                "{ty:?} at {off}+{n} crosses a 16-block boundary"
            );
        }
        assert!(
            aligned,
            "{ty:?} at {off}: misaligned buffer reached the module"
        );
    }
    assert!(seen.iter().all(|s| s.0 != IoType::WriteZeroes));
    let writes: u64 = seen
        .iter()
        .filter(|s| s.0 == IoType::Write)
        .map(|s| s.2)
        .sum();
    assert_eq!(writes, 40 + 20, "the data write and the emulated zeroes");
    on(0, || async { bdev::unregister("strict").await.unwrap() });
}

#[test]
fn error_injection_failure_corruption_and_nomem() {
    malloc::create("m_err", 64, 512, None).unwrap();
    error::create("m_err", None).unwrap();
    on(0, || async {
        let desc = bdev::open("EE_m_err", true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let (st, _) = ch
            .io(IoType::Write, Some(buf(512, 0x42)), 3, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        error::inject_error("EE_m_err", "read", "failure", 2).unwrap();
        for _ in 0..2 {
            let (st, _) = ch
                .io(IoType::Read, Some(buf(512, 0)), 3, 1, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Failed);
        }
        let (st, _) = ch
            .io(IoType::Read, Some(buf(512, 0)), 3, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success, "the injection was used up");
        error::inject_error("EE_m_err", "read", "corrupt_data", 1).unwrap();
        let (st, b) = ch
            .io(IoType::Read, Some(buf(512, 0)), 3, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        assert_eq!(b.unwrap().read_volatile::<u8>(0), 0x42 ^ 0xff);
        // NoMem is queued and retried by the layer: the caller sees success.
        error::inject_error("EE_m_err", "all", "nomem", 3).unwrap();
        let (st, b) = ch
            .io(IoType::Read, Some(buf(512, 0)), 3, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        assert_eq!(b.unwrap().read_volatile::<u8>(1), 0x42);
        error::inject_error("EE_m_err", "clear", "failure", 0).unwrap();
        assert!(matches!(
            error::inject_error("EE_m_err", "sideways", "failure", 1),
            Err(BdevError::Invalid { .. })
        ));
        assert!(matches!(
            error::inject_error("EE_m_err", "read", "explode", 1),
            Err(BdevError::Invalid { .. })
        ));
        assert!(matches!(
            error::inject_error("nope", "read", "failure", 1),
            Err(BdevError::NotFound(_))
        ));
        drop(ch);
        drop(desc);
        error::delete("EE_m_err").await.unwrap();
        malloc::delete("m_err").await.unwrap();
    });
}

#[test]
fn delay_holds_completions_and_updates_at_run_time() {
    null::create("n_delay", 1024, 512, None, null::ReadFill::Zeroes).unwrap();
    delay::create(
        "n_delay",
        "d_delay",
        delay::Latencies {
            avg_read_us: 20_000,
            p99_read_us: 20_000,
            avg_write_us: 1_000,
            p99_write_us: 1_000,
        },
        None,
    )
    .unwrap();
    on(0, || async {
        let desc = bdev::open("d_delay", true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let t = reactor::now();
        let (st, _) = ch
            .io(IoType::Read, Some(buf(512, 0)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let took = reactor::now() - t;
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_millis(21),
            "held for the average latency: {took:?}"
        );
        delay::update_latency("d_delay", delay::LatencyType::P99Read, 0).unwrap_err();
        delay::update_latency("d_delay", delay::LatencyType::AvgRead, 1).unwrap();
        let t = reactor::now();
        ch.io(IoType::Read, Some(buf(512, 0)), 0, 1, false)
            .await
            .unwrap();
        let took = reactor::now() - t;
        assert!(
            took >= Duration::from_micros(1) && took < Duration::from_micros(50),
            "the new latency applies at once: {took:?}"
        );
        assert!("avg_sideways".parse::<delay::LatencyType>().is_err());
        drop(ch);
        drop(desc);
        delay::delete("d_delay").await.unwrap();
        null::delete("n_delay").await.unwrap();
    });
}

/// A module whose examine reads asynchronously (like a RAID superblock or an
/// lvstore) and creates a bdev: `wait_for_examine` waits for it.
struct SlowExaminer;
impl bdev::BdevModule for SlowExaminer {
    fn name(&self) -> &str {
        "slow_examiner"
    }
    fn examine_disk(&self, name: &str) -> Option<bdev::ModuleTask> {
        if !name.starts_with("exam_") || name.ends_with("_found") {
            return None;
        }
        let name = name.to_owned();
        Some(Box::new(move || {
            Box::pin(async move {
                // Read the "superblock", slowly.
                let desc = bdev::open(&name, false, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                reactor::sleep(Duration::from_millis(50)).await;
                let (st, _) = ch
                    .io(IoType::Read, Some(buf(512, 0)), 0, 1, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                drop(ch);
                drop(desc);
                passthru::create(&name, &format!("{name}_found"), None).unwrap();
            })
        }))
    }
}

#[test]
fn wait_for_examine_waits_for_asynchronous_examine() {
    bdev::register_module(Arc::new(SlowExaminer)).unwrap();
    on(0, || async {
        malloc::create("exam_1", 64, 512, None).unwrap();
        assert!(
            bdev::get("exam_1_found").is_none(),
            "examine is still reading"
        );
        bdev::wait_for_examine().await;
        assert!(
            bdev::get("exam_1_found").is_some(),
            "the examine's bdev is registered"
        );
        passthru::delete("exam_1_found").await.unwrap();
        malloc::delete("exam_1").await.unwrap();
    });
}

#[test]
fn names_uuids_and_config() {
    let b = malloc::create(
        "m_names",
        16,
        4096,
        Some("12345678-1234-4234-8234-123456789abc"),
    )
    .unwrap();
    assert_eq!(b.uuid(), "12345678-1234-4234-8234-123456789abc");
    assert_eq!(
        malloc::create("m_names", 16, 4096, None).unwrap_err(),
        BdevError::Exists("m_names".into())
    );
    assert!(matches!(
        malloc::create("m_bad", 16, 1000, None),
        Err(BdevError::Invalid { .. })
    ));
    assert!(matches!(
        malloc::create("m_bad", 16, 4096, Some("nope")),
        Err(BdevError::Invalid { .. })
    ));
    let cfg = b.write_config_json().unwrap();
    assert_eq!(cfg["method"], "bdev_malloc_create");
    assert_eq!(cfg["params"]["num_blocks"], 16);
    assert_eq!(cfg["params"]["block_size"], 4096);
    let u = bdev::new_uuid();
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "4");
    on(0, || async { malloc::delete("m_names").await.unwrap() });
    assert!(matches!(
        on(0, || async { malloc::delete("m_names").await }),
        Err(BdevError::NotFound(_))
    ));
}

/// What a zero-copy window's start callback does, and what it saw.
#[derive(Debug)]
struct Window {
    /// Bytes to write into the window (then commit), or none (read it).
    write: Option<Vec<u8>>,
    /// Whether to ask for the end (with commit when writing, or with
    /// `force_commit`).
    end: bool,
    force_commit: bool,
    seen: Vec<u8>,
    segments: usize,
    start: Option<IoStatus>,
    end_status: Option<IoStatus>,
}

impl Window {
    fn new(write: Option<Vec<u8>>) -> std::rc::Rc<std::cell::RefCell<Window>> {
        std::rc::Rc::new(std::cell::RefCell::new(Window {
            write,
            end: true,
            force_commit: false,
            seen: Vec::new(),
            segments: 0,
            start: None,
            end_status: None,
        }))
    }
}

type WinRef = std::rc::Rc<std::cell::RefCell<Window>>;

fn window_started(io: &mut bdev::BdevIo, st: IoStatus) {
    // SAFETY: `ctx` is a pointer from `Rc::as_ptr` of a window the test
    // keeps alive until the end callback has run.
    let w = unsafe { &*(io.ctx() as *const std::cell::RefCell<Window>) };
    let mut w = w.borrow_mut();
    w.start = Some(st);
    if !st.is_success() {
        return;
    }
    w.segments = io.iovs().len();
    let mut off = 0;
    for v in io.iovs() {
        // SAFETY: the window's segments are valid during this callback.
        let seg = unsafe { std::slice::from_raw_parts_mut(v.ptr, v.len) };
        w.seen.extend_from_slice(seg);
        if let Some(data) = &w.write {
            seg.copy_from_slice(&data[off..off + v.len]);
        }
        off += v.len;
    }
    if w.end {
        let commit = w.write.is_some() || w.force_commit;
        io.zcopy_end(commit, window_ended, io.ctx());
    }
}

fn window_ended(io: &mut bdev::BdevIo, st: IoStatus) {
    // SAFETY: as in `window_started`.
    let w = unsafe { &*(io.ctx() as *const std::cell::RefCell<Window>) };
    w.borrow_mut().end_status = Some(st);
}

/// Opens a window, lets the callbacks run, returns the window's record.
async fn window(
    ch: &bdev::BdevChannel,
    lba: u64,
    n: u64,
    populate: bool,
    w: WinRef,
) -> Result<WinRef, BdevError> {
    ch.zcopy_start(
        lba,
        n,
        populate,
        window_started,
        std::rc::Rc::as_ptr(&w) as usize,
    )?;
    for _ in 0..100_000 {
        {
            let r = w.borrow();
            let done = match r.start {
                Some(s) if !s.is_success() => true,
                Some(_) => !r.end || r.end_status.is_some(),
                None => false,
            };
            if done && ch.outstanding() == 0 {
                break;
            }
        }
        reactor::yield_now().await;
    }
    let r = w.borrow();
    let done = r
        .start
        .is_some_and(|s| !s.is_success() || !r.end || r.end_status.is_some());
    assert!(done && ch.outstanding() == 0, "window never ended");
    drop(r);
    Ok(w)
}

#[test]
fn zero_copy_windows_over_malloc() {
    malloc::create("m_zc", 64, 512, None).unwrap();
    null::create("n_zc", 64, 512, None, null::ReadFill::Zeroes).unwrap();
    malloc::create("m_zc2", 64, 512, None).unwrap();
    passthru::create("m_zc2", "p_zc", None).unwrap();
    assert!(bdev::get("m_zc").unwrap().io_type_supported(IoType::Zcopy));
    assert!(!bdev::get("n_zc").unwrap().io_type_supported(IoType::Zcopy));
    assert!(!bdev::get("p_zc").unwrap().io_type_supported(IoType::Zcopy));
    on(0, || async {
        // The window lends the disk's own memory: a populated one holds
        // what a normal write put there.
        let rw = bdev::open("m_zc", true, nop).unwrap();
        let ch = rw.get_io_channel().unwrap();
        let a: Vec<u8> = (0..8 * 512).map(|i| (i * 7 + 3) as u8).collect();
        let mut wb = buf(a.len(), 0);
        wb.write_at(0, &a);
        let (st, _) = ch.io(IoType::Write, Some(wb), 8, 8, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        let before = bdev::get("m_zc").unwrap().stats();
        let w = window(&ch, 8, 8, true, Window::new(None)).await.unwrap();
        {
            let w = w.borrow();
            assert_eq!(
                (w.start, w.end_status),
                (Some(IoStatus::Success), Some(IoStatus::Success))
            );
            assert_eq!(w.segments, 1);
            assert!(w.seen == a, "populated window holds the blocks");
        }
        // SPDK counts a window at its start: populated = a read.
        let after = bdev::get("m_zc").unwrap().stats();
        assert_eq!(
            after.of(IoType::Read).bytes - before.of(IoType::Read).bytes,
            8 * 512
        );
        // A window written and committed is what a normal read returns.
        let b: Vec<u8> = (0..4 * 512).map(|i| (i * 13 + 1) as u8).collect();
        let w = window(&ch, 20, 4, false, Window::new(Some(b.clone())))
            .await
            .unwrap();
        assert_eq!(w.borrow().end_status, Some(IoStatus::Success));
        let (st, rb) = ch
            .io(IoType::Read, Some(buf(4 * 512, 0xee)), 20, 4, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let mut got = vec![0; 4 * 512];
        rb.unwrap().read_at(0, &mut got);
        assert!(got == b, "committed window reads back");
        // A start callback that asks for no end: the layer ends the window
        // (no commit, no callback) and the I/O is not lost.
        let w = Window::new(None);
        w.borrow_mut().end = false;
        let w = window(&ch, 0, 64, true, w).await.unwrap();
        assert_eq!(w.borrow().start, Some(IoStatus::Success));
        assert_eq!(ch.outstanding(), 0);
        // Windows open only with zcopy_start (which sets up their rights
        // and phases), not through the generic submissions.
        let e = ch.io(IoType::Zcopy, None, 0, 1, false).await.unwrap_err();
        assert!(matches!(e, BdevError::Invalid { .. }), "{e}");
        fn never(_: &mut bdev::BdevIo, _: IoStatus) {
            panic!("a refused submission has no callback");
        }
        let e = ch.submit_nodata(IoType::Zcopy, 0, 1, never, 0).unwrap_err();
        assert!(matches!(e, BdevError::Invalid { .. }), "{e}");
        assert_eq!(ch.outstanding(), 0);
        // Bounds as for any I/O.
        let e = window(&ch, 60, 8, true, Window::new(None))
            .await
            .unwrap_err();
        assert!(matches!(e, BdevError::OutOfRange { .. }), "{e}");
        let e = window(&ch, 0, 0, true, Window::new(None))
            .await
            .unwrap_err();
        assert!(matches!(e, BdevError::OutOfRange { .. }), "{e}");
        // Read-only descriptors: no write windows, no commits.
        let ro = bdev::open("m_zc", false, nop).unwrap();
        let rch = ro.get_io_channel().unwrap();
        let e = window(&rch, 0, 1, false, Window::new(None))
            .await
            .unwrap_err();
        assert_eq!(e, BdevError::ReadOnly("m_zc".into()));
        let w = Window::new(None);
        w.borrow_mut().force_commit = true;
        let w = window(&rch, 0, 1, true, w).await.unwrap();
        assert_eq!(
            (w.borrow().start, w.borrow().end_status),
            (Some(IoStatus::Success), Some(IoStatus::Failed)),
            "a commit through a read-only descriptor fails its end"
        );
        // Bdevs that do not lend memory answer NOT-SUPPORTED.
        for name in ["n_zc"] {
            let d = bdev::open(name, true, nop).unwrap();
            let c = d.get_io_channel().unwrap();
            let w = window(&c, 0, 1, true, Window::new(None)).await.unwrap();
            assert_eq!(w.borrow().start, Some(IoStatus::NotSupported), "{name}");
            assert_eq!(w.borrow().end_status, None);
        }
        drop((ch, rch));
        drop((rw, ro));
        passthru::delete("p_zc").await.unwrap();
        malloc::delete("m_zc").await.unwrap();
        malloc::delete("m_zc2").await.unwrap();
        null::delete("n_zc").await.unwrap();
    });
}

thread_local! {
    /// (context word, status, simulated time) of each QoS test completion.
    static QOS_DONE: std::cell::RefCell<Vec<(usize, IoStatus, Duration)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn qos_done(io: &mut bdev::BdevIo, st: IoStatus) {
    let t = reactor::now();
    QOS_DONE.with(|d| d.borrow_mut().push((io.ctx(), st, t)));
}

/// Sets the I/O per second limit of `b` (0: none), on core 0.
fn set_ios(b: &bdev::Bdev, n: u64) -> bdev::QosLimits {
    let b = b.clone();
    on(0, move || async move {
        b.set_qos_limits(bdev::QosUpdate {
            rw_ios_per_sec: Some(n),
            ..Default::default()
        })
        .unwrap()
    })
}

/// Lets `ms` milliseconds of simulated time go by (the QoS slices refill).
fn pass(ms: u64) {
    on(0, move || async move {
        reactor::sleep(Duration::from_millis(ms)).await
    });
}

fn qos_results() -> Vec<(usize, IoStatus, Duration)> {
    QOS_DONE.with(|d| d.borrow_mut().drain(..).collect())
}

#[test]
fn qos_paces_io_aborts_and_resets_end_what_waits_and_removal_releases_it() {
    malloc::create("m_qos", 4096, 512, None).unwrap();
    let b = bdev::get("m_qos").unwrap();
    assert_eq!(set_ios(&b, 1500).rw_ios_per_sec, 2000, "rounded up");
    assert_eq!(set_ios(&b, 1000).rw_ios_per_sec, 1000);
    // Ten reads from core 1: one per 1 ms slice. One is aborted while it
    // waits; flushes pass.
    let (desc, ch) = enter(1, || {
        let d = bdev::open("m_qos", true, nop).unwrap();
        let c = d.get_io_channel().unwrap();
        (d, c)
    });
    enter(1, || {
        for i in 0..10 {
            ch.read(buf(512, 0), i, 1, qos_done, i as usize).unwrap();
        }
        ch.submit_nodata(IoType::Flush, 0, 1, qos_done, 100)
            .unwrap();
        ch.abort(7, qos_done, 200).unwrap();
    });
    pass(30);
    let r = qos_results();
    let find = |ctx: usize| r.iter().find(|x| x.0 == ctx).copied().unwrap();
    assert_eq!(find(7).1, IoStatus::Aborted, "{r:?}");
    assert_eq!(find(200).1, IoStatus::Success, "the abort found it");
    assert_eq!(find(100).1, IoStatus::Success);
    let reads: Vec<Duration> = (0..10).filter(|&i| i != 7).map(|i| find(i).2).collect();
    assert!(
        r.iter().all(|x| x.0 == 7 || x.1 == IoStatus::Success),
        "{r:?}"
    );
    let span = reads[reads.len() - 1] - reads[0];
    assert!(
        span >= Duration::from_millis(7) && span < Duration::from_millis(10),
        "nine reads at 1000 per second: {span:?} ({r:?})"
    );
    // Waiting I/O is released at once when the limit goes.
    enter(1, || {
        for i in 0..20 {
            ch.read(buf(512, 0), i, 1, qos_done, 300 + i as usize)
                .unwrap();
        }
    });
    set_ios(&b, 0);
    pass(30);
    let r = qos_results();
    assert_eq!(r.len(), 20);
    assert!(r.iter().all(|x| x.1 == IoStatus::Success), "{r:?}");
    let span = r.iter().map(|x| x.2).max().unwrap() - r.iter().map(|x| x.2).min().unwrap();
    assert!(
        span < Duration::from_millis(3),
        "released together: {span:?}"
    );
    assert_eq!(b.qos_limits(), bdev::QosLimits::default());
    // A reset aborts what waits for QoS.
    set_ios(&b, 1000);
    pass(30);
    enter(1, || {
        for i in 0..5 {
            ch.read(buf(512, 0), i, 1, qos_done, 400 + i as usize)
                .unwrap();
        }
        ch.submit_nodata(IoType::Reset, 0, 0, qos_done, 500)
            .unwrap();
    });
    pass(30);
    let r = qos_results();
    let aborted = r.iter().filter(|x| x.1 == IoStatus::Aborted).count();
    assert!(aborted >= 3, "waiting reads aborted by the reset: {r:?}");
    assert!(
        r.iter().any(|x| x.0 == 500 && x.1 == IoStatus::Success),
        "{r:?}"
    );
    assert_eq!(r.len(), 6);
    enter(1, || {
        drop(ch);
        drop(desc);
    });
    on(0, || async { malloc::delete("m_qos").await.unwrap() });
}
