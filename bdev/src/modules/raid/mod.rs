//! RAID (issue 17): so far the parts the module will stand on: the
//! on-disk superblock's format ([`superblock`]: SPDK's, read and written
//! byte for byte, checked against members SPDK v24.09 made) and its reading
//! and writing through a member's channel ([`sb_io`]); the layouts of
//! [`raid0`] and [`concat`] (block and range mapping, SPDK's, checked
//! against SPDK's raid0 data in the fixtures). The RAID bdev module itself
//! (the levels' I/O over members with the layer's fan-out, examine and
//! assembly, the `bdev_raid_*` methods, degraded mode and rebuild) is not
//! built yet.

pub mod concat;
pub mod raid0;
pub mod sb_io;
pub mod superblock;
