//! Verify-mode data: every block written carries its own LBA, a tag (the
//! run, the namespace and the write's generation) and pseudo-random words
//! derived from both, so a read can be checked word by word and a block that
//! landed at the wrong LBA, a stale block and a corrupted byte all show.
//!
//! ```text
//!  block (block_size bytes, little-endian u64 words)
//!  [ lba | tag | r(lba,tag,0) | r(lba,tag,1) | ... ]
//! ```

use crate::rng::{XorShift64, splitmix64};

/// Where a block read back differs from what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The LBA of the block that differs.
    pub lba: u64,
    /// Byte offset of the first differing word within that block.
    pub offset: usize,
    /// The word written.
    pub expected: u64,
    /// The word read.
    pub found: u64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LBA {} byte {}: expected {:#018x}, read {:#018x}",
            self.lba, self.offset, self.expected, self.found
        )
    }
}

#[inline]
fn words(lba: u64, tag: u64) -> XorShift64 {
    XorShift64::new(splitmix64(lba) ^ tag.rotate_left(29))
}

/// Fills `dst` (whole blocks of `block_size` bytes, a multiple of 8) with
/// the pattern of the blocks starting at `first_lba` for `tag`.
///
/// # Panics
/// If `dst` is not whole blocks or `block_size` is not a multiple of 8.
pub fn fill(dst: &mut [u8], block_size: usize, first_lba: u64, tag: u64) {
    assert!(
        block_size >= 16 && block_size.is_multiple_of(8),
        "block size {block_size}"
    );
    assert_eq!(dst.len() % block_size, 0, "whole blocks");
    for (i, block) in dst.chunks_exact_mut(block_size).enumerate() {
        let lba = first_lba + i as u64;
        let mut r = words(lba, tag);
        for (w, word) in block.chunks_exact_mut(8).enumerate() {
            let v = match w {
                0 => lba,
                1 => tag,
                _ => r.next_u64(),
            };
            word.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Checks `src` against the pattern [`fill`] writes; the first difference.
///
/// # Errors
/// The first [`Mismatch`].
///
/// # Panics
/// As [`fill`].
pub fn check(src: &[u8], block_size: usize, first_lba: u64, tag: u64) -> Result<(), Mismatch> {
    assert!(
        block_size >= 16 && block_size.is_multiple_of(8),
        "block size {block_size}"
    );
    assert_eq!(src.len() % block_size, 0, "whole blocks");
    for (i, block) in src.chunks_exact(block_size).enumerate() {
        let lba = first_lba + i as u64;
        let mut r = words(lba, tag);
        for (w, word) in block.chunks_exact(8).enumerate() {
            let expected = match w {
                0 => lba,
                1 => tag,
                _ => r.next_u64(),
            };
            let found = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if found != expected {
                return Err(Mismatch {
                    lba,
                    offset: w * 8,
                    expected,
                    found,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_damage_shows() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 512, 1000, 0xABCD_0001);
        assert_eq!(check(&buf, 512, 1000, 0xABCD_0001), Ok(()));
        // Blocks differ from each other.
        assert_ne!(buf[16..512], buf[512 + 16..1024]);
        // Stale data: same place, older generation.
        let e = check(&buf, 512, 1000, 0xABCD_0002).unwrap_err();
        assert_eq!((e.lba, e.offset), (1000, 8));
        // Data written at the wrong LBA.
        let e = check(&buf, 512, 1001, 0xABCD_0001).unwrap_err();
        assert_eq!((e.lba, e.offset), (1001, 0));
        // One flipped bit in the 4th block.
        buf[3 * 512 + 100] ^= 0x10;
        let e = check(&buf, 512, 1000, 0xABCD_0001).unwrap_err();
        assert_eq!((e.lba, e.offset), (1003, 96));
        assert_eq!(e.expected ^ e.found, 0x10 << 32);
        assert!(e.to_string().starts_with("LBA 1003 byte 96: expected 0x"));
    }

    #[test]
    fn zeroed_blocks_never_pass() {
        let buf = vec![0u8; 4096];
        assert!(check(&buf, 4096, 0, 1).is_err());
    }
}
