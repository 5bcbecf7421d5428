//! Guest tier: the appliance on real (emulated) hardware. Started in the
//! guest with hugepage memory, driven over its JSON-RPC socket: it attaches
//! the first NVMe controller bound to vfio-pci (`bdev_nvme_attach_controller`)
//! and exports a namespace and a malloc bdev through the kernel's NBD client
//! (`nbd_start_disk` with `/dev/nbdX`); data written to the kernel's block
//! devices is read back through them and through the appliance's own
//! bdevs. The controller and namespace changes at the end go partly through
//! SPDK's own `spdk-rpc` (ci/guest-python brings it into the guest). Run by
//! `ci/guest-tier` (`#[ignore]`d on the host).

mod common;

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use common::{
    RpcConn, first_vfio_controller, guest_appliance as start_appliance, kernel_round_trip, pattern,
    vfio_controllers, wait_for,
};
use serde_json::json;

/// `bdev_nvme_send_cmd` with a Namespace Attachment command (opcode 15h)
/// attaching (`attach`) or detaching namespace `nsid` to or from
/// controller `cntlid`, sent by SPDK's `spdk-rpc` when `sock` is given,
/// else by `rpc`; returns the completion's status field. The buffers are
/// SPDK's URL-safe base64.
fn namespace_attachment(
    rpc: &mut RpcConn,
    sock: Option<&std::path::Path>,
    ctrlr: &str,
    nsid: u32,
    cntlid: u16,
    attach: bool,
) -> u16 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE as B64;
    let mut cmd = [0u8; 64];
    cmd[0] = 0x15;
    cmd[4..8].copy_from_slice(&nsid.to_le_bytes());
    cmd[40..44].copy_from_slice(&(if attach { 0u32 } else { 1 }).to_le_bytes());
    // The controller list: one entry.
    let mut list = vec![0u8; 4096];
    list[0..2].copy_from_slice(&1u16.to_le_bytes());
    list[2..4].copy_from_slice(&cntlid.to_le_bytes());
    let (cmd, list) = (B64.encode(cmd), B64.encode(&list));
    let r = match sock {
        Some(sock) => {
            let out = common::guest_spdk_rpc(
                sock,
                &[
                    "bdev_nvme_send_cmd",
                    "-n",
                    ctrlr,
                    "-t",
                    "admin",
                    "-r",
                    "h2c",
                    "-c",
                    &cmd,
                    "-d",
                    &list,
                    "-T",
                    "5000",
                ],
            );
            serde_json::from_str::<serde_json::Value>(&out).unwrap()
        }
        None => rpc
            .call(
                "bdev_nvme_send_cmd",
                json!({ "name": ctrlr, "cmd_type": "admin", "data_direction": "h2c",
                        "cmdbuf": cmd, "data": list, "timeout_ms": 5000 }),
            )
            .unwrap(),
    };
    let cpl = B64.decode(r["cpl"].as_str().unwrap()).unwrap();
    u16::from_le_bytes([cpl[14], cpl[15]]) >> 1
}

fn bdev_names(rpc: &mut RpcConn) -> Vec<String> {
    rpc.call("bdev_get_bdevs", json!(null))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "guest tier: needs an NVMe controller bound to vfio-pci and the nbd module (ci/guest-tier)"]
fn nvme_attach_and_kernel_nbd_export() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("appl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("spdk.sock");
    let (mut running, mut rpc) = start_appliance(&dir, &[]);
    let names = rpc
        .call(
            "bdev_nvme_attach_controller",
            json!({ "name": "Nvme0", "trtype": "PCIe", "traddr": traddr }),
        )
        .unwrap_or_else(|e| {
            panic!(
                "attach: {e:?}\n{}",
                std::fs::read_to_string(dir.join("appliance.log")).unwrap_or_default()
            )
        });
    println!("attached {traddr}: {names}");
    assert_eq!(names, json!(["Nvme0n1", "Nvme0n2"]));
    let ctrlrs = rpc.call("bdev_nvme_get_controllers", json!(null)).unwrap();
    assert_eq!(ctrlrs[0]["name"], "Nvme0");
    assert!(ctrlrs[0]["ctrlrs"][0]["error_log"].is_array(), "{ctrlrs}");
    let e = rpc
        .call("bdev_nvme_get_controllers", json!({ "name": "Nvme9" }))
        .unwrap_err();
    assert_eq!(e, (22, "Controller Nvme9 does not exist".into()));
    assert_eq!(ctrlrs[0]["ctrlrs"][0]["trid"]["traddr"], json!(traddr));
    // A second attach of the same name is refused with EEXIST.
    let e = rpc
        .call(
            "bdev_nvme_attach_controller",
            json!({ "name": "Nvme0", "trtype": "PCIe", "traddr": traddr }),
        )
        .unwrap_err();
    assert_eq!(e.0, -17, "{e:?}");
    rpc.call(
        "bdev_malloc_create",
        json!({ "name": "Malloc0", "num_blocks": 16384, "block_size": 512 }),
    )
    .unwrap();
    // Stable identities: save_config (SPDK's spdk-rpc), a restart from
    // it, and every bdev is back with its UUID (a namespace's comes from
    // its identifiers, or from the serial number and namespace id; never
    // made up at attach).
    let uuids = |rpc: &mut RpcConn| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = rpc
            .call("bdev_get_bdevs", json!(null))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap().to_owned(),
                    b["uuid"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = uuids(&mut rpc);
    println!("bdevs and UUIDs: {before:?}");
    assert_eq!(before.len(), 3, "{before:?}");
    let saved = common::guest_spdk_rpc(&sock, &["save_config"]);
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, &saved).unwrap();
    rpc.call("spdk_kill_instance", json!({ "sig_name": "SIGTERM" }))
        .unwrap();
    let st = running.wait();
    assert!(st.success(), "appliance exit: {st}");
    (running, rpc) = start_appliance(&dir, &["--json", cfg.to_str().unwrap()]);
    assert_eq!(
        uuids(&mut rpc),
        before,
        "the same bdevs and UUIDs from {saved}"
    );
    // Export through the kernel's NBD client.
    assert_eq!(
        rpc.call(
            "nbd_start_disk",
            json!({ "bdev_name": "Nvme0n1", "nbd_device": "/dev/nbd0" })
        )
        .unwrap(),
        "/dev/nbd0"
    );
    assert_eq!(
        rpc.call(
            "nbd_start_disk",
            json!({ "bdev_name": "Malloc0", "nbd_device": "/dev/nbd1" })
        )
        .unwrap(),
        "/dev/nbd1"
    );
    let disks = rpc.call("nbd_get_disks", json!(null)).unwrap();
    println!("nbd disks: {disks}");
    assert_eq!(disks.as_array().unwrap().len(), 2);
    let size = std::fs::read_to_string("/sys/block/nbd0/size").unwrap();
    assert_eq!(
        size.trim().parse::<u64>().unwrap(),
        524288,
        "nbd0 has the namespace's size in 512-byte sectors"
    );
    kernel_round_trip("/dev/nbd0", 4096 * 33, &pattern(7, 256 * 1024));
    kernel_round_trip("/dev/nbd0", 0, &pattern(9, 4096));
    kernel_round_trip("/dev/nbd1", 512 * 100, &pattern(11, 64 * 1024));
    // A controller reset while exported: the bdevs stay, the data too, and
    // I/O goes on; an unknown controller is -ENODEV.
    assert_eq!(
        rpc.call("bdev_nvme_reset_controller", json!({ "name": "Nvme0" }))
            .unwrap(),
        true
    );
    let e = rpc
        .call("bdev_nvme_reset_controller", json!({ "name": "Nvme9" }))
        .unwrap_err();
    assert_eq!(e.0, -19, "{e:?}");
    kernel_round_trip("/dev/nbd0", 4096 * 77, &pattern(13, 128 * 1024));
    // The controller's health, as SPDK reports it.
    let h = rpc
        .call(
            "bdev_nvme_get_controller_health_info",
            json!({ "name": "Nvme0" }),
        )
        .unwrap();
    println!("health: {h}");
    assert_eq!(h["model_number"], "QEMU NVMe Ctrl");
    assert_eq!(h["traddr"], json!(traddr));
    let t = h["temperature_celsius"].as_i64().unwrap();
    assert!((0..100).contains(&t), "{h}");
    assert!(h["host_write_commands"].as_u64().unwrap() > 0, "{h}");
    // What went through NBD is what the appliance's bdev holds: its iostat
    // counted the writes.
    let st = rpc
        .call("bdev_get_iostat", json!({ "name": "Nvme0n1" }))
        .unwrap();
    let written = st["bdevs"][0]["bytes_written"].as_u64().unwrap();
    assert!(written >= 256 * 1024 + 4096, "{st}");
    assert_eq!(
        rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd0" }))
            .unwrap(),
        true
    );
    assert_eq!(
        rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd1" }))
            .unwrap(),
        true
    );
    assert_eq!(
        rpc.call("bdev_nvme_detach_controller", json!({ "name": "Nvme0" }))
            .unwrap(),
        true
    );
    let bdevs = rpc.call("bdev_get_bdevs", json!(null)).unwrap();
    let names: Vec<&str> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Malloc0"]);
    namespaces_come_and_go(&mut rpc, &sock);
    rpc.call("spdk_kill_instance", json!({ "sig_name": "SIGTERM" }))
        .unwrap();
    let st = running.wait();
    assert!(st.success(), "appliance exit: {st}");
}

/// The second controller sits in an NVM subsystem with namespace 2
/// detached (ci/guest-tier); `bdev_nvme_set_hotplug` finds it and attaches
/// it as HotInNvme0. The Namespace Attachment command, sent through
/// `bdev_nvme_send_cmd`, attaches it: the controller's Namespace Attribute
/// Changed event makes the appliance register `HotInNvme0n2`, usable through
/// NBD; detached, the bdev goes; attached again, it comes back. Then the
/// controller is detached while a writer runs on its export: the writer's
/// I/O fails, the bdevs go, the appliance keeps answering.
fn namespaces_come_and_go(rpc: &mut RpcConn, sock: &std::path::Path) {
    let ctrls = vfio_controllers();
    let traddr = ctrls.get(1).expect("a second controller bound to vfio-pci");
    // Hotplug finds the controller no one drives (the first one, detached
    // by request above, is left alone) and attaches it as HotInNvme0.
    assert_eq!(
        rpc.call(
            "bdev_nvme_set_hotplug",
            json!({ "enable": true, "period_us": 20000 })
        )
        .unwrap(),
        true
    );
    rpc.call(
        "bdev_get_bdevs",
        json!({ "name": "HotInNvme0n1", "timeout": 10000 }),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rpc.call("bdev_nvme_set_hotplug", json!({ "enable": false }))
            .unwrap(),
        true
    );
    let names = bdev_names(rpc);
    assert!(
        !names.iter().any(|n| n.starts_with("HotInNvme1")),
        "the detached controller stays detached: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "HotInNvme0n2"),
        "namespace 2 starts detached"
    );
    let c = rpc
        .call("bdev_nvme_get_controllers", json!({ "name": "HotInNvme0" }))
        .unwrap();
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled");
    assert_eq!(c[0]["ctrlrs"][0]["trid"]["traddr"], json!(traddr));
    let cntlid = c[0]["ctrlrs"][0]["cntlid"].as_u64().unwrap() as u16;
    // Round 0 through SPDK's spdk-rpc, round 1 through the raw client.
    for round in 0..2 {
        let via = (round == 0).then_some(sock);
        assert_eq!(
            namespace_attachment(rpc, via, "HotInNvme0", 2, cntlid, true),
            0,
            "attach"
        );
        let b = rpc
            .call(
                "bdev_get_bdevs",
                json!({ "name": "HotInNvme0n2", "timeout": 10000 }),
            )
            .unwrap();
        assert_eq!(b[0]["block_size"], 512, "{b}");
        assert_eq!(b[0]["num_blocks"], 262144, "{b}");
        println!("round {round}: HotInNvme0n2 appeared");
        if round == 0 {
            assert_eq!(
                rpc.call(
                    "nbd_start_disk",
                    json!({ "bdev_name": "HotInNvme0n2", "nbd_device": "/dev/nbd2" })
                )
                .unwrap(),
                "/dev/nbd2"
            );
            wait_for("/dev/nbd2's size", || {
                std::fs::read_to_string("/sys/block/nbd2/size").is_ok_and(|s| s.trim() == "262144")
            });
            kernel_round_trip("/dev/nbd2", 512 * 1000, &pattern(17, 64 * 1024));
            rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd2" }))
                .unwrap();
        }
        assert_eq!(
            namespace_attachment(rpc, via, "HotInNvme0", 2, cntlid, false),
            0,
            "detach"
        );
        wait_for("HotInNvme0n2 to go", || {
            !bdev_names(rpc).iter().any(|n| n == "HotInNvme0n2")
        });
        println!("round {round}: HotInNvme0n2 went away");
    }
    // Detached under load: a writer on the export of HotInNvme0n1.
    assert_eq!(
        rpc.call(
            "nbd_start_disk",
            json!({ "bdev_name": "HotInNvme0n1", "nbd_device": "/dev/nbd2" })
        )
        .unwrap(),
        "/dev/nbd2"
    );
    wait_for("/dev/nbd2's size", || {
        std::fs::read_to_string("/sys/block/nbd2/size").is_ok_and(|s| s.trim() != "0")
    });
    // The writer: O_DIRECT 64 KiB writes in a loop until one fails.
    let writer = std::thread::spawn(|| {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open("/dev/nbd2")
            .unwrap();
        let mut raw = vec![0x5au8; 64 * 1024 + 4096];
        let at = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[at..at + 64 * 1024];
        let mut n = 0u64;
        loop {
            if let Err(e) = f.write_at(buf, (n % 1024) * 64 * 1024) {
                return (n, e);
            }
            n += 1;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!writer.is_finished(), "the writer is running");
    // Detached with SPDK's spdk-rpc (it prints nothing for `true`; an
    // error would make it exit non-zero). Its interpreter starts slowly
    // under TCG: the writer's end is measured from the call's return.
    let out = common::guest_spdk_rpc(sock, &["bdev_nvme_detach_controller", "HotInNvme0"]);
    assert_eq!(out.trim(), "", "{out}");
    let returned = Instant::now();
    while !writer.is_finished() {
        assert!(
            returned.elapsed() < Duration::from_secs(5),
            "the writer still runs 5 s after the detach returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (writes, err) = writer.join().unwrap();
    println!(
        "detached under load: the writer's write {writes} failed ({err}); it ended {:?} after the detach call returned",
        returned.elapsed()
    );
    assert!(writes > 0, "writes went through before the detach");
    assert!(
        !bdev_names(rpc).iter().any(|n| n.starts_with("HotInNvme0")),
        "its bdevs are gone"
    );
    assert!(
        rpc.call("bdev_nvme_get_controllers", json!(null))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "HotInNvme0")
    );
    let _ = rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd2" }));
}
