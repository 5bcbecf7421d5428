//! Why a blob store or blob operation failed, with the errno SPDK answers
//! for the same case (the volume layer's RPCs map it).

use super::FormatError;
use super::load::LoadError;

/// A blob store or blob operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Device I/O failed.
    #[error("{what}: {why}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// The store did not load.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// Metadata that does not encode or parse.
    #[error("{0}")]
    Format(#[from] FormatError),
    /// No such blob.
    #[error("blob {0:#x} does not exist")]
    NotFound(u64),
    /// The blob is in use.
    #[error("blob {id:#x} is busy: {why}")]
    Busy {
        /// The blob.
        id: u64,
        /// What holds it.
        why: String,
    },
    /// No free cluster or metadata page.
    #[error("no space: {0}")]
    NoSpace(String),
    /// The blob is read-only.
    #[error("blob {0:#x} is read-only")]
    ReadOnly(u64),
    /// An argument out of range.
    #[error("{what}: {why}")]
    Invalid {
        /// The argument.
        what: String,
        /// Why.
        why: String,
    },
    /// The store was unloaded.
    #[error("the blob store is unloaded")]
    Unloaded,
}

impl BlobError {
    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> BlobError {
        BlobError::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, why: impl ToString) -> BlobError {
        BlobError::Io {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// The positive errno SPDK answers for this case (ENOENT, EBUSY,
    /// ENOSPC, EPERM, EINVAL, EIO, ENODEV).
    pub fn errno(&self) -> i32 {
        match self {
            BlobError::Io { .. } | BlobError::Load(_) | BlobError::Format(_) => libc::EIO,
            BlobError::NotFound(_) => libc::ENOENT,
            BlobError::Busy { .. } => libc::EBUSY,
            BlobError::NoSpace(_) => libc::ENOSPC,
            BlobError::ReadOnly(_) => libc::EPERM,
            BlobError::Invalid { .. } => libc::EINVAL,
            BlobError::Unloaded => libc::ENODEV,
        }
    }
}
