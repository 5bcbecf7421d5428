//! The poll-mode user-space NVMe driver: PCIe transport through VFIO, the
//! controller bring-up and reset state machines, admin commands, and I/O
//! queue pairs each owned by exactly one core; and NVMe/TCP's wire format
//! ([`tcp::pdu`]: PDUs, digests, the receiver's checks), which the
//! appliance's target uses, and the NVMe/TCP host ([`tcp::TcpController`],
//! [`tcp::TcpQpair`]); [`AnyController`] and [`AnyQpair`] drive either
//! transport through one interface.
//!
//! Owns: BAR0 registers, submission/completion rings, command encoding, PRP
//! lists (and one SGL data block for single-segment data where the
//! controller offers SGLs), completion polling with the submission doorbell
//! written before the completion doorbell, timeouts, abort and reset, async
//! events.
//!
//! Must not: take interrupts, lock or allocate on the submit/complete path,
//! create Rust references into memory the controller may write, or wait:
//! bring-up ([`Controller::start`] → [`Starting::poll`]), reset, queue
//! creation and deletion, and admin commands ([`AdminClient`]'s futures)
//! advance by polls on the owning core. Only [`blocking`] waits, for
//! threads that are not reactors.
//!
//! # Shape
//!
//! ```text
//!  Controller (control path, one core)        IoQpair<C> (one per core)
//!   ├ Init state machine (init.rs)             ├ SubmissionRing / CompletionRing
//!   ├ AdminQueue: tickets + AERs (admin.rs) <─ ┤ trackers[cid]: ctx C + PRP page
//!   ├ AdminClient futures (client.rs)          ├ connects itself by polls
//!   └ poll_admin: events, aborts, reset        └ process_completions(max, |ctx, res|)
//!          │            shared.rs: state, reset generation, block sizes
//!          └──────── RegisterIo: BAR0 via VFIO (pci/), or sim::SimController
//! ```
//!
//! * Transfers larger than [`Controller::max_transfer`] (MDTS, capped at one
//!   PRP list page per command: 2 MiB) are rejected with
//!   [`SubmitErrorKind::TooLarge`]: the bdev layer splits them.
//! * A command outstanding longer than the queue pair's timeout is aborted;
//!   if it is still outstanding after twice the timeout the controller is
//!   reset. On reset every outstanding command completes with
//!   [`CommandError::AbortedByReset`] (it may or may not have taken effect;
//!   the caller decides whether to retry) and queues are re-created; a
//!   controller whose registers read all-ones is removed and everything
//!   fails fast with [`CommandError::ControllerRemoved`].
//! * The per-command context `C` is stored inline in a preallocated tracker:
//!   submission and completion allocate nothing (see the `no_alloc` test).

mod admin;
mod any;
pub mod blocking;
mod client;
pub mod cmd;
pub mod crc32c;
mod ctrlr;
mod error;
mod init;
pub mod pci;
pub mod prp;
mod qcore;
mod qpair;
pub mod queue;
pub mod regs;
mod shared;
pub mod sim;
pub mod spec;
pub mod status;
pub mod tcp;

pub use any::{AnyController, AnyQpair, DataSeg, MAX_SEGS};
pub use client::{AdminClient, AdminCommand, Passthru};
pub use ctrlr::{Controller, ControllerOptions, Namespace, NsEvent, NsEventHandler, Starting};
pub use error::{NvmeError, SubmitError, SubmitErrorKind};
pub use qpair::{IoQpair, QpairStats};
pub use shared::{CtrlrState, TimeoutAction};
pub use status::{CommandError, NvmeStatus, StatusKind};
