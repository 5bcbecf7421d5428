//! NVMe completion status: the 15-bit status field decoded into status code
//! type, status code and flags, with the names the specification gives.

use std::fmt;

/// A completion status as the controller reported it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NvmeStatus(pub u16);

/// Status Code Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCodeType {
    /// Generic Command Status (0h).
    Generic,
    /// Command Specific Status (1h).
    CommandSpecific,
    /// Media and Data Integrity Errors (2h).
    MediaDataIntegrity,
    /// Path Related Status (3h).
    PathRelated,
    /// Vendor Specific (7h).
    VendorSpecific,
    /// A reserved type.
    Reserved(u8),
}

macro_rules! status_kinds {
    ($( $variant:ident = ($sct:literal, $sc:literal, $name:literal), )*) => {
        /// The status codes this driver knows by name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum StatusKind {
            $(
                #[doc = $name]
                $variant,
            )*
            /// A status without a name here (vendor specific or newer).
            Other {
                /// Status code type.
                sct: u8,
                /// Status code.
                sc: u8,
            },
        }

        impl StatusKind {
            fn from_parts(sct: u8, sc: u8) -> Self {
                match (sct, sc) {
                    $( ($sct, $sc) => StatusKind::$variant, )*
                    _ => StatusKind::Other { sct, sc },
                }
            }

            /// The specification's name for the status.
            pub fn name(self) -> &'static str {
                match self {
                    $( StatusKind::$variant => $name, )*
                    StatusKind::Other { .. } => "Unknown Status",
                }
            }
        }
    };
}

status_kinds! {
    Success = (0, 0x00, "Successful Completion"),
    InvalidOpcode = (0, 0x01, "Invalid Command Opcode"),
    InvalidField = (0, 0x02, "Invalid Field in Command"),
    CommandIdConflict = (0, 0x03, "Command ID Conflict"),
    DataTransferError = (0, 0x04, "Data Transfer Error"),
    AbortedPowerLoss = (0, 0x05, "Commands Aborted due to Power Loss Notification"),
    InternalError = (0, 0x06, "Internal Error"),
    AbortRequested = (0, 0x07, "Command Abort Requested"),
    AbortedSqDeletion = (0, 0x08, "Command Aborted due to SQ Deletion"),
    AbortedFailedFused = (0, 0x09, "Command Aborted due to Failed Fused Command"),
    AbortedMissingFused = (0, 0x0a, "Command Aborted due to Missing Fused Command"),
    InvalidNamespaceOrFormat = (0, 0x0b, "Invalid Namespace or Format"),
    CommandSequenceError = (0, 0x0c, "Command Sequence Error"),
    InvalidSglSegmentDescriptor = (0, 0x0d, "Invalid SGL Segment Descriptor"),
    InvalidSglDescriptorCount = (0, 0x0e, "Invalid Number of SGL Descriptors"),
    DataSglLengthInvalid = (0, 0x0f, "Data SGL Length Invalid"),
    MetadataSglLengthInvalid = (0, 0x10, "Metadata SGL Length Invalid"),
    SglDescriptorTypeInvalid = (0, 0x11, "SGL Descriptor Type Invalid"),
    InvalidUseOfCmb = (0, 0x12, "Invalid Use of Controller Memory Buffer"),
    PrpOffsetInvalid = (0, 0x13, "PRP Offset Invalid"),
    AtomicWriteUnitExceeded = (0, 0x14, "Atomic Write Unit Exceeded"),
    OperationDenied = (0, 0x15, "Operation Denied"),
    SglOffsetInvalid = (0, 0x16, "SGL Offset Invalid"),
    HostIdInconsistentFormat = (0, 0x18, "Host Identifier Inconsistent Format"),
    KeepAliveExpired = (0, 0x19, "Keep Alive Timer Expired"),
    KeepAliveTimeoutInvalid = (0, 0x1a, "Keep Alive Timeout Invalid"),
    AbortedPreemptAbort = (0, 0x1b, "Command Aborted due to Preempt and Abort"),
    SanitizeFailed = (0, 0x1c, "Sanitize Failed"),
    SanitizeInProgress = (0, 0x1d, "Sanitize In Progress"),
    SglDataBlockGranularityInvalid = (0, 0x1e, "SGL Data Block Granularity Invalid"),
    CommandNotSupportedForCmbQueue = (0, 0x1f, "Command Not Supported for Queue in CMB"),
    NamespaceWriteProtected = (0, 0x20, "Namespace is Write Protected"),
    CommandInterrupted = (0, 0x21, "Command Interrupted"),
    TransientTransportError = (0, 0x22, "Transient Transport Error"),
    LbaOutOfRange = (0, 0x80, "LBA Out of Range"),
    CapacityExceeded = (0, 0x81, "Capacity Exceeded"),
    NamespaceNotReady = (0, 0x82, "Namespace Not Ready"),
    ReservationConflict = (0, 0x83, "Reservation Conflict"),
    FormatInProgress = (0, 0x84, "Format In Progress"),
    InvalidCompletionQueue = (1, 0x00, "Completion Queue Invalid"),
    InvalidQueueId = (1, 0x01, "Invalid Queue Identifier"),
    InvalidQueueSize = (1, 0x02, "Invalid Queue Size"),
    AbortCommandLimitExceeded = (1, 0x03, "Abort Command Limit Exceeded"),
    AsyncEventRequestLimitExceeded = (1, 0x05, "Asynchronous Event Request Limit Exceeded"),
    InvalidFirmwareSlot = (1, 0x06, "Invalid Firmware Slot"),
    InvalidFirmwareImage = (1, 0x07, "Invalid Firmware Image"),
    InvalidInterruptVector = (1, 0x08, "Invalid Interrupt Vector"),
    InvalidLogPage = (1, 0x09, "Invalid Log Page"),
    InvalidFormat = (1, 0x0a, "Invalid Format"),
    InvalidQueueDeletion = (1, 0x0c, "Invalid Queue Deletion"),
    FeatureNotSaveable = (1, 0x0d, "Feature Identifier Not Saveable"),
    FeatureNotChangeable = (1, 0x0e, "Feature Not Changeable"),
    FeatureNotNamespaceSpecific = (1, 0x0f, "Feature Not Namespace Specific"),
    NamespaceAlreadyAttached = (1, 0x18, "Namespace Already Attached"),
    NamespaceIsPrivate = (1, 0x19, "Namespace Is Private"),
    NamespaceNotAttached = (1, 0x1a, "Namespace Not Attached"),
    ConflictingAttributes = (1, 0x80, "Conflicting Attributes"),
    InvalidProtectionInformation = (1, 0x81, "Invalid Protection Information"),
    WriteToReadOnlyRange = (1, 0x82, "Attempted Write to Read Only Range"),
    WriteFault = (2, 0x80, "Write Fault"),
    UnrecoveredReadError = (2, 0x81, "Unrecovered Read Error"),
    GuardCheckError = (2, 0x82, "End-to-end Guard Check Error"),
    AppTagCheckError = (2, 0x83, "End-to-end Application Tag Check Error"),
    RefTagCheckError = (2, 0x84, "End-to-end Reference Tag Check Error"),
    CompareFailure = (2, 0x85, "Compare Failure"),
    AccessDenied = (2, 0x86, "Access Denied"),
    DeallocatedOrUnwritten = (2, 0x87, "Deallocated or Unwritten Logical Block"),
    InternalPathError = (3, 0x00, "Internal Path Error"),
    AsymmetricAccessPersistentLoss = (3, 0x01, "Asymmetric Access Persistent Loss"),
    AsymmetricAccessInaccessible = (3, 0x02, "Asymmetric Access Inaccessible"),
    AsymmetricAccessTransition = (3, 0x03, "Asymmetric Access Transition"),
    ControllerPathingError = (3, 0x60, "Controller Pathing Error"),
    HostPathingError = (3, 0x70, "Host Pathing Error"),
    AbortedByHost = (3, 0x71, "Command Aborted By Host"),
}

impl NvmeStatus {
    /// Successful completion.
    pub const SUCCESS: NvmeStatus = NvmeStatus(0);

    /// Builds a status from its type and code (DNR clear).
    pub const fn new(sct: u8, sc: u8) -> Self {
        NvmeStatus(((sct as u16 & 7) << 8) | sc as u16)
    }

    /// Status Code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type, raw.
    pub fn sct_raw(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    /// Status Code Type.
    pub fn sct(self) -> StatusCodeType {
        match self.sct_raw() {
            0 => StatusCodeType::Generic,
            1 => StatusCodeType::CommandSpecific,
            2 => StatusCodeType::MediaDataIntegrity,
            3 => StatusCodeType::PathRelated,
            7 => StatusCodeType::VendorSpecific,
            r => StatusCodeType::Reserved(r),
        }
    }

    /// Command Retry Delay index.
    pub fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }

    /// More status information in the Error log.
    pub fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Whether the command succeeded.
    pub fn is_success(self) -> bool {
        self.sct_raw() == 0 && self.sc() == 0
    }

    /// The named status.
    pub fn kind(self) -> StatusKind {
        StatusKind::from_parts(self.sct_raw(), self.sc())
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {:x}h, SC {:02x}h{})",
            self.kind().name(),
            self.sct_raw(),
            self.sc(),
            if self.dnr() { ", DNR" } else { "" }
        )
    }
}

impl fmt::Debug for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a submitted command did not complete successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The controller completed it with an error status.
    #[error("{0}")]
    Status(NvmeStatus),
    /// The controller was reset while the command was outstanding; it was
    /// not completed by the device and may or may not have taken effect.
    #[error("aborted by a controller reset")]
    AbortedByReset,
    /// The controller is gone (surprise removal or fatal failure).
    #[error("controller removed or failed")]
    ControllerRemoved,
}

impl CommandError {
    /// The device's status, when the device produced one.
    pub fn status(&self) -> Option<NvmeStatus> {
        match self {
            CommandError::Status(s) => Some(*s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields_and_names() {
        // LBA Out of Range with DNR, as the 15-bit field of a CQE.
        let s = NvmeStatus(0x80 | (1 << 14));
        assert_eq!(s.kind(), StatusKind::LbaOutOfRange);
        assert!(s.dnr());
        assert!(!s.is_success());
        assert_eq!(s.to_string(), "LBA Out of Range (SCT 0h, SC 80h, DNR)");
        let s = NvmeStatus::new(2, 0x85);
        assert_eq!(s.sct(), StatusCodeType::MediaDataIntegrity);
        assert_eq!(s.kind(), StatusKind::CompareFailure);
        assert_eq!(NvmeStatus::new(1, 0x01).kind(), StatusKind::InvalidQueueId);
        assert_eq!(
            NvmeStatus::new(7, 0xc3).kind(),
            StatusKind::Other { sct: 7, sc: 0xc3 }
        );
        assert!(NvmeStatus::SUCCESS.is_success());
        let s = NvmeStatus((1 << 13) | (2 << 11) | 0x06);
        assert!(s.more());
        assert_eq!(s.crd(), 2);
        assert_eq!(s.kind(), StatusKind::InternalError);
    }
}
