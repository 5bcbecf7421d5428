//! Accounting snapshots.

/// One per-core cache size class, summed over all caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStats {
    /// Buffer size of the class.
    pub size: usize,
    /// Buffers sitting in caches, ready to hand out.
    pub cached: usize,
    /// Buffers handed out by caches and not yet returned.
    pub outstanding: usize,
}

/// A snapshot of a [`crate::DmaMemory`]'s accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaStats {
    /// The configured limit in bytes.
    pub limit: usize,
    /// Bytes reserved in regions.
    pub reserved: usize,
    /// Bytes allocated (including buffers held by caches).
    pub in_use: usize,
    /// Most bytes ever in use at once.
    pub high_water: usize,
    /// Number of regions.
    pub regions: usize,
    /// Live per-core caches.
    pub caches: usize,
    /// Per size class of the caches.
    pub classes: Vec<ClassStats>,
}
