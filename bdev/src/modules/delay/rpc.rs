//! The delay module's methods: `bdev_delay_create`, `bdev_delay_delete`,
//! `bdev_delay_update_latency`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Latencies, LatencyType};
use crate::rpc::{Call, Method, RpcError, bdev_err, decode, delete_by_name, done};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_delay_create", create),
        Method::new("bdev_delay_delete", |p| {
            delete_by_name(p, |n| async move { super::delete(&n).await })
        }),
        Method::new("bdev_delay_update_latency", update_latency),
    ]
}

/// `bdev_delay_create`'s parameters (latencies in µs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev to stand on.
    pub base_bdev_name: String,
    /// The new bdev's name.
    pub name: String,
    /// Average read latency.
    pub avg_read_latency: u64,
    /// 99th-percentile read latency.
    pub p99_read_latency: u64,
    /// Average write latency.
    pub avg_write_latency: u64,
    /// 99th-percentile write latency.
    pub p99_write_latency: u64,
    /// The UUID; a new one when absent.
    pub uuid: Option<String>,
}

/// `bdev_delay_update_latency`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLatencyParams {
    /// The delay bdev.
    pub delay_bdev_name: String,
    /// Which latency (`avg_read`, `p99_read`, `avg_write`, `p99_write`).
    pub latency_type: String,
    /// The new value in µs.
    pub latency_us: u64,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let p: CreateParams = decode(params)?;
    let lat = Latencies {
        avg_read_us: p.avg_read_latency,
        p99_read_us: p.p99_read_latency,
        avg_write_us: p.avg_write_latency,
        p99_write_us: p.p99_write_latency,
    };
    Ok(Call::reactor(move || async move {
        super::create(&p.base_bdev_name, &p.name, lat, p.uuid.as_deref())
            .map(|b| json!(b.name()))
            .map_err(bdev_err)
    }))
}

fn update_latency(params: Value) -> Result<Call, RpcError> {
    let p: UpdateLatencyParams = decode(params)?;
    Ok(Call::reactor(move || async move {
        done(
            p.latency_type
                .parse::<LatencyType>()
                .and_then(|t| super::update_latency(&p.delay_bdev_name, t, p.latency_us)),
        )
    }))
}
