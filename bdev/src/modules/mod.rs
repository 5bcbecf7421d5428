//! Bdev modules, one folder each: `modules/<name>/mod.rs` (the module) and
//! `modules/<name>/rpc.rs` (its JSON-RPC methods and their parameters, and
//! the `save_config` entries it writes itself). A module's methods are
//! served once its line is in [`rpc_methods`].

use serde_json::Value;

use crate::rpc::Method;

pub mod aio;
pub mod crypto;
pub mod delay;
pub mod error;
pub mod lvol;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod passthru;
pub mod powercut;
pub mod raid;
pub mod uring;

/// Every module's JSON-RPC methods: one line per module.
pub fn rpc_methods() -> Vec<Method> {
    [
        malloc::rpc::methods(),
        aio::rpc::methods(),
        uring::rpc::methods(),
        null::rpc::methods(),
        delay::rpc::methods(),
        error::rpc::methods(),
        passthru::rpc::methods(),
        nvme::rpc::methods(),
        crypto::rpc::methods(),
        raid::rpc::methods(),
        lvol::rpc::methods(),
        crate::blob::rpc::methods(),
    ]
    .concat()
}

/// Registers the modules that examine new bdevs (RAID: members and
/// superblocks; lvol: lvstores) with the layer; an application calls it once at start,
/// after [`crate::set_runtime`].
///
/// # Errors
/// The layer's refusal.
pub fn init() -> Result<(), crate::BdevError> {
    raid::register()?;
    lvol::register()
}

/// The `save_config` entries modules write themselves for `subsystem`
/// (SPDK's name): the accel framework's keys (crypto) for `accel`; the
/// NVMe controllers for `bdev`, which go before the layer's own entries
/// ([`crate::config_calls`]).
pub fn rpc_config(subsystem: &str) -> Vec<Value> {
    match subsystem {
        "accel" => crypto::rpc::config(),
        "bdev" => nvme::rpc::config(),
        _ => Vec::new(),
    }
}

/// Parses a UUID given by a user (36 characters, hex and dashes).
pub(crate) fn check_uuid(u: &str) -> Result<String, crate::BdevError> {
    let ok = u.len() == 36
        && u.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(u.to_ascii_lowercase())
    } else {
        Err(crate::BdevError::invalid(
            "uuid",
            format!("{u:?} is not a UUID"),
        ))
    }
}
