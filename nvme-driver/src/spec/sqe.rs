//! Submission queue entries.

use std::mem::size_of;

/// A 64-byte submission queue entry (common command format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    /// Opcode (7:0), fused operation (9:8), PSDT (15:14), command id (31:16).
    pub cdw0: u32,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP entry 1.
    pub prp1: u64,
    /// Data pointer: PRP entry 2 (or the PRP list).
    pub prp2: u64,
    /// Command dwords 10 to 15.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

const _: () = assert!(size_of::<Sqe>() == 64);

impl Sqe {
    /// A command with `opcode` for namespace `nsid`; the command id is set at
    /// submission.
    pub fn new(opcode: u8, nsid: u32) -> Self {
        Sqe {
            cdw0: opcode as u32,
            nsid,
            ..Default::default()
        }
    }

    /// The command from its 64 bytes as the specification lays them out
    /// (little endian).
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let d = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let q = |i: usize| d(i) as u64 | (d(i + 1) as u64) << 32;
        Sqe {
            cdw0: d(0),
            nsid: d(1),
            cdw2: d(2),
            cdw3: d(3),
            mptr: q(4),
            prp1: q(6),
            prp2: q(8),
            cdw10: d(10),
            cdw11: d(11),
            cdw12: d(12),
            cdw13: d(13),
            cdw14: d(14),
            cdw15: d(15),
        }
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | ((cid as u32) << 16);
    }

    /// Describes the data as one SGL Data Block descriptor (address,
    /// length, type 0h subtype 0h) in the data pointer, and says so in PSDT
    /// (01b: SGLs, metadata pointer contiguous).
    pub fn set_sgl_data_block(&mut self, addr: u64, len: u32) {
        self.cdw0 = (self.cdw0 & !(0b11 << 14)) | (0b01 << 14);
        self.prp1 = addr;
        // Bytes 8-11 the length, 12-14 reserved, 15 the descriptor type.
        self.prp2 = len as u64;
    }

    /// Whether the data pointer holds SGLs (PSDT not 00b).
    pub fn uses_sgl(&self) -> bool {
        (self.cdw0 >> 14) & 0b11 != 0
    }
}

/// A Dataset Management range (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: u32,
    /// Length in logical blocks.
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(size_of::<DsmRange>() == 16);
