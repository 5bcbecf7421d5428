//! The malloc bdev: a RAM disk in DMA memory. Every I/O type is done by the
//! CPU on the submitting core. Zero-copy windows ([`IoType::Zcopy`]) lend
//! the disk's own memory: a reader or writer that moves the data itself
//! (the crypto vbdev's cipher) saves malloc's copy.

pub mod rpc;

use serde_json::json;

use crate::{Bdev, BdevError, BdevOps, BdevProps, IoHandle, IoStatus, IoType, Medium, ZcopyPhase};

struct Malloc {
    name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: String,
    /// The disk.
    disk: Medium,
}

impl Malloc {
    fn run(&self, io: &mut IoHandle) -> Result<IoStatus, BdevError> {
        let r = io.io();
        let bs = self.block_size as usize;
        let off = r.offset_blocks() as usize * bs;
        let len = r.num_blocks() as usize * bs;
        Ok(match r.io_type() {
            IoType::Read => {
                self.disk.read_into(off, io)?;
                IoStatus::Success
            }
            IoType::Write => {
                self.disk.write_from(off, io)?;
                IoStatus::Success
            }
            IoType::Compare => {
                if self.disk.equals(off, io)? {
                    IoStatus::Success
                } else {
                    IoStatus::Miscompare
                }
            }
            IoType::Unmap | IoType::WriteZeroes => {
                self.disk.fill(off, len, 0)?;
                IoStatus::Success
            }
            IoType::Copy => {
                let src = r.src_offset_blocks() as usize * bs;
                self.disk.copy_within(src, off, len)?;
                IoStatus::Success
            }
            IoType::Flush | IoType::Reset => IoStatus::Success,
            // Not announced: the layer answers these.
            IoType::SeekData | IoType::SeekHole | IoType::Abort => IoStatus::NotSupported,
            IoType::Zcopy => match r.zcopy_phase() {
                // The window is the disk itself: populated already, and
                // what the submitter writes there is committed as written.
                Some(ZcopyPhase::Start { .. }) => {
                    let seg = self.disk.segment(off, len)?;
                    io.io_mut().set_zcopy_iovs(&[seg])?;
                    IoStatus::Success
                }
                Some(ZcopyPhase::End { .. }) | None => IoStatus::Success,
            },
        })
    }
}

impl BdevOps for Malloc {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), mut io: IoHandle) {
        let status = self.run(&mut io).unwrap_or_else(|e| {
            log::error!("malloc {}: {e}", self.name);
            IoStatus::Failed
        });
        io.complete(status);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        !matches!(ty, IoType::SeekData | IoType::SeekHole | IoType::Abort)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "malloc": { "size_bytes": self.num_blocks * self.block_size as u64 } })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_malloc_create",
            "params": {
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": self.uuid,
            }
        }))
    }
}

/// Creates a malloc bdev of `num_blocks` blocks of `block_size` bytes in the
/// layer's DMA memory (zeroed).
///
/// # Errors
/// [`BdevError::Invalid`] for a bad geometry or UUID; [`BdevError::Module`]
/// when the memory cannot be had; [`BdevError::Exists`] for a taken name.
pub fn create(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<&str>,
) -> Result<Bdev, BdevError> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{block_size}: a power of two from 512 to 65536"),
        ));
    }
    if num_blocks == 0 {
        return Err(BdevError::invalid("num_blocks", "zero"));
    }
    let bytes = num_blocks
        .checked_mul(block_size as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| BdevError::invalid("num_blocks", "size overflows"))?;
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let mut data = crate::memory()
        .alloc(bytes, 4096)
        .map_err(|e| BdevError::Module {
            module: "malloc".into(),
            reason: e.to_string(),
        })?;
    data.fill(0);
    let mut props = BdevProps::new(name, "Malloc disk", block_size, num_blocks);
    props.uuid = Some(uuid.clone());
    crate::register(
        "malloc",
        props,
        Malloc {
            name: name.to_owned(),
            block_size,
            num_blocks,
            uuid,
            disk: Medium::new(data),
        },
    )
}

/// Deletes a malloc bdev.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no malloc bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "malloc")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
