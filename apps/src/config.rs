//! SPDK's JSON configuration: `{"subsystems": [{"subsystem": NAME,
//! "config": [{"method": M, "params": P}, ...]}]}` as `spdk-rpc
//! save_config` writes it and `--json` reads it. Loading replays each call
//! through the RPC methods, in file order; saving is `framework_get_config`
//! for each subsystem, in dependency order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::jsonrpc::RpcError;
use crate::methods::{Ctx, SUBSYSTEMS, dispatch, subsystem_config};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON, or not of the expected shape.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A call failed.
    #[error("{path}: subsystem {subsystem}: {method} failed: {error}")]
    Call {
        /// The file.
        path: PathBuf,
        /// The subsystem.
        subsystem: String,
        /// The method.
        method: String,
        /// Its error.
        #[source]
        error: RpcError,
    },
}

/// One call of a configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigCall {
    /// The subsystem it belongs to.
    pub subsystem: String,
    /// The method.
    pub method: String,
    /// Its parameters.
    pub params: Option<Value>,
}

/// Reads a configuration's calls, in order (batches flattened).
///
/// # Errors
/// A description of the first thing that is not of SPDK's shape.
pub fn parse(text: &[u8]) -> Result<Vec<ConfigCall>, String> {
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let subsystems = v
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or("no \"subsystems\" array")?;
    let mut out = Vec::new();
    for s in subsystems {
        let name = s
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or("a subsystem without a \"subsystem\" name")?;
        let calls = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(format!("subsystem {name}: \"config\" is not an array")),
        };
        let mut push = |c: &Value| -> Result<(), String> {
            let method = c
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("subsystem {name}: an entry without a \"method\""))?;
            out.push(ConfigCall {
                subsystem: name.to_owned(),
                method: method.to_owned(),
                params: c.get("params").cloned(),
            });
            Ok(())
        };
        for c in calls {
            match c {
                Value::Array(batch) => batch.iter().try_for_each(&mut push)?,
                other => push(other)?,
            }
        }
    }
    Ok(out)
}

/// Loads the configuration in `path`: every call in order. With
/// `ignore_errors`, a failing call is logged and the rest goes on.
///
/// # Errors
/// [`ConfigError`] for an unreadable or malformed file, or the first
/// failing call.
pub fn load(ctx: &Arc<Ctx>, path: &Path, ignore_errors: bool) -> Result<usize, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let calls = parse(&text).map_err(|why| ConfigError::Format {
        path: path.to_owned(),
        why,
    })?;
    let n = calls.len();
    for c in calls {
        if c.method == "framework_start_init" {
            continue;
        }
        if let Err(error) = dispatch(ctx, &c.method, c.params) {
            if ignore_errors {
                log::warn!("config: {} failed: {error}", c.method);
                continue;
            }
            return Err(ConfigError::Call {
                path: path.to_owned(),
                subsystem: c.subsystem,
                method: c.method,
                error,
            });
        }
    }
    log::info!("config: {n} call(s) from {}", path.display());
    Ok(n)
}

/// The whole configuration, as `spdk-rpc save_config` builds it.
pub fn save() -> Value {
    let subsystems: Vec<Value> = SUBSYSTEMS
        .iter()
        .map(|(s, _)| json!({ "subsystem": s, "config": subsystem_config(s).unwrap_or_default() }))
        .collect();
    json!({ "subsystems": subsystems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_shapes() {
        let c = parse(
            br#"{"subsystems":[{"subsystem":"accel","config":null},
               {"subsystem":"bdev","config":[{"method":"a","params":{"x":1}},[{"method":"b"}]]}]}"#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].method, "a");
        assert_eq!(c[1].params, None);
        assert!(parse(b"{").unwrap_err().contains("not JSON"));
        assert!(parse(b"{}").unwrap_err().contains("subsystems"));
        assert!(parse(br#"{"subsystems":[{"subsystem":"b","config":[{}]}]}"#).is_err());
    }
}
