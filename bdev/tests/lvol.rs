//! Logical volumes through the layer: thick and thin volumes pass the
//! data test every storing bdev passes; a thin volume reads zeros where
//! nothing was written, also after a snapshot, through a clone and after
//! the store is tasted again from its file; FLUSH reaches the base;
//! deleting a busy volume fails with EBUSY and leaves it whole.

mod common;

use std::sync::{Arc, OnceLock};

use bdev::modules::lvol::{self, lvs, ops};
use bdev::{IoStatus, IoType};
use common::{data_test, nop, on};

fn init() {
    common::runtime();
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| bdev::modules::init().unwrap());
}

const MIB: u64 = 1 << 20;

fn store(base: &str, name: &str, cluster: u32) -> Arc<lvol::Lvs> {
    let (b, n) = (base.to_owned(), name.to_owned());
    on(0, move || async move {
        let o = lvs::LvsOptions {
            cluster_size: cluster,
            ..Default::default()
        };
        lvs::create(&b, &n, &o).await.unwrap();
        lvol::lvs_by(None, Some(&n)).unwrap()
    })
}

fn volume(l: &Arc<lvol::Lvs>, name: &str, mib: u64, thin: bool) -> String {
    let (l, n) = (l.clone(), name.to_owned());
    on(0, move || async move {
        ops::create(&l, &n, mib * MIB, thin, None).await.unwrap()
    })
}

/// Reads `n` blocks at `lba` of bdev `name`.
fn read(name: &str, lba: u64, n: u64) -> Vec<u8> {
    let name = name.to_owned();
    on(1, move || async move {
        let d = bdev::open(&name, false, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let bs = d.bdev().block_size() as u64;
        let buf = ch.alloc_buf((n * bs) as usize).unwrap();
        let (st, buf) = ch.io(IoType::Read, Some(buf), lba, n, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        let buf = buf.unwrap();
        let mut v = vec![0u8; (n * bs) as usize];
        buf.read_at(0, &mut v);
        ch.free_buf(buf);
        v
    })
}

fn write(name: &str, lba: u64, data: Vec<u8>) {
    let name = name.to_owned();
    on(1, move || async move {
        let d = bdev::open(&name, true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let bs = d.bdev().block_size() as u64;
        let n = data.len() as u64 / bs;
        let mut buf = ch.alloc_buf(data.len()).unwrap();
        buf.write_at(0, &data);
        let (st, buf) = ch
            .io(IoType::Write, Some(buf), lba, n, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        if let Some(b) = buf {
            ch.free_buf(b);
        }
    })
}

fn io(name: &str, ty: IoType, lba: u64, n: u64) -> IoStatus {
    let name = name.to_owned();
    on(0, move || async move {
        let d = bdev::open(&name, true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        ch.io(ty, None, lba, n, false).await.unwrap().0
    })
}

#[test]
fn volumes_pass_the_data_test() {
    init();
    bdev::modules::malloc::create("LvData", 256 * MIB / 512, 512, None).unwrap();
    let l = store("LvData", "lvs_data", MIB as u32);
    let thick = volume(&l, "thick", 80, false);
    let thin = volume(&l, "thin", 80, true);
    let b = bdev::get(&thick).unwrap();
    assert_eq!(b.product_name(), "Logical Volume");
    assert_eq!(b.aliases(), vec!["lvs_data/thick".to_owned()]);
    assert_eq!(b.num_blocks(), 80 * MIB / 512);
    assert!(b.io_type_supported(IoType::Flush));
    assert!(b.io_type_supported(IoType::SeekData));
    println!("{}", b.dump_info_json());
    data_test(&thick, 0x1a0);
    data_test(&thin, 0x1a1);
    let (l2, t) = (l.clone(), thin.clone());
    on(0, move || async move {
        let (s, v) = lvol::lvol_by_bdev(&t).unwrap();
        assert_eq!(s.uuid, l2.uuid);
        ops::delete(&s, &v).await.unwrap();
        lvs::delete(&l2).await.unwrap();
    });
    assert!(bdev::get(&thin).is_none() && bdev::get(&thick).is_none());
    assert!(bdev::get("LvData").unwrap().claimed_by().is_none());
}

#[test]
fn thin_volumes_read_zeros_through_snapshots_clones_and_a_restart() {
    init();
    let path = std::env::temp_dir().join(format!("lvol-test-{}.img", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let p = path.to_str().unwrap().to_owned();
    bdev::modules::aio::create("LvAio", &p, Some(512), false, None).unwrap();
    let l = store("LvAio", "lvs_z", MIB as u32);
    // Old bytes under the store's data region: a new thin cluster must
    // never show them.
    let thin = volume(&l, "thin", 8, true);
    let pattern: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 + 3) as u8).collect();
    write(&thin, 2048 + 8, pattern.clone());
    let back = read(&thin, 2048, 256);
    assert!(
        back[..4096].iter().all(|&b| b == 0),
        "the cluster's head reads zeros"
    );
    assert_eq!(&back[4096..4096 + pattern.len()], &pattern[..]);
    assert!(read(&thin, 0, 2048).iter().all(|&b| b == 0));
    assert_eq!(io(&thin, IoType::Flush, 0, 8 * 2048), IoStatus::Success);
    // Snapshot, clone: the same bytes through each.
    let (l2, t) = (l.clone(), thin.clone());
    let (snap, clone) = on(0, move || async move {
        let (_, v) = lvol::lvol_by_bdev(&t).unwrap();
        let s = ops::snapshot(&l2, &v, "snap", &[]).await.unwrap();
        let (_, sv) = lvol::lvol_by_bdev(&s).unwrap();
        let c = ops::clone(&l2, &sv, "clone").await.unwrap();
        (s, c)
    });
    for n in [&thin, &snap, &clone] {
        let r = read(n, 2048, 256);
        assert_eq!(r, back, "{n}");
    }
    assert!(!bdev::get(&snap).unwrap().io_type_supported(IoType::Write));
    // The clone's first write copies the snapshot's cluster around it.
    write(&clone, 2048 + 200, vec![0xee; 512]);
    let mut want = back.clone();
    want[200 * 512..201 * 512].fill(0xee);
    assert_eq!(read(&clone, 2048, 256), want);
    assert_eq!(read(&thin, 2048, 256), back);
    // Restart: the base goes (the store unloads), comes back, is tasted.
    on(0, || async {
        bdev::modules::aio::delete("LvAio").await.unwrap()
    });
    assert!(bdev::get(&thin).is_none());
    assert!(lvol::lvs_by(None, Some("lvs_z")).is_err());
    bdev::modules::aio::create("LvAio", &p, Some(512), false, None).unwrap();
    on(0, || async { bdev::wait_for_examine().await });
    assert!(lvol::lvs_by(None, Some("lvs_z")).is_ok());
    assert_eq!(read(&thin, 2048, 256), back);
    assert_eq!(read(&snap, 2048, 256), back);
    assert_eq!(read(&clone, 2048, 256), want);
    assert_eq!(
        bdev::get("lvs_z/clone").map(|b| b.name().to_owned()),
        Some(clone.clone())
    );
    on(0, || async {
        bdev::modules::aio::delete("LvAio").await.unwrap()
    });
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn deleting_a_busy_volume_fails_and_leaves_it_whole() {
    init();
    bdev::modules::malloc::create("LvBusy", 64 * MIB / 512, 512, None).unwrap();
    let l = store("LvBusy", "lvs_busy", MIB as u32);
    let v = volume(&l, "v", 4, true);
    write(&v, 0, vec![0x5a; 4096]);
    let l2 = l.clone();
    let vv = v.clone();
    let snap = on(0, move || async move {
        let (_, x) = lvol::lvol_by_bdev(&vv).unwrap();
        ops::snapshot(&l2, &x, "s", &[]).await.unwrap()
    });
    // Two clones: the snapshot cannot go.
    let (l2, s2) = (l.clone(), snap.clone());
    let err = on(0, move || async move {
        let (_, sv) = lvol::lvol_by_bdev(&s2).unwrap();
        ops::clone(&l2, &sv, "c2").await.unwrap();
        ops::delete(&l2, &sv).await.unwrap_err()
    });
    assert_eq!(err.errno(), libc::EBUSY, "{err}");
    assert!(bdev::get(&snap).is_some());
    assert_eq!(&read(&snap, 0, 8)[..4096], &[0x5a; 4096][..]);
    // Held by an operation: the same.
    let (l2, s2) = (l.clone(), snap.clone());
    let err = on(0, move || async move {
        let (_, sv) = lvol::lvol_by_bdev(&s2).unwrap();
        let _h = l2.store.hold(sv.blob_id).unwrap();
        ops::delete(&l2, &sv).await.unwrap_err()
    });
    assert_eq!(err.errno(), libc::EBUSY, "{err}");
    assert_eq!(&read(&snap, 0, 8)[..4096], &[0x5a; 4096][..]);
    let l2 = l.clone();
    on(0, move || async move { lvs::delete(&l2).await.unwrap() });
}

#[test]
fn read_only_stops_open_channels_and_held_volumes_refuse_changes() {
    init();
    bdev::modules::malloc::create("LvRo", 64 * MIB / 512, 512, None).unwrap();
    let l = store("LvRo", "lvs_ro", MIB as u32);
    let v = volume(&l, "v", 4, false);
    let (l2, v2) = (l.clone(), v.clone());
    on(0, move || async move {
        let d = bdev::open(&v2, true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        async fn w(ch: &bdev::BdevChannel) -> IoStatus {
            let mut buf = ch.alloc_buf(4096).unwrap();
            buf.write_at(0, &[7u8; 4096]);
            ch.io(IoType::Write, Some(buf), 0, 8, false)
                .await
                .unwrap()
                .0
        }
        assert_eq!(w(&ch).await, IoStatus::Success);
        let (_, x) = lvol::lvol_by_bdev(&v2).unwrap();
        // Held (as by an inflate, a copy, a checksum): what would move its
        // clusters waits for it.
        {
            let _h = l2.store.hold(x.blob_id).unwrap();
            let e = ops::snapshot(&l2, &x, "s", &[]).await.unwrap_err();
            assert_eq!(e.errno(), libc::EBUSY, "{e}");
            let e = ops::resize(&l2, &x, MIB).await.unwrap_err();
            assert_eq!(e.errno(), libc::EBUSY, "{e}");
        }
        // Read-only: the channel opened before it stops writing.
        ops::set_read_only(&l2, &x).await.unwrap();
        assert_ne!(w(&ch).await, IoStatus::Success);
        drop(ch);
        drop(d);
        lvs::delete(&l2).await.unwrap();
    });
}
