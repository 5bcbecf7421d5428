//! The NVMe-oF target's methods through SPDK's own client (`spdk-rpc`):
//! Longhorn's expose and stop flows (transport created once, "already
//! exists" after; a subsystem with min_cntlid = max_cntlid and ANA
//! reporting; a namespace with an NGUID; a listener given as "tcp"/"ipv4"
//! and removed with the "TCP"/"IPv4" the target reports; ANA state set
//! per group), every answer decoded as go-spdk-helper's types; the texts
//! SPDK's `invalid.sh` greps; and save_config replayed by `--json`.

mod common;

use common::{Appliance, TempDir, add_tcp_listener, expect_error, free_port};
use serde::Deserialize;
use serde_json::{Value, json};

const NQN: &str = "nqn.2023-01.io.longhorn.spdk:vol-e-0";

/// go-spdk-helper's `NvmfTransport`.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct NvmfTransport {
    trtype: String,
    max_queue_depth: u32,
    max_io_qpairs_per_ctrlr: u32,
    in_capsule_data_size: u32,
    max_io_size: u32,
    io_unit_size: u32,
    max_aq_depth: u32,
    num_shared_buffers: u32,
    buf_cache_size: u32,
    sock_priority: u32,
    abort_timeout_sec: u32,
    dif_insert_or_strip: bool,
    zcopy: bool,
    c2h_success: bool,
}

/// go-spdk-helper's `NvmfListenAddress`.
#[derive(Debug, Deserialize, PartialEq)]
struct ListenAddress {
    trtype: String,
    adrfam: String,
    traddr: String,
    trsvcid: String,
}

/// go-spdk-helper's `NvmfSubsystemNamespace`.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct Namespace {
    nsid: u32,
    bdev_name: String,
    #[serde(default)]
    nguid: String,
    #[serde(default)]
    eui64: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    anagrpid: Option<Value>,
}

/// go-spdk-helper's `NvmfSubsystem`.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct Subsystem {
    nqn: String,
    subtype: String,
    listen_addresses: Vec<ListenAddress>,
    allow_any_host: bool,
    hosts: Vec<Value>,
    #[serde(default)]
    serial_number: String,
    #[serde(default)]
    model_number: String,
    #[serde(default)]
    max_namespaces: u32,
    #[serde(default)]
    min_cntlid: u16,
    #[serde(default)]
    max_cntlid: u16,
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
struct AnaStateEntry {
    ana_group: u32,
    ana_state: String,
}

/// go-spdk-helper's `NvmfSubsystemListener` (plus SPDK's `ana_states`).
#[derive(Debug, Deserialize)]
struct Listener {
    address: ListenAddress,
    #[serde(default)]
    ana_states: Vec<AnaStateEntry>,
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

#[test]
fn longhorns_expose_and_stop_flow() {
    let dir = TempDir::new("nvmf-longhorn");
    let a = Appliance::start(&dir, "tgt", &[]);
    a.ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    let port = free_port();

    // Expose: the transport only when none exists.
    let list: Vec<NvmfTransport> = decode(a.json(&["nvmf_get_transports"]));
    assert!(list.is_empty());
    a.ok(&["nvmf_create_transport", "-t", "tcp"]);
    expect_error(
        &a,
        &["nvmf_create_transport", "-t", "tcp"],
        -32603,
        "Transport type 'tcp' already exists",
    );
    let list: Vec<NvmfTransport> = decode(a.json(&["nvmf_get_transports"]));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].trtype, "TCP");
    assert_eq!(list[0].max_queue_depth, 128);
    assert_eq!(list[0].in_capsule_data_size, 4096);
    assert_eq!(list[0].buf_cache_size, u32::MAX);
    assert!(list[0].c2h_success);

    a.ok(&[
        "nvmf_create_subsystem",
        NQN,
        "-a",
        "-i",
        "7",
        "-I",
        "7",
        "-r",
    ]);
    let nguid = "0123456789ABCDEF0123456789ABCDEF";
    // spdk-rpc prints nothing for it: the nsid through a direct call.
    let nsid = a
        .call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nguid": nguid}}),
        )
        .unwrap();
    assert_eq!(nsid, json!(1));
    add_tcp_listener(&a, NQN, &port, &["-f", "ipv4"]);
    a.ok(&[
        "nvmf_subsystem_listener_set_ana_state",
        NQN,
        "-n",
        "inaccessible",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-f",
        "ipv4",
        "-g",
        "1",
    ]);

    let subs: Vec<Subsystem> = decode(a.json(&["nvmf_get_subsystems"]));
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0].subtype, "Discovery");
    let s = &subs[1];
    assert_eq!((s.nqn.as_str(), s.subtype.as_str()), (NQN, "NVMe"));
    assert_eq!((s.min_cntlid, s.max_cntlid, s.max_namespaces), (7, 7, 32));
    assert!(s.allow_any_host);
    assert_eq!(s.serial_number, "00000000000000000000");
    assert_eq!(s.model_number, "SPDK bdev Controller");
    assert_eq!(
        s.listen_addresses,
        vec![ListenAddress {
            trtype: "TCP".into(),
            adrfam: "IPv4".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: port.clone(),
        }]
    );
    assert_eq!(s.namespaces.len(), 1);
    let ns = &s.namespaces[0];
    assert_eq!((ns.nsid, ns.bdev_name.as_str()), (1, "Malloc0"));
    assert_eq!(ns.nguid, nguid);
    assert_eq!(ns.anagrpid, Some(json!(1)));
    // The UUID is the bdev's when none is given.
    let bdev = a.json(&["bdev_get_bdevs", "-b", "Malloc0"]);
    assert_eq!(ns.uuid, bdev[0]["uuid"].as_str().unwrap());

    // Stop: listeners as reported, then namespaces, then the subsystem.
    let ls: Vec<Listener> = decode(a.json(&["nvmf_subsystem_get_listeners", NQN]));
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].ana_states.len(), 32);
    assert_eq!(
        (
            ls[0].ana_states[0].ana_group,
            ls[0].ana_states[0].ana_state.as_str()
        ),
        (1, "inaccessible")
    );
    assert_eq!(ls[0].ana_states[1].ana_state, "optimized");
    let l = &ls[0].address;
    a.ok(&[
        "nvmf_subsystem_remove_listener",
        NQN,
        "-t",
        &l.trtype,
        "-a",
        &l.traddr,
        "-s",
        &l.trsvcid,
        "-f",
        &l.adrfam,
    ]);
    // Not a listener any more: SPDK's -32602, never "Unable to stop
    // listener.".
    let o = a.spdk_rpc(&[
        "nvmf_subsystem_remove_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() && out.contains("-32602"), "{out}");
    assert!(!out.contains("Unable to stop listener."), "{out}");
    a.ok(&["nvmf_subsystem_remove_ns", NQN, "1"]);
    a.ok(&["nvmf_delete_subsystem", NQN]);
    let subs: Vec<Subsystem> = decode(a.json(&["nvmf_get_subsystems"]));
    assert_eq!(subs.len(), 1);
    // The bdev is free again.
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
}

#[test]
fn refusals_use_spdks_codes_and_texts() {
    let dir = TempDir::new("nvmf-invalid");
    let a = Appliance::start(&dir, "tgt", &[]);
    let n = "nqn.2016-06.io.spdk:cnode1";
    // SPDK's test/nvmf/target/invalid.sh.
    expect_error(
        &a,
        &["nvmf_create_subsystem", "-t", "foobar", n],
        -32603,
        "Unable to find target foobar",
    );
    let o = a.spdk_rpc(&[
        "nvmf_create_subsystem",
        "-s",
        "SPDKISFASTANDAWESOME\u{1f}",
        n,
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Invalid SN"));
    let o = a.spdk_rpc(&["nvmf_create_subsystem", "-d", "SPDK_Controller\u{1f}", n]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Invalid MN"));
    let o = a.spdk_rpc(&["nvmf_create_subsystem", "-s", &"x".repeat(21), n]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Invalid SN"));
    for (lo, hi) in [
        ("0", "5"),
        ("65520", "65520"),
        ("1", "0"),
        ("1", "65520"),
        ("6", "5"),
    ] {
        let o = a.spdk_rpc(&["nvmf_create_subsystem", n, "-i", lo, "-I", hi]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Invalid cntlid range"), "{lo}-{hi}: {out}");
    }
    let o = a.spdk_rpc(&["nvmf_create_subsystem", "nqn.2016-06.io.spdk"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Unable to create subsystem"));
    expect_error(
        &a,
        &["nvmf_create_transport", "-t", "rdma"],
        -32602,
        "Invalid parameters: Invalid transport type 'rdma'",
    );
    // Unknown RDMA keys are accepted for TCP, as SPDK's relaxed decoding.
    a.ok(&[
        "nvmf_create_transport",
        "-t",
        "TCP",
        "-r",
        "-d",
        "128",
        "-l",
        "100",
    ]);
    a.ok(&["nvmf_create_subsystem", n, "-a"]);
    expect_error(
        &a,
        &["nvmf_create_subsystem", n],
        -32603,
        &format!("Unable to create subsystem {n}: it already exists"),
    );
    // Longhorn's "no such device" answers.
    expect_error(
        &a,
        &["nvmf_get_subsystems", "nqn.2016-06.io.spdk:none"],
        -19,
        "No such device",
    );
    let o = a.spdk_rpc(&["nvmf_subsystem_add_ns", n, "NoSuchBdev"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("-32602") && out.contains("NoSuchBdev"),
        "{out}"
    );
    let o = a.spdk_rpc(&["nvmf_subsystem_get_listeners", "nqn.2016-06.io.spdk:none"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("-32602"));
    let o = a.spdk_rpc(&[
        "nvmf_subsystem_listener_set_ana_state",
        "nqn.2016-06.io.spdk:none",
        "-n",
        "optimized",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        "4420",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("Unable to find subsystem with NQN nqn.2016-06.io.spdk:none")
    );
    // A bad NGUID, an nsid past max_namespaces.
    a.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    let o = a.spdk_rpc(&["nvmf_subsystem_add_ns", n, "M0", "-g", "XYZ"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("-32602"));
    let o = a.spdk_rpc(&["nvmf_subsystem_add_ns", n, "M0", "-n", "33"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("-32602"));
    // The bdev is claimed by the namespace: a second subsystem cannot take it.
    a.ok(&["nvmf_subsystem_add_ns", n, "M0"]);
    a.ok(&["nvmf_create_subsystem", "nqn.2016-06.io.spdk:cnode2"]);
    let o = a.spdk_rpc(&["nvmf_subsystem_add_ns", "nqn.2016-06.io.spdk:cnode2", "M0"]);
    assert!(!o.status.success());
}

#[test]
fn save_config_brings_the_target_back() {
    let dir = TempDir::new("nvmf-config");
    let port = free_port();
    let cfg = dir.join("cfg.json");
    {
        let a = Appliance::start(&dir, "one", &[]);
        a.ok(&["bdev_malloc_create", "-b", "M0", "16", "4096"]);
        a.ok(&["nvmf_create_transport", "-t", "tcp", "-c", "8192"]);
        a.ok(&["nvmf_create_subsystem", NQN, "-s", "SN42", "-r"]);
        a.ok(&[
            "nvmf_subsystem_add_host",
            NQN,
            "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
        ]);
        a.ok(&["nvmf_subsystem_add_ns", NQN, "M0", "-e", "0011223344556677"]);
        add_tcp_listener(&a, NQN, &port, &[]);
        let saved = a.ok(&["save_config"]);
        std::fs::write(&cfg, saved).unwrap();
    }
    let before: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let b = Appliance::start(&dir, "two", &["--json", cfg.to_str().unwrap()]);
    let subs = b.json(&["nvmf_get_subsystems", NQN]);
    let s = &subs[0];
    assert_eq!(s["serial_number"], "SN42");
    assert_eq!(
        s["hosts"][0]["nqn"],
        "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(s["namespaces"][0]["eui64"], "0011223344556677");
    assert_eq!(s["namespaces"][0]["anagrpid"], 1);
    assert_eq!(s["listen_addresses"][0]["trsvcid"], port.as_str());
    let t = b.json(&["nvmf_get_transports"]);
    assert_eq!(t[0]["in_capsule_data_size"], 8192);
    let after: Value = serde_json::from_str(&b.ok(&["save_config"])).unwrap();
    let nvmf = |v: &Value| {
        v["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subsystem"] == "nvmf")
            .cloned()
            .unwrap()
    };
    assert_eq!(nvmf(&before), nvmf(&after));
}
