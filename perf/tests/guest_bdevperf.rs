//! Guest tier: `bdevperf` on an NVMe bdev of a QEMU controller bound to
//! vfio-pci, driven over its JSON-RPC socket (`-r`) as SPDK's clients
//! drive an appliance: a verify workload at queue depth 128 runs while
//! `bdev_nvme_reset_controller` resets the controller five times. With the
//! default retry options (`bdev_retry_count` 3) no I/O fails and every read
//! checks against what was written. Run by `ci/guest-tier` (`#[ignore]`d
//! on the host).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use perf::json::Json;

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

/// One JSON-RPC call as SPDK's Python client makes it (one request, the
/// reply read up to its end); the `result`, or the `error` object.
fn call(sock: &std::path::Path, id: u32, method: &str, params: &str) -> Result<Json, Json> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{{\"jsonrpc\": \"2.0\", \"method\": \"{method}\", \"id\": {id}, \"params\": {params}}}"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
        if let Ok(doc) = Json::parse(&text) {
            if let Some(e) = doc.get("error") {
                return Err(e.clone());
            }
            return Ok(doc.get("result").cloned().expect("a result"));
        }
    }
    panic!("{method}: no complete reply: {text:?}");
}

fn num(j: &Json, k: &str) -> f64 {
    j.get(k)
        .and_then(Json::as_f64)
        .unwrap_or_else(|| panic!("{k} in {j}"))
}

#[test]
#[ignore = "guest tier: needs an NVMe controller bound to vfio-pci (ci/guest-tier)"]
fn verify_at_depth_128_through_five_controller_resets() {
    let traddr = first_vfio_controller();
    let dir = std::env::temp_dir().join(format!("bdevperf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("nvme.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems": [{{"subsystem": "bdev", "config": [
                {{"method": "bdev_nvme_attach_controller",
                  "params": {{"name": "Nvme0", "trtype": "PCIe", "traddr": "{traddr}"}}}}]}}]}}"#
        ),
    )
    .unwrap();
    let sock = dir.join("bdevperf.sock");
    let child = Command::new("bdevperf")
        .args(["--json", cfg.to_str().unwrap()])
        .args([
            "-T",
            "Nvme0n1",
            "-q",
            "128",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "12",
            "-s",
            "256",
            "--json-report",
            "-r",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bdevperf on PATH (ci/guest-tier copies the workspace's binaries)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "bdevperf did not listen on -r");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the workload fill the queue, then five resets a second apart.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..5 {
        let t = Instant::now();
        let r = call(
            &sock,
            i + 1,
            "bdev_nvme_reset_controller",
            r#"{"name": "Nvme0"}"#,
        );
        assert_eq!(r, Ok(Json::Bool(true)), "reset {i}");
        println!("reset {i}: {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(1000));
    }
    let ctrlrs = call(&sock, 9, "bdev_nvme_get_controllers", "null").unwrap();
    println!("controllers: {ctrlrs}");
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stderr}");
    println!("{stdout}");
    assert_eq!(o.status.code(), Some(0), "bdevperf failed");
    let doc = Json::parse(&stdout).expect("one JSON report on stdout");
    let t = doc.get("total").unwrap();
    assert_eq!(num(t, "errors"), 0.0, "no I/O failed");
    assert_eq!(num(t, "verify_mismatches"), 0.0, "every read as written");
    assert!(num(t, "verified_reads") > 1000.0, "{t}");
}
