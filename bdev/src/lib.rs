//! The block-device (bdev) layer: registry, descriptors and claims, events,
//! examine, per-core I/O channels, pooled `BdevIo` objects, splitting and
//! bounce buffers, statistics; its modules live in `modules/<name>/`.
//!
//! Owns: every bdev and virtual bdev (malloc, null, delay, error, nvme,
//! passthrough, crypto, and later RAID and logical volumes).
//!
//! Must not: allocate, lock or hop cores on the I/O path, or complete an I/O
//! type it does not support with anything but a NOT-SUPPORTED status.

pub mod modules;
