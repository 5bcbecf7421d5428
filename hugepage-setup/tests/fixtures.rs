//! Host tests: the whole tool against fixture trees of sysfs/procfs, with a
//! fake kernel answering the writes. Parsing, refusals, dry-run plans,
//! binding sequences and exit statuses.

mod common;

use std::path::Path;

use common::{FakeKernel, Fixture};
use hugepage_setup::blockdev::nvme_block_devices;
use hugepage_setup::hugepages;
use hugepage_setup::pci::{self, PciDevice};
use hugepage_setup::plan::{self, Action, Refusal};
use hugepage_setup::{Bdf, Error, Exit, Options};

const C0: &str = "0000:00:01.0";
const C1: &str = "0000:00:02.0";

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

/// Two QEMU controllers on nvme, each in its own IOMMU group, with their
/// namespaces: nvme0n1 (two partitions) and nvme1n1; a host bridge.
fn machine(name: &str) -> Fixture {
    let fx = Fixture::new(name);
    fx.pci("0000:00:00.0", "0x060000", Some(0), None);
    fx.nvme(C0, Some(1), Some("nvme"));
    fx.nvme(C1, Some(2), Some("nvme"));
    fx.namespace(
        C0,
        "nvme0",
        "nvme0n1",
        "259:0",
        &[("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2")],
    );
    fx.namespace(C1, "nvme1", "nvme1n1", "259:3", &[]);
    fx.hugepages(0, 2048, 256, 256);
    fx
}

fn refusal_text(plan: &plan::Plan) -> Vec<String> {
    plan.refused.iter().map(ToString::to_string).collect()
}

// ---- parsing ----

#[test]
fn reads_pci_attributes() {
    let fx = machine("pci");
    fx.write("sys/bus/pci/devices/0000:00:02.0/numa_node", "1\n");
    fx.write(
        "sys/bus/pci/devices/0000:00:02.0/driver_override",
        "vfio-pci\n",
    );
    let sys = FakeKernel::new(&fx);
    let c0 = PciDevice::read(&sys, bdf(C0)).unwrap();
    assert_eq!(c0.class, pci::NVME_CLASS);
    assert_eq!(c0.ids(), "1b36:0010");
    assert_eq!(c0.numa_node, None, "-1 means unknown");
    assert_eq!(c0.iommu_group, Some(1));
    assert_eq!(c0.driver.as_deref(), Some("nvme"));
    assert_eq!(c0.driver_override, None, "(null) means none");
    let c1 = PciDevice::read(&sys, bdf(C1)).unwrap();
    assert_eq!(c1.numa_node, Some(1));
    assert_eq!(c1.driver_override.as_deref(), Some("vfio-pci"));

    let ctrls = pci::nvme_controllers(&sys).unwrap();
    assert_eq!(
        ctrls.iter().map(|c| c.bdf).collect::<Vec<_>>(),
        [bdf(C0), bdf(C1)],
        "the bridge is not a controller"
    );
    assert_eq!(pci::group_members(&sys, 1).unwrap(), [bdf(C0)]);
    assert!(pci::iommu_enabled(&sys).unwrap());
}

#[test]
fn malformed_sysfs_files_are_errors_naming_the_file() {
    let fx = machine("malformed");
    let sys = FakeKernel::new(&fx);
    fx.write("sys/bus/pci/devices/0000:00:01.0/vendor", "0x1b36ff\n");
    let e = PciDevice::read(&sys, bdf(C0)).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("0000:00:01.0/vendor"), "{e}");

    fx.write("sys/bus/pci/devices/0000:00:01.0/vendor", "0x1b36\n");
    fx.write("sys/bus/pci/devices/0000:00:01.0/numa_node", "zero\n");
    let e = PciDevice::read(&sys, bdf(C0)).unwrap_err();
    assert!(e.to_string().contains("numa_node"), "{e}");

    fx.write("sys/bus/pci/devices/0000:00:01.0/numa_node", "0\n");
    fx.remove("sys/devices/pci0000:00/0000:00:01.0/device");
    let e = PciDevice::read(&sys, bdf(C0)).unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("0000:00:01.0/device"), "{e}");

    fx.write("sys/bus/pci/devices/0000:00:01.0/device", "0x0010\n");
    fx.write("sys/bus/pci/devices/0000:00:02.0/class", "garbage\n");
    let (exit, _, err) = sys.run(&["status"]);
    assert_eq!(exit, Exit::Failed);
    assert!(
        err.contains("0000:00:02.0/class") && err.contains("garbage"),
        "{err}"
    );

    fx.write("sys/bus/pci/devices/0000:00:02.0/class", "0x010802\n");
    fx.write(
        "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
        "lots\n",
    );
    let (exit, _, err) = sys.run(&["config", "--dry-run"]);
    assert_eq!(exit, Exit::Failed);
    assert!(
        err.contains("nr_hugepages") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn finds_disks_and_partitions_of_each_controller() {
    let fx = machine("blockdev");
    let sys = FakeKernel::new(&fx);
    let disks = nvme_block_devices(&sys, bdf(C0)).unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].name, "nvme0n1");
    assert_eq!(disks[0].devno, Some((259, 0)));
    let parts: Vec<_> = disks[0]
        .partitions
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(parts, ["nvme0n1p1", "nvme0n1p2"]);
    assert_eq!(disks[0].partitions[1].devno, Some((259, 2)));
    let disks = nvme_block_devices(&sys, bdf(C1)).unwrap();
    assert_eq!(
        disks.iter().map(|d| &d.name).collect::<Vec<_>>(),
        ["nvme1n1"]
    );
}

#[test]
fn finds_multipath_disks_by_subsystem_and_skips_hidden_paths() {
    let fx = Fixture::new("multipath");
    fx.nvme(C0, Some(1), Some("nvme"));
    fx.nvme(C1, Some(2), Some("nvme"));
    fx.multipath_namespace(C0, "nvme0", "nvme-subsys0", "nvme0n1", "nvme0c0n1", "259:0");
    fx.multipath_namespace(C1, "nvme1", "nvme-subsys1", "nvme1n1", "nvme1c1n1", "259:1");
    let sys = FakeKernel::new(&fx);
    let names = |b| {
        nvme_block_devices(&sys, bdf(b))
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(C0), ["nvme0n1"]);
    assert_eq!(names(C1), ["nvme1n1"]);

    fx.open_fd(77, "dd", 3, "/dev/nvme1n1");
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.binds().collect::<Vec<_>>(), [bdf(C0)]);
    assert_eq!(
        refusal_text(&plan),
        ["0000:00:02.0 (1b36:0010): /dev/nvme1n1 is open by pid 77 (dd)"]
    );
}

#[test]
fn reads_hugepage_pools_per_node_and_globally() {
    let fx = machine("pools");
    fx.hugepages(0, 1048576, 2, 1);
    fx.hugepages(1, 2048, 100, 40);
    let sys = FakeKernel::new(&fx);
    let pools = hugepages::pools(&sys).unwrap();
    let summary: Vec<_> = pools
        .iter()
        .map(|p| (p.node, p.size_kb, p.total, p.free))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(0), 2048, 256, 256),
            (Some(0), 1048576, 2, 1),
            (Some(1), 2048, 100, 40)
        ]
    );
    let targets = hugepages::targets(&sys).unwrap();
    assert_eq!(
        targets.iter().map(|t| t.node).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );

    // No node directories: the global pool.
    fx.remove("sys/devices/system/node");
    fx.write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "8\n",
    );
    fx.write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "8\n",
    );
    let pools = hugepages::pools(&sys).unwrap();
    assert_eq!((pools[0].node, pools[0].total), (None, 8));
    let targets = hugepages::targets(&sys).unwrap();
    assert_eq!(
        targets[0].path,
        Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    );
    // Only procfs.
    fx.remove("sys/kernel/mm");
    fx.write("proc/sys/vm/nr_hugepages", "3\n");
    let targets = hugepages::targets(&sys).unwrap();
    assert_eq!(
        (targets[0].path.as_path(), targets[0].current),
        (Path::new("/proc/sys/vm/nr_hugepages"), 3)
    );
}

// ---- refusals ----

/// Plans config and checks that C0 is refused with `reason` and C1 still
/// bound.
fn assert_c0_refused(fx: &Fixture, reason: &str) {
    let sys = FakeKernel::unprivileged(fx);
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.binds().collect::<Vec<_>>(), [bdf(C1)], "{plan:#?}");
    let refused = refusal_text(&plan);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with("0000:00:01.0 (1b36:0010): "),
        "{refused:?}"
    );
    assert!(refused[0].contains(reason), "{refused:?} lacks {reason:?}");
    assert_eq!(plan.exit(), Exit::Refused);
}

#[test]
fn refuses_a_mounted_partition() {
    let fx = machine("mounted");
    fx.append(
        "proc/mounts",
        "/dev/nvme0n1p1 /srv/data ext4 rw,relatime 0 0",
    );
    assert_c0_refused(&fx, "nvme0n1p1 is mounted on /srv/data");
}

#[test]
fn refuses_the_root_disk_seen_as_dev_root() {
    let fx = machine("rootdisk");
    fx.append("proc/mounts", "/dev/root / ext4 rw 0 0");
    fx.append(
        "proc/self/mountinfo",
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw",
    );
    assert_c0_refused(&fx, "nvme0n1p2 is mounted on / (the root filesystem)");
}

#[test]
fn refuses_swap() {
    let fx = machine("swap");
    fx.append(
        "proc/swaps",
        "/dev/nvme0n1p2                          partition\t1048572\t\t0\t\t-2",
    );
    assert_c0_refused(&fx, "nvme0n1p2 is an active swap area");
}

#[test]
fn refuses_an_lvm_holder() {
    let fx = machine("lvm");
    fx.holder("nvme0n1/nvme0n1p1", "dm-0", Some("LVM-abcdef"));
    assert_c0_refused(
        &fx,
        "nvme0n1p1 is held by dm-0 (LVM logical volume vg0-root)",
    );
}

#[test]
fn refuses_a_device_mapper_holder() {
    let fx = machine("dm");
    fx.holder("nvme0n1", "dm-1", Some("CRYPT-LUKS2-xyz"));
    assert_c0_refused(&fx, "nvme0n1 is held by dm-1 (device-mapper vg0-root)");
}

#[test]
fn refuses_an_md_holder() {
    let fx = machine("md");
    fx.holder("nvme0n1", "md127", None);
    assert_c0_refused(&fx, "nvme0n1 is held by md127 (MD RAID array)");
}

#[test]
fn refuses_an_open_block_device() {
    let fx = machine("openfd");
    fx.open_fd(4242, "fio", 5, "/dev/nvme0n1p2");
    fx.open_fd(4242, "fio", 6, "/dev/nvme0n1p2");
    fx.open_fd(17, "bash", 0, "/dev/pts/0");
    fx.write("proc/17/comm", "bash\n");
    assert_c0_refused(&fx, "/dev/nvme0n1p2 is open by pid 4242 (fio)");
    let sys = FakeKernel::new(&fx);
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.refused[0].reasons.len(), 1, "one entry per process");
}

#[test]
fn lists_every_reason() {
    let fx = machine("reasons");
    fx.append("proc/mounts", "/dev/nvme0n1p1 /boot ext4 rw 0 0");
    fx.append("proc/swaps", "/dev/nvme0n1p2 partition 1024 0 -2");
    fx.open_fd(9, "smartd", 3, "/dev/nvme0n1");
    let sys = FakeKernel::new(&fx);
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(
        refusal_text(&plan),
        [
            "0000:00:01.0 (1b36:0010): /dev/nvme0n1 is open by pid 9 (smartd); \
          nvme0n1p1 is mounted on /boot; nvme0n1p2 is an active swap area"
        ]
    );
}

#[test]
fn refuses_a_shared_iommu_group_with_a_device_on_another_driver() {
    let fx = machine("group");
    // A sound card on snd_hda_intel in C0's group; a bridge and an unbound
    // device in C1's group are fine.
    fx.pci("0000:00:1f.3", "0x040300", Some(1), Some("snd_hda_intel"));
    fx.pci("0000:00:1c.0", "0x060400", Some(2), Some("pcieport"));
    fx.pci("0000:00:1f.4", "0x0c0500", Some(2), None);
    let sys = FakeKernel::new(&fx);
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.binds().collect::<Vec<_>>(), [bdf(C1)]);
    assert!(matches!(
        plan.refused[0].reasons[..],
        [Refusal::GroupMate {
            group: 1,
            class: 0x040300,
            ..
        }]
    ));
    let text = refusal_text(&plan)[0].clone();
    assert!(
        text.contains(
            "IOMMU group 1 also holds 0000:00:1f.3 (class 0x040300) on driver snd_hda_intel"
        ),
        "{text}"
    );
}

#[test]
fn a_controller_sharing_a_group_with_a_refused_one_is_refused_too() {
    let fx = Fixture::new("groupmate");
    fx.nvme(C0, Some(5), Some("nvme"));
    fx.nvme(C1, Some(5), Some("nvme"));
    fx.namespace(C0, "nvme0", "nvme0n1", "259:0", &[]);
    fx.namespace(C1, "nvme1", "nvme1n1", "259:1", &[]);
    fx.append("proc/mounts", "/dev/nvme1n1 /data xfs rw 0 0");
    let sys = FakeKernel::new(&fx);
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.binds().count(), 0);
    assert_eq!(
        refusal_text(&plan),
        [
            "0000:00:01.0 (1b36:0010): IOMMU group 5 also holds 0000:00:02.0, which is refused",
            "0000:00:02.0 (1b36:0010): nvme1n1 is mounted on /data",
        ]
    );
    // Two free controllers in one group go together.
    fx.write("proc/mounts", "nodev /dev/hugepages hugetlbfs rw 0 0\n");
    let plan = plan::config(&sys, &Options::default()).unwrap();
    assert_eq!(plan.binds().count(), 2);
}

#[test]
fn reset_refuses_a_controller_whose_vfio_group_is_open() {
    let fx = machine("vfio-open");
    fx.nvme(C0, Some(1), Some("vfio-pci"));
    fx.nvme(C1, Some(2), Some("vfio-pci"));
    fx.open_fd(300, "rss-appliance", 9, "/dev/vfio/2");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["reset"]);
    assert_eq!(exit, Exit::Refused, "{err}");
    assert!(
        err.contains(
            "refusing 0000:00:02.0 (1b36:0010): /dev/vfio/2 is open by pid 300 (rss-appliance)"
        ),
        "{err}"
    );
    assert_eq!(fx.driver(C0).as_deref(), Some("nvme"));
    assert_eq!(fx.driver(C1).as_deref(), Some("vfio-pci"));
}

// ---- dry-run plans ----

#[test]
fn dry_run_prints_the_plan_and_changes_nothing_without_root() {
    let fx = machine("dryrun");
    fx.write("proc/mounts", "proc /proc proc rw 0 0\n");
    fx.hugepages(1, 2048, 0, 0);
    fx.nvme(C1, Some(2), Some("vfio-pci"));
    let sys = FakeKernel::unprivileged(&fx);
    let (exit, out, err) = sys.run(&["config", "--dry-run", "--hugemem", "601"]);
    assert_eq!(exit, Exit::Ok, "{err}");
    assert_eq!(
        out,
        "dry run: nothing is changed; config would:\n\
         \x20 reserve 151 hugepages of 2048kB on node0 (256 now): write 151 to /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages\n\
         \x20 reserve 150 hugepages of 2048kB on node1 (0 now): write 150 to /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages\n\
         \x20 mount hugetlbfs on /dev/hugepages\n\
         \x20 bind 0000:00:01.0 (1b36:0010) to vfio-pci (now nvme)\n\
         0000:00:02.0 (1b36:0010) is already on vfio-pci\n"
    );
    assert!(sys.changes().is_empty(), "{:?}", sys.changes());
    assert_eq!(fx.driver(C0).as_deref(), Some("nvme"));

    // The plan as data.
    let options = Options {
        hugemem_mib: Some(601),
        node: Some(1),
        ..Options::default()
    };
    let plan = plan::config(&sys, &options).unwrap();
    assert!(matches!(
        &plan.actions[0],
        Action::ReserveHugepages { target, pages: 301 } if target.node == Some(1)
    ));

    let (exit, out, _) = sys.run(&["--dry-run", "reset"]);
    assert_eq!(exit, Exit::Ok);
    assert_eq!(
        out,
        "dry run: nothing is changed; reset would:\n\
         \x20 bind 0000:00:02.0 (1b36:0010) to nvme (now vfio-pci)\n\
         0000:00:01.0 (1b36:0010) is already on nvme\n"
    );
    assert!(sys.changes().is_empty());
}

#[test]
fn dry_run_exits_as_the_real_run_would_on_refusal() {
    let fx = machine("dryrun-refused");
    fx.append("proc/mounts", "/dev/nvme1n1 /var/lib/longhorn ext4 rw 0 0");
    let sys = FakeKernel::unprivileged(&fx);
    let (exit, out, err) = sys.run(&["config", "--dry-run", "--hugemem", "512"]);
    assert_eq!(exit, Exit::Refused);
    assert!(out.contains("bind 0000:00:01.0"), "{out}");
    assert!(!out.contains("bind 0000:00:02.0"), "{out}");
    assert!(
        err.contains("refusing 0000:00:02.0 (1b36:0010): nvme1n1 is mounted on /var/lib/longhorn"),
        "{err}"
    );
    assert!(sys.changes().is_empty());
}

// ---- running for real on the fake kernel ----

#[test]
fn config_then_reset_moves_controllers_through_sysfs() {
    let fx = machine("cycle");
    fx.write("proc/mounts", "proc /proc proc rw 0 0\n");
    let sys = FakeKernel::new(&fx);
    let (exit, out, err) = sys.run(&["config", "--hugemem", "600"]);
    assert_eq!(exit, Exit::Ok, "{out}{err}");
    assert_eq!(
        sys.changes(),
        [
            "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages <- \"300\"",
            "mount hugetlbfs on /dev/hugepages",
            "/sys/bus/pci/devices/0000:00:01.0/driver_override <- \"vfio-pci\"",
            "/sys/bus/pci/devices/0000:00:01.0/driver/unbind <- \"0000:00:01.0\"",
            "/sys/bus/pci/drivers_probe <- \"0000:00:01.0\"",
            "/sys/bus/pci/devices/0000:00:02.0/driver_override <- \"vfio-pci\"",
            "/sys/bus/pci/devices/0000:00:02.0/driver/unbind <- \"0000:00:02.0\"",
            "/sys/bus/pci/drivers_probe <- \"0000:00:02.0\"",
        ]
    );
    assert_eq!(fx.driver(C0).as_deref(), Some("vfio-pci"));
    assert_eq!(fx.driver(C1).as_deref(), Some("vfio-pci"));
    assert_eq!(
        fx.read("sys/bus/pci/devices/0000:00:01.0/driver_override"),
        "vfio-pci"
    );
    assert!(
        out.contains("reserved 300 hugepages of 2048kB on node0 (was 256)"),
        "{out}"
    );
    assert!(
        out.contains("bound 0000:00:01.0 (1b36:0010) to vfio-pci (was nvme)"),
        "{out}"
    );

    // Again: nothing to do.
    sys.log.borrow_mut().clear();
    let (exit, out, _) = sys.run(&["config", "--hugemem", "600"]);
    assert_eq!(exit, Exit::Ok);
    assert!(sys.changes().is_empty(), "{:?}", sys.changes());
    assert!(
        out.contains("node0 already has 300 hugepages of 2048kB"),
        "{out}"
    );
    assert!(
        out.contains("0000:00:02.0 (1b36:0010) is already on vfio-pci"),
        "{out}"
    );

    let (exit, out, err) = sys.run(&["reset", "--block", "00:02.0"]);
    assert_eq!(exit, Exit::Ok, "{out}{err}");
    assert_eq!(
        sys.changes(),
        [
            "/sys/bus/pci/devices/0000:00:01.0/driver_override <- \"nvme\"",
            "/sys/bus/pci/devices/0000:00:01.0/driver/unbind <- \"0000:00:01.0\"",
            "/sys/bus/pci/drivers_probe <- \"0000:00:01.0\"",
            "/sys/bus/pci/devices/0000:00:01.0/driver_override <- \"\\n\"",
        ]
    );
    assert_eq!(fx.driver(C0).as_deref(), Some("nvme"));
    assert_eq!(fx.driver(C1).as_deref(), Some("vfio-pci"), "--block");
    assert_eq!(
        fx.read("sys/bus/pci/devices/0000:00:01.0/driver_override"),
        "(null)\n"
    );
}

#[test]
fn allow_restricts_and_must_name_a_controller() {
    let fx = machine("allow");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["config", "--allow", "00:02.0", "--hugemem", "512"]);
    assert_eq!(exit, Exit::Ok, "{err}");
    assert_eq!(fx.driver(C0).as_deref(), Some("nvme"));
    assert_eq!(fx.driver(C1).as_deref(), Some("vfio-pci"));

    let (exit, _, err) = sys.run(&["config", "--allow", "0000:00:09.0"]);
    assert_eq!(exit, Exit::Usage);
    assert!(
        err.contains("--allow 0000:00:09.0: no NVMe controller"),
        "{err}"
    );
    let (exit, _, err) = sys.run(&["config", "--allow", "00:09"]);
    assert_eq!(exit, Exit::Usage);
    assert!(err.contains("\"00:09\""), "{err}");
    let (exit, _, err) = sys.run(&["config", "--node", "3"]);
    assert_eq!(exit, Exit::Usage);
    assert!(
        err.contains("--node 3: no NUMA node 3") && err.contains("(nodes: 0)"),
        "{err}"
    );
}

#[test]
fn not_root_is_refused_before_anything() {
    let fx = machine("notroot");
    let sys = FakeKernel::unprivileged(&fx);
    for cmd in ["config", "reset"] {
        let (exit, _, err) = sys.run(&[cmd]);
        assert_eq!(exit, Exit::Permission);
        assert!(err.contains(&format!("{cmd} needs root")), "{err}");
    }
    assert!(sys.changes().is_empty());
    let (exit, out, _) = sys.run(&["status"]);
    assert_eq!(exit, Exit::Ok, "status works unprivileged");
    assert!(out.contains("0000:00:01.0"));
}

#[test]
fn missing_iommu_is_its_own_error() {
    let fx = machine("noiommu");
    fx.remove("sys/kernel/iommu_groups");
    fx.remove("sys/devices/pci0000:00/0000:00:01.0/iommu_group");
    fx.remove("sys/devices/pci0000:00/0000:00:02.0/iommu_group");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["config", "--hugemem", "512"]);
    assert_eq!(exit, Exit::NoIommu);
    assert!(
        err.contains(
            "no IOMMU group for 0000:00:01.0: enable VT-d/AMD-Vi and boot with intel_iommu=on"
        ),
        "{err}"
    );
    assert!(sys.changes().is_empty());

    // One controller without a group on a machine with groups.
    let fx = machine("nogroup");
    fx.remove("sys/devices/pci0000:00/0000:00:02.0/iommu_group");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["config", "--dry-run"]);
    assert_eq!(exit, Exit::NoIommu);
    assert!(err.contains("no IOMMU group for 0000:00:02.0"), "{err}");
    // But a controller in use is refused first; the free one still needs a group.
    fx.append("proc/mounts", "/dev/nvme1n1 / ext4 rw 0 0");
    let (exit, _, err) = sys.run(&["config", "--dry-run"]);
    assert_eq!(exit, Exit::Refused, "{err}");
}

#[test]
fn missing_module_stops_before_any_change() {
    let fx = machine("nomodule");
    fx.remove("sys/bus/pci/drivers/vfio-pci");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["config", "--hugemem", "1024"]);
    assert_eq!(exit, Exit::MissingModule);
    assert!(
        err.contains(
            "kernel module vfio-pci is missing: modprobe: FATAL: Module vfio-pci not found"
        ),
        "{err}"
    );
    assert_eq!(sys.changes(), ["modprobe vfio-pci"]);

    // modprobe can load it.
    let mut sys = FakeKernel::new(&fx);
    sys.loadable = vec!["vfio-pci".to_owned()];
    let (exit, out, err) = sys.run(&["config", "--hugemem", "512"]);
    assert_eq!(exit, Exit::Ok, "{err}");
    assert!(out.contains("loaded kernel module vfio-pci"), "{out}");
    assert_eq!(fx.driver(C0).as_deref(), Some("vfio-pci"));

    // Loaded already (insmod in the guest): modprobe is not needed.
    let sys = FakeKernel::new(&fx);
    let (exit, _, _) = sys.run(&["reset"]);
    assert_eq!(exit, Exit::Ok);
    assert!(!sys.changes().iter().any(|c| c.starts_with("modprobe")));

    // reset needs nvme.
    fx.nvme(C0, Some(1), Some("vfio-pci"));
    fx.remove("sys/bus/pci/drivers/nvme");
    let sys = FakeKernel::new(&fx);
    let (exit, _, err) = sys.run(&["reset"]);
    assert_eq!(exit, Exit::MissingModule);
    assert!(err.contains("kernel module nvme is missing"), "{err}");
}

#[test]
fn fewer_hugepages_than_asked_is_reported_with_its_own_status() {
    let fx = machine("short");
    let mut sys = FakeKernel::new(&fx);
    sys.max_pages = Some(200);
    let (exit, _, err) = sys.run(&["config", "--hugemem", "600"]);
    assert_eq!(exit, Exit::ShortHugepages);
    assert!(
        err.contains("node0: the kernel reserved only 200 of 300 hugepages of 2048kB"),
        "{err}"
    );
    assert_eq!(
        fx.driver(C0).as_deref(),
        Some("vfio-pci"),
        "the rest is done"
    );
}

#[test]
fn a_bind_that_does_not_take_fails_the_run_but_not_the_others() {
    let fx = machine("bindfail");
    let mut sys = FakeKernel::new(&fx);
    sys.unbindable = vec![C0.to_owned()];
    fx.append("proc/mounts", "/dev/nvme1n1 /data ext4 rw 0 0");
    let (exit, _, err) = sys.run(&["config", "--hugemem", "512"]);
    assert_eq!(exit, Exit::Failed, "a failure wins over a refusal");
    assert!(
        err.contains("0000:00:01.0: bound to no driver instead of vfio-pci after drivers_probe"),
        "{err}"
    );
    assert!(err.contains("refusing 0000:00:02.0"), "{err}");
}

#[test]
fn memlock_advice_when_below_hugemem() {
    let fx = machine("memlock");
    let mut sys = FakeKernel::unprivileged(&fx);
    sys.memlock = Some(8 << 20);
    let (_, out, _) = sys.run(&["config", "--dry-run", "--hugemem", "600"]);
    assert!(
        out.contains("note: the memlock limit is 8192 KiB, below the 600 MiB of hugepages")
            && out.contains("ulimit -l unlimited"),
        "{out}"
    );
    sys.memlock = None;
    let (_, out, _) = sys.run(&["config", "--dry-run", "--hugemem", "600"]);
    assert!(!out.contains("memlock"), "{out}");
}

// ---- status ----

#[test]
fn status_shows_pools_and_controllers() {
    let fx = machine("status");
    fx.nvme(C1, Some(2), Some("vfio-pci"));
    fx.remove("sys/block/nvme1n1");
    fx.write("sys/bus/pci/devices/0000:00:02.0/numa_node", "0\n");
    fx.append("proc/mounts", "/dev/nvme0n1p1 /boot ext4 rw 0 0");
    fx.append("proc/swaps", "/dev/nvme0n1p2 partition 1024 0 -2");
    fx.hugepages(0, 1048576, 0, 0);
    let mut sys = FakeKernel::unprivileged(&fx);
    sys.memlock = Some(64 << 10);
    let (exit, out, err) = sys.run(&["status"]);
    assert_eq!(exit, Exit::Ok, "{err}");
    assert_eq!(
        out,
        "hugepages:\n\
         node   size       total  free\n\
         node0  2048kB     256    256\n\
         node0  1048576kB  0      0\n\
         hugetlbfs: /dev/hugepages\n\
         memlock limit: 64 KiB\n\
         IOMMU: 3 groups\n\
         vfio-pci: loaded\n\
         \n\
         NVMe controllers:\n\
         BDF           vendor:device  node  iommu group  driver    block devices\n\
         0000:00:01.0  1b36:0010      -     1            nvme      nvme0n1, nvme0n1p1 on /boot, nvme0n1p2 (swap)\n\
         0000:00:02.0  1b36:0010      0     2            vfio-pci  -\n"
    );
}
