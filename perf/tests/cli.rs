//! The `nvme-perf` binary as a user meets it: usage errors (exit 2, naming
//! the option), an unopenable controller (exit 1, one line), and whole runs
//! against the software controller model (`--sim`) with table, JSON and
//! verify output.

use std::process::{Command, Output};

use perf::json::Json;

fn nvme_perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvme-perf"))
        .args(args)
        .output()
        .expect("nvme-perf runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2_and_name_the_option() {
    for (args, option) in [
        (
            &["-q", "0", "-o", "4096", "-w", "randread", "-t", "1"][..],
            "-q '0'",
        ),
        (
            &["-q", "1", "-o", "1000", "-w", "randread", "-t", "1"][..],
            "-o '1000'",
        ),
        (
            &["-q", "1", "-o", "4096", "-w", "random", "-t", "1"][..],
            "-w 'random'",
        ),
        (
            &["-q", "1", "-o", "4096", "-w", "randrw", "-t", "1"][..],
            "-M",
        ),
        (&["-q", "1", "-o", "4096", "-w", "read"][..], "-t"),
        (
            &["-q", "1", "-o", "4096", "-w", "read", "-t", "1", "-c", "0"][..],
            "-c '0'",
        ),
        (&["--bogus"][..], "--bogus"),
    ] {
        let o = nvme_perf(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(
            e.starts_with(&format!("nvme-perf: {option}")),
            "{args:?}: {e}"
        );
        assert!(e.contains("nvme-perf -h"), "{e}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn help_exits_0() {
    let o = nvme_perf(&["-h"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("usage: nvme-perf -q DEPTH -o SIZE -w PATTERN -t SECONDS"));
    assert!(out.contains("--sim"), "the test-only option is documented");
}

#[test]
fn arguments_that_do_not_fit_the_device_are_usage_errors() {
    let base = ["--sim", "-q", "4", "-w", "randread", "-t", "1"];
    for (extra, option) in [
        (&["-o", "2048", "-n", "2"][..], "-o '2048'"), // 4096-byte blocks
        (&["-o", "1M"][..], "-o '1048576'"),           // above MDTS (128 KiB)
        (&["-o", "4096", "-n", "3"][..], "-n '3'"),    // no such namespace
        (&["-o", "4096", "-c", "[1023]"][..], "-c"),   // no such core
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let o = nvme_perf(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.lines()
                .any(|l| l.starts_with(&format!("nvme-perf: {option}"))),
            "{e}"
        );
    }
}

#[test]
fn an_unopenable_controller_is_one_line_and_exit_1() {
    // No such PCI function on any machine this runs on.
    let o = nvme_perf(&[
        "-q",
        "1",
        "-o",
        "4096",
        "-w",
        "read",
        "-t",
        "1",
        "-r",
        "trtype:PCIe traddr:00fe:fe:1f.7",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let last = e.lines().last().unwrap();
    assert!(
        last.starts_with("nvme-perf: cannot open 00fe:fe:1f.7: "),
        "{e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.starts_with("nvme-perf:")).count(),
        1,
        "{e}"
    );
}

#[test]
fn a_sim_run_prints_the_table() {
    let o = nvme_perf(&[
        "--sim", "-q", "8", "-o", "4k", "-w", "randread", "-t", "1", "-c", "0x1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Latency (us)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("sim0              1    0 ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("sim0              2    0 ")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("Total ")), "{out}");
    let e = stderr(&o);
    assert!(e.contains("[  1/1 s]"), "a progress line per second: {e}");
}

#[test]
fn a_sim_verify_run_reports_json() {
    let o = nvme_perf(&[
        "--sim", "-q", "16", "-o", "8192", "-w", "randrw", "-M", "60", "-t", "1", "-a", "1",
        "--verify", "--json", "--clock", "os",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc =
        Json::parse(&String::from_utf8_lossy(&o.stdout)).expect("stdout is one JSON document");
    assert_eq!(doc.get("tool").and_then(Json::as_str), Some("nvme-perf"));
    assert_eq!(doc.get("status").and_then(Json::as_str), Some("ok"));
    let cfg = doc.get("config").unwrap();
    assert_eq!(cfg.get("io_size").and_then(Json::as_f64), Some(8192.0));
    assert_eq!(cfg.get("read_percent").and_then(Json::as_f64), Some(60.0));
    assert_eq!(
        doc.get("clock").unwrap().get("kind").and_then(Json::as_str),
        Some("os")
    );
    let workers = doc.get("workers").and_then(Json::as_array).unwrap();
    assert_eq!(workers.len(), 2, "one per namespace on one core");
    let total = doc.get("total").unwrap();
    let num = |k: &str| total.get(k).and_then(Json::as_f64).unwrap();
    assert!(num("ios") > 0.0);
    assert_eq!(num("errors"), 0.0);
    assert_eq!(num("verify_mismatches"), 0.0);
    assert!(num("verified_reads") > 0.0);
    assert!((num("elapsed_s") - 1.0).abs() < 1e-6);
    let sum: f64 = workers
        .iter()
        .map(|w| w.get("iops").and_then(Json::as_f64).unwrap())
        .sum();
    assert!((sum - num("iops")).abs() < 0.01, "total = sum of the rows");
    let lat = total.get("latency_us").unwrap();
    let p = |k: &str| lat.get(k).and_then(Json::as_f64).unwrap();
    assert!(p("min") <= p("p50") && p("p50") <= p("p99") && p("p99") <= p("max"));
    assert!(
        doc.get("command")
            .and_then(Json::as_str)
            .unwrap()
            .contains("--verify")
    );
}
