//! The RPC methods, in SPDK's names, parameters and result shapes, one file
//! per concern: `framework` (version, methods, reactors, config,
//! shutdown), `bdev` (the bdev layer's own: listing, statistics, examine),
//! `nbd`, `ublk`. The bdev modules' methods (malloc, null, delay, error,
//! passthrough, crypto and its accel keys, NVMe) live with each module, in
//! `bdev/src/modules/<name>/rpc.rs`, and come in through
//! [`::bdev::modules::rpc_methods`]; this file serves them (the glue).
//!
//! Handlers run on the connection's thread. Anything that changes the bdev
//! layer runs on reactor 0 ([`Ctx::on_reactor`]), so control-path changes
//! happen one at a time on one core, as SPDK's app thread does them.

mod bdev;
mod framework;
mod logging;
mod nbd;
mod nvmf;
mod ublk;

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
    /// Methods the hosting program adds (bdevperf's `perform_tests`).
    app_methods: Mutex<Vec<(String, AppMethod)>>,
}

/// A method a program hosting the server adds to the table
/// ([`Ctx::add_method`]); it runs on the connection's thread and may block.
pub type AppMethod = Arc<dyn Fn(&Arc<Ctx>, Params) -> RpcResult + Send + Sync>;

impl Ctx {
    /// A context over `handle`; a shutdown request goes to `stop`.
    pub fn new(handle: reactor::Handle, stop: Sender<Stop>, initialized: bool) -> Arc<Ctx> {
        Arc::new(Ctx {
            handle,
            stop: Mutex::new(stop),
            initialized: AtomicBool::new(initialized),
            started: Instant::now(),
            app_methods: Mutex::new(Vec::new()),
        })
    }

    /// Adds method `name` (callable once initialized), answered by `f`.
    pub fn add_method(&self, name: &str, f: AppMethod) {
        self.app_methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), f));
    }

    /// The names of the methods added with [`Ctx::add_method`].
    pub fn app_method_names(&self) -> Vec<String> {
        self.app_methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn app_method(&self, name: &str) -> Option<AppMethod> {
        self.app_methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
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

/// Who answers a method.
#[derive(Clone, Copy)]
enum Handler {
    /// A method of this crate.
    App(fn(&Arc<Ctx>, Params) -> RpcResult),
    /// A bdev module's method: it decodes the parameters and answers at
    /// once or with a task for reactor 0.
    Module(::bdev::rpc::Handler),
}

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

const fn rt(name: &'static str, handler: fn(&Arc<Ctx>, Params) -> RpcResult) -> Method {
    Method {
        name,
        handler: Handler::App(handler),
        startup: false,
        runtime: true,
    }
}

const fn both(name: &'static str, handler: fn(&Arc<Ctx>, Params) -> RpcResult) -> Method {
    Method {
        name,
        handler: Handler::App(handler),
        startup: true,
        runtime: true,
    }
}

impl From<::bdev::rpc::Method> for Method {
    /// A module's method: callable after initialization only (SPDK's
    /// `SPDK_RPC_RUNTIME`).
    fn from(m: ::bdev::rpc::Method) -> Method {
        Method {
            name: m.name,
            handler: Handler::Module(m.handler),
            startup: false,
            runtime: true,
        }
    }
}

/// Every method the appliance answers.
pub fn table() -> Vec<Method> {
    let mut t = vec![
        both("spdk_get_version", framework::spdk_get_version),
        both("rpc_get_methods", framework::rpc_get_methods),
        Method {
            name: "framework_start_init",
            handler: Handler::App(framework::framework_start_init),
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
        both("log_set_level", logging::log_set_level),
        both("log_get_level", logging::log_get_level),
        both("log_set_print_level", logging::log_set_print_level),
        both("log_get_print_level", logging::log_get_print_level),
        both("log_set_flag", logging::log_set_flag),
        both("log_clear_flag", logging::log_clear_flag),
        both("log_get_flags", logging::log_get_flags),
        rt("framework_get_reactors", framework::framework_get_reactors),
        rt("thread_get_stats", framework::thread_get_stats),
        rt("bdev_get_bdevs", bdev::bdev_get_bdevs),
        rt("bdev_get_iostat", bdev::bdev_get_iostat),
        rt("bdev_reset_iostat", bdev::bdev_reset_iostat),
        rt("bdev_wait_for_examine", bdev::bdev_wait_for_examine),
        rt("bdev_set_qos_limit", bdev::bdev_set_qos_limit),
        rt("bdev_enable_histogram", bdev::bdev_enable_histogram),
        rt("bdev_get_histogram", bdev::bdev_get_histogram),
    ];
    t.extend(::bdev::modules::rpc_methods().into_iter().map(Method::from));
    t.extend([
        rt("nbd_start_disk", nbd::nbd_start_disk),
        rt("nbd_stop_disk", nbd::nbd_stop_disk),
        rt("nbd_get_disks", nbd::nbd_get_disks),
        rt("nvmf_create_transport", nvmf::nvmf_create_transport),
        rt("nvmf_get_transports", nvmf::nvmf_get_transports),
        rt("nvmf_create_subsystem", nvmf::nvmf_create_subsystem),
        rt("nvmf_delete_subsystem", nvmf::nvmf_delete_subsystem),
        rt("nvmf_get_subsystems", nvmf::nvmf_get_subsystems),
        rt(
            "nvmf_subsystem_add_listener",
            nvmf::nvmf_subsystem_add_listener,
        ),
        rt(
            "nvmf_subsystem_remove_listener",
            nvmf::nvmf_subsystem_remove_listener,
        ),
        rt(
            "nvmf_subsystem_get_listeners",
            nvmf::nvmf_subsystem_get_listeners,
        ),
        rt(
            "nvmf_subsystem_listener_set_ana_state",
            nvmf::nvmf_subsystem_listener_set_ana_state,
        ),
        rt("nvmf_subsystem_add_ns", nvmf::nvmf_subsystem_add_ns),
        rt("nvmf_subsystem_remove_ns", nvmf::nvmf_subsystem_remove_ns),
        rt("nvmf_subsystem_add_host", nvmf::nvmf_subsystem_add_host),
        rt(
            "nvmf_subsystem_remove_host",
            nvmf::nvmf_subsystem_remove_host,
        ),
        rt(
            "nvmf_subsystem_allow_any_host",
            nvmf::nvmf_subsystem_allow_any_host,
        ),
        rt(
            "nvmf_subsystem_get_controllers",
            nvmf::nvmf_subsystem_get_controllers,
        ),
        rt("nvmf_subsystem_get_qpairs", nvmf::nvmf_subsystem_get_qpairs),
        rt("nvmf_get_stats", nvmf::nvmf_get_stats),
        rt("ublk_create_target", ublk::ublk_create_target),
        rt("ublk_destroy_target", ublk::ublk_destroy_target),
        rt("ublk_start_disk", ublk::ublk_start_disk),
        rt("ublk_stop_disk", ublk::ublk_stop_disk),
        rt("ublk_recover_disk", ublk::ublk_recover_disk),
        rt("ublk_get_disks", ublk::ublk_get_disks),
    ]);
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
        if let Some(f) = ctx.app_method(name) {
            if !ctx.initialized.load(Ordering::Acquire) {
                return Err(RpcError {
                    code: crate::jsonrpc::INVALID_STATE,
                    message: "Method may only be called after framework is initialized using framework_start_init RPC.".into(),
                });
            }
            return f(ctx, Params::new(params)?);
        }
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
    match m.handler {
        Handler::App(h) => h(ctx, params),
        Handler::Module(h) => match h(Value::Object(params.map))? {
            ::bdev::rpc::Call::Done(v) => Ok(v),
            ::bdev::rpc::Call::Reactor(task) => Ok(ctx.on_reactor(task)??),
        },
    }
}

/// Parameters as SPDK decodes them: an object whose every key a method
/// must know (an unknown key is an error), with typed getters.
pub struct Params {
    map: Map<String, Value>,
}

// The messages are the ones the modules' typed parameters give
// (`bdev::rpc`), so every method words its errors alike.
fn type_err(key: &str, what: &str) -> RpcError {
    ::bdev::rpc::invalid_type(key, what).into()
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
            Some(_) => Err(::bdev::rpc::not_an_object().into()),
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
            .ok_or_else(|| ::bdev::rpc::required(key).into())
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
            .ok_or_else(|| ::bdev::rpc::required(key).into())
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
            Some(v) => Err(::bdev::rpc::unsupported(key, &v).into()),
        }
    }

    /// Ends decoding: any key left is unknown.
    ///
    /// # Errors
    /// -32602 naming the first unknown key.
    pub fn finish(self) -> Result<(), RpcError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(::bdev::rpc::unknown(k).into()),
        }
    }
}

/// The answer for a failed bdev-layer call: its errno and text
/// ([`::bdev::rpc::bdev_err`]).
pub fn bdev_err(e: ::bdev::BdevError) -> RpcError {
    ::bdev::rpc::bdev_err(e).into()
}

/// The configuration of `subsystem` as `framework_get_config` gives it.
///
/// # Errors
/// -2 for an unknown subsystem.
pub fn subsystem_config(subsystem: &str) -> Result<Vec<Value>, RpcError> {
    match subsystem {
        "accel" => Ok(::bdev::modules::rpc_config("accel")),
        "bdev" => Ok(bdev::config()),
        "nbd" => Ok(nbd::config()),
        "nvmf" => Ok(nvmf::config()),
        "ublk" => Ok(ublk::config()),
        _ => Err(RpcError::errno(-libc::ENOENT)),
    }
}

/// The subsystems, in dependency order.
pub const SUBSYSTEMS: [(&str, &[&str]); 5] = [
    ("accel", &[]),
    ("bdev", &["accel"]),
    ("nbd", &["bdev"]),
    ("nvmf", &["bdev"]),
    ("ublk", &["bdev"]),
];

#[cfg(test)]
mod tests {
    #[test]
    fn method_names_are_unique() {
        let t = super::table();
        let mut names: Vec<&str> = t.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a module method shadows another");
    }
}
