//! The error module's methods: `bdev_error_create`, `bdev_error_delete`,
//! `bdev_error_inject_error`.

use serde::Deserialize;
use serde_json::Value;

use crate::rpc::{Call, Ignored, Method, RpcError, decode, delete_by_name, done};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_error_create", create),
        Method::new("bdev_error_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
        Method::new("bdev_error_inject_error", inject_error),
    ]
}

/// `bdev_error_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev to stand on (the new one is `EE_<base_name>`).
    pub base_name: String,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
}

/// `bdev_error_inject_error`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectErrorParams {
    /// The error bdev.
    pub name: String,
    /// Which I/O type (`read`, `write`, ..., `all`, `clear`).
    pub io_type: String,
    /// What to do (`failure` when absent, `corrupt_data`, `nomem`).
    pub error_type: Option<String>,
    /// How many I/Os (1 when absent).
    pub num: Option<u64>,
    #[serde(rename = "queue_depth")]
    _queue_depth: Ignored,
    #[serde(rename = "corrupt_offset")]
    _corrupt_offset: Ignored,
    #[serde(rename = "corrupt_value")]
    _corrupt_value: Ignored,
    #[serde(rename = "nvme_sct")]
    _nvme_sct: Ignored,
    #[serde(rename = "nvme_sc")]
    _nvme_sc: Ignored,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        done(super::create(&p.base_name, p.uuid.as_deref()).map(|_| ()))
    }))
}

fn inject_error(params: Value) -> Result<Call, RpcError> {
    let p: InjectErrorParams = decode(params)?;
    let error_type = p.error_type.unwrap_or_else(|| "failure".into());
    let num = p.num.unwrap_or(1);
    Ok(Call::reactor(move || async move {
        done(super::inject_error(&p.name, &p.io_type, &error_type, num))
    }))
}
