//! The crypto module's methods: the keys (`accel_crypto_key_create`,
//! `accel_crypto_key_destroy`, `accel_crypto_keys_get`, kept under SPDK's
//! accel framework) and the vbdev (`bdev_crypto_create`,
//! `bdev_crypto_delete`); the accel subsystem's configuration is the keys
//! ([`config`]).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{
    Absent, Call, Ignored, Method, RpcError, Unsupported, bdev_err, decode, decode_hinted,
    delete_by_name, done,
};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("accel_crypto_key_create", key_create),
        Method::new("accel_crypto_key_destroy", key_destroy),
        Method::new("accel_crypto_keys_get", keys_get),
        Method::new("bdev_crypto_create", create),
        Method::new("bdev_crypto_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
    ]
}

/// The accel subsystem's `save_config` entries: one
/// `accel_crypto_key_create` per key.
pub fn config() -> Vec<Value> {
    super::keys_config_json()
}

/// `accel_crypto_key_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreateParams {
    /// The key's name.
    pub name: String,
    /// The cipher (`AES_XTS`).
    pub cipher: String,
    /// The first key, in hex.
    pub key: String,
    /// The second (tweak) key, in hex.
    pub key2: Option<String>,
    /// How tweaks are made (SPDK's names; `SIMPLE_LBA` when absent).
    pub tweak_mode: Option<String>,
}

/// `accel_crypto_key_destroy`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDestroyParams {
    /// The key.
    pub key_name: String,
}

/// `accel_crypto_keys_get`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysGetParams {
    /// Only this key (every key when absent).
    pub key_name: Option<String>,
}

/// `bdev_crypto_create`'s parameters: a named key only (SPDK's inline
/// `key`, `key2` and `cipher` are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev to stand on.
    pub base_bdev_name: String,
    /// The new bdev's name.
    pub name: String,
    /// The key (made by `accel_crypto_key_create`).
    pub key_name: String,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
    #[serde(rename = "crypto_pmd")]
    _crypto_pmd: Ignored,
    #[serde(rename = "key")]
    _key: Unsupported<Absent>,
    #[serde(rename = "key2")]
    _key2: Unsupported<Absent>,
    #[serde(rename = "cipher")]
    _cipher: Unsupported<Absent>,
}

fn key_exists(name: &str) -> bool {
    !super::keys_get(Some(name)).is_empty()
}

fn key_create(params: Value) -> Result<Call, RpcError> {
    let p: KeyCreateParams = decode(params)?;
    if key_exists(&p.name) {
        return Err(RpcError::errno(-libc::EEXIST));
    }
    Ok(Call::reactor(move || async move {
        done(super::key_create(
            &p.name,
            &p.cipher,
            &p.key,
            p.key2.as_deref().unwrap_or_default(),
            p.tweak_mode.as_deref(),
        ))
    }))
}

fn key_destroy(params: Value) -> Result<Call, RpcError> {
    let p: KeyDestroyParams = decode(params)?;
    if !key_exists(&p.key_name) {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    Ok(Call::reactor(move || async move {
        done(super::key_destroy(&p.key_name))
    }))
}

fn keys_get(params: Value) -> Result<Call, RpcError> {
    let p: KeysGetParams = decode(params)?;
    let keys = super::keys_get(p.key_name.as_deref());
    if p.key_name.is_some() && keys.is_empty() {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    Ok(Call::Done(Value::Array(keys)))
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode_hinted(
        params,
        &[(
            "key_name",
            "create the key with accel_crypto_key_create; inline keys are not supported",
        )],
    )?;
    if !key_exists(&p.key_name) {
        return Err(RpcError::errno(-libc::ENOENT));
    }
    Ok(Call::reactor(move || async move {
        super::create(&p.base_bdev_name, &p.name, &p.key_name, p.uuid.as_deref())
            .map(|b| json!(b.name()))
            .map_err(bdev_err)
    }))
}
