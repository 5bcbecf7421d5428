//! `Medium`: blocks kept in memory by a module (the malloc disk, and later
//! any RAM-backed store), shared by every core's channel, moved to and from
//! I/O data by CPU copies. Concurrent I/O to overlapping bytes from several
//! cores races as it would on any disk: on bytes, through raw copies, never
//! through Rust references to the medium.

use dma::DmaBuf;

use crate::error::BdevError;
use crate::handle::IoHandle;
use crate::types::IoVec;

/// Memory holding a device's blocks.
pub struct Medium {
    buf: DmaBuf,
    base: *mut u8,
    len: usize,
}

impl std::fmt::Debug for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Medium").field("len", &self.len).finish()
    }
}

// SAFETY: `base` points into `buf`, which the medium owns; it is only
// touched through raw copies of in-bounds ranges (see the module doc).
unsafe impl Send for Medium {}
// SAFETY: as above.
unsafe impl Sync for Medium {}

impl Medium {
    /// A medium over `buf` (its contents as they are).
    pub fn new(buf: DmaBuf) -> Medium {
        let base = buf.as_ptr();
        let len = buf.len();
        Medium { buf, base, len }
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, offset: usize, len: usize) -> Result<*mut u8, BdevError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base.wrapping_add(offset)),
            _ => Err(BdevError::invalid(
                "medium range",
                format!(
                    "bytes {offset}..{} beyond the medium's {} bytes",
                    offset.saturating_add(len),
                    self.len
                ),
            )),
        }
    }

    /// Copies the medium from byte `offset` into the I/O's data (all of it).
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn read_into(&self, offset: usize, io: &mut IoHandle) -> Result<(), BdevError> {
        let mut p = self.range(offset, io.io().data_len())?;
        for seg in io.data_mut() {
            // SAFETY: `p..p+seg.len()` is within the medium (checked above
            // for the whole data); `seg` is the I/O's own segment.
            unsafe { std::ptr::copy_nonoverlapping(p, seg.as_mut_ptr(), seg.len()) };
            p = p.wrapping_add(seg.len());
        }
        Ok(())
    }

    /// Copies the I/O's data (all of it) into the medium from byte `offset`.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn write_from(&self, offset: usize, io: &IoHandle) -> Result<(), BdevError> {
        let mut p = self.range(offset, io.io().data_len())?;
        for seg in io.data() {
            // SAFETY: as in `read_into`.
            unsafe { std::ptr::copy_nonoverlapping(seg.as_ptr(), p, seg.len()) };
            p = p.wrapping_add(seg.len());
        }
        Ok(())
    }

    /// Whether the medium from byte `offset` holds the I/O's data.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn equals(&self, offset: usize, io: &IoHandle) -> Result<bool, BdevError> {
        let mut p = self.range(offset, io.io().data_len())?;
        let mut same = true;
        for seg in io.data() {
            let mut tmp = [0u8; 512];
            for chunk in seg.chunks(tmp.len()) {
                // SAFETY: in bounds (checked above); copied out, so no
                // reference to the shared medium is formed.
                unsafe { std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), chunk.len()) };
                same &= tmp[..chunk.len()] == *chunk;
                p = p.wrapping_add(chunk.len());
            }
        }
        Ok(same)
    }

    /// Copies `len` bytes from byte `src` to byte `dst` (the ranges may
    /// overlap).
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn copy_within(&self, src: usize, dst: usize, len: usize) -> Result<(), BdevError> {
        let s = self.range(src, len)?;
        let d = self.range(dst, len)?;
        // SAFETY: both in bounds (checked above); `copy` allows overlap.
        unsafe { std::ptr::copy(s, d, len) };
        Ok(())
    }

    /// Sets `len` bytes from `offset` to `byte`.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), BdevError> {
        let p = self.range(offset, len)?;
        // SAFETY: in bounds (checked above).
        unsafe { std::ptr::write_bytes(p, byte, len) };
        Ok(())
    }

    /// The medium's bytes `offset..offset + len` as a segment (for a
    /// zero-copy window: the submitter reads and writes the medium itself).
    ///
    /// # Errors
    /// [`BdevError::Invalid`] for a range beyond the medium.
    pub fn segment(&self, offset: usize, len: usize) -> Result<IoVec, BdevError> {
        let ptr = self.range(offset, len)?;
        Ok(IoVec {
            ptr,
            iova: self.buf.iova() + offset as u64,
            len,
        })
    }
}
