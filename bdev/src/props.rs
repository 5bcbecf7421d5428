//! What a module says about a bdev it registers: a plain value, standing
//! alone (the registry, channels and modules read it).

/// What a module says about a bdev it registers.
#[derive(Clone, Debug)]
pub struct BdevProps {
    /// Unique name.
    pub name: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// UUID; one is made up when `None`.
    pub uuid: Option<String>,
    /// Product name shown by `bdev_get_bdevs` ("Malloc disk", "NVMe disk").
    pub product_name: String,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Byte alignment the device needs for data buffers (1 = none); the
    /// layer bounce-buffers misaligned I/O.
    pub required_alignment: usize,
    /// Most blocks one I/O may carry; the layer splits larger ones.
    pub max_transfer_blocks: Option<u64>,
    /// I/O must not cross multiples of this many blocks; the layer splits.
    pub optimal_io_boundary: Option<u64>,
    /// A volatile write cache sits in front of the media (flush matters).
    pub write_cache: bool,
    /// How long a RESET waits for the I/O in flight to end before the
    /// module gets it (SPDK's `reset_io_drain_timeout`): `None` sends it
    /// at once, and the module aborts what it holds.
    pub reset_io_drain_timeout: Option<std::time::Duration>,
    /// When the device was made (RFC 3339; Longhorn's volumes carry it),
    /// shown by `bdev_get_bdevs`.
    pub creation_time: Option<String>,
}

impl BdevProps {
    /// Properties with defaults for everything but the name and geometry.
    pub fn new(
        name: impl Into<String>,
        product_name: impl Into<String>,
        block_size: u32,
        num_blocks: u64,
    ) -> Self {
        BdevProps {
            name: name.into(),
            aliases: Vec::new(),
            uuid: None,
            product_name: product_name.into(),
            block_size,
            num_blocks,
            required_alignment: 1,
            max_transfer_blocks: None,
            optimal_io_boundary: None,
            write_cache: false,
            reset_io_drain_timeout: None,
            creation_time: None,
        }
    }
}
