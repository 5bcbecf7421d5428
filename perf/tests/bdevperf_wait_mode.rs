//! `bdevperf -z`: started with no bdevs and no workload, it waits; bdevs
//! are made over JSON-RPC with `spdk-rpc`, then `perform_tests` — sent with
//! SPDK's own Python client library as its `bdevperf.py perform_tests`
//! does — runs the jobs with the parameters it names and answers with
//! SPDK's result shape, as often as asked; `spdk_kill_instance` ends it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Bdevperf, ok};
use serde_json::Value;

/// `perform_tests` through spdk.rpc.client (what bdevperf.py does):
/// Ok(result) or Err(the error object).
fn perform_tests(sock: &Path, params: &str) -> Result<Value, Value> {
    let script = r#"
import json, sys
from spdk.rpc.client import JSONRPCClient, JSONRPCException
c = JSONRPCClient(sys.argv[1], 5260, 120.0)
try:
    print(json.dumps({"ok": c.call("perform_tests", json.loads(sys.argv[2]))}))
except JSONRPCException as e:
    msg = e.message
    print(json.dumps({"err": json.loads(msg[msg.index("response:") + 9:])}))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(sock)
        .arg(params)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "python3 with spdk.rpc.client (pip install spdk; ci/install-host-deps): {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    match v.get("ok") {
        Some(r) => Ok(r.clone()),
        None => Err(v["err"].clone()),
    }
}

#[test]
fn waits_for_perform_tests_and_runs_each_call() {
    let dir = std::env::temp_dir().join(format!("bdevperf-z-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("rpc.sock");
    let bdevperf = Bdevperf::start(&["-z", "-o", "4k", "-m", "0x3", "--no-huge"], &sock);
    ok(&sock, &["bdev_malloc_create", "-b", "M0", "16", "512"]);
    ok(&sock, &["bdev_malloc_create", "-b", "M1", "16", "4096"]);
    let methods = ok(&sock, &["rpc_get_methods"]);
    assert!(methods.contains("perform_tests"), "{methods}");

    // Not enough to run on: named.
    let e = perform_tests(&sock, "{}").unwrap_err();
    assert_eq!(e["code"], -32602, "{e}");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("queue_depth") && m.contains("workload_type") && m.contains("time_in_sec"),
        "{m}"
    );
    let e = perform_tests(&sock, r#"{"workload_type": "sideways"}"#).unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("sideways"), "{e}");

    // A verify run on both bdevs from both cores.
    let r = perform_tests(
        &sock,
        r#"{"queue_depth": 8, "workload_type": "verify", "time_in_sec": 1}"#,
    )
    .unwrap();
    let jobs = r["results"].as_array().unwrap();
    assert_eq!(r["core_count"], 2, "{r}");
    assert_eq!(jobs.len(), 4, "two bdevs, two cores: {r}");
    let mut names: Vec<String> = jobs
        .iter()
        .map(|j| {
            format!(
                "{} {}",
                j["job"].as_str().unwrap(),
                j["core_mask"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, ["M0 0x1", "M0 0x2", "M1 0x1", "M1 0x2"]);
    for j in jobs {
        assert_eq!(j["workload"], "verify");
        assert_eq!(j["status"], "finished");
        assert_eq!(
            (j["queue_depth"].as_u64(), j["io_size"].as_u64()),
            (Some(8), Some(4096))
        );
        assert!(j["iops"].as_f64().unwrap() > 0.0, "{j}");
        assert_eq!(j["io_failed"], 0, "{j}");
        assert!(j["avg_latency_us"].as_f64().unwrap() > 0.0, "{j}");
    }

    // Again, with other parameters (the earlier ones kept).
    let r = perform_tests(
        &sock,
        r#"{"workload_type": "randrw", "rw_percentage": 70, "io_size": "8192"}"#,
    )
    .unwrap();
    for j in r["results"].as_array().unwrap() {
        assert_eq!(j["workload"], "randrw");
        assert_eq!(
            (j["queue_depth"].as_u64(), j["io_size"].as_u64()),
            (Some(8), Some(8192))
        );
        assert!(j["iops"].as_f64().unwrap() > 0.0, "{j}");
    }

    ok(&sock, &["spdk_kill_instance", "SIGTERM"]);
    let o = bdevperf.finish();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.matches("bdevperf: verify 4096 B").count(), 1, "{out}");
    assert_eq!(out.matches("bdevperf: randrw 8192 B").count(), 1, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
