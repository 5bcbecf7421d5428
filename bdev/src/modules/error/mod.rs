//! The error-injection vbdev (`EE_<base>`): passes I/O to its base, and fails,
//! corrupts or refuses (NoMem) the next N I/Os of chosen types on request
//! (`bdev_error_inject_error`) — for reliability tests of what sits above.

pub mod rpc;

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use serde_json::json;

use super::passthru::{Base, pass_down};
use crate::{Bdev, BdevChannel, BdevError, BdevIo, BdevOps, BdevProps, IoHandle, IoStatus, IoType};

/// What to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// Nothing (cleared).
    None = 0,
    /// Complete with a failure without reaching the base.
    Failure = 1,
    /// Pass to the base, then flip the first byte of the data (reads) or of
    /// what is written (writes: the caller's buffer is not touched; a copy
    /// is not made, so the base receives the data unchanged and the read
    /// back is corrupted instead).
    CorruptData = 2,
    /// Answer NoMem (the layer queues and retries).
    NoMem = 3,
}

impl std::str::FromStr for ErrorKind {
    type Err = BdevError;
    fn from_str(s: &str) -> Result<Self, BdevError> {
        Ok(match s {
            "failure" => ErrorKind::Failure,
            "corrupt_data" => ErrorKind::CorruptData,
            "nomem" => ErrorKind::NoMem,
            other => {
                return Err(BdevError::invalid(
                    "error_type",
                    format!("{other:?}: failure, corrupt_data or nomem"),
                ));
            }
        })
    }
}

/// Which I/O types an injection applies to.
pub fn parse_io_type(s: &str) -> Result<Vec<IoType>, BdevError> {
    Ok(match s {
        "all" | "clear" => IoType::ALL.to_vec(),
        "read" => vec![IoType::Read],
        "write" => vec![IoType::Write],
        "unmap" => vec![IoType::Unmap],
        "flush" => vec![IoType::Flush],
        "write_zeroes" => vec![IoType::WriteZeroes],
        "reset" => vec![IoType::Reset],
        "compare" => vec![IoType::Compare],
        other => {
            return Err(BdevError::invalid(
                "io_type",
                format!(
                    "{other:?}: read, write, unmap, flush, write_zeroes, reset, compare, all or clear"
                ),
            ));
        }
    })
}

struct Injection {
    kind: AtomicU8,
    count: AtomicU64,
}

/// The error bdev's function table.
pub struct ErrorBdev {
    name: String,
    uuid: String,
    base: Base,
    inject: [Injection; IoType::ALL.len()],
}

/// Per-core state: the base's channel.
pub struct ErrorChannel {
    base: BdevChannel,
}

impl ErrorBdev {
    /// Takes one injection for `ty`, if armed.
    fn take(&self, ty: IoType) -> ErrorKind {
        let i = &self.inject[ty.index()];
        let kind = i.kind.load(Ordering::Acquire);
        if kind == ErrorKind::None as u8 {
            return ErrorKind::None;
        }
        if i.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_err()
        {
            return ErrorKind::None;
        }
        match kind {
            1 => ErrorKind::Failure,
            2 => ErrorKind::CorruptData,
            3 => ErrorKind::NoMem,
            _ => ErrorKind::None,
        }
    }

    /// Arms (or with `ErrorKind::None`, clears) an injection for `count`
    /// I/Os of each of `types`.
    pub fn inject(&self, types: &[IoType], kind: ErrorKind, count: u64) {
        for t in types {
            let i = &self.inject[t.index()];
            i.count.store(
                if kind == ErrorKind::None { 0 } else { count },
                Ordering::Release,
            );
            i.kind.store(kind as u8, Ordering::Release);
        }
    }

    /// Injections still armed per type: (type, kind, remaining).
    pub fn pending(&self) -> Vec<(IoType, u8, u64)> {
        IoType::ALL
            .iter()
            .map(|t| {
                let i = &self.inject[t.index()];
                (
                    *t,
                    i.kind.load(Ordering::Acquire),
                    i.count.load(Ordering::Acquire),
                )
            })
            .filter(|x| x.1 != 0 && x.2 != 0)
            .collect()
    }
}

fn corrupt_done(mut parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    if status.is_success()
        && let Some(first) = parent.data_mut().find(|s| !s.is_empty())
    {
        first[0] ^= 0xff;
    }
    parent.complete(status);
}

impl BdevOps for ErrorBdev {
    type Channel = ErrorChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<ErrorChannel, String> {
        Ok(ErrorChannel {
            base: self.base.channel()?,
        })
    }

    fn submit(&self, ch: &ErrorChannel, io: IoHandle) {
        let ty = io.io().io_type();
        match self.take(ty) {
            ErrorKind::None => pass_down(&ch.base, io),
            ErrorKind::Failure => io.complete(IoStatus::Failed),
            ErrorKind::NoMem => io.complete(IoStatus::NoMem),
            ErrorKind::CorruptData if ty == IoType::Read => io.forward(&ch.base, corrupt_done),
            // Corruption is applied on reads; other types pass unharmed.
            ErrorKind::CorruptData => pass_down(&ch.base, io),
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        // Zero-copy windows are not passed through (the window would have
        // to stay open across the base's and this bdev's callbacks).
        ty != IoType::Zcopy && self.base.bdev.io_type_supported(ty)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "error_disk": { "base_bdev": self.base.bdev.name() } })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({ "method": "bdev_error_create", "params": {
                "base_name": self.base.bdev.name(),
                "uuid": self.uuid,
            } }))
    }

    fn destruct(&self) {
        self.base.close();
    }
}

/// Creates error bdev `EE_<base_name>` over `base_name`, with `uuid` (or a
/// new one).
///
/// # Errors
/// As [`super::passthru::create`].
pub fn create(base_name: &str, uuid: Option<&str>) -> Result<Bdev, BdevError> {
    let name = format!("EE_{base_name}");
    if crate::get(&name).is_some() {
        return Err(BdevError::Exists(name));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let base = Base::open(base_name, &name, "error")?;
    let b = &base.bdev;
    let mut props = BdevProps::new(
        &name,
        "Error Injection Disk",
        b.block_size(),
        b.num_blocks(),
    );
    props.uuid = Some(uuid.clone());
    let none = || Injection {
        kind: AtomicU8::new(0),
        count: AtomicU64::new(0),
    };
    crate::register(
        "error",
        props,
        ErrorBdev {
            name: name.clone(),
            uuid,
            base,
            inject: std::array::from_fn(|_| none()),
        },
    )
}

/// Arms an injection on error bdev `name` (`bdev_error_inject_error`):
/// `io_type` is read, write, unmap, flush, write_zeroes, reset, compare,
/// all or clear; `kind` failure, corrupt_data or nomem.
///
/// # Errors
/// [`BdevError::NotFound`], or [`BdevError::Invalid`] naming the bad value.
pub fn inject_error(name: &str, io_type: &str, kind: &str, count: u64) -> Result<(), BdevError> {
    let b = crate::get(name)
        .filter(|b| b.module() == "error")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let e = b
        .ops_as::<ErrorBdev>()
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let types = parse_io_type(io_type)?;
    let kind = if io_type == "clear" {
        ErrorKind::None
    } else {
        kind.parse()?
    };
    if kind != ErrorKind::None && count == 0 {
        return Err(BdevError::invalid("num", "zero"));
    }
    e.inject(&types, kind, count);
    log::info!(
        "{}: injecting {kind:?} into the next {count} {io_type} I/Os",
        e.name
    );
    Ok(())
}

/// Deletes error bdev `name`.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no error bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "error")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
