//! Host tests of the DMA allocator: no overlap, alignment, reuse, IOVA of
//! every 4 KiB page, exhaustion errors, per-core caches, container mapping.

use std::io;
use std::sync::{Arc, Mutex};

use dma::{DmaBuf, DmaConfig, DmaError, DmaMapper, DmaMemory, IOVA_BASE};
use proptest::prelude::*;

fn anon(limit_mib: usize) -> DmaMemory {
    DmaMemory::new(DmaConfig::anonymous(limit_mib << 20)).unwrap()
}

fn span(b: &DmaBuf) -> (usize, usize) {
    let s = b.as_ptr() as usize;
    (s, s + b.allocated_len())
}

fn assert_disjoint(bufs: &[DmaBuf]) {
    let mut spans: Vec<_> = bufs.iter().map(span).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {:x?} and {:x?}", w[0], w[1]);
    }
    let mut iovas: Vec<_> = bufs
        .iter()
        .map(|b| (b.iova(), b.iova() + b.allocated_len() as u64))
        .collect();
    iovas.sort();
    for w in iovas.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "IOVA overlap: {:x?} and {:x?}",
            w[0],
            w[1]
        );
    }
}

/// Every 4 KiB page of the buffer: its IOVA from the buffer agrees with the
/// memory's translation of its virtual address.
fn assert_iova_per_page(mem: &DmaMemory, b: &DmaBuf) {
    let mut off = 0;
    while off < b.len() {
        let va = b.as_ptr().wrapping_add(off);
        assert_eq!(
            mem.translate(va),
            Some(b.iova_at(off)),
            "page at offset {off:#x}"
        );
        off += 4096;
    }
    let last = b.len() - 1;
    assert_eq!(
        mem.translate(b.as_ptr().wrapping_add(last)),
        Some(b.iova_at(last))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_allocs_never_overlap_and_keep_alignment(
        ops in prop::collection::vec((1usize..300_000, 0u32..13, any::<bool>()), 1..120)
    ) {
        let mem = anon(256);
        let mut live: Vec<DmaBuf> = Vec::new();
        for (len, align_log, free_one) in ops {
            let align = 1usize << align_log;
            let b = mem.alloc(len, align).unwrap();
            prop_assert_eq!(b.as_ptr() as usize % align, 0);
            prop_assert_eq!(b.iova() % align as u64, 0);
            prop_assert!(b.len() == len && b.allocated_len() >= len);
            live.push(b);
            if free_one && live.len() > 1 {
                let i = len % live.len();
                live.swap_remove(i);
            }
        }
        assert_disjoint(&live);
        for b in &live {
            assert_iova_per_page(&mem, b);
        }
        let in_use: usize = live.iter().map(|b| b.allocated_len()).sum();
        prop_assert_eq!(mem.stats().in_use, in_use);
        drop(live);
        prop_assert_eq!(mem.stats().in_use, 0);
    }
}

#[test]
fn data_round_trips_through_raw_accessors() {
    let mem = anon(8);
    let mut b = mem.alloc(10_000, 4096).unwrap();
    let pattern: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    b.write_at(0, &pattern);
    let mut back = vec![0u8; 10_000];
    b.read_at(0, &mut back);
    assert_eq!(back, pattern);
    b.write_volatile::<u32>(8, 0xdead_beef);
    assert_eq!(b.read_volatile::<u32>(8), 0xdead_beef);
    b.fill(0xa5);
    assert_eq!(b.read_volatile::<u64>(9984), 0xa5a5_a5a5_a5a5_a5a5);
}

#[test]
fn freed_memory_is_reused_without_growing() {
    let mem = anon(64);
    let a = mem.alloc(1 << 20, 4096).unwrap();
    let first = a.as_ptr();
    let reserved = mem.stats().reserved;
    drop(a);
    let b = mem.alloc(1 << 20, 4096).unwrap();
    assert_eq!(b.as_ptr(), first, "the freed extent is taken again");
    assert_eq!(mem.stats().reserved, reserved, "no new region");
    assert_eq!(mem.stats().regions, 1);
}

#[test]
fn buffers_spanning_regions_pages_get_per_page_iovas() {
    // A 6 MiB buffer spans three 2 MiB pages of one region.
    let mem = anon(64);
    let _pad = mem.alloc(3000, 64).unwrap();
    let b = mem.alloc(6 << 20, 4096).unwrap();
    assert!(b.iova() >= IOVA_BASE);
    assert_iova_per_page(&mem, &b);
    assert_eq!(mem.translate(std::ptr::null()), None);
}

#[test]
fn exhaustion_is_an_error_with_the_numbers_and_the_fix() {
    let mem = anon(4);
    let a = mem.alloc(3 << 20, 4096).unwrap();
    let err = mem.alloc(2 << 20, 4096).unwrap_err();
    match &err {
        DmaError::OutOfMemory {
            asked,
            reserved,
            limit,
            ..
        } => {
            assert_eq!(*asked, 2 << 20);
            assert_eq!(*limit, 4 << 20);
            assert_eq!(*reserved, 4 << 20);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("hugepage-setup config --hugemem"), "{msg}");
    assert!(msg.contains("2097152"), "{msg}");
    drop(a);
    // After the free the same request fits.
    mem.alloc(2 << 20, 4096).unwrap();
}

#[test]
fn invalid_requests_are_refused() {
    let mem = anon(4);
    for (len, align) in [(0, 64), (64, 3), (64, 4 << 20)] {
        assert!(
            matches!(mem.alloc(len, align), Err(DmaError::InvalidRequest { .. })),
            "len {len} align {align}"
        );
    }
    assert!(matches!(
        DmaMemory::new(DmaConfig {
            cache_classes: vec![4096, 4000],
            ..DmaConfig::anonymous(64 << 20)
        }),
        Err(DmaError::Config(_))
    ));
}

#[test]
fn per_core_cache_refills_and_flushes_in_batches() {
    let mem = anon(256);
    let mut cache = mem.cache();
    let b = cache.alloc(4096).unwrap();
    assert_eq!(b.len(), 4096);
    assert_eq!(b.as_ptr() as usize % 4096, 0);
    let s = mem.stats();
    assert_eq!(s.caches, 1);
    assert_eq!(s.classes[0].cached, 31, "one batch of 32, one handed out");
    assert_eq!(s.classes[0].outstanding, 1);
    // A 5000-byte request is served by the 8 KiB class.
    let c = cache.alloc(5000).unwrap();
    assert_eq!(c.len(), 8192);
    cache.free(c);
    // Take and return the same buffer: no new allocation from the memory.
    let in_use = mem.stats().in_use;
    for _ in 0..10_000 {
        let x = cache.alloc(4096).unwrap();
        cache.free(x);
    }
    assert_eq!(mem.stats().in_use, in_use);
    // Overfill the cache: it flushes half to the shared allocator.
    let depth = mem.config().cache_depth;
    let many: Vec<DmaBuf> = (0..depth + 10)
        .map(|_| cache.alloc(4096).unwrap())
        .collect();
    for x in many {
        cache.free(x);
    }
    cache.free(b);
    let cached = cache.cached()[0].1;
    assert!(cached <= depth, "cache holds {cached} > depth {depth}");
    assert_eq!(mem.stats().classes[0].outstanding, 0);
    // Large requests bypass the classes.
    let big = cache.alloc(1 << 20).unwrap();
    assert_eq!(big.len(), 1 << 20);
    drop(big);
    drop(cache);
    assert_eq!(mem.stats().in_use, 0);
    assert_eq!(mem.stats().caches, 0);
}

#[test]
fn caches_on_two_threads_share_one_memory() {
    let mem = anon(256);
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let mem = mem.clone();
            std::thread::spawn(move || {
                let mut cache = mem.cache();
                let mut held = Vec::new();
                for i in 0..20_000usize {
                    let b = cache.alloc(4096 << (i % 3)).unwrap();
                    b.write_volatile::<u64>(0, (t << 32 | i) as u64);
                    held.push(b);
                    if held.len() > 40 {
                        for b in held.drain(..20) {
                            cache.free(b);
                        }
                    }
                }
                held
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    assert_disjoint(&all);
}

#[derive(Default)]
struct RecordingMapper {
    maps: Mutex<Vec<(u64, usize, usize)>>,
    unmaps: Mutex<Vec<(u64, usize)>>,
}

impl DmaMapper for RecordingMapper {
    unsafe fn map(&self, iova: u64, len: usize, va: *mut u8) -> io::Result<()> {
        self.maps.lock().unwrap().push((iova, len, va as usize));
        Ok(())
    }
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.unmaps.lock().unwrap().push((iova, len));
        Ok(())
    }
}

fn hugepage_memory(limit_mib: usize) -> Option<DmaMemory> {
    let free = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("HugePages_Free:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    if free * 2 < limit_mib {
        assert!(
            std::env::var_os("DMA_REQUIRE_HUGEPAGES").is_none(),
            "DMA_REQUIRE_HUGEPAGES is set but only {free} 2 MiB hugepages are free \
             (reserve them: echo 512 > /proc/sys/vm/nr_hugepages)"
        );
        eprintln!("no free hugepages: hugepage test runs in anonymous mode only");
        return None;
    }
    Some(
        DmaMemory::new(DmaConfig {
            grow_step: 4 << 20,
            ..DmaConfig::hugepages(limit_mib << 20)
        })
        .unwrap(),
    )
}

#[test]
fn no_huge_mode_refuses_the_container() {
    let mem = anon(8);
    let err = mem
        .attach(Arc::new(RecordingMapper::default()))
        .unwrap_err();
    assert!(matches!(err, DmaError::NoHugeCannotMap));
    assert!(err.to_string().contains("no-hugepage"), "{err}");
}

#[test]
fn hugepage_regions_are_mapped_before_they_are_handed_out() {
    let Some(mem) = hugepage_memory(32) else {
        return;
    };
    let before = mem.alloc(4096, 4096).unwrap();
    let mapper = Arc::new(RecordingMapper::default());
    mem.attach(mapper.clone()).unwrap();
    // The existing region was mapped at attach time.
    let regions = mem.regions();
    assert_eq!(regions.len(), 1);
    assert!(regions.iter().all(|r| r.3));
    assert_eq!(mapper.maps.lock().unwrap().len(), 1);
    assert_eq!(
        mapper.maps.lock().unwrap()[0].0,
        before.iova() & !((2 << 20) - 1)
    );
    // Attaching again is a no-op; another container is refused.
    mem.attach(mapper.clone()).unwrap();
    assert!(matches!(
        mem.attach(Arc::new(RecordingMapper::default())),
        Err(DmaError::OtherContainer)
    ));
    // A region created later is mapped as it is created.
    let big = mem.alloc(6 << 20, 4096).unwrap();
    assert_eq!(mem.regions().len(), 2);
    let maps = mapper.maps.lock().unwrap().clone();
    assert_eq!(maps.len(), 2);
    assert!(maps[1].0 <= big.iova() && big.iova() + (6 << 20) <= maps[1].0 + maps[1].1 as u64);
    assert_eq!(
        maps[1].2 as u64 + (big.iova() - maps[1].0),
        big.as_ptr() as u64
    );
    assert_iova_per_page(&mem, &big);
    // Huge pages: the region is 2 MiB aligned in both spaces.
    assert_eq!(big.as_ptr() as usize % (2 << 20), 0);
    drop(big);
    assert_eq!(mem.release_unused(), 6 << 20);
    assert_eq!(
        mapper.unmaps.lock().unwrap().as_slice(),
        &[(maps[1].0, maps[1].1)]
    );
    drop(before);
    drop(mem);
    assert_eq!(
        mapper.unmaps.lock().unwrap().len(),
        2,
        "unmapped on release"
    );
}

#[test]
fn hugepage_exhaustion_names_the_system_limit() {
    let Some(_probe) = hugepage_memory(8) else {
        return;
    };
    // Ask for more hugepages than any test machine reserves.
    let mem = DmaMemory::new(DmaConfig::hugepages(1 << 40)).unwrap();
    let err = mem.alloc(512 << 30, 4096).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DmaError::OutOfMemory { .. }), "{msg}");
    assert!(msg.contains("hugepages"), "{msg}");
}

/// The hugetlbfs mount to test file-backed regions on, if any.
fn hugetlbfs_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "hugetlbfs")
        .map(|f| std::path::PathBuf::from(f[1]))
}

#[test]
fn hugetlbfs_file_backed_regions() {
    if hugepage_memory(8).is_none() {
        return;
    }
    let Some(dir) = hugetlbfs_mount() else {
        assert!(
            std::env::var_os("DMA_REQUIRE_HUGEPAGES").is_none(),
            "DMA_REQUIRE_HUGEPAGES is set but no hugetlbfs is mounted"
        );
        return;
    };
    let mem = DmaMemory::new(DmaConfig {
        backing: dma::Backing::Hugepages {
            page: dma::PageSize::Huge2M,
            dir: Some(dir.clone()),
        },
        grow_step: 2 << 20,
        ..DmaConfig::anonymous(16 << 20)
    })
    .unwrap();
    let mut b = mem.alloc(3 << 20, 4096).unwrap();
    b.fill(0x5a);
    assert_eq!(b.read_volatile::<u8>((3 << 20) - 1), 0x5a);
    assert_iova_per_page(&mem, &b);
    // The backing file is unlinked right after mapping: nothing is left behind.
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rss-dma-{}-", std::process::id()))
        })
        .count();
    assert_eq!(leftovers, 0);
}
