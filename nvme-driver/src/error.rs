//! Errors of the driver: each says which controller, which command or queue,
//! and what the controller answered.

use crate::pci::PciError;
use crate::prp::PrpError;
use crate::status::CommandError;

/// What went wrong on the control path (bring-up, admin commands, queue
/// creation, reset).
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// Opening the PCI function through VFIO failed.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// DMA memory could not be had or mapped.
    #[error("{ctrlr}: DMA memory: {source}")]
    Dma {
        /// The controller.
        ctrlr: String,
        /// What the DMA layer said.
        #[source]
        source: dma::DmaError,
    },
    /// A bring-up or reset step did not finish in time.
    #[error(
        "{ctrlr}: controller init timed out in state {state} after {waited_ms} ms (CSTS {csts:#x})"
    )]
    InitTimeout {
        /// The controller.
        ctrlr: String,
        /// The step that did not finish.
        state: &'static str,
        /// How long it waited.
        waited_ms: u64,
        /// Controller status when giving up.
        csts: u32,
    },
    /// The registers read all-ones: the device is gone.
    #[error("{ctrlr}: controller removed (registers read all-ones)")]
    Removed {
        /// The controller.
        ctrlr: String,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    #[error("{ctrlr}: controller fatal status (CSTS.CFS) during {state}")]
    Fatal {
        /// The controller.
        ctrlr: String,
        /// The step during which it was seen.
        state: &'static str,
    },
    /// An admin command completed with an error.
    #[error("{ctrlr}: admin command {command} failed: {source}")]
    Admin {
        /// The controller.
        ctrlr: String,
        /// The command.
        command: &'static str,
        /// The completion error.
        #[source]
        source: CommandError,
    },
    /// An admin command did not complete in time.
    #[error("{ctrlr}: admin command {command} timed out after {ms} ms")]
    AdminTimeout {
        /// The controller.
        ctrlr: String,
        /// The command.
        command: &'static str,
        /// The timeout.
        ms: u64,
    },
    /// The admin queue had no free slot.
    #[error("{ctrlr}: admin queue full while issuing {command}")]
    AdminQueueFull {
        /// The controller.
        ctrlr: String,
        /// The command.
        command: &'static str,
    },
    /// The controller lacks something the driver needs.
    #[error("{ctrlr}: unsupported controller: {what}")]
    Unsupported {
        /// The controller.
        ctrlr: String,
        /// What is missing.
        what: String,
    },
    /// Every I/O queue the controller granted is in use.
    #[error("{ctrlr}: no free I/O queue ({granted} granted by the controller, all in use)")]
    NoFreeQueue {
        /// The controller.
        ctrlr: String,
        /// Queues the controller granted.
        granted: u16,
    },
    /// A queue depth outside 1..=max.
    #[error("{ctrlr}: queue depth {asked} is outside 1..={max} (CAP.MQES)")]
    InvalidDepth {
        /// The controller.
        ctrlr: String,
        /// The depth asked for.
        asked: u32,
        /// The most the controller allows.
        max: u32,
    },
    /// No such active namespace.
    #[error("{ctrlr}: namespace {nsid} does not exist or is inactive")]
    InvalidNamespace {
        /// The controller.
        ctrlr: String,
        /// The namespace id.
        nsid: u32,
    },
    /// The controller is resetting or failed; the operation cannot run now.
    #[error("{ctrlr}: controller is {state}")]
    NotReady {
        /// The controller.
        ctrlr: String,
        /// Its state.
        state: &'static str,
    },
    /// The transport (NVMe/TCP) failed: a connection could not be made,
    /// was refused or was lost.
    #[error("{ctrlr}: {what}")]
    Transport {
        /// The controller.
        ctrlr: String,
        /// What happened.
        what: String,
    },
    /// No connection could be made to the controller's address (refused,
    /// unreachable, or not made within the connect timeout): nothing
    /// answered there as an NVMe/TCP controller.
    #[error("{ctrlr}: {what}")]
    Unreachable {
        /// The controller.
        ctrlr: String,
        /// What happened.
        what: String,
    },
    /// A data buffer cannot be described with PRPs.
    #[error("{ctrlr}: {source}")]
    Prp {
        /// The controller.
        ctrlr: String,
        /// Why.
        #[source]
        source: PrpError,
    },
}

/// Why an I/O could not be submitted. The caller's context comes back in
/// [`SubmitError::ctx`] so nothing is lost.
#[derive(Debug)]
pub struct SubmitError<C> {
    /// What was wrong.
    pub kind: SubmitErrorKind,
    /// The context given with the submission.
    pub ctx: C,
}

/// The block count as an I/O command carries it (1..=65536, sent as a
/// 0-based u32), or the refusal with the context given back. Shared by the
/// PCIe and TCP queue pairs.
#[inline]
pub(crate) fn check_blocks<C>(blocks: u64, ctx: C) -> Result<(u32, C), SubmitError<C>> {
    if (1..=65536).contains(&blocks) {
        Ok((blocks as u32, ctx))
    } else {
        Err(SubmitError {
            kind: SubmitErrorKind::BadBlockCount(blocks),
            ctx,
        })
    }
}

/// The reasons a submission is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitErrorKind {
    /// Every slot of the queue pair is in use: retry after completions.
    #[error("queue full")]
    QueueFull,
    /// The controller is being reset: retry after it is ready again.
    #[error("controller resetting")]
    Resetting,
    /// A reset of the controller failed, or it refused to create this
    /// queue: nothing is accepted until a reset succeeds.
    #[error("controller failed (a reset did not bring it back)")]
    Failed,
    /// The controller is gone; nothing will be accepted any more.
    #[error("controller removed")]
    Removed,
    /// No active namespace with this id.
    #[error("invalid namespace {0}")]
    InvalidNamespace(u32),
    /// Block count outside 1..=65536.
    #[error("block count {0} outside 1..=65536")]
    BadBlockCount(u64),
    /// The data buffers do not add up to blocks x block size.
    #[error("data is {got} bytes, the command transfers {expected}")]
    LengthMismatch {
        /// Bytes the command transfers.
        expected: usize,
        /// Bytes of data given.
        got: usize,
    },
    /// The transfer exceeds the controller's maximum (MDTS); split it.
    #[error("transfer of {bytes} bytes exceeds the controller's maximum of {max} (MDTS)")]
    TooLarge {
        /// Bytes asked.
        bytes: usize,
        /// Maximum.
        max: usize,
    },
    /// More data segments than one command carries.
    #[error("more than {0} data segments")]
    TooManySegments(usize),
    /// Too many deallocate ranges (1..=256).
    #[error("{0} deallocate ranges; 1..=256 allowed")]
    BadRangeCount(usize),
    /// The buffers cannot be described with PRPs.
    #[error(transparent)]
    Prp(#[from] PrpError),
}

impl<C> std::fmt::Display for SubmitError<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl<C: std::fmt::Debug> std::error::Error for SubmitError<C> {}
