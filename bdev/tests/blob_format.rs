//! The blob store's on-disk format against a store SPDK v24.09 made
//! (`tests/fixtures/blob/spdk-v24.09-lvs0`, see its MANIFEST.md): the
//! super block, the masks and every metadata page parse and are written
//! back byte for byte; the blobs found by walking the metadata are SPDK's
//! lvstore and lvols (names and UUIDs as SPDK listed them, thin flags, the
//! snapshot link); every used cluster belongs to exactly one blob, as the
//! cluster mask says; and the data read through each blob's clusters and
//! its snapshot is what spdk_dd wrote. Corrupted pages are errors that
//! name the page. Through the store itself (`Blobstore::load`), the clean
//! lvstore opens with every pattern and xattr and the killed one recovers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use bdev::blob::mask::{Mask, MaskType};
use bdev::blob::md_page::MdPage;
use bdev::blob::metadata::{BlobMd, Metadata};
use bdev::blob::super_block::SuperBlock;
use bdev::blob::{FormatError, PAGE_SIZE, blobid_to_page};
use serde_json::Value;

const DIR: &str = "tests/fixtures/blob/spdk-v24.09-lvs0";

fn image() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(DIR)
        .join("store.img.gz");
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(&p)
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {}", p.display());
    assert_eq!(o.stdout.len(), 32 << 20);
    o.stdout
}

/// The store SPDK was killed in the middle of writing.
fn dirty_image() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/blob/spdk-v24.09-dirty/store.img.gz");
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(&p)
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {}", p.display());
    o.stdout
}

fn json(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR).join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn page(img: &[u8], p: u64) -> &[u8] {
    &img[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE]
}

/// An xattr's text: up to its first NUL (lvol names are stored in a
/// 64-byte NUL-padded field).
fn text(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A reader of the image's metadata pages.
fn reader<'a>(
    img: &'a [u8],
    sb: &SuperBlock,
) -> impl FnMut(u32) -> Result<Vec<u8>, FormatError> + 'a {
    let start = u64::from(sb.md.start);
    move |p| Ok(page(img, start + u64::from(p)).to_vec())
}

use common::spdk_pattern as pattern;

#[test]
fn an_spdk_lvstore_parses_and_is_written_back_byte_for_byte() {
    let img = image();
    let sb = SuperBlock::parse(&img).unwrap();
    assert_eq!(sb.encode(), page(&img, 0));
    assert_eq!(sb.bstype_str(), "LVOLSTORE");
    assert!(sb.clean);
    let lvs = &json("bdev_lvol_get_lvstores.json")[0];
    assert_eq!(
        u64::from(sb.cluster_size),
        lvs["cluster_size"].as_u64().unwrap()
    );
    assert_eq!(
        u64::from(sb.io_unit_size),
        lvs["block_size"].as_u64().unwrap()
    );
    assert_eq!(sb.size, 32 << 20);
    // Laid out as this code lays a new store out.
    let mut laid = SuperBlock::layout(32 << 20, 512, 1 << 20, Some(32), "LVOLSTORE").unwrap();
    laid.super_blob = sb.super_blob;
    assert_eq!(laid, sb);
    let region = |r: bdev::blob::super_block::Region| {
        &img[r.start as usize * PAGE_SIZE..r.end() as usize * PAGE_SIZE]
    };
    let masks: Vec<Mask> = [
        (MaskType::UsedPages, sb.used_page_mask),
        (MaskType::UsedClusters, sb.used_cluster_mask),
        (MaskType::UsedBlobIds, sb.used_blobid_mask),
    ]
    .into_iter()
    .map(|(k, r)| {
        let m = Mask::parse(k, region(r)).unwrap();
        assert_eq!(m.encode(region(r).len()).unwrap(), region(r), "{k:?}");
        m
    })
    .collect();
    assert_eq!(masks[0].bits.len(), sb.md.len as usize);
    assert_eq!(masks[1].bits.len() as u64, sb.total_clusters());
    // Every used metadata page parses and encodes to its own bytes.
    for p in masks[0].set() {
        let bytes = page(&img, u64::from(sb.md.start) + p as u64);
        let pg = MdPage::parse(p as u32, bytes).unwrap();
        assert_eq!(pg.encode().unwrap(), bytes, "metadata page {p}");
    }
    // The blobs: the lvstore's super blob and the four lvols.
    let md = Metadata::read(
        &sb,
        masks[2].set().map(|p| p as u32),
        &mut reader(&img, &sb),
    )
    .unwrap();
    assert_eq!(
        md.check(&sb, Some([&masks[0].bits, &masks[1].bits, &masks[2].bits])),
        Vec::<String>::new(),
        "fsck"
    );
    // As a dirty load finds it: every page scanned, the same blobs.
    let (scanned, unreadable) = Metadata::scan(&sb, &mut reader(&img, &sb)).unwrap();
    assert_eq!(scanned, md);
    assert_eq!(unreadable, 0);
    let blobs = &md.blobs;
    assert_eq!(blobid_to_page(sb.super_blob), 0);
    let lvs_blob = &blobs[&sb.super_blob];
    assert_eq!(text(lvs_blob.xattr("name").unwrap()), "lvs0");
    assert_eq!(
        text(lvs_blob.xattr("uuid").unwrap()),
        lvs["uuid"].as_str().unwrap()
    );
    let by_name: BTreeMap<String, (u64, &BlobMd)> = blobs
        .iter()
        .filter(|(id, _)| **id != sb.super_blob)
        .map(|(id, b)| (text(b.xattr("name").unwrap()), (*id, b)))
        .collect();
    let lvols = json("bdev_lvol_get_lvols.json");
    assert_eq!(by_name.len(), lvols.as_array().unwrap().len());
    for l in lvols.as_array().unwrap() {
        let (_, b) = by_name[l["name"].as_str().unwrap()];
        assert_eq!(text(b.xattr("uuid").unwrap()), l["uuid"].as_str().unwrap());
        assert_eq!(b.is_thin(), l["is_thin_provisioned"] == true, "{l}");
        assert_eq!(b.parent().is_some(), l["is_clone"] == true, "{l}");
    }
    // thick and clone stand on snap.
    let snap_id = by_name["snap"].0;
    for n in ["thick", "clone"] {
        assert_eq!(by_name[n].1.parent(), Some(snap_id), "{n}");
    }
    // Every used cluster has one owner; the mask says the same (cluster 0
    // holds the metadata).
    let mut owned = BTreeSet::from([0usize]);
    for b in blobs.values() {
        for &c in b.clusters.iter().filter(|&&c| c != 0) {
            assert!(owned.insert(c as usize), "cluster {c} owned twice");
        }
    }
    assert_eq!(owned, masks[1].set().collect::<BTreeSet<_>>());
    assert_eq!(
        masks[1].set().count() as u64 - 1,
        lvs["total_data_clusters"].as_u64().unwrap() - lvs["free_clusters"].as_u64().unwrap()
    );
    // The data, through clusters and the snapshot.
    let cs = sb.cluster_size as usize;
    let read = |name: &str| -> Vec<u8> {
        let b = by_name[name].1;
        let mut out = vec![0u8; b.num_clusters as usize * cs];
        for (i, chunk) in out.chunks_mut(cs).enumerate() {
            let mut cur = b;
            loop {
                let c = cur.clusters[i] as usize;
                if c != 0 {
                    chunk.copy_from_slice(&img[c * cs..(c + 1) * cs]);
                    break;
                }
                match cur.parent() {
                    Some(p) => cur = &blobs[&p],
                    None => break,
                }
            }
        }
        out
    };
    let with = |mut base: Vec<u8>, at_kib: usize, w: Vec<u8>| {
        base[at_kib * 1024..at_kib * 1024 + w.len()].copy_from_slice(&w);
        base
    };
    assert!(read("snap") == pattern(1, 4096), "snap");
    assert!(
        read("thick") == with(pattern(1, 4096), 2048, pattern(4, 32)),
        "thick"
    );
    assert!(
        read("clone") == with(pattern(1, 4096), 3072, pattern(5, 32)),
        "clone"
    );
    let thin = with(
        with(vec![0; 8 << 20], 1024, pattern(2, 64)),
        5124,
        pattern(3, 64),
    );
    assert!(read("thin") == thin, "thin");
    assert_eq!(
        by_name["thin"]
            .1
            .clusters
            .iter()
            .filter(|&&c| c != 0)
            .count(),
        2
    );
}

#[test]
fn damaged_metadata_is_an_error_naming_the_page() {
    let img = image();
    let sb = SuperBlock::parse(&img).unwrap();
    let md0 = (sb.md.start as usize) * PAGE_SIZE;
    // A flipped byte: the CRC says so.
    let mut b = page(&img, u64::from(sb.md.start)).to_vec();
    b[100] ^= 1;
    let e = MdPage::parse(0, &b).unwrap_err();
    assert!(matches!(e, FormatError::Crc { .. }), "{e}");
    assert!(e.to_string().contains("metadata page 0"), "{e}");
    // A descriptor claiming more bytes than the page, CRC made right.
    let mut b = img[md0..md0 + PAGE_SIZE].to_vec();
    b[17..21].copy_from_slice(&5000u32.to_le_bytes());
    let crc = bdev::crc32c::checksum(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    let e = MdPage::parse(0, &b).unwrap_err();
    assert!(e.to_string().contains("runs past the page"), "{e}");
    // The super block: CRC, then a region past the store.
    let mut s = img[..PAGE_SIZE].to_vec();
    s[50] ^= 0xff;
    assert!(matches!(
        SuperBlock::parse(&s),
        Err(FormatError::Crc { .. })
    ));
    let mut bad = sb.clone();
    bad.md.len = 1 << 30;
    let e = SuperBlock::parse(&bad.encode()).unwrap_err();
    assert!(e.to_string().contains("super block md"), "{e}");
    // Random bytes never panic the parsers.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let mut p = img[md0..md0 + PAGE_SIZE].to_vec();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p[(x as usize) % 4092] = (x >> 32) as u8;
        }
        let crc = bdev::crc32c::checksum(&p[..4092]);
        p[4092..].copy_from_slice(&crc.to_le_bytes());
        let _ = MdPage::parse(0, &p);
        let _ = SuperBlock::parse(&p);
        let _ = Mask::parse(MaskType::UsedPages, &p);
    }
}

#[test]
fn broken_chains_and_double_owned_clusters_are_named() {
    let img = image();
    let sb = SuperBlock::parse(&img).unwrap();
    let mdp = |p: u32| page(&img, u64::from(sb.md.start) + u64::from(p)).to_vec();
    // Blob 0's first page made to point at itself: a loop.
    let mut looped = MdPage::parse(0, &mdp(0)).unwrap();
    looped.next = 0;
    let bytes = looped.encode().unwrap();
    let mut read = |p: u32| Ok(if p == 0 { bytes.clone() } else { mdp(p) });
    let e = bdev::blob::metadata::read_blob(&sb, 0, &mut read).unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
    // A chain continuing into another blob's page.
    let mut stray = MdPage::parse(0, &mdp(0)).unwrap();
    stray.next = 1;
    let bytes = stray.encode().unwrap();
    let mut read = |p: u32| Ok(if p == 0 { bytes.clone() } else { mdp(p) });
    let e = bdev::blob::metadata::read_blob(&sb, 0, &mut read).unwrap_err();
    assert!(e.to_string().contains("metadata page 1"), "{e}");
    assert!(e.to_string().contains("belongs to blob"), "{e}");
    // fsck: a cluster mapped twice, a lost parent.
    let (mut md, _) = Metadata::scan(&sb, &mut reader(&img, &sb)).unwrap();
    let ids: Vec<u64> = md.blobs.keys().copied().collect();
    let taken = md.blobs[&ids[1]]
        .clusters
        .iter()
        .copied()
        .find(|&c| c != 0)
        .unwrap();
    md.blobs.get_mut(&ids[2]).unwrap().clusters.push(taken);
    let snap = md.blobs.values().find_map(|b| b.parent()).unwrap();
    md.blobs.remove(&snap);
    let problems = md.check(&sb, None);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("cluster {taken} owned by blobs"))),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("is not in the store")),
        "{problems:?}"
    );
}

/// Loads `img` from a malloc bdev of `bs`-byte blocks named `name`.
fn load_from_bdev(
    name: &str,
    img: Vec<u8>,
    bs: u32,
) -> Result<bdev::blob::load::Loaded, bdev::blob::load::LoadError> {
    common::runtime();
    let name = name.to_owned();
    common::on(0, move || async move {
        image_onto_bdev(&name, &img, bs).await;
        let d = bdev::open(&name, true, common::nop).unwrap();
        let r = bdev::blob::load::load(&d).await;
        drop(d);
        bdev::unregister(&name).await.unwrap();
        r
    })
}

#[test]
fn loaded_from_a_bdev_clean_and_dirty() {
    let img = image();
    let sb = SuperBlock::parse(&img).unwrap();
    let md_start = u64::from(sb.md.start);
    let mut read = |p: u32| Ok(page(&img, md_start + u64::from(p)).to_vec());
    let (expect, _) = Metadata::scan(&sb, &mut read).unwrap();
    let clean = load_from_bdev("blob_clean", img.clone(), 512).unwrap();
    assert!(!clean.recovered);
    assert_eq!(clean.problems, Vec::<String>::new());
    assert_eq!(clean.metadata, expect);
    // Dirty: not marked clean, masks wiped (as if it was killed): the scan
    // finds the same blobs and rebuilds the same masks.
    let mut dirty = img.clone();
    let mut dsb = sb.clone();
    dsb.clean = false;
    dirty[..PAGE_SIZE].copy_from_slice(&dsb.encode());
    for r in [sb.used_page_mask, sb.used_cluster_mask, sb.used_blobid_mask] {
        dirty[r.start as usize * PAGE_SIZE..r.end() as usize * PAGE_SIZE].fill(0);
    }
    let rec = load_from_bdev("blob_dirty", dirty, 512).unwrap();
    assert!(rec.recovered);
    assert_eq!(rec.problems, Vec::<String>::new());
    assert_eq!(rec.metadata, expect);
    assert_eq!(rec.used_pages, clean.used_pages);
    assert_eq!(rec.used_clusters, clean.used_clusters);
    assert_eq!(rec.used_blobids, clean.used_blobids);
    // A device whose blocks are not the store's I/O unit is refused.
    let e = load_from_bdev("blob_4k", img, 4096).unwrap_err();
    assert!(e.to_string().contains("I/O unit is 512 bytes"), "{e}");
}

#[test]
fn an_spdk_store_killed_mid_write_recovers_consistent() {
    let img = dirty_image();
    let sb = SuperBlock::parse(&img).unwrap();
    assert!(!sb.clean, "the fixture is dirty");
    let l = load_from_bdev("blob_killed", img.clone(), 512).unwrap();
    assert!(l.recovered);
    assert_eq!(l.problems, Vec::<String>::new(), "fsck after recovery");
    let by_name: BTreeMap<String, &BlobMd> = l
        .metadata
        .blobs
        .values()
        .filter(|b| b.id != sb.super_blob)
        .map(|b| (text(b.xattr("name").unwrap()), b))
        .collect();
    assert_eq!(by_name.keys().cloned().collect::<Vec<_>>(), ["v0", "v1"]);
    let v1 = by_name["v1"];
    assert!(!v1.is_thin());
    assert_eq!(v1.clusters.iter().filter(|&&c| c != 0).count(), 2);
    // v0: thin, killed while spdk_dd wrote 24 MiB of seed 6 in order: the
    // clusters it got hold what was written first in each.
    let v0 = by_name["v0"];
    assert!(v0.is_thin());
    assert_eq!(v0.num_clusters, 24);
    let allocated: Vec<(usize, u32)> = v0
        .clusters
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(i, c)| (i, *c))
        .collect();
    assert!(allocated.len() >= 2, "{allocated:?}");
    let cs = sb.cluster_size as usize;
    let whole = pattern(6, 24 * 1024);
    for (i, c) in allocated {
        let dev = &img[c as usize * cs..c as usize * cs + 4096];
        assert!(
            dev == &whole[i * cs..i * cs + 4096],
            "v0 cluster {i} (device cluster {c})"
        );
    }
    println!(
        "recovered: {} blobs, {} used clusters, {} unreadable pages",
        l.metadata.blobs.len(),
        l.used_clusters.iter().filter(|b| **b).count(),
        l.unreadable_pages
    );
}

/// Copies `img` onto a new malloc bdev `name` of `bs`-byte blocks.
async fn image_onto_bdev(name: &str, img: &[u8], bs: u32) {
    bdev::modules::malloc::create(name, img.len() as u64 / u64::from(bs), bs, None).unwrap();
    let d = bdev::open(name, true, common::nop).unwrap();
    let ch = d.get_io_channel().unwrap();
    for (i, chunk) in img.chunks(1 << 20).enumerate() {
        let mut b = ch.alloc_buf(chunk.len()).unwrap();
        b.write_at(0, chunk);
        let lba = ((i << 20) / bs as usize) as u64;
        let n = (chunk.len() / bs as usize) as u64;
        let (st, b) = ch
            .io(bdev::IoType::Write, Some(b), lba, n, false)
            .await
            .unwrap();
        assert_eq!(st, bdev::IoStatus::Success);
        ch.free_buf(b.unwrap());
    }
}

/// Reads a whole blob through the store.
async fn blob_bytes(s: &bdev::blob::Blobstore, id: u64) -> Vec<u8> {
    let b = s.open_blob(id).unwrap();
    let ch = s.io_channel().unwrap();
    let bs = s.io_unit_size() as usize;
    let n = b.num_io_units();
    let buf = ch.alloc_buf(n as usize * bs).unwrap();
    let buf = b.read(&ch, 0, n, buf).await.unwrap();
    let mut v = vec![0u8; n as usize * bs];
    buf.read_at(0, &mut v);
    ch.free_buf(buf);
    v
}

#[test]
fn an_spdk_lvstore_opens_as_a_store_with_every_pattern_and_xattr() {
    common::runtime();
    let img = image();
    let lvols = json("bdev_lvol_get_lvols.json");
    common::on(0, move || async move {
        image_onto_bdev("blob_open_spdk", &img, 512).await;
        let s =
            bdev::blob::Blobstore::load(bdev::open("blob_open_spdk", true, common::nop).unwrap())
                .await
                .unwrap();
        assert_eq!(s.bstype(), "LVOLSTORE");
        let sup = s.super_blob().unwrap();
        let by_name: BTreeMap<String, u64> = s
            .blob_ids()
            .into_iter()
            .filter(|&id| id != sup)
            .map(|id| (text(&s.open_blob(id).unwrap().xattr("name").unwrap()), id))
            .collect();
        assert_eq!(
            by_name.keys().cloned().collect::<Vec<_>>(),
            ["clone", "snap", "thick", "thin"]
        );
        for l in lvols.as_array().unwrap() {
            let name = l["name"].as_str().unwrap();
            let b = s.open_blob(by_name[name]).unwrap();
            assert_eq!(
                text(&b.xattr("uuid").unwrap()),
                l["uuid"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                b.is_thin(),
                l["is_thin_provisioned"].as_bool().unwrap(),
                "{name}"
            );
            assert_eq!(
                b.is_read_only(),
                l["is_snapshot"].as_bool().unwrap(),
                "{name}"
            );
        }
        let mib = 1 << 20;
        let snap = pattern(1, 4096);
        let mut thick = snap.clone();
        thick[2 * mib..2 * mib + 32 * 1024].copy_from_slice(&pattern(4, 32));
        let mut clone = snap.clone();
        clone[3 * mib..3 * mib + 32 * 1024].copy_from_slice(&pattern(5, 32));
        let mut thin = vec![0u8; 8 * mib];
        thin[mib..mib + 64 * 1024].copy_from_slice(&pattern(2, 64));
        thin[5 * mib + 4096..5 * mib + 4096 + 64 * 1024].copy_from_slice(&pattern(3, 64));
        for (name, want) in [
            ("thick", &thick),
            ("snap", &snap),
            ("clone", &clone),
            ("thin", &thin),
        ] {
            assert!(
                blob_bytes(&s, by_name[name]).await == *want,
                "{name}'s data"
            );
        }
        let thick_h = s.open_blob(by_name["thick"]).unwrap();
        assert_eq!(thick_h.parent(), Some(by_name["snap"]));
        drop(thick_h);
        assert_eq!(s.clones(by_name["snap"]).len(), 2);
        let r = s.check().await.unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        s.unload().await.unwrap();
    });
}

#[test]
fn an_spdk_store_killed_mid_write_opens_as_a_store() {
    common::runtime();
    let img = dirty_image();
    common::on(0, move || async move {
        image_onto_bdev("blob_open_dirty", &img, 512).await;
        let s =
            bdev::blob::Blobstore::load(bdev::open("blob_open_dirty", true, common::nop).unwrap())
                .await
                .unwrap();
        let r = s.check().await.unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(r.blobs, 3);
        // Unloaded cleanly here, it loads clean with the same blobs.
        let ids = s.blob_ids();
        s.unload().await.unwrap();
        drop(s);
        let s =
            bdev::blob::Blobstore::load(bdev::open("blob_open_dirty", true, common::nop).unwrap())
                .await
                .unwrap();
        assert_eq!(s.blob_ids(), ids);
        s.unload().await.unwrap();
    });
}
