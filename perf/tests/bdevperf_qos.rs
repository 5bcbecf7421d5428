//! QoS and latency histograms under load from two cores, driven by SPDK's
//! own client (`spdk-rpc`) through bdevperf's `-r` socket: 1,000 I/O per
//! second on a malloc bdev hold within 5 % over 5 s while a job on each of
//! two cores reads at depth 16; a new limit (2,500, rounded up to 3,000)
//! takes effect at once; a read byte limit holds reads to its MiB/s; a
//! write limit leaves reads alone; removing the limits lets the I/O run
//! free. The histogram of those reads (opc read) shows the time they
//! waited for QoS, and `bdev_get_bdevs` reports the limits.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::{Bdevperf, ok, rpc};
use serde_json::Value;

/// (read ops, server time in seconds) from bdev_get_iostat.
fn reads_at(sock: &Path) -> (u64, f64) {
    let v: Value =
        serde_json::from_str(&ok(sock, &["bdev_get_iostat", "--names", "Malloc0"])).unwrap();
    let ops = v["bdevs"][0]["num_read_ops"].as_u64().unwrap();
    let t = v["ticks"].as_u64().unwrap() as f64 / v["tick_rate"].as_u64().unwrap() as f64;
    (ops, t)
}

/// Read rate over `secs` seconds of server time.
fn rate(sock: &Path, secs: f64) -> f64 {
    let (o0, t0) = reads_at(sock);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (o1, t1) = reads_at(sock);
    let r = (o1 - o0) as f64 / (t1 - t0);
    eprintln!("{} reads in {:.3} s: {r:.1}/s", o1 - o0, t1 - t0);
    r
}

fn limits(sock: &Path) -> Value {
    let v: Value = serde_json::from_str(&ok(sock, &["bdev_get_bdevs", "-b", "Malloc0"])).unwrap();
    v[0]["assigned_rate_limits"].clone()
}

#[test]
fn qos_limits_hold_under_load_from_two_cores() {
    common::spdk_rpc_path();
    let dir = std::env::temp_dir().join(format!("bdevperf-qos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("rpc.sock");
    let bdevperf = Bdevperf::start(
        &[
            "--malloc",
            "64",
            "-q",
            "16",
            "-o",
            "4k",
            "-w",
            "randread",
            "-t",
            "60",
            "-m",
            "0x3",
            "--no-huge",
        ],
        &sock,
    );
    // Errors as SPDK's.
    let e = rpc(
        &sock,
        &["bdev_set_qos_limit", "nope", "--rw-ios-per-sec", "1000"],
    )
    .unwrap_err();
    assert!(e.contains("No such device"), "{e}");
    let e = rpc(&sock, &["bdev_set_qos_limit", "Malloc0"]).unwrap_err();
    assert!(e.contains("No rate limits specified"), "{e}");
    assert_eq!(limits(&sock)["rw_ios_per_sec"], 0);

    // 1000 I/O per second, from two cores together.
    ok(
        &sock,
        &["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "1000"],
    );
    ok(
        &sock,
        &[
            "bdev_enable_histogram",
            "Malloc0",
            "--histogram",
            "--opc",
            "read",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = rate(&sock, 5.0);
    assert!((950.0..=1050.0).contains(&r), "1000 IOPS limit: {r:.0}");
    assert_eq!(limits(&sock)["rw_ios_per_sec"], 1000);

    // The reads waited for QoS: two jobs of 16 at 1000 per second spend
    // about 32 ms each; the histogram's median says so.
    let h: Value = serde_json::from_str(&ok(&sock, &["bdev_get_histogram", "Malloc0"])).unwrap();
    assert_eq!(h["bucket_shift"], 7);
    let tsc = h["tsc_rate"].as_u64().unwrap() as f64;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(h["histogram"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len(), 58 * 128 * 8);
    let counts: Vec<u64> = raw
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let total: u64 = counts.iter().sum();
    assert!(total >= 4000, "reads in the histogram: {total}");
    let mut seen = 0;
    let mut median_us = 0.0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen * 2 >= total {
            let (r, j) = (i >> 7, (i & 127) as u64);
            let start = if r == 0 {
                j
            } else {
                (1u64 << (r + 6)) + (j << (r - 1))
            };
            median_us = start as f64 * 1e6 / tsc;
            break;
        }
    }
    eprintln!("median read latency {median_us:.0} us over {total} reads");
    assert!(
        (10_000.0..=100_000.0).contains(&median_us),
        "median read latency under a 1000 IOPS limit: {median_us:.0} us"
    );

    // Changed at run time: 2500 is rounded up to 3000, in force at once.
    ok(
        &sock,
        &["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "2500"],
    );
    assert_eq!(limits(&sock)["rw_ios_per_sec"], 3000);
    std::thread::sleep(Duration::from_millis(300));
    let r = rate(&sock, 3.0);
    assert!((2850.0..=3150.0).contains(&r), "3000 IOPS limit: {r:.0}");

    // A read byte limit: 8 MiB/s of 4 KiB reads is 2048 per second.
    ok(
        &sock,
        &[
            "bdev_set_qos_limit",
            "Malloc0",
            "--rw-ios-per-sec",
            "0",
            "--r-mbytes-per-sec",
            "8",
        ],
    );
    let l = limits(&sock);
    assert_eq!(
        (l["rw_ios_per_sec"].as_u64(), l["r_mbytes_per_sec"].as_u64()),
        (Some(0), Some(8))
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = rate(&sock, 3.0);
    assert!(
        (1945.0..=2150.0).contains(&r),
        "8 MiB/s of 4 KiB reads: {r:.0}"
    );

    // A write limit does not hold reads; no limit at all lets them run.
    ok(
        &sock,
        &[
            "bdev_set_qos_limit",
            "Malloc0",
            "--r-mbytes-per-sec",
            "0",
            "--w-mbytes-per-sec",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = rate(&sock, 1.0);
    assert!(r > 10_000.0, "reads under a write limit: {r:.0}");
    ok(
        &sock,
        &["bdev_set_qos_limit", "Malloc0", "--w-mbytes-per-sec", "0"],
    );
    assert_eq!(
        limits(&sock),
        serde_json::json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                           "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0})
    );

    // Histograms off: SPDK's answer to a read.
    ok(
        &sock,
        &["bdev_enable_histogram", "Malloc0", "--no-histogram"],
    );
    let e = rpc(&sock, &["bdev_get_histogram", "Malloc0"]).unwrap_err();
    assert!(e.contains("Bad address"), "{e}");

    ok(&sock, &["spdk_kill_instance", "SIGTERM"]);
    let o = bdevperf.finish();
    assert!(
        o.status.success(),
        "bdevperf: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
