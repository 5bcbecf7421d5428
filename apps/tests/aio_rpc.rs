//! `bdev_aio_create`, `bdev_aio_rescan`, `bdev_aio_delete` (and the same
//! for `bdev_uring_*`) through SPDK's own client (`spdk-rpc`): the bdev's
//! report, a rescan after the file grew, `save_config`, and SPDK's codes
//! for a missing file (-2), a taken name (-17) and an unknown bdev (-19).

mod common;

use common::{Appliance, TempDir, tool};
use serde_json::json;

#[test]
fn aio_methods_through_spdk_rpc() {
    tool("spdk-rpc", "SPDK_RPC");
    let dir = TempDir::new("aio");
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let a = Appliance::start(&dir, "a", &["-m", "0x1"]);
    let path = img.display().to_string();
    assert_eq!(
        a.ok(&["bdev_aio_create", &path, "aio0", "4096"]).trim(),
        "aio0"
    );
    let b = a.json(&["bdev_get_bdevs", "-b", "aio0"]);
    assert_eq!(b[0]["product_name"], "AIO disk", "{b}");
    assert_eq!(b[0]["block_size"], 4096);
    assert_eq!(b[0]["num_blocks"], 4096);
    assert_eq!(b[0]["driver_specific"]["aio"]["filename"], path.as_str());
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    a.ok(&["bdev_aio_rescan", "aio0"]);
    let b = a.json(&["bdev_get_bdevs", "-b", "aio0"]);
    assert_eq!(b[0]["num_blocks"], 8192);
    let cfg = a.json(&["save_config"]);
    let bdev = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap();
    let entry = bdev["config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_aio_create")
        .unwrap();
    assert_eq!(entry["params"]["name"], "aio0");
    assert_eq!(entry["params"]["filename"], path.as_str());
    assert_eq!(entry["params"]["block_size"], 4096);
    let (code, msg) = a
        .call(
            "bdev_aio_create",
            json!({"name": "aio1", "filename": dir.join("nope.img").display().to_string(), "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!((code, msg.as_str()), (-2, "No such file or directory"));
    let (code, _) = a
        .call(
            "bdev_aio_create",
            json!({"name": "aio0", "filename": path, "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!(code, -17);
    a.ok(&["bdev_aio_delete", "aio0"]);
    let (code, _) = a
        .call("bdev_aio_rescan", json!({"name": "aio0"}))
        .unwrap_err();
    assert_eq!(code, -19);
}

#[test]
fn uring_methods_through_spdk_rpc() {
    tool("spdk-rpc", "SPDK_RPC");
    let dir = TempDir::new("uring");
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let a = Appliance::start(&dir, "a", &["-m", "0x1"]);
    let path = img.display().to_string();
    assert_eq!(
        a.ok(&["bdev_uring_create", &path, "ur0", "512"]).trim(),
        "ur0"
    );
    let b = a.json(&["bdev_get_bdevs", "-b", "ur0"]);
    assert_eq!(b[0]["product_name"], "URING bdev", "{b}");
    assert_eq!(b[0]["num_blocks"], 32768);
    assert_eq!(b[0]["driver_specific"]["uring"]["filename"], path.as_str());
    let cfg = a.json(&["save_config"]);
    assert!(cfg.to_string().contains("bdev_uring_create"), "{cfg}");
    let (code, msg) = a
        .call(
            "bdev_uring_create",
            json!({"name": "ur1", "filename": dir.join("nope.img").display().to_string(), "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!((code, msg.as_str()), (-2, "No such file or directory"));
    a.ok(&["bdev_uring_delete", "ur0"]);
    let (code, _) = a
        .call("bdev_uring_delete", json!({"name": "ur0"}))
        .unwrap_err();
    assert_eq!(code, -19);
}
