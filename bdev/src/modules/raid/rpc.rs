//! The RAID module's methods, with SPDK's parameters, answers and error
//! codes: `bdev_raid_create`, `bdev_raid_delete`, `bdev_raid_get_bdevs`,
//! `bdev_raid_add_base_bdev`, `bdev_raid_remove_base_bdev`,
//! `bdev_raid_set_options`, and Longhorn's `bdev_raid_grow_base_bdev`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{Call, Method, RpcError, decode};

use super::superblock::{Level, RaidState};
use super::{CreateParams, Options, RaidError};

/// The methods.
pub fn methods() -> Vec<Method> {
    vec![
        Method::new("bdev_raid_create", create),
        Method::new("bdev_raid_delete", delete),
        Method::new("bdev_raid_get_bdevs", get_bdevs),
        Method::new("bdev_raid_add_base_bdev", add_base_bdev),
        Method::new("bdev_raid_remove_base_bdev", remove_base_bdev),
        Method::new("bdev_raid_set_options", set_options),
        Method::new("bdev_raid_grow_base_bdev", grow_base_bdev),
    ]
}

/// SPDK's answer for a failed RAID call: the errno, and `what` with the
/// errno's text (the reason goes to the log).
fn raid_err(what: String) -> impl FnOnce(RaidError) -> RpcError {
    move |e| {
        log::error!("{what}: {e}");
        let code = e.errno();
        RpcError {
            code,
            message: format!("{what}: {}", crate::rpc::strerror(-code)),
        }
    }
}

/// `bdev_raid_create`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// The RAID bdev's name.
    pub name: String,
    /// The strip in KiB (0 or absent for raid1).
    pub strip_size_kb: Option<u32>,
    /// "raid0"/"0", "raid1"/"1", "concat" (any case).
    pub raid_level: String,
    /// Member bdev names, in slot order.
    pub base_bdevs: Vec<String>,
    /// Its UUID.
    pub uuid: Option<String>,
    /// Keep a superblock on the members (default false).
    pub superblock: Option<bool>,
}

fn create(params: Value) -> Result<Call, RpcError> {
    let a: CreateArgs = decode(params)?;
    let level = Level::parse(&a.raid_level).ok_or_else(|| {
        RpcError::invalid_params(format!("raid_level {:?} is not a RAID level", a.raid_level))
    })?;
    Ok(Call::reactor(move || async move {
        let what = format!("Failed to create RAID bdev {}", a.name);
        super::create(CreateParams {
            name: a.name,
            level,
            strip_size_kb: a.strip_size_kb.unwrap_or(0),
            base_bdevs: a.base_bdevs,
            uuid: a.uuid,
            superblock: a.superblock.unwrap_or(false),
        })
        .await
        .map_err(raid_err(what))?;
        Ok(Value::Bool(true))
    }))
}

/// `bdev_raid_remove_base_bdev`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    /// The member bdev.
    pub name: String,
}

/// `bdev_raid_delete`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    /// The RAID.
    pub name: String,
    /// Wipe the superblocks off its members (default false).
    pub clear_sb: Option<bool>,
}

fn delete(params: Value) -> Result<Call, RpcError> {
    let a: DeleteArgs = decode(params)?;
    Ok(Call::reactor(move || async move {
        match super::delete(&a.name, a.clear_sb.unwrap_or(false)).await {
            Ok(()) => Ok(Value::Bool(true)),
            Err(RaidError::NotFound(n)) => Err(RpcError {
                code: -19,
                message: format!("raid bdev {n} not found"),
            }),
            Err(e) => {
                log::error!("Failed to delete raid bdev {}: {e}", a.name);
                Err(RpcError::errno(e.errno()))
            }
        }
    }))
}

/// `bdev_raid_get_bdevs`' parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// "all", "online", "configuring" or "offline".
    pub category: String,
}

fn get_bdevs(params: Value) -> Result<Call, RpcError> {
    let a: GetArgs = decode(params)?;
    let state = match a.category.as_str() {
        "all" => None,
        "online" => Some(RaidState::Online),
        "configuring" => Some(RaidState::Configuring),
        "offline" => Some(RaidState::Offline),
        _ => return Err(RpcError::errno(22)),
    };
    Ok(Call::Done(Value::Array(super::list(state))))
}

/// `bdev_raid_add_base_bdev`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddArgs {
    /// The member to add.
    pub base_bdev: String,
    /// The RAID.
    pub raid_bdev: String,
}

fn add_base_bdev(params: Value) -> Result<Call, RpcError> {
    let a: AddArgs = decode(params)?;
    Ok(Call::reactor(move || async move {
        match super::add_base_bdev(&a.raid_bdev, &a.base_bdev).await {
            Ok(()) => Ok(Value::Bool(true)),
            Err(RaidError::NotFound(n)) => Err(RpcError {
                code: -19,
                message: format!("raid bdev {n} is not found in config"),
            }),
            Err(e) => Err(raid_err(format!(
                "Failed to add base bdev {} to RAID bdev {}",
                a.base_bdev, a.raid_bdev
            ))(e)),
        }
    }))
}

fn remove_base_bdev(params: Value) -> Result<Call, RpcError> {
    let a: NameArgs = decode(params)?;
    Ok(Call::reactor(move || async move {
        super::remove_base_bdev(&a.name)
            .await
            .map_err(raid_err(format!(
                "Failed to remove base bdev {} from raid bdev",
                a.name
            )))?;
        Ok(Value::Bool(true))
    }))
}

/// `bdev_raid_set_options`' parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsArgs {
    /// KiB a rebuild copies per window.
    pub process_window_size_kb: Option<u32>,
    /// A rebuild's most MB/s (0: unpaced).
    pub process_max_bandwidth_mb_sec: Option<u32>,
}

fn set_options(params: Value) -> Result<Call, RpcError> {
    let a: OptionsArgs = decode(params)?;
    let mut o: Options = super::options();
    if let Some(w) = a.process_window_size_kb {
        o.process_window_size_kb = w;
    }
    if let Some(b) = a.process_max_bandwidth_mb_sec {
        o.process_max_bandwidth_mb_sec = b;
    }
    super::set_options(o).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    Ok(Call::Done(json!(true)))
}

/// `bdev_raid_grow_base_bdev`'s parameters (Longhorn's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowArgs {
    /// The RAID.
    pub raid_name: String,
    /// The member to add.
    pub base_name: String,
}

fn grow_base_bdev(params: Value) -> Result<Call, RpcError> {
    let a: GrowArgs = decode(params)?;
    Ok(Call::reactor(move || async move {
        match super::grow_base_bdev(&a.raid_name, &a.base_name).await {
            Ok(()) => Ok(Value::Bool(true)),
            Err(RaidError::NotFound(n)) => Err(RpcError {
                code: -19,
                message: format!("raid bdev {n} not found"),
            }),
            Err(RaidError::Bdev(crate::BdevError::NotFound(n))) => Err(RpcError {
                code: -19,
                message: format!("base bdev {n} not found"),
            }),
            Err(e) => Err(raid_err(format!(
                "Failed to grow raid {} adding base bdev {}",
                a.raid_name, a.base_name
            ))(e)),
        }
    }))
}
