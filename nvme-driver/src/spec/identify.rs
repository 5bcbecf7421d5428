//! Identify Controller and Identify Namespace data (4096 bytes each), parsed
//! from raw bytes so nothing the device wrote is trusted blindly.

/// The fields of Identify Controller the driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor id.
    pub vid: u16,
    /// PCI subsystem vendor id.
    pub ssvid: u16,
    /// Serial number, trailing spaces trimmed.
    pub serial: String,
    /// Model number, trailing spaces trimmed.
    pub model: String,
    /// Firmware revision, trailing spaces trimmed.
    pub firmware: String,
    /// Maximum data transfer size as a power of two of the minimum page size
    /// (0 = no limit).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Version the controller reports.
    pub ver: u32,
    /// Optional admin command support.
    pub oacs: u16,
    /// Abort command limit (0-based).
    pub acl: u8,
    /// Asynchronous event request limit (0-based).
    pub aerl: u8,
    /// Error log page entries (0-based).
    pub elpe: u8,
    /// Maximum outstanding commands (0 = not reported).
    pub maxcmd: u16,
    /// Number of namespaces (highest valid NSID).
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Volatile write cache present.
    pub vwc: u8,
    /// SGL support (bits 1:0: 00b none, 01b without alignment rules, 10b
    /// dword-aligned addresses and lengths).
    pub sgls: u32,
    /// NVM subsystem NQN.
    pub subnqn: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_owned()
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl IdentifyController {
    /// Parses the 4096-byte Identify Controller data structure.
    pub fn parse(b: &[u8; 4096]) -> Self {
        IdentifyController {
            vid: u16le(b, 0),
            ssvid: u16le(b, 2),
            serial: text(&b[4..24]),
            model: text(&b[24..64]),
            firmware: text(&b[64..72]),
            mdts: b[77],
            cntlid: u16le(b, 78),
            ver: u32le(b, 80),
            oacs: u16le(b, 256),
            acl: b[258],
            aerl: b[259],
            elpe: b[262],
            maxcmd: u16le(b, 514),
            nn: u32le(b, 516),
            oncs: u16le(b, 520),
            vwc: b[525],
            sgls: u32le(b, 536),
            subnqn: text(&b[768..1024]),
        }
    }

    /// Compare is supported.
    pub fn supports_compare(&self) -> bool {
        self.oncs & (1 << 0) != 0
    }

    /// Dataset Management (deallocate) is supported.
    pub fn supports_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    /// Write Zeroes is supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }

    /// A volatile write cache is present (Flush matters).
    pub fn has_volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }

    /// Namespace Management and Attachment are supported.
    pub fn supports_ns_management(&self) -> bool {
        self.oacs & (1 << 3) != 0
    }

    /// Format NVM is supported.
    pub fn supports_format(&self) -> bool {
        self.oacs & (1 << 1) != 0
    }

    /// Maximum transfer in bytes for a controller whose minimum page size is
    /// `min_page`, or `None` when unlimited.
    pub fn max_transfer(&self, min_page: usize) -> Option<usize> {
        (self.mdts != 0).then(|| min_page << self.mdts.min(20))
    }

    /// The alignment (1 or 4 bytes) an SGL data block's address and length
    /// must have for NVM commands, or `None` when the controller takes no
    /// SGLs.
    pub fn sgl_alignment(&self) -> Option<u32> {
        match self.sgls & 0b11 {
            0b01 => Some(1),
            0b10 => Some(4),
            _ => None,
        }
    }
}

/// One LBA format of a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub metadata_size: u16,
    /// Data bytes per block.
    pub data_size: u32,
    /// Relative performance (0 best).
    pub relative_performance: u8,
}

/// The fields of Identify Namespace the driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// Namespace capacity in logical blocks.
    pub ncap: u64,
    /// Namespace utilization in logical blocks.
    pub nuse: u64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Formatted LBA size: index of the format in use.
    pub flbas: u8,
    /// Deallocate logical block features (bits 2:0 = 1: deallocated blocks
    /// read as zeroes).
    pub dlfeat: u8,
    /// The LBA formats (NLBAF + 1 of them).
    pub lba_formats: Vec<LbaFormat>,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// The namespace UUID (zero if not reported): from the Namespace
    /// Identification Descriptor list ([`IdentifyNamespace::add_descriptors`]).
    pub uuid: [u8; 16],
}

impl IdentifyNamespace {
    /// Takes the identifiers of a Namespace Identification Descriptor list
    /// (Identify CNS 03h): the UUID, and the NGUID and EUI-64 where
    /// Identify Namespace left them zero. A malformed or truncated
    /// descriptor ends the list.
    pub fn add_descriptors(&mut self, b: &[u8; 4096]) {
        let mut off = 0;
        while off + 4 <= b.len() {
            let (ty, len) = (b[off], b[off + 1] as usize);
            if ty == 0 || len == 0 || off + 4 + len > b.len() {
                break;
            }
            let id = &b[off + 4..off + 4 + len];
            match (ty, len) {
                (1, 8) if self.eui64 == [0; 8] => self.eui64.copy_from_slice(id),
                (2, 16) if self.nguid == [0; 16] => self.nguid.copy_from_slice(id),
                (3, 16) => self.uuid.copy_from_slice(id),
                _ => {}
            }
            off += 4 + len;
        }
    }

    /// Parses the 4096-byte Identify Namespace data structure.
    pub fn parse(b: &[u8; 4096]) -> Self {
        let nlbaf = (b[25] as usize).min(63);
        let lba_formats = (0..=nlbaf)
            .map(|i| {
                let d = u32le(b, 128 + 4 * i);
                let lbads = (d >> 16) as u8;
                LbaFormat {
                    metadata_size: d as u16,
                    // LBADS below 9 is invalid; 0 marks an unusable format.
                    data_size: if (9..32).contains(&lbads) {
                        1u32 << lbads
                    } else {
                        0
                    },
                    relative_performance: ((d >> 24) & 3) as u8,
                }
            })
            .collect();
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        IdentifyNamespace {
            nsze: u64le(b, 0),
            ncap: u64le(b, 8),
            nuse: u64le(b, 16),
            nsfeat: b[24],
            flbas: b[26],
            dlfeat: b[33],
            lba_formats,
            nguid,
            eui64,
            uuid: [0; 16],
        }
    }

    /// The LBA format in use, if the index is valid.
    pub fn current_format(&self) -> Option<LbaFormat> {
        let idx = (self.flbas & 0x0f) as usize | (((self.flbas >> 5) & 3) as usize) << 4;
        self.lba_formats.get(idx).copied()
    }

    /// Logical block size in bytes (0 when the format is invalid).
    pub fn block_size(&self) -> u32 {
        self.current_format().map_or(0, |f| f.data_size)
    }

    /// Whether deallocated blocks read back as zeroes.
    pub fn deallocated_reads_zeroes(&self) -> bool {
        self.dlfeat & 7 == 1
    }

    /// Whether the namespace is active (non-zero size).
    pub fn is_active(&self) -> bool {
        self.nsze != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_identification_descriptors() {
        let mut id = IdentifyNamespace::parse(&[0u8; 4096]);
        let mut b = [0u8; 4096];
        // EUI-64, NGUID, UUID, then CSI (ignored), then the end.
        b[0] = 1;
        b[1] = 8;
        b[4..12].copy_from_slice(&[1; 8]);
        b[12] = 2;
        b[13] = 16;
        b[16..32].copy_from_slice(&[2; 16]);
        b[32] = 3;
        b[33] = 16;
        b[36..52].copy_from_slice(&[3; 16]);
        b[52] = 4;
        b[53] = 1;
        id.add_descriptors(&b);
        assert_eq!((id.eui64, id.nguid, id.uuid), ([1; 8], [2; 16], [3; 16]));
        // A UUID of the wrong length is not taken; the list goes on.
        let mut id = IdentifyNamespace::parse(&[0u8; 4096]);
        let mut b = [0u8; 4096];
        b[0] = 3;
        b[1] = 8;
        b[4..12].copy_from_slice(&[9; 8]);
        b[12] = 1;
        b[13] = 8;
        b[16..24].copy_from_slice(&[7; 8]);
        id.add_descriptors(&b);
        assert_eq!((id.uuid, id.eui64), ([0; 16], [7; 8]));
    }

    #[test]
    fn parses_controller_fields() {
        let mut b = [0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[4..24].copy_from_slice(b"RSS0001             ");
        b[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        b[64..72].copy_from_slice(b"8.0.0   ");
        b[77] = 7;
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0b1101u16.to_le_bytes());
        b[525] = 1;
        b[536..540].copy_from_slice(&0x1_0001u32.to_le_bytes());
        let c = IdentifyController::parse(&b);
        assert_eq!(c.sgl_alignment(), Some(1));
        assert_eq!(c.vid, 0x1b36);
        assert_eq!(c.serial, "RSS0001");
        assert_eq!(c.model, "QEMU NVMe Ctrl");
        assert_eq!(c.firmware, "8.0.0");
        assert_eq!(c.nn, 256);
        assert_eq!(c.max_transfer(4096), Some(512 * 1024));
        assert!(c.supports_compare() && c.supports_dsm() && c.supports_write_zeroes());
        assert!(c.has_volatile_write_cache());
        for (bits, want) in [(0, None), (2, Some(4)), (3, None)] {
            b[536..540].copy_from_slice(&(bits as u32).to_le_bytes());
            assert_eq!(IdentifyController::parse(&b).sgl_alignment(), want);
        }
    }

    #[test]
    fn parses_namespace_formats() {
        let mut b = [0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[25] = 1; // two formats
        b[26] = 1; // using format 1
        b[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        b[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        let ns = IdentifyNamespace::parse(&b);
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.lba_formats.len(), 2);
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.current_format().unwrap().metadata_size, 8);
        // An out-of-range format index or LBADS is not a panic.
        b[26] = 9;
        assert_eq!(IdentifyNamespace::parse(&b).block_size(), 0);
        b[26] = 0;
        b[128..132].copy_from_slice(&(40u32 << 16).to_le_bytes());
        assert_eq!(IdentifyNamespace::parse(&b).block_size(), 0);
    }
}
