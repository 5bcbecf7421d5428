//! The blob store's on-disk format against a store SPDK v24.09 made
//! (`tests/fixtures/blob/spdk-v24.09-lvs0`, see its MANIFEST.md): the
//! super block, the masks and every metadata page parse and are written
//! back byte for byte; the blobs found by walking the metadata are SPDK's
//! lvstore and lvols (names and UUIDs as SPDK listed them, thin flags, the
//! snapshot link); every used cluster belongs to exactly one blob, as the
//! cluster mask says; and the data read through each blob's clusters and
//! its snapshot is what spdk_dd wrote. Corrupted pages are errors that
//! name the page.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use bdev::blob::mask::{Mask, MaskType};
use bdev::blob::md_page::{Descriptor, MdPage, NO_PAGE};
use bdev::blob::super_block::SuperBlock;
use bdev::blob::{FormatError, PAGE_SIZE, blobid_to_page, page_to_blobid};
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

fn json(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR).join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn page(img: &[u8], p: u64) -> &[u8] {
    &img[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE]
}

/// A blob as its metadata chain says.
#[derive(Debug, Default)]
struct Blob {
    xattrs: BTreeMap<String, Vec<u8>>,
    internal: BTreeMap<String, Vec<u8>>,
    invalid_flags: u64,
    num_clusters: u64,
    /// Device cluster per blob cluster (0: unallocated).
    clusters: Vec<u32>,
}

/// An xattr's text: up to its first NUL (lvol names are stored in a
/// 64-byte NUL-padded field).
fn text(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn load_blob(img: &[u8], sb: &SuperBlock, first: u32) -> Blob {
    let md = |p: u32| MdPage::parse(p, page(img, u64::from(sb.md.start) + u64::from(p))).unwrap();
    let mut b = Blob::default();
    let mut p = first;
    let mut seq = 0;
    let mut extent_pages = Vec::new();
    while p != NO_PAGE {
        let pg = md(p);
        assert_eq!(pg.id, page_to_blobid(first), "page {p} of blob {first}");
        assert_eq!(pg.sequence_num, seq, "page {p}");
        for d in pg.descriptors {
            match d {
                Descriptor::Xattr {
                    internal: false,
                    name,
                    value,
                } => {
                    b.xattrs.insert(text(&name), value);
                }
                Descriptor::Xattr {
                    internal: true,
                    name,
                    value,
                } => {
                    b.internal.insert(text(&name), value);
                }
                Descriptor::Flags { invalid, .. } => b.invalid_flags = invalid,
                Descriptor::ExtentTable {
                    num_clusters,
                    pages,
                } => {
                    b.num_clusters = num_clusters;
                    for (pg, n) in pages {
                        extent_pages.extend(std::iter::repeat_n(pg, n as usize));
                    }
                }
                Descriptor::ExtentRle(runs) => {
                    for (c, n) in runs {
                        b.clusters
                            .extend((0..n).map(|i| if c == 0 { 0 } else { c + i }));
                    }
                    b.num_clusters = b.clusters.len() as u64;
                }
                other => panic!("blob {first}: {other:?} in its chain"),
            }
        }
        p = pg.next;
        seq += 1;
    }
    if !extent_pages.is_empty() || b.clusters.is_empty() {
        b.clusters = vec![0; b.num_clusters as usize];
        for ep in extent_pages.into_iter().filter(|&p| p != 0) {
            // (An extent page keeps the id of the blob that wrote it: a
            // snapshot takes over the original's extent pages as they
            // are, so its id need not be this blob's.)
            let pg = md(ep);
            for d in pg.descriptors {
                if let Descriptor::ExtentPage {
                    start_cluster,
                    clusters,
                } = d
                {
                    for (i, c) in clusters.into_iter().enumerate() {
                        b.clusters[start_cluster as usize + i] = c;
                    }
                }
            }
        }
    }
    b
}

/// The pattern spdk_dd wrote: byte i is (i*13+seed) mod 256, each block
/// stamped with (seed, block index).
fn pattern(seed: u32, kib: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..kib * 1024)
        .map(|i| ((i * 13 + seed as usize) & 0xff) as u8)
        .collect();
    for blk in 0..b.len() / 512 {
        b[blk * 512..blk * 512 + 4].copy_from_slice(&seed.to_le_bytes());
        b[blk * 512 + 4..blk * 512 + 8].copy_from_slice(&(blk as u32).to_le_bytes());
    }
    b
}

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
    let blobs: BTreeMap<u64, Blob> = masks[2]
        .set()
        .map(|p| (page_to_blobid(p as u32), load_blob(&img, &sb, p as u32)))
        .collect();
    assert_eq!(blobid_to_page(sb.super_blob), 0);
    let lvs_blob = &blobs[&sb.super_blob];
    assert_eq!(text(&lvs_blob.xattrs["name"]), "lvs0");
    assert_eq!(
        text(&lvs_blob.xattrs["uuid"]),
        lvs["uuid"].as_str().unwrap()
    );
    let by_name: BTreeMap<String, (u64, &Blob)> = blobs
        .iter()
        .filter(|(id, _)| **id != sb.super_blob)
        .map(|(id, b)| (text(&b.xattrs["name"]), (*id, b)))
        .collect();
    let lvols = json("bdev_lvol_get_lvols.json");
    assert_eq!(by_name.len(), lvols.as_array().unwrap().len());
    for l in lvols.as_array().unwrap() {
        let (_, b) = by_name[l["name"].as_str().unwrap()];
        assert_eq!(text(&b.xattrs["uuid"]), l["uuid"].as_str().unwrap());
        assert_eq!(
            b.invalid_flags & 1 != 0,
            l["is_thin_provisioned"] == true,
            "{l}"
        );
        assert_eq!(
            b.internal.contains_key("SNAP"),
            l["is_clone"] == true,
            "{l}"
        );
    }
    // thick and clone stand on snap.
    let snap_id = by_name["snap"].0;
    for n in ["thick", "clone"] {
        let parent = &by_name[n].1.internal["SNAP"];
        assert_eq!(
            u64::from_le_bytes(parent[..8].try_into().unwrap()),
            snap_id,
            "{n}"
        );
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
                match cur.internal.get("SNAP") {
                    Some(p) => cur = &blobs[&u64::from_le_bytes(p[..8].try_into().unwrap())],
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
