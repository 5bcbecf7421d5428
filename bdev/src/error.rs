//! Errors of the block-device layer's control path and of I/O submission.

/// What went wrong on the control path or when submitting an I/O.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BdevError {
    /// No bdev with this name or alias.
    #[error("no bdev named {0}")]
    NotFound(String),
    /// The name (or an alias) is taken.
    #[error("a bdev named {0} already exists")]
    Exists(String),
    /// Invalid parameters, with the reason.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: String,
        /// Why.
        reason: String,
    },
    /// The bdev is claimed by a module for exclusive write.
    #[error("bdev {bdev} is claimed by {holder}")]
    Claimed {
        /// The bdev.
        bdev: String,
        /// The module holding the claim.
        holder: String,
    },
    /// The bdev is being removed.
    #[error("bdev {0} is being removed")]
    Removing(String),
    /// The bdev is open or otherwise busy.
    #[error("bdev {bdev} is busy: {reason}")]
    Busy {
        /// The bdev.
        bdev: String,
        /// Why.
        reason: String,
    },
    /// Writing through a descriptor opened read-only.
    #[error("bdev {0} was opened read-only")]
    ReadOnly(String),
    /// An I/O beyond the end of the bdev.
    #[error(
        "I/O of {num_blocks} blocks at {offset_blocks} is beyond the end of {bdev} ({size_blocks} blocks)"
    )]
    OutOfRange {
        /// The bdev.
        bdev: String,
        /// First block.
        offset_blocks: u64,
        /// Block count.
        num_blocks: u64,
        /// Size of the bdev in blocks.
        size_blocks: u64,
    },
    /// The buffer given does not match the I/O.
    #[error("buffer of {got} bytes for an I/O of {expected} bytes")]
    BufferSize {
        /// Bytes the I/O transfers.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// No free I/O object on this channel: retry after completions.
    #[error("no free I/O on this channel (all {0} in use)")]
    NoMem(usize),
    /// No DMA buffer of this size could be had.
    #[error("no DMA buffer of {len} bytes: {reason}")]
    NoBuffer {
        /// Bytes asked for.
        len: usize,
        /// Why.
        reason: String,
    },
    /// The call must be made on a reactor thread.
    #[error("{0} must be called on a reactor thread")]
    NotOnReactor(&'static str),
    /// A module failed.
    #[error("{module}: {reason}")]
    Module {
        /// The module.
        module: String,
        /// What failed.
        reason: String,
    },
    /// The operation is not allowed in the current state (the text says
    /// why).
    #[error("{0}")]
    NotPermitted(String),
    /// A system call failed (opening a file, an ioctl): its errno, which
    /// is the answer's code.
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// What was being done.
        what: String,
        /// The positive errno.
        errno: i32,
    },
}

impl BdevError {
    /// The negative errno SPDK's JSON-RPC answers with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::NotFound(_) => -libc_errno::ENODEV,
            BdevError::Exists(_) => -libc_errno::EEXIST,
            BdevError::Invalid { .. }
            | BdevError::OutOfRange { .. }
            | BdevError::BufferSize { .. } => -libc_errno::EINVAL,
            BdevError::Claimed { .. } | BdevError::NotPermitted(_) => -libc_errno::EPERM,
            BdevError::Removing(_) | BdevError::Busy { .. } => -libc_errno::EBUSY,
            BdevError::ReadOnly(_) => -libc_errno::EBADF,
            BdevError::NoMem(_) | BdevError::NoBuffer { .. } => -libc_errno::ENOMEM,
            BdevError::NotOnReactor(_) => -libc_errno::EINVAL,
            BdevError::Module { .. } => -libc_errno::EIO,
            BdevError::Os { errno, .. } => -errno.abs(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        BdevError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// The errno values used above (Linux numbering).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
}
