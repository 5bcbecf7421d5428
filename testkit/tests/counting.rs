//! The counting allocator counts what it should: allocations (plain,
//! zeroed, reallocations) and frees, only while on, only on this thread.

#[global_allocator]
static ALLOC: testkit::CountingAlloc = testkit::CountingAlloc;

#[test]
fn counts_allocations_and_frees_while_on() {
    let (v, n) = testkit::counted(|| std::hint::black_box(vec![1u8; 10]));
    assert_eq!(
        n,
        testkit::Counts {
            allocs: 1,
            frees: 0
        }
    );
    let ((), n) = testkit::counted(|| drop(v));
    assert_eq!(
        n,
        testkit::Counts {
            allocs: 0,
            frees: 1
        }
    );
    let (v, n) = testkit::counted(|| {
        let mut v = std::hint::black_box(vec![0u8; 8]);
        v.reserve(4096);
        v
    });
    assert_eq!((n.allocs, n.total()), (2, 2));
    // Off: nothing counted.
    drop(std::hint::black_box(vec![2u8; 100]));
    drop(v);
    testkit::start();
    let other = std::thread::spawn(|| {
        for i in 0..1000u32 {
            drop(std::hint::black_box(vec![i; 16]));
        }
    });
    other.join().unwrap();
    let n = testkit::stop();
    // Spawning allocates a little on this thread; the other thread's
    // thousand vectors are not counted here.
    assert!(n.allocs < 100, "{n:?}");
}
