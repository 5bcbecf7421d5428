//! SPDK's RAID superblock, version 1.0, byte for byte (as SPDK v24.09
//! writes it at block 0 of every member; checked against members SPDK made,
//! `bdev/tests/fixtures/raid/`): a 256-byte header, then one 64-byte entry
//! per member slot; all integers little-endian; CRC32C (Castagnoli,
//! reflected, initial value 0, no final inversion: SPDK's
//! `spdk_crc32c_update(sb, length, 0)`) over `length` bytes with the CRC
//! field zero.
//!
//! ```text
//!   0 signature "SPDKRAID"   8 major u16, minor u16   12 length u32
//!  16 crc u32   20 flags u32   24 uuid [16]   40 name [64] (NUL-ended)
//! 104 raid_size u64 (blocks)  112 block_size u32  116 level u32
//! 120 strip_size u32 (blocks) 124 state u32   128 seq_number u64
//! 136 num_base_bdevs u8   137..255 reserved   255 base_bdevs_size u8
//! 256 + 64 * i: uuid [16], data_offset u64, data_size u64 (blocks),
//!               state u32, flags u32, slot u8, reserved [23]
//! ```
//!
//! Parsing trusts nothing: every field is checked and a bad one is a
//! [`SbError`] that names it; no input panics.

use crate::registry::format_uuid;

/// The signature at byte 0.
pub const SIGNATURE: &[u8; 8] = b"SPDKRAID";
/// The major version written and understood.
pub const VERSION_MAJOR: u16 = 1;
/// The minor version written (newer minors are read: compatible).
pub const VERSION_MINOR: u16 = 0;
/// Header bytes before the member table.
pub const HEADER_LEN: usize = 256;
/// Bytes per member entry.
pub const MEMBER_LEN: usize = 64;
/// Bytes of the name field (NUL-terminated inside).
pub const NAME_LEN: usize = 64;
/// The longest superblock: 255 members, rounded up to 4 KiB (SPDK's
/// `RAID_BDEV_SB_MAX_LENGTH`).
pub const MAX_LEN: usize = (HEADER_LEN + 255 * MEMBER_LEN).div_ceil(4096) * 4096;
/// Where the data starts on a member, before rounding to its optimal I/O
/// boundary: 1 MiB.
pub const DATA_OFFSET_BYTES: u64 = 1 << 20;

/// A RAID level, with SPDK's numbers and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Striping.
    Raid0,
    /// Mirroring.
    Raid1,
    /// Striping with distributed parity (full-stripe writes), SPDK's raid5f.
    Raid5f,
    /// Members one after another.
    Concat,
}

impl Level {
    /// SPDK's number for it (`enum raid_level`).
    pub fn code(self) -> u32 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5f => 95,
            Level::Concat => 99,
        }
    }

    /// The level with SPDK's number `code`.
    pub fn from_code(code: u32) -> Option<Level> {
        match code {
            0 => Some(Level::Raid0),
            1 => Some(Level::Raid1),
            95 => Some(Level::Raid5f),
            99 => Some(Level::Concat),
            _ => None,
        }
    }

    /// SPDK's name ("raid0", "raid1", "raid5f", "concat").
    pub fn name(self) -> &'static str {
        match self {
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Raid5f => "raid5f",
            Level::Concat => "concat",
        }
    }

    /// A level as SPDK's RPC takes it: its name or number, any case
    /// ("raid0"/"0", "raid1"/"1", "raid5f"/"5f", "concat").
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "raid0" | "0" => Some(Level::Raid0),
            "raid1" | "1" => Some(Level::Raid1),
            "raid5f" | "5f" => Some(Level::Raid5f),
            "concat" => Some(Level::Concat),
            _ => None,
        }
    }
}

/// A RAID's state, with SPDK's numbers and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RaidState {
    /// Serving.
    Online,
    /// Waiting for members.
    Configuring,
    /// Failed (too few members to serve).
    Offline,
}

impl RaidState {
    /// SPDK's number.
    pub fn code(self) -> u32 {
        match self {
            RaidState::Online => 0,
            RaidState::Configuring => 1,
            RaidState::Offline => 2,
        }
    }

    /// The state with SPDK's number `code`.
    pub fn from_code(code: u32) -> Option<RaidState> {
        match code {
            0 => Some(RaidState::Online),
            1 => Some(RaidState::Configuring),
            2 => Some(RaidState::Offline),
            _ => None,
        }
    }

    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            RaidState::Online => "online",
            RaidState::Configuring => "configuring",
            RaidState::Offline => "offline",
        }
    }
}

/// A member slot's state in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// No member in the slot.
    Missing,
    /// An active member.
    Configured,
    /// A member that failed (written out of the RAID).
    Failed,
    /// A spare.
    Spare,
}

impl MemberState {
    /// SPDK's number.
    pub fn code(self) -> u32 {
        match self {
            MemberState::Missing => 0,
            MemberState::Configured => 1,
            MemberState::Failed => 2,
            MemberState::Spare => 3,
        }
    }

    /// The state with SPDK's number `code`.
    pub fn from_code(code: u32) -> Option<MemberState> {
        match code {
            0 => Some(MemberState::Missing),
            1 => Some(MemberState::Configured),
            2 => Some(MemberState::Failed),
            3 => Some(MemberState::Spare),
            _ => None,
        }
    }
}

/// One entry of the member table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member bdev's UUID.
    pub uuid: [u8; 16],
    /// Where the RAID's data starts on the member, in blocks.
    pub data_offset: u64,
    /// Blocks of RAID data on the member.
    pub data_size: u64,
    /// Its state.
    pub state: MemberState,
    /// Flags (none defined; kept as read).
    pub flags: u32,
    /// Its slot in the RAID (the member's position in striping and in
    /// `base_bdevs_list`).
    pub slot: u8,
}

impl Member {
    /// The member's UUID as text.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }
}

/// A RAID superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The minor version it was written with.
    pub version_minor: u16,
    /// Flags (none defined; kept as read).
    pub flags: u32,
    /// The RAID's UUID.
    pub uuid: [u8; 16],
    /// The RAID bdev's name.
    pub name: String,
    /// The RAID's size in blocks.
    pub raid_size: u64,
    /// The block size of the RAID and of every member.
    pub block_size: u32,
    /// The level.
    pub level: Level,
    /// The strip size in blocks (0 for raid1).
    pub strip_size: u32,
    /// The RAID's state as last written.
    pub state: RaidState,
    /// Bumped on every write: the highest is the newest.
    pub seq_number: u64,
    /// Member slots of the RAID.
    pub num_base_bdevs: u8,
    /// The member table (`base_bdevs_size` entries).
    pub members: Vec<Member>,
}

/// Why bytes are not a valid superblock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbError {
    /// No "SPDKRAID" at byte 0: not a RAID member.
    #[error("no RAID superblock (signature is not SPDKRAID)")]
    NoSignature,
    /// Fewer bytes than the header says the superblock has: read `need`
    /// bytes and parse again.
    #[error("superblock needs {need} bytes, {have} read")]
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// A length field out of range.
    #[error(
        "superblock length {length} is outside {HEADER_LEN}..={MAX_LEN} or disagrees with its {members} member entries"
    )]
    Length {
        /// The length field.
        length: u32,
        /// The member table's size field.
        members: u8,
    },
    /// The CRC does not match the bytes.
    #[error("superblock CRC32C is {stored:#010x}, the bytes give {computed:#010x}")]
    Crc {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A major version this code does not read.
    #[error("superblock version {major}.{minor} is not supported (major {VERSION_MAJOR} is)")]
    Version {
        /// Major.
        major: u16,
        /// Minor.
        minor: u16,
    },
    /// A field with a value SPDK never writes.
    #[error("superblock field {field} has the unknown value {value}")]
    Field {
        /// Which.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A member entry's slot at or beyond the member count.
    #[error("superblock member entry {index} names slot {slot} of {num_base_bdevs}")]
    Slot {
        /// The entry.
        index: usize,
        /// Its slot.
        slot: u8,
        /// The RAID's member count.
        num_base_bdevs: u8,
    },
    /// The name is not UTF-8 text ending in a NUL inside its field.
    #[error("superblock name is not NUL-terminated UTF-8 text")]
    Name,
    /// A superblock to write that does not fit the format.
    #[error("superblock cannot be written: {0}")]
    Encode(String),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// CRC32C as SPDK's superblocks use it: reflected Castagnoli polynomial,
/// initial value 0, no final inversion.
pub fn crc32c(data: &[u8]) -> u32 {
    crate::crc32c::update(0, data)
}

impl Superblock {
    /// The bytes a superblock whose first bytes are `head` occupies (read
    /// that many, rounded up to blocks, before [`Superblock::parse`]).
    ///
    /// # Errors
    /// [`SbError::NoSignature`], [`SbError::TooShort`] under 16 bytes,
    /// [`SbError::Length`] for a length out of range.
    pub fn needed_len(head: &[u8]) -> Result<usize, SbError> {
        if head.len() < 16 {
            return Err(SbError::TooShort {
                need: HEADER_LEN,
                have: head.len(),
            });
        }
        if &head[..8] != SIGNATURE {
            return Err(SbError::NoSignature);
        }
        let length = u32_at(head, 12);
        if (length as usize) < HEADER_LEN || length as usize > MAX_LEN {
            return Err(SbError::Length { length, members: 0 });
        }
        Ok(length as usize)
    }

    /// Reads a superblock from the start of `buf` (at least its `length`
    /// bytes; trailing bytes are ignored).
    ///
    /// # Errors
    /// An [`SbError`] naming the first check that fails: signature,
    /// length, CRC, version, then each field.
    pub fn parse(buf: &[u8]) -> Result<Superblock, SbError> {
        let length = Superblock::needed_len(buf)?;
        if buf.len() < length {
            return Err(SbError::TooShort {
                need: length,
                have: buf.len(),
            });
        }
        let b = &buf[..length];
        let stored = u32_at(b, 16);
        let mut copy = b.to_vec();
        copy[16..20].fill(0);
        let computed = crc32c(&copy);
        if stored != computed {
            return Err(SbError::Crc { stored, computed });
        }
        let (major, minor) = (u16_at(b, 8), u16_at(b, 10));
        if major != VERSION_MAJOR {
            return Err(SbError::Version { major, minor });
        }
        let size = b[255];
        if length != HEADER_LEN + usize::from(size) * MEMBER_LEN {
            return Err(SbError::Length {
                length: length as u32,
                members: size,
            });
        }
        let name_field = &b[40..40 + NAME_LEN];
        let end = name_field
            .iter()
            .position(|&c| c == 0)
            .ok_or(SbError::Name)?;
        let name = std::str::from_utf8(&name_field[..end])
            .map_err(|_| SbError::Name)?
            .to_owned();
        let field = |field: &'static str, value: u32| SbError::Field {
            field,
            value: u64::from(value),
        };
        let level = Level::from_code(u32_at(b, 116)).ok_or(field("level", u32_at(b, 116)))?;
        let state = RaidState::from_code(u32_at(b, 124)).ok_or(field("state", u32_at(b, 124)))?;
        let block_size = u32_at(b, 112);
        if block_size < 512 || !block_size.is_power_of_two() {
            return Err(field("block_size", block_size));
        }
        let num_base_bdevs = b[136];
        let mut members = Vec::with_capacity(usize::from(size));
        for index in 0..usize::from(size) {
            let m = &b[HEADER_LEN + index * MEMBER_LEN..HEADER_LEN + (index + 1) * MEMBER_LEN];
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&m[..16]);
            let st = u32_at(m, 32);
            let slot = m[40];
            if slot >= num_base_bdevs {
                return Err(SbError::Slot {
                    index,
                    slot,
                    num_base_bdevs,
                });
            }
            members.push(Member {
                uuid,
                data_offset: u64_at(m, 16),
                data_size: u64_at(m, 24),
                state: MemberState::from_code(st).ok_or(field("member state", st))?,
                flags: u32_at(m, 36),
                slot,
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[24..40]);
        Ok(Superblock {
            version_minor: minor,
            flags: u32_at(b, 20),
            uuid,
            name,
            raid_size: u64_at(b, 104),
            block_size,
            level,
            strip_size: u32_at(b, 120),
            state,
            seq_number: u64_at(b, 128),
            num_base_bdevs,
            members,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.members.len() * MEMBER_LEN
    }

    /// Whether it has no member entries.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Its bytes, CRC included ([`Superblock::len`] of them; pad to the
    /// block size to write).
    ///
    /// # Errors
    /// [`SbError::Encode`] for a name too long (63 bytes at most) or
    /// containing NUL, or more than 255 members.
    pub fn encode(&self) -> Result<Vec<u8>, SbError> {
        if self.name.len() >= NAME_LEN || self.name.contains('\0') {
            return Err(SbError::Encode(format!(
                "name {:?}: at most {} bytes, no NUL",
                self.name,
                NAME_LEN - 1
            )));
        }
        let size = u8::try_from(self.members.len()).map_err(|_| {
            SbError::Encode(format!("{} members (255 at most)", self.members.len()))
        })?;
        let mut b = vec![0u8; self.len()];
        b[..8].copy_from_slice(SIGNATURE);
        b[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&self.version_minor.to_le_bytes());
        b[12..16].copy_from_slice(&(self.len() as u32).to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..40].copy_from_slice(&self.uuid);
        b[40..40 + self.name.len()].copy_from_slice(self.name.as_bytes());
        b[104..112].copy_from_slice(&self.raid_size.to_le_bytes());
        b[112..116].copy_from_slice(&self.block_size.to_le_bytes());
        b[116..120].copy_from_slice(&self.level.code().to_le_bytes());
        b[120..124].copy_from_slice(&self.strip_size.to_le_bytes());
        b[124..128].copy_from_slice(&self.state.code().to_le_bytes());
        b[128..136].copy_from_slice(&self.seq_number.to_le_bytes());
        b[136] = self.num_base_bdevs;
        b[255] = size;
        for (i, m) in self.members.iter().enumerate() {
            let e = &mut b[HEADER_LEN + i * MEMBER_LEN..HEADER_LEN + (i + 1) * MEMBER_LEN];
            e[..16].copy_from_slice(&m.uuid);
            e[16..24].copy_from_slice(&m.data_offset.to_le_bytes());
            e[24..32].copy_from_slice(&m.data_size.to_le_bytes());
            e[32..36].copy_from_slice(&m.state.code().to_le_bytes());
            e[36..40].copy_from_slice(&m.flags.to_le_bytes());
            e[40] = m.slot;
        }
        let crc = crc32c(&b);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// The RAID's UUID as text.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }

    /// The entry of the member with `uuid`, if it is one.
    pub fn member(&self, uuid: &[u8; 16]) -> Option<&Member> {
        self.members.iter().find(|m| &m.uuid == uuid)
    }
}

/// Where the data starts on a member with `block_size`-byte blocks and an
/// optimal I/O boundary of `optimal_io_boundary` blocks (0: none): 1 MiB,
/// rounded up to the boundary (SPDK's rule).
pub fn data_offset_blocks(block_size: u32, optimal_io_boundary: u32) -> u64 {
    let base = DATA_OFFSET_BYTES.div_ceil(u64::from(block_size.max(1)));
    match u64::from(optimal_io_boundary) {
        0 => base,
        b => base.div_ceil(b) * b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            version_minor: 0,
            flags: 0,
            uuid: [7; 16],
            name: "Raid9".into(),
            raid_size: 4096,
            block_size: 4096,
            level: Level::Concat,
            strip_size: 16,
            state: RaidState::Online,
            seq_number: 42,
            num_base_bdevs: 3,
            members: (0..3)
                .map(|i| Member {
                    uuid: [i as u8 + 1; 16],
                    data_offset: 256,
                    data_size: 1000 + i,
                    state: MemberState::Configured,
                    flags: 0,
                    slot: i as u8,
                })
                .collect(),
        }
    }

    #[test]
    fn crc32c_known_answer() {
        // RFC 3720's CRC32C of 32 zero bytes is 0x8a9136aa with the usual
        // initial ~0 and final inversion; SPDK's form (no inversions) is
        // checked against SPDK's own superblocks in the fixture test.
        let c = !crc32c_with_init(&[0u8; 32], !0);
        assert_eq!(c, 0x8a91_36aa);
    }

    fn crc32c_with_init(data: &[u8], init: u32) -> u32 {
        // The table form above with another initial value, for the RFC
        // vector: bytes are folded the same way.
        let mut crc = init;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn table_matches_bitwise() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(crc32c(&data), crc32c_with_init(&data, 0));
    }

    #[test]
    fn round_trip_and_every_check() {
        let sb = sample();
        let b = sb.encode().unwrap();
        assert_eq!(b.len(), HEADER_LEN + 3 * MEMBER_LEN);
        assert_eq!(Superblock::parse(&b).unwrap(), sb);
        // Padded to a block: trailing bytes ignored.
        let mut padded = b.clone();
        padded.resize(4096, 0xee);
        assert_eq!(Superblock::parse(&padded).unwrap(), sb);
        assert_eq!(
            Superblock::parse(&b[..300]),
            Err(SbError::TooShort {
                need: 448,
                have: 300
            })
        );
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(Superblock::parse(&bad), Err(SbError::NoSignature));
        let mut bad = b.clone();
        bad[300] ^= 1;
        assert!(matches!(Superblock::parse(&bad), Err(SbError::Crc { .. })));
        let reseal = |mut v: Vec<u8>| {
            v[16..20].fill(0);
            let c = crc32c(&v);
            v[16..20].copy_from_slice(&c.to_le_bytes());
            v
        };
        let mut bad = b.clone();
        bad[8] = 2;
        assert_eq!(
            Superblock::parse(&reseal(bad)),
            Err(SbError::Version { major: 2, minor: 0 })
        );
        let mut bad = b.clone();
        bad[116] = 5;
        assert_eq!(
            Superblock::parse(&reseal(bad)),
            Err(SbError::Field {
                field: "level",
                value: 5
            })
        );
        let mut bad = b.clone();
        bad[HEADER_LEN + MEMBER_LEN + 40] = 3;
        assert_eq!(
            Superblock::parse(&reseal(bad)),
            Err(SbError::Slot {
                index: 1,
                slot: 3,
                num_base_bdevs: 3
            })
        );
        let mut bad = b.clone();
        bad[40..104].fill(b'a');
        assert_eq!(Superblock::parse(&reseal(bad)), Err(SbError::Name));
        let mut bad = b.clone();
        bad[255] = 2;
        assert!(matches!(
            Superblock::parse(&reseal(bad)),
            Err(SbError::Length { .. })
        ));
        let mut long = sb.clone();
        long.name = "n".repeat(64);
        assert!(matches!(long.encode(), Err(SbError::Encode(_))));
    }

    #[test]
    fn levels_parse_as_spdk_names_them() {
        for (s, l) in [
            ("raid0", Level::Raid0),
            ("0", Level::Raid0),
            ("RAID1", Level::Raid1),
            ("1", Level::Raid1),
            ("5f", Level::Raid5f),
            ("Concat", Level::Concat),
        ] {
            assert_eq!(Level::parse(s), Some(l), "{s}");
            assert_eq!(Level::from_code(l.code()), Some(l));
        }
        assert_eq!(Level::parse("raid6"), None);
    }

    #[test]
    fn data_offset_rounds_to_the_boundary() {
        assert_eq!(data_offset_blocks(512, 0), 2048);
        assert_eq!(data_offset_blocks(4096, 0), 256);
        assert_eq!(data_offset_blocks(4096, 96), 288);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = Superblock::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_valid_headers(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024), len in 0u32..2000, size in 0u8..20) {
            let mut b = SIGNATURE.to_vec();
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            if b.len() > 255 { b[255] = size; }
            let _ = Superblock::parse(&b);
        }
    }
}
