//! bdevperf end to end: the built binary on malloc, null and error bdevs in
//! anonymous memory (`--no-huge`).

use std::path::PathBuf;
use std::process::{Command, Output};

use perf::json::Json;

fn bdevperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args(args)
        .output()
        .expect("run bdevperf")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(name: &str, calls: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bdevperf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.json"));
    std::fs::write(
        &p,
        format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{calls}]}}]}}"#),
    )
    .unwrap();
    p
}

const MALLOC: &str = r#"{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":16384,"block_size":4096}}"#;

/// The IOPS of the row of `bdev` in a table.
fn iops(table: &str, bdev: &str) -> f64 {
    let line = table
        .lines()
        .find(|l| l.starts_with(bdev))
        .unwrap_or_else(|| panic!("no row for {bdev} in\n{table}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn usage_errors_name_the_option_and_value() {
    for (args, want) in [
        (
            &[
                "--malloc", "8", "-q", "0", "-o", "4k", "-w", "read", "-t", "1",
            ][..],
            "-q '0'",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "sideways", "-t", "1",
            ][..],
            "-w 'sideways'",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "lots", "-w", "read", "-t", "1",
            ][..],
            "-o 'lots'",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "read", "-t", "-1",
            ][..],
            "-t '-1'",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "rw", "-M", "101", "-t", "1",
            ][..],
            "-M '101'",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-m", "zz",
            ][..],
            "-m 'zz'",
        ),
        (
            &["-q", "4", "-o", "4k", "-w", "read", "-t", "1"][..],
            "--json",
        ),
        (
            &["--malloc", "8", "-o", "4k", "-w", "read", "-t", "1"][..],
            "-q",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "read", "-t", "1", "--bogus",
            ][..],
            "--bogus",
        ),
        (
            &[
                "--malloc", "8", "-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-T", "Nope0",
            ][..],
            "-T \"Nope0\"",
        ),
    ] {
        let o = bdevperf(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} should name {want}");
    }
}

#[test]
fn randread_on_a_malloc_bdev_from_a_json_config() {
    let cfg = config("randread", MALLOC);
    let o = bdevperf(&[
        "--json",
        cfg.to_str().unwrap(),
        "-q",
        "16",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("p99.99"), "{out}");
    assert!(iops(&out, "Malloc0") > 0.0, "{out}");
    assert!(iops(&out, "Total") > 0.0, "{out}");
    assert!(err.contains("[  1 s]"), "progress line: {err}");
}

#[test]
fn verify_passes_on_malloc_and_json_report_parses() {
    let o = bdevperf(&[
        "--malloc",
        "16",
        "-q",
        "8",
        "-o",
        "8k",
        "-w",
        "verify",
        "-t",
        "1",
        "-m",
        "0x1",
        "--json-report",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let j = Json::parse(out.trim()).unwrap();
    let total = j.get("total").unwrap();
    assert!(total.get("verified_reads").and_then(Json::as_f64).unwrap() > 0.0);
    assert_eq!(
        total.get("verify_mismatches").and_then(Json::as_f64),
        Some(0.0)
    );
    assert!(total.get("iops").and_then(Json::as_f64).unwrap() > 0.0);
    let jobs = j.get("jobs").and_then(Json::as_array).unwrap();
    assert_eq!(
        jobs[0].get("device").and_then(Json::as_str),
        Some("Malloc0")
    );
}

#[test]
fn verify_catches_a_corrupted_block() {
    let cfg = config(
        "corrupt",
        &format!(
            r#"{MALLOC},
            {{"method":"bdev_error_create","params":{{"base_name":"Malloc0"}}}},
            {{"method":"bdev_error_inject_error","params":{{"name":"EE_Malloc0","io_type":"read","error_type":"corrupt_data","num":1}}}}"#
        ),
    );
    let o = bdevperf(&[
        "--json",
        cfg.to_str().unwrap(),
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "verify",
        "-t",
        "1",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    // Only the error bdev runs: Malloc0 is claimed by it.
    assert!(out.contains("EE_Malloc0"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("Malloc0 ")), "{out}");
    assert!(out.contains(", 1 mismatches"), "{out}");
    assert!(out.contains("first mismatch: LBA"), "{out}");
    assert!(err.contains("FAILED: verify: 1 mismatches"), "{err}");
}

#[test]
fn reset_and_flush_workloads() {
    let o = bdevperf(&[
        "--malloc",
        "16",
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "reset",
        "-t",
        "1.5",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("resets done"), "{out}");
    assert!(iops(&out, "Malloc0") > 0.0, "{out}");
    let o = bdevperf(&[
        "--malloc",
        "16",
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "flush",
        "-t",
        "1",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        iops(&out, "Malloc0") > 0.0 || out.contains("flush NOT SUPPORTED"),
        "{out}"
    );
}

#[test]
fn two_cores_split_the_bdev_and_mixed_workloads_write() {
    let o = bdevperf(&[
        "--null",
        "64",
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "randrw",
        "-M",
        "70",
        "-t",
        "1",
        "-m",
        "0x3",
        "--no-huge",
    ]);
    let (out, err) = text(&o);
    if !o.status.success() && err.contains("reactors") {
        eprintln!("skipped: fewer than 2 cores: {err}");
        return;
    }
    assert!(o.status.success(), "{out}\n{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("Null0")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        out.contains(" writes)") && !out.contains("(0 reads"),
        "{out}"
    );
}
