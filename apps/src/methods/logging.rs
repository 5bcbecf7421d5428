//! The log methods, as SPDK's: levels (`log_set_level`, `log_get_level`,
//! `log_set_print_level`, `log_get_print_level`) by SPDK's names (ERROR,
//! WARNING, NOTICE, INFO, DEBUG, any case) and the components' debug flags
//! (`log_set_flag`, `log_clear_flag`, `log_get_flags`); see
//! [`crate::logger`] for what they change.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Ctx, Params, RpcResult};
use crate::jsonrpc::{INTERNAL_ERROR, INVALID_PARAMS, RpcError};
use crate::logger;

/// SPDK's answer when the parameter object does not decode.
fn decode_failed() -> RpcError {
    RpcError {
        code: INTERNAL_ERROR,
        message: "spdk_json_decode_object failed".into(),
    }
}

/// The one string parameter `key`, SPDK-style errors.
fn one_string(mut p: Params, key: &str) -> Result<String, RpcError> {
    let v = p.opt_str(key).map_err(|_| decode_failed())?;
    p.finish().map_err(|_| decode_failed())?;
    v.ok_or_else(decode_failed)
}

fn set_level(p: Params, set: fn(&str) -> bool) -> RpcResult {
    let level = one_string(p, "level")?;
    if !set(&level) {
        return Err(RpcError {
            code: INVALID_PARAMS,
            message: "invalid log level".into(),
        });
    }
    Ok(json!(true))
}

fn no_params(p: Params, method: &str) -> Result<(), RpcError> {
    p.finish().map_err(|_| RpcError {
        code: INVALID_PARAMS,
        message: format!("{method} requires no parameters"),
    })
}

pub(super) fn log_set_level(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    set_level(p, logger::set_level)
}

pub(super) fn log_set_print_level(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    set_level(p, logger::set_print_level)
}

pub(super) fn log_get_level(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    no_params(p, "log_get_level")?;
    Ok(json!(logger::level()))
}

pub(super) fn log_get_print_level(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    no_params(p, "log_get_print_level")?;
    Ok(json!(logger::print_level()))
}

fn flag(p: Params, on: bool) -> RpcResult {
    let name = one_string(p, "flag")?;
    // SPDK answers true even for a flag it does not have; here that is an
    // error naming it, so a typo does not pass unnoticed.
    if !logger::set_flag(&name, on) {
        return Err(RpcError {
            code: INVALID_PARAMS,
            message: format!("unknown log flag '{name}' (log_get_flags lists them)"),
        });
    }
    Ok(json!(true))
}

pub(super) fn log_set_flag(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    flag(p, true)
}

pub(super) fn log_clear_flag(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    flag(p, false)
}

pub(super) fn log_get_flags(_ctx: &Arc<Ctx>, p: Params) -> RpcResult {
    no_params(p, "log_get_flags")?;
    let m: Map<String, Value> = logger::flags()
        .into_iter()
        .map(|(n, on)| (n.to_owned(), json!(on)))
        .collect();
    Ok(Value::Object(m))
}
