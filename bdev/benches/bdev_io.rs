//! The per-I/O cost of the bdev layer: 4 KiB random reads at queue depth 128
//! on one core, over a null bdev (buffers untouched, as SPDK's) and a malloc
//! bdev, through the whole layer (channel, pooled BdevIo, module, deferred
//! completion, callback), for a fixed time each, in one run:
//! `cargo bench -p bdev --bench bdev_io` (`-- --seconds N` to change the time).

use std::cell::Cell;
use std::time::{Duration, Instant};

use bdev::modules::{malloc, null};
use bdev::{BdevChannel, BdevEvent, BdevIo, IoStatus};

const QD: usize = 128;
const BS: usize = 4096;

thread_local! {
    static CH: Cell<Option<*const BdevChannel>> = const { Cell::new(None) };
    static DONE: Cell<u64> = const { Cell::new(0) };
    static RNG: Cell<u64> = const { Cell::new(0x2545_f491_4f6c_dd1d) };
    static BLOCKS: Cell<u64> = const { Cell::new(0) };
    static PER_IO: Cell<u64> = const { Cell::new(1) };
    static STOP: Cell<bool> = const { Cell::new(false) };
}

fn next_lba() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x % BLOCKS.with(|b| b.get())) * PER_IO.with(|p| p.get())
    })
}

fn done(io: &mut BdevIo, st: IoStatus) {
    assert_eq!(st, IoStatus::Success);
    DONE.with(|d| d.set(d.get() + 1));
    let buf = io.take_buf().expect("buffer");
    if STOP.with(|s| s.get()) {
        return;
    }
    // SAFETY: the channel outlives the run (set before, cleared after).
    let ch = unsafe { &*CH.with(|c| c.get()).expect("channel") };
    ch.read(buf, next_lba(), PER_IO.with(|p| p.get()), done, 0)
        .map_err(|(e, _)| e)
        .expect("resubmit");
}

async fn run(name: &str, secs: f64) -> f64 {
    let desc = bdev::open(name, false, |_: &str, _: BdevEvent| {}).unwrap();
    let ch = desc.get_io_channel().unwrap();
    let per_io = BS as u64 / desc.bdev().block_size() as u64;
    PER_IO.with(|p| p.set(per_io));
    BLOCKS.with(|b| b.set(desc.bdev().num_blocks() / per_io));
    CH.with(|c| c.set(Some(&ch as *const BdevChannel)));
    STOP.with(|s| s.set(false));
    let mem = bdev::memory();
    // Warm-up, then measure.
    for _ in 0..QD {
        ch.read(mem.alloc(BS, 4096).unwrap(), next_lba(), per_io, done, 0)
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        reactor::yield_now().await;
    }
    let start_done = DONE.with(|d| d.get());
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        reactor::yield_now().await;
    }
    let n = DONE.with(|d| d.get()) - start_done;
    let el = t.elapsed().as_secs_f64();
    STOP.with(|s| s.set(true));
    while ch.outstanding() > 0 {
        reactor::yield_now().await;
    }
    CH.with(|c| c.set(None));
    drop(ch);
    drop(desc);
    n as f64 / el
}

fn main() {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = reactor::Runtime::builder("0x1".parse().unwrap())
        .idle(reactor::IdleStrategy::Spin)
        .start()
        .expect("one reactor on core 0");
    bdev::set_runtime(rt.handle());
    bdev::set_io_pool_size(QD * 2);
    null::create("bench_null", 1 << 21, 512, None, null::ReadFill::Untouched).unwrap();
    malloc::create("bench_malloc", 128 * 1024 * 1024 / 4096, 4096, None).unwrap();
    println!("bdev layer, 4 KiB random read, QD{QD}, 1 core, {secs} s each");
    for name in ["bench_null", "bench_malloc"] {
        let n = name.to_owned();
        let iops = rt
            .block_on(0, move || async move { run(&n, secs).await })
            .unwrap();
        let ns = 1e9 / iops;
        println!("{name:<14} {:>10.0} IOPS  {:>7.1} ns/IO", iops, ns);
    }
    rt.shutdown().unwrap();
}
