//! RAID (issue 17): so far the on-disk superblock only: its format
//! ([`superblock`]: SPDK's, read and written byte for byte, checked against
//! members SPDK v24.09 made) and its reading and writing through a member's
//! channel ([`sb_io`]). The RAID bdev module itself (levels, examine and
//! assembly, the `bdev_raid_*` methods, degraded mode and rebuild) is not
//! built yet.

pub mod sb_io;
pub mod superblock;
