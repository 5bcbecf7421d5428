//! Allocate/free cost of a per-core DMA cache against the system allocator,
//! in one run: `cargo bench -p dma --bench alloc`.

use std::alloc::{Layout, alloc, dealloc};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dma::{DmaConfig, DmaMemory};

fn memory() -> DmaMemory {
    let hugepages = DmaMemory::new(DmaConfig::hugepages(64 << 20)).unwrap();
    // Prefer hugepages; fall back to anonymous memory where none are reserved
    // (the cache path is the same code either way).
    match hugepages.alloc(4096, 4096) {
        Ok(_) => hugepages,
        Err(e) => {
            eprintln!("no hugepages ({e}); benchmarking anonymous DMA memory");
            DmaMemory::new(DmaConfig::anonymous(64 << 20)).unwrap()
        }
    }
}

fn bench(c: &mut Criterion) {
    let mem = memory();
    let mut g = c.benchmark_group("alloc+free 4KiB");
    let mut cache = mem.cache();
    g.bench_function("dma per-core cache", |b| {
        b.iter(|| {
            let buf = cache.alloc(black_box(4096)).unwrap();
            cache.free(black_box(buf));
        })
    });
    g.bench_function("dma shared allocator (locked)", |b| {
        b.iter(|| drop(black_box(mem.alloc(black_box(4096), 4096).unwrap())))
    });
    let layout = Layout::from_size_align(4096, 4096).unwrap();
    g.bench_function("system allocator (4 KiB aligned)", |b| {
        b.iter(|| {
            // SAFETY: non-zero size layout; freed with the same layout.
            unsafe {
                let p = alloc(black_box(layout));
                assert!(!p.is_null());
                dealloc(black_box(p), layout);
            }
        })
    });
    g.finish();

    // A burst: take 32 buffers then return them, per buffer.
    let mut g = c.benchmark_group("burst of 32 x 4KiB");
    let mut held = Vec::with_capacity(32);
    g.bench_function("dma per-core cache", |b| {
        b.iter(|| {
            for _ in 0..32 {
                held.push(cache.alloc(4096).unwrap());
            }
            for buf in held.drain(..) {
                cache.free(buf);
            }
        })
    });
    let mut raw = Vec::with_capacity(32);
    g.bench_function("system allocator (4 KiB aligned)", |b| {
        b.iter(|| {
            for _ in 0..32 {
                // SAFETY: non-zero size layout.
                raw.push(unsafe { alloc(layout) });
            }
            for p in raw.drain(..) {
                // SAFETY: allocated above with the same layout.
                unsafe { dealloc(black_box(p), layout) };
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
