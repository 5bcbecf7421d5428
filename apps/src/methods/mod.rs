//! The RPC methods, in SPDK's names, parameters and result shapes, one file
//! per concern: `framework` (version, methods, reactors, config,
//! shutdown), `bdev` (bdevs and their modules), `nvme`, `nbd`, `crypto`.
//!
//! Handlers run on the connection's thread. Anything that changes the bdev
//! layer runs on reactor 0 ([`Ctx::on_reactor`]), so control-path changes
//! happen one at a time on one core, as SPDK's app thread does them.

mod bdev;
mod crypto;
mod framework;
mod nbd;
mod nvme;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::jsonrpc::RpcError;

/// Why the appliance stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A signal arrived (its name).
    Signal(String),
    /// `spdk_kill_instance` asked for it (the signal's name).
    Rpc(String),
}

/// What handlers share: the runtime, the way to ask for shutdown, state.
pub struct Ctx {
    /// The reactors.
    pub handle: reactor::Handle,
    stop: Mutex<Sender<Stop>>,
    /// Whether `framework_start_init` has run (always, unless started with
    /// `--wait-for-rpc`).
    pub initialized: AtomicBool,
    /// When the appliance started (iostat ticks count from here).
    pub started: Instant,
}

impl Ctx {
    /// A context over `handle`; a shutdown request goes to `stop`.
    pub fn new(handle: reactor::Handle, stop: Sender<Stop>, initialized: bool) -> Arc<Ctx> {
        Arc::new(Ctx {
            handle,
            stop: Mutex::new(stop),
            initialized: AtomicBool::new(initialized),
            started: Instant::now(),
        })
    }

    /// Asks the main thread to shut down.
    pub fn request_stop(&self, why: Stop) {
        let _ = self
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(why);
    }

    /// Runs the future `f` builds on reactor 0 and waits for its output.
    ///
    /// # Errors
    /// -32603 when the runtime is shutting down or the task panicked.
    pub fn on_reactor<T, Fut>(
        &self,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> Result<T, RpcError>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let core = self.handle.cores()[0];
        block_on(self.handle.spawn_on(core, f)).map_err(RpcError::internal)
    }
}

/// Runs a future to completion on this (non-reactor) thread.
pub use reactor::block_on_thread as block_on;

/// The answer of a handler.
pub type RpcResult = Result<Value, RpcError>;

type Handler = fn(&Arc<Ctx>, Params) -> RpcResult;

/// A method: its name, handler, and whether it may be called before
/// `framework_start_init` only (SPDK's `SPDK_RPC_STARTUP`), after only
/// (`SPDK_RPC_RUNTIME`), or both.
pub struct Method {
    /// SPDK's name.
    pub name: &'static str,
    handler: Handler,
    /// Callable before initialization.
    pub startup: bool,
    /// Callable after initialization.
    pub runtime: bool,
}

const fn rt(name: &'static str, handler: Handler) -> Method {
    Method {
        name,
        handler,
        startup: false,
        runtime: true,
    }
}

const fn both(name: &'static str, handler: Handler) -> Method {
    Method {
        name,
        handler,
        startup: true,
        runtime: true,
    }
}

/// Every method the appliance answers.
pub fn table() -> Vec<Method> {
    let mut t = vec![
        both("spdk_get_version", framework::spdk_get_version),
        both("rpc_get_methods", framework::rpc_get_methods),
        Method {
            name: "framework_start_init",
            handler: framework::framework_start_init,
            startup: true,
            runtime: false,
        },
        both("framework_wait_init", framework::framework_wait_init),
        both(
            "framework_get_subsystems",
            framework::framework_get_subsystems,
        ),
        both("framework_get_config", framework::framework_get_config),
        both("spdk_kill_instance", framework::spdk_kill_instance),
        rt("framework_get_reactors", framework::framework_get_reactors),
        rt("thread_get_stats", framework::thread_get_stats),
        rt("bdev_get_bdevs", bdev::bdev_get_bdevs),
        rt("bdev_get_iostat", bdev::bdev_get_iostat),
        rt("bdev_wait_for_examine", bdev::bdev_wait_for_examine),
        rt("bdev_malloc_create", bdev::bdev_malloc_create),
        rt("bdev_malloc_delete", bdev::bdev_malloc_delete),
        rt("bdev_null_create", bdev::bdev_null_create),
        rt("bdev_null_delete", bdev::bdev_null_delete),
        rt("bdev_null_resize", bdev::bdev_null_resize),
        rt("bdev_delay_create", bdev::bdev_delay_create),
        rt("bdev_delay_delete", bdev::bdev_delay_delete),
        rt("bdev_delay_update_latency", bdev::bdev_delay_update_latency),
        rt("bdev_error_create", bdev::bdev_error_create),
        rt("bdev_error_delete", bdev::bdev_error_delete),
        rt("bdev_error_inject_error", bdev::bdev_error_inject_error),
        rt("bdev_passthru_create", bdev::bdev_passthru_create),
        rt("bdev_passthru_delete", bdev::bdev_passthru_delete),
        rt(
            "bdev_nvme_attach_controller",
            nvme::bdev_nvme_attach_controller,
        ),
        rt(
            "bdev_nvme_detach_controller",
            nvme::bdev_nvme_detach_controller,
        ),
        rt("bdev_nvme_get_controllers", nvme::bdev_nvme_get_controllers),
        rt("nbd_start_disk", nbd::nbd_start_disk),
        rt("nbd_stop_disk", nbd::nbd_stop_disk),
        rt("nbd_get_disks", nbd::nbd_get_disks),
    ];
    t.extend(crypto::methods());
    t
}

/// Runs method `name` with `params`.
///
/// # Errors
/// -32601 for an unknown method, -1 for one not callable in the current
/// state, -32602 for bad parameters, the method's own errors otherwise.
pub fn dispatch(ctx: &Arc<Ctx>, name: &str, params: Option<Value>) -> RpcResult {
    let table = table();
    let Some(m) = table.iter().find(|m| m.name == name) else {
        return Err(RpcError::method_not_found(name));
    };
    let init = ctx.initialized.load(Ordering::Acquire);
    // framework_start_init is listed as SPDK lists it (start-up state
    // only), but a second call is a harmless no-op rather than an error,
    // so `spdk-rpc load_config` of an empty config succeeds.
    if init && !m.runtime && m.name != "framework_start_init" {
        return Err(RpcError {
            code: crate::jsonrpc::INVALID_STATE,
            message: "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC.".into(),
        });
    }
    if !init && !m.startup {
        return Err(RpcError {
            code: crate::jsonrpc::INVALID_STATE,
            message: "Method may only be called after framework is initialized using framework_start_init RPC.".into(),
        });
    }
    let params = Params::new(params)?;
    (m.handler)(ctx, params)
}

/// Parameters as SPDK decodes them: an object whose every key a method
/// must know (an unknown key is an error), with typed getters.
pub struct Params {
    map: Map<String, Value>,
}

fn type_err(key: &str, what: &str) -> RpcError {
    RpcError::invalid_params(format!("'{key}' must be {what}"))
}

impl Params {
    /// From a request's `params` (absent or null: none).
    ///
    /// # Errors
    /// -32602 for an array (this server's methods take named parameters).
    pub fn new(params: Option<Value>) -> Result<Params, RpcError> {
        match params {
            None | Some(Value::Null) => Ok(Params { map: Map::new() }),
            Some(Value::Object(map)) => Ok(Params { map }),
            Some(_) => Err(RpcError::invalid_params(
                "parameters must be an object of named values",
            )),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// An optional string.
    ///
    /// # Errors
    /// -32602 when it is not a string.
    pub fn opt_str(&mut self, key: &str) -> Result<Option<String>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_err(key, "a string")),
        }
    }

    /// A required string.
    ///
    /// # Errors
    /// -32602 when missing or not a string.
    pub fn str(&mut self, key: &str) -> Result<String, RpcError> {
        self.opt_str(key)?
            .ok_or_else(|| RpcError::invalid_params(format!("'{key}' is required")))
    }

    /// An optional unsigned integer.
    ///
    /// # Errors
    /// -32602 when it is not an unsigned integer.
    pub fn opt_u64(&mut self, key: &str) -> Result<Option<u64>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| type_err(key, "an unsigned integer")),
            Some(_) => Err(type_err(key, "an unsigned integer")),
        }
    }

    /// A required unsigned integer.
    ///
    /// # Errors
    /// -32602 when missing or not an unsigned integer.
    pub fn u64(&mut self, key: &str) -> Result<u64, RpcError> {
        self.opt_u64(key)?
            .ok_or_else(|| RpcError::invalid_params(format!("'{key}' is required")))
    }

    /// An optional unsigned 32-bit integer.
    ///
    /// # Errors
    /// -32602 when it is not one.
    pub fn opt_u32(&mut self, key: &str) -> Result<Option<u32>, RpcError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| type_err(key, "an unsigned 32-bit integer")),
        }
    }

    /// An optional signed integer.
    ///
    /// # Errors
    /// -32602 when it is not an integer.
    pub fn opt_i64(&mut self, key: &str) -> Result<Option<i64>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| type_err(key, "an integer")),
            Some(_) => Err(type_err(key, "an integer")),
        }
    }

    /// An optional boolean.
    ///
    /// # Errors
    /// -32602 when it is not a boolean.
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(type_err(key, "a boolean")),
        }
    }

    /// An optional list of strings.
    ///
    /// # Errors
    /// -32602 when it is not an array of strings.
    pub fn opt_str_list(&mut self, key: &str) -> Result<Option<Vec<String>>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(type_err(key, "an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(type_err(key, "an array of strings")),
        }
    }

    /// Accepts `key` with any value (a parameter SPDK takes that changes
    /// nothing here).
    pub fn ignore(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Accepts `key` only when absent, null or equal to `default` (a
    /// feature SPDK has and this appliance does not).
    ///
    /// # Errors
    /// -32602 naming the unsupported parameter.
    pub fn unsupported(&mut self, key: &str, default: Value) -> Result<(), RpcError> {
        match self.take(key) {
            None => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(RpcError::invalid_params(format!(
                "'{key}' = {v} is not supported"
            ))),
        }
    }

    /// Ends decoding: any key left is unknown.
    ///
    /// # Errors
    /// -32602 naming the first unknown key.
    pub fn finish(self) -> Result<(), RpcError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(RpcError::invalid_params(format!("unknown parameter '{k}'"))),
        }
    }
}

/// The answer for a failed bdev-layer call: its errno and text.
pub fn bdev_err(e: ::bdev::BdevError) -> RpcError {
    log::info!("rpc: {e}");
    RpcError::errno(e.errno())
}

/// The configuration of `subsystem` as `framework_get_config` gives it.
///
/// # Errors
/// -2 for an unknown subsystem.
pub fn subsystem_config(subsystem: &str) -> Result<Vec<Value>, RpcError> {
    match subsystem {
        "accel" => Ok(crypto::config()),
        "bdev" => Ok(bdev::config()),
        "nbd" => Ok(nbd::config()),
        _ => Err(RpcError::errno(-libc::ENOENT)),
    }
}

/// The subsystems, in dependency order.
pub const SUBSYSTEMS: [(&str, &[&str]); 3] =
    [("accel", &[]), ("bdev", &["accel"]), ("nbd", &["bdev"])];
