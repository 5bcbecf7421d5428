//! Commands and completions as the target sees them: the 64-byte SQE's
//! fields, status codes, the 16-byte CQE, and an admin or fabrics
//! command's answer ([`Reply`]).

/// Status code type: generic.
pub const SCT_GENERIC: u8 = 0;
/// Status code type: command specific.
pub const SCT_SPECIFIC: u8 = 1;
/// Status code type: media and data integrity errors.
pub const SCT_MEDIA: u8 = 2;
/// Status code type: path related.
pub const SCT_PATH: u8 = 3;

/// A status: type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status code type.
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do not retry.
    pub dnr: bool,
}

impl Status {
    /// Success.
    pub const OK: Status = Status::generic(0x00, false);
    /// Invalid command opcode.
    pub const INVALID_OPCODE: Status = Status::generic(0x01, true);
    /// Invalid field in command.
    pub const INVALID_FIELD: Status = Status::generic(0x02, true);
    /// Data transfer error.
    pub const DATA_TRANSFER: Status = Status::generic(0x04, false);
    /// Internal error.
    pub const INTERNAL: Status = Status::generic(0x06, false);
    /// Command abort requested.
    pub const ABORTED: Status = Status::generic(0x07, false);
    /// Invalid namespace or format.
    pub const INVALID_NS: Status = Status::generic(0x0B, true);
    /// Command sequence error.
    pub const SEQUENCE: Status = Status::generic(0x0C, true);
    /// Data SGL length invalid.
    pub const SGL_LENGTH: Status = Status::generic(0x0F, true);
    /// SGL descriptor type invalid.
    pub const SGL_TYPE: Status = Status::generic(0x11, true);
    /// Transient transport error (a data digest mismatch).
    pub const TRANSIENT_TRANSPORT: Status = Status::generic(0x22, false);
    /// LBA out of range.
    pub const LBA_RANGE: Status = Status::generic(0x80, true);
    /// Namespace not ready.
    pub const NS_NOT_READY: Status = Status::generic(0x82, false);
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09, true);
    /// Asynchronous event request limit exceeded.
    pub const AER_LIMIT: Status = Status::specific(0x05, true);
    /// Connect: incompatible format.
    pub const CONNECT_FORMAT: Status = Status::specific(0x80, true);
    /// Connect: controller busy.
    pub const CONNECT_BUSY: Status = Status::specific(0x81, true);
    /// Connect: invalid parameters (dword 0: IATTR and IPO).
    pub const CONNECT_INVALID: Status = Status::specific(0x82, true);
    /// Connect: invalid host.
    pub const CONNECT_HOST: Status = Status::specific(0x84, true);
    /// Write to a read-only range.
    pub const READ_ONLY: Status = Status::specific(0x82, true);
    /// Compare failure.
    pub const MISCOMPARE: Status = Status {
        sct: SCT_MEDIA,
        sc: 0x85,
        dnr: true,
    };
    /// Asymmetric access inaccessible.
    pub const ANA_INACCESSIBLE: Status = Status {
        sct: SCT_PATH,
        sc: 0x02,
        dnr: false,
    };

    const fn generic(sc: u8, dnr: bool) -> Status {
        Status {
            sct: SCT_GENERIC,
            sc,
            dnr,
        }
    }

    const fn specific(sc: u8, dnr: bool) -> Status {
        Status {
            sct: SCT_SPECIFIC,
            sc,
            dnr,
        }
    }

    /// The CQE's status half-word (phase bit 0).
    pub fn word(self) -> u16 {
        (u16::from(self.dnr) << 15) | (u16::from(self.sct & 7) << 9) | (u16::from(self.sc) << 1)
    }
}

/// A submission queue entry, read field by field.
#[derive(Clone, Copy)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// Fused and PSDT bits.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Command identifier.
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }

    /// Namespace id.
    pub fn nsid(&self) -> u32 {
        self.dw(1)
    }

    /// Command dword `n` (0 to 15).
    pub fn dw(&self, n: usize) -> u32 {
        let a = n * 4;
        u32::from_le_bytes([self.0[a], self.0[a + 1], self.0[a + 2], self.0[a + 3]])
    }

    /// Bytes 24..40: the SGL descriptor's address.
    pub fn sgl_addr(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[24..32]);
        u64::from_le_bytes(a)
    }

    /// The SGL descriptor's length.
    pub fn sgl_len(&self) -> u32 {
        self.dw(8)
    }

    /// The SGL descriptor's type byte (type << 4 | subtype).
    pub fn sgl_type(&self) -> u8 {
        self.0[39]
    }

    /// Fabrics command type (opcode 0x7F).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
}

/// SGL: data block, offset subtype (in-capsule data).
pub const SGL_INCAPSULE: u8 = 0x01;
/// SGL: transport data block, transport-specific subtype (R2T/C2H).
pub const SGL_TRANSPORT: u8 = 0x5A;

/// How a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlan {
    /// None.
    None,
    /// In the capsule: this many bytes.
    InCapsule(usize),
    /// Through the transport (R2T for host data, C2HData for controller
    /// data): this many bytes.
    Transport(usize),
}

/// The data plan of `sqe` with `incapsule` bytes in its capsule.
///
/// # Errors
/// PRPs where SGLs go, an unknown descriptor type, a length or offset
/// that does not match the capsule.
pub fn data_plan(sqe: &Sqe, incapsule: usize) -> Result<DataPlan, Status> {
    if sqe.flags() >> 6 != 1 {
        return Err(Status::INVALID_FIELD);
    }
    let len = sqe.sgl_len() as usize;
    match sqe.sgl_type() {
        SGL_INCAPSULE => {
            let off = sqe.sgl_addr();
            if off != 0 || len != incapsule {
                return Err(Status::SGL_LENGTH);
            }
            Ok(if len == 0 {
                DataPlan::None
            } else {
                DataPlan::InCapsule(len)
            })
        }
        SGL_TRANSPORT => {
            if incapsule != 0 {
                return Err(Status::SGL_LENGTH);
            }
            Ok(if len == 0 {
                DataPlan::None
            } else {
                DataPlan::Transport(len)
            })
        }
        _ => Err(Status::SGL_TYPE),
    }
}

/// The 16-byte completion.
pub fn cqe(dw0: u32, dw1: u32, sqhd: u16, sqid: u16, cid: u16, status: Status) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0..4].copy_from_slice(&dw0.to_le_bytes());
    c[4..8].copy_from_slice(&dw1.to_le_bytes());
    c[8..10].copy_from_slice(&sqhd.to_le_bytes());
    c[10..12].copy_from_slice(&sqid.to_le_bytes());
    c[12..14].copy_from_slice(&cid.to_le_bytes());
    c[14..16].copy_from_slice(&status.word().to_le_bytes());
    c
}

/// What an admin or fabrics command answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status.
    pub status: Status,
    /// Completion dword 0.
    pub dw0: u32,
    /// Completion dword 1.
    pub dw1: u32,
    /// Data for the host (sent as C2HData before the completion).
    pub data: Vec<u8>,
}

impl Reply {
    /// Success with dword 0.
    pub fn ok(dw0: u32) -> Reply {
        Reply {
            status: Status::OK,
            dw0,
            dw1: 0,
            data: Vec::new(),
        }
    }

    /// Success with data.
    pub fn data(data: Vec<u8>) -> Reply {
        Reply {
            status: Status::OK,
            dw0: 0,
            dw1: 0,
            data,
        }
    }

    /// A failure.
    pub fn err(status: Status) -> Reply {
        Reply {
            status,
            dw0: 0,
            dw1: 0,
            data: Vec::new(),
        }
    }
}

/// Writes `s` into `b` padded with spaces to `b`'s length.
pub fn put_text(b: &mut [u8], s: &str) {
    b.fill(b' ');
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Writes `s` into `b` NUL-terminated (truncated to leave the NUL).
pub fn put_cstr(b: &mut [u8], s: &str) {
    b.fill(0);
    let n = s.len().min(b.len().saturating_sub(1));
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A NUL-terminated string from `b` (None when not valid UTF-8 or not
/// terminated).
pub fn get_cstr(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&b[..end]).ok().map(str::to_owned)
}

/// Little-endian field writers.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// See [`put16`].
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// See [`put16`].
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words() {
        assert_eq!(Status::CONNECT_INVALID.word(), 0x8304);
        assert_eq!(Status::INVALID_FIELD.word(), 0x8004);
        assert_eq!(Status::INVALID_LOG_PAGE.word(), 0x8212);
        assert_eq!(Status::OK.word(), 0);
    }
}
