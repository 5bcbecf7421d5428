//! The RAID module on the host, SPDK's `test/bdev/bdev_raid.sh` scenarios
//! over malloc, passthrough, delay and error bdevs on two reactors: state
//! transitions of every level with 2-4 members, with and without a
//! superblock; create returning only once the RAID is usable (over 100 ms
//! delay members); assembly from superblocks with members appearing in
//! reverse order; a degraded raid1 serving; a rebuild under a verify
//! workload, then the members compared; I/O errors on one raid1 member
//! not seen above; unmap reading back zeros; SPDK's refusals.

mod common;

use std::time::Duration;

use bdev::modules::raid::superblock::{Level, MemberState};
use bdev::modules::raid::{self, CreateParams, RaidError};
use bdev::modules::{delay, error, malloc, passthru};
use bdev::{IoStatus, IoType};
use common::{Rng, data_test, nop, on};
use serde_json::Value;

fn setup() {
    common::runtime();
    raid::register().unwrap();
}

fn params(name: &str, level: Level, strip_kb: u32, members: &[&str], sb: bool) -> CreateParams {
    CreateParams {
        name: name.to_owned(),
        level,
        strip_size_kb: strip_kb,
        base_bdevs: members.iter().map(|s| s.to_string()).collect(),
        uuid: None,
        superblock: sb,
    }
}

fn create(p: CreateParams) -> Result<(), RaidError> {
    on(0, move || async move { raid::create(p).await })
}

fn delete(name: &str) -> Result<(), RaidError> {
    let name = name.to_owned();
    on(0, move || async move { raid::delete(&name, false).await })
}

fn wait_for_examine() {
    on(0, || async { bdev::wait_for_examine().await });
}

fn info(name: &str) -> Option<Value> {
    raid::list(None).into_iter().find(|r| r["name"] == name)
}

fn state(name: &str) -> String {
    info(name).map_or("gone".into(), |r| r["state"].as_str().unwrap().to_owned())
}

fn counts(name: &str) -> (u64, u64, u64) {
    let r = info(name).unwrap();
    (
        r["num_base_bdevs"].as_u64().unwrap(),
        r["num_base_bdevs_discovered"].as_u64().unwrap(),
        r["num_base_bdevs_operational"].as_u64().unwrap(),
    )
}

fn io(name: &str, ty: IoType, off: u64, data: Option<Vec<u8>>, blocks: u64) -> (IoStatus, Vec<u8>) {
    let name = name.to_owned();
    on(1, move || async move {
        let d = bdev::open(&name, ty != IoType::Read, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        let bs = ch.block_size() as usize;
        let buf = if ty.has_data() {
            let mut b = ch.alloc_buf(blocks as usize * bs).unwrap();
            if let Some(data) = &data {
                b.write_at(0, data);
            }
            Some(b)
        } else {
            None
        };
        let (st, buf) = ch.io(ty, buf, off, blocks, false).await.unwrap();
        let mut out = vec![
            0u8;
            if ty.has_data() {
                blocks as usize * bs
            } else {
                0
            }
        ];
        if let Some(b) = buf {
            b.read_at(0, &mut out);
            ch.free_buf(b);
        }
        (st, out)
    })
}

fn write(name: &str, off: u64, data: &[u8]) {
    let bs = bdev::get(name).unwrap().block_size() as u64;
    let (st, _) = io(
        name,
        IoType::Write,
        off,
        Some(data.to_vec()),
        data.len() as u64 / bs,
    );
    assert_eq!(st, IoStatus::Success, "write to {name} at {off}");
}

fn read(name: &str, off: u64, len: usize) -> Vec<u8> {
    let bs = bdev::get(name).unwrap().block_size() as u64;
    let (st, d) = io(name, IoType::Read, off, None, len as u64 / bs);
    assert_eq!(st, IoStatus::Success, "read of {name} at {off}");
    d
}

fn mallocs(prefix: &str, n: usize, blocks: u64, bs: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            malloc::create(&name, blocks, bs, None).unwrap();
            name
        })
        .collect()
}

fn drop_bdev(name: &str) {
    let name = name.to_owned();
    on(
        0,
        move || async move { bdev::unregister(&name).await.unwrap() },
    );
}

#[test]
fn every_level_goes_configuring_then_online_then_away() {
    setup();
    for (level, strip) in [(Level::Raid0, 64), (Level::Concat, 64), (Level::Raid1, 0)] {
        for n in 2..=4usize {
            for sb in [false, true] {
                let tag = format!("st_{}_{n}_{}", level.name(), u8::from(sb));
                let names: Vec<String> = (0..n).map(|i| format!("{tag}_m{i}")).collect();
                // Every member but the last exists.
                for m in &names[..n - 1] {
                    malloc::create(m, 8192, 512, None).unwrap();
                }
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let rname = format!("{tag}_r");
                create(params(&rname, level, strip, &refs, sb)).unwrap();
                assert_eq!(state(&rname), "configuring", "{tag}");
                assert_eq!(counts(&rname), (n as u64, n as u64 - 1, n as u64), "{tag}");
                assert!(
                    bdev::get(&rname).is_none(),
                    "{tag}: no bdev while configuring"
                );
                // The last one appears: online once examined.
                malloc::create(&names[n - 1], 8192, 512, None).unwrap();
                wait_for_examine();
                assert_eq!(state(&rname), "online", "{tag}");
                assert_eq!(counts(&rname), (n as u64, n as u64, n as u64), "{tag}");
                let b = bdev::get(&rname).unwrap();
                let off = if sb { 2048 } else { 0 };
                let per = 8192 - off;
                let expect = match level {
                    Level::Raid1 => per,
                    _ => (per / 128) * 128 * n as u64,
                };
                assert_eq!(b.num_blocks(), expect, "{tag}: size");
                assert_eq!(b.product_name(), "Raid Volume");
                let r = info(&rname).unwrap();
                for m in r["base_bdevs_list"].as_array().unwrap() {
                    assert_eq!(m["data_offset"], off, "{tag}");
                    assert_eq!(m["is_configured"], true, "{tag}");
                }
                for m in &names {
                    assert_eq!(bdev::get(m).unwrap().claimed_by().as_deref(), Some("raid"));
                }
                // A pattern through it, read back.
                let mut rng = Rng(n as u64 * 77 + 1);
                let data = rng.bytes(64 * 1024);
                write(&rname, 100, &data);
                assert_eq!(read(&rname, 100, data.len()), data, "{tag}");
                delete(&rname).unwrap();
                assert_eq!(state(&rname), "gone", "{tag}");
                assert!(bdev::get(&rname).is_none());
                for m in &names {
                    assert_eq!(
                        bdev::get(m).unwrap().claimed_by(),
                        None,
                        "{tag}: {m} released"
                    );
                    drop_bdev(m);
                }
            }
        }
    }
}

#[test]
fn create_answers_only_once_the_raid_is_usable_over_slow_members() {
    setup();
    let lat = delay::Latencies {
        avg_read_us: 100_000,
        p99_read_us: 100_000,
        avg_write_us: 100_000,
        p99_write_us: 100_000,
    };
    for m in ["slow_m0", "slow_m1"] {
        malloc::create(m, 16384, 512, None).unwrap();
        delay::create(m, &format!("{m}_d"), lat, None).unwrap();
    }
    create(params(
        "slow_r",
        Level::Raid1,
        0,
        &["slow_m0_d", "slow_m1_d"],
        true,
    ))
    .unwrap();
    // No wait and no retry: usable now.
    let data = Rng(5).bytes(4096);
    write("slow_r", 0, &data);
    assert_eq!(read("slow_r", 0, 4096), data);
    wait_for_examine();
    assert_eq!(state("slow_r"), "online");
    delete("slow_r").unwrap();
}

#[test]
fn data_test_on_each_level() {
    setup();
    for (level, strip) in [(Level::Raid0, 4), (Level::Concat, 16), (Level::Raid1, 0)] {
        let tag = format!("dt_{}", level.name());
        let m = mallocs(&format!("{tag}_m"), 3, 32768, 512);
        let refs: Vec<&str> = m.iter().map(String::as_str).collect();
        let r = format!("{tag}_r");
        create(params(&r, level, strip, &refs, true)).unwrap();
        data_test(&r, 0x5eed ^ strip as u64);
        delete(&r).unwrap();
        for x in &m {
            drop_bdev(x);
        }
    }
}

/// Members behind passthrough bdevs with fixed UUIDs, as SPDK's test does:
/// deleting the passthroughs takes the members away, making them again
/// brings them back with their superblocks (the malloc keeps the data).
fn pt_uuid(tag: u8, i: usize) -> String {
    format!("{tag:02x}000000-0000-4000-8000-0000000000{i:02x}")
}

#[test]
fn assembles_from_superblocks_with_members_appearing_in_reverse_order() {
    setup();
    for (k, (level, strip)) in [(Level::Raid0, 64), (Level::Concat, 32), (Level::Raid1, 0)]
        .into_iter()
        .enumerate()
    {
        let tag = format!("asm_{}", level.name());
        let n = 3;
        let m = mallocs(&format!("{tag}_m"), n, 8192, 512);
        let pts: Vec<String> = (0..n).map(|i| format!("{tag}_pt{i}")).collect();
        for i in 0..n {
            passthru::create(&m[i], &pts[i], Some(&pt_uuid(k as u8 + 1, i))).unwrap();
        }
        let refs: Vec<&str> = pts.iter().map(String::as_str).collect();
        let r = format!("{tag}_r");
        create(params(&r, level, strip, &refs, true)).unwrap();
        let uuid = bdev::get(&r).unwrap().uuid().to_owned();
        let data = Rng(k as u64 + 9).bytes(128 * 1024);
        write(&r, 64, &data);
        delete(&r).unwrap();
        for p in &pts {
            on(0, {
                let p = p.clone();
                move || async move { passthru::delete(&p).await.unwrap() }
            });
        }
        // The mallocs hold the superblock of the deleted RAID: a new RAID
        // over them is refused (-EEXIST), nothing left behind.
        let mrefs: Vec<&str> = m.iter().map(String::as_str).collect();
        let e = create(params(&format!("{tag}_other"), level, strip, &mrefs, false)).unwrap_err();
        assert_eq!(e.errno(), -17, "{e}");
        assert!(matches!(e, RaidError::ForeignSuperblock { .. }), "{e}");
        assert_eq!(state(&format!("{tag}_other")), "gone");
        for x in &m {
            assert_eq!(bdev::get(x).unwrap().claimed_by(), None);
        }
        // Members come back in reverse order: configuring until the last.
        for i in (0..n).rev() {
            passthru::create(&m[i], &pts[i], Some(&pt_uuid(k as u8 + 1, i))).unwrap();
            wait_for_examine();
            let want = if i == 0 { "online" } else { "configuring" };
            assert_eq!(state(&r), want, "{tag} after {}", pts[i]);
        }
        let b = bdev::get(&r).unwrap();
        assert_eq!(b.uuid(), uuid);
        assert_eq!(read(&r, 64, data.len()), data, "{tag}: the data is back");
        delete(&r).unwrap();
        for p in &pts {
            drop_bdev(p);
        }
        for x in &m {
            drop_bdev(x);
        }
    }
}

fn superblock_of(member: &str) -> bdev::modules::raid::superblock::Superblock {
    let member = member.to_owned();
    on(0, move || async move {
        let d = bdev::open(&member, false, nop).unwrap();
        let ch = d.get_io_channel().unwrap();
        raid::sb_io::load(&ch).await.unwrap().unwrap()
    })
}

#[test]
fn a_raid1_that_loses_a_member_keeps_serving_and_records_it() {
    setup();
    let m = mallocs("deg_m", 3, 8192, 512);
    let pts: Vec<String> = (0..3).map(|i| format!("deg_pt{i}")).collect();
    for i in 0..3 {
        passthru::create(&m[i], &pts[i], Some(&pt_uuid(0x40, i))).unwrap();
    }
    let refs: Vec<&str> = pts.iter().map(String::as_str).collect();
    create(params("deg_r", Level::Raid1, 0, &refs, true)).unwrap();
    let seq0 = superblock_of(&m[0]).seq_number;
    let data = Rng(3).bytes(64 * 1024);
    write("deg_r", 8, &data);
    on(0, || async { passthru::delete("deg_pt1").await.unwrap() });
    wait_for_examine();
    assert_eq!(state("deg_r"), "online");
    assert_eq!(counts("deg_r"), (3, 2, 2));
    let r = info("deg_r").unwrap();
    assert_eq!(r["base_bdevs_list"][1]["name"], Value::Null);
    assert_eq!(r["base_bdevs_list"][1]["is_configured"], false);
    assert_eq!(read("deg_r", 8, data.len()), data);
    let more = Rng(4).bytes(32 * 1024);
    write("deg_r", 4096, &more);
    assert_eq!(read("deg_r", 4096, more.len()), more);
    // The survivors' superblock: newer, slot 1 missing.
    let sb = superblock_of(&m[0]);
    assert!(sb.seq_number > seq0);
    let slot1 = sb.members.iter().find(|x| x.slot == 1).unwrap();
    assert_eq!(slot1.state, MemberState::Missing);
    assert_eq!(superblock_of(&m[2]), sb);
    // Down to one member: still online.
    on(0, || async { passthru::delete("deg_pt2").await.unwrap() });
    wait_for_examine();
    assert_eq!(state("deg_r"), "online");
    assert_eq!(read("deg_r", 8, data.len()), data);
    // The last one goes: the RAID is freed (its superblocks stay).
    on(0, || async { passthru::delete("deg_pt0").await.unwrap() });
    wait_for_examine();
    assert_eq!(state("deg_r"), "gone");
    assert!(bdev::get("deg_r").is_none());
    for x in &m {
        drop_bdev(x);
    }
}

#[test]
fn raid0_and_concat_go_offline_without_a_member() {
    setup();
    for level in [Level::Raid0, Level::Concat] {
        let tag = format!("off_{}", level.name());
        let m = mallocs(&format!("{tag}_m"), 2, 8192, 512);
        let refs: Vec<&str> = m.iter().map(String::as_str).collect();
        let r = format!("{tag}_r");
        create(params(&r, level, 64, &refs, false)).unwrap();
        drop_bdev(&m[1]);
        wait_for_examine();
        assert_eq!(state(&r), "offline", "{tag}");
        assert!(bdev::get(&r).is_none());
        assert_eq!(counts(&r), (2, 1, 1));
        delete(&r).unwrap();
        assert_eq!(bdev::get(&m[0]).unwrap().claimed_by(), None);
        drop_bdev(&m[0]);
    }
}

#[test]
fn rebuild_onto_a_new_member_under_a_verify_workload() {
    setup();
    raid::set_options(raid::Options {
        process_window_size_kb: 256,
        process_max_bandwidth_mb_sec: 100,
    })
    .unwrap();
    let m = mallocs("rb_m", 3, 32768, 512);
    create(params("rb_r", Level::Raid1, 0, &["rb_m0", "rb_m1"], true)).unwrap();
    let size = bdev::get("rb_r").unwrap().num_blocks();
    // Known contents everywhere.
    let mut rng = Rng(11);
    let all = rng.bytes(size as usize * 512);
    for chunk in 0..(size / 2048) {
        let at = (chunk * 2048) as usize * 512;
        write("rb_r", chunk * 2048, &all[at..at + 2048 * 512]);
    }
    drop_bdev("rb_m1");
    assert_eq!(counts("rb_r"), (2, 1, 1));
    on(0, || async {
        raid::add_base_bdev("rb_r", "rb_m2").await.unwrap()
    });
    let r = info("rb_r").unwrap();
    assert_eq!(r["process"]["type"], "rebuild", "{r}");
    assert_eq!(r["process"]["target"], "rb_m2");
    // A verify workload while it rebuilds: writes then reads back, from
    // the other core, until the rebuild ends.
    let mut rng = Rng(12);
    let mut model = all.clone();
    let mut rounds = 0;
    let mut seen_progress = false;
    while info("rb_r").unwrap().get("process").is_some() {
        let off = rng.below(size - 64);
        let d = rng.bytes(32 * 512);
        write("rb_r", off, &d);
        model[off as usize * 512..off as usize * 512 + d.len()].copy_from_slice(&d);
        let o2 = rng.below(size - 64);
        assert_eq!(
            read("rb_r", o2, 32 * 512),
            model[o2 as usize * 512..o2 as usize * 512 + 32 * 512],
            "read during the rebuild at {o2}"
        );
        if let Some(p) = info("rb_r").unwrap().get("process") {
            seen_progress |= p["progress"]["blocks"].as_u64().unwrap() > 0;
        }
        rounds += 1;
        assert!(rounds < 100_000, "the rebuild does not end");
    }
    assert!(seen_progress, "progress was reported");
    assert_eq!(counts("rb_r"), (2, 2, 2));
    // Member against member: the data areas are the same, and the model.
    raid::set_options(raid::Options {
        process_window_size_kb: 1024,
        process_max_bandwidth_mb_sec: 0,
    })
    .unwrap();
    delete("rb_r").unwrap();
    let a = read("rb_m0", 2048, size as usize * 512);
    let b = read("rb_m2", 2048, size as usize * 512);
    assert!(a == b, "the members differ after the rebuild");
    assert!(a == model, "the members differ from what was written");
    let sb = superblock_of("rb_m2");
    assert!(
        sb.members
            .iter()
            .all(|x| x.state == MemberState::Configured)
    );
    for x in ["rb_m0", "rb_m2"] {
        drop_bdev(x);
    }
    let _ = m;
}

#[test]
fn io_errors_on_one_raid1_member_are_not_seen_above() {
    setup();
    malloc::create("err_m0", 8192, 512, None).unwrap();
    malloc::create("err_m1", 8192, 512, None).unwrap();
    error::create("err_m1", None).unwrap();
    create(params(
        "err_r",
        Level::Raid1,
        0,
        &["err_m0", "EE_err_m1"],
        false,
    ))
    .unwrap();
    let data = Rng(21).bytes(16 * 1024);
    write("err_r", 0, &data);
    // Reads failing on the error member: retried on the other.
    error::inject_error("EE_err_m1", "read", "failure", 1000).unwrap();
    for _ in 0..20 {
        assert_eq!(read("err_r", 0, data.len()), data);
    }
    assert_eq!(
        counts("err_r"),
        (2, 2, 2),
        "a read error does not fail the member"
    );
    // Writes failing on it: they succeed above, the member is taken out.
    error::inject_error("EE_err_m1", "write", "failure", 1).unwrap();
    let more = Rng(22).bytes(8 * 1024);
    write("err_r", 64, &more);
    common::wait_until("the failed member to leave", || counts("err_r").1 == 1);
    assert_eq!(state("err_r"), "online");
    assert_eq!(read("err_r", 64, more.len()), more);
    delete("err_r").unwrap();
    on(0, || async { error::delete("EE_err_m1").await.unwrap() });
    for x in ["err_m0", "err_m1"] {
        drop_bdev(x);
    }
}

#[test]
fn unmap_reads_back_zeros_and_io_types_are_truthful() {
    setup();
    for (level, strip) in [(Level::Raid0, 8), (Level::Concat, 8), (Level::Raid1, 0)] {
        let tag = format!("um_{}", level.name());
        let m = mallocs(&format!("{tag}_m"), 2, 8192, 512);
        let refs: Vec<&str> = m.iter().map(String::as_str).collect();
        let r = format!("{tag}_r");
        create(params(&r, level, strip, &refs, false)).unwrap();
        let b = bdev::get(&r).unwrap();
        for ty in [
            IoType::Read,
            IoType::Write,
            IoType::Flush,
            IoType::Unmap,
            IoType::Reset,
        ] {
            assert!(b.io_type_supported(ty), "{tag}: {ty:?}");
        }
        let data = vec![0xa5u8; 256 * 1024];
        write(&r, 0, &data);
        let (st, _) = io(&r, IoType::Unmap, 16, None, 200);
        assert_eq!(st, IoStatus::Success);
        let back = read(&r, 0, data.len());
        assert!(
            back[16 * 512..216 * 512].iter().all(|&x| x == 0),
            "{tag}: unmapped reads zeros"
        );
        assert!(back[..16 * 512].iter().all(|&x| x == 0xa5), "{tag}");
        assert!(back[216 * 512..].iter().all(|&x| x == 0xa5), "{tag}");
        let (st, _) = io(&r, IoType::Flush, 0, None, b.num_blocks());
        assert_eq!(st, IoStatus::Success);
        let (st, _) = io(&r, IoType::Reset, 0, None, 0);
        assert_eq!(st, IoStatus::Success, "{tag}: reset");
        let (st, _) = io(&r, IoType::WriteZeroes, 300, None, 100);
        assert_eq!(st, IoStatus::Success);
        assert!(read(&r, 300, 100 * 512).iter().all(|&x| x == 0));
        delete(&r).unwrap();
        for x in &m {
            drop_bdev(x);
        }
    }
}

#[test]
fn refusals_have_spdks_codes_and_leave_nothing_behind() {
    setup();
    malloc::create("ref_a", 8192, 512, None).unwrap();
    malloc::create("ref_b", 8192, 512, None).unwrap();
    malloc::create("ref_4k", 1024, 4096, None).unwrap();
    let e = create(params(
        "ref_r",
        Level::Raid1,
        64,
        &["ref_a", "ref_b"],
        false,
    ))
    .unwrap_err();
    assert_eq!(e.errno(), -22, "raid1 with a strip: {e}");
    let e = create(params(
        "ref_r",
        Level::Raid0,
        63,
        &["ref_a", "ref_b"],
        false,
    ))
    .unwrap_err();
    assert_eq!(e.errno(), -22, "strip not a power of two: {e}");
    let e = create(params("ref_r", Level::Raid1, 0, &["ref_a"], false)).unwrap_err();
    assert_eq!(e.errno(), -22, "raid1 of one: {e}");
    let e = create(params(
        "ref_r",
        Level::Raid0,
        64,
        &["ref_a", "ref_4k"],
        false,
    ))
    .unwrap_err();
    assert!(matches!(e, RaidError::BlockSize { .. }), "{e}");
    assert_eq!(e.errno(), -22);
    assert_eq!(state("ref_r"), "gone");
    assert_eq!(
        bdev::get("ref_a").unwrap().claimed_by(),
        None,
        "released after a refusal"
    );
    create(params(
        "ref_r",
        Level::Raid0,
        64,
        &["ref_a", "ref_b"],
        false,
    ))
    .unwrap();
    let e = create(params("ref_r", Level::Raid0, 64, &["ref_4k"], false)).unwrap_err();
    assert_eq!(e.errno(), -17, "the name is taken: {e}");
    let e = create(params("ref_r2", Level::Raid0, 64, &["ref_a"], false)).unwrap_err();
    assert_eq!(e.errno(), -1, "a member of another RAID: {e}");
    let e = delete("nope").unwrap_err();
    assert_eq!(e.errno(), -19);
    // save_config: the call that re-creates it (not for superblock RAIDs).
    let calls = bdev::config_calls();
    let c = calls
        .iter()
        .find(|c| c["method"] == "bdev_raid_create" && c["params"]["name"] == "ref_r")
        .unwrap();
    assert_eq!(c["params"]["raid_level"], "raid0");
    assert_eq!(c["params"]["strip_size_kb"], 64);
    assert_eq!(
        c["params"]["base_bdevs"],
        serde_json::json!(["ref_a", "ref_b"])
    );
    delete("ref_r").unwrap();
    for x in ["ref_a", "ref_b", "ref_4k"] {
        drop_bdev(x);
    }
    let _ = Duration::ZERO;
}

#[test]
fn a_raid1_grows_by_a_member_in_sync_as_longhorn_grows_it() {
    setup();
    let m = mallocs("gr_m", 3, 8192, 512);
    create(params("gr_r", Level::Raid1, 0, &["gr_m0", "gr_m1"], true)).unwrap();
    let data = Rng(31).bytes(32 * 1024);
    write("gr_r", 0, &data);
    let grow = |raid: &str, base: &str| {
        let (raid, base) = (raid.to_owned(), base.to_owned());
        on(0, move || async move {
            raid::grow_base_bdev(&raid, &base).await
        })
    };
    grow("gr_r", "gr_m2").unwrap();
    assert_eq!(counts("gr_r"), (3, 3, 3));
    assert!(info("gr_r").unwrap().get("process").is_none(), "no rebuild");
    // Already a member: a success, nothing changes.
    grow("gr_r", "gr_m2").unwrap();
    assert_eq!(counts("gr_r"), (3, 3, 3));
    // New writes reach the new member too; the superblock counts it.
    let more = Rng(32).bytes(16 * 1024);
    write("gr_r", 512, &more);
    let sb = superblock_of("gr_m0");
    assert_eq!(sb.num_base_bdevs, 3);
    assert!(
        sb.members
            .iter()
            .all(|x| x.state == MemberState::Configured)
    );
    assert_eq!(superblock_of("gr_m2"), sb);
    delete("gr_r").unwrap();
    assert_eq!(read("gr_m2", 2048 + 512, more.len()), more);
    // Only online raid1s grow.
    malloc::create("gr_x0", 8192, 512, None).unwrap();
    malloc::create("gr_x1", 8192, 512, None).unwrap();
    create(params("gr_r0", Level::Raid0, 64, &["gr_x0"], false)).unwrap();
    let e = grow("gr_r0", "gr_x1").unwrap_err();
    assert_eq!(e.errno(), -1, "{e}");
    delete("gr_r0").unwrap();
    for x in m.iter().map(String::as_str).chain(["gr_x0", "gr_x1"]) {
        drop_bdev(x);
    }
}

#[test]
fn a_raid_grows_when_all_its_members_grew() {
    setup();
    use bdev::modules::null;
    for (level, strip) in [(Level::Raid0, 64), (Level::Raid1, 0)] {
        let tag = format!("rs_{}", level.name());
        let names: Vec<String> = (0..2).map(|i| format!("{tag}_n{i}")).collect();
        for n in &names {
            null::create(n, 16384, 512, None, null::ReadFill::Zeroes).unwrap();
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = format!("{tag}_r");
        create(params(&r, level, strip, &refs, true)).unwrap();
        let before = bdev::get(&r).unwrap().num_blocks();
        null::resize(&names[0], 16).unwrap();
        wait_for_examine();
        assert_eq!(
            bdev::get(&r).unwrap().num_blocks(),
            before,
            "{tag}: one member grew"
        );
        null::resize(&names[1], 16).unwrap();
        common::wait_until("the RAID to grow", {
            let r = r.clone();
            move || {
                let Some(b) = bdev::get(&r) else {
                    panic!("{r} is gone: {:?}", raid::list(None));
                };
                b.num_blocks() > before
            }
        });
        let per = 32768 - 2048;
        let want = match level {
            Level::Raid1 => per,
            _ => per / 128 * 128 * 2,
        };
        assert_eq!(bdev::get(&r).unwrap().num_blocks(), want, "{tag}");
        // (Null members keep nothing: the superblock written is not read
        // back here; the report shows the new data areas.)
        let per_member = if level == Level::Raid1 {
            want
        } else {
            want / 2
        };
        for m in info(&r).unwrap()["base_bdevs_list"].as_array().unwrap() {
            assert_eq!(m["data_size"], per_member, "{tag}");
        }
        delete(&r).unwrap();
        for n in &names {
            drop_bdev(n);
        }
    }
}

#[test]
fn a_returning_member_is_rebuilt_and_clear_sb_forgets_the_raid() {
    setup();
    let m = mallocs("ret_m", 2, 8192, 512);
    let pts: Vec<String> = (0..2).map(|i| format!("ret_pt{i}")).collect();
    for i in 0..2 {
        passthru::create(&m[i], &pts[i], Some(&pt_uuid(0x60, i))).unwrap();
    }
    create(params(
        "ret_r",
        Level::Raid1,
        0,
        &["ret_pt0", "ret_pt1"],
        true,
    ))
    .unwrap();
    on(0, || async { passthru::delete("ret_pt1").await.unwrap() });
    // Written while the member is out: it must get this on its return.
    let data = Rng(41).bytes(64 * 1024);
    write("ret_r", 100, &data);
    passthru::create(&m[1], "ret_pt1", Some(&pt_uuid(0x60, 1))).unwrap();
    wait_for_examine();
    common::wait_until("the returning member's rebuild", || {
        let r = info("ret_r").unwrap();
        r.get("process").is_none() && r["num_base_bdevs_discovered"] == 2
    });
    assert_eq!(read("ret_pt1", 2048 + 100, data.len()), data, "rebuilt");
    // Deleted with clear_sb: the members no longer bring it back.
    on(0, || async { raid::delete("ret_r", true).await.unwrap() });
    for p in &pts {
        drop_bdev(p);
    }
    for i in 0..2 {
        passthru::create(&m[i], &pts[i], Some(&pt_uuid(0x60, i))).unwrap();
    }
    wait_for_examine();
    assert_eq!(state("ret_r"), "gone");
    for p in pts.iter().chain(m.iter()) {
        drop_bdev(p);
    }
}

/// A superblock naming the member `uuid` in slot 0 of `n` slots, its data
/// area `size` blocks at `offset`.
fn crafted_sb(
    name: &str,
    uuid: &str,
    n: u8,
    offset: u64,
    size: u64,
) -> bdev::modules::raid::superblock::Superblock {
    use bdev::modules::raid::superblock::{Member, RaidState, Superblock};
    let u = |s: &str| {
        let h: String = s.chars().filter(|c| *c != '-').collect();
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    };
    Superblock {
        version_minor: 0,
        flags: 0,
        uuid: [0x3c; 16],
        name: name.to_owned(),
        raid_size: size,
        block_size: 512,
        level: Level::Raid1,
        strip_size: 0,
        state: RaidState::Online,
        seq_number: 1,
        num_base_bdevs: n,
        members: (0..n)
            .map(|i| Member {
                uuid: if i == 0 { u(uuid) } else { [i; 16] },
                data_offset: offset,
                data_size: size,
                state: MemberState::Configured,
                flags: 0,
                slot: i,
            })
            .collect(),
    }
}

#[test]
fn superblocks_that_do_not_fit_are_refused_without_harm() {
    setup();
    for (k, (n, offset, size)) in [
        (40u8, 2048u64, 1000u64), // more members than one fan-out reaches
        (2, 2048, 1 << 40),       // a data area past the member's end
        (2, 0, 1000),             // data over the superblock itself
        (2, u64::MAX - 5, 100),   // an offset that overflows
    ]
    .into_iter()
    .enumerate()
    {
        let store = format!("bad_sb_s{k}");
        malloc::create(&store, 8192, 512, None).unwrap();
        let uuid = pt_uuid(0x70, k);
        let sb = crafted_sb(&format!("bad_r{k}"), &uuid, n, offset, size);
        let bytes = sb.encode().unwrap();
        write(
            &store,
            0,
            &[bytes.clone(), vec![0; 4096 - bytes.len() % 4096]].concat(),
        );
        passthru::create(&store, &format!("bad_pt{k}"), Some(&uuid)).unwrap();
        wait_for_examine();
        let r = info(&format!("bad_r{k}"));
        assert!(
            r.as_ref()
                .is_none_or(|r| r["num_base_bdevs_discovered"] == 0),
            "case {k}: {r:?}"
        );
        assert_eq!(
            bdev::get(&format!("bad_pt{k}")).unwrap().claimed_by(),
            None,
            "case {k}"
        );
        drop_bdev(&format!("bad_pt{k}"));
        drop_bdev(&store);
    }
}
