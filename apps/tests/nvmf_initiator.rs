//! Our NVMe/TCP initiator against our target: two appliances on one
//! machine, driven by SPDK's own client. The target exports an AIO bdev
//! over a file; the initiator attaches it with `bdev_nvme_attach_controller
//! -t tcp` and exports the remote bdev over NBD, where qemu-io writes and
//! verifies patterns (in-capsule writes, R2T writes, reads split by the
//! transfer limit, write zeroes, discard, flush) — and the file under the
//! target holds exactly what was written. Then the connection is killed
//! (the target process dies): I/O waits, the controller reconnects every
//! `reconnect_delay_sec`, and once the target is back the waiting I/O
//! completes with the right data; with `fast_io_fail_timeout_sec` the I/O
//! fails instead, and after `ctrlr_loss_timeout_sec` the controller and
//! its bdev are deleted.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Appliance, TempDir, add_tcp_listener, free_port, qemu_io, tool, wait_for};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const SIZE: u64 = 32 << 20;

/// Starts a target appliance exporting `file` (made if missing) on `port`.
fn target(dir: &TempDir, name: &str, file: &str, port: &str) -> Appliance {
    if std::fs::metadata(file).is_err() {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(SIZE).unwrap();
    }
    let a = Appliance::start(dir, name, &[]);
    a.ok(&["bdev_aio_create", file, "Aio0", "512"]);
    a.ok(&["nvmf_create_transport", "-t", "TCP"]);
    a.ok(&[
        "nvmf_create_subsystem",
        NQN,
        "-a",
        "-s",
        "SPDK00000000000001",
        "-m",
        "4",
    ]);
    a.ok(&["nvmf_subsystem_add_ns", NQN, "Aio0"]);
    add_tcp_listener(&a, NQN, port, &["-f", "ipv4"]);
    a
}

/// Attaches the target's subsystem as Nvme0 (spdk-rpc prints the bdevs
/// made, one per line); the names.
fn attach(b: &Appliance, port: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        port,
        "-f",
        "ipv4",
        "-n",
        NQN,
    ];
    args.extend_from_slice(extra);
    b.ok(&args).split_whitespace().map(str::to_owned).collect()
}

fn export(b: &Appliance, dir: &TempDir, bdev: &str) -> String {
    let sock = dir
        .join(&format!("{bdev}.nbd"))
        .to_str()
        .unwrap()
        .to_owned();
    b.ok(&["nbd_start_disk", bdev, &sock]);
    format!("nbd+unix:///{bdev}?socket={sock}")
}

fn file_bytes(file: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

fn state(b: &Appliance) -> String {
    let c = b.json(&["bdev_nvme_get_controllers"]);
    c.as_array()
        .and_then(|a| a.first())
        .and_then(|c| c["ctrlrs"][0]["state"].as_str())
        .unwrap_or("gone")
        .to_owned()
}

#[test]
fn a_remote_bdev_carries_verified_io_with_and_without_digests() {
    let dir = TempDir::new("nvmf-init");
    let file = dir.join("disk.raw").to_str().unwrap().to_owned();
    let port = free_port();
    let a = target(&dir, "target", &file, &port);
    let b = Appliance::start(&dir, "init", &[]);

    let names = attach(&b, &port, &[]);
    assert_eq!(names, ["Nvme0n1"]);
    let bd = b.json(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(bd[0]["block_size"], 512);
    assert_eq!(bd[0]["num_blocks"], SIZE / 512);
    let trid = &bd[0]["driver_specific"]["nvme"][0]["trid"];
    assert_eq!(trid["trtype"], "TCP", "{bd}");
    assert_eq!(trid["adrfam"], "IPv4");
    assert_eq!(trid["trsvcid"], port.as_str());
    assert_eq!(trid["subnqn"], NQN);
    let c = b.json(&["bdev_nvme_get_controllers", "-n", "Nvme0"]);
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled", "{c}");
    assert!(
        c[0]["ctrlrs"][0]["host"]["nqn"]
            .as_str()
            .unwrap()
            .starts_with("nqn.2014-08.org.nvmexpress:uuid:"),
        "{c}"
    );
    // The target sees our host's controller.
    let ctrls = a.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls.as_array().unwrap().len(), 1, "{ctrls}");

    let uri = export(&b, &dir, "Nvme0n1");
    qemu_io(
        &uri,
        &[
            // In the capsule (4 KiB), by R2T (128 KiB), split by the
            // transfer limit (3 MiB), unaligned to anything but blocks.
            "write -P 0x11 0 4k",
            "write -P 0x22 64k 128k",
            "write -P 0x33 1M 3M",
            "write -P 0x44 7680 512",
            "write -z 5M 64k",
            "flush",
            "read -P 0x11 0 4k",
            "read -P 0x22 64k 128k",
            "read -P 0x33 1M 3M",
            "read -P 0x44 7680 512",
            "read -P 0 5M 64k",
        ],
    );
    // What reached the target's file is exactly that.
    assert!(file_bytes(&file, 0, 4096).iter().all(|&x| x == 0x11));
    assert!(
        file_bytes(&file, 64 << 10, 128 << 10)
            .iter()
            .all(|&x| x == 0x22)
    );
    assert!(
        file_bytes(&file, 1 << 20, 3 << 20)
            .iter()
            .all(|&x| x == 0x33)
    );
    assert!(file_bytes(&file, 7680, 512).iter().all(|&x| x == 0x44));
    assert!(file_bytes(&file, 5 << 20, 64 << 10).iter().all(|&x| x == 0));
    b.ok(&["nbd_stop_disk", dir.join("Nvme0n1.nbd").to_str().unwrap()]);

    // save_config carries the attach as SPDK writes it.
    let cfg = b.json(&["save_config"]);
    let attach_cfg = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|m| m["method"] == "bdev_nvme_attach_controller")
        .expect("the attach in save_config");
    let p = &attach_cfg["params"];
    assert_eq!(p["trtype"], "TCP", "{p}");
    assert_eq!(p["traddr"], "127.0.0.1");
    assert_eq!(p["trsvcid"], port.as_str());
    assert_eq!(p["subnqn"], NQN);

    // A second attach of the same name is refused; detach leaves nothing.
    let o = b.spdk_rpc(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-n",
        NQN,
    ]);
    assert!(!o.status.success(), "a taken name must be refused");
    b.ok(&["bdev_nvme_detach_controller", "Nvme0"]);
    assert!(
        b.json(&["bdev_nvme_get_controllers"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!b.bdev_names().contains(&"Nvme0n1".to_owned()));
    wait_for("the target to drop the controller", || {
        a.json(&["nvmf_subsystem_get_controllers", NQN])
            .as_array()
            .unwrap()
            .is_empty()
    });

    // Header and data digests on: the same verification.
    attach(&b, &port, &["--hdgst", "--ddgst"]);
    let qp = a.json(&["nvmf_subsystem_get_qpairs", NQN]);
    assert!(!qp.as_array().unwrap().is_empty(), "{qp}");
    let uri = export(&b, &dir, "Nvme0n1");
    qemu_io(
        &uri,
        &[
            "write -P 0x55 2M 256k",
            "read -P 0x55 2M 256k",
            "read -P 0x33 1M 1M",
            "read -P 0x11 0 4k",
        ],
    );
    b.ok(&["bdev_nvme_detach_controller", "Nvme0"]);

    // Nobody listening, an unknown subsystem: clear failures with SPDK's
    // codes (ENODEV, EIO), nothing left.
    let dead_port = free_port();
    for (p, nqn, code) in [
        (dead_port.as_str(), NQN, "\"code\": -19"),
        (port.as_str(), "nqn.2016-06.io.spdk:nobody", "\"code\": -5"),
    ] {
        let o = b.spdk_rpc(&[
            "bdev_nvme_attach_controller",
            "-b",
            "Bad0",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            p,
            "-n",
            nqn,
        ]);
        assert!(!o.status.success(), "attach to {p} {nqn} must fail");
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            text.contains(code),
            "attach to {p} {nqn}: {code} expected: {text}"
        );
        assert!(
            b.json(&["bdev_nvme_get_controllers"])
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    let log = b.log_text();
    assert!(
        log.contains("Connect (qid 0, subsystem nqn.2016-06.io.spdk:nobody) refused"),
        "{log}"
    );
}

/// Runs qemu-io in the background.
fn qemu_io_bg(uri: &str, cmds: &[&str]) -> std::process::Child {
    let mut c = Command::new(tool("qemu-io", "QEMU_IO"));
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: std::process::Child, limit: Duration) -> String {
    let start = Instant::now();
    let mut c = c;
    loop {
        if c.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = c.kill();
            panic!("qemu-io did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A target on a fresh file and an initiator attached to it with `opts`:
/// (dir, file, port, target, initiator).
fn attached(tag: &str, opts: &[&str]) -> (TempDir, String, String, Appliance, Appliance) {
    let dir = TempDir::new(tag);
    let file = dir.join("disk.raw").to_str().unwrap().to_owned();
    let port = free_port();
    let a = target(&dir, "target", &file, &port);
    let b = Appliance::start(&dir, "init", &[]);
    attach(&b, &port, opts);
    (dir, file, port, a, b)
}

#[test]
fn io_waits_for_the_target_and_resumes_when_it_is_back() {
    let (dir, file, port, mut a, b) = attached(
        "nvmf-reconnect",
        &[
            "--ctrlr-loss-timeout-sec",
            "60",
            "--reconnect-delay-sec",
            "1",
        ],
    );
    let uri = export(&b, &dir, "Nvme0n1");
    qemu_io(&uri, &["write -P 0x5a 0 1M", "flush"]);

    // The connection dies with the target.
    a.signal_and_wait(libc::SIGKILL);
    wait_for("the initiator to notice", || state(&b) != "enabled");
    let bg = qemu_io_bg(
        &uri,
        &[
            "write -P 0x6b 1M 1M",
            "read -P 0x6b 1M 1M",
            "read -P 0x5a 0 1M",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let st = state(&b);
    assert!(
        ["resetting", "reconnect_is_delayed", "failed"].contains(&st.as_str()),
        "controller state while the target is away: {st}"
    );
    let log = b.log_text();
    assert!(
        log.contains("reconnecting"),
        "reconnects every second:\n{log}"
    );

    // The target is back (same file, same port): the waiting I/O goes on.
    let _a2 = target(&dir, "target2", &file, &port);
    let out = finish(bg, Duration::from_secs(60));
    for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
        assert!(!out.contains(bad), "I/O after the reconnect: {out}");
    }
    assert!(out.matches("read ").count() == 2, "{out}");
    wait_for("the controller to be enabled", || state(&b) == "enabled");
    assert!(
        file_bytes(&file, 1 << 20, 1 << 20)
            .iter()
            .all(|&x| x == 0x6b)
    );
    assert!(b.log_text().contains("reconnected"));
}

#[test]
fn io_fails_fast_and_the_controller_goes_per_the_options() {
    let (dir, _file, _port, mut a, b) = attached(
        "nvmf-loss",
        &[
            "--ctrlr-loss-timeout-sec",
            "6",
            "--reconnect-delay-sec",
            "1",
            "--fast-io-fail-timeout-sec",
            "2",
        ],
    );
    let uri = export(&b, &dir, "Nvme0n1");
    qemu_io(&uri, &["write -P 0x5a 0 64k"]);
    a.signal_and_wait(libc::SIGKILL);
    let start = Instant::now();
    // Past fast_io_fail_timeout_sec the I/O fails instead of waiting.
    let out = finish(
        qemu_io_bg(&uri, &["read -P 0x5a 0 64k"]),
        Duration::from_secs(30),
    );
    assert!(
        out.contains("failed") || out.contains("error") || out.contains("Error"),
        "a read with the target gone must fail: {out}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "failed fast: {:?}",
        start.elapsed()
    );
    // Past ctrlr_loss_timeout_sec the controller and its bdev are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&b) != "gone" {
        assert!(
            Instant::now() < deadline,
            "controller still there: {}",
            state(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!b.bdev_names().contains(&"Nvme0n1".to_owned()));
    assert!(b.log_text().contains("ctrlr_loss_timeout_sec"));
}
