//! RAID superblocks SPDK v24.09 wrote (`tests/fixtures/raid/`, made by
//! `make-spdk-fixtures` there, see its MANIFEST.md) read here field by
//! field against SPDK's own `bdev_raid_get_bdevs`, written back byte for
//! byte, and the data SPDK's RAID put on the members found where the
//! layout says (raid1: on both at the data offset; raid0: strip by strip,
//! alternating members); then the whole RAIDs assembled here by examine
//! (and, through `ci/raid-interop`, ours assembled by SPDK).

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

// RAIDs crossing between SPDK v24.09 and here, whole: SPDK's fixtures
// loaded into malloc bdevs appear here by examine alone, online, with
// SPDK's name, UUID, size and data; the other way (a RAID made here
// assembling in SPDK) is `ci/raid-interop`, which runs the ignored test
// below to write member images and then SPDK's target over them.

mod common;

use bdev::modules::raid::{self, CreateParams};
use bdev::modules::{malloc, passthru};
use bdev::{IoStatus, IoType};
use common::{nop, on};

const M0_UUID: &str = "a0a0a0a0-0000-4000-8000-000000000000";
const M1_UUID: &str = "a1a1a1a1-1111-4111-8111-111111111111";

/// The first `blocks` blocks of the pattern ([`pattern_block`]).
fn pattern(blocks: usize) -> Vec<u8> {
    (0..blocks).flat_map(pattern_block).collect()
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
        let view = spdk_view(dir);
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
