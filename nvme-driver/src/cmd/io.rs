//! NVM command set I/O command encoding.

use crate::spec::{Sqe, io_opcode as op};

fn rw(opcode: u8, nsid: u32, lba: u64, blocks: u32, fua: bool) -> Sqe {
    debug_assert!((1..=65536).contains(&blocks));
    let mut c = Sqe::new(opcode, nsid);
    c.cdw10 = lba as u32;
    c.cdw11 = (lba >> 32) as u32;
    c.cdw12 = (blocks - 1) | (fua as u32) << 30;
    c
}

/// Read `blocks` (1..=65536) logical blocks at `lba`.
pub fn read(nsid: u32, lba: u64, blocks: u32) -> Sqe {
    rw(op::READ, nsid, lba, blocks, false)
}

/// Write `blocks` logical blocks at `lba`, with Force Unit Access if `fua`.
pub fn write(nsid: u32, lba: u64, blocks: u32, fua: bool) -> Sqe {
    rw(op::WRITE, nsid, lba, blocks, fua)
}

/// Compare `blocks` logical blocks at `lba` with the data buffer.
pub fn compare(nsid: u32, lba: u64, blocks: u32) -> Sqe {
    rw(op::COMPARE, nsid, lba, blocks, false)
}

/// Write Zeroes over `blocks` logical blocks at `lba`; with `deallocate` the
/// controller may deallocate them (DEAC).
pub fn write_zeroes(nsid: u32, lba: u64, blocks: u32, deallocate: bool) -> Sqe {
    let mut c = rw(op::WRITE_ZEROES, nsid, lba, blocks, false);
    c.cdw12 |= (deallocate as u32) << 25;
    c
}

/// Flush the volatile write cache of namespace `nsid`.
pub fn flush(nsid: u32) -> Sqe {
    Sqe::new(op::FLUSH, nsid)
}

/// Dataset Management with the Deallocate attribute over `ranges` (1..=256)
/// range descriptors supplied as the data buffer.
pub fn deallocate(nsid: u32, ranges: u32) -> Sqe {
    debug_assert!((1..=256).contains(&ranges));
    let mut c = Sqe::new(op::DATASET_MANAGEMENT, nsid);
    c.cdw10 = ranges - 1;
    c.cdw11 = 1 << 2;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_encoding() {
        let c = read(1, 0x1_2345_6789, 8);
        assert_eq!(c.opcode(), 0x02);
        assert_eq!(c.nsid, 1);
        assert_eq!((c.cdw10, c.cdw11, c.cdw12), (0x2345_6789, 1, 7));
        let c = write(2, 10, 65536, true);
        assert_eq!(c.opcode(), 0x01);
        assert_eq!(c.cdw12, 0xffff | 1 << 30);
        let c = write_zeroes(1, 0, 1, true);
        assert_eq!(c.opcode(), 0x08);
        assert_eq!(c.cdw12, 1 << 25);
        let c = deallocate(1, 3);
        assert_eq!((c.opcode(), c.cdw10, c.cdw11), (0x09, 2, 4));
        assert_eq!(flush(1).opcode(), 0);
        assert_eq!(compare(1, 5, 2).opcode(), 5);
    }

    #[test]
    fn command_id_round_trips() {
        let mut c = read(1, 0, 1);
        c.set_cid(0xbeef);
        assert_eq!(c.cid(), 0xbeef);
        assert_eq!(c.opcode(), 0x02);
    }
}
