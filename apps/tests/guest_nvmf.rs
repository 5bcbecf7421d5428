//! Guest tier: the appliance's NVMe/TCP target used by the Linux kernel's
//! own initiator (`nvme-tcp`, driven by Debian's nvme-cli) over
//! 127.0.0.1: a malloc bdev, an NVMe bdev (an emulated controller bound to
//! vfio-pci) and a null bdev as namespaces of one subsystem; `nvme
//! discover`, `nvme connect`, `nvme list`; fio with verification (4 KiB
//! random read/write at depth 32, 128 KiB sequential) on every namespace;
//! mkfs.ext4 + mount + e2fsck; a namespace resized underneath and seen by
//! the kernel (asynchronous event); header and data digests on; `nvme
//! disconnect`. And the other way round: our initiator
//! (`bdev_nvme_attach_controller -t tcp`) against the kernel's own target
//! (`nvmet-tcp`, configured through configfs), with fio verification over
//! NBD and the data checked in the target's backing file, digests off and
//! on. Run by `ci/guest-tier` (`#[ignore]`d on the host).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    RpcConn, fio, fio_verify, first_vfio_controller, guest_appliance, guest_spdk_rpc,
    kernel_round_trip, pattern, run,
};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const SERIAL: &str = "RSSNVMF00000001";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6b9e4c1a-3c1f-4b7e-9d0a-2f5e8c7d6a51";
const HOSTID: &str = "6b9e4c1a-3c1f-4b7e-9d0a-2f5e8c7d6a51";
const PORT: &str = "4420";

fn call(rpc: &mut RpcConn, dir: &Path, method: &str, params: Value) -> Value {
    rpc.call(method, params.clone()).unwrap_or_else(|e| {
        panic!(
            "{method} {params}: {e:?}\n{}",
            std::fs::read_to_string(dir.join("appliance.log")).unwrap_or_default()
        )
    })
}

/// The block devices of our subsystem's namespaces, by nsid, from `nvme
/// list` (JSON).
fn our_devices() -> Vec<(u32, String, u64)> {
    let out = run("nvme", &["list", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(json!({}));
    let mut list: Vec<(u32, String, u64)> = v["Devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["SerialNumber"].as_str().map(str::trim) == Some(SERIAL))
                .map(|d| {
                    (
                        d["NameSpace"].as_u64().unwrap_or(0) as u32,
                        d["DevicePath"].as_str().unwrap_or("").to_owned(),
                        d["PhysicalSize"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

fn wait_devices(n: usize) -> Vec<(u32, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = our_devices();
        if d.len() == n && d.iter().all(|(_, p, _)| Path::new(p).exists()) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} namespaces, nvme list shows {d:?}\n{}",
            run("nvme", &["list"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn connect(extra: &[&str]) {
    let mut args = vec![
        "connect",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        PORT,
        "-n",
        NQN,
        "--hostnqn",
        HOSTNQN,
        "--hostid",
        HOSTID,
    ];
    args.extend_from_slice(extra);
    run("nvme", &args);
}

fn disconnect() {
    let out = run("nvme", &["disconnect", "-n", NQN]);
    assert!(out.contains("disconnected 1 controller"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !our_devices().is_empty() {
        assert!(
            Instant::now() < deadline,
            "namespaces stayed after disconnect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sectors(dev: &str) -> u64 {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "guest tier: needs nvme-tcp, nvme-cli and an NVMe controller bound to vfio-pci (ci/guest-tier)"]
fn the_kernels_nvme_tcp_uses_our_target() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("nvmf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("spdk.sock");
    let (_running, mut rpc) = guest_appliance(&dir, &[]);
    call(
        &mut rpc,
        &dir,
        "bdev_malloc_create",
        json!({ "name": "Malloc0", "num_blocks": 131072, "block_size": 512 }),
    );
    call(
        &mut rpc,
        &dir,
        "bdev_nvme_attach_controller",
        json!({ "name": "Nvme0", "trtype": "PCIe", "traddr": traddr }),
    );
    call(
        &mut rpc,
        &dir,
        "bdev_null_create",
        json!({ "name": "Null0", "num_blocks": 65536, "block_size": 512 }),
    );
    // SPDK's own client sets the target up.
    guest_spdk_rpc(&sock, &["nvmf_create_transport", "-t", "tcp"]);
    guest_spdk_rpc(
        &sock,
        &[
            "nvmf_create_subsystem",
            NQN,
            "-a",
            "-s",
            SERIAL,
            "-d",
            "RSS test target",
        ],
    );
    for b in ["Malloc0", "Nvme0n1", "Null0"] {
        guest_spdk_rpc(&sock, &["nvmf_subsystem_add_ns", NQN, b]);
    }
    guest_spdk_rpc(
        &sock,
        &[
            "nvmf_subsystem_add_listener",
            NQN,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            PORT,
            "-f",
            "ipv4",
        ],
    );

    // Discovery on the subsystem's own port.
    let out = run(
        "nvme",
        &[
            "discover",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            PORT,
            "--hostnqn",
            HOSTNQN,
            "--hostid",
            HOSTID,
        ],
    );
    assert!(out.contains(NQN) && out.contains("trsvcid: 4420"), "{out}");
    println!("nvme discover: ok");

    connect(&[]);
    let devs = wait_devices(3);
    let list = run("nvme", &["list"]);
    assert!(
        list.contains(SERIAL) && list.contains("RSS test target"),
        "{list}"
    );
    println!("nvme list:\n{list}");
    let ctrls = call(
        &mut rpc,
        &dir,
        "nvmf_subsystem_get_controllers",
        json!({ "nqn": NQN }),
    );
    assert_eq!(ctrls[0]["hostnqn"], HOSTNQN, "{ctrls}");
    // The kernel opened I/O queues beside the admin queue.
    assert!(ctrls[0]["num_io_qpairs"].as_u64().unwrap() >= 2, "{ctrls}");

    let (malloc, nvme, null) = (&devs[0].1, &devs[1].1, &devs[2].1);
    assert_eq!(sectors(malloc), 131072);
    kernel_round_trip(malloc, 4096 * 5, &pattern(1, 300 * 1024));
    for dev in [malloc, nvme] {
        fio_verify(dev);
        println!("fio verify through {dev}: ok");
    }

    // A file system on the malloc namespace.
    run("mkfs.ext4", &["-q", "-F", malloc]);
    std::fs::create_dir_all("/mnt/t").unwrap();
    run("mount", &["-t", "ext4", malloc, "/mnt/t"]);
    let data = pattern(9, 3 << 20);
    std::fs::write("/mnt/t/data", &data).unwrap();
    run("umount", &["/mnt/t"]);
    run("e2fsck", &["-f", "-n", malloc]);
    run("mount", &["-t", "ext4", malloc, "/mnt/t"]);
    assert!(
        std::fs::read("/mnt/t/data").unwrap() == data,
        "file read back differs"
    );
    run("umount", &["/mnt/t"]);
    println!("mkfs + mount + e2fsck through {malloc}: ok");

    // Resized underneath: the kernel hears of it (namespace attribute
    // changed) and follows.
    assert_eq!(sectors(null), 65536);
    guest_spdk_rpc(&sock, &["bdev_null_resize", "Null0", "64"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sectors(null) != 131072 {
        assert!(
            Instant::now() < deadline,
            "{null} still has {} sectors after the resize",
            sectors(null)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("resize seen by the kernel: ok");
    disconnect();
    println!("nvme disconnect: ok");

    // Header and data digests on.
    connect(&["-g", "-G"]);
    let devs = wait_devices(3);
    fio(
        &devs[0].1,
        "digests",
        &[
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=32",
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
        ],
    );
    println!("fio verify with header and data digests: ok");
    disconnect();
    let ctrls = call(
        &mut rpc,
        &dir,
        "nvmf_subsystem_get_controllers",
        json!({ "nqn": NQN }),
    );
    assert_eq!(ctrls, json!([]));
}

/// The kernel's own target (`nvmet-tcp`, set up through configfs) on
/// 127.0.0.1:`port` exporting `file` (buffered) as namespace 1 of `nqn`.
fn kernel_target(nqn: &str, port: &str, file: &str) {
    if !Path::new("/sys/kernel/config/nvmet").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "configfs", "none", "/sys/kernel/config"])
            .status();
    }
    let k = "/sys/kernel/config/nvmet";
    let s = format!("{k}/subsystems/{nqn}");
    let w = |path: &str, v: &str| {
        std::fs::write(path, v).unwrap_or_else(|e| panic!("write {v} to {path}: {e}"))
    };
    std::fs::create_dir(&s).unwrap();
    w(&format!("{s}/attr_allow_any_host"), "1");
    w(&format!("{s}/attr_serial"), "KERN0000000000000001");
    std::fs::create_dir(format!("{s}/namespaces/1")).unwrap();
    w(&format!("{s}/namespaces/1/device_path"), file);
    w(&format!("{s}/namespaces/1/buffered_io"), "1");
    w(&format!("{s}/namespaces/1/enable"), "1");
    let p = format!("{k}/ports/7");
    std::fs::create_dir(&p).unwrap();
    w(&format!("{p}/addr_trtype"), "tcp");
    w(&format!("{p}/addr_adrfam"), "ipv4");
    w(&format!("{p}/addr_traddr"), "127.0.0.1");
    w(&format!("{p}/addr_trsvcid"), port);
    std::os::unix::fs::symlink(&s, format!("{p}/subsystems/{nqn}")).unwrap();
}

#[test]
#[ignore = "guest tier: needs nvmet-tcp and nbd (ci/guest-tier)"]
fn our_initiator_uses_the_kernels_nvmet_tcp() {
    const KNQN: &str = "nqn.2016-06.io.kernel:file";
    let file = "/tmp/nvmet-file.img";
    let f = std::fs::File::create(file).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    kernel_target(KNQN, "4421", file);
    let dir = std::env::temp_dir().join(format!("nvmf-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_running, mut rpc) = guest_appliance(&dir, &[]);
    for digests in [false, true] {
        let names = call(
            &mut rpc,
            &dir,
            "bdev_nvme_attach_controller",
            json!({
                "name": "Kern0", "trtype": "tcp", "adrfam": "ipv4",
                "traddr": "127.0.0.1", "trsvcid": "4421", "subnqn": KNQN,
                "hdgst": digests, "ddgst": digests,
            }),
        );
        assert_eq!(names, json!(["Kern0n1"]));
        let b = call(
            &mut rpc,
            &dir,
            "bdev_get_bdevs",
            json!({ "name": "Kern0n1" }),
        );
        let bs = b[0]["block_size"].as_u64().unwrap();
        assert_eq!(b[0]["num_blocks"].as_u64().unwrap() * bs, 64 << 20, "{b}");
        call(
            &mut rpc,
            &dir,
            "nbd_start_disk",
            json!({ "bdev_name": "Kern0n1", "nbd_device": "/dev/nbd0" }),
        );
        fio_verify("/dev/nbd0");
        // What our initiator wrote is in the kernel target's file.
        let data = pattern(if digests { 9 } else { 5 }, 256 * 1024);
        let at = 4096 * 77;
        kernel_round_trip("/dev/nbd0", at, &data);
        call(
            &mut rpc,
            &dir,
            "nbd_stop_disk",
            json!({ "nbd_device": "/dev/nbd0" }),
        );
        let on_disk = std::fs::read(file).unwrap();
        assert!(
            on_disk[at as usize..at as usize + data.len()] == data[..],
            "the nvmet file holds what went through our initiator (digests {digests})"
        );
        call(
            &mut rpc,
            &dir,
            "bdev_nvme_detach_controller",
            json!({ "name": "Kern0" }),
        );
        println!("our initiator against nvmet-tcp (digests {digests}): ok");
    }
}
