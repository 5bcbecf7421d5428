//! RAID superblocks SPDK v24.09 wrote (`tests/fixtures/raid/`, made by
//! `make-spdk-fixtures` there, see its MANIFEST.md) read here field by
//! field against SPDK's own `bdev_raid_get_bdevs`, written back byte for
//! byte, and the data SPDK's RAID put on the members found where the
//! layout says (raid1: on both at the data offset; raid0: strip by strip,
//! alternating members).

use std::path::{Path, PathBuf};
use std::process::Command;

use bdev::modules::raid::superblock::{Level, MemberState, RaidState, Superblock};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/raid")
        .join(name)
}

/// A member image, gunzipped (gzip is part of every Debian system).
fn member(dir: &str, file: &str) -> Vec<u8> {
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(fixture(dir).join(file))
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {dir}/{file}");
    assert_eq!(o.stdout.len(), 8 << 20, "{dir}/{file}: an 8 MiB member");
    o.stdout
}

fn spdk_view(dir: &str) -> Value {
    let text = std::fs::read_to_string(fixture(dir).join("bdev_raid_get_bdevs.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()[0].clone()
}

/// The pattern spdk_dd wrote through the RAID: byte i is (i*7+3) mod 256,
/// each 512-byte block stamped with its index.
fn pattern_block(blk: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (blk * 512..(blk + 1) * 512)
        .map(|i| ((i * 7 + 3) & 0xff) as u8)
        .collect();
    b[..4].copy_from_slice(&(blk as u32).to_le_bytes());
    b
}

const PATTERN_BLOCKS: usize = 512;

fn check_superblock(dir: &str, level: Level, strip_kb: u64) -> (Superblock, Vec<Vec<u8>>) {
    let view = spdk_view(dir);
    let images = [member(dir, "m0.img.gz"), member(dir, "m1.img.gz")];
    let mut first: Option<Superblock> = None;
    for (i, img) in images.iter().enumerate() {
        let need = Superblock::needed_len(img).unwrap();
        let sb = Superblock::parse(&img[..need]).unwrap_or_else(|e| panic!("{dir} m{i}: {e}"));
        // Written back byte for byte.
        assert_eq!(sb.encode().unwrap(), img[..need].to_vec(), "{dir} m{i}");
        assert_eq!(sb.name, view["name"].as_str().unwrap());
        assert_eq!(sb.uuid_string(), view["uuid"].as_str().unwrap());
        assert_eq!(sb.level, level);
        assert_eq!(sb.level.name(), view["raid_level"].as_str().unwrap());
        assert_eq!(sb.state, RaidState::Online);
        assert_eq!(sb.block_size, 512);
        assert_eq!(u64::from(sb.strip_size) * 512 / 1024, strip_kb);
        assert_eq!(
            u64::from(sb.num_base_bdevs),
            view["num_base_bdevs"].as_u64().unwrap()
        );
        assert_eq!(sb.members.len(), 2);
        for (slot, (m, v)) in sb
            .members
            .iter()
            .zip(view["base_bdevs_list"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(usize::from(m.slot), slot);
            assert_eq!(m.state, MemberState::Configured);
            assert_eq!(m.data_offset, v["data_offset"].as_u64().unwrap());
            assert_eq!(m.data_size, v["data_size"].as_u64().unwrap());
            assert_eq!(m.uuid_string(), v["uuid"].as_str().unwrap());
        }
        // Every member holds the same superblock.
        match &first {
            None => first = Some(sb),
            Some(f) => assert_eq!(f, &sb, "{dir}: members disagree"),
        }
    }
    (first.unwrap(), images.to_vec())
}

#[test]
fn spdk_raid1_superblock_and_data() {
    let (sb, images) = check_superblock("spdk-v24.09-Raid1", Level::Raid1, 0);
    assert_eq!(sb.raid_size, 14336);
    let off = sb.members[0].data_offset as usize * 512;
    for (i, img) in images.iter().enumerate() {
        for blk in 0..PATTERN_BLOCKS {
            assert_eq!(
                &img[off + blk * 512..off + (blk + 1) * 512],
                &pattern_block(blk)[..],
                "raid1 member {i}, RAID block {blk}"
            );
        }
    }
}

#[test]
fn spdk_raid0_superblock_and_striping() {
    let (sb, images) = check_superblock("spdk-v24.09-Raid0", Level::Raid0, 64);
    let strip = sb.strip_size as usize;
    assert_eq!(strip, 128);
    // Each member's data rounded down to whole strips, times two.
    let per_member = sb.members[0].data_size;
    assert_eq!(per_member % strip as u64, 0);
    assert_eq!(sb.raid_size, per_member * 2);
    let off = sb.members[0].data_offset as usize;
    for blk in 0..PATTERN_BLOCKS {
        let (s, within) = (blk / strip, blk % strip);
        let (m, mblk) = (s % 2, off + (s / 2) * strip + within);
        assert_eq!(
            &images[m][mblk * 512..(mblk + 1) * 512],
            &pattern_block(blk)[..],
            "raid0 RAID block {blk}: member {m} block {mblk}"
        );
    }
}
