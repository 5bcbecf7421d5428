//! The blob store on a bdev: init, blobs (thick and thin, xattrs, resize),
//! unload and load, snapshots, clones and chains, and the three contracts
//! upstream SPDK breaks — a thin blob's new clusters read zeros after
//! close, reload and snapshot (checksums equal, on a device full of
//! another tenant's bytes); FLUSH reaches the device (the power-cut bdev
//! counts it, and what it covered survives a cut); deleting a busy blob
//! fails with EBUSY and leaves it whole, before and after a reload.

mod common;

use bdev::IoType;
use bdev::blob::store::BlobChannel;
use bdev::blob::{BlobError, BlobOptions, Blobstore, ClearMethod, StoreOptions};
use bdev::modules::powercut;
use common::{Rng, nop, on};

const CLUSTER: u32 = 64 << 10;

fn opts() -> StoreOptions {
    StoreOptions {
        cluster_size: CLUSTER,
        md_pages: None,
        bstype: "TEST".into(),
        clear: ClearMethod::Unmap,
    }
}

fn device(name: &str, mib: u64, bs: u32) {
    common::runtime();
    powercut::create(name, (mib << 20) / u64::from(bs), bs, Some(4096)).unwrap();
}

fn remove(name: &str) {
    let name = name.to_owned();
    on(
        0,
        move || async move { powercut::delete(&name).await.unwrap() },
    );
}

async fn wr(b: &bdev::blob::Blob, ch: &BlobChannel, off: u64, data: &[u8]) {
    let mut buf = ch.alloc_buf(data.len()).unwrap();
    buf.write_at(0, data);
    let n = (data.len() / ch.block_size() as usize) as u64;
    let buf = b.write(ch, off, n, buf).await.unwrap();
    ch.free_buf(buf);
}

async fn rd(b: &bdev::blob::Blob, ch: &BlobChannel, off: u64, len: usize) -> Vec<u8> {
    let buf = ch.alloc_buf(len).unwrap();
    let n = (len / ch.block_size() as usize) as u64;
    let buf = b.read(ch, off, n, buf).await.unwrap();
    let mut v = vec![0u8; len];
    buf.read_at(0, &mut v);
    ch.free_buf(buf);
    v
}

async fn all(b: &bdev::blob::Blob, ch: &BlobChannel) -> Vec<u8> {
    let bs = ch.block_size() as usize;
    rd(b, ch, 0, b.num_io_units() as usize * bs).await
}

async fn new_blob(s: &Blobstore, num_clusters: u64, thin: bool) -> u64 {
    s.create_blob(&BlobOptions {
        num_clusters,
        thin,
        xattrs: vec![],
    })
    .await
    .unwrap()
}

async fn load(name: &str) -> Blobstore {
    Blobstore::load(bdev::open(name, true, nop).unwrap())
        .await
        .unwrap()
}

async fn assert_clean(s: &Blobstore) {
    let r = s.check().await.unwrap();
    assert!(r.problems.is_empty(), "fsck: {:#?}", r.problems);
}

#[test]
fn store_round_trip_thick_thin_xattrs_resize() {
    for bs in [512u32, 4096] {
        let name = format!("bs_rt{bs}");
        device(&name, 16, bs);
        let n2 = name.clone();
        on(0, move || async move {
            let name = n2;
            let s = Blobstore::init(bdev::open(&name, true, nop).unwrap(), &opts())
                .await
                .unwrap();
            let total = s.total_data_clusters();
            assert_eq!(s.free_clusters(), total);
            let thick = s
                .create_blob(&BlobOptions {
                    num_clusters: 4,
                    thin: false,
                    xattrs: vec![("name".into(), b"thick".to_vec())],
                })
                .await
                .unwrap();
            let thin = new_blob(&s, 600, true).await;
            assert_eq!(s.free_clusters(), total - 4);
            s.set_super_blob(thick).await.unwrap();
            let ch = s.io_channel().unwrap();
            let mut rng = Rng(bs as u64 | 1);
            let upc = u64::from(CLUSTER / bs);
            let a = s.open_blob(thick).unwrap();
            let t = s.open_blob(thin).unwrap();
            // Across a cluster boundary, and into the thin blob's second
            // extent page (cluster 550).
            let d1 = rng.bytes(3 * bs as usize);
            wr(&a, &ch, upc - 1, &d1).await;
            let d2 = rng.bytes(8192);
            wr(&t, &ch, 550 * upc + 3, &d2).await;
            assert_eq!(rd(&a, &ch, upc - 1, d1.len()).await, d1);
            assert_eq!(rd(&t, &ch, 550 * upc + 3, d2.len()).await, d2);
            assert_eq!(t.allocated_clusters(), 1);
            assert_eq!(s.free_clusters(), total - 5);
            assert_eq!(t.seek_data(0), 550 * upc);
            assert_eq!(t.seek_hole(550 * upc + 7), 551 * upc);
            a.set_xattr("color", b"blue").unwrap();
            a.set_internal_xattr("SECRET", b"x").unwrap();
            a.sync_md().await.unwrap();
            // Resize: the thick blob grows (zeroed clusters) and shrinks.
            a.resize(6).await.unwrap();
            assert_eq!(
                rd(&a, &ch, 5 * upc, bs as usize).await,
                vec![0; bs as usize]
            );
            a.resize(2).await.unwrap();
            assert_eq!(s.free_clusters(), total - 3);
            assert_clean(&s).await;
            assert!(matches!(s.unload().await, Err(BlobError::Busy { .. })));
            drop((a, t));
            s.unload().await.unwrap();
            assert!(matches!(s.open_blob(thick), Err(BlobError::Unloaded)));
            drop(s);
            let s = load(&name).await;
            let ch = s.io_channel().unwrap();
            assert_eq!(s.bstype(), "TEST");
            assert_eq!(s.super_blob(), Some(thick));
            assert_eq!(s.blob_ids(), vec![thick, thin]);
            assert_eq!(s.free_clusters(), total - 3);
            let a = s.open_blob(thick).unwrap();
            let t = s.open_blob(thin).unwrap();
            assert_eq!(a.num_clusters(), 2);
            assert_eq!(a.xattr("name").unwrap(), b"thick");
            assert_eq!(a.xattr("color").unwrap(), b"blue");
            assert_eq!(a.internal_xattr("SECRET").unwrap(), b"x");
            assert_eq!(a.xattr_names(), vec!["name", "color"]);
            assert!(t.is_thin() && !a.is_thin());
            assert_eq!(rd(&a, &ch, upc - 1, d1.len()).await, d1);
            assert_eq!(rd(&t, &ch, 550 * upc + 3, d2.len()).await, d2);
            assert_eq!(rd(&t, &ch, 0, 4096).await, vec![0; 4096]);
            // Out of range and read-only refusals.
            let buf = ch.alloc_buf(bs as usize).unwrap();
            assert!(matches!(
                a.write(&ch, 2 * upc, 1, buf).await,
                Err(BlobError::Invalid { .. })
            ));
            drop((a, t));
            assert_clean(&s).await;
            s.unload().await.unwrap();
        });
        remove(&name);
    }
}

fn crc(v: &[u8]) -> u32 {
    bdev::crc32c::checksum(v)
}

#[test]
fn thin_clusters_read_zeros_after_close_reload_and_snapshot() {
    let name = "bs_zero";
    device(name, 16, 4096);
    on(0, move || async move {
        // Another tenant's bytes everywhere, and a store that does not
        // clear them.
        let desc = bdev::open(name, true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let blocks = desc.bdev().num_blocks();
        let mut buf = ch.alloc_buf(1 << 20).unwrap();
        buf.fill(0xa5);
        let step = (1 << 20) / 4096;
        let mut at = 0;
        while at < blocks {
            let (st, b) = ch
                .io(IoType::Write, Some(buf), at, step, false)
                .await
                .unwrap();
            assert_eq!(st, bdev::IoStatus::Success);
            buf = b.unwrap();
            at += step;
        }
        ch.free_buf(buf);
        let o = StoreOptions {
            clear: ClearMethod::None,
            ..opts()
        };
        let s = Blobstore::init(desc, &o).await.unwrap();
        let ch = s.io_channel().unwrap();
        let id = new_blob(&s, 32, true).await;
        let b = s.open_blob(id).unwrap();
        // A "file" with zero blocks, written skipping them (as a copy tool
        // with sparse detection does).
        let mut rng = Rng(77);
        let mut file = vec![0u8; 32 * CLUSTER as usize];
        for blk in 0..file.len() / 4096 {
            if rng.below(3) == 0 {
                let d = rng.bytes(4096);
                file[blk * 4096..(blk + 1) * 4096].copy_from_slice(&d);
            }
        }
        for blk in 0..file.len() / 4096 {
            let d = &file[blk * 4096..(blk + 1) * 4096];
            if d.iter().any(|&x| x != 0) {
                wr(&b, &ch, blk as u64, d).await;
            }
        }
        let before = all(&b, &ch).await;
        assert_eq!(crc(&before), crc(&file), "before close");
        assert!(before == file);
        drop(b);
        s.unload().await.unwrap();
        drop(s);
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        let b = s.open_blob(id).unwrap();
        assert_eq!(crc(&all(&b, &ch).await), crc(&file), "after reload");
        drop(b);
        let snap = s.create_snapshot(id, &[]).await.unwrap();
        let b = s.open_blob(id).unwrap();
        let sn = s.open_blob(snap).unwrap();
        assert_eq!(crc(&all(&sn, &ch).await), crc(&file), "the snapshot");
        assert_eq!(
            crc(&all(&b, &ch).await),
            crc(&file),
            "the blob after snapshot"
        );
        // A write into the clone's new cluster copies the snapshot's data
        // around it, never the stale bytes.
        wr(&b, &ch, 5, &[7u8; 4096]).await;
        let mut want = file.clone();
        want[5 * 4096..6 * 4096].fill(7);
        assert!(all(&b, &ch).await == want);
        assert!(all(&sn, &ch).await == file);
        drop((b, sn));
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn flush_reaches_the_device_and_survives_a_power_cut() {
    let name = "bs_flush";
    device(name, 16, 4096);
    on(0, move || async move {
        let s = Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap();
        let id = new_blob(&s, 16, true).await;
        let ch = s.io_channel().unwrap();
        let b = s.open_blob(id).unwrap();
        let mut rng = Rng(5);
        let d = rng.bytes(3 * 4096);
        wr(&b, &ch, 40, &d).await;
        let f0 = powercut::stats(name).unwrap().flushes;
        b.flush(&ch).await.unwrap();
        assert_eq!(powercut::stats(name).unwrap().flushes, f0 + 1);
        // Written after the flush: may be lost.
        wr(&b, &ch, 200, &rng.bytes(4096)).await;
        drop(b);
        let r = powercut::cut(name, 1234).unwrap();
        assert!(r.pending >= 1);
        drop(s);
        powercut::power_on(name).unwrap();
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        let b = s.open_blob(id).unwrap();
        assert_eq!(rd(&b, &ch, 40, d.len()).await, d);
        drop(b);
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn delete_of_a_busy_blob_fails_and_leaves_it_whole() {
    let name = "bs_busy";
    device(name, 16, 4096);
    on(0, move || async move {
        let s = Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap();
        let ch = s.io_channel().unwrap();
        let mk = |thin| BlobOptions {
            num_clusters: 8,
            thin,
            xattrs: vec![],
        };
        let id = s.create_blob(&mk(false)).await.unwrap();
        let b = s.open_blob(id).unwrap();
        let data = Rng(9).bytes(8 * CLUSTER as usize);
        wr(&b, &ch, 0, &data).await;
        let free = s.free_clusters();
        // Open.
        let e = s.delete_blob(id).await.unwrap_err();
        assert!(matches!(e, BlobError::Busy { .. }), "{e}");
        assert_eq!(e.errno(), libc::EBUSY);
        drop(b);
        // Held by an operation (a checksum, a copy).
        let hold = s.hold(id).unwrap();
        assert!(matches!(
            s.delete_blob(id).await,
            Err(BlobError::Busy { .. })
        ));
        assert_eq!(s.free_clusters(), free);
        // A snapshot with two clones.
        let snap = s.create_snapshot(id, &[]).await.unwrap();
        let c2 = s.create_clone(snap, &[]).await.unwrap();
        assert!(matches!(
            s.delete_blob(snap).await,
            Err(BlobError::Busy { .. })
        ));
        s.unload().await.unwrap();
        drop((s, hold));
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        assert_eq!(s.blob_ids().len(), 3);
        for b in [id, snap, c2] {
            let b = s.open_blob(b).unwrap();
            assert!(all(&b, &ch).await == data, "blob {:#x}", b.id());
        }
        assert_clean(&s).await;
        // Deletable once free: a clone, then the snapshot with its one
        // clone left (merged into it), then the last.
        s.delete_blob(c2).await.unwrap();
        s.delete_blob(snap).await.unwrap();
        assert_eq!(s.blob_ids(), vec![id]);
        let b = s.open_blob(id).unwrap();
        assert_eq!(b.parent(), None);
        assert!(all(&b, &ch).await == data);
        drop(b);
        assert_clean(&s).await;
        s.delete_blob(id).await.unwrap();
        assert_eq!(s.free_clusters(), s.total_data_clusters());
        s.unload().await.unwrap();
        drop(s);
        let s = load(name).await;
        assert!(s.blob_ids().is_empty());
        assert_eq!(s.free_clusters(), s.total_data_clusters());
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn snapshot_chains_and_clones_read_through_their_parents() {
    let name = "bs_chain";
    device(name, 32, 512);
    on(0, move || async move {
        let s = Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap();
        let ch = s.io_channel().unwrap();
        let upc = u64::from(CLUSTER / 512);
        let id = new_blob(&s, 6, true).await;
        let mut model = vec![0u8; 6 * CLUSTER as usize];
        let mut rng = Rng(31);
        let mut snaps = Vec::new();
        for round in 0..4u64 {
            let b = s.open_blob(id).unwrap();
            for _ in 0..5 {
                let off = rng.below(6 * upc - 8);
                let d = rng.bytes(8 * 512);
                wr(&b, &ch, off, &d).await;
                model[off as usize * 512..off as usize * 512 + d.len()].copy_from_slice(&d);
            }
            drop(b);
            let sn = s
                .create_snapshot(id, &[("round".into(), round.to_le_bytes().to_vec())])
                .await
                .unwrap();
            snaps.push((sn, model.clone()));
        }
        // Chain: id -> s3 -> s2 -> s1 -> s0.
        let b = s.open_blob(id).unwrap();
        assert_eq!(b.parent(), Some(snaps[3].0));
        assert!(all(&b, &ch).await == model);
        drop(b);
        for (sn, want) in &snaps {
            let h = s.open_blob(*sn).unwrap();
            assert!(h.is_read_only());
            assert!(all(&h, &ch).await == *want, "snapshot {sn:#x}");
            let w = ch.alloc_buf(512).unwrap();
            assert!(matches!(
                h.write(&ch, 0, 1, w).await,
                Err(BlobError::ReadOnly(_))
            ));
        }
        // A clone of the oldest snapshot diverges from it.
        let c = s.create_clone(snaps[0].0, &[]).await.unwrap();
        let h = s.open_blob(c).unwrap();
        assert!(all(&h, &ch).await == snaps[0].1, "the clone before a write");
        wr(&h, &ch, 1, &[3u8; 512]).await;
        let mut cm = snaps[0].1.clone();
        cm[512..1024].fill(3);
        let got = all(&h, &ch).await;
        let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != cm[i]).collect();
        assert!(
            diff.is_empty(),
            "{} bytes differ, first {:?} last {:?}",
            diff.len(),
            diff.first(),
            diff.last()
        );
        drop(h);
        let h = s.open_blob(snaps[0].0).unwrap();
        assert!(all(&h, &ch).await == snaps[0].1);
        drop(h);
        assert!(matches!(
            s.create_clone(id, &[]).await,
            Err(BlobError::Invalid { .. })
        ));
        // Delete the middle snapshots one by one (each has one clone).
        s.delete_blob(snaps[2].0).await.unwrap();
        s.delete_blob(snaps[1].0).await.unwrap();
        assert_clean(&s).await;
        s.unload().await.unwrap();
        drop(s);
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        let b = s.open_blob(id).unwrap();
        assert!(all(&b, &ch).await == model);
        assert_eq!(b.parent(), Some(snaps[3].0));
        drop(b);
        let h = s.open_blob(snaps[3].0).unwrap();
        assert_eq!(h.parent(), Some(snaps[0].0));
        assert!(all(&h, &ch).await == snaps[3].1);
        assert_eq!(h.xattr("round").unwrap(), 3u64.to_le_bytes());
        drop(h);
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn inflate_decouple_and_set_parent_keep_what_the_blob_reads() {
    let name = "bs_inflate";
    device(name, 16, 4096);
    on(0, move || async move {
        let s = Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap();
        let ch = s.io_channel().unwrap();
        let upc = u64::from(CLUSTER / 4096);
        let id = new_blob(&s, 8, true).await;
        let b = s.open_blob(id).unwrap();
        let mut rng = Rng(3);
        let d0 = rng.bytes(4096);
        wr(&b, &ch, 0, &d0).await;
        wr(&b, &ch, 3 * upc, &rng.bytes(4096)).await;
        drop(b);
        let s1 = s.create_snapshot(id, &[]).await.unwrap();
        let b = s.open_blob(id).unwrap();
        wr(&b, &ch, 5 * upc, &rng.bytes(4096)).await;
        let s2 = s.create_snapshot(id, &[]).await.unwrap();
        let c = s.create_clone(s2, &[]).await.unwrap();
        let want = all(&b, &ch).await;
        // Decouple, one step at a time: s2's cluster 5 is copied and s1
        // becomes the parent; then s1's (0, 3), and no parent.
        s.decouple_parent(id).await.unwrap();
        assert_eq!(b.parent(), Some(s1));
        assert_eq!(b.allocated_clusters(), 1);
        assert!(all(&b, &ch).await == want);
        s.decouple_parent(id).await.unwrap();
        assert_eq!(b.parent(), None);
        assert!(b.is_thin());
        assert_eq!(b.allocated_clusters(), 3);
        assert!(all(&b, &ch).await == want);
        assert!(matches!(
            s.decouple_parent(id).await,
            Err(BlobError::Invalid { .. })
        ));
        // Inflate the clone: every cluster, no parent, thick.
        let h = s.open_blob(c).unwrap();
        let cw = all(&h, &ch).await;
        assert!(cw == want);
        s.inflate(c).await.unwrap();
        assert_eq!(h.allocated_clusters(), 8);
        assert!(!h.is_thin() && h.parent().is_none());
        assert!(all(&h, &ch).await == cw);
        // Set parent: a thin blob with nothing of its own takes s1 as its
        // parent and reads it.
        let t = new_blob(&s, 8, true).await;
        s.set_parent(t, s1).await.unwrap();
        let th = s.open_blob(t).unwrap();
        assert_eq!(th.parent(), Some(s1));
        assert_eq!(rd(&th, &ch, 0, 4096).await, d0);
        assert!(matches!(
            s.set_parent(c, s1).await,
            Err(BlobError::Invalid { .. })
        ));
        assert!(matches!(
            s.set_parent(t, id).await,
            Err(BlobError::Invalid { .. })
        ));
        drop((b, h, th));
        assert_clean(&s).await;
        s.unload().await.unwrap();
        drop(s);
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        let th = s.open_blob(t).unwrap();
        assert_eq!(th.parent(), Some(s1));
        assert_eq!(rd(&th, &ch, 0, 4096).await, d0);
        let h = s.open_blob(c).unwrap();
        assert!(all(&h, &ch).await == cw);
        assert!(!h.is_thin());
        drop((th, h));
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn both_cores_write_one_thin_blob_at_once() {
    let name = "bs_cores";
    device(name, 32, 4096);
    let s = on(0, move || async move {
        Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap()
    });
    let s2 = s.clone();
    let id = on(0, move || async move { new_blob(&s2, 64, true).await });
    // Each core writes every other block of every cluster, many at once,
    // so both allocate the same clusters concurrently.
    let upc = u64::from(CLUSTER / 4096);
    let handles: Vec<_> = (0..2u64)
        .map(|core| {
            let s = s.clone();
            std::thread::spawn(move || {
                on(core as u32, move || async move {
                    let b = std::rc::Rc::new(s.open_blob(id).unwrap());
                    let ch = std::rc::Rc::new(s.io_channel().unwrap());
                    let tasks: Vec<_> = (0..16u64)
                        .map(|t| {
                            let (b, ch) = (b.clone(), ch.clone());
                            reactor::spawn(async move {
                                for c in (t..64).step_by(16) {
                                    for k in (core..upc).step_by(2) {
                                        let v = [(c * upc + k) as u8 ^ 0x77; 4096];
                                        wr(&b, &ch, c * upc + k, &v).await;
                                    }
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    on(0, move || async move {
        let b = s.open_blob(id).unwrap();
        let ch = s.io_channel().unwrap();
        assert_eq!(b.allocated_clusters(), 64);
        let got = all(&b, &ch).await;
        for blk in 0..64 * upc {
            let v = got[blk as usize * 4096];
            assert_eq!(v, blk as u8 ^ 0x77, "block {blk}");
        }
        drop(b);
        assert_clean(&s).await;
        assert_eq!(s.free_clusters(), s.total_data_clusters() - 64);
        s.unload().await.unwrap();
    });
    remove(name);
}

#[test]
fn external_snapshot_clones_read_another_bdev_and_degrade_while_it_is_gone() {
    let name = "bs_esnap";
    device(name, 32, 4096);
    on(0, move || async move {
        // The external snapshot: a 4 MiB malloc bdev of 512-byte blocks
        // with a pattern.
        let golden_uuid = "e5e50000-0000-4000-8000-000000000001";
        let gold = Rng(44).bytes(4 << 20);
        let fill_golden = |data: Vec<u8>| async move {
            bdev::modules::malloc::create("golden", 8192, 512, Some(golden_uuid)).unwrap();
            let d = bdev::open("golden", true, nop).unwrap();
            let ch = d.get_io_channel().unwrap();
            let mut b = ch.alloc_buf(data.len()).unwrap();
            b.write_at(0, &data);
            let (st, b) = ch.io(IoType::Write, Some(b), 0, 8192, false).await.unwrap();
            assert_eq!(st, bdev::IoStatus::Success);
            ch.free_buf(b.unwrap());
        };
        fill_golden(gold.clone()).await;
        let s = Blobstore::init(bdev::open(name, true, nop).unwrap(), &opts())
            .await
            .unwrap();
        let ch = s.io_channel().unwrap();
        let upc = u64::from(CLUSTER / 4096);
        // 66 clusters of 64 KiB: 2 past the golden image's end (zeros).
        let mut id_bytes = golden_uuid.as_bytes().to_vec();
        id_bytes.push(0);
        let c = s.create_external_clone(&id_bytes, 66, &[]).await.unwrap();
        let mut want = gold.clone();
        want.resize(66 * CLUSTER as usize, 0);
        let b = s.open_blob(c).unwrap();
        assert_eq!(b.external_parent().as_deref(), Some(golden_uuid));
        assert!(b.is_thin() && !b.is_degraded());
        assert!(all(&b, &ch).await == want);
        // A write copies the rest of its cluster from the golden image.
        wr(&b, &ch, 3 * upc + 1, &[9u8; 4096]).await;
        want[(3 * upc as usize + 1) * 4096..(3 * upc as usize + 2) * 4096].fill(9);
        assert_eq!(b.allocated_clusters(), 1);
        assert!(all(&b, &ch).await == want);
        drop(b);
        // A snapshot of it takes the external parent along.
        let snap = s.create_snapshot(c, &[]).await.unwrap();
        let sn = s.open_blob(snap).unwrap();
        let b = s.open_blob(c).unwrap();
        assert_eq!(sn.external_parent().as_deref(), Some(golden_uuid));
        assert_eq!(b.external_parent(), None);
        assert_eq!(b.parent(), Some(snap));
        assert!(all(&b, &ch).await == want);
        drop((b, sn));
        s.unload().await.unwrap();
        drop(s);
        let s = load(name).await;
        let ch = s.io_channel().unwrap();
        let b = s.open_blob(c).unwrap();
        assert!(all(&b, &ch).await == want, "after a reload");
        // The golden bdev goes: degraded; its own cluster still reads.
        bdev::modules::malloc::delete("golden").await.unwrap();
        assert!(b.is_degraded());
        assert_eq!(rd(&b, &ch, 3 * upc + 1, 4096).await, vec![9u8; 4096]);
        let buf = ch.alloc_buf(4096).unwrap();
        let e = b.read(&ch, 0, 1, buf).await.unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // Back (same UUID): it reads again.
        fill_golden(gold.clone()).await;
        assert_eq!(s.refresh_external_snapshots(), 0);
        assert!(!b.is_degraded());
        assert!(all(&b, &ch).await == want);
        // Inflated, it needs the golden image no more.
        s.inflate(c).await.unwrap();
        assert!(b.parent().is_none() && b.external_parent().is_none() && !b.is_thin());
        bdev::modules::malloc::delete("golden").await.unwrap();
        assert!(!b.is_degraded());
        assert!(all(&b, &ch).await == want);
        drop(b);
        assert_clean(&s).await;
        s.unload().await.unwrap();
    });
    remove(name);
}
