//! The blob store's costs on one core over a malloc bdev (RAM, so the
//! store's own overhead shows), in one run:
//! `cargo bench -p bdev --bench blob` (`-- --seconds N` per phase,
//! `-- --phase N` for one of them).
//!
//! 1. 4 KiB random writes at QD1 and QD32 into a thick blob, against the
//!    same writes straight to the bdev through the same async path
//!    (`BdevChannel::io`): the store's cost per I/O.
//! 2. The first write into each cluster of a thin blob (1 MiB and 4 MiB
//!    clusters: the cluster zeroed, a FLUSH, its extent page written)
//!    against a second write into the same cluster.
//! 3. A snapshot of a 1 GiB thick blob under 4 KiB random writes at QD32:
//!    how long the snapshot takes, the longest write meanwhile (its I/O is
//!    frozen), and the write rate before and after (after, first writes to
//!    each cluster copy it from the snapshot).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev::blob::{Blob, BlobOptions, Blobstore, ClearMethod, StoreOptions};
use bdev::modules::malloc;
use bdev::{BdevEvent, IoStatus, IoType};

const BS: usize = 4096;

fn nop(_: &str, _: BdevEvent) {}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Counters {
    done: Cell<u64>,
    stop: Cell<bool>,
    /// Longest write latency since the last reset, in ns.
    max_ns: Cell<u64>,
}

/// Random 4 KiB writes over `units` I/O units (of 4 KiB) by `qd` tasks,
/// straight to the bdev (`blob` None) or into the blob, until stopped.
fn start_writers(
    name: &str,
    store: Option<&Blobstore>,
    blob: Option<u64>,
    units: u64,
    qd: usize,
    c: &Rc<Counters>,
) -> Vec<reactor::JoinHandle<()>> {
    (0..qd)
        .map(|t| {
            let c = c.clone();
            let desc = bdev::open(name, true, nop).unwrap();
            let target: Option<(Blob, bdev::blob::store::BlobChannel)> = match (store, blob) {
                (Some(s), Some(id)) => Some((s.open_blob(id).unwrap(), s.io_channel().unwrap())),
                _ => None,
            };
            reactor::spawn(async move {
                let ch = desc.get_io_channel().unwrap();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut buf = Some(ch.alloc_buf(BS).unwrap());
                while !c.stop.get() {
                    let at = rng.below(units);
                    let t0 = Instant::now();
                    let b = buf.take().unwrap();
                    let b = match &target {
                        Some((blob, bch)) => blob.write(bch, at, 1, b).await.unwrap(),
                        None => {
                            let (st, b) =
                                ch.io(IoType::Write, Some(b), at, 1, false).await.unwrap();
                            assert_eq!(st, IoStatus::Success);
                            b.unwrap()
                        }
                    };
                    buf = Some(b);
                    let ns = t0.elapsed().as_nanos() as u64;
                    if ns > c.max_ns.get() {
                        c.max_ns.set(ns);
                    }
                    c.done.set(c.done.get() + 1);
                }
                if let Some(b) = buf {
                    ch.free_buf(b);
                }
                drop(target);
            })
        })
        .collect()
}

async fn wait(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        reactor::yield_now().await;
    }
}

/// Writes per second over `d`.
async fn rate(c: &Counters, d: Duration) -> f64 {
    let n0 = c.done.get();
    let t = Instant::now();
    wait(d).await;
    (c.done.get() - n0) as f64 / t.elapsed().as_secs_f64()
}

async fn stop(c: &Counters, tasks: Vec<reactor::JoinHandle<()>>) {
    c.stop.set(true);
    for t in tasks {
        let _ = t.await;
    }
}

async fn store_on(name: &str, cluster: u32) -> Blobstore {
    let o = StoreOptions {
        cluster_size: cluster,
        md_pages: None,
        bstype: "BENCH".into(),
        clear: ClearMethod::None,
    };
    Blobstore::init(bdev::open(name, true, nop).unwrap(), &o)
        .await
        .unwrap()
}

async fn overhead(secs: f64) {
    let d = Duration::from_secs_f64(secs);
    malloc::create("bench_raw", (1 << 30) / BS as u64, BS as u32, None).unwrap();
    malloc::create("bench_store", (1 << 30) / BS as u64 + 2048, BS as u32, None).unwrap();
    let s = store_on("bench_store", 1 << 20).await;
    let id = s
        .create_blob(&BlobOptions {
            num_clusters: 1024,
            thin: false,
            xattrs: vec![],
        })
        .await
        .unwrap();
    let units = (1u64 << 30) / BS as u64;
    println!("1. 4 KiB random write, 1 GiB, {secs} s each: IOPS, mean latency");
    for qd in [1usize, 32] {
        let mut out = Vec::new();
        for (what, store, blob, dev) in [
            ("raw bdev", None, None, "bench_raw"),
            ("thick blob", Some(&s), Some(id), "bench_store"),
        ] {
            let c = Rc::new(Counters::default());
            let t = start_writers(dev, store, blob, units, qd, &c);
            wait(Duration::from_millis(300)).await;
            let iops = rate(&c, d).await;
            stop(&c, t).await;
            println!(
                "   QD{qd:<3} {what:<11} {iops:>10.0} IOPS  {:>8.2} us",
                qd as f64 / iops * 1e6
            );
            out.push(iops);
        }
        println!(
            "   QD{qd:<3} the store's cost: {:.0} ns per write ({:.1}% of the raw rate lost)",
            (1.0 / out[1] - 1.0 / out[0]) * 1e9,
            (1.0 - out[1] / out[0]) * 100.0
        );
    }
    s.unload().await.unwrap();
    drop(s);
    bdev::unregister("bench_raw").await.unwrap();
    bdev::unregister("bench_store").await.unwrap();
}

async fn first_writes() {
    println!("2. first write into a thin cluster vs a second write into it (QD1)");
    for cluster in [1u32 << 20, 4 << 20] {
        let n = 128u64;
        let name = "bench_thin";
        malloc::create(
            name,
            (n + 8) * u64::from(cluster) / BS as u64,
            BS as u32,
            None,
        )
        .unwrap();
        let s = store_on(name, cluster).await;
        let id = s
            .create_blob(&BlobOptions {
                num_clusters: n,
                thin: true,
                xattrs: vec![],
            })
            .await
            .unwrap();
        let b = s.open_blob(id).unwrap();
        let ch = s.io_channel().unwrap();
        let upc = u64::from(cluster) / BS as u64;
        let mut buf = Some(ch.alloc_buf(BS).unwrap());
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for i in 0..n {
            for (k, v) in [(0u64, &mut first), (1, &mut second)] {
                let t = Instant::now();
                buf = Some(
                    b.write(&ch, i * upc + k, 1, buf.take().unwrap())
                        .await
                        .unwrap(),
                );
                v.push(t.elapsed().as_nanos() as f64 / 1e3);
            }
        }
        ch.free_buf(buf.unwrap());
        drop(ch);
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            (
                v.iter().sum::<f64>() / v.len() as f64,
                v[v.len() / 2],
                v[v.len() - 1],
            )
        };
        let (fm, fp, fx) = stats(&mut first);
        let (sm, sp, sx) = stats(&mut second);
        println!(
            "   {} MiB clusters, {n} clusters: first write mean {fm:.1} us (median {fp:.1}, max {fx:.1}); second {sm:.1} us (median {sp:.1}, max {sx:.1})",
            cluster >> 20
        );
        drop(b);
        s.unload().await.unwrap();
        drop(s);
        bdev::unregister(name).await.unwrap();
    }
}

async fn snapshot_under_load(secs: f64) {
    let d = Duration::from_secs_f64(secs);
    let name = "bench_snap";
    // Room for the snapshot and a copy of every cluster.
    malloc::create(name, ((2 << 30) + (64 << 20)) / BS as u64, BS as u32, None).unwrap();
    let s = store_on(name, 1 << 20).await;
    let id = s
        .create_blob(&BlobOptions {
            num_clusters: 1024,
            thin: false,
            xattrs: vec![],
        })
        .await
        .unwrap();
    let units = (1u64 << 30) / BS as u64;
    let c = Rc::new(Counters::default());
    let t = start_writers(name, Some(&s), Some(id), units, 32, &c);
    wait(Duration::from_millis(300)).await;
    let before = rate(&c, d).await;
    c.max_ns.set(0);
    let t0 = Instant::now();
    let snap = s.create_snapshot(id, &[]).await.unwrap();
    let took = t0.elapsed();
    // The writes frozen meanwhile finish right after it.
    wait(Duration::from_millis(1)).await;
    let worst = Rc::new(RefCell::new(0u64));
    *worst.borrow_mut() = c.max_ns.get();
    // The first writes after it copy clusters: the rate recovers as the
    // blob's clusters are copied.
    let after1 = rate(&c, Duration::from_secs(1)).await;
    let after = rate(&c, d).await;
    stop(&c, t).await;
    let b = s.open_blob(id).unwrap();
    println!(
        "3. snapshot of a 1 GiB thick blob under 4 KiB random writes QD32:\n   took {:.2} ms; longest write from its start to 1 ms after it returned {:.2} ms\n   writes: {before:.0} IOPS before, {after1:.0} in the first second after, {after:.0} in the next {secs} s ({} of 1024 clusters copied by then)",
        took.as_secs_f64() * 1e3,
        *worst.borrow() as f64 / 1e6,
        b.allocated_clusters()
    );
    drop(b);
    let _ = snap;
    s.unload().await.unwrap();
    drop(s);
    bdev::unregister(name).await.unwrap();
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
    // Two 1 GiB disks at once in phase 1, then a 2 GiB one.
    bdev::set_memory(
        dma::DmaMemory::new(dma::DmaConfig {
            grow_step: 64 << 20,
            ..dma::DmaConfig::anonymous(6 << 30)
        })
        .expect("anonymous DMA memory"),
    );
    let only: Option<u32> = std::env::args()
        .skip_while(|a| a != "--phase")
        .nth(1)
        .and_then(|s| s.parse().ok());
    let run = move |p: u32| only.is_none_or(|o| o == p);
    rt.block_on(0, move || async move {
        if run(1) {
            overhead(secs).await;
        }
        if run(2) {
            first_writes().await;
        }
        if run(3) {
            snapshot_under_load(secs).await;
        }
    })
    .unwrap();
    rt.shutdown().unwrap();
}
