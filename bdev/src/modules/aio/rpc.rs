//! The AIO module's methods: `bdev_aio_create`, `bdev_aio_delete`,
//! `bdev_aio_rescan`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Ignored, Method, RpcError, bdev_err, decode, delete_by_name};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_aio_create", create),
        Method::new("bdev_aio_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
        Method::new("bdev_aio_rescan", rescan),
    ]
}

/// `bdev_aio_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev's name.
    pub name: String,
    /// The file or block device.
    pub filename: String,
    /// Block size (detected for a block device when absent or 0).
    pub block_size: Option<u32>,
    /// Open read-only.
    pub readonly: Option<bool>,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
    /// SPDK's switch for unmap and write-zeroes through fallocate: here
    /// they are, wherever the file system does them.
    #[serde(rename = "fallocate")]
    _fallocate: Ignored,
    /// SPDK's "answer before examine": examine here is asynchronous and
    /// `bdev_wait_for_examine` waits for it either way.
    #[serde(rename = "nowait")]
    _nowait: Ignored,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let b = super::create(
            &p.name,
            &p.filename,
            p.block_size,
            p.readonly.unwrap_or(false),
            p.uuid.as_deref(),
        )
        .map_err(bdev_err)?;
        crate::wait_for_examine().await;
        Ok(json!(b.name()))
    }))
}

/// `bdev_aio_rescan`'s parameters.
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
