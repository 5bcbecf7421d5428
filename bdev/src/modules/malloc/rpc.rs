//! The malloc module's methods: `bdev_malloc_create`, `bdev_malloc_delete`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{
    Call, False, Ignored, Method, RpcError, Unsupported, Zero, bdev_err, decode, delete_by_name,
};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_malloc_create", create),
        Method::new("bdev_malloc_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
    ]
}

/// `bdev_malloc_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The name; SPDK's default `Malloc<N>` when absent.
    pub name: Option<String>,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Block size (512 when absent).
    pub block_size: Option<u32>,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
    #[serde(rename = "physical_block_size")]
    _physical_block_size: Ignored,
    #[serde(rename = "numa_id")]
    _numa_id: Ignored,
    #[serde(rename = "optimal_io_boundary")]
    _optimal_io_boundary: Unsupported<Zero>,
    #[serde(rename = "md_size")]
    _md_size: Unsupported<Zero>,
    #[serde(rename = "md_interleave")]
    _md_interleave: Unsupported<False>,
    #[serde(rename = "dif_type")]
    _dif_type: Unsupported<Zero>,
    #[serde(rename = "dif_is_head_of_md")]
    _dif_is_head_of_md: Unsupported<False>,
    #[serde(rename = "dif_pi_format")]
    _dif_pi_format: Unsupported<Zero>,
}

/// SPDK's default malloc name: `Malloc<N>` with the smallest unused N.
fn next_name() -> String {
    (0..)
        .map(|i| format!("Malloc{i}"))
        .find(|n| crate::get(n).is_none())
        .unwrap_or_else(|| "Malloc".into())
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        let name = p.name.unwrap_or_else(next_name);
        super::create(
            &name,
            p.num_blocks,
            p.block_size.unwrap_or(512),
            p.uuid.as_deref(),
        )
        .map(|b| json!(b.name()))
        .map_err(bdev_err)
    }))
}
