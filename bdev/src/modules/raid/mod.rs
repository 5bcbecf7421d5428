//! RAID (issue 17): so far the on-disk superblock only
//! ([`superblock`]: SPDK's format, read and written byte for byte, checked
//! against members SPDK v24.09 made). The RAID bdev module itself (levels,
//! examine and assembly, the `bdev_raid_*` methods, degraded mode and
//! rebuild) is not built yet.

pub mod superblock;
