//! The block-device (bdev) layer: registry, modules and their life,
//! descriptors and claims, events, examine, per-core I/O channels, pooled
//! `BdevIo` objects, child I/O for virtual bdevs, splitting and bounce
//! buffers, quiesce, reset, statistics; its modules live in
//! `modules/<name>/`, each with its JSON-RPC methods in
//! `modules/<name>/rpc.rs` (over [`rpc`]).
//!
//! Owns: every bdev and virtual bdev (malloc, null, delay, error, nvme,
//! aio, uring, passthrough, crypto, RAID, logical volumes) and the blob
//! store the volumes stand on ([`blob`]). The volumes' slow paths (a thin
//! cluster's first write, an external snapshot's read, write-zeroes and
//! unmap) run as tasks through the blob store and allocate; their mapped
//! reads and writes do not.
//!
//! Must not: allocate, lock, use an atomic read-modify-write shared between
//! cores, or hop cores on the I/O path; read the clock more than once per
//! I/O (none with latency tracking off); or complete an I/O type it does not
//! support with anything but a NOT-SUPPORTED status (or its documented
//! emulation). No `unsafe` under `modules/` but the AES kernel: modules use
//! the safe child-I/O, data and [`Medium`] APIs.
//!
//! # Shape
//!
//! ```text
//!  open(name, write, event_cb) -> Desc ──get_io_channel()──> BdevChannel (per core)
//!        │ claims (4 types), Resize/Remove        │ read/write/... (bounds checked)
//!        v                                        v
//!  registry: name/alias -> Bdev            BdevIo from the channel's pool
//!        │ examine_config + examine_disk          │ frozen (reset)? quiesced range?
//!        │ by every BdevModule                    │ layer answers / emulation / split / bounce
//!        v                                        v
//!  BdevOps (module table) <─── submit(IoHandle) ──┘   IoHandle::complete(status)
//!        │ io.submit_child(base, Child, done)            └─> callback on this core
//!        v
//!  the base bdev's channel (same path) ──> done(parent IoHandle, child, status)
//! ```
//!
//! * A module ([`BdevModule`]: init, asynchronous fini, examine in two
//!   steps, `config_json`) registers bdevs with [`register`], a
//!   [`BdevProps`] and their [`BdevOps`] (with an associated per-core
//!   channel type; destruct may be asynchronous). Virtual bdevs open their
//!   base with [`open`], claim it ([`Desc::claim_for`], one of SPDK's four
//!   [`ClaimType`]s, naming the bdev they stand for: `save_config` orders
//!   its calls by these claims, [`config_calls`]) and follow its events:
//!   the passthrough module ([`modules::passthru`]) is the template.
//! * Child I/O ([`IoHandle::submit_child`], [`IoHandle::forward`],
//!   [`IoHandle::open_child_window`]): a module passes all or part of an
//!   I/O down, or a buffer of its own, and gets the parent's handle back
//!   in its own callback; the layer checks, splits and retries the child.
//! * The I/O path: [`BdevChannel::read`] and friends (safe, the buffer
//!   travels with the I/O), [`BdevChannel::submit_iovs`] (segments the
//!   caller keeps valid), SEEK_DATA/SEEK_HOLE, COPY (emulated by reads and
//!   writes where a module lacks it), ABORT of I/O the layer holds.
//!   WRITE_ZEROES is emulated with writes of a zero buffer where a module
//!   lacks it; UNMAP is never emulated (NOT-SUPPORTED). Completion calls an
//!   [`IoCallback`] on the submitting core; completions that happen inside
//!   a submission are deferred to the channel's poller so callbacks never
//!   recurse. A module out of resources answers NoMem: the layer queues
//!   and retries once half the I/O in the module has completed.
//! * Quiesce ([`Bdev::quiesce_range`]) holds new I/O to a range and drains
//!   what was in flight; [`Bdev::for_each_channel`] visits every core's
//!   channel; RESET freezes every channel, waits for the module's drain
//!   timeout, then resets the module, one reset at a time.
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
pub mod blob;
mod channel;
mod child;
mod claim;
pub use nvme_driver::crc32c;
mod desc;
mod emulate;
mod env;
mod error;
mod fanout;
mod handle;
mod histogram;
mod io;
mod medium;
mod module;
pub mod modules;
mod oplock;
mod ops;
mod props;
mod qos;
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
pub use fanout::{FanChild, FanData, FanOutCallback, FanOutResult, MAX_FAN_OUT};
pub use handle::IoHandle;
pub use histogram::{BUCKET_SHIFT as HISTOGRAM_BUCKET_SHIFT, TICK_RATE as HISTOGRAM_TICK_RATE};
pub use io::{BdevIo, IoCallback, MAX_IOV, MODULE_CTX_WORDS, Segments, SegmentsMut, ZcopyPhase};
pub use medium::Medium;
pub use module::{BdevModule, ExamineFuture, ModuleFuture, ModuleTask};
pub use ops::BdevOps;
pub use qos::{MIN_IOS_PER_SEC, QosLimits, QosUpdate};
pub use registry::{
    config_calls, examines_in_flight, fini, format_uuid, get, list, modules as registered_modules,
    new_uuid, register, register_module, set_alias, unregister, wait_for_examine,
};
pub use stats::{IoStats, StatsReset, TypeStats};
pub use types::{BdevEvent, IoStatus, IoType, IoVec};
