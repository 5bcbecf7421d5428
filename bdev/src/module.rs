//! A bdev module (SPDK's `spdk_bdev_module`): its life (init, fini that may
//! write metadata before the process exits), its two-step examine of every
//! bdev that appears, and its part of `save_config`.

use std::future::Future;
use std::pin::Pin;

use crate::error::BdevError;

/// Work a module does asynchronously (an examine that reads the disk, a
/// fini or destruct that writes metadata).
pub type ModuleFuture = Pin<Box<dyn Future<Output = ()>>>;

/// An examine in progress (the same thing as a [`ModuleFuture`]).
pub type ExamineFuture = ModuleFuture;

/// A builder of a [`ModuleFuture`]: sent to a reactor and built there (the
/// future itself need not be `Send`).
pub type ModuleTask = Box<dyn FnOnce() -> ModuleFuture + Send>;

/// A bdev module: registered once ([`crate::register_module`]), it may
/// examine every bdev that appears and it contributes to `save_config`.
///
/// Examine runs in two steps for every registered bdev and every module, as
/// in SPDK: first [`BdevModule::examine_config`] of every module
/// (synchronous: what the configuration says about the bdev), then
/// [`BdevModule::examine_disk`] of every module, which may read the disk
/// asynchronously. `wait_for_examine` returns only once every examine in
/// flight has finished, with the bdevs it creates registered.
pub trait BdevModule: Send + Sync + 'static {
    /// The module's name (`bdev_malloc`, `bdev_passthru`...).
    fn name(&self) -> &str;

    /// Called once at registration, before any examine; an error keeps
    /// the module out.
    ///
    /// # Errors
    /// Why the module cannot start.
    fn init(&self) -> Result<(), BdevError> {
        Ok(())
    }

    /// Called once at [`crate::fini`], after every bdev is unregistered;
    /// may be asynchronous (a module writing its metadata before exit).
    fn fini(&self) -> Option<ModuleTask> {
        None
    }

    /// The first examine step: the configuration's view of a new bdev
    /// (claim it for a configured vbdev), synchronous, no I/O.
    fn examine_config(&self, bdev: &str) {
        let _ = bdev;
    }

    /// The second examine step: read the disk (a superblock, an lvstore)
    /// asynchronously: return a builder of the future, run on a reactor and
    /// counted by `wait_for_examine`; `None` when there is nothing to read.
    fn examine_disk(&self, bdev: &str) -> Option<ModuleTask> {
        let _ = bdev;
        None
    }

    /// The module's configuration for `save_config`, as RPC calls
    /// (`{"method", "params"}`): its options, and the calls that create
    /// what examine does not rebuild by itself. Written before every bdev's
    /// own call.
    fn config_json(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}
