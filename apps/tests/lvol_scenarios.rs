//! SPDK's own lvol scenarios (its `test/lvol/*.sh`: basic, thin
//! provisioning, snapshot/clone, resize, rename, tasting, hot-remove),
//! step for step through SPDK's client (`spdk-rpc`), each on a malloc bdev
//! and on an AIO bdev over a file; data checks through NBD exports with
//! QEMU's `qemu-io` (SPDK uses the kernel's nbd with fio, dd and cmp: the
//! same patterns, offsets and sizes). Where SPDK's scripts have slips
//! (unset variables, a name that is no bdev), the step is what the script
//! meant; where this appliance differs on purpose it says so: a thick
//! volume's clusters are zeroed when made (SPDK leaves old data), a
//! snapshot with two clones is refused with -16 (SPDK: -1).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Appliance, TempDir, expect_error, qemu_io, random, tool};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 4 * MIB;

/// What the lvstores stand on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Malloc,
    Aio,
}

struct Bench {
    a: Appliance,
    dir: TempDir,
    kind: Kind,
    nbd: std::cell::Cell<u32>,
}

impl Bench {
    fn new(tag: &str, kind: Kind) -> Bench {
        tool("spdk-rpc", "SPDK_RPC");
        tool("qemu-io", "QEMU_IO");
        let dir = TempDir::new(tag);
        let a = Appliance::start(&dir, "a", &["-m", "0x3", "-s", "1024"]);
        Bench {
            a,
            dir,
            kind,
            nbd: std::cell::Cell::new(0),
        }
    }

    /// A base bdev of `mib` MiB with `bs`-byte blocks, named `name`.
    fn base(&self, name: &str, mib: u64, bs: u32) -> String {
        match self.kind {
            Kind::Malloc => self
                .a
                .ok(&[
                    "bdev_malloc_create",
                    "-b",
                    name,
                    &mib.to_string(),
                    &bs.to_string(),
                ])
                .trim()
                .to_owned(),
            Kind::Aio => {
                let f = self.file(name);
                std::fs::File::create(&f)
                    .unwrap()
                    .set_len(mib * MIB)
                    .unwrap();
                self.a
                    .ok(&[
                        "bdev_aio_create",
                        f.to_str().unwrap(),
                        name,
                        &bs.to_string(),
                    ])
                    .trim()
                    .to_owned()
            }
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(&format!("{name}.img"))
    }

    fn delete_base(&self, name: &str) {
        match self.kind {
            Kind::Malloc => self.a.ok(&["bdev_malloc_delete", name]),
            Kind::Aio => self.a.ok(&["bdev_aio_delete", name]),
        };
    }

    fn lvs(&self, uuid: &str) -> Value {
        self.a.json(&["bdev_lvol_get_lvstores", "-u", uuid])[0].clone()
    }

    fn bdev(&self, name: &str) -> Value {
        self.a.json(&["bdev_get_bdevs", "-b", name])[0].clone()
    }

    fn lvol(&self, name: &str) -> Value {
        self.bdev(name)["driver_specific"]["lvol"].clone()
    }

    fn fails(&self, args: &[&str]) {
        let o = self.a.spdk_rpc(args);
        assert!(
            !o.status.success(),
            "{args:?} should fail: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    fn volumes(&self) -> usize {
        self.a
            .json(&["bdev_get_bdevs"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["product_name"] == "Logical Volume")
            .count()
    }

    /// SPDK's `check_leftover_devices`: no bdevs, no lvstores.
    fn check_leftover(&self) {
        assert_eq!(self.a.json(&["bdev_get_bdevs"]), json!([]));
        assert_eq!(self.a.json(&["bdev_lvol_get_lvstores"]), json!([]));
    }

    /// Exports `bdev` over NBD; its URI.
    fn export(&self, bdev: &str) -> Nbd {
        self.nbd.set(self.nbd.get() + 1);
        let sock = self.dir.join(&format!("nbd{}.sock", self.nbd.get()));
        let s = sock.to_str().unwrap().to_owned();
        self.a.ok(&["nbd_start_disk", bdev, &s]);
        Nbd {
            uri: format!("nbd+unix:///{bdev}?socket={s}"),
            sock: s,
        }
    }

    fn stop(&self, n: Nbd) {
        self.a.ok(&["nbd_stop_disk", &n.sock]);
    }

    /// SPDK's `run_fio_test` with a pattern: write and verify, or verify.
    fn fio(&self, n: &Nbd, offset: u64, size: u64, write: bool, pattern: u8) {
        let mut cmds = Vec::new();
        let step = 16 * MIB;
        let mut at = offset;
        while at < offset + size {
            let k = step.min(offset + size - at);
            if write {
                cmds.push(format!("write -P {pattern:#x} {at} {k}"));
            }
            cmds.push(format!("read -P {pattern:#x} {at} {k}"));
            at += k;
        }
        let c: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(&n.uri, &c);
    }

    /// Reads `len` bytes at `offset` of an export (both multiples of 4 KiB).
    fn read(&self, n: &Nbd, offset: u64, len: u64) -> Vec<u8> {
        let out = self.dir.join("read.bin");
        let _ = std::fs::remove_file(&out);
        let o = Command::new(tool("qemu-img", "QEMU_IMG"))
            .args(["dd", "-f", "raw", "-O", "raw", "bs=4096"])
            .arg(format!("if={}", n.uri))
            .arg(format!("of={}", out.display()))
            .arg(format!("skip={}", offset / 4096))
            .arg(format!("count={}", len / 4096))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "qemu-img dd: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read(&out).unwrap()
    }

    /// Writes `data` at `offset` of an export.
    fn write(&self, n: &Nbd, offset: u64, data: &[u8]) {
        let f = self.dir.join("write.bin");
        std::fs::write(&f, data).unwrap();
        qemu_io(
            &n.uri,
            &[&format!("write -s {} {offset} {}", f.display(), data.len())],
        );
    }

    /// A write that must fail (read-only volume, past the end, no space).
    fn write_fails(&self, n: &Nbd, offset: u64, size: u64) {
        let o = Command::new(tool("qemu-io", "QEMU_IO"))
            .args([
                "-f",
                "raw",
                &n.uri,
                "-c",
                &format!("write -P 0x11 {offset} {size}"),
            ])
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success() || out.contains("failed"),
            "a write of {size} at {offset} should fail: {out}"
        );
    }
}

struct Nbd {
    uri: String,
    sock: String,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// An lvstore `name` on a new 128 MiB base: (base, uuid).
fn lvs128(b: &Bench, base: &str, name: &str) -> (String, String) {
    let m = b.base(base, 128, 512);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", &m, name])
            .trim()
            .to_owned();
    (m, u)
}

fn cleanup(b: &Bench, base: &str, lvs: &str) {
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", lvs]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", lvs]);
    b.delete_base(base);
    b.check_leftover();
}

// ---------------------------------------------------------------- basic.sh

fn basic(b: &mut Bench) {
    let a = &b.a;
    // test_construct_lvs
    let (m, u) = lvs128(b, "base0", "lvs_test");
    expect_error(
        a,
        &[
            "bdev_lvol_delete_lvstore",
            "-u",
            "00000000-0000-0000-0000-000000000000",
        ],
        -19,
        "No such device",
    );
    let l = b.lvs(&u);
    assert_eq!(
        (s(&l["uuid"]), s(&l["name"]), s(&l["base_bdev"])),
        (u.clone(), "lvs_test".into(), m.clone())
    );
    assert_eq!(l["cluster_size"], CLUSTER);
    assert_eq!(l["free_clusters"], l["total_data_clusters"]);
    assert_eq!(
        l["total_data_clusters"].as_u64().unwrap() * CLUSTER,
        124 * MIB,
        "{l}"
    );
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    b.fails(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.delete_base(&m);
    b.check_leftover();

    // test_construct_lvs_nonexistent_bdev
    expect_error(
        a,
        &["bdev_lvol_create_lvstore", "NotMalloc", "lvs_test"],
        -19,
        "No such device",
    );

    // test_construct_two_lvs_on_the_same_bdev
    let (m, u) = lvs128(b, "base0", "lvs_test");
    expect_error(
        a,
        &["bdev_lvol_create_lvstore", &m, "lvs_test2"],
        -1,
        "Operation not permitted",
    );
    cleanup(b, &m, &u);

    // test_construct_lvs_conflict_alias
    let (m1, u1) = lvs128(b, "base1", "lvs_test");
    let m2 = b.base("base2", 128, 512);
    expect_error(
        a,
        &["bdev_lvol_create_lvstore", &m2, "lvs_test"],
        -17,
        "File exists",
    );
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    b.delete_base(&m1);
    b.delete_base(&m2);
    b.check_leftover();

    // test_construct_lvs_different_cluster_size
    let (m1, u1) = lvs128(b, "base1", "lvs_test");
    assert_eq!(
        a.json(&["bdev_lvol_get_lvstores"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let m2 = b.base("base2", 128, 512);
    for c in [128 * MIB + 1, 128 * MIB, 128 * MIB - 1, 8191] {
        b.fails(&[
            "bdev_lvol_create_lvstore",
            &m2,
            "lvs2_test",
            "-c",
            &c.to_string(),
        ]);
    }
    assert_eq!(
        a.json(&["bdev_lvol_get_lvstores"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let u2 = a
        .ok(&["bdev_lvol_create_lvstore", &m2, "lvs2_test", "-c", "8192"])
        .trim()
        .to_owned();
    assert_eq!(
        a.json(&["bdev_lvol_get_lvstores"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-l", "lvs2_test"]);
    b.fails(&["bdev_lvol_get_lvstores", "-l", "lvs2_test"]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u2]);
    b.delete_base(&m1);
    b.delete_base(&m2);
    b.check_leftover();

    // test_construct_lvs_clear_methods
    let m = b.base("base0", 128, 512);
    let (code, msg) = a
        .call(
            "bdev_lvol_create_lvstore",
            json!({"bdev_name": m, "lvs_name": "lvs_x", "clear_method": "invalid123"}),
        )
        .unwrap_err();
    assert_eq!(
        (code, msg.as_str()),
        (-32602, "Invalid clear_method parameter")
    );
    assert_eq!(a.json(&["bdev_lvol_get_lvstores"]), json!([]));
    for cm in ["none", "unmap", "write_zeroes"] {
        let u = a
            .ok(&[
                "bdev_lvol_create_lvstore",
                &m,
                "lvs_test",
                "--clear-method",
                cm,
            ])
            .trim()
            .to_owned();
        let v = a
            .ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
            .trim()
            .to_owned();
        let bd = b.bdev(&v);
        assert_eq!((s(&bd["name"]), s(&bd["uuid"])), (v.clone(), v.clone()));
        assert_eq!(bd["aliases"][0], "lvs_test/lvol_test");
        assert_eq!(
            (bd["block_size"].as_u64(), bd["num_blocks"].as_u64()),
            (Some(512), Some(253952))
        );
        a.ok(&["bdev_lvol_delete", &v]);
        b.fails(&["bdev_get_bdevs", "-b", &v]);
        a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
        b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    }
    b.delete_base(&m);
    b.check_leftover();

    // test_construct_lvol_fio_clear_method_none / _unmap: a volume's
    // clusters after its deletion (none: its data stays; unmap: zeros),
    // and the gap between the metadata and the first data cluster.
    for (cm, left) in [("none", 0xddu8), ("unmap", 0x00)] {
        let m = b.base("base0", 256, 512);
        let u = a
            .ok(&["bdev_lvol_create_lvstore", &m, "lvs_test"])
            .trim()
            .to_owned();
        assert_eq!(b.lvs(&u)["total_data_clusters"], 63);
        let v = a
            .ok(&["bdev_lvol_create", "-c", cm, "-u", &u, "lvol_test", "4"])
            .trim()
            .to_owned();
        let n = b.export(&v);
        b.fio(&n, 0, CLUSTER, true, 0xdd);
        b.stop(n);
        a.ok(&["bdev_lvol_delete", &v]);
        a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
        let n = b.export(&m);
        let md_end = 82 * 4096;
        b.fio(&n, md_end, CLUSTER - md_end, false, 0);
        b.fio(&n, CLUSTER, CLUSTER, false, left);
        b.stop(n);
        b.delete_base(&m);
        b.check_leftover();
    }

    // test_construct_lvol
    let (m, u) = lvs128(b, "base0", "lvs_test");
    for by in [["-u", u.as_str()], ["-l", "lvs_test"]] {
        let v = a
            .ok(&["bdev_lvol_create", by[0], by[1], "lvol_test", "124"])
            .trim()
            .to_owned();
        let bd = b.bdev(&v);
        assert_eq!((s(&bd["name"]), s(&bd["uuid"])), (v.clone(), v.clone()));
        assert_eq!(bd["aliases"][0], "lvs_test/lvol_test");
        assert_eq!(
            (bd["block_size"].as_u64(), bd["num_blocks"].as_u64()),
            (Some(512), Some(253952))
        );
        assert_eq!(bd["driver_specific"]["lvol"]["lvol_store_uuid"], u.as_str());
        a.ok(&["bdev_lvol_delete", &v]);
        b.fails(&["bdev_get_bdevs", "-b", &v]);
    }
    cleanup(b, &m, &u);

    // test_construct_multi_lvols
    let (m, u) = lvs128(b, "base0", "lvs_test");
    for _ in 0..2 {
        for i in 1..=4 {
            let v = a
                .ok(&["bdev_lvol_create", "-u", &u, &format!("lvol_test{i}"), "28"])
                .trim()
                .to_owned();
            let bd = b.bdev(&v);
            assert_eq!(bd["aliases"][0], format!("lvs_test/lvol_test{i}"));
            assert_eq!(bd["num_blocks"], 57344);
        }
        assert_eq!(b.volumes(), 4);
        let all = a.json(&["bdev_get_bdevs"]);
        for bd in all
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["product_name"] == "Logical Volume")
        {
            a.ok(&["bdev_lvol_delete", bd["name"].as_str().unwrap()]);
        }
        assert_eq!(b.volumes(), 0);
    }
    cleanup(b, &m, &u);

    // test_construct_lvols_conflict_alias: one name in two stores
    let (m1, u1) = lvs128(b, "base1", "lvs_test1");
    let v1 = a
        .ok(&["bdev_lvol_create", "-l", "lvs_test1", "lvol_test", "124"])
        .trim()
        .to_owned();
    let m2 = b.base("base2", 64, 512);
    let u2 = a
        .ok(&["bdev_lvol_create_lvstore", &m2, "lvs_test2"])
        .trim()
        .to_owned();
    let v2 = a
        .ok(&["bdev_lvol_create", "-l", "lvs_test2", "lvol_test", "60"])
        .trim()
        .to_owned();
    assert_eq!(b.bdev(&v1)["aliases"][0], "lvs_test1/lvol_test");
    assert_eq!(b.lvol(&v1)["lvol_store_uuid"], u1.as_str());
    assert_eq!(b.bdev(&v2)["aliases"][0], "lvs_test2/lvol_test");
    assert_eq!(b.lvol(&v2)["lvol_store_uuid"], u2.as_str());
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u2]);
    b.delete_base(&m1);
    b.fails(&["bdev_get_bdevs", "-b", &m1]);
    b.delete_base(&m2);
    b.check_leftover();

    // test_construct_lvol_inexistent_lvs
    let (m, u) = lvs128(b, "base0", "lvs_test");
    expect_error(
        a,
        &[
            "bdev_lvol_create",
            "-u",
            "00000000-0000-0000-0000-000000000000",
            "lvol_test",
            "124",
        ],
        -19,
        "No such device",
    );
    assert_eq!(b.volumes(), 0);
    cleanup(b, &m, &u);

    // test_construct_lvol_full_lvs
    let (m, u) = lvs128(b, "base0", "lvs_test");
    a.ok(&["bdev_lvol_create", "-l", "lvs_test", "lvol_test1", "124"]);
    expect_error(
        a,
        &["bdev_lvol_create", "-l", "lvs_test", "lvol_test2", "1"],
        -28,
        "No space left on device",
    );
    cleanup(b, &m, &u);

    // test_construct_lvol_alias_conflict
    let (m, u) = lvs128(b, "base0", "lvs_test");
    a.ok(&["bdev_lvol_create", "-l", "lvs_test", "lvol_test", "60"]);
    expect_error(
        a,
        &["bdev_lvol_create", "-l", "lvs_test", "lvol_test", "60"],
        -17,
        "File exists",
    );
    cleanup(b, &m, &u);

    // test_construct_nested_lvol
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v = a
        .ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
        .trim()
        .to_owned();
    let nu = a
        .ok(&["bdev_lvol_create_lvstore", &v, "nested_lvs"])
        .trim()
        .to_owned();
    let n1 = a
        .ok(&["bdev_lvol_create", "-u", &nu, "nested_lvol1", "120"])
        .trim()
        .to_owned();
    let bd = b.bdev(&n1);
    assert_eq!(bd["aliases"][0], "nested_lvs/nested_lvol1");
    assert_eq!(bd["num_blocks"], 245760);
    assert_eq!(
        bd["driver_specific"]["lvol"]["lvol_store_uuid"],
        nu.as_str()
    );
    b.fails(&["bdev_lvol_create", "-u", &nu, "nested_lvol2", "120"]);
    a.ok(&["bdev_lvol_delete", &n1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &nu]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &nu]);
    a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_lvol_list
    let (m, u) = lvs128(b, "base0", "lvs_test");
    assert_eq!(a.json(&["bdev_lvol_get_lvols"]), json!([]));
    let v = a
        .ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
        .trim()
        .to_owned();
    let l = a.json(&["bdev_lvol_get_lvols"]);
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(
        (s(&l[0]["uuid"]), s(&l[0]["name"]), s(&l[0]["alias"])),
        (v, "lvol_test".into(), "lvs_test/lvol_test".into())
    );
    assert_eq!(
        (s(&l[0]["lvs"]["name"]), s(&l[0]["lvs"]["uuid"])),
        ("lvs_test".into(), u.clone())
    );
    cleanup(b, &m, &u);
}

#[test]
fn spdk_lvol_basic_on_malloc() {
    let mut b = Bench::new("lvb-m", Kind::Malloc);
    basic(&mut b);
    // test_sigterm: with an lvstore loaded, SIGTERM ends cleanly.
    lvs128(&b, "base0", "lvs_test");
    assert!(b.a.signal_and_wait(libc::SIGTERM).success());
}

#[test]
fn spdk_lvol_basic_on_aio() {
    let mut b = Bench::new("lvb-a", Kind::Aio);
    basic(&mut b);
    lvs128(&b, "base0", "lvs_test");
    assert!(b.a.signal_and_wait(libc::SIGTERM).success());
}

// ---------------------------------------------------- thin_provisioning.sh

fn free(b: &Bench, u: &str) -> u64 {
    b.lvs(u)["free_clusters"].as_u64().unwrap()
}

fn thin_provisioning(b: &mut Bench) {
    // test_thin_lvol_check_space
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let start = free(b, &u);
    assert_eq!(start, 31);
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124", "-t"])
            .trim()
            .to_owned();
    assert_eq!(free(b, &u), start);
    let n = b.export(&v);
    b.fio(&n, 0, CLUSTER, true, 0xcc);
    assert_eq!(free(b, &u), start - 1);
    b.fio(&n, 6 * MIB, CLUSTER, true, 0xcc);
    assert_eq!(free(b, &u), start - 3);
    b.fio(&n, 12 * MIB, 124 * MIB - 12 * MIB, true, 0xcc);
    assert_eq!(free(b, &u), 0);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    b.fails(&["bdev_get_bdevs", "-b", &v]);
    assert_eq!(free(b, &u), start);
    cleanup(b, &m, &u);

    // test_thin_lvol_check_zeroes
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v0 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test0", "124"])
            .trim()
            .to_owned();
    let v1 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test1", "124", "-t"])
            .trim()
            .to_owned();
    let n0 = b.export(&v0);
    let n1 = b.export(&v1);
    b.fio(&n0, 0, 124 * MIB, true, 0xcc);
    b.fio(&n1, 0, 124 * MIB, false, 0);
    b.stop(n0);
    b.stop(n1);
    b.a.ok(&["bdev_lvol_delete", &v1]);
    b.a.ok(&["bdev_lvol_delete", &v0]);
    cleanup(b, &m, &u);

    // test_thin_lvol_check_integrity
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124", "-t"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.fio(&n, 0, 124 * MIB, true, 0xcc);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_thin_lvol_resize
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "60", "-t"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.fio(&n, 0, 60 * MIB, true, 0xcc);
    b.stop(n);
    let start = free(b, &u);
    assert_eq!(start, 16);
    b.a.ok(&["bdev_lvol_resize", &v, "124"]);
    let bd = b.bdev(&v);
    assert_eq!(
        (bd["block_size"].as_u64(), bd["num_blocks"].as_u64()),
        (Some(512), Some(253952))
    );
    assert_eq!(free(b, &u), start);
    let n = b.export(&v);
    b.fio(&n, 0, 124 * MIB, true, 0xcc);
    b.stop(n);
    assert_eq!(free(b, &u), 0);
    b.a.ok(&["bdev_lvol_resize", &v, "28"]);
    assert_eq!(free(b, &u), (124 - 28) / 4);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_thin_overprovisioning
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v1 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test1", "124", "-t"])
            .trim()
            .to_owned();
    let v2 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test2", "124", "-t"])
            .trim()
            .to_owned();
    let n1 = b.export(&v1);
    let n2 = b.export(&v2);
    let fill = 60 * MIB;
    b.fio(&n1, 0, fill, true, 0xcc);
    b.fio(&n2, 0, fill, true, 0xcc);
    b.write_fails(&n2, fill, 64 * MIB);
    b.fio(&n1, 0, fill, false, 0xcc);
    b.fio(&n1, fill, 64 * MIB, false, 0);
    b.stop(n1);
    b.stop(n2);
    b.a.ok(&["bdev_lvol_delete", &v2]);
    b.a.ok(&["bdev_lvol_delete", &v1]);
    cleanup(b, &m, &u);
}

#[test]
fn spdk_lvol_thin_provisioning_on_malloc() {
    thin_provisioning(&mut Bench::new("lvt-m", Kind::Malloc));
}

#[test]
fn spdk_lvol_thin_provisioning_on_aio() {
    thin_provisioning(&mut Bench::new("lvt-a", Kind::Aio));
}

// ------------------------------------------------------- snapshot_clone.sh

/// Checks the 4 MiB clusters of an export hold `pattern[i]` each.
fn clusters(b: &Bench, n: &Nbd, pattern: &[u8]) {
    for (i, p) in pattern.iter().enumerate() {
        b.fio(n, i as u64 * CLUSTER, CLUSTER, false, *p);
    }
}

fn sorted(v: &Value) -> Vec<String> {
    let mut x: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    x.sort();
    x
}

fn snapshot_clone(b: &mut Bench) {
    // test_snapshot_compare_with_lvol_bdev
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v1 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test1", "20", "-t"])
            .trim()
            .to_owned();
    let v2 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test2", "20"])
            .trim()
            .to_owned();
    let n = b.export(&v1);
    b.write(&n, 0, &random((2 * CLUSTER) as usize, 1));
    b.stop(n);
    let n = b.export(&v2);
    b.write(&n, 0, &random((5 * CLUSTER) as usize, 2));
    b.stop(n);
    let s1 =
        b.a.ok(&[
            "bdev_lvol_snapshot",
            "lvs_test/lvol_test1",
            "lvol_snapshot1",
        ])
        .trim()
        .to_owned();
    let s2 =
        b.a.ok(&[
            "bdev_lvol_snapshot",
            "lvs_test/lvol_test2",
            "lvol_snapshot2",
        ])
        .trim()
        .to_owned();
    let n = b.export(&s1);
    b.write_fails(&n, 0, CLUSTER);
    b.stop(n);
    let (n0, n1, n2, n3) = (b.export(&v1), b.export(&v2), b.export(&s1), b.export(&s2));
    assert!(b.read(&n0, 0, 20 * MIB) == b.read(&n2, 0, 20 * MIB));
    assert!(b.read(&n1, 0, 20 * MIB) == b.read(&n3, 0, 20 * MIB));
    b.write(&n0, 2 * CLUSTER, &random((2 * CLUSTER) as usize, 3));
    assert!(b.read(&n0, 0, 20 * MIB) != b.read(&n2, 0, 20 * MIB));
    for n in [n0, n1, n2, n3] {
        b.stop(n);
    }
    for v in [&v1, &s1, &v2, &s2] {
        b.a.ok(&["bdev_lvol_delete", v]);
        b.fails(&["bdev_get_bdevs", "-b", v]);
    }
    cleanup(b, &m, &u);

    // test_create_snapshot_with_io: a snapshot taken while writes run.
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "60", "-t"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    let uri = n.uri.clone();
    let io = std::thread::spawn(move || {
        for _ in 0..3 {
            qemu_io(&uri, &["write -P 0xcc 0 60M", "read -P 0xcc 0 60M"]);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    io.join().unwrap();
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    cleanup(b, &m, &u);

    // test_create_snapshot_of_snapshot
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "40"])
            .trim()
            .to_owned();
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    b.fails(&[
        "bdev_lvol_snapshot",
        "lvs_test/lvol_snapshot",
        "lvol_snapshot2",
    ]);
    b.a.ok(&["bdev_lvol_delete", &v]);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    cleanup(b, &m, &u);

    // test_clone_snapshot_relations
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "20"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.fio(&n, 0, 20 * MIB, true, 0xcc);
    b.stop(n);
    expect_error(
        &b.a,
        &["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"],
        -22,
        "Invalid argument",
    );
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    b.fails(&["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"]);
    let c1 =
        b.a.ok(&["bdev_lvol_clone", "lvs_test/lvol_snapshot", "clone_test1"])
            .trim()
            .to_owned();
    let c2 =
        b.a.ok(&["bdev_lvol_clone", "lvs_test/lvol_snapshot", "clone_test2"])
            .trim()
            .to_owned();
    let (n0, n1, n2) = (b.export(&c1), b.export(&sn), b.export(&c2));
    b.fio(&n0, 0, 10 * MIB, true, 0xaa);
    assert!(b.read(&n1, 0, 20 * MIB) == b.read(&n2, 0, 20 * MIB));
    assert!(b.read(&n0, 0, 20 * MIB) != b.read(&n1, 0, 20 * MIB));
    let sl = b.lvol("lvs_test/lvol_snapshot");
    assert_eq!(
        (sl["snapshot"].as_bool(), sl["clone"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(
        sorted(&sl["clones"]),
        ["clone_test1", "clone_test2", "lvol_test"]
    );
    for name in ["lvs_test/clone_test1", "lvs_test/lvol_test"] {
        let l = b.lvol(name);
        assert_eq!(
            (l["snapshot"].as_bool(), l["clone"].as_bool()),
            (Some(false), Some(true)),
            "{name}"
        );
        assert_eq!(l["base_snapshot"], "lvol_snapshot", "{name}");
    }
    b.stop(n0);
    b.a.ok(&["bdev_lvol_delete", &c1]);
    assert_eq!(
        sorted(&b.lvol("lvs_test/lvol_snapshot")["clones"]),
        ["clone_test2", "lvol_test"]
    );
    b.stop(n1);
    b.stop(n2);
    for x in [&v, &c2, &sn] {
        b.a.ok(&["bdev_lvol_delete", x]);
    }
    cleanup(b, &m, &u);

    // test_clone_inflate
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "28"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.fio(&n, 0, 28 * MIB, true, 0xcc);
    b.stop(n);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    assert_eq!(b.lvol(&v)["thin_provision"], true);
    let n = b.export(&v);
    b.fio(&n, 0, MIB, true, 0xdd);
    b.fio(&n, 21 * MIB, MIB, true, 0xdd);
    b.stop(n);
    b.a.ok(&["bdev_lvol_inflate", "lvs_test/lvol_test"]);
    assert_eq!(b.lvol(&v)["thin_provision"], false);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    let n = b.export(&v);
    b.fio(&n, 0, MIB, false, 0xdd);
    b.fio(&n, MIB, 20 * MIB, false, 0xcc);
    b.fio(&n, 21 * MIB, MIB, false, 0xdd);
    b.fio(&n, 22 * MIB, 6 * MIB, false, 0xcc);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_clone_decouple_parent
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "20", "-t"])
            .trim()
            .to_owned();
    expect_error(
        &b.a,
        &["bdev_lvol_decouple_parent", "lvs_test/lvol_test"],
        -22,
        "Invalid argument",
    );
    let n = b.export(&v);
    b.fio(&n, 0, 4 * CLUSTER, true, 0xdd);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    b.fio(&n, CLUSTER, CLUSTER, true, 0xcc);
    b.fio(&n, 3 * CLUSTER, CLUSTER, true, 0xcc);
    let sn2 =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot2"])
            .trim()
            .to_owned();
    b.fio(&n, CLUSTER, CLUSTER, true, 0xee);
    let want = [0xdd, 0xee, 0xdd, 0xcc, 0x00];
    clusters(b, &n, &want);
    b.a.ok(&["bdev_lvol_decouple_parent", "lvs_test/lvol_test"]);
    let l = b.lvol(&v);
    assert_eq!(
        (
            l["thin_provision"].as_bool(),
            l["clone"].as_bool(),
            l["snapshot"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(b.lvol(&sn)["clone"], false);
    let l2 = b.lvol(&sn2);
    assert_eq!(
        (l2["clone"].as_bool(), l2["snapshot"].as_bool()),
        (Some(true), Some(true))
    );
    b.a.ok(&["bdev_lvol_delete", &sn2]);
    clusters(b, &n, &want);
    b.a.ok(&["bdev_lvol_decouple_parent", "lvs_test/lvol_test"]);
    let l = b.lvol(&v);
    assert_eq!(
        (
            l["thin_provision"].as_bool(),
            l["clone"].as_bool(),
            l["snapshot"].as_bool()
        ),
        (Some(true), Some(false), Some(false))
    );
    b.a.ok(&["bdev_lvol_delete", &sn]);
    clusters(b, &n, &want);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_lvol_bdev_readonly
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "60"])
            .trim()
            .to_owned();
    b.a.ok(&["bdev_lvol_set_read_only", "lvs_test/lvol_test"]);
    let n = b.export(&v);
    b.write_fails(&n, 0, 20 * MIB);
    b.stop(n);
    let c =
        b.a.ok(&["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"])
            .trim()
            .to_owned();
    let n = b.export(&c);
    b.fio(&n, 0, 20 * MIB, true, 0xcc);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &c]);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_delete_snapshot_with_clone
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "60"])
            .trim()
            .to_owned();
    let size = 60 * MIB;
    let n0 = b.export(&v);
    b.fio(&n0, 0, size, true, 0xcc);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    let half = size / 2 - 512;
    b.fio(&n0, 0, half, true, 0xee);
    let n1 = b.export(&sn);
    b.fio(&n1, 0, half, false, 0xcc);
    b.fio(&n0, 0, half, false, 0xee);
    assert_eq!(b.lvol(&v)["clone"], true);
    b.stop(n1);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    assert_eq!(b.lvol(&v)["clone"], false);
    b.fio(&n0, 0, half, false, 0xee);
    b.fio(&n0, half, size - half, false, 0xcc);
    b.stop(n0);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_delete_snapshot_with_snapshot
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "24"])
            .trim()
            .to_owned();
    let size = 24 * MIB;
    let n0 = b.export(&v);
    b.fio(&n0, 0, size, true, 0xcc);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    assert_eq!(b.lvol(&v)["base_snapshot"], "lvol_snapshot");
    let (first, second) = (size / 3, size * 2 / 3);
    b.fio(&n0, first, second - first, true, 0xee);
    let n1 = b.export(&sn);
    b.fio(&n1, 0, size, false, 0xcc);
    let sn2 =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot2"])
            .trim()
            .to_owned();
    let l2 = b.lvol(&sn2);
    assert_eq!(l2["base_snapshot"], "lvol_snapshot");
    assert_eq!(sorted(&l2["clones"]), ["lvol_test"]);
    assert_eq!(
        (l2["clone"].as_bool(), l2["snapshot"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(sorted(&b.lvol(&sn)["clones"]), ["lvol_snapshot2"]);
    b.fio(&n1, 0, size, false, 0xcc);
    let n2 = b.export(&sn2);
    b.fio(&n2, 0, first, false, 0xcc);
    b.fio(&n2, first, second - first, false, 0xee);
    b.fio(&n2, second, size - second, false, 0xcc);
    b.fio(&n0, first, second - first, false, 0xee);
    b.fio(&n0, second, size - second, false, 0xcc);
    assert_eq!(b.lvol(&v)["base_snapshot"], "lvol_snapshot2");
    b.fio(&n0, second, size - second, true, 0xdd);
    b.fio(&n1, 0, size, false, 0xcc);
    b.stop(n2);
    b.stop(n1);
    b.a.ok(&["bdev_lvol_delete", &sn2]);
    let l = b.lvol(&v);
    assert_eq!(
        (l["clone"].as_bool(), s(&l["base_snapshot"])),
        (Some(true), "lvol_snapshot".into())
    );
    assert_eq!(sorted(&b.lvol(&sn)["clones"]), ["lvol_test"]);
    b.fio(&n0, first, second - first, false, 0xee);
    b.fio(&n0, second, size - second, false, 0xdd);
    b.stop(n0);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_bdev_lvol_delete_ordering
    let m = b.base("base0", 256, 512);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", &m, "lvs_name"])
            .trim()
            .to_owned();
    let l = b.lvs(&u);
    assert_eq!(
        (s(&l["name"]), s(&l["base_bdev"])),
        ("lvs_name".into(), m.clone())
    );
    let v =
        b.a.ok(&["bdev_lvol_create", "-t", "-u", &u, "lbd_test", "63"])
            .trim()
            .to_owned();
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", &v, "snapshot"])
            .trim()
            .to_owned();
    let bd = b.bdev("lvs_name/snapshot");
    assert_eq!(
        (s(&bd["name"]), s(&bd["product_name"]), s(&bd["aliases"][0])),
        (
            sn.clone(),
            "Logical Volume".into(),
            "lvs_name/snapshot".into()
        )
    );
    let c =
        b.a.ok(&["bdev_lvol_clone", "lvs_name/snapshot", "clone"])
            .trim()
            .to_owned();
    let bd = b.bdev("lvs_name/clone");
    assert_eq!(
        (s(&bd["name"]), s(&bd["aliases"][0])),
        (c.clone(), "lvs_name/clone".into())
    );
    // Two clones: refused, -16 here (SPDK answers -1).
    expect_error(
        &b.a,
        &["bdev_lvol_delete", &sn],
        -16,
        "Device or resource busy",
    );
    b.a.ok(&["bdev_lvol_delete", &v]);
    b.a.ok(&["bdev_lvol_delete", &c]);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    cleanup(b, &m, &u);

    // test_lvol_set_parent
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v1 =
        b.a.ok(&["bdev_lvol_create", "-t", "-u", &u, "lvol1", "20"])
            .trim()
            .to_owned();
    let v2 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol2", "20"])
            .trim()
            .to_owned();
    let fill = 10 * MIB;
    let n1 = b.export(&v1);
    b.fio(&n1, 0, fill, true, 0xaa);
    let head = b.read(&n1, 0, fill);
    let n2 = b.export(&v2);
    b.fio(&n2, fill, fill, true, 0xbb);
    let tail = b.read(&n2, fill, fill);
    b.stop(n2);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol2", "lvol_snapshot"])
            .trim()
            .to_owned();
    b.a.ok(&["bdev_lvol_set_parent", &v1, &sn]);
    b.a.ok(&["bdev_lvol_delete", &v2]);
    assert!(b.read(&n1, 0, fill) == head);
    assert!(b.read(&n1, fill, fill) == tail);
    b.stop(n1);
    b.a.ok(&["bdev_lvol_delete", &v1]);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    cleanup(b, &m, &u);

    // external_copy.sh: test_shallow_copy_compare
    let m = b.base("base0", 20, 512);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", &m, "lvs_test"])
            .trim()
            .to_owned();
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "16", "-t"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.write(&n, CLUSTER, &random(CLUSTER as usize, 11));
    b.write(&n, 3 * CLUSTER, &random(CLUSTER as usize, 12));
    b.stop(n);
    let sn =
        b.a.ok(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"])
            .trim()
            .to_owned();
    let n = b.export(&v);
    b.write(&n, 0, &random(CLUSTER as usize, 13));
    b.write(&n, 2 * CLUSTER, &random(CLUSTER as usize, 14));
    b.stop(n);
    b.a.ok(&["bdev_lvol_set_read_only", &v]);
    let ext = b.base("ext0", 16, 512);
    let op = b.a.json(&["bdev_lvol_start_shallow_copy", &v, &ext]);
    let id = op["operation_id"].as_u64().unwrap().to_string();
    let mut st = Value::Null;
    for _ in 0..100 {
        st = b.a.json(&["bdev_lvol_check_shallow_copy", &id]);
        if st["state"] != "in progress" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(st["state"], "complete", "{st}");
    assert_eq!(
        (
            st["copied_clusters"].as_u64(),
            st["total_clusters"].as_u64()
        ),
        (Some(2), Some(2))
    );
    expect_error(
        &b.a,
        &["bdev_lvol_check_shallow_copy", &id],
        -19,
        "No such device",
    );
    let (n0, n1) = (b.export(&v), b.export(&ext));
    assert!(b.read(&n0, 0, CLUSTER) == b.read(&n1, 0, CLUSTER));
    assert!(b.read(&n0, 2 * CLUSTER, CLUSTER) == b.read(&n1, 2 * CLUSTER, CLUSTER));
    b.fio(&n1, CLUSTER, CLUSTER, false, 0);
    b.fio(&n1, 3 * CLUSTER, CLUSTER, false, 0);
    b.stop(n0);
    b.stop(n1);
    b.delete_base(&ext);
    b.a.ok(&["bdev_lvol_delete", &sn]);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);
}

#[test]
fn spdk_lvol_snapshot_clone_on_malloc() {
    snapshot_clone(&mut Bench::new("lvs-m", Kind::Malloc));
}

#[test]
fn spdk_lvol_snapshot_clone_on_aio() {
    snapshot_clone(&mut Bench::new("lvs-a", Kind::Aio));
}

// --------------------------------------------------------------- resize.sh

fn resize(b: &mut Bench) {
    // test_resize_lvol
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "28"])
            .trim()
            .to_owned();
    let bd = b.bdev(&v);
    assert_eq!(
        (
            s(&bd["name"]),
            s(&bd["aliases"][0]),
            bd["num_blocks"].as_u64()
        ),
        (v.clone(), "lvs_test/lvol_test".into(), Some(57344))
    );
    b.a.ok(&["bdev_lvol_resize", &v, "56"]);
    assert_eq!(b.bdev(&v)["num_blocks"], 114688);
    b.a.ok(&["bdev_lvol_resize", "lvs_test/lvol_test", "112"]);
    assert_eq!(b.bdev(&v)["num_blocks"], 229376);
    b.a.ok(&["bdev_lvol_resize", "lvs_test/lvol_test", "0"]);
    assert_eq!(b.bdev(&v)["num_blocks"], 0);
    b.a.ok(&["bdev_lvol_delete", &v]);
    b.fails(&["bdev_get_bdevs", "-b", &v]);
    cleanup(b, &m, &u);

    // test_resize_lvol_negative
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
            .trim()
            .to_owned();
    expect_error(
        &b.a,
        &[
            "bdev_lvol_resize",
            "00000000-0000-0000-0000-000000000000",
            "0",
        ],
        -19,
        "No such device",
    );
    assert_eq!(b.bdev(&v)["num_blocks"], 253952);
    expect_error(
        &b.a,
        &["bdev_lvol_resize", &v, "128"],
        -28,
        "No space left on device",
    );
    assert_eq!(b.bdev(&v)["num_blocks"], 253952);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_resize_lvol_with_io_traffic
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "60"])
            .trim()
            .to_owned();
    assert_eq!(b.bdev(&v)["num_blocks"], 122880);
    let n = b.export(&v);
    b.write(&n, 0, &random((15 * CLUSTER) as usize, 21));
    b.write_fails(&n, 16 * CLUSTER, CLUSTER);
    b.a.ok(&["bdev_lvol_resize", &v, "120"]);
    assert_eq!(b.bdev(&v)["num_blocks"], 245760);
    b.stop(n);
    let n = b.export(&v);
    b.write(&n, 16 * CLUSTER, &random(CLUSTER as usize, 22));
    b.stop(n);
    b.a.ok(&["bdev_lvol_resize", &v, "4"]);
    assert_eq!(b.bdev(&v)["num_blocks"], 8192);
    let n = b.export(&v);
    b.write_fails(&n, CLUSTER, CLUSTER);
    b.stop(n);
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);

    // test_destroy_after_bdev_lvol_resize_positive
    let m = b.base("base0", 256, 512);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", &m, "lvs_test"])
            .trim()
            .to_owned();
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lbd_test", "28"])
            .trim()
            .to_owned();
    for x in [28u64, 32, 56, 84, 108, 0] {
        let r = x / 4 / 4 * 4;
        b.a.ok(&["bdev_lvol_resize", &v, &r.to_string()]);
        let bd = b.bdev(&v);
        assert_eq!(s(&bd["name"]), v);
        assert_eq!(bd["num_blocks"].as_u64().unwrap() * 512, r * MIB);
    }
    b.a.ok(&["bdev_lvol_delete", &v]);
    cleanup(b, &m, &u);
}

#[test]
fn spdk_lvol_resize_on_malloc() {
    resize(&mut Bench::new("lvr-m", Kind::Malloc));
}

#[test]
fn spdk_lvol_resize_on_aio() {
    resize(&mut Bench::new("lvr-a", Kind::Aio));
}

// --------------------------------------------------------------- rename.sh

fn rename(b: &mut Bench) {
    // test_rename_positive
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let mut vs = Vec::new();
    for i in 0..4 {
        let v =
            b.a.ok(&["bdev_lvol_create", "-u", &u, &format!("lvol_test{i}"), "28"])
                .trim()
                .to_owned();
        assert_eq!(
            sorted(&b.bdev(&v)["aliases"]),
            [format!("lvs_test/lvol_test{i}")]
        );
        vs.push(v);
    }
    b.a.ok(&["bdev_lvol_rename_lvstore", "lvs_test", "lvs_new"]);
    let l = b.lvs(&u);
    assert_eq!(
        (s(&l["name"]), s(&l["base_bdev"])),
        ("lvs_new".into(), m.clone())
    );
    assert_eq!(
        l["total_data_clusters"].as_u64().unwrap() * CLUSTER,
        124 * MIB
    );
    for (i, v) in vs.iter().enumerate() {
        let bd = b.bdev(v);
        assert_eq!(sorted(&bd["aliases"]), [format!("lvs_new/lvol_test{i}")]);
        assert_eq!(bd["driver_specific"]["lvol"]["lvol_store_uuid"], u.as_str());
        assert_eq!(bd["num_blocks"], 57344);
    }
    for (i, v) in vs.iter().enumerate() {
        b.a.ok(&[
            "bdev_lvol_rename",
            &format!("lvs_new/lvol_test{i}"),
            &format!("lbd_new{i}"),
        ]);
        let bd = b.bdev(v);
        assert_eq!(sorted(&bd["aliases"]), [format!("lvs_new/lbd_new{i}")]);
        assert_eq!(s(&bd["name"]), *v);
    }
    for i in 0..4 {
        b.a.ok(&["bdev_lvol_delete", &format!("lvs_new/lbd_new{i}")]);
    }
    cleanup(b, &m, &u);

    // test_rename_lvs_negative
    expect_error(
        &b.a,
        &["bdev_lvol_rename_lvstore", "NOTEXIST", "WHATEVER"],
        -2,
        "Lvol store NOTEXIST not found",
    );
    let (m1, u1) = lvs128(b, "base1", "lvs_test1");
    let (m2, u2) = lvs128(b, "base2", "lvs_test2");
    for (k, u) in [(1, &u1), (2, &u2)] {
        for i in 0..4 {
            b.a.ok(&[
                "bdev_lvol_create",
                "-u",
                u,
                &format!("lvol_test_{k}_{i}"),
                "28",
            ]);
        }
    }
    expect_error(
        &b.a,
        &["bdev_lvol_rename_lvstore", "lvs_test1", "lvs_test2"],
        -17,
        "File exists",
    );
    assert_eq!(
        (s(&b.lvs(&u1)["name"]), s(&b.lvs(&u1)["base_bdev"])),
        ("lvs_test1".into(), m1.clone())
    );
    assert_eq!(
        (s(&b.lvs(&u2)["name"]), s(&b.lvs(&u2)["base_bdev"])),
        ("lvs_test2".into(), m2.clone())
    );
    for k in 1..=2 {
        for i in 0..4 {
            let alias = format!("lvs_test{k}/lvol_test_{k}_{i}");
            assert_eq!(
                sorted(&b.bdev(&alias)["aliases"]),
                std::slice::from_ref(&alias)
            );
            b.a.ok(&["bdev_lvol_delete", &alias]);
        }
    }
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u2]);
    b.delete_base(&m1);
    b.delete_base(&m2);
    b.check_leftover();

    // test_lvol_rename_negative
    expect_error(
        &b.a,
        &["bdev_lvol_rename", "NOTEXIST", "WHATEVER"],
        -19,
        "No such device",
    );
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v1 =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test1", "60"])
            .trim()
            .to_owned();
    b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test2", "60"]);
    expect_error(
        &b.a,
        &["bdev_lvol_rename", "lvol_test1", "lvol_test2"],
        -19,
        "No such device",
    );
    expect_error(
        &b.a,
        &["bdev_lvol_rename", "lvs_test/lvol_test1", "lvol_test2"],
        -17,
        "File exists",
    );
    let bd = b.bdev(&v1);
    assert_eq!(sorted(&bd["aliases"]), ["lvs_test/lvol_test1"]);
    assert_eq!(bd["num_blocks"], 122880);
    b.a.ok(&["bdev_lvol_delete", "lvs_test/lvol_test1"]);
    b.a.ok(&["bdev_lvol_delete", "lvs_test/lvol_test2"]);
    cleanup(b, &m, &u);
}

#[test]
fn spdk_lvol_rename_on_malloc() {
    rename(&mut Bench::new("lvn-m", Kind::Malloc));
}

#[test]
fn spdk_lvol_rename_on_aio() {
    rename(&mut Bench::new("lvn-a", Kind::Aio));
}

// ------------------------------------------------------------ hotremove.sh

fn hotremove(b: &mut Bench) {
    // test_hotremove_lvol_store
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
            .trim()
            .to_owned();
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    assert_eq!(b.a.json(&["bdev_lvol_get_lvstores"]), json!([]));
    b.fails(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.fails(&["bdev_get_bdevs", "-b", &v]);
    assert_eq!(b.volumes(), 0);
    b.delete_base(&m);
    b.check_leftover();

    // test_hotremove_lvol_store_multiple_lvols
    let (m, u) = lvs128(b, "base0", "lvs_test");
    for i in 0..4 {
        b.a.ok(&["bdev_lvol_create", "-u", &u, &format!("lvol_test{i}"), "28"]);
    }
    assert_eq!(b.volumes(), 4);
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    assert_eq!(b.volumes(), 0);
    b.delete_base(&m);
    b.check_leftover();

    // test_hotremove_lvol_store_base
    let (m, u) = lvs128(b, "base0", "lvs_test");
    b.delete_base(&m);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    b.fails(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.check_leftover();

    // test_hotremove_lvol_store_base_with_lvols
    let (m, u) = lvs128(b, "base0", "lvs_test");
    let v =
        b.a.ok(&["bdev_lvol_create", "-u", &u, "lvol_test", "124"])
            .trim()
            .to_owned();
    b.bdev(&v);
    b.delete_base(&m);
    b.fails(&["bdev_get_bdevs", "-b", &v]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    b.fails(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.check_leftover();

    // test_bdev_lvol_delete_lvstore_with_clones / test_unregister_lvol_bdev
    for delete_store in [true, false] {
        let m = b.base("base0", 256, 512);
        let u =
            b.a.ok(&["bdev_lvol_create_lvstore", &m, "lvs_name"])
                .trim()
                .to_owned();
        let v =
            b.a.ok(&["bdev_lvol_create", "-u", &u, "lbd_test", "63"])
                .trim()
                .to_owned();
        let s1 =
            b.a.ok(&["bdev_lvol_snapshot", &v, "snapshot1"])
                .trim()
                .to_owned();
        assert_eq!(s(&b.bdev("lvs_name/snapshot1")["name"]), s1);
        let c =
            b.a.ok(&["bdev_lvol_clone", "lvs_name/snapshot1", "clone"])
                .trim()
                .to_owned();
        assert_eq!(s(&b.bdev("lvs_name/clone")["name"]), c);
        let s2 =
            b.a.ok(&["bdev_lvol_snapshot", &c, "snapshot2"])
                .trim()
                .to_owned();
        assert_eq!(s(&b.bdev("lvs_name/snapshot2")["name"]), s2);
        if delete_store {
            b.fails(&["bdev_lvol_delete", &s1]);
            b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
        }
        b.delete_base(&m);
        b.check_leftover();
    }
}

#[test]
fn spdk_lvol_hotremove_on_malloc() {
    hotremove(&mut Bench::new("lvh-m", Kind::Malloc));
}

#[test]
fn spdk_lvol_hotremove_on_aio() {
    hotremove(&mut Bench::new("lvh-a", Kind::Aio));
}

// -------------------------------------------------------------- tasting.sh

/// tasting.sh: lvstores on AIO files found again after a restart, with
/// every volume's `bdev_get_bdevs` entry unchanged; a deleted lvstore is
/// not. (Malloc bdevs do not outlive a restart: this one is AIO only.)
#[test]
fn spdk_lvol_tasting_on_aio() {
    let mut b = Bench::new("lvtaste", Kind::Aio);
    let f0 = b.file("aio_bdev_0");
    let f1 = b.file("aio_bdev_1");
    for f in [&f0, &f1] {
        std::fs::File::create(f)
            .unwrap()
            .set_len(400 * MIB)
            .unwrap();
    }
    let (p0, p1) = (
        f0.to_str().unwrap().to_owned(),
        f1.to_str().unwrap().to_owned(),
    );
    // test_tasting
    b.a.ok(&["bdev_aio_create", &p0, "aio_bdev0", "4096"]);
    b.a.ok(&["bdev_aio_create", &p1, "aio_bdev1", "4096"]);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", "aio_bdev0", "lvs_test"])
            .trim()
            .to_owned();
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.a.ok(&["bdev_aio_delete", "aio_bdev0"]);
    b.a.ok(&["bdev_aio_create", &p0, "aio_bdev0", "4096"]);
    b.a.ok(&["bdev_wait_for_examine"]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    let u1 =
        b.a.ok(&[
            "bdev_lvol_create_lvstore",
            "aio_bdev0",
            "lvs_test1",
            "-c",
            "1048576",
        ])
        .trim()
        .to_owned();
    let u2 =
        b.a.ok(&[
            "bdev_lvol_create_lvstore",
            "aio_bdev1",
            "lvs_test2",
            "-c",
            "33554432",
        ])
        .trim()
        .to_owned();
    for i in 1..=5 {
        let v =
            b.a.ok(&[
                "bdev_lvol_create",
                "-u",
                &u1,
                &format!("lvol_test{i}"),
                "12",
            ])
            .trim()
            .to_owned();
        let bd = b.bdev(&v);
        assert_eq!(bd["aliases"][0], format!("lvs_test1/lvol_test{i}"));
        assert_eq!(
            (bd["block_size"].as_u64(), bd["num_blocks"].as_u64()),
            (Some(4096), Some(3072))
        );
    }
    for i in 1..=5 {
        let v =
            b.a.ok(&[
                "bdev_lvol_create",
                "-u",
                &u2,
                &format!("lvol_test{i}"),
                "64",
            ])
            .trim()
            .to_owned();
        let bd = b.bdev(&v);
        assert_eq!(bd["aliases"][0], format!("lvs_test2/lvol_test{i}"));
        assert_eq!(bd["num_blocks"], 16384);
    }
    let lvols = |b: &Bench| {
        let mut v: Vec<Value> =
            b.a.json(&["bdev_get_bdevs"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["product_name"] == "Logical Volume")
                .cloned()
                .collect();
        v.sort_by_key(|x| s(&x["name"]));
        v
    };
    let old = lvols(&b);
    assert_eq!(old.len(), 10);
    let old_lvs = b.a.json(&["bdev_lvol_get_lvstores"]);
    // Restart.
    assert!(b.a.signal_and_wait(libc::SIGTERM).success());
    b.a = Appliance::start(&b.dir, "a2", &["-m", "0x3", "-s", "1024"]);
    b.a.ok(&["bdev_aio_create", &p0, "aio_bdev0", "4096"]);
    b.a.ok(&["bdev_aio_create", &p1, "aio_bdev1", "4096"]);
    b.a.ok(&["bdev_wait_for_examine"]);
    let new = lvols(&b);
    assert_eq!(new, old);
    let mut a = old_lvs.as_array().unwrap().clone();
    let mut n =
        b.a.json(&["bdev_lvol_get_lvstores"])
            .as_array()
            .unwrap()
            .clone();
    a.sort_by_key(|x| s(&x["name"]));
    n.sort_by_key(|x| s(&x["name"]));
    assert_eq!(a, n);
    for i in 6..=10 {
        let v =
            b.a.ok(&[
                "bdev_lvol_create",
                "-u",
                &u1,
                &format!("lvol_test{i}"),
                "12",
            ])
            .trim()
            .to_owned();
        assert_eq!(b.bdev(&v)["num_blocks"], 3072);
    }
    for i in 1..=10 {
        b.a.ok(&["bdev_lvol_delete", &format!("lvs_test1/lvol_test{i}")]);
    }
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    let u1 =
        b.a.ok(&["bdev_lvol_create_lvstore", "aio_bdev0", "lvs_test1"])
            .trim()
            .to_owned();
    for i in 1..=10 {
        b.a.ok(&[
            "bdev_lvol_create",
            "-u",
            &u1,
            &format!("lvol_test{i}"),
            "12",
        ]);
    }
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u1]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u1]);
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u2]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u2]);
    b.a.ok(&["bdev_aio_delete", "aio_bdev0"]);
    b.a.ok(&["bdev_aio_delete", "aio_bdev1"]);
    b.check_leftover();

    // test_delete_lvol_store_persistent_positive
    b.a.ok(&["bdev_aio_create", &p0, "aio_bdev_0", "4096"]);
    let bd = b.bdev("aio_bdev_0");
    assert_eq!(
        (s(&bd["product_name"]), bd["block_size"].as_u64()),
        ("AIO disk".into(), Some(4096))
    );
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", "aio_bdev_0", "lvstore_test"])
            .trim()
            .to_owned();
    assert_eq!(s(&b.lvs(&u)["base_bdev"]), "aio_bdev_0");
    b.a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);
    b.a.ok(&["bdev_aio_delete", "aio_bdev_0"]);
    b.a.ok(&["bdev_aio_create", &p0, "aio_bdev_0", "4096"]);
    b.a.ok(&["bdev_wait_for_examine"]);
    b.fails(&["bdev_lvol_get_lvstores", "-u", &u]);
    b.a.ok(&["bdev_aio_delete", "aio_bdev_0"]);
    b.check_leftover();
}

/// `bdev_lvol_grow_lvstore`: nothing to do while the base is as big
/// (success, as SPDK); after the AIO file grew and `bdev_aio_rescan`, the
/// store takes the new clusters, and keeps them after a restart.
#[test]
fn lvstore_grows_with_its_aio_file() {
    let mut b = Bench::new("lvgrow", Kind::Aio);
    let m = b.base("base0", 64, 512);
    let u =
        b.a.ok(&["bdev_lvol_create_lvstore", &m, "lvs_g"])
            .trim()
            .to_owned();
    let before = b.lvs(&u)["total_data_clusters"].as_u64().unwrap();
    assert_eq!(before, 15);
    b.a.ok(&["bdev_lvol_grow_lvstore", "-u", &u]);
    assert_eq!(b.lvs(&u)["total_data_clusters"], before);
    std::fs::File::options()
        .write(true)
        .open(b.file("base0"))
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    b.a.ok(&["bdev_aio_rescan", &m]);
    b.a.ok(&["bdev_lvol_grow_lvstore", "-l", "lvs_g"]);
    let l = b.lvs(&u);
    assert_eq!(l["total_data_clusters"], before + 16, "{l}");
    assert_eq!(l["free_clusters"], before + 16, "{l}");
    b.a.ok(&["bdev_lvol_create", "-u", &u, "big", "124"]);
    let path = b.file("base0");
    assert!(b.a.signal_and_wait(libc::SIGTERM).success());
    b.a = Appliance::start(&b.dir, "a2", &["-m", "0x3", "-s", "1024"]);
    b.a.ok(&["bdev_aio_create", path.to_str().unwrap(), "base0", "512"]);
    b.a.ok(&["bdev_wait_for_examine"]);
    assert_eq!(b.lvs(&u)["total_data_clusters"], before + 16);
    assert_eq!(b.bdev("lvs_g/big")["num_blocks"], 124 * MIB / 512);
}
