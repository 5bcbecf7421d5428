//! The data test every bdev that stores data must pass (malloc on the host,
//! nvme in the guest): random patterns at random offsets from both cores,
//! misaligned buffers, transfers larger than the device's maximum, write
//! zeroes, unmap, flush.

#![allow(dead_code)]

use std::sync::OnceLock;

use bdev::{BdevEvent, IoStatus, IoType, IoVec};

pub fn nop(_: &str, _: BdevEvent) {}

pub fn runtime() -> &'static reactor::Runtime {
    static RT: OnceLock<reactor::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = reactor::Runtime::builder("0x3".parse().unwrap())
            .pin(false)
            .start()
            .unwrap();
        bdev::set_runtime(rt.handle());
        rt
    })
}

pub fn on<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    core: u32,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    runtime().block_on(core, f).unwrap()
}

/// Waits until `f` holds, polled on reactor 0 between its other work (no
/// sleeping); fails after 10 s of the runtime's clock.
pub fn wait_until(what: &'static str, mut f: impl FnMut() -> bool + Send + 'static) {
    on(0, move || async move {
        let deadline = reactor::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(reactor::now() < deadline, "timed out waiting for {what}");
            reactor::yield_now().await;
        }
    });
}

/// xorshift64: the tests' seeded random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Runs the data test on bdev `name`: each core works on its own half.
pub fn data_test(name: &str, seed: u64) {
    println!("data test on {name}, seed {seed}");
    let b = bdev::get(name).unwrap();
    let bs = b.block_size() as usize;
    let blocks = b.num_blocks().min((64 << 20) / bs as u64);
    for core in [0u32, 1] {
        let name = name.to_owned();
        on(core, move || async move {
            let desc = bdev::open(&name, true, nop).unwrap();
            let ch = desc.get_io_channel().unwrap();
            let mem = bdev::memory();
            let half = blocks / 2;
            let base = core as u64 * half;
            let mut rng = Rng((seed ^ ((core as u64 + 1) * 0x9e37_79b9)) | 1);
            let mut expected = vec![0u8; (half as usize) * bs];
            // Start from known contents: zeroes over the whole half.
            let (st, _) = ch
                .io(IoType::WriteZeroes, None, base, half, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success, "write zeroes over the half");
            // Random writes, some from misaligned segments, some larger
            // than the device's maximum transfer (2 MiB).
            for i in 0..120 {
                let n = if i % 10 == 0 {
                    (2 << 20) / bs as u64 + 3
                } else {
                    1 + rng.next() % 64
                };
                let lba = rng.next() % (half - n);
                let len = n as usize * bs;
                let skew = if i % 3 == 0 {
                    4 * (rng.next() % 1000) as usize
                } else {
                    0
                };
                let mut buf = mem.alloc(len + skew, 4096).unwrap();
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                buf.write_at(skew, &data);
                expected[lba as usize * bs..lba as usize * bs + len].copy_from_slice(&data);
                let st = if skew == 0 {
                    ch.io(IoType::Write, Some(buf), base + lba, n, i % 7 == 0)
                        .await
                        .unwrap()
                        .0
                } else {
                    // Two segments, the first misaligned: PRP-hostile.
                    let cut = (len / 2) / bs * bs + 4;
                    let iov = [
                        IoVec::of(&buf, skew, cut),
                        IoVec::of(&buf, skew + cut, len - cut),
                    ];
                    submit_and_wait(&ch, IoType::Write, base + lba, n, &iov).await
                };
                assert_eq!(st, IoStatus::Success, "write {i} at {lba}+{n}");
            }
            let (st, _) = ch.io(IoType::Flush, None, base, half, false).await.unwrap();
            assert_eq!(st, IoStatus::Success, "flush");
            if bdev::get(&name).unwrap().io_type_supported(IoType::Unmap) {
                let (st, _) = ch
                    .io(IoType::Unmap, None, base + 8, 8, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success, "unmap");
                expected[8 * bs..16 * bs].fill(0);
            }
            let (st, _) = ch
                .io(IoType::WriteZeroes, None, base + 20, 5, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success, "write zeroes");
            expected[20 * bs..25 * bs].fill(0);
            // Read everything back, 1 MiB at a time, into misaligned places.
            let step = ((1 << 20) / bs as u64).min(half);
            let mut lba = 0;
            while lba < half {
                let n = step.min(half - lba);
                let len = n as usize * bs;
                let skew = 4 * (rng.next() % 1000) as usize;
                let buf = mem.alloc(len + skew, 4096).unwrap();
                let iov = [IoVec::of(&buf, skew, len)];
                let st = submit_and_wait(&ch, IoType::Read, base + lba, n, &iov).await;
                assert_eq!(st, IoStatus::Success, "read at {lba}");
                let mut got = vec![0u8; len];
                buf.read_at(skew, &mut got);
                let at = lba as usize * bs;
                if got != expected[at..at + len] {
                    let first = got
                        .iter()
                        .zip(&expected[at..at + len])
                        .position(|(a, b)| a != b)
                        .unwrap();
                    panic!(
                        "{name} core {core}: data differs at block {}",
                        base + lba + (first / bs) as u64
                    );
                }
                lba += n;
            }
            drop(ch);
            drop(desc);
        });
    }
}

async fn submit_and_wait(
    ch: &bdev::BdevChannel,
    ty: IoType,
    lba: u64,
    n: u64,
    iov: &[IoVec],
) -> IoStatus {
    use std::cell::Cell;
    use std::rc::Rc;
    fn cb(io: &mut bdev::BdevIo, st: IoStatus) {
        // SAFETY: `ctx` is the `Rc` leaked below, rebuilt once.
        let slot = unsafe { Rc::from_raw(io.ctx() as *const Cell<Option<IoStatus>>) };
        slot.set(Some(st));
    }
    let slot = Rc::new(Cell::new(None));
    let ctx = Rc::into_raw(slot.clone()) as usize;
    // SAFETY: the caller's buffers outlive the wait below.
    unsafe { ch.submit_iovs(ty, lba, n, iov, false, cb, ctx).unwrap() };
    loop {
        if let Some(st) = slot.get() {
            return st;
        }
        reactor::yield_now().await;
    }
}

/// The pattern of a write with seed S in the blob store fixtures' manifest
/// (spdk_dd wrote them): byte i is (i*13+S) mod 256, each 512-byte block
/// stamped with (S, block index) as u32 little-endian.
pub fn spdk_pattern(seed: u32, kib: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..kib * 1024)
        .map(|i| ((i * 13 + seed as usize) & 0xff) as u8)
        .collect();
    for blk in 0..b.len() / 512 {
        b[blk * 512..blk * 512 + 4].copy_from_slice(&seed.to_le_bytes());
        b[blk * 512 + 4..blk * 512 + 8].copy_from_slice(&(blk as u32).to_le_bytes());
    }
    b
}
