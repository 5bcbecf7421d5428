//! Guest tier: the appliance on real (emulated) hardware. Started in the
//! guest with hugepage memory, driven over its JSON-RPC socket: it attaches
//! the first NVMe controller bound to vfio-pci (`bdev_nvme_attach_controller`)
//! and exports a namespace and a malloc bdev through the kernel's NBD client
//! (`nbd_start_disk` with `/dev/nbdX`); data written to the kernel's block
//! devices is read back through them and through the appliance's own
//! bdevs. Run by `ci/guest-tier` (`#[ignore]`d on the host).

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::RpcConn;
use serde_json::json;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn first_vfio_controller() -> String {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/bus/pci/devices").unwrap() {
        let p = e.unwrap().path();
        let class = std::fs::read_to_string(p.join("class")).unwrap();
        let driver = std::fs::read_link(p.join("driver"))
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        if class.trim() == "0x010802" && driver.as_deref() == Some("vfio-pci") {
            found.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
        .into_iter()
        .next()
        .expect("an NVMe controller bound to vfio-pci")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` at `offset` of block device `dev` with O_DIRECT-free
/// buffered I/O plus fsync, then reads it back from a fresh open.
fn kernel_round_trip(dev: &str, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev}: {e}"));
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Drop the page cache so the read goes through NBD to the appliance.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let mut f = OpenOptions::new().read(true).open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut got = vec![0u8; data.len()];
    f.read_exact(&mut got).unwrap();
    assert!(got == data, "{dev}: read back differs at offset {offset}");
}

#[test]
#[ignore = "guest tier: needs an NVMe controller bound to vfio-pci and the nbd module (ci/guest-tier)"]
fn nvme_attach_and_kernel_nbd_export() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("appl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("spdk.sock");
    let bin = std::env::var("APPLIANCE_BIN").unwrap_or_else(|_| "appliance".into());
    let log = std::fs::File::create(dir.join("appliance.log")).unwrap();
    let child = Command::new(&bin)
        .args(["-m", "0x3", "-s", "256", "-r"])
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let _running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "the appliance did not listen: {}",
            std::fs::read_to_string(dir.join("appliance.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rpc = RpcConn::connect(&sock);
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
    rpc.call("spdk_kill_instance", json!({ "sig_name": "SIGTERM" }))
        .unwrap();
}
