//! Guest tier: `hugepage-setup` on QEMU's emulated NVMe controllers.
//!
//! Run inside the guest by `ci/guest-tier`, where the workspace's binaries
//! are on PATH and the controllers start on vfio-pci. Each test starts with
//! `reset` and ends with the controllers back on vfio-pci, as the guest
//! tests that run after it expect. Every bind is checked through sysfs, not
//! through the tool's own report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NVME_CLASS: &str = "0x010802";

/// The tool: the freshly built binary when it exists (host), else the one
/// on PATH (the guest's /guest/bin).
fn tool() -> Command {
    let built = Path::new(env!("CARGO_BIN_EXE_hugepage-setup"));
    if built.exists() {
        Command::new(built)
    } else {
        Command::new("hugepage-setup")
    }
}

/// Runs the tool; returns (exit code, stdout, stderr) after echoing them.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = tool()
        .args(args)
        .output()
        .expect("run hugepage-setup (is it on PATH?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .expect("hugepage-setup exited by a signal");
    println!(
        "$ hugepage-setup {} -> {code}\n{stdout}{stderr}",
        args.join(" ")
    );
    (code, stdout, stderr)
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Every NVMe controller's address, sorted.
fn controllers() -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir("/sys/bus/pci/devices")
        .expect("sysfs PCI devices")
        .map(|e| e.expect("sysfs entry").file_name().into_string().unwrap())
        .filter(|bdf| {
            read_trim(format!("/sys/bus/pci/devices/{bdf}/class")).as_deref() == Some(NVME_CLASS)
        })
        .collect();
    found.sort();
    let expected: usize = std::env::var("GUEST_NVME_CONTROLLERS")
        .expect("GUEST_NVME_CONTROLLERS is set by the guest harness")
        .parse()
        .expect("GUEST_NVME_CONTROLLERS is a number");
    assert_eq!(found.len(), expected, "NVMe controllers: {found:?}");
    found
}

fn driver(bdf: &str) -> Option<String> {
    fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

fn assert_all_on(ctrls: &[String], want: &str) {
    for bdf in ctrls {
        assert_eq!(driver(bdf).as_deref(), Some(want), "{bdf}");
    }
}

/// The visible NVMe disks in /sys/block.
fn nvme_disks() -> Vec<String> {
    let mut disks: Vec<String> = fs::read_dir("/sys/block")
        .expect("/sys/block")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("nvme"))
        .filter(|n| read_trim(format!("/sys/block/{n}/hidden")).as_deref() != Some("1"))
        .collect();
    disks.sort();
    disks
}

/// Waits (the kernel scans namespaces asynchronously, slowly under TCG)
/// until `disk` is in /sys/block and its /dev node exists.
fn wait_for_disk(disk: &str) {
    let start = Instant::now();
    while !(Path::new("/sys/block").join(disk).exists() && Path::new("/dev").join(disk).exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{disk} did not appear; disks: {:?}",
            nvme_disks()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every controller has at least one visible disk.
fn wait_for_disks(ctrls: &[String]) {
    let start = Instant::now();
    loop {
        let disks = nvme_disks();
        if ctrls.iter().all(|c| !disks_of(c, &disks).is_empty()) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not every controller got a disk: {disks:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The disks among `disks` that belong to controller `bdf` (under it, or
/// in its NVMe subsystem with native multipath).
fn disks_of(bdf: &str, disks: &[String]) -> Vec<String> {
    let nqns: Vec<String> = fs::read_dir(format!("/sys/bus/pci/devices/{bdf}/nvme"))
        .map(|dir| {
            dir.filter_map(|e| read_trim(e.ok()?.path().join("subsysnqn")))
                .collect()
        })
        .unwrap_or_default();
    disks
        .iter()
        .filter(|d| {
            let Ok(parent) = fs::canonicalize(format!("/sys/block/{d}/device")) else {
                return false;
            };
            parent.to_string_lossy().contains(&format!("/{bdf}/"))
                || read_trim(parent.join("subsysnqn")).is_some_and(|n| nqns.contains(&n))
        })
        .cloned()
        .collect()
}

/// Total 2 MiB hugepages reserved, over all nodes.
fn hugepages_2m() -> u64 {
    let mut total = 0;
    let mut per_node = false;
    if let Ok(nodes) = fs::read_dir("/sys/devices/system/node") {
        for node in nodes.flatten() {
            let path: PathBuf = node.path().join("hugepages/hugepages-2048kB/nr_hugepages");
            if let Some(n) = read_trim(&path) {
                total += n.parse::<u64>().unwrap();
                per_node = true;
            }
        }
    }
    if per_node {
        total
    } else {
        read_trim("/proc/sys/vm/nr_hugepages")
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// The status line of a controller.
fn status_line<'a>(status: &'a str, bdf: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(bdf))
        .unwrap_or_else(|| panic!("no status line for {bdf}"))
}

#[test]
#[ignore = "guest tier: needs emulated NVMe controllers and root (run by ci/guest-tier)"]
fn reset_status_config_status_cycle() {
    let ctrls = controllers();

    // reset --allow: only that controller moves.
    let (code, _, _) = run(&["reset", "--allow", &ctrls[0]]);
    assert_eq!(code, 0);
    assert_eq!(driver(&ctrls[0]).as_deref(), Some("nvme"));
    assert_all_on(&ctrls[1..], "vfio-pci");

    // reset: every controller back on nvme, with its disks.
    let (code, _, _) = run(&["reset"]);
    assert_eq!(code, 0);
    assert_all_on(&ctrls, "nvme");
    for bdf in &ctrls {
        assert_eq!(
            read_trim(format!("/sys/bus/pci/devices/{bdf}/driver_override")).as_deref(),
            Some("(null)"),
            "{bdf}: override cleared"
        );
    }
    wait_for_disks(&ctrls);

    let (code, status, _) = run(&["status"]);
    assert_eq!(code, 0);
    let disks = nvme_disks();
    for bdf in &ctrls {
        let line = status_line(&status, bdf);
        assert!(line.contains(" nvme "), "{line}");
        assert!(line.contains("1b36:0010"), "{line}");
        for disk in disks_of(bdf, &disks) {
            assert!(line.contains(&disk), "{line} lacks {disk}");
        }
    }

    // Dry runs change nothing.
    let before = hugepages_2m();
    let (code, out, _) = run(&["--dry-run", "reset"]);
    assert_eq!(code, 0);
    assert!(out.contains("(nothing)"), "{out}");
    let (code, out, _) = run(&["config", "--dry-run", "--hugemem", "640"]);
    assert_eq!(code, 0);
    for bdf in &ctrls {
        assert!(
            out.contains(&format!("bind {bdf} (1b36:0010) to vfio-pci (now nvme)")),
            "{out}"
        );
    }
    assert_all_on(&ctrls, "nvme");
    assert_eq!(hugepages_2m(), before);

    // config: hugepages and vfio-pci. 640 MiB differs from what the other
    // test reserves, so the pool is written whatever ran before.
    let (code, out, _) = run(&["config", "--hugemem", "640"]);
    assert_eq!(code, 0);
    let pages = hugepages_2m();
    assert!(pages * 2 >= 640, "{pages} hugepages of 2 MiB reserved");
    if before != 320 {
        assert!(out.contains("reserved "), "{out}");
    }
    assert_all_on(&ctrls, "vfio-pci");
    for bdf in &ctrls {
        assert_eq!(
            read_trim(format!("/sys/bus/pci/devices/{bdf}/driver_override")).as_deref(),
            Some("vfio-pci"),
            "{bdf}: override kept"
        );
        assert!(
            Path::new("/dev/vfio")
                .join(read_link_name(&format!(
                    "/sys/bus/pci/devices/{bdf}/iommu_group"
                )))
                .exists(),
            "{bdf}: VFIO group node"
        );
    }
    assert!(nvme_disks().is_empty(), "disks left: {:?}", nvme_disks());

    let (code, status, _) = run(&["status"]);
    assert_eq!(code, 0);
    assert!(status.contains("hugetlbfs: /dev/hugepages"), "{status}");
    for bdf in &ctrls {
        let line = status_line(&status, bdf);
        assert!(line.contains(" vfio-pci "), "{line}");
        assert!(line.ends_with(" -"), "no disks: {line}");
    }

    // A dry-run reset plans every controller and changes nothing.
    let (code, out, _) = run(&["reset", "--dry-run"]);
    assert_eq!(code, 0);
    for bdf in &ctrls {
        assert!(
            out.contains(&format!("bind {bdf} (1b36:0010) to nvme (now vfio-pci)")),
            "{out}"
        );
    }
    assert_all_on(&ctrls, "vfio-pci");
}

fn read_link_name(path: &str) -> String {
    fs::read_link(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
#[ignore = "guest tier: needs emulated NVMe controllers and root (run by ci/guest-tier)"]
fn config_refuses_a_controller_whose_disk_is_open() {
    let ctrls = controllers();
    let (code, _, _) = run(&["reset"]);
    assert_eq!(code, 0);
    wait_for_disks(&ctrls);
    wait_for_disk("nvme0n1");
    let disks = nvme_disks();
    let owner = ctrls
        .iter()
        .find(|c| disks_of(c, &disks).contains(&"nvme0n1".to_owned()))
        .expect("a controller owns nvme0n1")
        .clone();

    let held = fs::File::open("/dev/nvme0n1").expect("open /dev/nvme0n1");
    let (code, _, err) = run(&["config", "--hugemem", "600"]);
    assert_eq!(code, 3, "refused");
    let me = std::process::id();
    assert!(
        err.contains(&format!(
            "refusing {owner} (1b36:0010): /dev/nvme0n1 is open by pid {me}"
        )),
        "{err}"
    );
    assert_eq!(
        driver(&owner).as_deref(),
        Some("nvme"),
        "{owner} stays on nvme"
    );
    for bdf in ctrls.iter().filter(|c| **c != owner) {
        assert_eq!(
            driver(bdf).as_deref(),
            Some("vfio-pci"),
            "{bdf} is still bound"
        );
    }

    // The same through --dry-run.
    let (code, _, err) = run(&["config", "--dry-run", "--hugemem", "600"]);
    assert_eq!(code, 3);
    assert!(err.contains("/dev/nvme0n1 is open"), "{err}");

    drop(held);
    let (code, _, _) = run(&["config", "--hugemem", "600"]);
    assert_eq!(code, 0);
    assert_all_on(&ctrls, "vfio-pci");
}
