//! The null module's methods: `bdev_null_create`, `bdev_null_delete`,
//! `bdev_null_resize`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{
    Call, False, Ignored, Method, RpcError, Unsupported, Zero, bdev_err, decode, delete_by_name,
    done,
};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_null_create", create),
        Method::new("bdev_null_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
        Method::new("bdev_null_resize", resize),
    ]
}

/// `bdev_null_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The name.
    pub name: String,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Block size (512 when absent).
    pub block_size: Option<u32>,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
    #[serde(rename = "physical_block_size")]
    _physical_block_size: Ignored,
    #[serde(rename = "preferred_write_alignment")]
    _preferred_write_alignment: Ignored,
    #[serde(rename = "preferred_write_granularity")]
    _preferred_write_granularity: Ignored,
    #[serde(rename = "optimal_write_size")]
    _optimal_write_size: Ignored,
    #[serde(rename = "preferred_unmap_alignment")]
    _preferred_unmap_alignment: Ignored,
    #[serde(rename = "preferred_unmap_granularity")]
    _preferred_unmap_granularity: Ignored,
    #[serde(rename = "md_size")]
    _md_size: Unsupported<Zero>,
    #[serde(rename = "dif_type")]
    _dif_type: Unsupported<Zero>,
    #[serde(rename = "dif_is_head_of_md")]
    _dif_is_head_of_md: Unsupported<False>,
    #[serde(rename = "dif_pi_format")]
    _dif_pi_format: Unsupported<Zero>,
}

/// `bdev_null_resize`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    /// The bdev.
    pub name: String,
    /// The new size in MiB.
    pub new_size: u64,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        super::create(
            &p.name,
            p.num_blocks,
            p.block_size.unwrap_or(512),
            p.uuid.as_deref(),
            super::rpc_read_fill(),
        )
        .map(|b| json!(b.name()))
        .map_err(bdev_err)
    }))
}

fn resize(params: Value) -> Result<Call, RpcError> {
    let p: ResizeParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        done(super::resize(&p.name, p.new_size))
    }))
}
