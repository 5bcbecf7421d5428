//! Guest tier: a raid1 with a superblock over two emulated NVMe
//! namespaces (one on each controller, 4096-byte blocks) comes back after
//! the appliance restarts with no configuration at all: the controllers
//! attached in the reverse order, the RAID configuring after the first and
//! online after the second, by examine alone, with the data written
//! through the kernel's NBD client before the restart. Run by
//! `ci/guest-tier` (`#[ignore]`d on the host).

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::{RpcConn, guest_appliance, pattern, vfio_controllers, wait_for};
use serde_json::{Value, json};

/// Attaches controller `traddr` as `name`; returns its namespace with
/// 4096-byte blocks.
fn attach_4k(rpc: &mut RpcConn, name: &str, traddr: &str) -> String {
    let names = rpc
        .call(
            "bdev_nvme_attach_controller",
            json!({ "name": name, "trtype": "PCIe", "traddr": traddr }),
        )
        .unwrap();
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .find(|n| {
            rpc.call("bdev_get_bdevs", json!({ "name": n })).unwrap()[0]["block_size"] == 4096
        })
        .unwrap_or_else(|| panic!("{name} ({traddr}) has no 4096-byte namespace: {names}"))
}

fn raid(rpc: &mut RpcConn, name: &str) -> Value {
    rpc.call("bdev_raid_get_bdevs", json!({ "category": "all" }))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn export(rpc: &mut RpcConn, dev: &str) {
    assert_eq!(
        rpc.call(
            "nbd_start_disk",
            json!({ "bdev_name": "GR1", "nbd_device": dev })
        )
        .unwrap(),
        dev
    );
    let sys = format!("/sys/block/{}/size", dev.trim_start_matches("/dev/"));
    wait_for("the export's size", || {
        std::fs::read_to_string(&sys).is_ok_and(|s| s.trim() != "0")
    });
}

#[test]
#[ignore = "guest tier: needs two NVMe controllers bound to vfio-pci and the nbd module (ci/guest-tier)"]
fn a_raid1_over_nvme_assembles_after_a_restart_with_no_config() {
    let ctrls = vfio_controllers();
    assert!(ctrls.len() >= 2, "two controllers: {ctrls:?}");
    let dir = std::env::temp_dir().join(format!("raid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = pattern(0x77, 1 << 20);
    let (n0, n1);
    {
        let (mut running, mut rpc) = guest_appliance(&dir, &[]);
        n0 = attach_4k(&mut rpc, "RN0", &ctrls[0]);
        n1 = attach_4k(&mut rpc, "RN1", &ctrls[1]);
        rpc.call(
            "bdev_raid_create",
            json!({ "name": "GR1", "raid_level": "raid1", "base_bdevs": [n0, n1],
                    "superblock": true }),
        )
        .unwrap();
        assert_eq!(raid(&mut rpc, "GR1")["state"], "online");
        export(&mut rpc, "/dev/nbd3");
        let f = OpenOptions::new().write(true).open("/dev/nbd3").unwrap();
        f.write_all_at(&data, 4 << 20).unwrap();
        f.sync_all().unwrap();
        drop(f);
        rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd3" }))
            .unwrap();
        rpc.call("spdk_kill_instance", json!({ "sig_name": "SIGTERM" }))
            .unwrap();
        let st = running.wait();
        assert!(st.success(), "appliance exit: {st}");
    }
    // A new appliance, no configuration: the second controller first.
    let (mut running, mut rpc) = guest_appliance(&dir, &[]);
    assert_eq!(attach_4k(&mut rpc, "RN1", &ctrls[1]), n1);
    rpc.call("bdev_wait_for_examine", Value::Null).unwrap();
    let r = raid(&mut rpc, "GR1");
    assert_eq!(r["state"], "configuring", "{r}");
    assert_eq!(r["num_base_bdevs_discovered"], 1);
    assert_eq!(attach_4k(&mut rpc, "RN0", &ctrls[0]), n0);
    rpc.call("bdev_wait_for_examine", Value::Null).unwrap();
    let r = raid(&mut rpc, "GR1");
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(r["num_base_bdevs_discovered"], 2);
    export(&mut rpc, "/dev/nbd3");
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let f = OpenOptions::new().read(true).open("/dev/nbd3").unwrap();
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 4 << 20).unwrap();
    drop(f);
    assert!(got == data, "the data written before the restart");
    println!("GR1 over {n0} and {n1} came back after the restart with its data");
    rpc.call("nbd_stop_disk", json!({ "nbd_device": "/dev/nbd3" }))
        .unwrap();
    // Cleared, so no later test finds the RAID on these namespaces.
    rpc.call(
        "bdev_raid_delete",
        json!({ "name": "GR1", "clear_sb": true }),
    )
    .unwrap();
    rpc.call("spdk_kill_instance", json!({ "sig_name": "SIGTERM" }))
        .unwrap();
    let st = running.wait();
    assert!(st.success(), "appliance exit: {st}");
}
