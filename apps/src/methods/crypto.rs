//! Crypto methods: the accel framework's keys (`accel_crypto_key_create`,
//! `accel_crypto_key_destroy`, `accel_crypto_keys_get`) and the crypto
//! vbdev (`bdev_crypto_create`, `bdev_crypto_delete`); the accel
//! subsystem's configuration is the keys.

use std::sync::Arc;

use bdev::modules::crypto;
use serde_json::{Value, json};

use super::{Ctx, Method, Params, RpcResult, bdev_err, rt};
use crate::jsonrpc::RpcError;

/// The crypto methods.
pub(super) fn methods() -> Vec<Method> {
    vec![
        rt("accel_crypto_key_create", accel_crypto_key_create),
        rt("accel_crypto_key_destroy", accel_crypto_key_destroy),
        rt("accel_crypto_keys_get", accel_crypto_keys_get),
        rt("bdev_crypto_create", bdev_crypto_create),
        rt("bdev_crypto_delete", bdev_crypto_delete),
    ]
}

fn key_exists(name: &str) -> bool {
    !crypto::keys_get(Some(name)).is_empty()
}

fn accel_crypto_key_create(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    let cipher = p.str("cipher")?;
    let key = p.str("key")?;
    let key2 = p.opt_str("key2")?.unwrap_or_default();
    let tweak_mode = p.opt_str("tweak_mode")?;
    p.finish()?;
    if key_exists(&name) {
        return Err(RpcError::errno(-libc::EEXIST));
    }
    ctx.on_reactor(move || async move {
        crypto::key_create(&name, &cipher, &key, &key2, tweak_mode.as_deref())
    })?
    .map_err(bdev_err)?;
    Ok(json!(true))
}

fn accel_crypto_key_destroy(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("key_name")?;
    p.finish()?;
    if !key_exists(&name) {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    ctx.on_reactor(move || async move { crypto::key_destroy(&name) })?
        .map_err(bdev_err)?;
    Ok(json!(true))
}

fn accel_crypto_keys_get(_ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.opt_str("key_name")?;
    p.finish()?;
    let keys = crypto::keys_get(name.as_deref());
    if name.is_some() && keys.is_empty() {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    Ok(Value::Array(keys))
}

fn bdev_crypto_create(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let base = p.str("base_bdev_name")?;
    let name = p.str("name")?;
    let key_name = p.opt_str("key_name")?.ok_or_else(|| {
        RpcError::invalid_params(
            "'key_name' is required (create the key with accel_crypto_key_create; inline keys are not supported)",
        )
    })?;
    let uuid = p.opt_str("uuid")?;
    p.ignore("crypto_pmd");
    for k in ["key", "key2", "cipher"] {
        p.unsupported(k, Value::Null)?;
    }
    p.finish()?;
    if !key_exists(&key_name) {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    ctx.on_reactor(move || async move {
        crypto::create(&base, &name, &key_name, uuid.as_deref())
            .map(|b| json!(b.name()))
            .map_err(bdev_err)
    })?
}

fn bdev_crypto_delete(ctx: &Arc<Ctx>, mut p: Params) -> RpcResult {
    let name = p.str("name")?;
    p.finish()?;
    ctx.on_reactor(move || async move { crypto::delete(&name).await })?
        .map_err(bdev_err)?;
    Ok(json!(true))
}

/// The accel subsystem's configuration: one `accel_crypto_key_create` per
/// key.
pub(super) fn config() -> Vec<Value> {
    crypto::keys_config_json()
}
