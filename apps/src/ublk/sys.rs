//! The kernel's ublk interface (`include/uapi/linux/ublk_cmd.h`), written
//! out here: command numbers in their ioctl encoding, feature flags, and
//! the structures exchanged with `/dev/ublk-control` and `/dev/ublkcN`,
//! encoded to and decoded from bytes (little-endian, as the kernel lays
//! them out on x86-64) so no structure is ever transmuted.

/// The control device.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Encodes an ioctl number as `_IOC(dir, 'u', nr, size)`.
const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((b'u' as u32) << 8) | nr
}
const IOC_READ: u32 = 2;
const IOC_RW: u32 = 3;

/// The size of `struct ublksrv_ctrl_cmd`.
pub const CTRL_CMD_LEN: usize = 32;
/// The size of `struct ublksrv_io_cmd`.
pub const IO_CMD_LEN: usize = 16;
/// The size of `struct ublksrv_ctrl_dev_info`.
pub const DEV_INFO_LEN: usize = 64;
/// The size of `struct ublksrv_io_desc`.
pub const IO_DESC_LEN: usize = 24;

/// Control commands (`UBLK_U_CMD_*`).
pub mod cmd {
    use super::{CTRL_CMD_LEN, IOC_READ, IOC_RW, ioc};
    const S: u32 = CTRL_CMD_LEN as u32;
    /// Reads a device's `ublksrv_ctrl_dev_info`.
    pub const GET_DEV_INFO: u32 = ioc(IOC_READ, 0x02, S);
    /// Adds a device (its char device `/dev/ublkcN` appears).
    pub const ADD_DEV: u32 = ioc(IOC_RW, 0x04, S);
    /// Deletes a device (waits until its char device is closed).
    pub const DEL_DEV: u32 = ioc(IOC_RW, 0x05, S);
    /// Deletes a device without waiting for its last user (Linux 6.9+).
    pub const DEL_DEV_ASYNC: u32 = ioc(IOC_READ, 0x14, S);
    /// Starts a device (`/dev/ublkbN` appears) once every queue fetched.
    pub const START_DEV: u32 = ioc(IOC_RW, 0x06, S);
    /// Stops a device (`/dev/ublkbN` goes away).
    pub const STOP_DEV: u32 = ioc(IOC_RW, 0x07, S);
    /// Sets a device's parameters (before it starts).
    pub const SET_PARAMS: u32 = ioc(IOC_RW, 0x08, S);
    /// Reads a device's parameters.
    pub const GET_PARAMS: u32 = ioc(IOC_READ, 0x09, S);
    /// Begins taking over a device whose server died.
    pub const START_USER_RECOVERY: u32 = ioc(IOC_RW, 0x10, S);
    /// Ends the take-over once every queue fetched again.
    pub const END_USER_RECOVERY: u32 = ioc(IOC_RW, 0x11, S);
    /// The driver's feature flags (a u64 at `addr`; the ioctl size is the
    /// command's, as for the others).
    pub const GET_FEATURES: u32 = ioc(IOC_READ, 0x13, S);
}

/// I/O commands on `/dev/ublkcN` (`UBLK_U_IO_*`).
pub mod io_cmd {
    use super::{IO_CMD_LEN, IOC_RW, ioc};
    const S: u32 = IO_CMD_LEN as u32;
    /// Hands a tag to the driver: complete me with the next request.
    pub const FETCH_REQ: u32 = ioc(IOC_RW, 0x20, S);
    /// Completes a tag's request and hands the tag back.
    pub const COMMIT_AND_FETCH_REQ: u32 = ioc(IOC_RW, 0x21, S);
    /// Gives a write's buffer: the driver copies the data in, then completes.
    pub const NEED_GET_DATA: u32 = ioc(IOC_RW, 0x22, S);
}

/// A fetch completed with a request to serve.
pub const IO_RES_OK: i32 = 0;
/// A fetch completed with a write that needs its buffer first.
pub const IO_RES_NEED_GET_DATA: i32 = 1;
/// The queue is going away: the tag will not come back.
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

/// Device flags (`UBLK_F_*`).
pub mod flags {
    /// Requests' pages mapped for zero-copy (not served here).
    pub const SUPPORT_ZERO_COPY: u64 = 1 << 0;
    /// Writes arrive without data; the server gives the buffer then.
    pub const NEED_GET_DATA: u64 = 1 << 2;
    /// The device outlives its server and can be taken over.
    pub const USER_RECOVERY: u64 = 1 << 3;
    /// Requests the dead server held are reissued to the new one.
    pub const USER_RECOVERY_REISSUE: u64 = 1 << 4;
    /// Commands are ioctl-encoded.
    pub const CMD_IOCTL_ENCODE: u64 = 1 << 6;
    /// Data copied through the char device (not served here).
    pub const USER_COPY: u64 = 1 << 7;
}

/// Device states (`UBLK_S_DEV_*`).
pub mod state {
    /// Not started, or stopped.
    pub const DEAD: u16 = 0;
    /// Serving.
    pub const LIVE: u16 = 1;
    /// Its server died; requests wait for a new one.
    pub const QUIESCED: u16 = 2;
}

/// Request operations (`UBLK_IO_OP_*`, the low byte of `op_flags`).
pub mod op {
    /// Read.
    pub const READ: u8 = 0;
    /// Write.
    pub const WRITE: u8 = 1;
    /// Flush the volatile cache.
    pub const FLUSH: u8 = 2;
    /// Discard (trim).
    pub const DISCARD: u8 = 3;
    /// Write zeroes.
    pub const WRITE_ZEROES: u8 = 5;
}
/// Force Unit Access (`UBLK_IO_F_FUA`).
pub const IO_F_FUA: u32 = 1 << 13;

/// Attributes of `ublk_param_basic`.
pub mod attr {
    /// The device has a volatile write cache (flushes mean something).
    pub const VOLATILE_CACHE: u32 = 1 << 2;
    /// The device honours FUA.
    pub const FUA: u32 = 1 << 3;
}
/// Parameter types.
pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
/// Discard parameters present.
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;

/// Where the I/O descriptors of queue 0 are mapped in `/dev/ublkcN`.
pub const CMD_BUF_OFFSET: i64 = 0;
/// The most tags a queue may have (`UBLK_MAX_QUEUE_DEPTH`).
pub const MAX_QUEUE_DEPTH: u32 = 4096;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// `struct ublksrv_ctrl_cmd`: the payload of a control command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlCmd {
    /// The device.
    pub dev_id: u32,
    /// The queue (affinity queries only).
    pub queue_id: u16,
    /// The length of the buffer at `addr`.
    pub len: u16,
    /// A user buffer (device info, parameters).
    pub addr: u64,
    /// The command's argument (the server's pid for START_DEV and
    /// END_USER_RECOVERY).
    pub data0: u64,
}

impl CtrlCmd {
    /// Its bytes, as the first 32 of the SQE's 80-byte command area.
    pub fn encode(&self) -> [u8; 80] {
        let mut b = [0u8; 80];
        put32(&mut b, 0, self.dev_id);
        put16(&mut b, 4, self.queue_id);
        put16(&mut b, 6, self.len);
        put64(&mut b, 8, self.addr);
        put64(&mut b, 16, self.data0);
        b
    }
}

/// `struct ublksrv_io_cmd`: the payload of an I/O command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCmd {
    /// The queue.
    pub q_id: u16,
    /// The tag.
    pub tag: u16,
    /// The request's result (bytes, or a negative errno) for a commit.
    pub result: i32,
    /// The data buffer.
    pub addr: u64,
}

impl IoCmd {
    /// Its bytes, the SQE's 16-byte command area.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put16(&mut b, 0, self.q_id);
        put16(&mut b, 2, self.tag);
        put32(&mut b, 4, self.result as u32);
        put64(&mut b, 8, self.addr);
        b
    }
}

/// `struct ublksrv_ctrl_dev_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevInfo {
    /// Queues.
    pub nr_hw_queues: u16,
    /// Tags per queue.
    pub queue_depth: u16,
    /// `state::*`.
    pub state: u16,
    /// The largest request in bytes.
    pub max_io_buf_bytes: u32,
    /// The device number (N of `/dev/ublkbN`); `u32::MAX` asks the driver
    /// to pick one.
    pub dev_id: u32,
    /// The serving process.
    pub ublksrv_pid: i32,
    /// `flags::*`.
    pub flags: u64,
}

impl DevInfo {
    /// Its 64 bytes.
    pub fn encode(&self) -> [u8; DEV_INFO_LEN] {
        let mut b = [0u8; DEV_INFO_LEN];
        put16(&mut b, 0, self.nr_hw_queues);
        put16(&mut b, 2, self.queue_depth);
        put16(&mut b, 4, self.state);
        put32(&mut b, 8, self.max_io_buf_bytes);
        put32(&mut b, 12, self.dev_id);
        put32(&mut b, 16, self.ublksrv_pid as u32);
        put64(&mut b, 24, self.flags);
        b
    }

    /// From the driver's 64 bytes.
    pub fn decode(b: &[u8; DEV_INFO_LEN]) -> DevInfo {
        DevInfo {
            nr_hw_queues: get16(b, 0),
            queue_depth: get16(b, 2),
            state: get16(b, 4),
            max_io_buf_bytes: get32(b, 8),
            dev_id: get32(b, 12),
            ublksrv_pid: get32(b, 16) as i32,
            flags: get64(b, 24),
        }
    }
}

/// The parts of `struct ublk_params` this server sets: basic and discard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `attr::*`.
    pub attrs: u32,
    /// log2 of the logical block size.
    pub logical_bs_shift: u8,
    /// log2 of the physical block size.
    pub physical_bs_shift: u8,
    /// log2 of the optimal I/O size.
    pub io_opt_shift: u8,
    /// log2 of the minimal I/O size.
    pub io_min_shift: u8,
    /// The largest request in 512-byte sectors.
    pub max_sectors: u32,
    /// The size in 512-byte sectors.
    pub dev_sectors: u64,
    /// Discard: granularity in bytes (0: no discard parameters).
    pub discard_granularity: u32,
    /// Discard: the largest discard in sectors.
    pub max_discard_sectors: u32,
    /// The largest write-zeroes in sectors.
    pub max_write_zeroes_sectors: u32,
}

/// The length of `struct ublk_params` up to and including the discard
/// parameters: header (8), basic (32), discard (20).
pub const PARAMS_LEN: usize = 60;

impl Params {
    /// Its bytes (with the header's length and types).
    pub fn encode(&self) -> [u8; PARAMS_LEN] {
        let mut b = [0u8; PARAMS_LEN];
        let mut types = PARAM_TYPE_BASIC;
        if self.discard_granularity != 0 {
            types |= PARAM_TYPE_DISCARD;
        }
        put32(&mut b, 0, PARAMS_LEN as u32);
        put32(&mut b, 4, types);
        put32(&mut b, 8, self.attrs);
        b[12] = self.logical_bs_shift;
        b[13] = self.physical_bs_shift;
        b[14] = self.io_opt_shift;
        b[15] = self.io_min_shift;
        put32(&mut b, 16, self.max_sectors);
        // chunk_sectors (20) stays 0.
        put64(&mut b, 24, self.dev_sectors);
        // virt_boundary_mask (32) stays 0.
        if self.discard_granularity != 0 {
            // discard_alignment (40) stays 0.
            put32(&mut b, 44, self.discard_granularity);
            put32(&mut b, 48, self.max_discard_sectors);
            put32(&mut b, 52, self.max_write_zeroes_sectors);
            put16(&mut b, 56, 1); // max_discard_segments
        }
        b
    }

    /// The basic parameters read back (`GET_PARAMS`).
    pub fn decode(b: &[u8; PARAMS_LEN]) -> Params {
        Params {
            attrs: get32(b, 8),
            logical_bs_shift: b[12],
            physical_bs_shift: b[13],
            io_opt_shift: b[14],
            io_min_shift: b[15],
            max_sectors: get32(b, 16),
            dev_sectors: get64(b, 24),
            discard_granularity: get32(b, 44),
            max_discard_sectors: get32(b, 48),
            max_write_zeroes_sectors: get32(b, 52),
        }
    }
}

/// `struct ublksrv_io_desc`: a request as the driver describes it in the
/// queue's shared, read-only descriptor array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoDesc {
    /// Operation (low byte) and flags.
    pub op_flags: u32,
    /// Length in 512-byte sectors.
    pub nr_sectors: u32,
    /// Start in 512-byte sectors.
    pub start_sector: u64,
}

impl IoDesc {
    /// From its 24 bytes.
    pub fn decode(b: &[u8; IO_DESC_LEN]) -> IoDesc {
        IoDesc {
            op_flags: get32(b, 0),
            nr_sectors: get32(b, 4),
            start_sector: get64(b, 8),
        }
    }

    /// The operation.
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
}

/// The byte length of a queue's descriptor array mapping for `depth` tags
/// (rounded up to pages, as the driver checks).
pub fn desc_map_len(depth: u16, page: usize) -> usize {
    (usize::from(depth) * IO_DESC_LEN).div_ceil(page) * page
}

/// The offset of queue `q`'s descriptor array in `/dev/ublkcN`: every
/// queue has room for [`MAX_QUEUE_DEPTH`] descriptors.
pub fn desc_map_offset(q: u16, page: usize) -> i64 {
    let per_queue = (MAX_QUEUE_DEPTH as usize * IO_DESC_LEN).div_ceil(page) * page;
    CMD_BUF_OFFSET + (usize::from(q) * per_queue) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // As a C program printed them from Debian 12's <linux/ublk_cmd.h>:
        // _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd) and so on
        // (the structure sizes and field offsets used above were checked
        // with offsetof in the same program).
        assert_eq!(cmd::ADD_DEV, 0xc020_7504);
        assert_eq!(cmd::GET_DEV_INFO, 0x8020_7502);
        // Not in 6.1's header: the driver (6.12) compares with
        // _IOR('u', 0x13, struct ublksrv_ctrl_cmd).
        assert_eq!(cmd::GET_FEATURES, 0x8020_7513);
        assert_eq!(io_cmd::FETCH_REQ, 0xc010_7520);
        assert_eq!(io_cmd::COMMIT_AND_FETCH_REQ, 0xc010_7521);
        assert_eq!(io_cmd::NEED_GET_DATA, 0xc010_7522);
    }

    #[test]
    fn structures_round_trip() {
        let i = DevInfo {
            nr_hw_queues: 2,
            queue_depth: 128,
            state: state::LIVE,
            max_io_buf_bytes: 128 << 10,
            dev_id: 7,
            ublksrv_pid: 1234,
            flags: flags::NEED_GET_DATA | flags::USER_RECOVERY,
        };
        assert_eq!(DevInfo::decode(&i.encode()), i);
        let p = Params {
            attrs: attr::VOLATILE_CACHE,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 9,
            max_sectors: 256,
            dev_sectors: 1 << 20,
            discard_granularity: 4096,
            max_discard_sectors: 1 << 16,
            max_write_zeroes_sectors: 1 << 16,
        };
        let b = p.encode();
        assert_eq!(Params::decode(&b), p);
        assert_eq!(get32(&b, 4), PARAM_TYPE_BASIC | PARAM_TYPE_DISCARD);
        assert_eq!(get16(&b, 56), 1);
        let c = IoCmd {
            q_id: 1,
            tag: 5,
            result: -5,
            addr: 0x1000,
        }
        .encode();
        assert_eq!(&c[..8], &[1, 0, 5, 0, 0xfb, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn descriptor_mapping() {
        assert_eq!(desc_map_len(128, 4096), 4096);
        assert_eq!(desc_map_len(256, 4096), 8192);
        assert_eq!(desc_map_offset(0, 4096), 0);
        assert_eq!(desc_map_offset(1, 4096), 4096 * 24);
    }
}
