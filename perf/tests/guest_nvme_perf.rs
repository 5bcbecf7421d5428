//! Guest tier: the `nvme-perf` binary (copied onto the guest's PATH by
//! `ci/guest-tier`) against QEMU's emulated controllers through VFIO:
//! verified mixed I/O on every namespace from two cores, PRP-list-sized
//! sequential reads, and usage errors that only the devices reveal.
//! `#[ignore]`d on the host.

use std::process::{Command, Output};

use perf::json::Json;

fn nvme_perf(args: &[&str]) -> Output {
    let o = Command::new("nvme-perf")
        .args(args)
        .output()
        .expect("nvme-perf on PATH (ci/guest-tier copies the workspace's binaries)");
    eprintln!(
        "$ nvme-perf {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(o: &Output) -> Json {
    Json::parse(&String::from_utf8_lossy(&o.stdout)).expect("one JSON document on stdout")
}

fn num(j: &Json, k: &str) -> f64 {
    j.get(k)
        .and_then(Json::as_f64)
        .unwrap_or_else(|| panic!("{k} in {j}"))
}

/// The standard guest: controller 0 with namespaces of 512- and 4096-byte
/// blocks, controller 1 with one of 4096-byte blocks.
fn namespaces() -> usize {
    std::env::var("GUEST_NVME_LAYOUT")
        .expect("GUEST_NVME_LAYOUT from the harness")
        .split_whitespace()
        .count()
}

#[test]
#[ignore = "guest tier: needs QEMU NVMe controllers bound to vfio-pci (ci/guest-tier)"]
fn verified_mixed_io_on_every_namespace_from_two_cores() {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let mask = if cores == 2 { "0x3" } else { "0x1" };
    let o = nvme_perf(&[
        "-q", "16", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "-c", mask, "--verify",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let doc = json(&o);
    assert_eq!(doc.get("status").and_then(Json::as_str), Some("ok"));
    let workers = doc.get("workers").and_then(Json::as_array).unwrap();
    assert_eq!(
        workers.len(),
        cores * namespaces(),
        "one queue pair per core per namespace"
    );
    for w in workers {
        assert!(num(w, "ios") > 0.0, "{w}");
        assert!(num(w, "verified_reads") > 0.0, "{w}");
    }
    let t = doc.get("total").unwrap();
    assert_eq!(num(t, "errors"), 0.0);
    assert_eq!(num(t, "verify_mismatches"), 0.0);
    let reads = num(t, "reads") / num(t, "ios");
    assert!((0.4..0.6).contains(&reads), "read share {reads}");
}

#[test]
#[ignore = "guest tier: needs QEMU NVMe controllers bound to vfio-pci (ci/guest-tier)"]
fn sequential_128k_reads_and_the_table() {
    // 128 KiB = 32 pages: every command carries a PRP list.
    let o = nvme_perf(&["-q", "8", "-o", "128k", "-w", "read", "-t", "1", "-a", "1"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(out.contains("Latency (us)"));
    let rows = out.lines().filter(|l| l.starts_with("0000:")).count();
    assert_eq!(rows, namespaces(), "{out}");
    assert!(out.contains("errors: 0"), "{out}");
}

#[test]
#[ignore = "guest tier: needs QEMU NVMe controllers bound to vfio-pci (ci/guest-tier)"]
fn usage_errors_found_on_the_devices() {
    // 512-byte I/Os do not fit the namespaces with 4096-byte blocks.
    let o = nvme_perf(&["-q", "4", "-o", "512", "-w", "randread", "-t", "1"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.lines()
            .any(|l| l.starts_with("nvme-perf: -o '512': not a multiple of")),
        "{e}"
    );
    // A namespace that does not exist.
    let o = nvme_perf(&[
        "-q", "4", "-o", "4096", "-w", "randread", "-t", "1", "-n", "9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A controller that is not there: one line, exit 1.
    let o = nvme_perf(&[
        "-q",
        "4",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "-r",
        "trtype:PCIe traddr:0000:00:1f.7",
    ]);
    assert_eq!(o.status.code(), Some(1));
}
