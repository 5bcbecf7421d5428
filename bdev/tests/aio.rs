//! The AIO and io_uring bdevs over files: the data test every storing bdev
//! passes (both reactors, misaligned and oversized transfers, write zeroes,
//! unmap, flush) with 512- and 4096-byte blocks; what is written reaches
//! the file;
//! a larger file is seen after a rescan (with a resize event); read-only
//! refuses writes; refusals name what is wrong (a missing file is ENOENT,
//! a regular file needs its block size, a file under one block).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bdev::modules::aio;
use bdev::{BdevError, BdevEvent, IoStatus, IoType};
use common::{data_test, nop, on};

fn file(tag: &str, len: u64) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("aio-test-{}-{tag}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

#[test]
fn aio_bdevs_over_files_store_data() {
    common::runtime();
    for bs in [512u32, 4096] {
        let path = file(&format!("data{bs}"), 64 << 20);
        let name = format!("Aio{bs}");
        aio::create(&name, path.to_str().unwrap(), Some(bs), false, None).unwrap();
        let b = bdev::get(&name).unwrap();
        assert_eq!(b.block_size(), bs);
        assert_eq!(b.num_blocks(), (64 << 20) / u64::from(bs));
        assert_eq!(b.product_name(), "AIO disk");
        assert!(b.io_type_supported(IoType::Flush));
        println!("{name}: {}", b.dump_info_json());
        data_test(&name, 0xa10 + u64::from(bs));
        let n = name.clone();
        on(0, move || async move { aio::delete(&n).await.unwrap() });
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn what_is_written_reaches_the_file_and_a_rescan_sees_it_grow() {
    common::runtime();
    let path = file("grow", 8 << 20);
    let p = path.to_str().unwrap().to_owned();
    aio::create("AioGrow", &p, Some(4096), false, None).unwrap();
    let resized = Arc::new(AtomicU64::new(0));
    let r = resized.clone();
    on(0, move || async move {
        let d = bdev::open("AioGrow", true, move |_: &str, ev| {
            if let BdevEvent::Resize { new_blocks, .. } = ev {
                r.store(new_blocks, Ordering::SeqCst);
            }
        })
        .unwrap();
        let ch = d.get_io_channel().unwrap();
        let mut buf = ch.alloc_buf(8192).unwrap();
        let data: Vec<u8> = (0..8192).map(|i| (i * 7 % 251) as u8).collect();
        buf.write_at(0, &data);
        let (st, buf) = ch.io(IoType::Write, Some(buf), 100, 2, true).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        ch.free_buf(buf.unwrap());
        let (st, _) = ch.io(IoType::Flush, None, 0, 2048, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(
            on_disk[100 * 4096..102 * 4096] == data[..],
            "the file holds the write"
        );
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(12 << 20)
            .unwrap();
        assert_eq!(aio::rescan("AioGrow").unwrap(), 3072);
        drop(ch);
        drop(d);
    });
    assert_eq!(resized.load(Ordering::SeqCst), 3072);
    assert_eq!(bdev::get("AioGrow").unwrap().num_blocks(), 3072);
    // Read-only: the data reads, writes are refused.
    aio::create("AioRo", path.to_str().unwrap(), Some(4096), true, None).unwrap();
    let ro = bdev::get("AioRo").unwrap();
    assert!(!ro.io_type_supported(IoType::Write));
    on(0, || async {
        let d = bdev::open("AioRo", false, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let buf = ch.alloc_buf(4096).unwrap();
        let (st, buf) = ch.io(IoType::Read, Some(buf), 100, 1, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        let mut v = vec![0u8; 4];
        buf.as_ref().unwrap().read_at(0, &mut v);
        assert_eq!(v, [0, 7, 14, 21]);
        ch.free_buf(buf.unwrap());
        drop(ch);
        drop(d);
        aio::delete("AioRo").await.unwrap();
        aio::delete("AioGrow").await.unwrap();
    });
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn refusals_say_what_is_wrong() {
    common::runtime();
    let e = aio::create("AioNo", "/nonexistent/x.img", Some(512), false, None).unwrap_err();
    assert!(matches!(e, BdevError::Os { errno: 2, .. }), "{e}");
    assert_eq!(e.errno(), -2);
    let path = file("small", 100);
    let e = aio::create("AioSmall", path.to_str().unwrap(), Some(512), false, None).unwrap_err();
    assert!(e.to_string().contains("less than one"), "{e}");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = aio::create("AioNoBs", path.to_str().unwrap(), None, false, None).unwrap_err();
    assert!(e.to_string().contains("block_size"), "{e}");
    let e = aio::create("AioOdd", path.to_str().unwrap(), Some(1000), false, None).unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    aio::create("AioDup", path.to_str().unwrap(), Some(512), false, None).unwrap();
    let e = aio::create("AioDup", path.to_str().unwrap(), Some(512), false, None).unwrap_err();
    assert!(matches!(e, BdevError::Exists(_)), "{e}");
    on(0, || async { aio::delete("AioDup").await.unwrap() });
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn uring_bdevs_over_files_store_data() {
    use bdev::modules::uring;
    common::runtime();
    for bs in [512u32, 4096] {
        let path = file(&format!("uring{bs}"), 64 << 20);
        let name = format!("Uring{bs}");
        uring::create(&name, path.to_str().unwrap(), Some(bs), None).unwrap();
        let b = bdev::get(&name).unwrap();
        assert_eq!(b.block_size(), bs);
        assert_eq!(b.product_name(), "URING bdev");
        println!("{name}: {}", b.dump_info_json());
        data_test(&name, 0x0a1 + u64::from(bs));
        // What was written and flushed is in the file.
        let n = name.clone();
        let p = path.to_str().unwrap().to_owned();
        on(0, move || async move {
            let d = bdev::open(&n, true, nop).unwrap();
            let ch = d.get_io_channel().unwrap();
            let mut buf = ch.alloc_buf(4096).unwrap();
            buf.fill(0x5c);
            let lba = 4096 / u64::from(bs) * 7;
            let (st, buf) = ch
                .io(IoType::Write, Some(buf), lba, 4096 / u64::from(bs), false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success);
            ch.free_buf(buf.unwrap());
            let (st, _) = ch.io(IoType::Flush, None, 0, 8, false).await.unwrap();
            assert_eq!(st, IoStatus::Success);
            let f = std::fs::read(&p).unwrap();
            assert!(f[7 * 4096..8 * 4096].iter().all(|&b| b == 0x5c));
            drop(ch);
            drop(d);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(80 << 20)
                .unwrap();
            assert_eq!(uring::rescan(&n).unwrap(), (80 << 20) / u64::from(bs));
            uring::delete(&n).await.unwrap();
        });
        std::fs::remove_file(&path).unwrap();
    }
}
