//! The kernel's NBD client on `/dev/nbdX`, as SPDK's `nbd_start_disk`
//! attaches it: a socket pair whose one end the kernel gets
//! (`NBD_SET_SOCK`), the other served by [`super::server::serve`] without
//! a handshake; a thread sits in `NBD_DO_IT` until the device is
//! disconnected. Needs the `nbd` kernel module (the guest tier has it; a
//! host without it answers `nbd_start_disk` with the open's errno).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev::{Bdev, IoType};

use super::proto;

// ioctl numbers from <linux/nbd.h>: _IO(0xab, n).
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// An attached `/dev/nbdX`.
pub struct Attachment {
    dev: File,
    disconnected: AtomicBool,
}

fn ioctl(f: &File, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the NBD ioctls used here take an integer argument (or none);
    // `f` is an open descriptor for the call's duration.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Attachment {
    /// Asks the kernel to disconnect (once).
    pub fn disconnect(&self) {
        if !self.disconnected.swap(true, Ordering::AcqRel) {
            let _ = ioctl(&self.dev, NBD_DISCONNECT, 0);
        }
    }
}

/// Attaches `path` to `bdev`: returns our end of the socket pair and the
/// attachment.
///
/// # Errors
/// The open's or an ioctl's error.
pub fn attach(path: &Path, bdev: &Bdev) -> io::Result<(UnixStream, Attachment)> {
    let dev = OpenOptions::new().read(true).write(true).open(path)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut flags = proto::TF_HAS_FLAGS | proto::TF_SEND_FLUSH | proto::TF_SEND_FUA;
    if bdev.io_type_supported(IoType::Unmap) {
        flags |= proto::TF_SEND_TRIM;
    }
    ioctl(&dev, NBD_CLEAR_SOCK, 0)?;
    ioctl(&dev, NBD_SET_BLKSIZE, bdev.block_size() as libc::c_ulong)?;
    ioctl(
        &dev,
        NBD_SET_SIZE_BLOCKS,
        bdev.num_blocks() as libc::c_ulong,
    )?;
    ioctl(&dev, NBD_SET_FLAGS, flags as libc::c_ulong)?;
    let fd = theirs.into_raw_fd();
    ioctl(&dev, NBD_SET_SOCK, fd as libc::c_ulong)?;
    let worker = dev.try_clone()?;
    std::thread::Builder::new()
        .name(format!("nbd_do_it_{}", path.display()))
        .spawn(move || {
            if let Err(e) = ioctl(&worker, NBD_DO_IT, 0) {
                log::debug!("NBD_DO_IT ended: {e}");
            }
            let _ = ioctl(&worker, NBD_CLEAR_QUE, 0);
            let _ = ioctl(&worker, NBD_CLEAR_SOCK, 0);
            // SAFETY: `fd` is the kernel's end of the pair, owned by this
            // attachment and closed exactly once, here.
            unsafe { libc::close(fd) };
        })?;
    Ok((
        ours,
        Attachment {
            dev,
            disconnected: AtomicBool::new(false),
        },
    ))
}
