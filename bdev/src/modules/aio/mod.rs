//! The AIO bdev: a file or a block device through Linux native AIO, as
//! SPDK's `bdev_aio`. Opened with `O_DIRECT` where the file system allows
//! it (else through the page cache, said in `bdev_get_bdevs`); one AIO
//! context per core, submitted from the reactor and reaped by its poller
//! from the context's ring in user space (no thread, no system call per
//! poll). FLUSH is an `fdatasync` through AIO (`IOCB_CMD_FDSYNC`; where
//! the kernel refuses it, `fdatasync` itself); a write with FUA carries
//! `RWF_DSYNC`. On a file, unmap punches a hole and write-zeroes zeroes a
//! range (`fallocate`; both read back zeros), each announced only where
//! the file system does it; on a block device they are `BLKDISCARD` (what
//! reads after it is the device's) and `BLKZEROOUT`. These and the
//! fallback `fdatasync` are system calls made on the reactor, short on
//! the devices this serves. `rescan` follows the file's new size.

pub(crate) mod file;
pub mod rpc;
mod sys;

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use serde_json::json;

use crate::{Bdev, BdevError, BdevOps, IoHandle, IoStatus, IoType};
use file::{BLKDISCARD, BLKZEROOUT, File, Spec};
use reactor::{PollStatus, Poller};
use sys::{CMD_FDSYNC, CMD_PREADV, CMD_PWRITEV, Context, IoEvent, Iocb, RWF_DSYNC};

/// I/Os in flight per core.
const DEPTH: u32 = 128;
/// Completions reaped per poll.
const REAP: usize = 32;

struct Aio {
    spec: Spec,
    file: Arc<File>,
}

/// A core's AIO context and its poller.
pub struct AioChannel {
    ctx: std::rc::Rc<Context>,
    poller: Poller,
    /// FDSYNC through AIO was refused: flush with fdatasync.
    sync_fallback: Cell<bool>,
}

impl Drop for AioChannel {
    fn drop(&mut self) {
        self.poller.unregister();
    }
}

impl Aio {
    fn run_sync(&self, ty: IoType, off: u64, len: u64) -> IoStatus {
        let fd = self.file.fd.as_raw_fd();
        let r = if self.file.block_device {
            let range = [off, len];
            let req = if ty == IoType::Unmap {
                BLKDISCARD
            } else {
                BLKZEROOUT
            };
            // SAFETY: the ioctls read two u64s from `range`.
            unsafe { libc::ioctl(fd, req, range.as_ptr()) }
        } else {
            let mode = if ty == IoType::Unmap {
                libc::FALLOC_FL_PUNCH_HOLE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
            // SAFETY: fallocate on the open descriptor within the file.
            unsafe {
                libc::fallocate(
                    fd,
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            }
        };
        if r == 0 {
            IoStatus::Success
        } else {
            log::warn!(
                "aio {}: {ty:?} at byte {off}: {}",
                self.spec.name,
                std::io::Error::last_os_error()
            );
            IoStatus::Failed
        }
    }
}

/// What a completed request is: the handle and the bytes it expects.
fn finish(ev: &IoEvent) {
    // SAFETY: `data` is the raw handle `submit` gave the kernel, handed
    // back exactly once by its completion.
    let h = IoHandle::new(unsafe {
        std::ptr::NonNull::new_unchecked(ev.data as *mut crate::io::BdevIo)
    });
    let io = h.io();
    let want = match io.io_type() {
        IoType::Read | IoType::Write => io.data_len() as i64,
        _ => 0,
    };
    let status = if ev.res == want || (want == 0 && ev.res >= 0) {
        IoStatus::Success
    } else {
        if ev.res < 0 {
            log::warn!(
                "aio: {:?} at block {}: {}",
                io.io_type(),
                io.offset_blocks(),
                std::io::Error::from_raw_os_error(-ev.res as i32)
            );
        } else {
            log::warn!(
                "aio: {:?} at block {}: {} of {want} bytes",
                io.io_type(),
                io.offset_blocks(),
                ev.res
            );
        }
        IoStatus::Failed
    };
    h.complete(status);
}

impl BdevOps for Aio {
    type Channel = AioChannel;

    fn create_channel(&self, core: reactor::CoreId) -> Result<AioChannel, String> {
        let ctx = std::rc::Rc::new(
            Context::new(DEPTH)
                .map_err(|e| format!("io_setup: {}", std::io::Error::from_raw_os_error(e)))?,
        );
        let c = std::rc::Rc::downgrade(&ctx);
        let mut events = [IoEvent::default(); REAP];
        let poller =
            reactor::register_poller(format!("aio_{}_core{core}", self.spec.name), move || {
                let Some(ctx) = c.upgrade() else {
                    return PollStatus::Idle;
                };
                let n = ctx.reap(&mut events);
                drop(ctx);
                for ev in &events[..n] {
                    finish(ev);
                }
                if n > 0 {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            });
        Ok(AioChannel {
            ctx,
            poller,
            sync_fallback: Cell::new(false),
        })
    }

    fn submit(&self, ch: &AioChannel, io: IoHandle) {
        let r = io.io();
        let bs = u64::from(self.spec.block_size);
        let (ty, off, len) = (r.io_type(), r.offset_blocks() * bs, r.num_blocks() * bs);
        let mut cb = Iocb {
            fildes: self.file.fd.as_raw_fd() as u32,
            ..Iocb::default()
        };
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; crate::io::MAX_IOV];
        match ty {
            IoType::Read | IoType::Write => {
                let n = r.iovs().len();
                for (d, s) in iov.iter_mut().zip(r.iovs()) {
                    d.iov_base = s.ptr.cast();
                    d.iov_len = s.len;
                }
                cb.lio_opcode = if ty == IoType::Read {
                    CMD_PREADV
                } else {
                    CMD_PWRITEV
                };
                cb.buf = iov.as_ptr() as u64;
                cb.nbytes = n as u64;
                cb.offset = off as i64;
                if ty == IoType::Write && r.fua() {
                    cb.rw_flags = RWF_DSYNC;
                }
            }
            IoType::Flush if ch.sync_fallback.get() => {
                // SAFETY: fdatasync on the open descriptor.
                let ok = unsafe { libc::fdatasync(self.file.fd.as_raw_fd()) } == 0;
                return io.complete(if ok {
                    IoStatus::Success
                } else {
                    IoStatus::Failed
                });
            }
            IoType::Flush => cb.lio_opcode = CMD_FDSYNC,
            IoType::Unmap | IoType::WriteZeroes => {
                let st = self.run_sync(ty, off, len);
                return io.complete(st);
            }
            IoType::Reset => return io.complete(IoStatus::Success),
            _ => return io.complete(IoStatus::NotSupported),
        }
        cb.data = io.into_raw() as u64;
        if let Err(e) = ch.ctx.submit(&mut cb) {
            // SAFETY: the kernel refused the request: the handle is ours
            // again, rebuilt once from the raw pointer just made.
            let h = IoHandle::new(unsafe {
                std::ptr::NonNull::new_unchecked(cb.data as *mut crate::io::BdevIo)
            });
            match e {
                libc::EAGAIN => h.complete(IoStatus::NoMem),
                libc::EINVAL if ty == IoType::Flush => {
                    ch.sync_fallback.set(true);
                    // SAFETY: fdatasync on the open descriptor.
                    let ok = unsafe { libc::fdatasync(self.file.fd.as_raw_fd()) } == 0;
                    h.complete(if ok {
                        IoStatus::Success
                    } else {
                        IoStatus::Failed
                    });
                }
                e => {
                    log::warn!(
                        "aio {}: io_submit {ty:?}: {}",
                        self.spec.name,
                        std::io::Error::from_raw_os_error(e)
                    );
                    h.complete(IoStatus::Failed);
                }
            }
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        file::supported(&self.spec, &self.file, ty)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "aio": file::info(&self.spec, &self.file) })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_aio_create",
            "params": {
                "name": self.spec.name,
                "filename": self.spec.filename,
                "block_size": self.spec.block_size,
                "readonly": self.spec.readonly,
                "uuid": self.spec.uuid,
            }
        }))
    }

    fn destruct(&self) {
        file::forget(&self.spec.name);
    }
}

/// Creates AIO bdev `name` over `filename` (a regular file or a block
/// device) with `block_size`-byte blocks: given, or the block device's
/// logical block size (a regular file needs it given, as SPDK).
///
/// # Errors
/// As [`file::prepare`]; [`BdevError::Exists`] for a taken name.
pub fn create(
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    readonly: bool,
    uuid: Option<&str>,
) -> Result<Bdev, BdevError> {
    let (spec, file, props) =
        file::prepare(name, filename, block_size, readonly, uuid, "AIO disk")?;
    let ops = Aio {
        spec: spec.clone(),
        file: Arc::new(file),
    };
    file::register("aio", spec, props, ops)
}

/// Re-reads the size of AIO bdev `name`'s file; a new size is the bdev's
/// (its openers get a resize event).
///
/// # Errors
/// [`BdevError::NotFound`]; the file no longer opening.
pub fn rescan(name: &str) -> Result<u64, BdevError> {
    file::rescan(name, "aio")
}

/// Deletes AIO bdev `name`.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no AIO bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "aio")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
