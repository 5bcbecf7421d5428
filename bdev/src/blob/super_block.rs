//! The blob store's super block, page 0 of the device (SPDK's
//! `struct spdk_bs_super_block`, packed, little-endian):
//!
//! ```text
//!   0 signature "SPDKBLOB"  8 version u32  12 length u32  16 clean u32
//!  20 super_blob u64  28 cluster_size u32 (bytes)
//!  32 used_page_mask start, len   40 used_cluster_mask start, len
//!  48 md start, len (all u32, in pages)   56 bstype [16]
//!  72 used_blobid_mask start, len  80 size u64 (bytes)  88 io_unit_size u32
//!  92 reserved [4000]   4092 crc u32 (CRC32C of the 4092 bytes before)
//! ```

use super::{FormatError, PAGE_SIZE, le_u32, le_u64};

/// The signature.
pub const SIGNATURE: &[u8; 8] = b"SPDKBLOB";
/// The version written and read.
pub const VERSION: u32 = 3;

/// A run of pages from the device's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Region {
    /// First page.
    pub start: u32,
    /// Pages.
    pub len: u32,
}

impl Region {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.len)
    }
}

/// A super block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperBlock {
    /// The format version (3).
    pub version: u32,
    /// Unloaded cleanly (the masks on disk are current).
    pub clean: bool,
    /// The application's super blob (lvstore: none, `u64::MAX`... as
    /// written).
    pub super_blob: u64,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// The used-page mask.
    pub used_page_mask: Region,
    /// The used-cluster mask.
    pub used_cluster_mask: Region,
    /// The metadata pages.
    pub md: Region,
    /// The store's type ("LVOLSTORE" for SPDK's logical volumes), NUL-padded.
    pub bstype: [u8; 16],
    /// The used-blobid mask.
    pub used_blobid_mask: Region,
    /// The store's size in bytes.
    pub size: u64,
    /// The unit of blob I/O in bytes (the device's block size).
    pub io_unit_size: u32,
}

fn field(why: impl Into<String>, what: &str) -> FormatError {
    FormatError::Field {
        what: format!("super block {what}"),
        why: why.into(),
    }
}

impl SuperBlock {
    /// The store type as text (up to the first NUL).
    pub fn bstype_str(&self) -> String {
        let end = self.bstype.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.bstype[..end]).into_owned()
    }

    /// Clusters in the store.
    pub fn total_clusters(&self) -> u64 {
        self.size / u64::from(self.cluster_size.max(1))
    }

    /// Parses page 0.
    ///
    /// # Errors
    /// [`FormatError`] naming what is wrong: size, signature, CRC,
    /// version, or a field out of range (a region past the store, a
    /// cluster size that is not whole pages, an I/O unit that is not a
    /// power of two up to a page).
    pub fn parse(b: &[u8]) -> Result<SuperBlock, FormatError> {
        if b.len() < PAGE_SIZE {
            return Err(FormatError::Short {
                what: "super block".into(),
                need: PAGE_SIZE,
                have: b.len(),
            });
        }
        if &b[..8] != SIGNATURE {
            return Err(FormatError::Signature);
        }
        let stored = le_u32(b, 4092);
        let computed = crate::crc32c::checksum(&b[..4092]);
        if stored != computed {
            return Err(FormatError::Crc {
                what: "super block".into(),
                stored,
                computed,
            });
        }
        let version = le_u32(b, 8);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let length = le_u32(b, 12);
        if length as usize != PAGE_SIZE {
            return Err(field(format!("{length}, not {PAGE_SIZE}"), "length"));
        }
        let clean = match le_u32(b, 16) {
            0 => false,
            1 => true,
            x => return Err(field(format!("{x}, not 0 or 1"), "clean")),
        };
        let region = |at: usize| Region {
            start: le_u32(b, at),
            len: le_u32(b, at + 4),
        };
        let mut bstype = [0u8; 16];
        bstype.copy_from_slice(&b[56..72]);
        let sb = SuperBlock {
            version,
            clean,
            super_blob: le_u64(b, 20),
            cluster_size: le_u32(b, 28),
            used_page_mask: region(32),
            used_cluster_mask: region(40),
            md: region(48),
            bstype,
            used_blobid_mask: region(72),
            size: le_u64(b, 80),
            io_unit_size: le_u32(b, 88),
        };
        sb.check()?;
        Ok(sb)
    }

    fn check(&self) -> Result<(), FormatError> {
        let cs = self.cluster_size;
        if cs == 0 || !(cs as usize).is_multiple_of(PAGE_SIZE) {
            return Err(field(
                format!("{cs}: not whole 4 KiB pages"),
                "cluster_size",
            ));
        }
        let io = self.io_unit_size;
        if !(512..=PAGE_SIZE as u32).contains(&io) || !io.is_power_of_two() {
            return Err(field(
                format!("{io}: not a power of two from 512 to 4096"),
                "io_unit_size",
            ));
        }
        if self.size < u64::from(cs) {
            return Err(field(
                format!("{} bytes: less than one cluster", self.size),
                "size",
            ));
        }
        let pages = self.size / PAGE_SIZE as u64;
        for (name, r) in [
            ("used_page_mask", self.used_page_mask),
            ("used_cluster_mask", self.used_cluster_mask),
            ("md", self.md),
            ("used_blobid_mask", self.used_blobid_mask),
        ] {
            if r.start == 0 || r.len == 0 || r.end() > pages {
                return Err(field(
                    format!(
                        "pages {}..{} not inside the store's 1..{pages}",
                        r.start,
                        r.end()
                    ),
                    name,
                ));
            }
        }
        Ok(())
    }

    /// The page's bytes, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE];
        b[..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[16..20].copy_from_slice(&u32::from(self.clean).to_le_bytes());
        b[20..28].copy_from_slice(&self.super_blob.to_le_bytes());
        b[28..32].copy_from_slice(&self.cluster_size.to_le_bytes());
        let mut put = |at: usize, r: Region| {
            b[at..at + 4].copy_from_slice(&r.start.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&r.len.to_le_bytes());
        };
        put(32, self.used_page_mask);
        put(40, self.used_cluster_mask);
        put(48, self.md);
        put(72, self.used_blobid_mask);
        b[56..72].copy_from_slice(&self.bstype);
        b[80..88].copy_from_slice(&self.size.to_le_bytes());
        b[88..92].copy_from_slice(&self.io_unit_size.to_le_bytes());
        let crc = crate::crc32c::checksum(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
        b
    }
}
