//! What a RAID control operation can fail with, and the errno SPDK's
//! JSON-RPC answers each with.

use crate::BdevError;

use super::sb_io::SbIoError;

/// Why a RAID operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaidError {
    /// The name is taken by a RAID or a bdev (-EEXIST).
    #[error("a RAID or bdev named {0} already exists")]
    Exists(String),
    /// No RAID of that name (-ENODEV).
    #[error("raid bdev {0} not found")]
    NotFound(String),
    /// A parameter is wrong (-EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// The member holds the superblock of another RAID (-EEXIST).
    #[error("bdev {bdev} holds the superblock of RAID {raid} ({uuid})")]
    ForeignSuperblock {
        /// The would-be member.
        bdev: String,
        /// The RAID named in its superblock.
        raid: String,
        /// That RAID's UUID.
        uuid: String,
    },
    /// The member's block size differs from the RAID's (-EINVAL).
    #[error("RAID {raid} has {want}-byte blocks, bdev {bdev} has {got}-byte blocks")]
    BlockSize {
        /// The RAID.
        raid: String,
        /// The member.
        bdev: String,
        /// The RAID's block size.
        want: u32,
        /// The member's.
        got: u32,
    },
    /// The member is too small (-EINVAL).
    #[error("bdev {bdev} is too small for RAID {raid}: {why}")]
    TooSmall {
        /// The RAID.
        raid: String,
        /// The member.
        bdev: String,
        /// What it lacks.
        why: String,
    },
    /// The bdev is not a member of any RAID (-ENODEV).
    #[error("bdev {0} is not a member of a RAID")]
    NotMember(String),
    /// The RAID has no free slot for another member (-EINVAL).
    #[error("RAID {0} has no free slot for another member")]
    NoSlot(String),
    /// Another operation (a rebuild) is in progress (-EBUSY).
    #[error("{0}")]
    Busy(String),
    /// The operation does not fit the RAID's state (-EPERM).
    #[error("{0}")]
    State(String),
    /// Reading or writing a member's superblock failed (-EIO).
    #[error("bdev {bdev}: {source}")]
    Superblock {
        /// The member.
        bdev: String,
        /// What failed.
        source: SbIoError,
    },
    /// The layer refused (opening, claiming, registering...).
    #[error("{0}")]
    Bdev(#[from] BdevError),
}

impl RaidError {
    /// The negative errno SPDK answers with.
    pub fn errno(&self) -> i32 {
        match self {
            RaidError::Exists(_) | RaidError::ForeignSuperblock { .. } => -17,
            RaidError::NotFound(_) | RaidError::NotMember(_) => -19,
            RaidError::Invalid(_)
            | RaidError::BlockSize { .. }
            | RaidError::TooSmall { .. }
            | RaidError::NoSlot(_) => -22,
            RaidError::State(_) => -1,
            RaidError::Busy(_) => -16,
            RaidError::Superblock { .. } => -5,
            RaidError::Bdev(e) => e.errno(),
        }
    }
}
