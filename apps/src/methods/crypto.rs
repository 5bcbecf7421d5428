//! Crypto methods (`accel_crypto_key_*`, `bdev_crypto_*`): wired once the
//! crypto vbdev module exists in the bdev crate; until then the accel
//! subsystem has no configuration and these methods are not offered.

use serde_json::Value;

use super::Method;

/// The crypto methods offered.
pub(super) fn methods() -> Vec<Method> {
    Vec::new()
}

/// The accel subsystem's configuration (the keys).
pub(super) fn config() -> Vec<Value> {
    Vec::new()
}
