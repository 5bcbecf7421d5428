//! Completion queue entries.

use std::mem::size_of;

/// A 16-byte completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific result.
    pub dw0: u32,
    /// Command specific (reserved for most commands).
    pub dw1: u32,
    /// SQ head pointer (15:0) and SQ identifier (31:16).
    pub dw2: u32,
    /// Command id (15:0), phase tag (16), status (31:17).
    pub dw3: u32,
}

const _: () = assert!(size_of::<Cqe>() == 16);

impl Cqe {
    /// Submission queue head pointer at the time of completion.
    pub fn sq_head(&self) -> u16 {
        self.dw2 as u16
    }

    /// Submission queue the command came from.
    pub fn sq_id(&self) -> u16 {
        (self.dw2 >> 16) as u16
    }

    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.dw3 as u16
    }

    /// Phase tag.
    pub fn phase(&self) -> bool {
        self.dw3 & (1 << 16) != 0
    }

    /// The 15-bit status field (SC, SCT, CRD, M, DNR), without the phase.
    pub fn status_field(&self) -> u16 {
        (self.dw3 >> 17) as u16
    }
}
