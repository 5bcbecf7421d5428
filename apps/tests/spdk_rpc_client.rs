//! The appliance driven by SPDK's own client, `spdk-rpc` (PyPI `spdk`):
//! create malloc, null, delay, error, passthrough and crypto bdevs (and a
//! crypto key), list them, resize null bdevs and see the passthrough and
//! crypto bdevs above them follow, statistics and
//! reactors, SPDK's error codes and texts, delete everything;
//! `save_config` → restart with `--json` → the same bdevs (names, sizes,
//! UUIDs), keys and exports, and `load_config` into a fresh instance; orderly shutdown on
//! SIGTERM and on `spdk_kill_instance`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Appliance, TempDir, expect_error};
use serde_json::{Value, json};

fn by_name(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_owned(), b.clone()))
        .collect()
}

/// (name, num_blocks, block_size, uuid) of every bdev: all of it, the UUID
/// too, must come back from a saved config.
fn summary(a: &Appliance) -> Vec<(String, u64, u64, String)> {
    by_name(&a.json(&["bdev_get_bdevs"]))
        .into_values()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["num_blocks"].as_u64().unwrap(),
                b["block_size"].as_u64().unwrap(),
                b["uuid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `spdk-rpc` arguments that create the AES-128-XTS key `k0`.
const KEY_K0: [&str; 9] = [
    "accel_crypto_key_create",
    "-c",
    "AES_XTS",
    "-k",
    "00112233445566778899aabbccddeeff",
    "-e",
    "ffeeddccbbaa99887766554433221100",
    "-n",
    "k0",
];

#[test]
fn spdk_rpc_drives_the_appliance() {
    let dir = TempDir::new("rpc");
    let mut a = Appliance::start(&dir, "a", &[]);

    // Framework.
    let v = a.json(&["spdk_get_version"]);
    assert_eq!(v["fields"]["major"], 24, "{v}");
    let methods = a.json(&["rpc_get_methods"]);
    for m in [
        "bdev_get_bdevs",
        "bdev_malloc_create",
        "bdev_null_resize",
        "nbd_start_disk",
        "framework_get_config",
        "spdk_kill_instance",
    ] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{m}");
    }
    let current = a.json(&["rpc_get_methods", "--current"]);
    assert!(
        !current
            .as_array()
            .unwrap()
            .contains(&json!("framework_start_init"))
    );
    let r = a.json(&["framework_get_reactors"]);
    assert_eq!(r["reactors"][0]["lcore"], 0, "{r}");
    assert!(r["tick_rate"].as_u64().unwrap() > 0);
    let t = a.json(&["thread_get_stats"]);
    assert_eq!(t["threads"][0]["name"], "reactor_0", "{t}");

    // Create: malloc (name given and SPDK's default name), null, delay,
    // error, passthrough.
    assert_eq!(
        a.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]).trim(),
        "M0"
    );
    assert_eq!(a.ok(&["bdev_malloc_create", "4", "4096"]).trim(), "Malloc0");
    assert_eq!(a.ok(&["bdev_null_create", "N0", "16", "512"]).trim(), "N0");
    assert_eq!(
        a.ok(&[
            "bdev_delay_create",
            "-b",
            "M0",
            "-d",
            "D0",
            "-r",
            "10",
            "-t",
            "20",
            "-w",
            "30",
            "-n",
            "40"
        ])
        .trim(),
        "D0"
    );
    a.ok(&["bdev_error_create", "Malloc0"]);
    assert_eq!(
        a.ok(&["bdev_passthru_create", "-b", "N0", "-p", "P0"])
            .trim(),
        "P0"
    );
    // Crypto: a key, then a crypto bdev over its own null bdev.
    assert_eq!(a.ok(&KEY_K0).trim(), "true");
    assert_eq!(a.ok(&["bdev_null_create", "N1", "8", "512"]).trim(), "N1");
    assert_eq!(
        a.ok(&["bdev_crypto_create", "N1", "C0", "-n", "k0"]).trim(),
        "C0"
    );
    let keys = a.json(&["accel_crypto_keys_get"]);
    assert_eq!(keys[0]["name"], "k0", "{keys}");
    assert_eq!(keys[0]["cipher"], "AES_XTS");
    a.ok(&["bdev_wait_for_examine"]);

    // List.
    let all = by_name(&a.json(&["bdev_get_bdevs"]));
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        ["C0", "D0", "EE_Malloc0", "M0", "Malloc0", "N0", "N1", "P0"]
    );
    let m0 = &all["M0"];
    assert_eq!(m0["num_blocks"], 16384);
    assert_eq!(m0["block_size"], 512);
    assert_eq!(m0["product_name"], "Malloc disk");
    assert_eq!(m0["claimed"], true, "D0 claims M0");
    assert_eq!(m0["supported_io_types"]["read"], true);
    assert!(m0["assigned_rate_limits"].is_object());
    assert_eq!(all["Malloc0"]["block_size"], 4096);
    assert_eq!(all["D0"]["claimed"], false);
    assert_eq!(
        all["D0"]["driver_specific"]["delay"]["p99_write_latency"],
        40
    );
    assert_eq!(all["N0"]["product_name"], "Null disk");
    assert_eq!(
        all["P0"]["driver_specific"]["passthru"]["base_bdev_name"],
        "N0"
    );
    let one = a.json(&["bdev_get_bdevs", "-b", "P0"]);
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["num_blocks"], 32768);

    // Resize the null bdev: the passthrough bdev above it follows.
    a.ok(&["bdev_null_resize", "N0", "64"]);
    let all = by_name(&a.json(&["bdev_get_bdevs"]));
    assert_eq!(all["N0"]["num_blocks"], 131072);
    assert_eq!(
        all["P0"]["num_blocks"], 131072,
        "the vbdev follows its base"
    );

    // Updates.
    a.ok(&["bdev_delay_update_latency", "D0", "avg_read", "15"]);
    let d0 = a.json(&["bdev_get_bdevs", "-b", "D0"]);
    assert_eq!(d0[0]["driver_specific"]["delay"]["avg_read_latency"], 15);
    a.ok(&[
        "bdev_error_inject_error",
        "EE_Malloc0",
        "write",
        "failure",
        "-n",
        "1",
    ]);

    // Statistics.
    let st = a.json(&["bdev_get_iostat"]);
    assert!(st["tick_rate"].as_u64().unwrap() > 0);
    let names: Vec<&str> = st["bdevs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 8, "{st}");
    for k in [
        "bytes_read",
        "num_read_ops",
        "read_latency_ticks",
        "num_write_ops",
    ] {
        assert!(st["bdevs"][0].get(k).is_some(), "{k}");
    }

    // SPDK's error codes and texts.
    expect_error(&a, &["bdev_get_bdevs", "-b", "nope"], -19, "No such device");
    expect_error(
        &a,
        &["bdev_malloc_create", "-b", "M0", "8", "512"],
        -17,
        "File exists",
    );
    expect_error(&a, &["bdev_malloc_delete", "nope"], -19, "No such device");
    expect_error(
        &a,
        &["bdev_null_resize", "nope", "8"],
        -19,
        "No such device",
    );
    expect_error(
        &a,
        &["bdev_null_create", "Nbad", "1", "1000"],
        -22,
        "Invalid argument",
    );
    expect_error(
        &a,
        &["bdev_delay_update_latency", "D0", "avg_read", "100"],
        -22,
        "Invalid argument",
    );
    expect_error(
        &a,
        &["bdev_passthru_create", "-b", "nope", "-p", "Px"],
        -19,
        "No such device",
    );
    expect_error(
        &a,
        &["bdev_passthru_create", "-b", "M0", "-p", "Px"],
        -1,
        "Operation not permitted",
    );
    expect_error(
        &a,
        &["framework_get_config", "nope"],
        -2,
        "No such file or directory",
    );

    // bdev_get_bdevs with a timeout waits for the bdev to appear.
    let sock = a.sock.clone();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut c = common::RpcConn::connect(&sock);
        c.call(
            "bdev_null_create",
            json!({"name": "Late", "num_blocks": 64, "block_size": 512}),
        )
        .unwrap();
    });
    let t0 = Instant::now();
    let late = a.json(&["bdev_get_bdevs", "-b", "Late", "-t", "5000"]);
    assert_eq!(late[0]["name"], "Late");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    later.join().unwrap();
    a.ok(&["bdev_null_delete", "Late"]);

    // save_config, then restart with --json: the same bdevs, keys and
    // exports.
    let export = dir.join("p0.nbd");
    let export = export.to_str().unwrap();
    assert_eq!(a.ok(&["nbd_start_disk", "P0", export]).trim(), export);
    // QoS limits are part of the configuration.
    a.ok(&[
        "bdev_set_qos_limit",
        "M0",
        "--rw-ios-per-sec",
        "20000",
        "--r-mbytes-per-sec",
        "100",
    ]);
    let before = summary(&a);
    let cfg = dir.join("config.json");
    let saved = a.ok(&["save_config"]);
    let qos_call = json!({"method": "bdev_set_qos_limit",
        "params": {"name": "M0", "rw_ios_per_sec": 20000, "r_mbytes_per_sec": 100}});
    assert!(saved.contains("bdev_set_qos_limit"), "{saved}");
    let parsed: Value = serde_json::from_str(&saved).unwrap();
    let bdev_calls = parsed["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    assert!(
        bdev_calls.as_array().unwrap().contains(&qos_call),
        "{bdev_calls}"
    );
    std::fs::write(&cfg, &saved).unwrap();
    let st = a.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "SIGTERM exit: {st}\n{}", a.log_text());
    let log = a.log_text();
    let p0 = log.find("bdev P0 unregistered").expect("P0 unregistered");
    let n0 = log.find("bdev N0 unregistered").expect("N0 unregistered");
    assert!(p0 < n0, "the vbdev goes before its base:\n{log}");
    assert!(!a.sock.exists(), "socket removed on exit");

    let b = Appliance::start(&dir, "b", &["--json", cfg.to_str().unwrap()]);
    assert_eq!(summary(&b), before, "--json reloads the saved bdevs");
    assert_eq!(
        b.json(&["bdev_get_bdevs", "-b", "M0"])[0]["assigned_rate_limits"],
        json!({"rw_ios_per_sec": 20000, "rw_mbytes_per_sec": 0,
               "r_mbytes_per_sec": 100, "w_mbytes_per_sec": 0})
    );
    assert_eq!(b.json(&["accel_crypto_keys_get"])[0]["name"], "k0");
    assert_eq!(
        b.json(&["nbd_get_disks"]),
        json!([{"nbd_device": export, "bdev_name": "P0"}])
    );
    let resaved: Value = serde_json::from_str(&b.ok(&["save_config"])).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        resaved, saved,
        "save_config after reload is the same, UUIDs included"
    );
    b.ok(&["nbd_stop_disk", export]);

    // load_config into a fresh instance: the same bdevs again.
    let c = Appliance::start(&dir, "c", &[]);
    let o = c.spdk_rpc_stdin(
        &["load_config"],
        Some(serde_json::to_vec(&saved).unwrap().as_slice()),
    );
    assert!(
        o.status.success(),
        "load_config: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(summary(&c), before, "load_config reloads the saved bdevs");
    assert_eq!(c.json(&["nbd_get_disks"])[0]["bdev_name"], "P0");
    drop(c);

    // Delete everything, top down.
    for (m, n) in [
        ("bdev_crypto_delete", "C0"),
        ("bdev_null_delete", "N1"),
        ("bdev_passthru_delete", "P0"),
        ("bdev_delay_delete", "D0"),
        ("bdev_error_delete", "EE_Malloc0"),
        ("bdev_malloc_delete", "M0"),
        ("bdev_malloc_delete", "Malloc0"),
        ("bdev_null_delete", "N0"),
    ] {
        b.ok(&[m, n]);
    }
    assert_eq!(b.json(&["bdev_get_bdevs"]), json!([]));
    b.ok(&["accel_crypto_key_destroy", "-n", "k0"]);
    assert_eq!(b.json(&["accel_crypto_keys_get"]), json!([]));

    // spdk_kill_instance: an orderly exit.
    let mut b = b;
    b.spdk_rpc(&["spdk_kill_instance", "SIGTERM"]);
    let st = b.wait_exit();
    assert!(st.success(), "{st}\n{}", b.log_text());
}

#[test]
fn start_up_errors_are_clear() {
    let dir = TempDir::new("start");
    // A config whose call fails: the appliance refuses to start and says why.
    let cfg = dir.join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_passthru_create","params":{"base_bdev_name":"nope","name":"p"}}]}]}"#,
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["--no-huge", "-s", "64", "--no-pin", "-r"])
        .arg(dir.join("x.sock"))
        .arg("--json")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bdev_passthru_create failed") && err.contains("No such device"),
        "{err}"
    );
    // A bad option names itself.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["-m", "zz"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("-m zz"));
    // A socket path served by a live appliance is refused.
    let a = Appliance::start(&dir, "live", &[]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["--no-huge", "-s", "64", "--no-pin", "-r"])
        .arg(&a.sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));
    assert!(a.call("spdk_get_version", Value::Null).is_ok());
}

/// `CRYPTO_ENGINE` picks the AES-XTS engine for the whole appliance:
/// `bdev_get_bdevs` and the log name it; a name that is not an engine (or
/// one this CPU lacks) makes key creation fail (-22, the log naming the
/// variable), and the appliance keeps serving.
#[test]
fn crypto_engine_override_is_used_and_reported() {
    let dir = TempDir::new("engine");
    let key = KEY_K0;
    let a = Appliance::start_with_env(&dir, "soft", &[], &[("CRYPTO_ENGINE", "soft")]);
    assert_eq!(a.ok(&key).trim(), "true");
    a.ok(&["bdev_null_create", "N0", "8", "512"]);
    a.ok(&["bdev_crypto_create", "N0", "C0", "-n", "k0"]);
    let b = a.json(&["bdev_get_bdevs", "-b", "C0"]);
    assert_eq!(b[0]["driver_specific"]["crypto"]["engine"], "soft", "{b}");
    assert!(
        a.log_text()
            .contains("AES-XTS engine soft (set by CRYPTO_ENGINE)"),
        "{}",
        a.log_text()
    );
    drop(a);

    // As SPDK, the answer is the errno (-22 "Invalid argument") and the
    // log says what was wrong.
    let a = Appliance::start_with_env(&dir, "bad", &[], &[("CRYPTO_ENGINE", "turbo")]);
    expect_error(&a, &key, -22, "Invalid argument");
    let log = a.log_text();
    assert!(
        log.contains("invalid CRYPTO_ENGINE") && log.contains("\"turbo\""),
        "the log names the variable and the value: {log}"
    );
    assert!(a.call("spdk_get_version", Value::Null).is_ok());
    assert_eq!(a.json(&["accel_crypto_keys_get"]), json!([]));
}

/// A client that writes like Longhorn's Go client: every call on one
/// connection, `"params": null` when there are none, each reply read on its
/// own; the answers come in order, with the request's id.
#[test]
fn a_go_style_client_with_null_params_is_served() {
    let dir = TempDir::new("goclient");
    let a = Appliance::start(&dir, "go", &[]);
    let mut c = common::RpcConn::connect(&a.sock);
    let calls = [
        ("spdk_get_version", Value::Null),
        ("bdev_get_bdevs", Value::Null),
        (
            "bdev_malloc_create",
            json!({"name": "G0", "num_blocks": 256, "block_size": 512}),
        ),
        ("bdev_get_bdevs", Value::Null),
        ("rpc_get_methods", Value::Null),
    ];
    let mut replies = Vec::new();
    for (i, (method, params)) in calls.iter().enumerate() {
        let id = 100 + i as u64;
        let req = common::go_encoded(id, method, params);
        assert!(req.contains("\n\t\""), "{req}");
        c.send_raw(req.as_bytes()).unwrap();
        let r = c.recv().expect("an answer");
        assert_eq!(r["id"], json!(id), "{method}: {r}");
        assert!(r.get("error").is_none(), "{method}: {r}");
        replies.push(r);
    }
    assert!(
        replies[0]["result"]["version"].is_string(),
        "{}",
        replies[0]
    );
    assert_eq!(replies[1]["result"], json!([]));
    assert_eq!(replies[2]["result"], json!("G0"));
    assert_eq!(replies[3]["result"][0]["name"], "G0");
    let methods = replies[4]["result"].as_array().unwrap();
    assert!(methods.iter().any(|m| m == "bdev_get_bdevs"));
}

/// The log methods through SPDK's `spdk-rpc`: levels by SPDK's names (any
/// case) and components' debug flags, read back, and what the appliance
/// writes follows them at run time.
#[test]
fn log_levels_and_flags_change_what_is_logged() {
    let dir = TempDir::new("log");
    let a = Appliance::start(&dir, "a", &[]);
    assert_eq!(a.json(&["log_get_print_level"]), "INFO");
    assert_eq!(a.json(&["log_get_level"]), "INFO");
    let flags = a.json(&["log_get_flags"]);
    assert_eq!(flags["rpc"], false, "{flags}");
    assert_eq!(flags["bdev_nvme"], false, "{flags}");

    // DEBUG, but the rpc component's debug lines only with its flag.
    a.ok(&["log_set_print_level", "DEBUG"]);
    assert_eq!(a.json(&["log_get_print_level"]), "DEBUG");
    a.ok(&["bdev_get_bdevs"]);
    assert!(
        !a.log_text().contains("apps::server: RPC bdev_get_bdevs"),
        "no rpc debug line without the flag"
    );
    a.ok(&["log_set_flag", "rpc"]);
    assert_eq!(a.json(&["log_get_flags"])["rpc"], true);
    a.ok(&["bdev_get_iostat"]);
    assert!(
        a.log_text().contains("apps::server: RPC bdev_get_iostat"),
        "the rpc debug line with the flag:\n{}",
        a.log_text()
    );
    a.ok(&["log_clear_flag", "rpc"]);
    a.ok(&["framework_get_reactors"]);
    assert!(
        !a.log_text()
            .contains("apps::server: RPC framework_get_reactors")
    );

    // ERROR: an informational line (a bdev registered) is not written;
    // back at NOTICE it is.
    a.ok(&["log_set_print_level", "ERROR"]);
    a.ok(&["log_set_level", "ERROR"]);
    assert_eq!(a.json(&["log_get_level"]), "ERROR");
    a.ok(&["bdev_malloc_create", "-b", "Mquiet", "8", "512"]);
    assert!(!a.log_text().contains("bdev Mquiet registered"));
    a.ok(&["log_set_print_level", "NOTICE"]);
    assert_eq!(a.json(&["log_get_print_level"]), "NOTICE");
    a.ok(&["bdev_malloc_create", "-b", "Mloud", "8", "512"]);
    assert!(
        a.log_text().contains("bdev Mloud registered"),
        "{}",
        a.log_text()
    );

    // spdk-rpc only sends SPDK's level names; other clients may send any
    // case (SPDK compares without case) or a bad name.
    let mut raw = common::RpcConn::connect(&a.sock);
    assert_eq!(
        raw.call("log_set_level", serde_json::json!({ "level": "warning" })),
        Ok(serde_json::json!(true))
    );
    assert_eq!(a.json(&["log_get_level"]), "WARNING");
    assert_eq!(
        raw.call("log_set_level", serde_json::json!({ "level": "LOUD" })),
        Err((-32602, "invalid log level".into()))
    );
    assert_eq!(
        raw.call("log_set_print_level", serde_json::json!({})),
        Err((-32603, "spdk_json_decode_object failed".into()))
    );
    assert_eq!(
        raw.call("log_get_flags", serde_json::json!({ "x": 1 })),
        Err((-32602, "log_get_flags requires no parameters".into()))
    );
    // An error for a flag that does not exist (SPDK answers true).
    expect_error(
        &a,
        &["log_set_flag", "no_such_component"],
        -32602,
        "unknown log flag 'no_such_component' (log_get_flags lists them)",
    );
}
