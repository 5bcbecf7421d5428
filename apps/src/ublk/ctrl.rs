//! `/dev/ublk-control`: the driver's control commands, sent one at a time
//! through a small io_uring with 128-byte entries (`URING_CMD`) and waited
//! for on the calling (non-reactor) thread. The driver runs each command in
//! an io_uring worker, so a command that waits (START_DEV waits for every
//! queue's fetches and reads the partition table through them) never holds
//! a reactor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::sys::{self, CtrlCmd, DevInfo, Params};

/// How long one control command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The open control device and its ring.
pub struct Control {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    file: File,
    next: u64,
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Control {
    /// Opens `/dev/ublk-control`.
    ///
    /// # Errors
    /// The open's error (ENOENT where the kernel has no ublk driver) or the
    /// ring's.
    pub fn open() -> io::Result<Control> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(sys::CONTROL_PATH)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(8)?;
        Ok(Control {
            ring,
            file,
            next: 1,
        })
    }

    /// Sends command `op` and waits for its result (>= 0).
    ///
    /// # Safety
    /// `c.addr`, when not 0, points to `c.len` bytes that stay valid and
    /// unaliased until this returns.
    unsafe fn command(&mut self, op: u32, c: CtrlCmd) -> io::Result<i32> {
        let id = self.next;
        self.next += 1;
        // Only the queue-affinity query (unused here) names a queue; the
        // driver refuses ADD_DEV with anything but "none".
        let c = CtrlCmd {
            queue_id: u16::MAX,
            ..c
        };
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(c.encode())
            .build()
            .user_data(id);
        // SAFETY: the entry names our open control file and, through
        // `c.addr`, a buffer the caller keeps valid until the command's
        // completion, which this function waits for (a command that times
        // out is one of the buffer-less ones: see below).
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| io::Error::other("ublk control ring full"))?;
        }
        let ts = types::Timespec::from(COMMAND_TIMEOUT);
        let args = types::SubmitArgs::new().timespec(&ts);
        loop {
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    // Only the waiting commands (START_DEV, STOP_DEV,
                    // DEL_DEV, END_USER_RECOVERY: no buffer) can take so
                    // long; their late completion is skipped by id.
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == id {
                    return if cqe.result() < 0 {
                        Err(errno(cqe.result()))
                    } else {
                        Ok(cqe.result())
                    };
                }
            }
        }
    }

    fn simple(&mut self, op: u32, dev_id: u32, data0: u64) -> io::Result<()> {
        let c = CtrlCmd {
            dev_id,
            data0,
            ..CtrlCmd::default()
        };
        // SAFETY: no buffer.
        unsafe { self.command(op, c) }.map(|_| ())
    }

    /// The driver's feature flags.
    ///
    /// # Errors
    /// The driver's (EOPNOTSUPP on kernels before 6.5).
    pub fn features(&mut self) -> io::Result<u64> {
        let mut f = [0u8; 8];
        let c = CtrlCmd {
            len: 8,
            addr: f.as_mut_ptr() as u64,
            ..CtrlCmd::default()
        };
        // SAFETY: `f` lives until the command completes.
        unsafe { self.command(sys::cmd::GET_FEATURES, c) }?;
        Ok(u64::from_le_bytes(f))
    }

    /// Adds a device; the driver's view of it comes back (its queue count
    /// is capped at the CPUs, its buffer size rounded to pages).
    ///
    /// # Errors
    /// EEXIST for an id in use, EINVAL for a bad depth or count.
    pub fn add_dev(&mut self, info: &DevInfo) -> io::Result<DevInfo> {
        let mut b = info.encode();
        let c = CtrlCmd {
            dev_id: info.dev_id,
            len: b.len() as u16,
            addr: b.as_mut_ptr() as u64,
            ..CtrlCmd::default()
        };
        // SAFETY: `b` lives until the command completes.
        unsafe { self.command(sys::cmd::ADD_DEV, c) }?;
        Ok(DevInfo::decode(&b))
    }

    /// A device's information.
    ///
    /// # Errors
    /// ENODEV for an unknown device.
    pub fn dev_info(&mut self, dev_id: u32) -> io::Result<DevInfo> {
        let mut b = [0u8; sys::DEV_INFO_LEN];
        let c = CtrlCmd {
            dev_id,
            len: b.len() as u16,
            addr: b.as_mut_ptr() as u64,
            ..CtrlCmd::default()
        };
        // SAFETY: `b` lives until the command completes.
        unsafe { self.command(sys::cmd::GET_DEV_INFO, c) }?;
        Ok(DevInfo::decode(&b))
    }

    /// Sets a device's parameters.
    ///
    /// # Errors
    /// EINVAL for parameters the driver refuses.
    pub fn set_params(&mut self, dev_id: u32, p: &Params) -> io::Result<()> {
        let mut b = p.encode();
        let c = CtrlCmd {
            dev_id,
            len: b.len() as u16,
            addr: b.as_mut_ptr() as u64,
            ..CtrlCmd::default()
        };
        // SAFETY: `b` lives until the command completes.
        unsafe { self.command(sys::cmd::SET_PARAMS, c) }.map(|_| ())
    }

    /// A device's parameters.
    ///
    /// # Errors
    /// ENODEV for an unknown device.
    pub fn params(&mut self, dev_id: u32) -> io::Result<Params> {
        let mut b = [0u8; sys::PARAMS_LEN];
        b[..4].copy_from_slice(&(sys::PARAMS_LEN as u32).to_le_bytes());
        let c = CtrlCmd {
            dev_id,
            len: b.len() as u16,
            addr: b.as_mut_ptr() as u64,
            ..CtrlCmd::default()
        };
        // SAFETY: `b` lives until the command completes.
        unsafe { self.command(sys::cmd::GET_PARAMS, c) }?;
        Ok(Params::decode(&b))
    }

    /// Starts a device served by process `pid` (every queue has fetched).
    ///
    /// # Errors
    /// The driver's.
    pub fn start_dev(&mut self, dev_id: u32, pid: u32) -> io::Result<()> {
        self.simple(sys::cmd::START_DEV, dev_id, u64::from(pid))
    }

    /// Stops a device: its block device goes away once its I/O is done.
    ///
    /// # Errors
    /// The driver's.
    pub fn stop_dev(&mut self, dev_id: u32) -> io::Result<()> {
        self.simple(sys::cmd::STOP_DEV, dev_id, 0)
    }

    /// Deletes a device (once its char device is closed).
    ///
    /// # Errors
    /// The driver's.
    pub fn del_dev(&mut self, dev_id: u32) -> io::Result<()> {
        self.simple(sys::cmd::DEL_DEV, dev_id, 0)
    }

    /// Begins taking over a device whose server died.
    ///
    /// # Errors
    /// EBUSY until the driver has quiesced it.
    pub fn start_recovery(&mut self, dev_id: u32) -> io::Result<()> {
        self.simple(sys::cmd::START_USER_RECOVERY, dev_id, 0)
    }

    /// Ends the take-over: process `pid` serves it now.
    ///
    /// # Errors
    /// The driver's.
    pub fn end_recovery(&mut self, dev_id: u32, pid: u32) -> io::Result<()> {
        self.simple(sys::cmd::END_USER_RECOVERY, dev_id, u64::from(pid))
    }
}
