//! Data structures of the NVMe base and NVM command set specifications, as
//! `#[repr(C)]` structs with compile-time size checks.

mod cqe;
mod identify;
mod log;
mod sqe;

pub use cqe::Cqe;
pub use identify::{IdentifyController, IdentifyNamespace, LbaFormat};
pub use log::{ErrorLogEntry, SmartLog, le128};
pub use sqe::{DsmRange, Sqe};

/// Admin command opcodes.
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u8 = 0x0d;
    /// Namespace Attachment.
    pub const NS_ATTACHMENT: u8 = 0x15;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
}

/// NVM command set I/O opcodes.
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify CNS values.
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u32 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u32 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u32 = 0x02;
    /// Namespace Identification Descriptor list (NVMe 1.3).
    pub const NS_ID_DESCRIPTORS: u32 = 0x03;
}

/// Feature identifiers.
pub mod feature {
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
}

/// Log page identifiers.
pub mod log_page {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Changed Namespace List.
    pub const CHANGED_NS_LIST: u8 = 0x04;
}
