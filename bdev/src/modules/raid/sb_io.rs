//! A member's superblock read and written through a bdev channel (control
//! path, on a reactor): examine reads it from every new bdev; create,
//! member changes and rebuild progress write it to every member.
//!
//! ```text
//!  load:  read block 0 (or the blocks of 256 bytes) ──> no "SPDKRAID": None
//!         length from the header ──> read every block it spans ──> parse
//!  store: encode (CRC) ──> pad to whole blocks ──> write at block 0
//!  wipe:  zeroes over the blocks the superblock spans
//! ```

use crate::{BdevChannel, BdevError, IoStatus, IoType};

use super::superblock::{HEADER_LEN, SbError, Superblock};

/// Why a member's superblock could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbIoError {
    /// The I/O could not be submitted (bounds, no memory, read-only).
    #[error("superblock {what}: {source}")]
    Submit {
        /// "read" or "write".
        what: &'static str,
        /// The layer's reason.
        source: BdevError,
    },
    /// The I/O failed on the member.
    #[error("superblock {what} failed on the member: {status:?}")]
    Io {
        /// "read" or "write".
        what: &'static str,
        /// Its status.
        status: IoStatus,
    },
    /// The member has a superblock that is not valid.
    #[error("{0}")]
    Invalid(#[from] SbError),
}

/// Blocks of `block_size` bytes that `len` bytes span.
fn blocks_for(len: usize, block_size: u32) -> u64 {
    (len as u64).div_ceil(u64::from(block_size))
}

/// One I/O over the first `blocks` blocks: a read when `data` is None
/// (their bytes back), else a write of `data` padded with zeros (with
/// Force Unit Access).
async fn at_block0(
    ch: &BdevChannel,
    blocks: u64,
    data: Option<&[u8]>,
) -> Result<Vec<u8>, SbIoError> {
    let (ty, what) = match data {
        None => (IoType::Read, "read"),
        Some(_) => (IoType::Write, "write"),
    };
    let submit = |source| SbIoError::Submit { what, source };
    let len = (blocks * u64::from(ch.block_size())) as usize;
    let mut buf = ch.alloc_buf(len).map_err(submit)?;
    if let Some(bytes) = data {
        buf.fill(0);
        buf.write_at(0, bytes);
    }
    let (status, buf) = ch
        .io(ty, Some(buf), 0, blocks, data.is_some())
        .await
        .map_err(submit)?;
    let mut out = Vec::new();
    if let Some(b) = buf {
        if data.is_none() {
            out = vec![0u8; len];
            b.read_at(0, &mut out);
        }
        ch.free_buf(b);
    }
    if status != IoStatus::Success {
        return Err(SbIoError::Io { what, status });
    }
    Ok(out)
}

async fn read(ch: &BdevChannel, blocks: u64) -> Result<Vec<u8>, SbIoError> {
    at_block0(ch, blocks, None).await
}

async fn write(ch: &BdevChannel, bytes: &[u8]) -> Result<(), SbIoError> {
    at_block0(ch, blocks_for(bytes.len(), ch.block_size()), Some(bytes))
        .await
        .map(|_| ())
}

/// The superblock at block 0 of the bdev behind `ch`: `None` when there is
/// none (no signature: not a RAID member).
///
/// # Errors
/// A read that fails, or a superblock that is there but not valid (its
/// CRC, version or a field): [`SbIoError::Invalid`].
pub async fn load(ch: &BdevChannel) -> Result<Option<Superblock>, SbIoError> {
    let bs = ch.block_size();
    let head = read(ch, blocks_for(HEADER_LEN, bs)).await?;
    let need = match Superblock::needed_len(&head) {
        Ok(n) => n,
        Err(SbError::NoSignature) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let all = if need > head.len() {
        read(ch, blocks_for(need, bs)).await?
    } else {
        head
    };
    Ok(Some(Superblock::parse(&all)?))
}

/// Writes `sb` at block 0 of the bdev behind `ch` (padded with zeros to
/// whole blocks, with Force Unit Access).
///
/// # Errors
/// One that does not encode ([`SbIoError::Invalid`]), or a write that
/// fails.
pub async fn store(ch: &BdevChannel, sb: &Superblock) -> Result<(), SbIoError> {
    write(ch, &sb.encode()?).await
}

/// Zeroes the blocks a superblock of `sb_len` bytes spans at block 0.
///
/// # Errors
/// A write that fails.
pub async fn wipe(ch: &BdevChannel, sb_len: usize) -> Result<(), SbIoError> {
    write(ch, &vec![0u8; sb_len.max(HEADER_LEN)]).await
}
