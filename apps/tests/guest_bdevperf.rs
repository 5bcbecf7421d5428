//! Guest tier: `bdevperf` on an NVMe bdev of a QEMU controller bound to
//! vfio-pci, driven over its JSON-RPC socket (`-r`) by SPDK's own client
//! (`spdk-rpc`, brought into the guest by ci/guest-python): a verify
//! workload at queue depth 128 runs while `bdev_nvme_reset_controller`
//! resets the controller five times. With the default retry options
//! (`bdev_retry_count` 3) no I/O fails, none completes twice, and every
//! read checks against what was written. Run by `ci/guest-tier`
//! (`#[ignore]`d on the host).

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::guest_spdk_rpc as spdk_rpc;
use common::{Running, first_vfio_controller};
use serde_json::Value;

fn num(j: &Value, k: &str) -> f64 {
    j[k].as_f64().unwrap_or_else(|| panic!("{k} in {j}"))
}

#[test]
#[ignore = "guest tier: needs an NVMe controller bound to vfio-pci (ci/guest-tier)"]
fn verify_at_depth_128_through_five_controller_resets() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("bdevperf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("nvme.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems": [{{"subsystem": "bdev", "config": [
                {{"method": "bdev_nvme_attach_controller",
                  "params": {{"name": "Nvme0", "trtype": "PCIe", "traddr": "{traddr}"}}}}]}}]}}"#
        ),
    )
    .unwrap();
    let sock = dir.join("bdevperf.sock");
    // The client, unpacked (and its first start paid) before the run.
    let help = spdk_rpc(&sock, &["--help"]);
    assert!(help.contains("bdev_nvme_reset_controller"), "{help}");
    let child = Command::new("bdevperf")
        .args(["--json", cfg.to_str().unwrap()])
        .args([
            "-T",
            "Nvme0n1",
            "-q",
            "128",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "120",
            "-s",
            "256",
            "--json-report",
            "-r",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bdevperf on PATH (ci/guest-tier copies the workspace's binaries)");
    let child = Running::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "bdevperf did not listen on -r");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the workload fill the queue, then five resets a second apart.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..5 {
        let t = Instant::now();
        // spdk-rpc prints nothing for this method's `true`; an error
        // answer makes it exit non-zero (spdk_rpc fails the test then).
        let out = spdk_rpc(&sock, &["bdev_nvme_reset_controller", "Nvme0"]);
        assert_eq!(out.trim(), "", "reset {i}");
        println!("reset {i} (spdk-rpc): {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    let ctrlrs: Value =
        serde_json::from_str(&spdk_rpc(&sock, &["bdev_nvme_get_controllers"])).unwrap();
    println!("controllers: {ctrlrs}");
    assert_eq!(ctrlrs[0]["ctrlrs"][0]["state"], "enabled", "{ctrlrs}");
    // Some I/O after the last reset, then the run ends (-t is only a bound).
    std::thread::sleep(Duration::from_millis(1000));
    spdk_rpc(&sock, &["spdk_kill_instance", "SIGTERM"]);
    let o = child.finish();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stderr}");
    println!("{stdout}");
    assert_eq!(o.status.code(), Some(0), "bdevperf failed");
    let doc: Value = serde_json::from_str(&stdout).expect("one JSON report on stdout");
    let t = &doc["total"];
    assert_eq!(num(t, "errors"), 0.0, "no I/O failed");
    assert_eq!(num(t, "verify_mismatches"), 0.0, "every read as written");
    assert!(num(t, "verified_reads") > 1000.0, "{t}");
}

/// Runs `bdevperf --json CFG -T target -q 32 -o 4096 -w WORKLOAD -t SECS`
/// with a JSON report; its total IOPS (no I/O may fail).
fn bdevperf_iops(cfg: &std::path::Path, target: &str, workload: &str, secs: u32) -> f64 {
    let o = Command::new("bdevperf")
        .args(["--json", cfg.to_str().unwrap(), "-T", target])
        .args([
            "-q",
            "32",
            "-o",
            "4096",
            "-w",
            workload,
            "-t",
            &secs.to_string(),
        ])
        .args(["-s", "256", "--json-report"])
        .output()
        .expect("bdevperf on PATH (ci/guest-tier copies the workspace's binaries)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "bdevperf {target} {workload}: {}{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).expect("one JSON report on stdout");
    assert_eq!(num(&doc["total"], "errors"), 0.0, "{target} {workload}");
    num(&doc["total"], "iops")
}

/// Guest tier: 4 KiB random reads and writes at depth 32 on the NVMe bdev,
/// then on a thick logical volume over it (an lvstore made on it by the
/// config, found again by examine in the next runs, deleted at the end so
/// the namespace is left without one): the figures docs/BENCHMARKS.md
/// records (TCG: relative, not absolute).
#[test]
#[ignore = "guest tier: needs an NVMe controller bound to vfio-pci (ci/guest-tier)"]
fn with_a_logical_volume_4k_random_io_at_depth_32() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("bdevperf-lvol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let attach = format!(
        r#"{{"method": "bdev_nvme_attach_controller",
             "params": {{"name": "Nvme0", "trtype": "PCIe", "traddr": "{traddr}"}}}},
           {{"method": "bdev_wait_for_examine"}}"#
    );
    let cfg = |name: &str, more: &str| {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{attach}{more}]}}]}}"#),
        )
        .unwrap();
        p
    };
    let raw = cfg("raw.json", "");
    let make = cfg(
        "make.json",
        r#", {"method": "bdev_lvol_create_lvstore",
              "params": {"bdev_name": "Nvme0n1", "lvs_name": "perf_lvs", "cluster_sz": 4194304}},
           {"method": "bdev_lvol_create",
              "params": {"lvs_name": "perf_lvs", "lvol_name": "lvol0", "size_in_mib": 64}}"#,
    );
    let drop = cfg(
        "drop.json",
        r#", {"method": "bdev_lvol_delete_lvstore", "params": {"lvs_name": "perf_lvs"}}"#,
    );
    let r_raw = bdevperf_iops(&raw, "Nvme0n1", "randread", 5);
    let w_raw = bdevperf_iops(&raw, "Nvme0n1", "randwrite", 5);
    // The volume is thick: its clusters are there from the start.
    let r_lvol = bdevperf_iops(&make, "perf_lvs/lvol0", "randread", 5);
    let w_lvol = bdevperf_iops(&raw, "perf_lvs/lvol0", "randwrite", 5);
    bdevperf_iops(&drop, "Nvme0n1", "randread", 1);
    println!(
        "guest bdevperf 4 KiB QD32: randread Nvme0n1 {r_raw:.0} IOPS, lvol {r_lvol:.0} IOPS ({:.2}x)",
        r_lvol / r_raw
    );
    println!(
        "guest bdevperf 4 KiB QD32: randwrite Nvme0n1 {w_raw:.0} IOPS, lvol {w_lvol:.0} IOPS ({:.2}x)",
        w_lvol / w_raw
    );
    assert!(r_lvol > 0.0 && w_lvol > 0.0);
}
