//! `bdev_blobstore_check` through the appliance: SPDK's lvstore fixtures
//! copied onto malloc bdevs with `qemu-img convert` over NBD, then checked
//! over JSON-RPC — the clean one clean with its five blobs, the one killed
//! mid-write recovered by a scan and consistent; a bdev holding no store
//! and a missing bdev are errors that say so.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Appliance, TempDir, tool};
use serde_json::json;

fn fixture(dir: &TempDir, which: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bdev/tests/fixtures/blob")
        .join(which)
        .join("store.img.gz");
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(&src)
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {}", src.display());
    let out = dir.join(&format!("{which}.img"));
    std::fs::write(&out, o.stdout).unwrap();
    out
}

fn copy_in(a: &Appliance, dir: &TempDir, bdev: &str, img: &Path) {
    let sock = dir.join(&format!("{bdev}.nbd"));
    a.call(
        "nbd_start_disk",
        json!({"bdev_name": bdev, "nbd_device": sock.display().to_string()}),
    )
    .unwrap();
    let uri = format!("nbd+unix:///{bdev}?socket={}", sock.display());
    let o = Command::new(tool("qemu-img", "QEMU_IMG"))
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(img)
        .arg(&uri)
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    a.call(
        "nbd_stop_disk",
        json!({"nbd_device": sock.display().to_string()}),
    )
    .unwrap();
}

#[test]
fn blobstore_check_over_json_rpc() {
    tool("qemu-img", "QEMU_IMG");
    let dir = TempDir::new("bscheck");
    let a = Appliance::start(&dir, "a", &["-m", "0x1"]);
    for (bdev, which) in [
        ("Clean", "spdk-v24.09-lvs0"),
        ("Dirty", "spdk-v24.09-dirty"),
    ] {
        a.call(
            "bdev_malloc_create",
            json!({"name": bdev, "num_blocks": 65536, "block_size": 512}),
        )
        .unwrap();
        copy_in(&a, &dir, bdev, &fixture(&dir, which));
    }
    let r = a
        .call("bdev_blobstore_check", json!({"bdev_name": "Clean"}))
        .unwrap();
    assert_eq!(r["bstype"], "LVOLSTORE", "{r}");
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["blobs"], 5, "{r}");
    assert_eq!(r["cluster_size"], 1 << 20, "{r}");
    assert_eq!(r["problems"], json!([]), "{r}");
    let r = a
        .call("bdev_blobstore_check", json!({"bdev_name": "Dirty"}))
        .unwrap();
    assert_eq!(r["clean"], false, "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["blobs"], 3, "{r}");
    assert_eq!(r["problems"], json!([]), "{r}");
    // No store, no bdev, bad parameters.
    a.call(
        "bdev_malloc_create",
        json!({"name": "Empty", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    let (code, msg) = a
        .call("bdev_blobstore_check", json!({"bdev_name": "Empty"}))
        .unwrap_err();
    assert_eq!(code, -22);
    assert!(msg.contains("Empty") && msg.contains("SPDKBLOB"), "{msg}");
    let (code, msg) = a
        .call("bdev_blobstore_check", json!({"bdev_name": "nope"}))
        .unwrap_err();
    assert_eq!(code, -19, "{msg}");
    let (code, _) = a
        .call("bdev_blobstore_check", json!({"name": "Clean"}))
        .unwrap_err();
    assert_eq!(code, -32602);
}
