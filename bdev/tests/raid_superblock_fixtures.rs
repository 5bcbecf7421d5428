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
        // The layout code's mapping, against where SPDK put the data.
        let (m, inner) =
            bdev::modules::raid::raid0::map_block(blk as u64, strip.trailing_zeros(), 2);
        let mblk = off + inner as usize;
        assert_eq!(
            &images[m][mblk * 512..(mblk + 1) * 512],
            &pattern_block(blk)[..],
            "raid0 RAID block {blk}: member {m} block {mblk}"
        );
    }
}

mod through_a_channel {
    //! `sb_io`: the superblock read from and written to bdevs through
    //! their channels (malloc bdevs on a simulated core, one loaded with
    //! the first blocks of a member SPDK wrote).

    use std::mem::ManuallyDrop;

    use bdev::modules::malloc;
    use bdev::modules::raid::sb_io::{self, SbIoError};
    use bdev::modules::raid::superblock::{SbError, Superblock};
    use bdev::{BdevEvent, IoStatus, IoType};
    use reactor::SimRuntime;

    thread_local! {
        static SIM: ManuallyDrop<SimRuntime> = ManuallyDrop::new(SimRuntime::new(1));
    }

    fn nop(_: &str, _: BdevEvent) {}

    #[test]
    fn load_store_wipe() {
        let image = super::member("spdk-v24.09-Raid1", "m0.img.gz");
        let spdk = Superblock::parse(&image[..4096]).unwrap();
        SIM.with(|s| {
            s.enter(0, || {
                malloc::create("sbio512", 16384, 512, None).unwrap();
                malloc::create("sbio4k", 2048, 4096, None).unwrap();
            })
        });
        let spdk2 = spdk.clone();
        SIM.with(|s| {
            s.block_on(0, async move {
                let desc = bdev::open("sbio512", true, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                // No superblock on a fresh bdev.
                assert_eq!(sb_io::load(&ch).await.unwrap(), None);
                // SPDK's member's first 4 KiB: the same superblock.
                let mut b = bdev::memory().alloc(4096, 4096).unwrap();
                b.write_at(0, &image[..4096]);
                let (st, _) = ch.io(IoType::Write, Some(b), 0, 8, false).await.unwrap();
                assert_eq!(st, IoStatus::Success);
                assert_eq!(sb_io::load(&ch).await.unwrap(), Some(spdk2.clone()));
                // A flipped bit in the member table: refused, named.
                let mut b = bdev::memory().alloc(512, 4096).unwrap();
                let mut first = image[..512].to_vec();
                first[300] ^= 0x10;
                b.write_at(0, &first);
                let (st, _) = ch.io(IoType::Write, Some(b), 0, 1, false).await.unwrap();
                assert_eq!(st, IoStatus::Success);
                assert!(matches!(
                    sb_io::load(&ch).await,
                    Err(SbIoError::Invalid(SbError::Crc { .. }))
                ));
                // Written here, read back; then wiped.
                let mut mine = spdk2.clone();
                mine.seq_number += 1;
                sb_io::store(&ch, &mine).await.unwrap();
                assert_eq!(sb_io::load(&ch).await.unwrap(), Some(mine.clone()));
                sb_io::wipe(&ch, mine.len()).await.unwrap();
                assert_eq!(sb_io::load(&ch).await.unwrap(), None);
                drop(ch);
                // 4 KiB blocks: one block holds it.
                let desc4 = bdev::open("sbio4k", true, nop).unwrap();
                let ch4 = desc4.get_io_channel().unwrap();
                let mut big = spdk2.clone();
                big.block_size = 4096;
                sb_io::store(&ch4, &big).await.unwrap();
                assert_eq!(sb_io::load(&ch4).await.unwrap(), Some(big));
                drop(ch4);
                drop((desc, desc4));
            })
            .unwrap()
        });
    }
}
