//! RAIDs crossing between SPDK v24.09 and here. SPDK's (the fixtures in
//! `tests/fixtures/raid/`: a raid1 and a raid0 with superblocks over two
//! file-backed members, written by spdk_dd) are loaded into malloc bdevs
//! and appear here by examine alone, online, with SPDK's name, UUID, size
//! and data. The other way (a RAID made here assembling in SPDK) is
//! `ci/raid-interop`, which runs the ignored test below to write member
//! images and then SPDK's target over them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bdev::modules::raid::superblock::Level;
use bdev::modules::raid::{self, CreateParams};
use bdev::modules::{malloc, passthru};
use bdev::{IoStatus, IoType};
use common::{nop, on};
use serde_json::Value;

const M0_UUID: &str = "a0a0a0a0-0000-4000-8000-000000000000";
const M1_UUID: &str = "a1a1a1a1-1111-4111-8111-111111111111";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/raid")
        .join(name)
}

fn member(dir: &str, file: &str) -> Vec<u8> {
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(fixture(dir).join(file))
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {dir}/{file}");
    o.stdout
}

/// The pattern: byte i is (i*7+3) mod 256, each 512-byte block stamped
/// with its index (u32 LE).
fn pattern(blocks: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..blocks * 512)
        .map(|i| ((i * 7 + 3) & 0xff) as u8)
        .collect();
    for blk in 0..blocks {
        b[blk * 512..blk * 512 + 4].copy_from_slice(&(blk as u32).to_le_bytes());
    }
    b
}

async fn write_all(name: &str, data: &[u8]) {
    let d = bdev::open(name, true, nop).unwrap();
    let ch = d.get_io_channel().unwrap();
    let bs = ch.block_size() as usize;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let mut b = ch.alloc_buf(chunk.len()).unwrap();
        b.write_at(0, chunk);
        let off = (i << 20) / bs;
        let (st, b) = ch
            .io(
                IoType::Write,
                Some(b),
                off as u64,
                (chunk.len() / bs) as u64,
                false,
            )
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        ch.free_buf(b.unwrap());
    }
}

async fn read_all(name: &str, off: u64, len: usize) -> Vec<u8> {
    let d = bdev::open(name, false, nop).unwrap();
    let ch = d.get_io_channel().unwrap();
    let bs = ch.block_size() as usize;
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        let b = ch.alloc_buf(chunk.len()).unwrap();
        let at = off + ((i << 20) / bs) as u64;
        let (st, b) = ch
            .io(IoType::Read, Some(b), at, (chunk.len() / bs) as u64, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        let b = b.unwrap();
        b.read_at(0, chunk);
        ch.free_buf(b);
    }
    out
}

#[test]
fn raids_spdk_made_assemble_here_with_their_data() {
    common::runtime();
    raid::register().unwrap();
    for (dir, level) in [
        ("spdk-v24.09-Raid1", Level::Raid1),
        ("spdk-v24.09-Raid0", Level::Raid0),
    ] {
        let view: Value = serde_json::from_str::<Value>(
            &std::fs::read_to_string(fixture(dir).join("bdev_raid_get_bdevs.json")).unwrap(),
        )
        .unwrap()[0]
            .clone();
        let name = view["name"].as_str().unwrap().to_owned();
        // The member images in malloc bdevs, then shown with the UUIDs
        // SPDK's members had (passthrough bdevs): examine finds them.
        for (i, uuid) in [M0_UUID, M1_UUID].into_iter().enumerate() {
            let img = member(dir, &format!("m{i}.img.gz"));
            let store = format!("{dir}_store{i}");
            malloc::create(&store, (img.len() / 512) as u64, 512, None).unwrap();
            let s2 = store.clone();
            on(0, move || async move { write_all(&s2, &img).await });
            passthru::create(&store, &format!("{dir}_m{i}"), Some(uuid)).unwrap();
            on(0, || async { bdev::wait_for_examine().await });
            let want = if i == 0 { "configuring" } else { "online" };
            let r = raid::list(None)
                .into_iter()
                .find(|r| r["name"] == name.as_str());
            assert_eq!(
                r.as_ref().map(|r| r["state"].clone()),
                Some(want.into()),
                "{dir} m{i}"
            );
        }
        let b = bdev::get(&name).unwrap();
        assert_eq!(b.uuid(), view["uuid"].as_str().unwrap());
        let r = raid::list(None)
            .into_iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap();
        assert_eq!(r["raid_level"], level.name());
        assert_eq!(r["strip_size_kb"], view["strip_size_kb"]);
        assert_eq!(r["superblock"], true);
        for k in 0..2 {
            let (ours, theirs) = (&r["base_bdevs_list"][k], &view["base_bdevs_list"][k]);
            assert_eq!(ours["uuid"], theirs["uuid"], "{dir}");
            assert_eq!(ours["data_offset"], theirs["data_offset"], "{dir}");
            assert_eq!(ours["data_size"], theirs["data_size"], "{dir}");
        }
        let n2 = name.clone();
        let data = on(0, move || async move { read_all(&n2, 0, 256 * 1024).await });
        assert!(
            data == pattern(512),
            "{dir}: SPDK's data read back through our RAID"
        );
        let n2 = name.clone();
        on(
            0,
            move || async move { raid::delete(&n2, false).await.unwrap() },
        );
    }
}

/// Writes the members of a raid1 and a raid0 made here (superblocks, and
/// the pattern written through the RAID) as images into
/// `$RAID_IMAGES_DIR` (`ci/raid-interop` hands them to SPDK).
#[test]
#[ignore = "run by ci/raid-interop"]
fn make_member_images_for_spdk() {
    let out = PathBuf::from(std::env::var("RAID_IMAGES_DIR").expect("RAID_IMAGES_DIR"));
    common::runtime();
    raid::register().unwrap();
    for (tag, level, strip, uuid) in [
        (
            "Ours1",
            Level::Raid1,
            0,
            "7a1d0001-0000-4000-8000-000000000001",
        ),
        (
            "Ours0",
            Level::Raid0,
            64,
            "7a1d0000-0000-4000-8000-000000000000",
        ),
    ] {
        let members: Vec<String> = (0..2)
            .map(|i| {
                let store = format!("{tag}_store{i}");
                malloc::create(&store, 16384, 512, None).unwrap();
                let m = format!("{tag}_m{i}");
                passthru::create(
                    &store,
                    &m,
                    Some(&format!(
                        "5e5e5e5e-{i:04}-4000-8000-0000000000{:02x}",
                        strip
                    )),
                )
                .unwrap();
                m
            })
            .collect();
        let p = CreateParams {
            name: tag.to_owned(),
            level,
            strip_size_kb: strip,
            base_bdevs: members.clone(),
            uuid: Some(uuid.to_owned()),
            superblock: true,
        };
        on(0, move || async move { raid::create(p).await.unwrap() });
        let t = tag.to_owned();
        on(0, move || async move { write_all(&t, &pattern(512)).await });
        let t = tag.to_owned();
        on(
            0,
            move || async move { raid::delete(&t, false).await.unwrap() },
        );
        for (i, m) in members.iter().enumerate() {
            let m = m.clone();
            let img = on(0, move || async move { read_all(&m, 0, 8 << 20).await });
            let path = out.join(format!("{tag}-m{i}.img"));
            std::fs::write(&path, img).unwrap();
            println!(
                "{} {} {}",
                path.display(),
                bdev::get(&members[i]).unwrap().uuid(),
                tag
            );
        }
    }
}
