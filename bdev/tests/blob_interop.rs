//! A store made here, for SPDK to open (`ci/blob-interop`, which needs the
//! peer binaries; ignored by `cargo test`): an lvstore as SPDK's lvol
//! module writes one — type LVOLSTORE, a super blob with the store's UUID
//! and name, blobs with 64-byte NUL-padded names and UUIDs — holding a
//! thick lvol, a thin one, a snapshot of the thick one and a clone of the
//! snapshot, each with a data pattern; unloaded cleanly onto a file, with
//! each lvol's expected bytes and a list of the lvols beside it.
//! `check_image_spdk_touched` then loads the image back after SPDK opened
//! it and wrote into it (`spdk_dd`: 64 KiB of seed 16 at 2 MiB into the
//! thin lvol): every lvol as before, the thin one with SPDK's write, fsck
//! clean.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bdev::blob::{BlobOptions, Blobstore, ClearMethod, StoreOptions};
use common::{nop, on};

const MIB: usize = 1 << 20;

use common::spdk_pattern as pattern;

fn dir() -> PathBuf {
    PathBuf::from(std::env::var("BLOB_INTEROP_DIR").expect("BLOB_INTEROP_DIR"))
}

/// What each lvol holds after SPDK's write (the thin one changes).
fn expected(spdk_wrote: bool) -> BTreeMap<&'static str, Vec<u8>> {
    let snap = pattern(11, 4096);
    let mut thick = snap.clone();
    thick[2 * MIB..2 * MIB + 32 * 1024].copy_from_slice(&pattern(14, 32));
    let mut clone = snap.clone();
    clone[3 * MIB..3 * MIB + 32 * 1024].copy_from_slice(&pattern(15, 32));
    let mut thin = vec![0u8; 8 * MIB];
    thin[MIB..MIB + 64 * 1024].copy_from_slice(&pattern(12, 64));
    thin[5 * MIB + 4096..5 * MIB + 4096 + 64 * 1024].copy_from_slice(&pattern(13, 64));
    if spdk_wrote {
        thin[2 * MIB..2 * MIB + 64 * 1024].copy_from_slice(&pattern(16, 64));
    }
    [
        ("thick", thick),
        ("thin", thin),
        ("snap", snap),
        ("clone", clone),
    ]
    .into_iter()
    .collect()
}

const UUIDS: [(&str, &str); 5] = [
    ("lvs9", "5a5a0000-0000-4000-8000-00000000000f"),
    ("thick", "5a5a0000-0000-4000-8000-000000000001"),
    ("thin", "5a5a0000-0000-4000-8000-000000000002"),
    ("snap", "5a5a0000-0000-4000-8000-000000000003"),
    ("clone", "5a5a0000-0000-4000-8000-000000000004"),
];

fn uuid(name: &str) -> &'static str {
    UUIDS.iter().find(|(n, _)| *n == name).unwrap().1
}

/// SPDK lvol's xattrs: the name NUL-padded to 64 bytes, the UUID with its
/// NUL.
fn lvol_xattrs(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut n = name.as_bytes().to_vec();
    n.resize(64, 0);
    let mut u = uuid(name).as_bytes().to_vec();
    u.push(0);
    vec![("name".into(), n), ("uuid".into(), u)]
}

async fn write(s: &Blobstore, id: u64, at: usize, data: &[u8]) {
    let b = s.open_blob(id).unwrap();
    let ch = s.io_channel().unwrap();
    let mut buf = ch.alloc_buf(data.len()).unwrap();
    buf.write_at(0, data);
    let buf = b
        .write(&ch, (at / 512) as u64, (data.len() / 512) as u64, buf)
        .await
        .unwrap();
    ch.free_buf(buf);
}

async fn read_all(s: &Blobstore, id: u64) -> Vec<u8> {
    let b = s.open_blob(id).unwrap();
    let ch = s.io_channel().unwrap();
    let n = b.num_io_units();
    let buf = ch.alloc_buf(n as usize * 512).unwrap();
    let buf = b.read(&ch, 0, n, buf).await.unwrap();
    let mut v = vec![0u8; n as usize * 512];
    buf.read_at(0, &mut v);
    ch.free_buf(buf);
    v
}

async fn image_out(name: &str) -> Vec<u8> {
    let d = bdev::open(name, false, nop).unwrap();
    let ch = d.get_io_channel().unwrap();
    let blocks = d.bdev().num_blocks();
    let mut out = Vec::new();
    let step = (MIB / 512) as u64;
    let mut at = 0;
    while at < blocks {
        let buf = ch.alloc_buf(MIB).unwrap();
        let (st, buf) = ch
            .io(bdev::IoType::Read, Some(buf), at, step, false)
            .await
            .unwrap();
        assert_eq!(st, bdev::IoStatus::Success);
        let buf = buf.unwrap();
        let mut v = vec![0u8; MIB];
        buf.read_at(0, &mut v);
        ch.free_buf(buf);
        out.extend(v);
        at += step;
    }
    out
}

#[test]
#[ignore = "makes an image for ci/blob-interop"]
fn make_lvstore_image_for_spdk() {
    common::runtime();
    bdev::modules::malloc::create("interop_out", (32 * MIB / 512) as u64, 512, None).unwrap();
    let img = on(0, || async {
        let o = StoreOptions {
            cluster_size: MIB as u32,
            md_pages: None,
            bstype: "LVOLSTORE".into(),
            clear: ClearMethod::Unmap,
        };
        let s = Blobstore::init(bdev::open("interop_out", true, nop).unwrap(), &o)
            .await
            .unwrap();
        let mut sx = vec![("uuid".to_string(), {
            let mut u = uuid("lvs9").as_bytes().to_vec();
            u.push(0);
            u
        })];
        sx.push(("name".into(), b"lvs9\0".to_vec()));
        let sup = s
            .create_blob(&BlobOptions {
                num_clusters: 0,
                thin: false,
                xattrs: sx,
            })
            .await
            .unwrap();
        s.set_super_blob(sup).await.unwrap();
        let thick = s
            .create_blob(&BlobOptions {
                num_clusters: 4,
                thin: false,
                xattrs: lvol_xattrs("thick"),
            })
            .await
            .unwrap();
        let thin = s
            .create_blob(&BlobOptions {
                num_clusters: 8,
                thin: true,
                xattrs: lvol_xattrs("thin"),
            })
            .await
            .unwrap();
        write(&s, thick, 0, &pattern(11, 4096)).await;
        write(&s, thin, MIB, &pattern(12, 64)).await;
        write(&s, thin, 5 * MIB + 4096, &pattern(13, 64)).await;
        let snap = s
            .create_snapshot(thick, &lvol_xattrs("snap"))
            .await
            .unwrap();
        let clone = s.create_clone(snap, &lvol_xattrs("clone")).await.unwrap();
        write(&s, thick, 2 * MIB, &pattern(14, 32)).await;
        write(&s, clone, 3 * MIB, &pattern(15, 32)).await;
        let want = expected(false);
        for (name, id) in [
            ("thick", thick),
            ("thin", thin),
            ("snap", snap),
            ("clone", clone),
        ] {
            assert!(read_all(&s, id).await == want[name], "{name}");
        }
        let r = s.check().await.unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        s.unload().await.unwrap();
        drop(s);
        image_out("interop_out").await
    });
    let d = dir();
    std::fs::write(d.join("store.img"), img).unwrap();
    for (name, data) in expected(false) {
        std::fs::write(d.join(format!("{name}.bin")), data).unwrap();
    }
    std::fs::write(d.join("thin-after.bin"), &expected(true)["thin"]).unwrap();
    std::fs::write(d.join("spdk-write.bin"), pattern(16, 64)).unwrap();
    let lvols: Vec<String> = UUIDS[1..].iter().map(|(n, u)| format!("{n} {u}")).collect();
    std::fs::write(d.join("lvols.txt"), lvols.join("\n") + "\n").unwrap();
    println!("made {}", d.join("store.img").display());
}

#[test]
#[ignore = "checks an image for ci/blob-interop"]
fn check_image_spdk_touched() {
    common::runtime();
    let img = std::fs::read(dir().join("store.img")).unwrap();
    bdev::modules::malloc::create("interop_back", (img.len() / 512) as u64, 512, None).unwrap();
    on(0, move || async move {
        let d = bdev::open("interop_back", true, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        for (i, chunk) in img.chunks(MIB).enumerate() {
            let mut b = ch.alloc_buf(chunk.len()).unwrap();
            b.write_at(0, chunk);
            let (st, b) = ch
                .io(
                    bdev::IoType::Write,
                    Some(b),
                    (i * MIB / 512) as u64,
                    (chunk.len() / 512) as u64,
                    false,
                )
                .await
                .unwrap();
            assert_eq!(st, bdev::IoStatus::Success);
            ch.free_buf(b.unwrap());
        }
        drop(ch);
        let s = Blobstore::load(d).await.unwrap();
        let r = s.check().await.unwrap();
        assert!(r.problems.is_empty(), "fsck after SPDK: {:#?}", r.problems);
        let want = expected(true);
        let sup = s.super_blob().unwrap();
        let mut seen = Vec::new();
        for id in s.blob_ids().into_iter().filter(|&i| i != sup) {
            let name = s.open_blob(id).unwrap().xattr("name").unwrap();
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            let name = String::from_utf8_lossy(&name[..end]).into_owned();
            assert!(
                read_all(&s, id).await == want[name.as_str()],
                "{name} after SPDK"
            );
            seen.push(name);
        }
        seen.sort();
        assert_eq!(seen, ["clone", "snap", "thick", "thin"]);
        println!(
            "loaded back after SPDK: {} blobs, fsck clean, every lvol's data as expected",
            r.blobs
        );
        s.unload().await.unwrap();
    });
}
