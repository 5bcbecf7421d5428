//! NVMe/TCP 1.0 PDUs (NVMe over TCP transport specification, section 3):
//! the common header, every PDU's fixed header, digests, and the checks a
//! receiver makes before it trusts a byte. Both ends use it: the target in
//! the appliance and the initiator.
//!
//! A PDU on the wire:
//!
//! ```text
//!  CH (8) | PSH (hlen - 8) | HDGST (4, if on) | PAD (to pdo) | DATA | DDGST (4, if on)
//! ```
//!
//! A receiver reads the common header, asks [`Layout::of`] what follows
//! (that call checks type, direction, lengths, offsets and flags against
//! what the connection negotiated), reads the rest of the header and checks
//! its digest ([`check_header_digest`]), then reads the data. Every
//! refusal is a [`PduError`], which names the field and carries what a
//! termination request needs (its FES and FEI).

use thiserror::Error;

use crate::crc32c;

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Length of ICReq and ICResp (header only, no data, no digests).
pub const IC_LEN: usize = 128;
/// Header length of a command capsule (CH + the 64-byte SQE).
pub const CMD_HLEN: usize = 72;
/// Header length of a response capsule (CH + the 16-byte CQE).
pub const RSP_HLEN: usize = 24;
/// Header length of H2CData, C2HData and R2T.
pub const DATA_HLEN: usize = 24;
/// Header length of H2CTermReq and C2HTermReq.
pub const TERM_HLEN: usize = 24;
/// The most bytes of the offending PDU a termination request carries.
pub const TERM_MAX_DATA: usize = 128;
/// The PDU format version this module speaks (1.0).
pub const PFV_1_0: u16 = 0;
/// The longest header any PDU has (ICReq/ICResp), plus a header digest.
pub const MAX_HEADER: usize = IC_LEN + DIGEST_LEN;

/// Header digest present (HDGSTF).
pub const FLAG_HDGST: u8 = 0x01;
/// Data digest present (DDGSTF).
pub const FLAG_DDGST: u8 = 0x02;
/// Last data PDU of a transfer (H2CData, C2HData).
pub const FLAG_LAST_PDU: u8 = 0x04;
/// C2HData: the command completed successfully; no response capsule
/// follows (only when the host disabled SQ flow control).
pub const FLAG_SUCCESS: u8 = 0x08;

/// ICReq/ICResp DGST bit: header digests enabled.
pub const DGST_HDGST: u8 = 0x01;
/// ICReq/ICResp DGST bit: data digests enabled.
pub const DGST_DDGST: u8 = 0x02;

/// Fatal error status of a termination request (FES).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fes {
    /// Invalid PDU header field (FEI: the field's byte offset).
    InvalidHeaderField = 0x01,
    /// PDU sequence error.
    SequenceError = 0x02,
    /// Header digest error.
    HeaderDigest = 0x03,
    /// Data transfer out of range (FEI: the field's byte offset).
    DataOutOfRange = 0x04,
    /// Data transfer limit exceeded (more R2Ts or data than allowed).
    DataLimitExceeded = 0x05,
    /// Unsupported parameter (FEI: the field's byte offset).
    UnsupportedParameter = 0x06,
}

/// PDU types.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduType {
    /// Initialize connection request (host to controller).
    IcReq = 0x00,
    /// Initialize connection response (controller to host).
    IcResp = 0x01,
    /// Host to controller termination request.
    H2CTermReq = 0x02,
    /// Controller to host termination request.
    C2HTermReq = 0x03,
    /// Command capsule (host to controller).
    CapsuleCmd = 0x04,
    /// Response capsule (controller to host).
    CapsuleResp = 0x05,
    /// Host to controller data.
    H2CData = 0x06,
    /// Controller to host data.
    C2HData = 0x07,
    /// Ready to transfer (controller to host).
    R2T = 0x09,
}

impl PduType {
    /// The type of byte `b`, if it is one.
    pub fn from_byte(b: u8) -> Option<PduType> {
        Some(match b {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// Whether a host sends this type (else a controller does).
    pub fn from_host(self) -> bool {
        matches!(
            self,
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData
        )
    }

    /// The header length the specification fixes for this type.
    pub fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_LEN,
            PduType::CapsuleCmd => CMD_HLEN,
            PduType::CapsuleResp => RSP_HLEN,
            PduType::H2CData | PduType::C2HData | PduType::R2T => DATA_HLEN,
            PduType::H2CTermReq | PduType::C2HTermReq => TERM_HLEN,
        }
    }

    /// Whether digests (when negotiated) apply to this type: not to the
    /// connection set-up and termination PDUs.
    pub fn digests_apply(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }

    /// Whether this type may carry data (for R2T, CapsuleResp: never).
    fn may_carry_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::H2CData
                | PduType::C2HData
                | PduType::H2CTermReq
                | PduType::C2HTermReq
        )
    }
}

/// Why a PDU was refused. Each names the field and maps to the FES and
/// FEI of the termination request that answers it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PduError {
    /// A header field holds a value the specification or the connection
    /// does not allow.
    #[error("invalid PDU header field at byte {offset}: {what}")]
    InvalidField {
        /// Byte offset of the field in the PDU.
        offset: u32,
        /// What was wrong.
        what: String,
    },
    /// The PDU is valid alone but not here (a type this end never
    /// receives, data nobody asked for, a second ICReq).
    #[error("PDU sequence error: {0}")]
    Sequence(String),
    /// The header digest does not match the header.
    #[error("header digest mismatch: PDU says {got:#010x}, header is {computed:#010x}")]
    HeaderDigest {
        /// The digest in the PDU.
        got: u32,
        /// The digest of the header received.
        computed: u32,
    },
    /// Data placed outside what the command or R2T asked for.
    #[error("data out of range at byte {offset}: {what}")]
    OutOfRange {
        /// Byte offset of the field in the PDU.
        offset: u32,
        /// What was wrong.
        what: String,
    },
    /// More data or R2Ts than allowed.
    #[error("data transfer limit exceeded: {0}")]
    LimitExceeded(String),
    /// A parameter this end does not support (PDU format version).
    #[error("unsupported parameter at byte {offset}: {what}")]
    Unsupported {
        /// Byte offset of the field in the PDU.
        offset: u32,
        /// What was not supported.
        what: String,
    },
}

impl PduError {
    /// The termination request's fatal error status.
    pub fn fes(&self) -> Fes {
        match self {
            PduError::InvalidField { .. } => Fes::InvalidHeaderField,
            PduError::Sequence(_) => Fes::SequenceError,
            PduError::HeaderDigest { .. } => Fes::HeaderDigest,
            PduError::OutOfRange { .. } => Fes::DataOutOfRange,
            PduError::LimitExceeded(_) => Fes::DataLimitExceeded,
            PduError::Unsupported { .. } => Fes::UnsupportedParameter,
        }
    }

    /// The termination request's fatal error information: the offending
    /// field's byte offset, where there is one.
    pub fn fei(&self) -> u32 {
        match self {
            PduError::InvalidField { offset, .. }
            | PduError::OutOfRange { offset, .. }
            | PduError::Unsupported { offset, .. } => *offset,
            _ => 0,
        }
    }
}

fn invalid(offset: u32, what: impl Into<String>) -> PduError {
    PduError::InvalidField {
        offset,
        what: what.into(),
    }
}

/// Little-endian reads and writes at fixed offsets (callers check the
/// length first).
pub(crate) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    /// PDU type byte (not yet checked).
    pub pdu_type: u8,
    /// Flags.
    pub flags: u8,
    /// Header length.
    pub hlen: u8,
    /// PDU data offset (0 when there is no data).
    pub pdo: u8,
    /// Total PDU length.
    pub plen: u32,
}

impl CommonHeader {
    /// Reads the first eight bytes of `b`.
    pub fn parse(b: &[u8; CH_LEN]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: get32(b, 4),
        }
    }

    /// Writes it into the first eight bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put32(b, 4, self.plen);
    }
}

/// What one end of a connection accepts, as negotiated (or the defaults
/// before ICReq/ICResp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Header digests on.
    pub hdgst: bool,
    /// Data digests on.
    pub ddgst: bool,
    /// The receiver's required data alignment, 0's based in dwords (for
    /// a controller: the CPDA it sent; for a host: the HPDA).
    pub pda: u8,
    /// The most data one PDU may carry to this end (in-capsule data for a
    /// command, MAXH2CDATA for H2CData, the host's buffer for C2HData).
    pub max_data: u32,
    /// True at a controller (host PDUs are expected), false at a host.
    pub controller: bool,
}

/// Where the parts of a checked PDU are, from its common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The type.
    pub pdu_type: PduType,
    /// The flags.
    pub flags: u8,
    /// Header length (without the digest).
    pub hlen: usize,
    /// A header digest follows the header.
    pub hdgst: bool,
    /// Where the data starts (0: none).
    pub data_off: usize,
    /// Data bytes.
    pub data_len: usize,
    /// A data digest follows the data.
    pub ddgst: bool,
    /// Total length (plen).
    pub total: usize,
}

impl Layout {
    /// Header bytes to read after the common header, with the digest.
    pub fn rest_of_header(&self) -> usize {
        self.hlen - CH_LEN + if self.hdgst { DIGEST_LEN } else { 0 }
    }

    /// Padding bytes between the header (and its digest) and the data.
    pub fn padding(&self) -> usize {
        if self.data_len == 0 {
            0
        } else {
            self.data_off - self.hlen - if self.hdgst { DIGEST_LEN } else { 0 }
        }
    }

    /// Checks common header `ch` as received by the end whose limits are
    /// `lim`, and says where the rest of the PDU lies.
    ///
    /// # Errors
    /// [`PduError`] naming the field: an unknown type, a type this end
    /// never receives, a header length other than the type's, digest
    /// flags other than negotiated, a data offset inside the header or
    /// misaligned, a total length that does not add up, more data than
    /// `lim.max_data` (or data where the type has none).
    pub fn of(ch: &CommonHeader, lim: &Limits) -> Result<Layout, PduError> {
        let Some(t) = PduType::from_byte(ch.pdu_type) else {
            return Err(invalid(0, format!("unknown PDU type {:#04x}", ch.pdu_type)));
        };
        if t.from_host() != lim.controller {
            return Err(PduError::Sequence(format!(
                "{t:?} is never sent to a {}",
                if lim.controller { "controller" } else { "host" }
            )));
        }
        let hlen = t.hlen();
        if usize::from(ch.hlen) != hlen {
            return Err(invalid(
                2,
                format!("HLEN {} for {t:?} (must be {hlen})", ch.hlen),
            ));
        }
        let plen = ch.plen as usize;
        let (hdgst, ddgst_on) = if t.digests_apply() {
            (lim.hdgst, lim.ddgst)
        } else {
            (false, false)
        };
        let allowed = FLAG_HDGST
            | FLAG_DDGST
            | match t {
                PduType::H2CData => FLAG_LAST_PDU,
                PduType::C2HData => FLAG_LAST_PDU | FLAG_SUCCESS,
                _ => 0,
            };
        if ch.flags & !allowed != 0 {
            return Err(invalid(
                1,
                format!("flags {:#04x} not defined for {t:?}", ch.flags),
            ));
        }
        if (ch.flags & FLAG_HDGST != 0) != hdgst {
            return Err(invalid(
                1,
                format!(
                    "HDGSTF {} but header digests are {}",
                    if ch.flags & FLAG_HDGST != 0 {
                        "set"
                    } else {
                        "clear"
                    },
                    if hdgst { "on" } else { "off" }
                ),
            ));
        }
        let head = hlen + if hdgst { DIGEST_LEN } else { 0 };
        if plen < head {
            return Err(invalid(
                4,
                format!("PLEN {plen} shorter than the header ({head})"),
            ));
        }
        let mut l = Layout {
            pdu_type: t,
            flags: ch.flags,
            hlen,
            hdgst,
            data_off: 0,
            data_len: 0,
            ddgst: false,
            total: plen,
        };
        if matches!(t, PduType::H2CTermReq | PduType::C2HTermReq) {
            // Data (the offending header) right after the header; no
            // digests, no PDO.
            if plen > head + TERM_MAX_DATA {
                return Err(invalid(
                    4,
                    format!(
                        "PLEN {plen} of a termination request over {}",
                        head + TERM_MAX_DATA
                    ),
                ));
            }
            l.data_off = if plen > head { head } else { 0 };
            l.data_len = plen - head;
            return Ok(l);
        }
        if plen == head {
            if ch.pdo != 0 {
                return Err(invalid(3, format!("PDO {} with no data", ch.pdo)));
            }
            if ch.flags & FLAG_DDGST != 0 {
                return Err(invalid(1, "DDGSTF set with no data"));
            }
            if matches!(t, PduType::H2CData | PduType::C2HData) {
                return Err(invalid(4, format!("{t:?} with no data")));
            }
            return Ok(l);
        }
        if !t.may_carry_data() || matches!(t, PduType::IcReq | PduType::IcResp) {
            return Err(invalid(
                4,
                format!("PLEN {plen} for {t:?} (must be {head})"),
            ));
        }
        let pdo = usize::from(ch.pdo);
        let align = (usize::from(lim.pda) + 1) * 4;
        if pdo < head || pdo % align != 0 {
            return Err(invalid(
                3,
                format!("PDO {pdo} (header ends at {head}, data aligned to {align})"),
            ));
        }
        if (ch.flags & FLAG_DDGST != 0) != ddgst_on {
            return Err(invalid(
                1,
                format!(
                    "DDGSTF {} but data digests are {}",
                    if ch.flags & FLAG_DDGST != 0 {
                        "set"
                    } else {
                        "clear"
                    },
                    if ddgst_on { "on" } else { "off" }
                ),
            ));
        }
        let tail = if ddgst_on { DIGEST_LEN } else { 0 };
        if plen < pdo + tail + 1 {
            return Err(invalid(
                4,
                format!("PLEN {plen} leaves no data after PDO {pdo}"),
            ));
        }
        let data_len = plen - pdo - tail;
        if data_len > lim.max_data as usize {
            return Err(PduError::LimitExceeded(format!(
                "{data_len} data bytes in one {t:?} (at most {})",
                lim.max_data
            )));
        }
        l.data_off = pdo;
        l.data_len = data_len;
        l.ddgst = ddgst_on;
        Ok(l)
    }
}

/// The header digest of `header` (its first `hlen` bytes).
pub fn header_digest(header: &[u8]) -> u32 {
    crc32c::checksum(header)
}

/// Checks the header digest stored right after the header in `buf`
/// (`hlen` header bytes, then 4 digest bytes).
///
/// # Errors
/// [`PduError::HeaderDigest`] on a mismatch; [`PduError::InvalidField`]
/// (PLEN) when `buf` is too short to hold the header and its digest.
pub fn check_header_digest(buf: &[u8], hlen: usize) -> Result<(), PduError> {
    if buf.len() < hlen + DIGEST_LEN {
        return Err(invalid(
            4,
            format!(
                "{} bytes cannot hold a {hlen}-byte header and its digest",
                buf.len()
            ),
        ));
    }
    let computed = header_digest(&buf[..hlen]);
    let got = get32(buf, hlen);
    if got != computed {
        return Err(PduError::HeaderDigest { got, computed });
    }
    Ok(())
}

/// ICReq: what the host asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version.
    pub pfv: u16,
    /// Host PDU data alignment (0's based, dwords).
    pub hpda: u8,
    /// Header digests asked for.
    pub hdgst: bool,
    /// Data digests asked for.
    pub ddgst: bool,
    /// Most R2Ts outstanding per command (0's based).
    pub maxr2t: u32,
}

impl IcReq {
    /// Reads a whole 128-byte ICReq (common header already checked).
    ///
    /// # Errors
    /// An unsupported version (FEI 8), an HPDA over 31 (FEI 10), unknown
    /// digest bits (FEI 11).
    pub fn parse(b: &[u8; IC_LEN]) -> Result<IcReq, PduError> {
        let pfv = get16(b, 8);
        if pfv != PFV_1_0 {
            return Err(PduError::Unsupported {
                offset: 8,
                what: format!("PDU format version {pfv}"),
            });
        }
        let hpda = b[10];
        if hpda > 31 {
            return Err(invalid(10, format!("HPDA {hpda} (at most 31)")));
        }
        let dgst = b[11];
        if dgst & !(DGST_HDGST | DGST_DDGST) != 0 {
            return Err(invalid(11, format!("DGST {dgst:#04x}")));
        }
        Ok(IcReq {
            pfv,
            hpda,
            hdgst: dgst & DGST_HDGST != 0,
            ddgst: dgst & DGST_DDGST != 0,
            maxr2t: get32(b, 12),
        })
    }

    /// The 128-byte PDU.
    pub fn encode(&self) -> [u8; IC_LEN] {
        let mut b = [0u8; IC_LEN];
        ch(PduType::IcReq, 0, IC_LEN, 0, IC_LEN).write(&mut b);
        put16(&mut b, 8, self.pfv);
        b[10] = self.hpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put32(&mut b, 12, self.maxr2t);
        b
    }
}

/// ICResp: what the controller grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version.
    pub pfv: u16,
    /// Controller PDU data alignment (0's based, dwords).
    pub cpda: u8,
    /// Header digests on.
    pub hdgst: bool,
    /// Data digests on.
    pub ddgst: bool,
    /// The most data one H2CData PDU may carry (a multiple of 4, at least
    /// 4096).
    pub maxh2cdata: u32,
}

impl IcResp {
    /// Reads a whole 128-byte ICResp (common header already checked).
    ///
    /// # Errors
    /// An unsupported version, unknown digest bits, a MAXH2CDATA under
    /// 4096 or not a multiple of 4.
    pub fn parse(b: &[u8; IC_LEN]) -> Result<IcResp, PduError> {
        let pfv = get16(b, 8);
        if pfv != PFV_1_0 {
            return Err(PduError::Unsupported {
                offset: 8,
                what: format!("PDU format version {pfv}"),
            });
        }
        let dgst = b[11];
        if dgst & !(DGST_HDGST | DGST_DDGST) != 0 {
            return Err(invalid(11, format!("DGST {dgst:#04x}")));
        }
        let maxh2cdata = get32(b, 12);
        if maxh2cdata < 4096 || !maxh2cdata.is_multiple_of(4) {
            return Err(invalid(12, format!("MAXH2CDATA {maxh2cdata}")));
        }
        Ok(IcResp {
            pfv,
            cpda: b[10],
            hdgst: dgst & DGST_HDGST != 0,
            ddgst: dgst & DGST_DDGST != 0,
            maxh2cdata,
        })
    }

    /// The 128-byte PDU.
    pub fn encode(&self) -> [u8; IC_LEN] {
        let mut b = [0u8; IC_LEN];
        ch(PduType::IcResp, 0, IC_LEN, 0, IC_LEN).write(&mut b);
        put16(&mut b, 8, self.pfv);
        b[10] = self.cpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put32(&mut b, 12, self.maxh2cdata);
        b
    }
}

fn dgst_byte(h: bool, d: bool) -> u8 {
    (if h { DGST_HDGST } else { 0 }) | if d { DGST_DDGST } else { 0 }
}

fn ch(t: PduType, flags: u8, hlen: usize, pdo: usize, plen: usize) -> CommonHeader {
    CommonHeader {
        pdu_type: t as u8,
        flags,
        hlen: hlen as u8,
        pdo: pdo as u8,
        plen: plen as u32,
    }
}

/// The fields of H2CData, C2HData and R2T headers (for R2T `offset` and
/// `length` are R2TO and R2TL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// The command's capsule command id.
    pub cccid: u16,
    /// Transfer tag (from the R2T; 0 in C2HData).
    pub ttag: u16,
    /// Offset of this data in the command's data.
    pub offset: u32,
    /// Bytes of data.
    pub length: u32,
}

impl DataHeader {
    /// Reads the fields from a 24-byte data or R2T header.
    pub fn parse(b: &[u8]) -> DataHeader {
        DataHeader {
            cccid: get16(b, 8),
            ttag: get16(b, 10),
            offset: get32(b, 12),
            length: get32(b, 16),
        }
    }

    fn write(&self, b: &mut [u8]) {
        put16(b, 8, self.cccid);
        put16(b, 10, self.ttag);
        put32(b, 12, self.offset);
        put32(b, 16, self.length);
    }
}

/// Writes a header of `hlen` bytes plus its digest (when on) to the start
/// of `out`, returns the bytes written.
fn seal(out: &mut [u8], hlen: usize, hdgst: bool) -> usize {
    if hdgst {
        let d = header_digest(&out[..hlen]);
        put32(out, hlen, d);
        hlen + DIGEST_LEN
    } else {
        hlen
    }
}

/// Builds the header of a data-carrying PDU (H2CData or C2HData) into
/// `out` (at least 28 bytes): its common header with PLEN counting the
/// data and its digest, and the header digest. Returns the header bytes
/// written; the data follows at once (PDO = the header's end: alignment 0).
pub fn data_pdu_header(
    out: &mut [u8],
    t: PduType,
    h: &DataHeader,
    flags: u8,
    hdgst: bool,
    ddgst: bool,
) -> usize {
    let head = DATA_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    let f = flags | if hdgst { FLAG_HDGST } else { 0 } | if ddgst { FLAG_DDGST } else { 0 };
    let plen = head + h.length as usize + if ddgst { DIGEST_LEN } else { 0 };
    out[..DATA_HLEN].fill(0);
    ch(t, f, DATA_HLEN, head, plen).write(out);
    h.write(out);
    seal(out, DATA_HLEN, hdgst)
}

/// Builds an R2T into `out` (at least 28 bytes); returns its length.
pub fn r2t(out: &mut [u8], h: &DataHeader, hdgst: bool) -> usize {
    let head = DATA_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    out[..DATA_HLEN].fill(0);
    ch(
        PduType::R2T,
        if hdgst { FLAG_HDGST } else { 0 },
        DATA_HLEN,
        0,
        head,
    )
    .write(out);
    h.write(out);
    seal(out, DATA_HLEN, hdgst)
}

/// Builds a response capsule carrying `cqe` into `out` (at least 28
/// bytes); returns its length.
pub fn capsule_resp(out: &mut [u8], cqe: &[u8; 16], hdgst: bool) -> usize {
    let head = RSP_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    ch(
        PduType::CapsuleResp,
        if hdgst { FLAG_HDGST } else { 0 },
        RSP_HLEN,
        0,
        head,
    )
    .write(out);
    out[8..24].copy_from_slice(cqe);
    seal(out, RSP_HLEN, hdgst)
}

/// Builds a command capsule for `sqe` with `data_len` bytes of in-capsule
/// data to follow (and its digest) into `out` (at least 76 bytes); returns
/// the header bytes written. The data starts right after them.
pub fn capsule_cmd(
    out: &mut [u8],
    sqe: &[u8; 64],
    data_len: usize,
    hdgst: bool,
    ddgst: bool,
) -> usize {
    let head = CMD_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    let with_data = data_len > 0;
    let f = if hdgst { FLAG_HDGST } else { 0 } | if ddgst && with_data { FLAG_DDGST } else { 0 };
    let plen = head + data_len + if ddgst && with_data { DIGEST_LEN } else { 0 };
    ch(
        PduType::CapsuleCmd,
        f,
        CMD_HLEN,
        if with_data { head } else { 0 },
        plen,
    )
    .write(out);
    out[8..72].copy_from_slice(sqe);
    seal(out, CMD_HLEN, hdgst)
}

/// Builds a termination request of type `t` (H2C or C2H) into `out` (at
/// least 152 bytes), carrying up to 128 bytes of the offending PDU's
/// header; returns its length.
pub fn term_req(out: &mut [u8], t: PduType, fes: Fes, fei: u32, offending: &[u8]) -> usize {
    let data = &offending[..offending.len().min(TERM_MAX_DATA)];
    let plen = TERM_HLEN + data.len();
    out[..TERM_HLEN].fill(0);
    ch(
        t,
        0,
        TERM_HLEN,
        if data.is_empty() { 0 } else { TERM_HLEN },
        plen,
    )
    .write(out);
    put16(out, 8, fes as u16);
    put32(out, 10, fei);
    out[TERM_HLEN..plen].copy_from_slice(data);
    plen
}

/// The termination request's FES and FEI, from its 24-byte header.
pub fn parse_term_req(b: &[u8]) -> (u16, u32) {
    (get16(b, 8), get32(b, 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrl(hd: bool, dd: bool) -> Limits {
        Limits {
            hdgst: hd,
            ddgst: dd,
            pda: 0,
            max_data: 8192,
            controller: true,
        }
    }

    #[test]
    fn capsule_with_data_and_digests() {
        let sqe = [7u8; 64];
        let mut b = [0u8; 96];
        let n = capsule_cmd(&mut b, &sqe, 512, true, true);
        assert_eq!(n, 76);
        let h = CommonHeader::parse(b[..8].try_into().unwrap());
        let l = Layout::of(&h, &ctrl(true, true)).unwrap();
        assert_eq!((l.data_off, l.data_len, l.total), (76, 512, 76 + 512 + 4));
        assert!(l.hdgst && l.ddgst);
        assert_eq!(l.padding(), 0);
        assert_eq!(l.rest_of_header(), 64 + 4);
        check_header_digest(&b, CMD_HLEN).unwrap();
        b[20] ^= 1;
        assert!(matches!(
            check_header_digest(&b, CMD_HLEN),
            Err(PduError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn digests_must_match_negotiation() {
        let mut b = [0u8; 96];
        capsule_cmd(&mut b, &[0; 64], 0, true, false);
        let h = CommonHeader::parse(b[..8].try_into().unwrap());
        let e = Layout::of(&h, &ctrl(false, false)).unwrap_err();
        assert_eq!((e.fes(), e.fei()), (Fes::InvalidHeaderField, 1));
    }

    #[test]
    fn refusals_name_the_field() {
        let lim = ctrl(false, false);
        let cases: [(CommonHeader, Fes, u32); 7] = [
            (ch_raw(0x42, 0, 24, 0, 24), Fes::InvalidHeaderField, 0),
            (ch_raw(4, 0, 24, 0, 72), Fes::InvalidHeaderField, 2),
            (ch_raw(4, 0, 72, 0, 60), Fes::InvalidHeaderField, 4),
            (ch_raw(4, 0, 72, 70, 100), Fes::InvalidHeaderField, 3),
            (ch_raw(4, 0, 72, 74, 100), Fes::InvalidHeaderField, 3),
            (ch_raw(4, 0, 72, 72, 72 + 8193), Fes::DataLimitExceeded, 0),
            (ch_raw(5, 0, 24, 0, 24), Fes::SequenceError, 0),
        ];
        for (h, fes, fei) in cases {
            let e = Layout::of(&h, &lim).unwrap_err();
            assert_eq!((e.fes(), e.fei()), (fes, fei), "{h:?}: {e}");
        }
        // H2CData without data, R2T flags on H2C data.
        assert!(Layout::of(&ch_raw(6, 0, 24, 0, 24), &lim).is_err());
        assert!(Layout::of(&ch_raw(6, FLAG_SUCCESS, 24, 24, 28), &lim).is_err());
        assert!(Layout::of(&ch_raw(6, FLAG_LAST_PDU, 24, 24, 28), &lim).is_ok());
    }

    fn ch_raw(t: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader {
            pdu_type: t,
            flags,
            hlen,
            pdo,
            plen,
        }
    }

    #[test]
    fn ic_round_trip_and_checks() {
        let r = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: false,
            maxr2t: 0,
        };
        let b = r.encode();
        let h = CommonHeader::parse(b[..8].try_into().unwrap());
        let l = Layout::of(&h, &ctrl(false, false)).unwrap();
        assert_eq!((l.total, l.data_len, l.hdgst), (128, 0, false));
        assert_eq!(IcReq::parse(&b).unwrap(), r);
        let mut bad = b;
        bad[8] = 1;
        assert_eq!(
            IcReq::parse(&bad).unwrap_err().fes(),
            Fes::UnsupportedParameter
        );
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: true,
            ddgst: true,
            maxh2cdata: 131072,
        };
        assert_eq!(IcResp::parse(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn data_pdus() {
        let mut b = [0u8; 32];
        let h = DataHeader {
            cccid: 9,
            ttag: 3,
            offset: 4096,
            length: 8192,
        };
        let n = data_pdu_header(&mut b, PduType::C2HData, &h, FLAG_LAST_PDU, true, true);
        assert_eq!(n, 28);
        let c = CommonHeader::parse(b[..8].try_into().unwrap());
        let host = Limits {
            controller: false,
            max_data: 1 << 20,
            ..ctrl(true, true)
        };
        let l = Layout::of(&c, &host).unwrap();
        assert_eq!((l.data_off, l.data_len, l.total), (28, 8192, 28 + 8192 + 4));
        assert_eq!(DataHeader::parse(&b), h);
        let n = r2t(&mut b, &h, true);
        assert_eq!(n, 28);
        let c = CommonHeader::parse(b[..8].try_into().unwrap());
        let l = Layout::of(&c, &host).unwrap();
        assert_eq!((l.data_len, l.total), (0, 28));
        check_header_digest(&b, DATA_HLEN).unwrap();
        // Without the digest the host refuses it: HDGSTF must match.
        r2t(&mut b, &h, false);
        let c = CommonHeader::parse(b[..8].try_into().unwrap());
        assert_eq!(Layout::of(&c, &host).unwrap_err().fei(), 1);
    }

    #[test]
    fn term_req_carries_the_offender() {
        let mut out = [0u8; 160];
        let n = term_req(
            &mut out,
            PduType::C2HTermReq,
            Fes::HeaderDigest,
            0,
            &[0xAB; 200],
        );
        assert_eq!(n, 24 + 128);
        let c = CommonHeader::parse(out[..8].try_into().unwrap());
        let host = Limits {
            controller: false,
            ..ctrl(true, true)
        };
        let l = Layout::of(&c, &host).unwrap();
        assert_eq!((l.data_len, l.hdgst, l.ddgst), (128, false, false));
        assert_eq!(parse_term_req(&out), (Fes::HeaderDigest as u16, 0));
    }
}
