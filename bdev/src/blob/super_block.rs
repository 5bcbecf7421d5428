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

/// Pages a mask of `bits` bits takes, its 5-byte header included.
pub fn mask_pages(bits: u64) -> u32 {
    (5 + bits.div_ceil(8)).div_ceil(PAGE_SIZE as u64) as u32
}

impl SuperBlock {
    /// The super block SPDK's `spdk_bs_init` writes for a device of
    /// `device_bytes` with `io_unit_size`-byte blocks: page 0, then the
    /// used-page mask (a bit per metadata page), the used-cluster mask (a
    /// bit per cluster), the used-blobid mask, the metadata pages
    /// (`md_pages`, SPDK's default one per cluster; SPDK's lvstore asks for
    /// clusters x `md_pages_per_cluster_ratio` / 100), each after the
    /// other; no super blob yet; clean. Checked against the super blocks
    /// SPDK v24.09's lvstores wrote for 32 MiB to 64 GiB devices.
    ///
    /// # Errors
    /// [`FormatError::Field`]: a cluster size that is not whole pages, a
    /// block size that is not a power of two up to a page, no metadata
    /// page, a type name over 15 bytes, or a device too small to hold its
    /// metadata and one data cluster.
    pub fn layout(
        device_bytes: u64,
        io_unit_size: u32,
        cluster_size: u32,
        md_pages: Option<u32>,
        bstype: &str,
    ) -> Result<SuperBlock, FormatError> {
        if bstype.len() > 15 {
            return Err(field(format!("{bstype:?}: longer than 15 bytes"), "bstype"));
        }
        let total_clusters = device_bytes / u64::from(cluster_size.max(1));
        let md_len = match md_pages {
            Some(n) => n,
            None => u32::try_from(total_clusters)
                .map_err(|_| field(format!("{total_clusters} clusters"), "size"))?,
        };
        if md_len == 0 {
            return Err(field("no metadata page", "md"));
        }
        let mut bt = [0u8; 16];
        bt[..bstype.len()].copy_from_slice(bstype.as_bytes());
        let page_mask = Region {
            start: 1,
            len: mask_pages(u64::from(md_len)),
        };
        let cluster_mask = Region {
            start: page_mask.start + page_mask.len,
            len: mask_pages(total_clusters),
        };
        let blobid_mask = Region {
            start: cluster_mask.start + cluster_mask.len,
            len: mask_pages(u64::from(md_len)),
        };
        let md = Region {
            start: blobid_mask.start + blobid_mask.len,
            len: md_len,
        };
        let sb = SuperBlock {
            version: VERSION,
            clean: true,
            super_blob: u64::MAX,
            cluster_size,
            used_page_mask: page_mask,
            used_cluster_mask: cluster_mask,
            md,
            bstype: bt,
            used_blobid_mask: blobid_mask,
            size: device_bytes,
            io_unit_size,
        };
        sb.check()?;
        if sb.md_clusters() >= total_clusters {
            return Err(field(
                format!(
                    "{device_bytes} bytes: its {} metadata clusters leave no data cluster",
                    sb.md_clusters()
                ),
                "size",
            ));
        }
        Ok(sb)
    }

    /// Clusters at the device's start that hold the super block, masks
    /// and metadata pages.
    pub fn md_clusters(&self) -> u64 {
        let per = u64::from(self.cluster_size) / PAGE_SIZE as u64;
        self.md.end().div_ceil(per.max(1))
    }

    /// Clusters left for data (what SPDK's lvstore reports as
    /// `total_data_clusters`).
    pub fn data_clusters(&self) -> u64 {
        self.total_clusters().saturating_sub(self.md_clusters())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What SPDK v24.09 wrote (lvstores over aio files, 2026-11-27):
    /// (MiB, cluster bytes, md ratio %, md_len, masks' pages (page,
    /// cluster, blobid), md_start, lvstore total_data_clusters).
    /// One row: see [`SPDK`].
    type Row = (u64, u32, u64, u32, [u32; 3], u32, u64);

    const SPDK: [Row; 14] = [
        (32, 1 << 20, 100, 32, [1, 1, 1], 4, 31),
        (32, 1 << 20, 10, 3, [1, 1, 1], 4, 31),
        (32, 4 << 20, 100, 8, [1, 1, 1], 4, 7),
        (100, 1 << 20, 100, 100, [1, 1, 1], 4, 99),
        (100, 1 << 20, 10, 10, [1, 1, 1], 4, 99),
        (100, 4 << 20, 100, 25, [1, 1, 1], 4, 24),
        (100, 4 << 20, 10, 2, [1, 1, 1], 4, 24),
        (1024, 1 << 20, 100, 1024, [1, 1, 1], 4, 1019),
        (1024, 1 << 20, 10, 102, [1, 1, 1], 4, 1023),
        (1024, 4 << 20, 10, 25, [1, 1, 1], 4, 255),
        (3000, 1 << 20, 100, 3000, [1, 1, 1], 4, 2988),
        (3000, 1 << 20, 10, 300, [1, 1, 1], 4, 2998),
        (65536, 1 << 20, 10, 6553, [1, 3, 1], 6, 65510),
        (65536, 1 << 20, 100, 65536, [3, 3, 3], 10, 65279),
    ];

    #[test]
    fn layouts_as_spdk_writes_them() {
        for (mib, cs, ratio, md_len, masks, md_start, data) in SPDK {
            for bs in [512, 4096] {
                let clusters = (mib << 20) / u64::from(cs);
                let md = (clusters * ratio / 100) as u32;
                assert_eq!(md, md_len);
                let sb = SuperBlock::layout(mib << 20, bs, cs, Some(md), "LVOLSTORE").unwrap();
                let what = format!("{mib} MiB, {cs}-byte clusters, ratio {ratio}");
                assert_eq!(
                    sb.md,
                    Region {
                        start: md_start,
                        len: md_len
                    },
                    "{what}"
                );
                assert_eq!(
                    [
                        sb.used_page_mask.len,
                        sb.used_cluster_mask.len,
                        sb.used_blobid_mask.len
                    ],
                    masks,
                    "{what}"
                );
                assert_eq!(sb.used_page_mask.start, 1);
                assert_eq!(sb.used_cluster_mask.start, 1 + masks[0]);
                assert_eq!(sb.used_blobid_mask.start, 1 + masks[0] + masks[1]);
                assert_eq!(sb.data_clusters(), data, "{what}");
                assert_eq!(SuperBlock::parse(&sb.encode()).unwrap(), sb);
            }
        }
    }

    #[test]
    fn layouts_that_cannot_be() {
        assert!(SuperBlock::layout(1 << 20, 512, 1 << 20, None, "X").is_err());
        assert!(SuperBlock::layout(32 << 20, 512, 1000, None, "X").is_err());
        assert!(SuperBlock::layout(32 << 20, 512, 1 << 20, Some(0), "X").is_err());
        assert!(SuperBlock::layout(32 << 20, 512, 1 << 20, None, "SIXTEEN_CHARS_XX").is_err());
        assert!(SuperBlock::layout(32 << 20, 3000, 1 << 20, None, "X").is_err());
    }
}
