//! The bdev layer as a platform for modules, on the deterministic runtime
//! (`reactor::SimRuntime`, two cores, a printed seed choosing which core
//! runs each step and when time moves): asynchronous examine and
//! `wait_for_examine`, claims of every type, quiesce of a range under I/O
//! from two cores, `for_each_channel`, SEEK defaults, COPY (native and
//! emulated), ABORT of held I/O, asynchronous destruct, and `save_config`
//! order from the claims graph. Rerun a failure with its `BDEV_SIM_SEED`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bdev::modules::{malloc, null, passthru};
use bdev::{
    Bdev, BdevError, BdevEvent, BdevIo, BdevModule, BdevOps, BdevProps, ClaimType, IoHandle,
    IoStatus, IoType, Medium, ModuleTask,
};
use dma::DmaBuf;
use reactor::SimRuntime;
use serde_json::{Value, json};

fn nop(_: &str, _: BdevEvent) {}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Two simulated cores stepped in a seeded random order.
struct Sim {
    rt: SimRuntime,
    rng: RefCell<Rng>,
    seed: u64,
}

impl Sim {
    fn new(test: &str) -> Sim {
        let seed = std::env::var("BDEV_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: BDEV_SIM_SEED={seed}");
        Sim {
            rt: SimRuntime::new(2),
            rng: RefCell::new(Rng(seed | 1)),
            seed,
        }
    }

    /// One iteration of a random core; now and then the clock moves.
    fn step(&self) {
        let (core, jump) = {
            let mut r = self.rng.borrow_mut();
            (
                r.below(2) as u32,
                (r.below(32) == 0).then(|| r.below(40) + 1),
            )
        };
        self.rt.poll(core);
        if let Some(us) = jump {
            self.rt.jump(Duration::from_micros(us));
        }
    }

    /// Steps until `cond` holds.
    fn until(&self, what: &str, cond: impl Fn() -> bool) {
        for _ in 0..2_000_000 {
            if cond() {
                return;
            }
            self.step();
        }
        panic!("{what}: not reached (BDEV_SIM_SEED={})", self.seed);
    }

    fn steps(&self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    fn on<T>(&self, core: u32, f: impl FnOnce() -> T) -> T {
        self.rt.enter(core, f)
    }

    fn block_on<T: 'static>(
        &self,
        core: u32,
        f: impl std::future::Future<Output = T> + 'static,
    ) -> T {
        self.rt.block_on(core, f).unwrap()
    }
}

fn dma(len: usize, fill: u8) -> DmaBuf {
    let mut b = bdev::memory().alloc(len, 4096).unwrap();
    b.fill(fill);
    b
}

fn bytes(b: &DmaBuf, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    b.read_at(0, &mut v);
    v
}

// ---------------------------------------------------------------------------
// Examine

/// Recognizes a "superblock" (block 0 filled with 0x5a) after a slow read
/// and builds a passthru `<name>_sb` on the bdev.
struct SbExaminer;

impl BdevModule for SbExaminer {
    fn name(&self) -> &str {
        "test_sb_examiner"
    }

    fn examine_disk(&self, bdev: &str) -> Option<ModuleTask> {
        if !bdev.starts_with("exsb_") || bdev.ends_with("_sb") {
            return None;
        }
        let name = bdev.to_owned();
        Some(Box::new(move || {
            Box::pin(async move {
                let desc = bdev::open(&name, false, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                reactor::sleep(Duration::from_millis(5)).await;
                let (st, b) = ch
                    .io(IoType::Read, Some(dma(512, 0)), 0, 1, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                drop(ch);
                drop(desc);
                if bytes(&b.unwrap(), 512).iter().all(|&x| x == 0x5a) {
                    passthru::create(&name, &format!("{name}_sb"), None).unwrap();
                }
            })
        }))
    }
}

#[test]
fn wait_for_examine_waits_for_an_asynchronous_disk_read() {
    let sim = Sim::new("examine");
    bdev::register_module(Arc::new(SbExaminer)).unwrap();
    sim.block_on(0, async {
        null::create("exsb_yes", 64, 512, None, null::ReadFill::Pattern(0x5a)).unwrap();
        null::create("exsb_no", 64, 512, None, null::ReadFill::Zeroes).unwrap();
        assert!(bdev::examines_in_flight() >= 2);
        assert!(
            bdev::get("exsb_yes_sb").is_none(),
            "the examine is still reading"
        );
        bdev::wait_for_examine().await;
        assert!(bdev::get("exsb_yes_sb").is_some(), "its bdev is registered");
        assert!(bdev::get("exsb_no_sb").is_none());
        assert_eq!(
            bdev::get("exsb_yes").unwrap().claimed_by().as_deref(),
            Some("passthru")
        );
        passthru::delete("exsb_yes_sb").await.unwrap();
        null::delete("exsb_yes").await.unwrap();
        null::delete("exsb_no").await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// Claims

fn claimed(e: &BdevError) -> bool {
    matches!(e, BdevError::Claimed { .. }) && e.errno() == -1
}

#[test]
fn claim_conflicts_for_each_type() {
    malloc::create("cl_m", 64, 512, None).unwrap();
    let holders = || bdev::get("cl_m").unwrap().claim_holders();
    let ty = || bdev::get("cl_m").unwrap().claim_type();

    // Exclusive write (v1): a writer already open keeps its descriptor, a
    // new writer is refused, readers are fine, a second claim of any type
    // is refused; released with its descriptor.
    let other_writer = bdev::open("cl_m", true, nop).unwrap();
    let mut w = bdev::open("cl_m", false, nop).unwrap();
    w.claim("mod_a").unwrap();
    assert!(w.writable(), "the claim makes its descriptor a writer");
    assert_eq!(ty(), Some(ClaimType::ExclusiveWrite));
    assert!(claimed(&bdev::open("cl_m", true, nop).unwrap_err()));
    let reader = bdev::open("cl_m", false, nop).unwrap();
    let mut r2 = bdev::open("cl_m", false, nop).unwrap();
    for t in [
        ClaimType::ExclusiveWrite,
        ClaimType::ReadManyWriteOne,
        ClaimType::ReadManyWriteNone,
    ] {
        let e = r2.claim_as("mod_b", t, 0).unwrap_err();
        assert!(claimed(&e), "{t:?}: {e}");
        assert!(e.to_string().contains("mod_a"), "names the holder: {e}");
    }
    assert!(
        claimed(&w.claim("mod_a").unwrap_err()),
        "one claim per descriptor"
    );
    drop(w);
    assert_eq!(ty(), None, "released with its descriptor");

    // Read-many-write-one: none while another descriptor writes; then the
    // only writer.
    let mut one = bdev::open("cl_m", false, nop).unwrap();
    let e = one
        .claim_as("mod_c", ClaimType::ReadManyWriteOne, 0)
        .unwrap_err();
    assert!(
        claimed(&e) && e.to_string().contains("open for writing"),
        "{e}"
    );
    assert!(matches!(
        one.claim_as("mod_c", ClaimType::ReadManyWriteOne, 5),
        Err(BdevError::Invalid { .. })
    ));
    drop(other_writer);
    one.claim_as("mod_c", ClaimType::ReadManyWriteOne, 0)
        .unwrap();
    assert!(one.writable());
    assert!(claimed(&bdev::open("cl_m", true, nop).unwrap_err()));
    assert!(bdev::open("cl_m", false, nop).is_ok(), "readers are fine");
    assert!(claimed(
        &r2.claim_as("mod_d", ClaimType::ReadManyWriteOne, 0)
            .unwrap_err()
    ));
    drop(one);

    // Read-many-write-none: read-only descriptors, several claimants, no
    // writer at all.
    let mut n1 = bdev::open("cl_m", false, nop).unwrap();
    let mut n2 = bdev::open("cl_m", false, nop).unwrap();
    n1.claim_as("mod_e", ClaimType::ReadManyWriteNone, 0)
        .unwrap();
    n2.claim_as("mod_f", ClaimType::ReadManyWriteNone, 0)
        .unwrap();
    assert!(!n1.writable());
    assert_eq!(holders(), vec!["mod_e".to_owned(), "mod_f".to_owned()]);
    assert!(claimed(&bdev::open("cl_m", true, nop).unwrap_err()));
    for t in [ClaimType::ExclusiveWrite, ClaimType::ReadManyWriteOne] {
        assert!(claimed(&r2.claim_as("mod_g", t, 0).unwrap_err()), "{t:?}");
    }
    assert!(claimed(
        &r2.claim_as("mod_g", ClaimType::ReadManyWriteShared, 3)
            .unwrap_err()
    ));
    drop((n1, n2));
    let writer = bdev::open("cl_m", true, nop).unwrap();
    let e = r2
        .claim_as("mod_h", ClaimType::ReadManyWriteNone, 0)
        .unwrap_err();
    assert!(claimed(&e), "a writer is open: {e}");
    let mut wr = writer;
    assert!(
        matches!(
            wr.claim_as("mod_h", ClaimType::ReadManyWriteNone, 0),
            Err(BdevError::Invalid { .. })
        ),
        "a writable descriptor cannot take it"
    );

    // Read-many-write-shared: a key is needed; the claimants (opened
    // read-only, made writers by the claim) share it with the same key;
    // another key or type is refused; unclaimed writers are refused.
    let mut s1 = bdev::open("cl_m", false, nop).unwrap();
    let mut s2 = bdev::open("cl_m", false, nop).unwrap();
    let mut s3 = bdev::open("cl_m", false, nop).unwrap();
    assert!(matches!(
        s1.claim_as("mod_i", ClaimType::ReadManyWriteShared, 0),
        Err(BdevError::Invalid { .. })
    ));
    let e = s1
        .claim_as("mod_i", ClaimType::ReadManyWriteShared, 7)
        .unwrap_err();
    assert!(claimed(&e), "an unclaimed writer is open: {e}");
    drop(wr);
    s1.claim_as("mod_i", ClaimType::ReadManyWriteShared, 7)
        .unwrap();
    s2.claim_as("mod_j", ClaimType::ReadManyWriteShared, 7)
        .unwrap();
    assert!(s1.writable() && s2.writable());
    assert!(claimed(
        &s3.claim_as("mod_k", ClaimType::ReadManyWriteShared, 8)
            .unwrap_err()
    ));
    assert!(claimed(
        &s3.claim_as("mod_k", ClaimType::ReadManyWriteNone, 0)
            .unwrap_err()
    ));
    assert!(claimed(&bdev::open("cl_m", true, nop).unwrap_err()));
    assert_eq!(ty(), Some(ClaimType::ReadManyWriteShared));
    drop(s1);
    assert_eq!(
        holders(),
        vec!["mod_j".to_owned()],
        "the other claimant stays"
    );
    drop((s2, s3, r2, reader));
    assert_eq!(ty(), None);
    let sim = Sim::new("claims");
    sim.block_on(0, async { malloc::delete("cl_m").await.unwrap() });
}

// ---------------------------------------------------------------------------
// Quiesce

#[derive(Default)]
struct QLog {
    quiesced: Cell<bool>,
    in_range_while_quiesced: Cell<u64>,
    outside_while_quiesced: Cell<u64>,
    held_seen: Cell<u64>,
    done: Cell<u64>,
    failed: Cell<u64>,
    /// Writers outside the range still running.
    outside_writers: Cell<u32>,
}

#[test]
fn quiesce_a_range_while_two_cores_write() {
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 250;
    const RANGE: std::ops::Range<u64> = 100..150;
    let sim = Sim::new("quiesce");
    sim.on(0, || malloc::create("q_m", 1024, 512, None).unwrap());
    let log = Rc::new(QLog::default());
    let over = Rc::new(Cell::new(false));
    let seed = sim.seed;
    // One writer per core that never touches the range, until the quiesce
    // is over: I/O elsewhere is there to flow whatever the seed (the
    // random writers may all be held in the range by then).
    for core in 0..2u32 {
        let (log, over) = (log.clone(), over.clone());
        log.outside_writers.set(log.outside_writers.get() + 1);
        let task = async move {
            let desc = bdev::open("q_m", true, nop).unwrap();
            let ch = desc.get_io_channel().unwrap();
            let mut rng = Rng((seed ^ (u64::from(core) << 32 | 0xff)) | 1);
            while !over.get() {
                let lba = RANGE.end + rng.below(1024 - RANGE.end);
                let (st, _) = ch
                    .io(IoType::Write, Some(dma(512, lba as u8)), lba, 1, false)
                    .await
                    .unwrap();
                if st != IoStatus::Success {
                    log.failed.set(log.failed.get() + 1);
                }
                if log.quiesced.get() {
                    log.outside_while_quiesced
                        .set(log.outside_while_quiesced.get() + 1);
                }
            }
            log.outside_writers.set(log.outside_writers.get() - 1);
        };
        drop(sim.on(core, || reactor::spawn(task)));
    }
    for core in 0..2u32 {
        for t in 0..TASKS {
            let log = log.clone();
            let task = async move {
                let desc = bdev::open("q_m", true, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                let mut rng = Rng((seed ^ (u64::from(core) << 32 | t)) | 1);
                for _ in 0..PER_TASK {
                    let lba = rng.below(1024);
                    let (st, _) = ch
                        .io(IoType::Write, Some(dma(512, lba as u8)), lba, 1, false)
                        .await
                        .unwrap();
                    if st != IoStatus::Success {
                        log.failed.set(log.failed.get() + 1);
                    }
                    if log.quiesced.get() {
                        let c = if RANGE.contains(&lba) {
                            &log.in_range_while_quiesced
                        } else {
                            &log.outside_while_quiesced
                        };
                        c.set(c.get() + 1);
                    }
                    log.done.set(log.done.get() + 1);
                }
            };
            drop(sim.on(core, || reactor::spawn(task)));
        }
    }
    {
        let (log, over) = (log.clone(), over.clone());
        let q = async move {
            let b = bdev::get("q_m").unwrap();
            reactor::sleep(Duration::from_micros(100)).await;
            b.quiesce_range("test", RANGE.start, RANGE.end - RANGE.start)
                .await
                .unwrap();
            assert!(b.is_quiesced());
            // Overlapping ranges are refused; unknown ones cannot be lifted.
            assert!(b.quiesce_range("test", 120, 100).await.is_err());
            assert!(b.unquiesce_range("test", 100, 10).await.is_err());
            log.quiesced.set(true);
            let before = log.done.get();
            reactor::sleep(Duration::from_micros(400)).await;
            log.held_seen.set(log.done.get() - before);
            log.quiesced.set(false);
            b.unquiesce_range("test", RANGE.start, RANGE.end - RANGE.start)
                .await
                .unwrap();
            assert!(!b.is_quiesced());
            over.set(true);
        };
        drop(sim.on(0, || reactor::spawn(q)));
    }
    let total = 2 * TASKS * PER_TASK;
    sim.until("every write done and the quiesce over", || {
        log.done.get() == total && over.get() && log.outside_writers.get() == 0
    });
    eprintln!(
        "quiesce: {} writes elsewhere and {} in all completed while quiesced",
        log.outside_while_quiesced.get(),
        log.held_seen.get()
    );
    assert_eq!(log.failed.get(), 0, "nothing failed");
    assert_eq!(
        log.in_range_while_quiesced.get(),
        0,
        "no I/O to the range completed while it was quiesced (seed {})",
        sim.seed
    );
    assert!(
        log.outside_while_quiesced.get() > 0,
        "I/O elsewhere flowed meanwhile (seed {})",
        sim.seed
    );
    sim.block_on(0, async { malloc::delete("q_m").await.unwrap() });
}

// ---------------------------------------------------------------------------
// for_each_channel, SEEK, ABORT

thread_local! {
    static LAST: RefCell<Vec<(usize, IoStatus, u64)>> = const { RefCell::new(Vec::new()) };
}

fn record(io: &mut BdevIo, st: IoStatus) {
    LAST.with(|l| l.borrow_mut().push((io.ctx(), st, io.seek_offset())));
}

fn results() -> Vec<(usize, IoStatus, u64)> {
    LAST.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[test]
fn for_each_channel_visits_every_core_with_its_channel() {
    let sim = Sim::new("for_each_channel");
    sim.on(0, || {
        malloc::create("fe_m", 64, 512, None).unwrap();
        passthru::create("fe_m", "fe_pt", None).unwrap();
    });
    let desc = sim.on(0, || bdev::open("fe_pt", false, nop).unwrap());
    let ch0 = sim.on(0, || desc.get_io_channel().unwrap());
    let ch1 = sim.on(1, || desc.get_io_channel().unwrap());
    let seen: Arc<std::sync::Mutex<Vec<(u32, bool)>>> = Arc::default();
    let s = seen.clone();
    sim.block_on(1, async move {
        let b = bdev::get("fe_pt").unwrap();
        b.for_each_channel::<passthru::PassthruChannel>(move |core, ch| {
            assert_eq!(
                reactor::current_core(),
                Some(core),
                "run on the channel's core"
            );
            s.lock().unwrap().push((core, ch.is_some()));
        })
        .await
        .unwrap();
        // The wrong type: no channel given.
        b.for_each_channel::<u64>(|_, ch| assert!(ch.is_none()))
            .await
            .unwrap();
    });
    assert_eq!(*seen.lock().unwrap(), vec![(0, true), (1, true)]);
    sim.on(0, || drop(ch0));
    sim.on(1, || drop(ch1));
    drop(desc);
    sim.block_on(0, async {
        passthru::delete("fe_pt").await.unwrap();
        malloc::delete("fe_m").await.unwrap();
    });
}

#[test]
fn seek_defaults_and_abort_of_held_io() {
    let sim = Sim::new("seek_abort");
    sim.on(0, || {
        null::create("sk_n", 1000, 512, None, null::ReadFill::Zeroes).unwrap()
    });
    let desc = sim.on(0, || bdev::open("sk_n", true, nop).unwrap());
    let ch = sim.on(0, || desc.get_io_channel().unwrap());
    // A module without SEEK: data everywhere, no hole before the end.
    sim.on(0, || {
        ch.seek_data(17, record, 1).unwrap();
        ch.seek_hole(17, record, 2).unwrap();
        assert!(ch.seek_data(1000, record, 3).is_err(), "beyond the end");
    });
    assert!(results().is_empty(), "never completed inside the call");
    sim.until("seeks done", || LAST.with(|l| l.borrow().len() == 2));
    assert_eq!(
        results(),
        vec![(1, IoStatus::Success, 17), (2, IoStatus::Success, 1000)]
    );
    let b = sim.on(0, || bdev::get("sk_n").unwrap());
    assert!(!b.io_type_supported(IoType::SeekData));
    // ABORT: I/O held by a quiesce is aborted by its context word.
    let b2 = b.clone();
    sim.block_on(
        0,
        async move { b2.quiesce_range("test", 0, 100).await.unwrap() },
    );
    sim.on(0, || {
        ch.submit_nodata(IoType::Unmap, 5, 1, record, 77).unwrap();
        ch.submit_nodata(IoType::Unmap, 6, 1, record, 78).unwrap();
        ch.submit_nodata(IoType::Unmap, 500, 1, record, 79).unwrap();
    });
    sim.until("the unmap outside the range done", || {
        LAST.with(|l| l.borrow().len() == 1)
    });
    assert_eq!(results()[0].0, 79);
    sim.steps(200);
    assert!(results().is_empty(), "the others are held");
    sim.on(0, || {
        ch.abort(77, record, 1077).unwrap();
        ch.abort(12345, record, 2000).unwrap();
    });
    sim.until("aborts done", || LAST.with(|l| l.borrow().len() == 3));
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_by_key(|x| x.0);
    assert_eq!(
        r,
        vec![
            (77, IoStatus::Aborted),
            (1077, IoStatus::Success),
            (2000, IoStatus::Failed)
        ]
    );
    let b3 = b.clone();
    sim.block_on(0, async move {
        b3.unquiesce_range("test", 0, 100).await.unwrap()
    });
    sim.until("the other held unmap done", || {
        LAST.with(|l| l.borrow().len() == 1)
    });
    assert_eq!(results(), vec![(78, IoStatus::Success, 0)]);
    sim.on(0, || drop(ch));
    drop(desc);
    sim.block_on(0, async { null::delete("sk_n").await.unwrap() });
}

// ---------------------------------------------------------------------------
// COPY

/// A RAM disk without COPY (and without `unsafe`): the layer emulates it.
struct RamNoCopy {
    disk: Medium,
    bs: usize,
}

impl BdevOps for RamNoCopy {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), mut io: IoHandle) {
        let r = io.io();
        let (off, len) = (
            r.offset_blocks() as usize * self.bs,
            r.num_blocks() as usize * self.bs,
        );
        let res = match r.io_type() {
            IoType::Read => self.disk.read_into(off, &mut io),
            IoType::Write => self.disk.write_from(off, &io),
            IoType::Unmap | IoType::WriteZeroes => self.disk.fill(off, len, 0),
            _ => Ok(()),
        };
        io.complete(if res.is_ok() {
            IoStatus::Success
        } else {
            IoStatus::Failed
        });
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(
            ty,
            IoType::Read | IoType::Write | IoType::Unmap | IoType::WriteZeroes | IoType::Flush
        )
    }
}

async fn copy_and_check(name: &str, blocks: u64, src: u64, dst: u64, n: u64) {
    let desc = bdev::open(name, true, nop).unwrap();
    let ch = desc.get_io_channel().unwrap();
    let bs = desc.bdev().block_size() as usize;
    let mut data = vec![0u8; n as usize * bs];
    let mut rng = Rng(n * 31 + src);
    for x in data.iter_mut() {
        *x = rng.next() as u8;
    }
    let mut b = dma(data.len(), 0);
    b.write_at(0, &data);
    let (st, _) = ch.io(IoType::Write, Some(b), src, n, false).await.unwrap();
    assert_eq!(st, IoStatus::Success);
    ch.copy(dst, src, n, record, 9).unwrap();
    while LAST.with(|l| l.borrow().is_empty()) {
        reactor::yield_now().await;
    }
    assert_eq!(results()[0].1, IoStatus::Success, "{name}: copy");
    let (st, b) = ch
        .io(IoType::Read, Some(dma(data.len(), 0)), dst, n, false)
        .await
        .unwrap();
    assert_eq!(st, IoStatus::Success);
    assert!(
        bytes(&b.unwrap(), data.len()) == data,
        "{name}: copied data"
    );
    // Bounds: both ranges are checked.
    assert!(ch.copy(blocks - 1, 0, 2, record, 0).is_err());
    assert!(ch.copy(0, blocks - 1, 2, record, 0).is_err());
    assert_eq!(
        desc.bdev().stats().of(IoType::Copy).ops,
        1,
        "{name}: counted as one COPY"
    );
}

#[test]
fn copy_native_and_emulated() {
    let sim = Sim::new("copy");
    sim.on(0, || {
        malloc::create("cp_m", 1024, 512, None).unwrap();
        let mut props = BdevProps::new("cp_ram", "RAM without copy", 512, 1024);
        props.max_transfer_blocks = Some(64);
        let disk = Medium::new(bdev::memory().alloc(1024 * 512, 4096).unwrap());
        disk.fill(0, disk.len(), 0).unwrap();
        bdev::register("test_ram", props, RamNoCopy { disk, bs: 512 }).unwrap();
    });
    sim.block_on(0, async {
        assert!(bdev::get("cp_m").unwrap().io_type_supported(IoType::Copy));
        assert!(!bdev::get("cp_ram").unwrap().io_type_supported(IoType::Copy));
        copy_and_check("cp_m", 1024, 10, 600, 300).await;
        // Emulated: 300 blocks of 512 bytes are two steps of at most
        // 128 KiB, each split by the module's 64-block limit.
        copy_and_check("cp_ram", 1024, 10, 600, 300).await;
        let st = bdev::get("cp_ram").unwrap().stats();
        assert!(st.of(IoType::Read).ops >= 2 && st.of(IoType::Write).ops >= 3);
        malloc::delete("cp_m").await.unwrap();
        bdev::unregister("cp_ram").await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// Asynchronous destruct

static MARKED: AtomicBool = AtomicBool::new(false);

#[test]
fn asynchronous_destruct_writes_before_the_bdev_is_gone() {
    let sim = Sim::new("destruct");
    sim.block_on(0, async {
        malloc::create("ds_m", 64, 512, None).unwrap();
        stack_create("ds_v", "ds_m", None, true);
        bdev::unregister("ds_v").await.unwrap();
        assert!(
            MARKED.load(Ordering::SeqCst),
            "written before unregister completed"
        );
        assert!(bdev::get("ds_v").is_none());
        assert!(
            bdev::get("ds_m").unwrap().claimed_by().is_none(),
            "base released"
        );
        let d = bdev::open("ds_m", false, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let (_, b) = ch
            .io(IoType::Read, Some(dma(512, 0)), 0, 1, false)
            .await
            .unwrap();
        assert!(bytes(&b.unwrap(), 512).iter().all(|&x| x == 0xc1));
        drop(ch);
        drop(d);
        malloc::delete("ds_m").await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// save_config order

/// A vbdev whose creating call names its base `lower` (no name guess finds
/// it; only the claims graph orders it), and that can write a "clean" mark
/// on its base when it goes away (an asynchronous destruct).
struct Stack {
    name: String,
    lower: String,
    uuid: String,
    base: std::sync::Mutex<Option<bdev::Desc>>,
    mark_on_destruct: bool,
}

impl BdevOps for Stack {
    type Channel = bdev::BdevChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<bdev::BdevChannel, String> {
        let d = self.base.lock().unwrap();
        d.as_ref()
            .ok_or("base closed")?
            .get_io_channel()
            .map_err(|e| e.to_string())
    }

    fn submit(&self, ch: &bdev::BdevChannel, io: IoHandle) {
        io.forward(ch, bdev::complete_parent);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(ty, IoType::Read | IoType::Write)
    }

    fn write_config_json(&self) -> Option<Value> {
        Some(json!({"method": "test_stack_create",
            "params": {"name": self.name, "lower": self.lower, "uuid": self.uuid}}))
    }

    fn destruct(&self) {
        if !self.mark_on_destruct {
            self.base.lock().unwrap().take();
        }
    }

    fn destruct_async(&self) -> Option<ModuleTask> {
        if !self.mark_on_destruct {
            return None;
        }
        let desc = self.base.lock().unwrap().take()?;
        let name = self.name.clone();
        Some(Box::new(move || {
            Box::pin(async move {
                assert!(
                    bdev::get(&name).is_some(),
                    "still registered while destructing"
                );
                let ch = desc.get_io_channel().unwrap();
                reactor::sleep(Duration::from_millis(1)).await;
                let (st, _) = ch
                    .io(IoType::Write, Some(dma(512, 0xc1)), 0, 1, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                MARKED.store(true, Ordering::SeqCst);
            })
        }))
    }
}

fn stack_create(name: &str, lower: &str, uuid: Option<&str>, mark_on_destruct: bool) -> Bdev {
    let mut base = bdev::open(lower, true, nop).unwrap();
    base.claim_for("test_stack", Some(name), ClaimType::ExclusiveWrite, 0)
        .unwrap();
    let b = base.bdev().clone();
    let mut props = BdevProps::new(name, "stack", b.block_size(), b.num_blocks());
    props.uuid = uuid.map(str::to_owned);
    let uuid = uuid.map_or_else(bdev::new_uuid, str::to_owned);
    props.uuid = Some(uuid.clone());
    bdev::register(
        "test_stack",
        props,
        Stack {
            name: name.into(),
            lower: lower.into(),
            uuid,
            base: std::sync::Mutex::new(Some(base)),
            mark_on_destruct,
        },
    )
    .unwrap()
}

fn ours(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| {
            c["params"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("sv_"))
        })
        .cloned()
        .collect()
}

#[test]
fn save_config_orders_a_stack_by_its_claims() {
    let sim = Sim::new("save_config");
    let calls = sim.block_on(0, async {
        malloc::create("sv_zz_bottom", 64, 512, None).unwrap();
        stack_create("sv_mm_middle", "sv_zz_bottom", None, false);
        stack_create("sv_aa_top", "sv_mm_middle", None, false);
        let listed: Vec<String> = bdev::list()
            .iter()
            .map(|b| b.name().to_owned())
            .filter(|n| n.starts_with("sv_"))
            .collect();
        assert_eq!(listed[0], "sv_aa_top", "listed by name: not a usable order");
        ours(&bdev::config_calls())
    });
    let order: Vec<&str> = calls
        .iter()
        .map(|c| c["params"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["sv_zz_bottom", "sv_mm_middle", "sv_aa_top"]);
    let uuids: Vec<String> = ["sv_zz_bottom", "sv_mm_middle", "sv_aa_top"]
        .iter()
        .map(|n| bdev::get(n).unwrap().uuid().to_owned())
        .collect();
    // "Restart": everything goes, then the saved calls are replayed.
    let replay = calls.clone();
    sim.block_on(0, async move {
        for n in ["sv_aa_top", "sv_mm_middle", "sv_zz_bottom"] {
            bdev::unregister(n).await.unwrap();
        }
        for c in &replay {
            let p = &c["params"];
            match c["method"].as_str().unwrap() {
                "bdev_malloc_create" => {
                    malloc::create(
                        p["name"].as_str().unwrap(),
                        p["num_blocks"].as_u64().unwrap(),
                        p["block_size"].as_u64().unwrap() as u32,
                        p["uuid"].as_str(),
                    )
                    .unwrap();
                }
                "test_stack_create" => {
                    stack_create(
                        p["name"].as_str().unwrap(),
                        p["lower"].as_str().unwrap(),
                        p["uuid"].as_str(),
                        false,
                    );
                }
                other => panic!("unexpected call {other}"),
            }
        }
    });
    let again: Vec<String> = ["sv_zz_bottom", "sv_mm_middle", "sv_aa_top"]
        .iter()
        .map(|n| bdev::get(n).unwrap().uuid().to_owned())
        .collect();
    assert_eq!(again, uuids, "the same stack, the same UUIDs");
    assert_eq!(
        bdev::get("sv_zz_bottom").unwrap().claimed_for(),
        vec!["sv_mm_middle"]
    );
    assert_eq!(
        bdev::get("sv_mm_middle").unwrap().claimed_for(),
        vec!["sv_aa_top"]
    );
    assert_eq!(
        ours(&sim.on(0, bdev::config_calls)),
        calls,
        "saved again, the same"
    );
    sim.block_on(0, async {
        for n in ["sv_aa_top", "sv_mm_middle", "sv_zz_bottom"] {
            bdev::unregister(n).await.unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// Out of resources

/// A device that takes at most `cap` I/Os at once (NoMem beyond), and
/// completes them only when the test says.
struct Gate {
    cap: usize,
    held: RefCell<Vec<IoHandle>>,
    submissions: Cell<u64>,
    refusals: Cell<u64>,
}

// SAFETY: the simulated runtime runs every core on the test's one thread,
// so the table (and the handles it holds) never crosses threads.
unsafe impl Send for Gate {}
// SAFETY: as above.
unsafe impl Sync for Gate {}

impl BdevOps for Gate {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), io: IoHandle) {
        self.submissions.set(self.submissions.get() + 1);
        if self.held.borrow().len() >= self.cap {
            self.refusals.set(self.refusals.get() + 1);
            return io.complete(IoStatus::NoMem);
        }
        self.held.borrow_mut().push(io);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        ty == IoType::Unmap
    }
}

#[test]
fn out_of_resources_retries_wait_for_completions() {
    let sim = Sim::new("nomem");
    let b = sim.on(0, || {
        bdev::register(
            "test_gate",
            BdevProps::new("nm_gate", "gate", 512, 1024),
            Gate {
                cap: 8,
                held: RefCell::new(Vec::new()),
                submissions: Cell::new(0),
                refusals: Cell::new(0),
            },
        )
        .unwrap()
    });
    let gate = || b.ops_as::<Gate>().unwrap();
    let desc = sim.on(0, || bdev::open("nm_gate", true, nop).unwrap());
    let ch = sim.on(0, || desc.get_io_channel().unwrap());
    sim.on(0, || {
        for i in 0..40u64 {
            ch.submit_nodata(IoType::Unmap, i, 1, record, i as usize)
                .unwrap();
        }
    });
    sim.rt.run_until_idle();
    assert_eq!(gate().held.borrow().len(), 8);
    assert_eq!(gate().refusals.get(), 32, "each refused once, then queued");
    // Completing one of eight does not retry yet (threshold: half).
    let release = |n: usize| {
        sim.on(0, || {
            for _ in 0..n {
                let io = gate().held.borrow_mut().pop();
                if let Some(io) = io {
                    io.complete(IoStatus::Success);
                }
            }
        });
        sim.rt.run_until_idle();
    };
    release(1);
    assert_eq!(
        gate().held.borrow().len(),
        7,
        "no retry above the threshold"
    );
    assert_eq!(gate().submissions.get(), 40);
    release(3);
    assert_eq!(
        gate().held.borrow().len(),
        8,
        "retried at the threshold, refilled"
    );
    for _ in 0..100 {
        if results_len() == 40 {
            break;
        }
        release(8);
    }
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_unstable_by_key(|x| x.0);
    assert_eq!(
        r,
        (0..40).map(|i| (i, IoStatus::Success)).collect::<Vec<_>>(),
        "every I/O completed once, none lost"
    );
    let subs = gate().submissions.get();
    assert!(
        subs <= 40 + 32 + 10,
        "retries come in rounds, not one per completion: {subs} submissions"
    );
    sim.on(0, || drop(ch));
    drop(desc);
    sim.block_on(0, async { bdev::unregister("nm_gate").await.unwrap() });
}

fn results_len() -> usize {
    LAST.with(|l| l.borrow().len())
}

// ---------------------------------------------------------------------------
// RESET

/// A device that holds every I/O (and every reset) until the test lets it
/// go; on its reset it aborts what it holds.
struct Holder {
    held: RefCell<Vec<IoHandle>>,
    resets: RefCell<Vec<IoHandle>>,
    resets_seen: Cell<u32>,
    most_resets_at_once: Cell<usize>,
}

// SAFETY: as for `Gate`: every simulated core is the test's one thread.
unsafe impl Send for Holder {}
// SAFETY: as above.
unsafe impl Sync for Holder {}

impl BdevOps for Holder {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), io: IoHandle) {
        if io.io().io_type() == IoType::Reset {
            self.resets_seen.set(self.resets_seen.get() + 1);
            for h in self.held.borrow_mut().drain(..) {
                h.complete(IoStatus::Aborted);
            }
            self.resets.borrow_mut().push(io);
            let n = self.resets.borrow().len();
            self.most_resets_at_once
                .set(self.most_resets_at_once.get().max(n));
            return;
        }
        self.held.borrow_mut().push(io);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(ty, IoType::Unmap | IoType::Reset)
    }
}

fn holder(sim: &Sim, name: &str, drain: Option<Duration>) -> Bdev {
    let mut props = BdevProps::new(name, "holder", 512, 1024);
    props.reset_io_drain_timeout = drain;
    sim.on(0, || {
        bdev::register(
            "test_holder",
            props,
            Holder {
                held: RefCell::new(Vec::new()),
                resets: RefCell::new(Vec::new()),
                resets_seen: Cell::new(0),
                most_resets_at_once: Cell::new(0),
            },
        )
        .unwrap()
    })
}

#[test]
fn reset_freezes_aborts_and_lets_the_module_abort() {
    let sim = Sim::new("reset");
    let b = holder(&sim, "rs_h", None);
    let h = || b.ops_as::<Holder>().unwrap();
    let desc = sim.on(0, || bdev::open("rs_h", true, nop).unwrap());
    let ch0 = sim.on(0, || desc.get_io_channel().unwrap());
    let ch1 = sim.on(1, || desc.get_io_channel().unwrap());
    sim.on(0, || {
        for i in 0..3 {
            ch0.submit_nodata(IoType::Unmap, i, 1, record, i as usize)
                .unwrap();
        }
    });
    sim.on(1, || {
        ch1.submit_nodata(IoType::Unmap, 9, 1, record, 9).unwrap()
    });
    sim.rt.run_until_idle();
    assert_eq!(h().held.borrow().len(), 4);
    // Two resets at once, one per core: the module sees one at a time.
    sim.on(0, || {
        ch0.submit_nodata(IoType::Reset, 0, 0, record, 100).unwrap()
    });
    sim.on(1, || {
        ch1.submit_nodata(IoType::Reset, 0, 0, record, 101).unwrap()
    });
    sim.until("the module has a reset", || !h().resets.borrow().is_empty());
    // The module aborted what it held.
    sim.rt.run_until_idle();
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_unstable_by_key(|x| x.0);
    assert_eq!(
        r,
        vec![
            (0, IoStatus::Aborted),
            (1, IoStatus::Aborted),
            (2, IoStatus::Aborted),
            (9, IoStatus::Aborted)
        ]
    );
    // Frozen: new I/O is aborted at once, on every core.
    sim.on(1, || {
        ch1.submit_nodata(IoType::Unmap, 5, 1, record, 55).unwrap()
    });
    sim.rt.run_until_idle();
    assert_eq!(results(), vec![(55, IoStatus::Aborted, 0)]);
    assert!(h().held.borrow().is_empty());
    // Let the module's resets finish, one after the other.
    for _ in 0..2 {
        sim.until("a reset reaches the module", || {
            !h().resets.borrow().is_empty()
        });
        let r = h().resets.borrow_mut().pop().unwrap();
        sim.on(0, || r.complete(IoStatus::Success));
    }
    sim.until("both resets done", || results_len() == 2);
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_unstable_by_key(|x| x.0);
    assert_eq!(r, vec![(100, IoStatus::Success), (101, IoStatus::Success)]);
    assert_eq!(h().resets_seen.get(), 2);
    assert_eq!(h().most_resets_at_once.get(), 1, "one reset at a time");
    // Thawed: I/O flows again.
    sim.on(0, || {
        ch0.submit_nodata(IoType::Unmap, 7, 1, record, 7).unwrap()
    });
    sim.rt.run_until_idle();
    assert_eq!(h().held.borrow().len(), 1);
    let io = h().held.borrow_mut().pop().unwrap();
    sim.on(0, || io.complete(IoStatus::Success));
    sim.rt.run_until_idle();
    assert_eq!(results(), vec![(7, IoStatus::Success, 0)]);
    sim.on(0, || drop(ch0));
    sim.on(1, || drop(ch1));
    drop(desc);
    sim.block_on(0, async { bdev::unregister("rs_h").await.unwrap() });
}

#[test]
fn reset_with_a_drain_timeout_waits_for_io_first() {
    let sim = Sim::new("reset_drain");
    let b = holder(&sim, "rd_h", Some(Duration::from_millis(1)));
    let h = || b.ops_as::<Holder>().unwrap();
    let desc = sim.on(0, || bdev::open("rd_h", true, nop).unwrap());
    let ch = sim.on(0, || desc.get_io_channel().unwrap());
    // The I/O ends within the timeout: the reset succeeds without the
    // module ever seeing it.
    sim.on(0, || {
        ch.submit_nodata(IoType::Unmap, 1, 1, record, 1).unwrap();
        ch.submit_nodata(IoType::Unmap, 2, 1, record, 2).unwrap();
    });
    sim.rt.run_until_idle();
    sim.on(0, || {
        ch.submit_nodata(IoType::Reset, 0, 0, record, 100).unwrap()
    });
    let t0 = sim.rt.now();
    while sim.rt.now() < t0 + Duration::from_micros(300) {
        sim.step();
    }
    assert!(results().is_empty(), "the reset waits for the I/O");
    for io in h().held.borrow_mut().drain(..).collect::<Vec<_>>() {
        sim.on(0, || io.complete(IoStatus::Success));
    }
    sim.until("the reset done", || results_len() == 3);
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_unstable_by_key(|x| x.0);
    assert_eq!(
        r,
        vec![
            (1, IoStatus::Success),
            (2, IoStatus::Success),
            (100, IoStatus::Success)
        ]
    );
    assert_eq!(h().resets_seen.get(), 0, "drained: the module never saw it");
    // The I/O does not end: after the timeout the module gets the reset.
    sim.on(0, || {
        ch.submit_nodata(IoType::Unmap, 3, 1, record, 3).unwrap()
    });
    sim.rt.run_until_idle();
    sim.on(0, || {
        ch.submit_nodata(IoType::Reset, 0, 0, record, 101).unwrap()
    });
    let t0 = sim.rt.now();
    sim.until("the module has the reset", || {
        !h().resets.borrow().is_empty()
    });
    assert!(
        sim.rt.now() - t0 >= Duration::from_millis(1),
        "after the timeout"
    );
    let r = h().resets.borrow_mut().pop().unwrap();
    sim.on(0, || r.complete(IoStatus::Success));
    sim.until("the reset done", || results_len() == 2);
    let mut r: Vec<(usize, IoStatus)> = results().into_iter().map(|x| (x.0, x.1)).collect();
    r.sort_unstable_by_key(|x| x.0);
    assert_eq!(r, vec![(3, IoStatus::Aborted), (101, IoStatus::Success)]);
    sim.on(0, || drop(ch));
    drop(desc);
    sim.block_on(0, async { bdev::unregister("rd_h").await.unwrap() });
}
