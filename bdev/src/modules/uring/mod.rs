//! The io_uring bdev: a file or a block device through io_uring, as
//! SPDK's `bdev_uring`. The file is opened as the AIO bdev opens it
//! (`O_DIRECT` where the file system allows it); one ring per core,
//! requests submitted from the reactor and completions reaped from the
//! ring's shared memory by its poller (no thread, no system call per
//! poll). Everything is asynchronous: FLUSH is `fdatasync` through the
//! ring (`IORING_OP_FSYNC` with `DATASYNC`), FUA is `RWF_DSYNC`, unmap and
//! write-zeroes are `fallocate` through the ring (punch hole, zero range:
//! both read back zeros, each announced only where the file or device
//! does it).

pub mod rpc;

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};
use serde_json::json;

use super::aio::file::{self, File, Spec};
use crate::{Bdev, BdevError, BdevOps, IoHandle, IoStatus, IoType};
use reactor::{PollStatus, Poller};

/// Submission queue entries per core.
const DEPTH: u32 = 128;
/// Completions reaped per poll.
const REAP: usize = 32;

struct Uring {
    spec: Spec,
    file: Arc<File>,
}

/// A core's ring, the iovec arrays of the requests in it, and its poller.
pub struct UringChannel {
    ring: Rc<RefCell<IoUring>>,
    slab: Rc<RefCell<Slab>>,
    poller: Poller,
}

/// The iovec arrays of reads and writes in the ring: they must outlive
/// the submission (which a refused `io_uring_enter` defers to the next
/// poll), so they live here, one per request, until it completes.
struct Slab {
    vecs: Vec<[libc::iovec; crate::io::MAX_IOV]>,
    free: Vec<usize>,
}

impl Slab {
    fn new(n: usize) -> Slab {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Slab {
            vecs: vec![[empty; crate::io::MAX_IOV]; n],
            free: (0..n).collect(),
        }
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        self.poller.unregister();
    }
}

fn handle(data: u64) -> IoHandle {
    // SAFETY: `data` is the raw handle `submit` put in the request, handed
    // back exactly once (by its completion, or by a refused submission).
    IoHandle::new(unsafe { std::ptr::NonNull::new_unchecked(data as *mut crate::io::BdevIo) })
}

fn finish(slab: &RefCell<Slab>, data: u64, res: i32) {
    let mut h = handle(data);
    // The request's iovec array, if it had one, is free again.
    let slot = std::mem::take(&mut h.io_mut().module_ctx[0]);
    if slot != 0 {
        slab.borrow_mut().free.push(slot as usize - 1);
    }
    let io = h.io();
    let want = match io.io_type() {
        IoType::Read | IoType::Write => io.data_len() as i64,
        _ => 0,
    };
    let res = i64::from(res);
    let status = if res == want || (want == 0 && res >= 0) {
        IoStatus::Success
    } else {
        if res < 0 {
            log::warn!(
                "uring: {:?} at block {}: {}",
                io.io_type(),
                io.offset_blocks(),
                std::io::Error::from_raw_os_error(-res as i32)
            );
        } else {
            log::warn!(
                "uring: {:?} at block {}: {res} of {want} bytes",
                io.io_type(),
                io.offset_blocks()
            );
        }
        IoStatus::Failed
    };
    h.complete(status);
}

/// A request the ring did not take: its iovec array back, and NoMem (the
/// layer retries it).
fn finish_refused(slab: &RefCell<Slab>, mut h: IoHandle) {
    let slot = std::mem::take(&mut h.io_mut().module_ctx[0]);
    if slot != 0 {
        slab.borrow_mut().free.push(slot as usize - 1);
    }
    h.complete(IoStatus::NoMem);
}

impl BdevOps for Uring {
    type Channel = UringChannel;

    fn create_channel(&self, core: reactor::CoreId) -> Result<UringChannel, String> {
        let ring = IoUring::new(DEPTH).map_err(|e| format!("io_uring_setup: {e}"))?;
        let ring = Rc::new(RefCell::new(ring));
        let slab = Rc::new(RefCell::new(Slab::new(DEPTH as usize)));
        let r = Rc::downgrade(&ring);
        let sl = Rc::downgrade(&slab);
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(REAP);
        let poller =
            reactor::register_poller(format!("uring_{}_core{core}", self.spec.name), move || {
                let (Some(ring), Some(slab)) = (r.upgrade(), sl.upgrade()) else {
                    return PollStatus::Idle;
                };
                let Ok(mut ring) = ring.try_borrow_mut() else {
                    return PollStatus::Idle;
                };
                // Entries a refused io_uring_enter left queued.
                if !ring.submission().is_empty() {
                    let _ = ring.submit();
                }
                // Completions are finished after the borrow ends: a
                // callback may submit to this ring again.
                done.extend(
                    ring.completion()
                        .take(REAP)
                        .map(|c| (c.user_data(), c.result())),
                );
                drop(ring);
                let n = done.len();
                for (data, res) in done.drain(..) {
                    finish(&slab, data, res);
                }
                if n > 0 {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            });
        Ok(UringChannel { ring, slab, poller })
    }

    fn submit(&self, ch: &UringChannel, mut io: IoHandle) {
        let r = io.io();
        let bs = u64::from(self.spec.block_size);
        let (ty, off, len) = (r.io_type(), r.offset_blocks() * bs, r.num_blocks() * bs);
        let fd = types::Fd(self.file.fd.as_raw_fd());
        let fua = r.fua();
        let sqe = match ty {
            IoType::Read | IoType::Write => {
                let Some(slot) = ch.slab.borrow_mut().free.pop() else {
                    return io.complete(IoStatus::NoMem);
                };
                let mut slab = ch.slab.borrow_mut();
                let v = &mut slab.vecs[slot];
                let n = r.iovs().len();
                for (d, s) in v.iter_mut().zip(r.iovs()) {
                    d.iov_base = s.ptr.cast();
                    d.iov_len = s.len;
                }
                let at = v.as_ptr();
                drop(slab);
                io.io_mut().module_ctx[0] = slot as u64 + 1;
                if ty == IoType::Read {
                    opcode::Readv::new(fd, at, n as u32).offset(off).build()
                } else {
                    opcode::Writev::new(fd, at, n as u32)
                        .offset(off)
                        .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                        .build()
                }
            }
            IoType::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoType::Unmap | IoType::WriteZeroes => {
                let mode = if ty == IoType::Unmap {
                    libc::FALLOC_FL_PUNCH_HOLE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                opcode::Fallocate::new(fd, len)
                    .offset(off)
                    .mode(mode | libc::FALLOC_FL_KEEP_SIZE)
                    .build()
            }
            IoType::Reset => return io.complete(IoStatus::Success),
            _ => return io.complete(IoStatus::NotSupported),
        };
        let Ok(mut ring) = ch.ring.try_borrow_mut() else {
            return finish_refused(&ch.slab, io);
        };
        let data = io.into_raw() as u64;
        let sqe = sqe.user_data(data);
        // SAFETY: the entry's iovec array (in the slab) and data buffers
        // (in the I/O) live until the request completes.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            drop(ring);
            return finish_refused(&ch.slab, handle(data));
        }
        if let Err(e) = ring.submit() {
            // Left queued: the poller submits it again.
            log::debug!(
                "uring {}: io_uring_enter: {e}; retried by the poller",
                self.spec.name
            );
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        file::supported(&self.spec, &self.file, ty)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "uring": file::info(&self.spec, &self.file) })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_uring_create",
            "params": {
                "name": self.spec.name,
                "filename": self.spec.filename,
                "block_size": self.spec.block_size,
                "uuid": self.spec.uuid,
            }
        }))
    }

    fn destruct(&self) {
        file::forget(&self.spec.name);
    }
}

/// Creates io_uring bdev `name` over `filename` (a regular file or a
/// block device) with `block_size`-byte blocks: given, or the block
/// device's (a regular file needs it given).
///
/// # Errors
/// As the AIO bdev's; [`BdevError::Module`] when this kernel or process
/// has no io_uring.
pub fn create(
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    uuid: Option<&str>,
) -> Result<Bdev, BdevError> {
    let (spec, file, props) = file::prepare(name, filename, block_size, false, uuid, "URING bdev")?;
    // io_uring may be missing or forbidden: say so here, not per channel.
    IoUring::new(2).map_err(|e| BdevError::Module {
        module: "uring".into(),
        reason: format!("io_uring_setup: {e}"),
    })?;
    let ops = Uring {
        spec: spec.clone(),
        file: Arc::new(file),
    };
    file::register("uring", spec, props, ops)
}

/// Re-reads the size of io_uring bdev `name`'s file (see the AIO bdev's).
///
/// # Errors
/// [`BdevError::NotFound`]; the file no longer opening.
pub fn rescan(name: &str) -> Result<u64, BdevError> {
    file::rescan(name, "uring")
}

/// Deletes io_uring bdev `name`.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no io_uring bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "uring")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
