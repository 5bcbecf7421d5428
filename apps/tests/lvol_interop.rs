//! An lvstore SPDK v24.09 made on a file (the committed fixture
//! `bdev/tests/fixtures/blob/spdk-v24.09-lvs0`, made by the peer binaries
//! as its MANIFEST.md says) appears through `bdev_aio_create`: the store,
//! its volumes, snapshot and clone, with their names and UUIDs (the
//! blobs' xattrs) and relations, as SPDK itself listed them
//! (`bdev_lvol_get_lvstores`, `bdev_lvol_get_lvols`, `bdev_get_bdevs`
//! beside the image), and every volume's data reads back as written.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Appliance, TempDir, tool};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bdev/tests/fixtures/blob/spdk-v24.09-lvs0")
}

fn spdk_said(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join(name)).unwrap()).unwrap()
}

/// The MANIFEST's pattern of a write with `seed`, `len` bytes.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len)
        .map(|i| ((i * 13 + seed as usize) & 0xff) as u8)
        .collect();
    for (k, blk) in b.chunks_mut(512).enumerate() {
        blk[..4].copy_from_slice(&seed.to_le_bytes());
        blk[4..8].copy_from_slice(&(k as u32).to_le_bytes());
    }
    b
}

fn put(img: &mut [u8], at: usize, data: &[u8]) {
    img[at..at + data.len()].copy_from_slice(data);
}

#[test]
fn an_lvstore_spdk_made_appears_with_its_volumes_and_data() {
    tool("spdk-rpc", "SPDK_RPC");
    tool("qemu-img", "QEMU_IMG");
    let dir = TempDir::new("lvinterop");
    let img = dir.join("store.img");
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(fixture().join("store.img.gz"))
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(&img, o.stdout).unwrap();
    let a = Appliance::start(&dir, "a", &["-m", "0x1", "-s", "256"]);
    a.ok(&[
        "bdev_aio_create",
        img.to_str().unwrap(),
        "aio0",
        "512",
        "-u",
        "b10b0000-0000-4000-8000-000000000001",
    ]);
    a.ok(&["bdev_wait_for_examine"]);
    assert_eq!(
        a.json(&["bdev_lvol_get_lvstores"]),
        spdk_said("bdev_lvol_get_lvstores.json")
    );
    // Every field SPDK answered, the same (ours add Longhorn's).
    let ours = a.json(&["bdev_lvol_get_lvols"]);
    let theirs = spdk_said("bdev_lvol_get_lvols.json");
    assert_eq!(
        ours.as_array().unwrap().len(),
        theirs.as_array().unwrap().len()
    );
    for t in theirs.as_array().unwrap() {
        let o = ours
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["uuid"] == t["uuid"])
            .unwrap_or_else(|| panic!("{} missing", t["alias"]));
        for (k, v) in t.as_object().unwrap() {
            assert_eq!(&o[k], v, "{}: {k}", t["alias"]);
        }
    }
    let ours = a.json(&["bdev_get_bdevs"]);
    for t in spdk_said("bdev_get_bdevs.json").as_array().unwrap() {
        if t["product_name"] != "Logical Volume" {
            continue;
        }
        let o = ours
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == t["name"])
            .unwrap_or_else(|| panic!("bdev {} missing", t["name"]));
        for k in [
            "aliases",
            "product_name",
            "block_size",
            "num_blocks",
            "uuid",
        ] {
            assert_eq!(o[k], t[k], "{}: {k}", t["name"]);
        }
        for (k, v) in t["driver_specific"]["lvol"].as_object().unwrap() {
            assert_eq!(&o["driver_specific"]["lvol"][k], v, "{}: {k}", t["name"]);
        }
    }
    // The data, as the MANIFEST says it was written.
    let snap = pattern(1, 4 * MIB);
    let mut thick = snap.clone();
    put(&mut thick, 2 * MIB, &pattern(4, 32 << 10));
    let mut clone = snap.clone();
    put(&mut clone, 3 * MIB, &pattern(5, 32 << 10));
    let mut thin = vec![0u8; 8 * MIB];
    put(&mut thin, MIB, &pattern(2, 64 << 10));
    put(&mut thin, 5 * MIB + 4096, &pattern(3, 64 << 10));
    for (alias, want) in [
        ("lvs0/snap", snap),
        ("lvs0/thick", thick),
        ("lvs0/clone", clone),
        ("lvs0/thin", thin),
    ] {
        let b = a.json(&["bdev_get_bdevs", "-b", alias]);
        let name = b[0]["name"].as_str().unwrap().to_owned();
        let sock = dir.join(&format!("{}.nbd", alias.replace('/', "_")));
        a.call(
            "nbd_start_disk",
            json!({"bdev_name": name, "nbd_device": sock.to_str().unwrap()}),
        )
        .unwrap();
        let out = dir.join("out.raw");
        let _ = std::fs::remove_file(&out);
        let o = Command::new(tool("qemu-img", "QEMU_IMG"))
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(format!("nbd+unix:///{name}?socket={}", sock.display()))
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = std::fs::read(&out).unwrap();
        assert!(got == want, "{alias}: the data differs");
        a.ok(&["nbd_stop_disk", sock.to_str().unwrap()]);
    }
}
