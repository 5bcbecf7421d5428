//! What a module implements for each bdev it registers (SPDK's
//! `spdk_bdev_fn_table`); the module itself is in `module.rs`.

use std::any::Any;

use reactor::CoreId;

use crate::handle::IoHandle;
use crate::types::{IoType, IoVec};

/// The per-bdev function table of a module. `Channel` is the module's
/// per-core state for this bdev (a queue pair, a base bdev's channel...),
/// built on its core by [`BdevOps::create_channel`].
pub trait BdevOps: Send + Sync + 'static {
    /// Per-core state.
    type Channel: 'static;

    /// Builds this core's channel.
    ///
    /// # Errors
    /// Why no channel can be had on this core.
    fn create_channel(&self, core: CoreId) -> Result<Self::Channel, String>;

    /// Starts an I/O. The module completes it exactly once, now or later on
    /// this core, with [`IoHandle::complete`] (`IoStatus::NoMem` asks the
    /// layer to queue it and submit it again later). Types for which
    /// [`BdevOps::io_type_supported`] is false never reach here.
    fn submit(&self, ch: &Self::Channel, io: IoHandle);

    /// Whether the module handles `ty`. Must be the truth: the layer answers
    /// NOT-SUPPORTED for the rest (and emulates WriteZeroes with writes).
    fn io_type_supported(&self, ty: IoType) -> bool;

    /// Whether the device can take these segments as they are; when not, the
    /// layer bounce-buffers the I/O. The default asks for nothing.
    fn accepts_iovs(&self, iovs: &[IoVec]) -> bool {
        let _ = iovs;
        true
    }

    /// Module-specific information for `bdev_get_bdevs`' `driver_specific`.
    fn dump_info_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The RPC call that re-creates this bdev (`{"method": ..., "params": ...}`)
    /// for `save_config`, if the module's bdevs are created by RPC.
    fn write_config_json(&self) -> Option<serde_json::Value> {
        None
    }

    /// Called once when the bdev is unregistered, after every channel is gone.
    fn destruct(&self) {}

    /// The asynchronous part of the destruct, run after [`BdevOps::destruct`]
    /// (finish the module's own I/O, write its metadata): the bdev keeps its
    /// name, and `unregister` does not complete, until the future has.
    fn destruct_async(&self) -> Option<crate::ModuleTask> {
        None
    }
}

/// The erased form the layer stores.
pub(crate) trait ErasedOps: Send + Sync {
    fn create_channel(&self, core: CoreId) -> Result<Box<dyn Any>, String>;
    fn submit(&self, ch: &dyn Any, io: IoHandle);
    fn io_type_supported(&self, ty: IoType) -> bool;
    fn accepts_iovs(&self, iovs: &[IoVec]) -> bool;
    fn dump_info_json(&self) -> serde_json::Value;
    fn write_config_json(&self) -> Option<serde_json::Value>;
    fn destruct(&self);
    fn destruct_async(&self) -> Option<crate::ModuleTask>;
    fn as_any(&self) -> &dyn Any;
}

pub(crate) struct Erased<O: BdevOps>(pub O);

impl<O: BdevOps> ErasedOps for Erased<O> {
    fn create_channel(&self, core: CoreId) -> Result<Box<dyn Any>, String> {
        self.0
            .create_channel(core)
            .map(|c| Box::new(c) as Box<dyn Any>)
    }

    #[inline]
    fn submit(&self, ch: &dyn Any, io: IoHandle) {
        let ch = ch
            .downcast_ref::<O::Channel>()
            .expect("a bdev's channel is always its module's channel type");
        self.0.submit(ch, io)
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        self.0.io_type_supported(ty)
    }

    fn accepts_iovs(&self, iovs: &[IoVec]) -> bool {
        self.0.accepts_iovs(iovs)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        self.0.dump_info_json()
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        self.0.write_config_json()
    }

    fn destruct(&self) {
        self.0.destruct()
    }

    fn destruct_async(&self) -> Option<crate::ModuleTask> {
        self.0.destruct_async()
    }

    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}
