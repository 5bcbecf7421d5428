//! The bdev modules' methods (served from `bdev/src/modules/<name>/rpc.rs`)
//! answer bad parameters with the appliance's exact texts, in SPDK's order
//! of checks (keys in the method's order, then unknown keys), accept the
//! keys SPDK's client sends that change nothing here, and are all listed by
//! `rpc_get_methods`.

mod common;

use common::{Appliance, TempDir};
use serde_json::{Value, json};

#[test]
fn module_methods_decode_parameters_as_before() {
    let dir = TempDir::new("modparams");
    let a = Appliance::start(&dir, "a", &[]);
    let names = a.call("rpc_get_methods", Value::Null).unwrap();
    for m in bdev::modules::rpc_methods() {
        assert!(
            names.as_array().unwrap().contains(&json!(m.name)),
            "{}",
            m.name
        );
    }

    let bad = |method: &str, params: Value, message: &str| {
        let e = a.call(method, params.clone()).unwrap_err();
        assert_eq!(
            e,
            (-32602, format!("Invalid parameters: {message}")),
            "{method} {params}"
        );
    };
    bad("bdev_malloc_create", json!({}), "'num_blocks' is required");
    bad(
        "bdev_malloc_create",
        json!({"block_size": "x", "bogus": 1}),
        "'num_blocks' is required",
    );
    bad(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 8, "block_size": 1u64 << 32}),
        "'block_size' must be an unsigned 32-bit integer",
    );
    bad(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 8, "md_size": 8, "bogus": 1}),
        "'md_size' = 8 is not supported",
    );
    bad(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 8, "zz": 1, "bogus": null}),
        "unknown parameter 'bogus'",
    );
    bad(
        "bdev_malloc_create",
        json!(["X", 8]),
        "parameters must be an object of named values",
    );
    bad(
        "bdev_null_create",
        json!({"name": "N", "num_blocks": 8, "numa_id": 0}),
        "unknown parameter 'numa_id'",
    );
    bad(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "D", "latency_type": 1}),
        "'latency_type' must be a string",
    );
    bad(
        "bdev_crypto_create",
        json!({"base_bdev_name": "N", "name": "C", "key": "00"}),
        "'key_name' is required (create the key with accel_crypto_key_create; inline keys are not supported)",
    );
    bad(
        "bdev_crypto_create",
        json!({"base_bdev_name": "N", "name": "C", "key_name": "k", "cipher": "AES_XTS"}),
        "'cipher' = \"AES_XTS\" is not supported",
    );
    bad(
        "bdev_nvme_attach_controller",
        json!({"name": "n", "trtype": "PCIe", "traddr": "x", "num_io_queues": -1}),
        "'num_io_queues' must be an unsigned integer",
    );
    bad(
        "bdev_passthru_delete",
        json!({"name": 1}),
        "'name' must be a string",
    );

    // Keys SPDK's client sends that change nothing here, and defaults of
    // unsupported features, are accepted.
    let created = a.call(
        "bdev_malloc_create",
        json!({"num_blocks": 8, "physical_block_size": 4096, "numa_id": -1, "md_size": 0,
               "md_interleave": false, "dif_type": 0, "dif_is_head_of_md": false,
               "dif_pi_format": 0, "optimal_io_boundary": 0, "name": null}),
    );
    assert_eq!(created, Ok(json!("Malloc0")));
    a.call("bdev_error_create", json!({"base_name": "Malloc0"}))
        .unwrap();
    let injected = a.call(
        "bdev_error_inject_error",
        json!({"name": "EE_Malloc0", "io_type": "read", "queue_depth": 1,
               "corrupt_offset": 0, "corrupt_value": 0, "nvme_sct": 0, "nvme_sc": 0}),
    );
    assert_eq!(injected, Ok(json!(true)));
    // Failures found on the connection's thread are errnos too: nobody
    // listens on port 1, so the controller cannot be reached (ENODEV, as
    // SPDK v24.09 answers; a Connect the target refuses is EIO, as there).
    assert_eq!(
        a.call(
            "bdev_nvme_attach_controller",
            json!({"name": "n", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "1",
                   "subnqn": "nqn.2016-06.io.spdk:cnode1",
                   "adrfam": "ipv4"})
        ),
        Err((-19, "No such device".into()))
    );
    assert_eq!(
        a.call("accel_crypto_keys_get", json!({"key_name": "nope"})),
        Err((-2, "No such file or directory".into()))
    );
    // bdev_nvme_set_options as SPDK's: its options taken, values that
    // break its rules EINVAL, an unknown action its decode error, a key no
    // SPDK version has refused.
    assert_eq!(
        a.call(
            "bdev_nvme_set_options",
            json!({"bdev_retry_count": 5, "timeout_us": 30_000_000, "timeout_admin_us": 0,
                   "action_on_timeout": "abort", "transport_retry_count": 4,
                   "ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 2,
                   "fast_io_fail_timeout_sec": 5, "keep_alive_timeout_ms": 10000,
                   "transport_ack_timeout": 0, "generate_uuids": false})
        ),
        Ok(json!(true))
    );
    for rule_broken in [
        json!({"bdev_retry_count": -2}),
        json!({"timeout_us": 0, "timeout_admin_us": 5}),
        json!({"ctrlr_loss_timeout_sec": 0, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 0}),
        json!({"ctrlr_loss_timeout_sec": 5, "reconnect_delay_sec": 6, "fast_io_fail_timeout_sec": 0}),
        json!({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 0}),
    ] {
        assert_eq!(
            a.call("bdev_nvme_set_options", rule_broken.clone()),
            Err((-22, "Invalid argument".into())),
            "{rule_broken}"
        );
    }
    assert_eq!(
        a.call(
            "bdev_nvme_set_options",
            json!({"action_on_timeout": "explode"})
        ),
        Err((-32603, "spdk_json_decode_object failed".into()))
    );
    bad(
        "bdev_nvme_set_options",
        json!({"timeout_seconds": 1000}),
        "unknown parameter 'timeout_seconds'",
    );
    // Back to SPDK's defaults for the rest of the run.
    assert_eq!(
        a.call(
            "bdev_nvme_set_options",
            json!({"bdev_retry_count": 3, "timeout_us": 0, "action_on_timeout": "none",
                   "ctrlr_loss_timeout_sec": 0, "reconnect_delay_sec": 0,
                   "fast_io_fail_timeout_sec": 0})
        ),
        Ok(json!(true))
    );
    // bdev_nvme_get_controller_health_info's answers without a controller.
    assert_eq!(
        a.call(
            "bdev_nvme_get_controller_health_info",
            json!({"name": "nope"})
        ),
        Err((-32603, "Device not found".into()))
    );
    assert_eq!(
        a.call("bdev_nvme_get_controller_health_info", json!(null)),
        Err((-32603, "Missing device name".into()))
    );
    assert_eq!(
        a.call("bdev_nvme_reset_controller", json!({"name": "nope"})),
        Err((-19, "No such device".into()))
    );
}

/// The ublk methods' parameter errors, and their answers where the kernel
/// has no ublk driver (the host tier's case; the guest tier drives the
/// driver itself, in `guest_ublk`).
#[test]
fn ublk_methods_check_parameters_and_say_what_is_missing() {
    let dir = TempDir::new("ublkparams");
    let a = Appliance::start(&dir, "a", &[]);
    let bad = |method: &str, params: Value, message: &str| {
        let e = a.call(method, params.clone()).unwrap_err();
        assert_eq!(
            e,
            (-32602, format!("Invalid parameters: {message}")),
            "{method} {params}"
        );
    };
    bad(
        "ublk_start_disk",
        json!({ "ublk_id": 1 }),
        "'bdev_name' is required",
    );
    bad(
        "ublk_start_disk",
        json!({ "bdev_name": "M" }),
        "'ublk_id' is required",
    );
    bad(
        "ublk_start_disk",
        json!({ "bdev_name": "M", "ublk_id": -1 }),
        "'ublk_id' must be an unsigned integer",
    );
    bad(
        "ublk_start_disk",
        json!({ "bdev_name": "M", "ublk_id": 1u64 << 32 }),
        "'ublk_id' must be an unsigned 32-bit integer",
    );
    bad("ublk_stop_disk", json!({}), "'ublk_id' is required");
    bad(
        "ublk_recover_disk",
        json!({ "ublk_id": 1 }),
        "'bdev_name' is required",
    );
    bad(
        "ublk_create_target",
        json!({ "cpumask": 3 }),
        "'cpumask' must be a string",
    );
    bad(
        "ublk_get_disks",
        json!({ "nope": 1 }),
        "unknown parameter 'nope'",
    );
    // No target yet: every disk method says so.
    for (m, p) in [
        ("ublk_start_disk", json!({ "bdev_name": "M", "ublk_id": 1 })),
        ("ublk_stop_disk", json!({ "ublk_id": 1 })),
        (
            "ublk_recover_disk",
            json!({ "bdev_name": "M", "ublk_id": 1 }),
        ),
    ] {
        let e = a.call(m, p).unwrap_err();
        assert_eq!(e.0, -19, "{m}: {e:?}");
        assert!(e.1.contains("ublk_create_target"), "{m}: {e:?}");
    }
    assert_eq!(a.call("ublk_get_disks", json!(null)).unwrap(), json!([]));
    let e = a.call("ublk_destroy_target", json!(null)).unwrap_err();
    assert_eq!(e.0, -2, "{e:?}");
    let e = a
        .call("ublk_create_target", json!({ "cpumask": "0x4" }))
        .unwrap_err();
    assert_eq!(e.0, -22, "{e:?}");
    assert!(e.1.contains("core 2"), "{e:?}");
    if !std::path::Path::new("/dev/ublk-control").exists() {
        let e = a.call("ublk_create_target", json!(null)).unwrap_err();
        assert_eq!(e.0, -2, "{e:?}");
        assert!(e.1.contains("/dev/ublk-control"), "{e:?}");
        assert!(e.1.contains("ublk_drv"), "{e:?}");
    }
    assert_eq!(
        a.call("framework_get_config", json!({ "name": "ublk" }))
            .unwrap(),
        json!([])
    );
}
