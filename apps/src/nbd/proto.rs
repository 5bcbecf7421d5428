//! The NBD wire protocol (fixed newstyle handshake, simple and structured
//! replies): magic
//! numbers, flags, and pure parsers and encoders for every message the
//! server reads or writes. No I/O here: the fuzz harnesses drive
//! [`parse_request`], [`parse_option_header`] and [`parse_info_request`]
//! directly.

/// `NBDMAGIC`, first word of the handshake.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second word of the handshake, and each option's magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of option replies.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;

/// Transmission flag: the other flags are valid.
pub const TF_HAS_FLAGS: u16 = 1;
/// Transmission flag: read-only export.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: FLUSH is supported.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: FUA is supported.
pub const TF_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: TRIM is supported.
pub const TF_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: WRITE_ZEROES is supported.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: the DF (don't fragment) command flag is honoured.
pub const TF_SEND_DF: u16 = 1 << 7;

/// Option: export name (old style, no reply on failure).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort the handshake.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: TLS (not supported).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe and select an export.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Reply: done.
pub const REP_ACK: u32 = 1;
/// Reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Reply: one information item.
pub const REP_INFO: u32 = 3;
/// Error reply: unsupported option.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Error reply: malformed option.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Error reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Error reply: option data too large.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information item: size and flags.
pub const INFO_EXPORT: u16 = 0;
/// Information item: name.
pub const INFO_NAME: u16 = 1;
/// Information item: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1;
/// Command flag: write zeroes must not punch holes.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: don't fragment a read's reply (structured replies only).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: fast zero (fail if zeroing would be slow).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: the last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Structured reply chunk: nothing (a successful reply without data).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply chunk: an error with a message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// NBD error numbers (the protocol's, same as Linux's).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left (write beyond the end).
    pub const ENOSPC: u32 = 28;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Largest payload of one request (advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option data accepted during the handshake.
pub const MAX_OPTION_DATA: u32 = 64 << 10;

/// A transmission command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read.
    Read,
    /// Write (payload follows).
    Write,
    /// Disconnect.
    Disc,
    /// Flush.
    Flush,
    /// Trim (discard).
    Trim,
    /// Prefetch (not advertised).
    Cache,
    /// Write zeroes.
    WriteZeroes,
    /// Block status (not advertised).
    BlockStatus,
    /// Anything else.
    Unknown(u16),
}

impl Command {
    fn from_u16(v: u16) -> Command {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// The command.
    pub command: Command,
    /// The client's cookie, echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// A message that breaks the protocol: the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A request header with the wrong magic.
    #[error("bad request magic {0:#x}")]
    BadRequestMagic(u32),
    /// An option header with the wrong magic.
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
    /// Option data over [`MAX_OPTION_DATA`].
    #[error("option data of {0} bytes is too large")]
    OptionTooLarge(u32),
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Parses a 28-byte transmission request header.
///
/// # Errors
/// [`ProtoError::BadRequestMagic`].
pub fn parse_request(b: &[u8; 28]) -> Result<Request, ProtoError> {
    let magic = be_u32(&b[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    Ok(Request {
        flags: be_u16(&b[4..6]),
        command: Command::from_u16(be_u16(&b[6..8])),
        handle: be_u64(&b[8..16]),
        offset: be_u64(&b[16..24]),
        length: be_u32(&b[24..28]),
    })
}

/// Encodes a request header (the client side, for tests).
pub fn encode_request(r: &Request) -> [u8; 28] {
    let cmd = match r.command {
        Command::Read => 0,
        Command::Write => 1,
        Command::Disc => 2,
        Command::Flush => 3,
        Command::Trim => 4,
        Command::Cache => 5,
        Command::WriteZeroes => 6,
        Command::BlockStatus => 7,
        Command::Unknown(v) => v,
    };
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&r.handle.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.length.to_be_bytes());
    b
}

/// A simple reply header.
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// The header of a structured reply chunk whose payload is `length`
/// bytes.
pub fn structured_header(flags: u16, ty: u16, handle: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&ty.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// The final chunk of a structured reply that carries `data_len` bytes
/// read at `offset` (the data follows these 28 bytes).
pub fn structured_data_header(handle: u64, offset: u64, data_len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    let h = structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        handle,
        data_len + 8,
    );
    b[..20].copy_from_slice(&h);
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A complete structured error reply (final chunk) with a message.
pub fn structured_error(handle: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut b = Vec::with_capacity(26 + msg.len());
    b.extend_from_slice(&structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        handle,
        6 + msg.len() as u32,
    ));
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// The server's first 18 bytes.
pub fn server_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// An option header: which option, how many data bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub option: u32,
    /// Data bytes that follow.
    pub length: u32,
}

/// Parses a 16-byte option header.
///
/// # Errors
/// [`ProtoError::BadOptionMagic`], [`ProtoError::OptionTooLarge`].
pub fn parse_option_header(b: &[u8; 16]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(&b[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    let h = OptionHeader {
        option: be_u32(&b[8..12]),
        length: be_u32(&b[12..16]),
    };
    if h.length > MAX_OPTION_DATA {
        return Err(ProtoError::OptionTooLarge(h.length));
    }
    Ok(h)
}

/// Parses the data of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the
/// information items asked for. `None` when malformed.
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    if data.len() < 6 {
        return None;
    }
    let name_len = be_u32(&data[0..4]) as usize;
    let rest = &data[4..];
    if name_len > rest.len().saturating_sub(2) {
        return None;
    }
    let name = std::str::from_utf8(&rest[..name_len]).ok()?.to_owned();
    let rest = &rest[name_len..];
    let n = be_u16(&rest[0..2]) as usize;
    let items = &rest[2..];
    if items.len() != n * 2 {
        return None;
    }
    Some((name, items.chunks(2).map(be_u16).collect()))
}

/// An option reply.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_INFO_EXPORT` data.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` data.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// What to do with a request, decided before touching the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Do it: blocks from `offset_blocks`, `num_blocks` of them (0 for
    /// flush, or for an empty request, which succeeds at once).
    Io {
        /// First block.
        offset_blocks: u64,
        /// Block count.
        num_blocks: u64,
    },
    /// Answer with this error (after reading a write's payload).
    Fail(u32),
    /// Close the connection (a write whose payload cannot be read).
    Close,
    /// The client disconnects.
    Disconnect,
}

/// Checks a request against the export: bounds (`size` bytes), alignment
/// to `block_size`, payload size, flags (DF on reads only once structured
/// replies were negotiated).
pub fn plan(r: &Request, size: u64, block_size: u32, trim: bool, structured: bool) -> Plan {
    let bs = block_size as u64;
    let data = matches!(r.command, Command::Read | Command::Write);
    let allowed_flags = match r.command {
        Command::Read if structured => CMD_FLAG_DF,
        Command::Write | Command::Trim => CMD_FLAG_FUA,
        Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        _ => 0,
    };
    match r.command {
        Command::Disc => return Plan::Disconnect,
        Command::Write if r.length > MAX_PAYLOAD => return Plan::Close,
        Command::Read if r.length > MAX_PAYLOAD => return Plan::Fail(errno::EINVAL),
        Command::Cache | Command::BlockStatus | Command::Unknown(_) => {
            return Plan::Fail(errno::EINVAL);
        }
        Command::Trim if !trim => return Plan::Fail(errno::EINVAL),
        Command::Flush => {
            return if r.flags != 0 {
                Plan::Fail(errno::EINVAL)
            } else {
                Plan::Io {
                    offset_blocks: 0,
                    num_blocks: 0,
                }
            };
        }
        _ => {}
    }
    if r.flags & !allowed_flags != 0 {
        return Plan::Fail(errno::EINVAL);
    }
    let Some(end) = r.offset.checked_add(r.length as u64) else {
        return Plan::Fail(errno::EINVAL);
    };
    if end > size {
        let writes = matches!(r.command, Command::Write | Command::WriteZeroes);
        return Plan::Fail(if writes { errno::ENOSPC } else { errno::EINVAL });
    }
    if !r.offset.is_multiple_of(bs) || !(r.length as u64).is_multiple_of(bs) {
        return Plan::Fail(errno::EINVAL);
    }
    debug_assert!(!data || r.length <= MAX_PAYLOAD);
    Plan::Io {
        offset_blocks: r.offset / bs,
        num_blocks: r.length as u64 / bs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_chunks() {
        let d = structured_data_header(7, 4096, 512);
        assert_eq!(&d[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&d[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&d[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&d[8..16], &7u64.to_be_bytes());
        assert_eq!(&d[16..20], &520u32.to_be_bytes());
        assert_eq!(&d[20..28], &4096u64.to_be_bytes());
        let e = structured_error(9, errno::EIO, "I/O error");
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &(6 + 9u32).to_be_bytes());
        assert_eq!(&e[20..24], &errno::EIO.to_be_bytes());
        assert_eq!(&e[24..26], &9u16.to_be_bytes());
        assert_eq!(&e[26..], b"I/O error");
    }

    #[test]
    fn request_round_trip_and_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            handle: 0x1122_3344_5566_7788,
            offset: 4096,
            length: 512,
        };
        assert_eq!(parse_request(&encode_request(&r)), Ok(r));
        let mut b = encode_request(&r);
        b[0] ^= 1;
        assert!(matches!(
            parse_request(&b),
            Err(ProtoError::BadRequestMagic(_))
        ));
    }

    #[test]
    fn info_request_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Some(("abc".into(), vec![INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut bad = d.clone();
        bad[3] = 200;
        assert_eq!(parse_info_request(&bad), None);
        assert_eq!(parse_info_request(&[]), None);
    }

    #[test]
    fn plans() {
        let req = |command, offset, length, flags| Request {
            flags,
            command,
            handle: 1,
            offset,
            length,
        };
        let size = 1 << 20;
        assert_eq!(
            plan(&req(Command::Read, 512, 1024, 0), size, 512, true, false),
            Plan::Io {
                offset_blocks: 1,
                num_blocks: 2
            }
        );
        assert_eq!(
            plan(
                &req(Command::Read, size - 512, 1024, 0),
                size,
                512,
                true,
                false
            ),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(&req(Command::Write, size, 512, 0), size, 512, true, false),
            Plan::Fail(errno::ENOSPC)
        );
        assert_eq!(
            plan(
                &req(Command::Write, u64::MAX, 512, 0),
                size,
                512,
                true,
                false
            ),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(&req(Command::Write, 1, 512, 0), size, 512, true, false),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(
                &req(Command::Write, 0, MAX_PAYLOAD + 1, 0),
                size,
                512,
                true,
                false
            ),
            Plan::Close
        );
        assert_eq!(
            plan(
                &req(Command::Read, 0, 512, CMD_FLAG_FUA),
                size,
                512,
                true,
                false
            ),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(&req(Command::Trim, 0, 512, 0), size, 512, false, false),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(&req(Command::Disc, 0, 0, 0), size, 512, true, false),
            Plan::Disconnect
        );
        // DF on a read: only once structured replies are on.
        assert_eq!(
            plan(
                &req(Command::Read, 0, 512, CMD_FLAG_DF),
                size,
                512,
                true,
                false
            ),
            Plan::Fail(errno::EINVAL)
        );
        assert_eq!(
            plan(
                &req(Command::Read, 0, 512, CMD_FLAG_DF),
                size,
                512,
                true,
                true
            ),
            Plan::Io {
                offset_blocks: 0,
                num_blocks: 1
            }
        );
        assert_eq!(
            plan(
                &req(Command::Write, 0, 512, CMD_FLAG_DF),
                size,
                512,
                true,
                true
            ),
            Plan::Fail(errno::EINVAL)
        );
    }
}
