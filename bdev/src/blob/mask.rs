//! A bit mask region (SPDK's `struct spdk_bs_md_mask`, packed): a type
//! byte (0 used pages, 1 used clusters, 2 used blob ids), the length in
//! bits (u32), then the bits, least significant first in each byte,
//! filling the region's pages. Written at a clean unload; rebuilt from
//! the metadata at a dirty load.

use super::{FormatError, le_u32};

/// Which mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskType {
    /// Metadata pages in use.
    UsedPages,
    /// Clusters in use.
    UsedClusters,
    /// Metadata pages that start a blob.
    UsedBlobIds,
}

impl MaskType {
    /// SPDK's number.
    pub fn code(self) -> u8 {
        match self {
            MaskType::UsedPages => 0,
            MaskType::UsedClusters => 1,
            MaskType::UsedBlobIds => 2,
        }
    }
}

/// A mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Which.
    pub kind: MaskType,
    /// Bits.
    pub bits: Vec<bool>,
}

impl Mask {
    /// Parses mask `kind` from its region's bytes.
    ///
    /// # Errors
    /// [`FormatError`]: another type byte, or more bits than the region
    /// holds.
    pub fn parse(kind: MaskType, b: &[u8]) -> Result<Mask, FormatError> {
        let what = format!("{kind:?} mask");
        if b.len() < 5 {
            return Err(FormatError::Short {
                what,
                need: 5,
                have: b.len(),
            });
        }
        if b[0] != kind.code() {
            return Err(FormatError::Field {
                what,
                why: format!("type {} where {} belongs", b[0], kind.code()),
            });
        }
        let n = le_u32(b, 1) as usize;
        let bytes = n.div_ceil(8);
        if 5 + bytes > b.len() {
            return Err(FormatError::Field {
                what,
                why: format!("{n} bits do not fit in {} bytes", b.len()),
            });
        }
        let bits = (0..n).map(|i| b[5 + i / 8] & (1 << (i % 8)) != 0).collect();
        Ok(Mask { kind, bits })
    }

    /// Its bytes, zero-filled to `region_len` bytes.
    ///
    /// # Errors
    /// [`FormatError::Field`] when the bits do not fit.
    pub fn encode(&self, region_len: usize) -> Result<Vec<u8>, FormatError> {
        let bytes = self.bits.len().div_ceil(8);
        if 5 + bytes > region_len {
            return Err(FormatError::Field {
                what: format!("{:?} mask", self.kind),
                why: format!("{} bits do not fit in {region_len} bytes", self.bits.len()),
            });
        }
        let mut b = vec![0u8; region_len];
        b[0] = self.kind.code();
        b[1..5].copy_from_slice(&(self.bits.len() as u32).to_le_bytes());
        for (i, &on) in self.bits.iter().enumerate() {
            if on {
                b[5 + i / 8] |= 1 << (i % 8);
            }
        }
        Ok(b)
    }

    /// Indices of the bits set.
    pub fn set(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
    }
}
