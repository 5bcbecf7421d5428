//! The io_uring module's methods: `bdev_uring_create`,
//! `bdev_uring_delete`, `bdev_uring_rescan`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Method, RpcError, bdev_err, decode, delete_by_name};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_uring_create", create),
        Method::new("bdev_uring_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
        Method::new("bdev_uring_rescan", rescan),
    ]
}

/// `bdev_uring_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev's name.
    pub name: String,
    /// The file or block device.
    pub filename: String,
    /// Block size (detected for a block device when absent or 0).
    pub block_size: Option<u32>,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let b = super::create(&p.name, &p.filename, p.block_size, p.uuid.as_deref())
            .map_err(bdev_err)?;
        crate::wait_for_examine().await;
        Ok(json!(b.name()))
    }))
}

/// `bdev_uring_rescan`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescanParams {
    /// The bdev.
    pub name: String,
}

fn rescan(params: Value) -> Result<Call, RpcError> {
    let p: RescanParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        super::rescan(&p.name).map_err(bdev_err)?;
        Ok(Value::Bool(true))
    }))
}
