//! NBD exports driven by QEMU's own clients (`qemu-io`, `qemu-img` from
//! qemu-utils): patterns written and verified (plain, FUA, zeroes, discard,
//! flush, unaligned), a raw image converted into an export and compared
//! back, two clients on two exports (Unix and TCP on 127.0.0.1, on two
//! reactors) at once, a client killed mid-transfer, and the exports'
//! lifecycle (list, stop, bdev removal stops its export, SIGTERM with
//! exports open).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Appliance, TempDir, qemu_io, tool};
use serde_json::json;

fn qemu_img(args: &[&str]) -> String {
    let o = Command::new(tool("qemu-img", "QEMU_IMG"))
        .args(args)
        .output()
        .expect("run qemu-img");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "qemu-img {args:?} failed: {out}");
    out
}

fn unix_uri(name: &str, sock: &Path) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

/// A file of `len` bytes of a fixed pseudo-random pattern.
fn random_image(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, common::random(len, seed)).unwrap();
}

#[test]
fn qemu_clients_on_nbd_exports() {
    tool("qemu-io", "QEMU_IO");
    tool("qemu-img", "QEMU_IMG");
    let dir = TempDir::new("nbd");
    let mut a = Appliance::start(&dir, "a", &["-m", "0x3"]);
    a.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 65536, "block_size": 512}),
    )
    .unwrap();
    a.call(
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 8192, "block_size": 4096}),
    )
    .unwrap();
    let s0 = dir.join("m0.nbd");
    let d0 = a
        .call(
            "nbd_start_disk",
            json!({"bdev_name": "M0", "nbd_device": s0.to_str().unwrap()}),
        )
        .unwrap();
    assert_eq!(d0, json!(s0.to_str().unwrap()));
    let d1 = a
        .call(
            "nbd_start_disk",
            json!({"bdev_name": "M1", "nbd_device": "nbd://127.0.0.1:0"}),
        )
        .unwrap();
    let d1 = d1.as_str().unwrap().to_owned();
    assert!(
        d1.starts_with("nbd://127.0.0.1:") && !d1.ends_with(":0"),
        "{d1}"
    );
    let tcp = format!("{d1}/M1");
    let disks = a.call("nbd_get_disks", json!({})).unwrap();
    assert_eq!(disks.as_array().unwrap().len(), 2, "{disks}");
    // Same device twice: busy.
    let e = a
        .call(
            "nbd_start_disk",
            json!({"bdev_name": "M1", "nbd_device": s0.to_str().unwrap()}),
        )
        .unwrap_err();
    assert_eq!(e, (-16, "Device or resource busy".into()));
    let e = a
        .call(
            "nbd_start_disk",
            json!({"bdev_name": "nope", "nbd_device": dir.join("x.nbd").to_str().unwrap()}),
        )
        .unwrap_err();
    assert_eq!(e.0, -19);

    // Patterns: write, read and verify; FUA; zeroes; discard; flush;
    // unaligned (qemu reads the block size and does read-modify-write).
    let u0 = unix_uri("M0", &s0);
    qemu_io(
        &u0,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -f -P 0x11 1M 64k",
            "read -P 0x11 1M 64k",
            "write -z 2M 1M",
            "read -P 0 2M 1M",
            "write -P 0x22 3M 1M",
            "discard 3M 1M",
            "flush",
            "write -P 0x33 5000 3000",
            "read -P 0x33 5000 3000",
            "read -P 0xab 0 4096",
            "read -P 0xab 8000 1000",
        ],
    );
    // Data persists across connections.
    qemu_io(&u0, &["read -P 0xab 1024 1024", "read -P 0x11 1M 64k"]);

    // What went through is counted; bdev_reset_iostat (spdk-rpc) resets
    // the latency extremes alone, or everything, on every channel.
    let m0 = |a: &Appliance| a.json(&["bdev_get_iostat", "--names", "M0"])["bdevs"][0].clone();
    let st = m0(&a);
    assert!(st["num_read_ops"].as_u64().unwrap() > 0, "{st}");
    assert!(st["max_read_latency_ticks"].as_u64().unwrap() > 0, "{st}");
    a.ok(&["bdev_reset_iostat", "-b", "M0", "-m", "maxmin"]);
    let after = m0(&a);
    assert_eq!(after["num_read_ops"], st["num_read_ops"], "{after}");
    assert_eq!(after["max_read_latency_ticks"], 0, "{after}");
    a.ok(&["bdev_reset_iostat", "-b", "M0"]);
    let after = m0(&a);
    assert_eq!(after["num_read_ops"], 0, "{after}");
    assert_eq!(after["bytes_written"], 0, "{after}");
    qemu_io(&u0, &["read -P 0xab 0 4096"]);
    let again = m0(&a)["num_read_ops"].as_u64().unwrap();
    assert!((1..=2).contains(&again), "counting again: {again}");
    // bdev_get_iostat --reset-mode: read, then reset.
    let read = a.json(&["bdev_get_iostat", "--names", "M0", "--reset-mode", "all"]);
    assert!(
        read["bdevs"][0]["num_read_ops"].as_u64().unwrap() >= 1,
        "{read}"
    );
    assert_eq!(m0(&a)["num_read_ops"], 0);
    let o = a.spdk_rpc(&["bdev_reset_iostat", "-b", "nope"]);
    assert!(!o.status.success());
    // Through the default export name too.
    qemu_io(
        &format!("nbd+unix:///?socket={}", s0.display()),
        &["read -P 0x11 1M 4k"],
    );

    // qemu-img: convert a raw image into the TCP export, compare it back.
    let img = dir.join("img.raw");
    random_image(&img, 32 << 20, 7);
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        img.to_str().unwrap(),
        &tcp,
    ]);
    let out = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        img.to_str().unwrap(),
        &tcp,
    ]);
    assert!(out.contains("identical"), "{out}");
    let info = qemu_img(&["info", "-f", "raw", &tcp]);
    assert!(info.contains("32 MiB"), "{info}");

    // Two clients on two exports at once (the exports live on reactors 0
    // and 1).
    let img2 = dir.join("img2.raw");
    random_image(&img2, 32 << 20, 9);
    let small = dir.join("small.raw");
    random_image(&small, 16 << 20, 11);
    let spawn_convert = |src: &Path, dst: &str| {
        Command::new(tool("qemu-img", "QEMU_IMG"))
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(src)
            .arg(dst)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let p1 = spawn_convert(&img2, &tcp);
    let p2 = spawn_convert(&small, &u0);
    for p in [p1, p2] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img2.to_str().unwrap(),
            &tcp
        ])
        .contains("identical")
    );
    // M0 is 32 MiB: its first 16 MiB are the small image.
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &u0,
        dir.join("back.raw").to_str().unwrap(),
    ]);
    let back = std::fs::read(dir.join("back.raw")).unwrap();
    assert_eq!(&back[..16 << 20], std::fs::read(&small).unwrap().as_slice());

    // A client killed mid-transfer: the appliance goes on serving.
    for _ in 0..3 {
        let mut p = spawn_convert(&img, &tcp);
        std::thread::sleep(Duration::from_millis(60));
        let _ = p.kill();
        let _ = p.wait();
    }
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        img.to_str().unwrap(),
        &tcp,
    ]);
    assert!(
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
            &tcp
        ])
        .contains("identical")
    );

    // Stop an export: the socket goes, the bdev stays and can be exported
    // again, with its data.
    qemu_io(&u0, &["write -P 0x5a 20M 4k"]);
    assert_eq!(
        a.call("nbd_stop_disk", json!({"nbd_device": s0.to_str().unwrap()}))
            .unwrap(),
        json!(true)
    );
    assert!(!s0.exists());
    assert_eq!(
        a.call("nbd_stop_disk", json!({"nbd_device": s0.to_str().unwrap()}))
            .unwrap_err()
            .0,
        -19
    );
    a.call(
        "nbd_start_disk",
        json!({"bdev_name": "M0", "nbd_device": s0.to_str().unwrap()}),
    )
    .unwrap();
    qemu_io(&u0, &["read -P 0x5a 20M 4k"]);

    // Deleting an exported bdev stops its export first.
    a.call("bdev_malloc_delete", json!({"name": "M0"})).unwrap();
    let disks = a.call("nbd_get_disks", json!({})).unwrap();
    assert_eq!(disks, json!([{"nbd_device": d1, "bdev_name": "M1"}]));

    // The export is in save_config.
    let cfg = a
        .call("framework_get_config", json!({"name": "nbd"}))
        .unwrap();
    assert_eq!(
        cfg,
        json!([{"method": "nbd_start_disk", "params": {"bdev_name": "M1", "nbd_device": d1}}])
    );

    // SIGTERM with a client connected: an orderly exit.
    let mut held = spawn_convert(&img, &tcp);
    std::thread::sleep(Duration::from_millis(30));
    let st = a.signal_and_wait(libc::SIGTERM);
    let _ = held.kill();
    let _ = held.wait();
    assert!(st.success(), "{st}\n{}", a.log_text());
    assert!(a.log_text().contains("bdev M1 unregistered"));
}
