//! The passthrough module's methods: `bdev_passthru_create`,
//! `bdev_passthru_delete`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Method, RpcError, bdev_err, decode, delete_by_name};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_passthru_create", create),
        Method::new("bdev_passthru_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
    ]
}

/// `bdev_passthru_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev to stand on.
    pub base_bdev_name: String,
    /// The new bdev's name.
    pub name: String,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        super::create(&p.base_bdev_name, &p.name, p.uuid.as_deref())
            .map(|b| json!(b.name()))
            .map_err(bdev_err)
    }))
}
