//! Longhorn's lvol methods as its Go client (longhorn/go-spdk-helper)
//! calls them — tab-indented requests on one connection, `"params": null`
//! when empty — with every answer decoded as that client's types would
//! (the structs below are its `pkg/spdk/types` ones, field for field:
//! a missing field or a wrong type fails the decode): snapshots with
//! xattrs, xattrs set and read (a missing one is -32603 "No such file or
//! directory"), the fragmentation map, snapshot checksums (CRC-64/ISO as
//! Go's `hash/crc64` computes it) and range checksums, range shallow and
//! deep copies, detach/decouple/set parent, and `creation_time`.

mod common;

use common::{Appliance, TempDir, go_encoded, qemu_io, tool};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct LvstoreInfo {
    uuid: String,
    name: String,
    base_bdev: String,
    total_data_clusters: u64,
    free_clusters: u64,
    block_size: u64,
    cluster_size: u64,
}

#[derive(Debug, Deserialize)]
struct LvsRef {
    name: String,
    uuid: String,
}

#[derive(Debug, Deserialize)]
struct LvolInfo {
    alias: String,
    uuid: String,
    name: String,
    is_thin_provisioned: bool,
    is_snapshot: bool,
    is_clone: bool,
    is_esnap_clone: bool,
    is_degraded: bool,
    lvs: LvsRef,
}

#[derive(Debug, Deserialize)]
struct BdevDriverSpecificLvol {
    lvol_store_uuid: String,
    base_bdev: String,
    base_snapshot: Option<String>,
    thin_provision: bool,
    num_allocated_clusters: u64,
    snapshot: bool,
    clone: bool,
    clones: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct BdevDriverSpecific {
    lvol: Option<BdevDriverSpecificLvol>,
}

#[derive(Debug, Deserialize)]
struct BdevInfo {
    name: String,
    aliases: Vec<String>,
    product_name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: String,
    creation_time: Option<String>,
    claimed: bool,
    driver_specific: Option<BdevDriverSpecific>,
}

#[derive(Debug, Deserialize)]
struct BdevLvolFragmap {
    cluster_size: u64,
    num_clusters: u64,
    num_allocated_clusters: u64,
    fragmap: String,
}

#[derive(Debug, Deserialize)]
struct ShallowCopy {
    operation_id: u32,
}

#[derive(Debug, Deserialize)]
struct ShallowCopyStatus {
    state: String,
    copied_clusters: u64,
    unmapped_clusters: Option<u64>,
    total_clusters: u64,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeepCopyStatus {
    state: String,
    processed_clusters: u64,
    total_clusters: u64,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BdevLvolSnapshotChecksum {
    checksum: u64,
}

#[derive(Debug, Deserialize)]
struct BdevLvolRangeChecksum {
    cluster_index: u64,
    checksum: u64,
}

/// Go's client: one connection, tab-indented requests, typed answers.
struct GoClient {
    c: common::RpcConn,
    id: u64,
}

impl GoClient {
    fn raw(&mut self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        self.id += 1;
        self.c
            .send_raw(go_encoded(self.id, method, &params).as_bytes())
            .unwrap();
        let r = self.c.recv().expect("an answer");
        assert_eq!(r["id"], json!(self.id), "{r}");
        match r.get("error") {
            Some(e) => Err((
                e["code"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            )),
            None => Ok(r["result"].clone()),
        }
    }

    fn call<T: DeserializeOwned>(&mut self, method: &str, params: Value) -> T {
        let v = self
            .raw(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e:?}"));
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{method}: {v} does not decode as Go's type: {e}"))
    }

    fn err(&mut self, method: &str, params: Value) -> (i64, String) {
        self.raw(method, params.clone())
            .expect_err(&format!("{method} {params} should fail"))
    }

    fn bdev(&mut self, name: &str) -> BdevInfo {
        let mut v: Vec<BdevInfo> = self.call("bdev_get_bdevs", json!({"name": name}));
        v.remove(0)
    }

    fn lvol(&mut self, name: &str) -> BdevDriverSpecificLvol {
        self.bdev(name).driver_specific.unwrap().lvol.unwrap()
    }

    fn wait_copy<T: DeserializeOwned>(&mut self, method: &str, id: u32) -> T {
        for _ in 0..200 {
            let v = self.raw(method, json!({"operation_id": id})).unwrap();
            if v["state"] != "in progress" {
                return serde_json::from_value(v).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("copy {id} did not finish");
    }
}

/// Go's `crc64.Update(crc, crc64.MakeTable(crc64.ISO), p)`, bit by bit.
fn go_crc64_iso(crc: u64, p: &[u8]) -> u64 {
    let mut c = !crc;
    for &b in p {
        c ^= u64::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xD800_0000_0000_0000
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn longhorn_methods_answer_as_its_go_client_decodes() {
    tool("qemu-io", "QEMU_IO");
    let dir = TempDir::new("lvlh");
    let a = Appliance::start(&dir, "a", &["-m", "0x3", "-s", "512"]);
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let mut g = GoClient {
        c: common::RpcConn::connect(&a.sock),
        id: 0,
    };
    let _: String = g.call(
        "bdev_aio_create",
        json!({"name": "aio0", "filename": img.to_str().unwrap(), "block_size": 512}),
    );
    let lvs_uuid: String = g.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "aio0", "lvs_name": "lvs", "cluster_sz": MIB}),
    );
    let l: Vec<LvstoreInfo> = g.call("bdev_lvol_get_lvstores", Value::Null);
    assert_eq!(
        (
            l[0].uuid.as_str(),
            l[0].name.as_str(),
            l[0].base_bdev.as_str()
        ),
        (lvs_uuid.as_str(), "lvs", "aio0")
    );
    assert_eq!((l[0].cluster_size, l[0].block_size), (MIB, 512));
    assert_eq!(l[0].free_clusters, l[0].total_data_clusters);
    let vol: String = g.call(
        "bdev_lvol_create",
        json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 8, "clear_method": "unmap", "thin_provision": true}),
    );
    // Clusters 0, 2 and 5 written whole.
    let sock = dir.join("v.nbd");
    let _: String = g.call(
        "nbd_start_disk",
        json!({"bdev_name": vol, "nbd_device": sock.to_str().unwrap()}),
    );
    let uri = format!("nbd+unix:///{vol}?socket={}", sock.display());
    let fills = [(0u64, 0x11u8), (2, 0x22), (5, 0x55)];
    let cmds: Vec<String> = fills
        .iter()
        .map(|(c, p)| format!("write -P {p:#x} {} 1M", c * MIB))
        .collect();
    qemu_io(&uri, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let snap: String = g.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs/vol", "snapshot_name": "snap1",
               "xattrs": {"user_created": "true", "snapshot_timestamp": "2026-11-28T03:00:00Z"}}),
    );
    // bdev_get_bdevs: the types Longhorn's engine reads.
    let b = g.bdev(&snap);
    assert_eq!(
        (b.name.as_str(), b.uuid.as_str(), b.product_name.as_str()),
        (snap.as_str(), snap.as_str(), "Logical Volume")
    );
    assert_eq!(b.aliases, ["lvs/snap1"]);
    assert_eq!(
        (b.block_size, b.num_blocks, b.claimed),
        (512, 8 * MIB / 512, false)
    );
    let t = b.creation_time.clone().unwrap();
    assert!(
        t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{t}"
    );
    let sl = b.driver_specific.unwrap().lvol.unwrap();
    assert!(sl.snapshot && !sl.clone);
    assert_eq!(
        (sl.lvol_store_uuid.as_str(), sl.base_bdev.as_str()),
        (lvs_uuid.as_str(), "aio0")
    );
    assert_eq!(sl.num_allocated_clusters, 3);
    assert_eq!(sl.clones, Some(vec!["vol".to_owned()]));
    let vl = g.lvol(&vol);
    assert!(vl.clone && !vl.snapshot && vl.thin_provision);
    assert_eq!(vl.base_snapshot.as_deref(), Some("snap1"));
    assert_eq!(vl.num_allocated_clusters, 0);
    // Xattrs.
    let v: String = g.call(
        "bdev_lvol_get_xattr",
        json!({"name": snap, "xattr_name": "user_created"}),
    );
    assert_eq!(v, "true");
    let v: String = g.call(
        "bdev_lvol_get_xattr",
        json!({"name": "lvs/snap1", "xattr_name": "snapshot_timestamp"}),
    );
    assert_eq!(v, "2026-11-28T03:00:00Z");
    let v: String = g.call(
        "bdev_lvol_get_xattr",
        json!({"name": snap, "xattr_name": "creation_time"}),
    );
    assert_eq!(v, t);
    assert_eq!(
        g.err(
            "bdev_lvol_get_xattr",
            json!({"name": vol, "xattr_name": "user_created"})
        ),
        (-32603, "No such file or directory".to_owned())
    );
    let ok: bool = g.call(
        "bdev_lvol_set_xattr",
        json!({"name": vol, "xattr_name": "user_created", "xattr_value": "false"}),
    );
    assert!(ok);
    let v: String = g.call(
        "bdev_lvol_get_xattr",
        json!({"name": vol, "xattr_name": "user_created"}),
    );
    assert_eq!(v, "false");
    assert_eq!(
        g.err(
            "bdev_lvol_set_xattr",
            json!({"name": vol, "xattr_name": "checksum", "xattr_value": "1"})
        )
        .0,
        -22
    );
    assert_eq!(
        g.err(
            "bdev_lvol_get_xattr",
            json!({"name": "nope", "xattr_name": "x"})
        ),
        (-19, "No such device".to_owned())
    );
    // The fragmentation map: bits LSB first.
    let f: BdevLvolFragmap = g.call(
        "bdev_lvol_get_fragmap",
        json!({"name": snap, "offset": 0, "size": 0}),
    );
    assert_eq!(
        (f.cluster_size, f.num_clusters, f.num_allocated_clusters),
        (MIB, 8, 3)
    );
    use base64::Engine;
    let bits = base64::engine::general_purpose::STANDARD
        .decode(&f.fragmap)
        .unwrap();
    assert_eq!(bits, [0b0010_0101]);
    let f: BdevLvolFragmap = g.call(
        "bdev_lvol_get_fragmap",
        json!({"name": snap, "offset": 2 * MIB, "size": 4 * MIB}),
    );
    assert_eq!((f.num_clusters, f.num_allocated_clusters), (4, 2));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&f.fragmap)
            .unwrap(),
        [0b1001]
    );
    assert_eq!(
        g.err(
            "bdev_lvol_get_fragmap",
            json!({"name": snap, "offset": 1, "size": 0})
        )
        .0,
        -22
    );
    // Checksums: none yet (-19); registered; Go's CRC-64/ISO of the
    // snapshot's own clusters in order.
    assert_eq!(
        g.err("bdev_lvol_get_snapshot_checksum", json!({"name": snap})),
        (-19, "No such device".to_owned())
    );
    assert_eq!(
        g.err("bdev_lvol_register_snapshot_checksum", json!({"name": vol})),
        (-32603, "Operation not permitted".to_owned())
    );
    let ok: bool = g.call(
        "bdev_lvol_register_snapshot_checksum",
        json!({"name": snap}),
    );
    assert!(ok);
    let mut want = 0u64;
    for (_, p) in fills {
        want = go_crc64_iso(want, &vec![p; MIB as usize]);
    }
    let c: BdevLvolSnapshotChecksum =
        g.call("bdev_lvol_get_snapshot_checksum", json!({"name": snap}));
    assert_eq!(c.checksum, want);
    let ok: bool = g.call(
        "bdev_lvol_register_snapshot_range_checksums",
        json!({"name": snap}),
    );
    assert!(ok);
    let r: Vec<BdevLvolRangeChecksum> = g.call(
        "bdev_lvol_get_snapshot_range_checksums",
        json!({"name": snap, "cluster_start_index": 0, "cluster_count": 8}),
    );
    assert_eq!(r.len(), 8);
    for e in &r {
        let want = fills
            .iter()
            .find(|(c, _)| *c == e.cluster_index)
            .map_or(0, |(_, p)| go_crc64_iso(0, &vec![*p; MIB as usize]));
        assert_eq!(e.checksum, want, "cluster {}", e.cluster_index);
    }
    assert_eq!(
        g.err(
            "bdev_lvol_get_snapshot_range_checksums",
            json!({"name": snap, "cluster_start_index": 6, "cluster_count": 4})
        )
        .0,
        -22
    );
    let ok: bool = g.call("bdev_lvol_stop_snapshot_checksum", json!({"name": snap}));
    assert!(ok);
    // A range shallow copy: owned clusters copied, the others unmapped.
    let _: String = g.call(
        "bdev_malloc_create",
        json!({"name": "dst", "num_blocks": 16384, "block_size": 512}),
    );
    let op: ShallowCopy = g.call(
        "bdev_lvol_start_range_shallow_copy",
        json!({"src_lvol_name": snap, "dst_bdev_name": "dst", "clusters": [0, 1, 2]}),
    );
    let st: ShallowCopyStatus = g.wait_copy("bdev_lvol_check_shallow_copy", op.operation_id);
    assert_eq!(st.state, "complete", "{:?}", st.error);
    assert_eq!(
        (st.copied_clusters, st.unmapped_clusters, st.total_clusters),
        (2, Some(1), 3)
    );
    assert_eq!(
        g.err(
            "bdev_lvol_check_shallow_copy",
            json!({"operation_id": op.operation_id})
        )
        .0,
        -19
    );
    // A deep copy of a second snapshot (its own cluster 7, snap1's under).
    qemu_io(&uri, &["write -P 0x77 7M 1M"]);
    let snap2: String = g.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": vol, "snapshot_name": "snap2"}),
    );
    let _: String = g.call(
        "bdev_malloc_create",
        json!({"name": "dst2", "num_blocks": 16384, "block_size": 512}),
    );
    let op: ShallowCopy = g.call(
        "bdev_lvol_start_deep_copy",
        json!({"src_lvol_name": snap2, "dst_bdev_name": "dst2"}),
    );
    let st: DeepCopyStatus = g.wait_copy("bdev_lvol_check_deep_copy", op.operation_id);
    assert_eq!(st.state, "complete", "{:?}", st.error);
    assert_eq!((st.processed_clusters, st.total_clusters), (8, 8));
    let s2 = dir.join("d2.nbd");
    let _: String = g.call(
        "nbd_start_disk",
        json!({"bdev_name": "dst2", "nbd_device": s2.to_str().unwrap()}),
    );
    let u2 = format!("nbd+unix:///dst2?socket={}", s2.display());
    qemu_io(
        &u2,
        &[
            "read -P 0x11 0 1M",
            "read -P 0 1M 1M",
            "read -P 0x22 2M 1M",
            "read -P 0x55 5M 1M",
            "read -P 0x77 7M 1M",
        ],
    );
    let _: bool = g.call("nbd_stop_disk", json!({"nbd_device": s2.to_str().unwrap()}));
    // A snapshot's checksum goes when its clusters change (decoupled).
    let ok: bool = g.call(
        "bdev_lvol_register_snapshot_checksum",
        json!({"name": snap2}),
    );
    assert!(ok);
    let ok: bool = g.call("bdev_lvol_decouple_parent", json!({"name": snap2}));
    assert!(ok);
    assert_eq!(
        g.err("bdev_lvol_get_snapshot_checksum", json!({"name": snap2}))
            .0,
        -19
    );
    // Clone, detach (no copy: its unowned clusters read zeros after).
    let c1: String = g.call(
        "bdev_lvol_clone",
        json!({"snapshot_name": snap, "clone_name": "c1"}),
    );
    let ok: bool = g.call("bdev_lvol_detach_parent", json!({"name": c1}));
    assert!(ok);
    let cl = g.lvol(&c1);
    assert!(!cl.clone && cl.base_snapshot.is_none() && cl.num_allocated_clusters == 0);
    // Set parent back, rename, resize, an external-snapshot clone.
    let ok: bool = g.call(
        "bdev_lvol_set_parent",
        json!({"lvol_name": c1, "parent_name": snap}),
    );
    assert!(ok);
    assert_eq!(g.lvol(&c1).base_snapshot.as_deref(), Some("snap1"));
    let ok: bool = g.call(
        "bdev_lvol_rename",
        json!({"old_name": "lvs/c1", "new_name": "c1b"}),
    );
    assert!(ok);
    let ok: bool = g.call(
        "bdev_lvol_resize",
        json!({"name": "lvs/c1b", "size_in_mib": 12}),
    );
    assert!(ok);
    assert_eq!(g.bdev("lvs/c1b").num_blocks, 12 * MIB / 512);
    let e1: String = g.call(
        "bdev_lvol_clone_bdev",
        json!({"bdev": "dst", "lvs_name": "lvs", "clone_name": "e1"}),
    );
    let ls: Vec<LvolInfo> = g.call("bdev_lvol_get_lvols", json!({"lvs_name": "lvs"}));
    let e = ls.iter().find(|l| l.uuid == e1).unwrap();
    assert!(
        e.is_esnap_clone
            && e.is_thin_provisioned
            && !e.is_degraded
            && !e.is_snapshot
            && !e.is_clone
    );
    assert_eq!(
        (
            e.alias.as_str(),
            e.name.as_str(),
            e.lvs.name.as_str(),
            e.lvs.uuid.as_str()
        ),
        ("lvs/e1", "e1", "lvs", lvs_uuid.as_str())
    );
    let s = ls.iter().find(|l| l.name == "snap1").unwrap();
    assert!(s.is_snapshot && !s.is_clone);
    // Deleting: a snapshot with two clones is busy (-16).
    let c2: String = g.call(
        "bdev_lvol_clone",
        json!({"snapshot_name": "lvs/snap1", "clone_name": "c2"}),
    );
    assert_eq!(
        g.err("bdev_lvol_delete", json!({"name": snap})),
        (-16, "Device or resource busy".to_owned())
    );
    let _: bool = g.call(
        "nbd_stop_disk",
        json!({"nbd_device": sock.to_str().unwrap()}),
    );
    for v in [
        e1.as_str(),
        c2.as_str(),
        "lvs/c1b",
        vol.as_str(),
        snap2.as_str(),
        snap.as_str(),
    ] {
        let ok: bool = g.call("bdev_lvol_delete", json!({"name": v}));
        assert!(ok, "{v}");
    }
    let ok: bool = g.call(
        "bdev_lvol_rename_lvstore",
        json!({"old_name": "lvs", "new_name": "lvs2"}),
    );
    assert!(ok);
    let ok: bool = g.call("bdev_lvol_delete_lvstore", json!({"lvs_name": "lvs2"}));
    assert!(ok);
    let l: Vec<LvstoreInfo> = g.call("bdev_lvol_get_lvstores", Value::Null);
    assert!(l.is_empty());
}
