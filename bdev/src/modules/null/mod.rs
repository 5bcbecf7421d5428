//! The null bdev: discards writes, reads zeroes (or a byte pattern, or leaves
//! the buffer untouched for benchmarks), and can be resized
//! (`bdev_null_resize`) — the base the resize-event tests stand on.

pub mod rpc;

use std::sync::atomic::{AtomicU16, Ordering};

use serde_json::json;

use crate::{Bdev, BdevError, BdevOps, BdevProps, IoHandle, IoStatus, IoType};

/// What reads return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFill {
    /// Zeroes.
    Zeroes,
    /// Every byte set to this value.
    Pattern(u8),
    /// The buffer is left as it is (SPDK's null bdev; for benchmarks).
    Untouched,
}

static RPC_FILL: AtomicU16 = AtomicU16::new(0);

impl ReadFill {
    fn code(self) -> u16 {
        match self {
            ReadFill::Zeroes => 0,
            ReadFill::Pattern(b) => 0x100 | u16::from(b),
            ReadFill::Untouched => 0x200,
        }
    }

    fn from_code(c: u16) -> ReadFill {
        match c {
            0x200 => ReadFill::Untouched,
            c if c & 0x100 != 0 => ReadFill::Pattern(c as u8),
            _ => ReadFill::Zeroes,
        }
    }
}

/// Sets what reads of null bdevs created by `bdev_null_create` return from
/// now on: zeroes by default (an appliance must not hand one client's data
/// back to another through a reused buffer); a benchmark whose buffers are
/// its own (bdevperf) leaves them untouched, as SPDK's null bdev does.
pub fn set_rpc_read_fill(fill: ReadFill) {
    RPC_FILL.store(fill.code(), Ordering::Relaxed);
}

/// What reads of null bdevs created by `bdev_null_create` return
/// ([`set_rpc_read_fill`]).
pub fn rpc_read_fill() -> ReadFill {
    ReadFill::from_code(RPC_FILL.load(Ordering::Relaxed))
}

struct Null {
    name: String,
    block_size: u32,
    fill: ReadFill,
    uuid: String,
}

impl BdevOps for Null {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), mut io: IoHandle) {
        if io.io().io_type() == IoType::Read {
            match self.fill {
                ReadFill::Zeroes => io.fill_data(0),
                ReadFill::Pattern(b) => io.fill_data(b),
                ReadFill::Untouched => {}
            }
        }
        io.complete(IoStatus::Success);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(
            ty,
            IoType::Read
                | IoType::Write
                | IoType::Flush
                | IoType::Unmap
                | IoType::WriteZeroes
                | IoType::Reset
        )
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        let bdev = crate::get(&self.name)?;
        Some(json!({
            "method": "bdev_null_create",
            "params": {
                "name": self.name,
                "num_blocks": bdev.num_blocks(),
                "block_size": self.block_size,
                "uuid": self.uuid,
            }
        }))
    }
}

/// Creates a null bdev of `num_blocks` blocks of `block_size` bytes.
///
/// # Errors
/// [`BdevError::Invalid`] for a bad geometry or UUID,
/// [`BdevError::Exists`] for a taken name.
pub fn create(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<&str>,
    fill: ReadFill,
) -> Result<Bdev, BdevError> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{block_size}: a power of two from 512 to 65536"),
        ));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let mut props = BdevProps::new(name, "Null disk", block_size, num_blocks);
    props.uuid = Some(uuid.clone());
    crate::register(
        "null",
        props,
        Null {
            name: name.to_owned(),
            block_size,
            fill,
            uuid,
        },
    )
}

/// Resizes a null bdev to `new_size_mib` MiB (SPDK's `bdev_null_resize`):
/// every opener, and every vbdev stacked on it, sees Resize.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no null bdev of that name;
/// [`BdevError::Invalid`] for a size that is not a whole number of blocks.
pub fn resize(name: &str, new_size_mib: u64) -> Result<(), BdevError> {
    let bdev = crate::get(name)
        .filter(|b| b.module() == "null")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let bytes = new_size_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| BdevError::invalid("new_size", "overflows"))?;
    let bs = bdev.block_size() as u64;
    if bytes == 0 || bytes % bs != 0 {
        return Err(BdevError::invalid(
            "new_size",
            format!("{new_size_mib} MiB is not a whole number of {bs}-byte blocks"),
        ));
    }
    bdev.notify_blockcnt_change(bytes / bs);
    Ok(())
}

/// Deletes a null bdev.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no null bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "null")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
