//! I/O types, statuses, scatter-gather segments and bdev events.

use dma::DmaBuf;

/// The kinds of I/O a bdev may support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    /// Read blocks.
    Read,
    /// Write blocks (optionally with FUA).
    Write,
    /// Make written data durable.
    Flush,
    /// Deallocate blocks (trim).
    Unmap,
    /// Write zeroes (emulated with writes where a module lacks it).
    WriteZeroes,
    /// Reset the device.
    Reset,
    /// Compare blocks with the buffer.
    Compare,
    /// Zero-copy window (SPDK's `zcopy`): the module lends its own memory
    /// for a block range — filled with the blocks (`populate`) or not —
    /// and the submitter reads or writes it in place, then ends the window,
    /// committing what it wrote or not ([`crate::BdevChannel::zcopy_start`]).
    Zcopy,
    /// The first block at or after the I/O's offset that holds data
    /// ([`crate::BdevIo::seek_offset`]); a module without it: every block
    /// does (the offset itself), as SPDK.
    SeekData,
    /// The first block at or after the I/O's offset in a hole (never
    /// written or unmapped); a module without it: none before the end (the
    /// bdev's size), as SPDK.
    SeekHole,
    /// Copy blocks within the bdev ([`crate::BdevChannel::copy`]): emulated
    /// with reads and writes where a module lacks it.
    Copy,
    /// Abort I/O still queued in the layer ([`crate::BdevChannel::abort`]).
    Abort,
}

impl IoType {
    /// Every type, in a fixed order (statistics index).
    pub const ALL: [IoType; 12] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
        IoType::Compare,
        IoType::Zcopy,
        IoType::SeekData,
        IoType::SeekHole,
        IoType::Copy,
        IoType::Abort,
    ];

    /// The name SPDK uses in `supported_io_types`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
            IoType::Compare => "compare",
            IoType::Zcopy => "zcopy",
            IoType::SeekData => "seek_data",
            IoType::SeekHole => "seek_hole",
            IoType::Copy => "copy",
            IoType::Abort => "abort",
        }
    }

    /// Index in [`IoType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the I/O moves data through buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write | IoType::Compare)
    }

    /// Whether the I/O changes blocks (needs a writable descriptor).
    pub fn writes(self) -> bool {
        matches!(
            self,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes | IoType::Copy
        )
    }
}

/// How an I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// Done.
    Success,
    /// The device failed it.
    Failed,
    /// The bdev does not support this I/O type.
    NotSupported,
    /// Aborted (reset, removal).
    Aborted,
    /// Compare found different data.
    Miscompare,
    /// A module is out of resources: the layer queues the I/O and submits it
    /// again when an I/O on the channel completes. Never reaches a caller.
    NoMem,
}

impl IoStatus {
    /// Whether the I/O succeeded.
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }
}

/// One scatter-gather segment: its address here and its IO-virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoVec {
    /// Address in this process.
    pub ptr: *mut u8,
    /// IO-virtual address (for devices).
    pub iova: u64,
    /// Length in bytes.
    pub len: usize,
}

impl IoVec {
    /// An empty segment.
    pub const EMPTY: IoVec = IoVec {
        ptr: std::ptr::null_mut(),
        iova: 0,
        len: 0,
    };

    /// `len` bytes of `buf` at `offset`.
    ///
    /// # Panics
    /// When the range does not fit the buffer.
    pub fn of(buf: &DmaBuf, offset: usize, len: usize) -> IoVec {
        assert!(offset + len <= buf.len(), "segment beyond the buffer");
        IoVec {
            ptr: buf.as_ptr().wrapping_add(offset),
            iova: buf.iova() + offset as u64,
            len,
        }
    }

    /// The segment from byte `skip` for `len` bytes.
    pub fn sub(&self, skip: usize, len: usize) -> IoVec {
        debug_assert!(skip + len <= self.len);
        IoVec {
            ptr: self.ptr.wrapping_add(skip),
            iova: self.iova + skip as u64,
            len,
        }
    }
}

/// Something that happened to a bdev, delivered to every open descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The block count changed.
    Resize {
        /// Blocks before.
        old_blocks: u64,
        /// Blocks now.
        new_blocks: u64,
    },
    /// The bdev is going away: close the descriptor.
    Remove,
}
