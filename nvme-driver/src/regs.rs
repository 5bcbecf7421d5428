//! The controller register file at the start of BAR0 (NVMe base
//! specification 2.0, section 3.1.4), named as a `#[repr(C)]` struct so the
//! offsets come from the layout, and decoders for the fields the driver reads.

use std::mem::{offset_of, size_of};

/// Layout of the controller properties at the start of BAR0. Never
/// dereferenced: it only names offsets ([`Registers::CAP`] and friends), and
/// every access goes through [`crate::pci::Bar0`]'s volatile accessors.
#[repr(C)]
pub struct Registers {
    /// Controller Capabilities.
    pub cap: u64,
    /// Version.
    pub vs: u32,
    /// Interrupt Mask Set.
    pub intms: u32,
    /// Interrupt Mask Clear.
    pub intmc: u32,
    /// Controller Configuration.
    pub cc: u32,
    _rsvd: u32,
    /// Controller Status.
    pub csts: u32,
    /// NVM Subsystem Reset.
    pub nssr: u32,
    /// Admin Queue Attributes.
    pub aqa: u32,
    /// Admin Submission Queue Base Address.
    pub asq: u64,
    /// Admin Completion Queue Base Address.
    pub acq: u64,
}

const _: () = assert!(size_of::<Registers>() == 0x38);

impl Registers {
    /// Offset of CAP.
    pub const CAP: usize = offset_of!(Registers, cap);
    /// Offset of VS.
    pub const VS: usize = offset_of!(Registers, vs);
    /// Offset of CC.
    pub const CC: usize = offset_of!(Registers, cc);
    /// Offset of CSTS.
    pub const CSTS: usize = offset_of!(Registers, csts);
    /// Offset of AQA.
    pub const AQA: usize = offset_of!(Registers, aqa);
    /// Offset of ASQ.
    pub const ASQ: usize = offset_of!(Registers, asq);
    /// Offset of ACQ.
    pub const ACQ: usize = offset_of!(Registers, acq);
    /// Offset of the first doorbell (admin submission queue tail).
    pub const DOORBELLS: usize = 0x1000;
}

const _: () = assert!(Registers::CAP == 0x00);
const _: () = assert!(Registers::VS == 0x08);
const _: () = assert!(Registers::CC == 0x14);
const _: () = assert!(Registers::CSTS == 0x1c);
const _: () = assert!(Registers::AQA == 0x24);
const _: () = assert!(Registers::ASQ == 0x28);
const _: () = assert!(Registers::ACQ == 0x30);

/// Controller Capabilities (CAP), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    fn bits(self, lo: u32, width: u32) -> u64 {
        (self.0 >> lo) & ((1u64 << width) - 1)
    }

    /// Maximum Queue Entries Supported, as a queue size (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        self.bits(0, 16) as u32 + 1
    }

    /// Contiguous Queues Required.
    pub fn contiguous_queues_required(self) -> bool {
        self.bits(16, 1) == 1
    }

    /// Worst-case time to become ready after CC.EN changes, in milliseconds
    /// (CAP.TO is in 500 ms units).
    pub fn timeout_ms(self) -> u64 {
        self.bits(24, 8) * 500
    }

    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    pub fn doorbell_stride(self) -> usize {
        4usize << self.bits(32, 4)
    }

    /// NVM Subsystem Reset Supported.
    pub fn nvm_subsystem_reset(self) -> bool {
        self.bits(36, 1) == 1
    }

    /// Command Sets Supported includes the NVM command set (CSS bit 0).
    pub fn supports_nvm_command_set(self) -> bool {
        self.bits(37, 8) & 1 == 1
    }

    /// Smallest memory page size the controller supports, in bytes.
    pub fn min_page_size(self) -> usize {
        1usize << (12 + self.bits(48, 4))
    }

    /// Largest memory page size the controller supports, in bytes.
    pub fn max_page_size(self) -> usize {
        1usize << (12 + self.bits(52, 4))
    }
}

/// Version (VS), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u8,
    /// Tertiary version.
    pub tertiary: u8,
}

impl From<u32> for Version {
    fn from(vs: u32) -> Self {
        Version {
            major: (vs >> 16) as u16,
            minor: (vs >> 8) as u8,
            tertiary: vs as u8,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.tertiary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cap_fields() {
        // QEMU's emulated controller: MQES=0x7ff, CQR=1, TO=0xf, CSS=NVM|other,
        // MPSMIN=0, MPSMAX=4, DSTRD=0.
        let cap = Cap(0x0040_00a0_0f01_07ff | (4u64 << 52));
        assert_eq!(cap.max_queue_entries(), 0x800);
        assert!(cap.contiguous_queues_required());
        assert_eq!(cap.timeout_ms(), 15 * 500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.supports_nvm_command_set());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert_eq!(Cap(7u64 << 32).doorbell_stride(), 512);
        assert!(!Cap(0).supports_nvm_command_set());
    }

    #[test]
    fn decodes_version() {
        let v = Version::from(0x0001_0400);
        assert_eq!(
            v,
            Version {
                major: 1,
                minor: 4,
                tertiary: 0
            }
        );
        assert_eq!(v.to_string(), "1.4.0");
        assert!(Version::from(0x0002_0000) > v);
    }
}

/// Access to the controller's registers: BAR0 through VFIO, or a device model
/// in host tests. All offsets are byte offsets into BAR0.
pub trait RegisterIo: Send + Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads a 64-bit register, low half first.
    fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        (self.read32(offset + 4) as u64) << 32 | lo
    }
    /// Writes a 64-bit register, low half first.
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl RegisterIo for crate::pci::Bar0 {
    fn read32(&self, offset: usize) -> u32 {
        crate::pci::Bar0::read32(self, offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        crate::pci::Bar0::write32(self, offset, value)
    }
}

/// Controller Configuration (CC) fields.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1 << 0;
    /// Shutdown notification: normal.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// Mask of the shutdown notification field.
    pub const SHN_MASK: u32 = 3 << 14;

    /// CC for the NVM command set with memory page size `page` (bytes),
    /// round-robin arbitration, 64-byte SQ and 16-byte CQ entries, enabled.
    pub fn enabled(page: usize) -> u32 {
        let mps = page.trailing_zeros().saturating_sub(12);
        EN | (mps << 7) | (6 << 16) | (4 << 20)
    }
}

/// Controller Status (CSTS) fields.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status mask.
    pub const SHST_MASK: u32 = 3 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// The offset of the submission queue tail doorbell of queue `qid`.
pub fn sq_doorbell(qid: u16, stride: usize) -> usize {
    Registers::DOORBELLS + 2 * qid as usize * stride
}

/// The offset of the completion queue head doorbell of queue `qid`.
pub fn cq_doorbell(qid: u16, stride: usize) -> usize {
    Registers::DOORBELLS + (2 * qid as usize + 1) * stride
}
