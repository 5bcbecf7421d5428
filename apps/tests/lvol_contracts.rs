//! The three contracts upstream SPDK breaks, end to end through SPDK's
//! client (`spdk-rpc`) and NBD exports (QEMU's `qemu-io`, `qemu-img`):
//!
//! 1. FLUSH on a volume succeeds and reaches the base (an error bdev
//!    under the store fails exactly the FLUSH it is told to fail);
//! 2. a thin volume's new clusters read zeros: a file written into a fresh
//!    thin volume skipping its all-zero blocks (over a base full of old
//!    bytes) reads back the same through the export, after the export
//!    stops, through a snapshot and the volume, and after a restart;
//! 3. deleting a volume whose blob is busy (a snapshot checksum running
//!    on it) fails with -16 and leaves it whole — listed, readable, there
//!    after a restart; deleted once the checksum is done, it stays so
//!    after a restart.

mod common;

use std::process::Command;

use common::{Appliance, TempDir, expect_error, qemu_io, random, tool};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn start(dir: &TempDir, name: &str, extra: &[&str]) -> Appliance {
    let mut args = vec!["-m", "0x3", "-s", "512"];
    args.extend_from_slice(extra);
    Appliance::start(dir, name, &args)
}

fn export(a: &Appliance, dir: &TempDir, bdev: &str, tag: &str) -> (String, String) {
    let sock = dir.join(&format!("{tag}.nbd")).to_str().unwrap().to_owned();
    // The export is named after the bdev's name (an alias resolves).
    let b = a.json(&["bdev_get_bdevs", "-b", bdev]);
    let bdev = b[0]["name"].as_str().unwrap().to_owned();
    let bdev = bdev.as_str();
    a.ok(&["nbd_start_disk", bdev, &sock]);
    (format!("nbd+unix:///{bdev}?socket={sock}"), sock)
}

/// The whole export, read by `qemu-img convert` into a file.
fn read_all(dir: &TempDir, uri: &str) -> Vec<u8> {
    let out = dir.join("out.raw");
    let _ = std::fs::remove_file(&out);
    let o = Command::new(tool("qemu-img", "QEMU_IMG"))
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&out).unwrap()
}

/// FNV-1a: the test's checksum of what an export reads.
fn sum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn flush_on_a_volume_reaches_the_base() {
    tool("spdk-rpc", "SPDK_RPC");
    tool("qemu-io", "QEMU_IO");
    let dir = TempDir::new("lvflush");
    let a = start(&dir, "a", &[]);
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    a.ok(&["bdev_aio_create", img.to_str().unwrap(), "aio0", "512"]);
    a.ok(&["bdev_error_create", "aio0"]);
    a.ok(&[
        "bdev_lvol_create_lvstore",
        "EE_aio0",
        "lvs",
        "-c",
        "1048576",
    ]);
    let v = a
        .ok(&["bdev_lvol_create", "-l", "lvs", "-t", "vol", "16"])
        .trim()
        .to_owned();
    let b = a.json(&["bdev_get_bdevs", "-b", &v]);
    assert_eq!(b[0]["supported_io_types"]["flush"], true, "{b}");
    let (uri, sock) = export(&a, &dir, &v, "v");
    qemu_io(&uri, &["write -P 0x5a 0 1M", "flush"]);
    // The base fails the next FLUSH: the volume's FLUSH must be that one.
    a.ok(&[
        "bdev_error_inject_error",
        "EE_aio0",
        "flush",
        "failure",
        "-n",
        "1",
    ]);
    let o = Command::new(tool("qemu-io", "QEMU_IO"))
        .args(["-f", "raw", &uri, "-c", "flush"])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() || out.contains("failed"),
        "the base's failure must show: {out}"
    );
    // Spent: FLUSH succeeds again, through to the base.
    qemu_io(&uri, &["flush", "read -P 0x5a 0 1M"]);
    a.ok(&["nbd_stop_disk", &sock]);
}

#[test]
fn new_thin_clusters_read_zeros_through_export_snapshot_and_restart() {
    tool("spdk-rpc", "SPDK_RPC");
    tool("qemu-img", "QEMU_IMG");
    let dir = TempDir::new("lvzero");
    // The base holds old bytes everywhere; the store does not clear it.
    let img = dir.join("base.img");
    std::fs::write(&img, random((128 * MIB) as usize, 99)).unwrap();
    let mut a = start(&dir, "a", &[]);
    a.ok(&["bdev_aio_create", img.to_str().unwrap(), "aio0", "512"]);
    a.ok(&[
        "bdev_lvol_create_lvstore",
        "aio0",
        "lvs",
        "-c",
        "1048576",
        "--clear-method",
        "none",
    ]);
    let v = a
        .ok(&["bdev_lvol_create", "-l", "lvs", "-t", "vol", "32"])
        .trim()
        .to_owned();
    // The file: random 4 KiB blocks with runs of zero blocks between, so
    // most clusters are partly written.
    let mut data = random((32 * MIB) as usize, 7);
    for (i, blk) in data.chunks_mut(4096).enumerate() {
        if i % 5 != 0 && i % 7 != 0 {
            blk.fill(0);
        }
    }
    for c in [3usize, 17, 30] {
        data[c * MIB as usize..(c + 1) * MIB as usize].fill(0);
    }
    let file = dir.join("file.raw");
    std::fs::write(&file, &data).unwrap();
    let want = sum(&data);
    let (uri, sock) = export(&a, &dir, &v, "v1");
    // Zero blocks skipped: --target-is-zero writes only the data.
    let o = Command::new(tool("qemu-img", "QEMU_IMG"))
        .args([
            "convert",
            "-n",
            "--target-is-zero",
            "-S",
            "4k",
            "-f",
            "raw",
            "-O",
            "raw",
        ])
        .arg(&file)
        .arg(&uri)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lv = a.json(&["bdev_lvol_get_lvols", "-l", "lvs"]);
    let allocated = lv[0]["num_allocated_clusters"].as_u64().unwrap();
    assert!(allocated > 0 && allocated < 32, "{lv}");
    assert_eq!(sum(&read_all(&dir, &uri)), want, "through the export");
    a.ok(&["nbd_stop_disk", &sock]);
    let (uri, sock) = export(&a, &dir, &v, "v2");
    assert_eq!(sum(&read_all(&dir, &uri)), want, "after the export stopped");
    a.ok(&["nbd_stop_disk", &sock]);
    let s = a
        .ok(&["bdev_lvol_snapshot", "lvs/vol", "snap"])
        .trim()
        .to_owned();
    for (bdev, tag) in [(&s, "s"), (&v, "v3")] {
        let (uri, sock) = export(&a, &dir, bdev, tag);
        assert_eq!(sum(&read_all(&dir, &uri)), want, "{tag} after the snapshot");
        a.ok(&["nbd_stop_disk", &sock]);
    }
    // Restart from the configuration it saved.
    let cfg = a.json(&["save_config"]);
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert!(a.signal_and_wait(libc::SIGTERM).success());
    let a = start(&dir, "b", &["--json", cfg_path.to_str().unwrap()]);
    a.ok(&["bdev_wait_for_examine"]);
    for (bdev, tag) in [("lvs/snap", "s2"), ("lvs/vol", "v4")] {
        let (uri, sock) = export(&a, &dir, bdev, tag);
        assert_eq!(sum(&read_all(&dir, &uri)), want, "{bdev} after the restart");
        a.ok(&["nbd_stop_disk", &sock]);
    }
    // And the store checks clean.
    let c = a.json(&["bdev_lvol_get_lvstores", "-l", "lvs"]);
    assert_eq!(c[0]["base_bdev"], "aio0");
}

fn lvols(a: &Appliance) -> Vec<String> {
    let mut v: Vec<String> = a
        .json(&["bdev_lvol_get_lvols"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["alias"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn deleting_a_busy_volume_fails_and_leaves_it_whole() {
    tool("spdk-rpc", "SPDK_RPC");
    tool("qemu-io", "QEMU_IO");
    let dir = TempDir::new("lvbusy");
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let img = img.to_str().unwrap().to_owned();
    let mut a = start(&dir, "a", &[]);
    a.ok(&["bdev_aio_create", &img, "aio0", "512"]);
    a.ok(&["bdev_lvol_create_lvstore", "aio0", "lvs", "-c", "1048576"]);
    let v = a
        .ok(&["bdev_lvol_create", "-l", "lvs", "vol", "48"])
        .trim()
        .to_owned();
    let (uri, sock) = export(&a, &dir, &v, "v");
    qemu_io(&uri, &["write -P 0x3c 0 48M"]);
    a.ok(&["nbd_stop_disk", &sock]);
    let s = a
        .ok(&["bdev_lvol_snapshot", "lvs/vol", "snap"])
        .trim()
        .to_owned();
    // Reads of the base at 8 MiB/s: the checksum of 48 MiB takes seconds.
    a.call(
        "bdev_set_qos_limit",
        json!({"name": "aio0", "r_mbytes_per_sec": 8}),
    )
    .unwrap();
    let sock_path = a.sock.clone();
    let s2 = s.clone();
    let sum = std::thread::spawn(move || {
        let mut c = common::RpcConn::connect(&sock_path);
        c.call("bdev_lvol_register_snapshot_checksum", json!({"name": s2}))
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!sum.is_finished(), "the checksum should still run");
    expect_error(
        &a,
        &["bdev_lvol_delete", &s],
        -16,
        "Device or resource busy",
    );
    expect_error(
        &a,
        &["bdev_lvol_delete", "lvs/snap"],
        -16,
        "Device or resource busy",
    );
    assert_eq!(lvols(&a), ["lvs/snap", "lvs/vol"]);
    assert_eq!(sum.join().unwrap(), Ok(Value::Bool(true)));
    a.call(
        "bdev_set_qos_limit",
        json!({"name": "aio0", "r_mbytes_per_sec": 0}),
    )
    .unwrap();
    let c = a
        .call("bdev_lvol_get_snapshot_checksum", json!({"name": s}))
        .unwrap();
    assert!(c["checksum"].as_u64().is_some(), "{c}");
    let (uri, sock) = export(&a, &dir, &s, "s");
    qemu_io(&uri, &["read -P 0x3c 0 48M"]);
    a.ok(&["nbd_stop_disk", &sock]);
    // Still there after a restart, with its checksum.
    assert!(a.signal_and_wait(libc::SIGTERM).success());
    let mut a = start(&dir, "b", &[]);
    a.ok(&["bdev_aio_create", &img, "aio0", "512"]);
    a.ok(&["bdev_wait_for_examine"]);
    assert_eq!(lvols(&a), ["lvs/snap", "lvs/vol"]);
    assert_eq!(
        a.call(
            "bdev_lvol_get_snapshot_checksum",
            json!({"name": "lvs/snap"})
        )
        .unwrap(),
        c
    );
    // Not busy now: deleted (merged into its clone), and gone for good.
    a.ok(&["bdev_lvol_delete", "lvs/snap"]);
    assert_eq!(lvols(&a), ["lvs/vol"]);
    assert!(a.signal_and_wait(libc::SIGTERM).success());
    let a = start(&dir, "c", &[]);
    a.ok(&["bdev_aio_create", &img, "aio0", "512"]);
    a.ok(&["bdev_wait_for_examine"]);
    assert_eq!(lvols(&a), ["lvs/vol"]);
    let (uri, sock) = export(&a, &dir, "lvs/vol", "v2");
    qemu_io(&uri, &["read -P 0x3c 0 48M"]);
    a.ok(&["nbd_stop_disk", &sock]);
}
