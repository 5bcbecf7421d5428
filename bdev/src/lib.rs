//! The block-device (bdev) layer: registry, descriptors and claims, events,
//! examine, per-core I/O channels, pooled `BdevIo` objects, splitting and
//! bounce buffers, statistics; its modules live in `modules/<name>/`, each
//! with its JSON-RPC methods in `modules/<name>/rpc.rs` (over [`rpc`]).
//!
//! Owns: every bdev and virtual bdev (malloc, null, delay, error, nvme,
//! passthrough, crypto, and later RAID and logical volumes).
//!
//! Must not: allocate, lock or hop cores on the I/O path, or complete an I/O
//! type it does not support with anything but a NOT-SUPPORTED status.
//!
//! # Shape
//!
//! ```text
//!  open(name, write, event_cb) -> Desc ──get_io_channel()──> BdevChannel (per core)
//!        │ claims, Resize/Remove events           │ read/write/... (bounds checked)
//!        v                                        v
//!  registry: name/alias -> Bdev            BdevIo from the channel's pool
//!        │ examine by every module                │ NOT-SUPPORTED / split / bounce
//!        v                                        v
//!  BdevOps (module table) <─── submit(IoHandle) ──┘   IoHandle::complete(status)
//!                                                     └─> callback on this core
//! ```
//!
//! * A module registers a bdev with [`register`], a [`BdevProps`] and its
//!   [`BdevOps`] (with an associated per-core channel type). Virtual bdevs
//!   open their base with [`open`], [`Desc::claim`] it, and follow its
//!   events: the passthrough module ([`modules::passthru`]) is the template.
//! * The I/O path: [`BdevChannel::read`] and friends (safe, the buffer
//!   travels with the I/O) or [`BdevChannel::submit_iovs`] (segments the
//!   caller keeps valid). Completion calls an [`IoCallback`] (a plain
//!   function and a context word) on the submitting core; completions that
//!   happen inside a submission are deferred to the channel's poller so
//!   callbacks never recurse.
//! * Zero-copy windows ([`BdevChannel::zcopy_start`], SPDK's zcopy): a
//!   module that keeps data in memory (malloc) lends that memory for a
//!   block range; the submitter reads or writes it in place inside its
//!   callback and ends the window ([`BdevIo::zcopy_end`], with or without
//!   commit). The crypto vbdev ciphers straight into and out of such
//!   windows. Vbdevs do not pass windows through.
//! * Nothing is allocated per I/O: `BdevIo`s come from the channel's pool
//!   ([`set_io_pool_size`]), module context lives inline
//!   ([`BdevIo::module_ctx`]), bounce buffers come from the core's DMA cache.

mod bdev;
mod channel;
mod child;
mod claim;
mod desc;
mod emulate;
mod env;
mod error;
mod handle;
mod io;
mod medium;
mod module;
pub mod modules;
mod ops;
mod props;
mod quiesce;
mod registry;
mod reset;
pub mod rpc;
mod stats;
mod types;

pub use bdev::{Bdev, BdevProps};
pub use channel::BdevChannel;
pub use child::{Child, ChildCallback, ChildData, ChildRefused, complete_parent};
pub use claim::ClaimType;
pub use desc::{Desc, EventCallback, open};
pub use env::{
    handle, latency_tracking, memory, set_io_pool_size, set_latency_tracking, set_memory,
    set_runtime,
};
pub use error::BdevError;
pub use handle::IoHandle;
pub use io::{BdevIo, IoCallback, MAX_IOV, MODULE_CTX_WORDS, Segments, SegmentsMut, ZcopyPhase};
pub use medium::Medium;
pub use module::{BdevModule, ExamineFuture, ModuleFuture, ModuleTask};
pub use ops::BdevOps;
pub use registry::{
    config_calls, examines_in_flight, fini, get, list, modules as registered_modules, new_uuid,
    register, register_module, unregister, wait_for_examine,
};
pub use stats::{IoStats, TypeStats};
pub use types::{BdevEvent, IoStatus, IoType, IoVec};
