//! `/dev/ublk-control`: the driver's control commands, sent one at a time
//! through a small io_uring with 128-byte entries (`URING_CMD`) and waited
//! for on the calling (non-reactor) thread. The driver runs each command in
//! an io_uring worker, so a command that waits (START_DEV waits for every
//! queue's fetches and reads the partition table through them) never holds
//! a reactor.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::sys::{self, CtrlCmd, DevInfo, Params};

/// How long one control command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The open control device and its ring.
pub struct Control {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    file: File,
    next: u64,
    /// Buffers of commands that timed out, kept until the driver completes
    /// them (it may still write into them).
    orphans: HashMap<u64, Box<[u8]>>,
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// The name of a control command, for messages.
fn name(op: u32) -> &'static str {
    match op {
        sys::cmd::GET_DEV_INFO => "GET_DEV_INFO",
        sys::cmd::ADD_DEV => "ADD_DEV",
        sys::cmd::DEL_DEV => "DEL_DEV",
        sys::cmd::DEL_DEV_ASYNC => "DEL_DEV_ASYNC",
        sys::cmd::START_DEV => "START_DEV",
        sys::cmd::STOP_DEV => "STOP_DEV",
        sys::cmd::SET_PARAMS => "SET_PARAMS",
        sys::cmd::GET_PARAMS => "GET_PARAMS",
        sys::cmd::START_USER_RECOVERY => "START_USER_RECOVERY",
        sys::cmd::END_USER_RECOVERY => "END_USER_RECOVERY",
        sys::cmd::GET_FEATURES => "GET_FEATURES",
        _ => "command",
    }
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
            orphans: HashMap::new(),
        })
    }

    /// Sends command `op` with `buf` (its address and length go into the
    /// command) and waits for its result (>= 0) and the buffer back.
    fn command(
        &mut self,
        op: u32,
        c: CtrlCmd,
        mut buf: Option<Box<[u8]>>,
    ) -> io::Result<(i32, Option<Box<[u8]>>)> {
        let id = self.next;
        self.next += 1;
        let (addr, len) = match buf.as_mut() {
            Some(b) => (b.as_mut_ptr() as u64, b.len() as u16),
            None => (0, 0),
        };
        // Only the queue-affinity query (unused here) names a queue; the
        // driver refuses ADD_DEV with anything but "none".
        let c = CtrlCmd {
            queue_id: u16::MAX,
            addr,
            len,
            ..c
        };
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(c.encode())
            .build()
            .user_data(id);
        // SAFETY: the entry names our open control file and, through
        // `addr`, the heap buffer `buf`, which is ours until the command
        // completes: returned with the result, or kept in `orphans` when
        // the wait gives up first.
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| io::Error::other("ublk control ring full"))?;
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            let waited = self.ring.submitter().submit_with_args(1, &args);
            let mut mine = None;
            for cqe in self.ring.completion() {
                if cqe.user_data() == id {
                    mine = Some(cqe.result());
                } else if self.orphans.remove(&cqe.user_data()).is_some() {
                    log::debug!("ublk: a timed-out control command ended late");
                }
            }
            if let Some(res) = mine {
                return if res < 0 {
                    Err(errno(res))
                } else {
                    Ok((res, buf))
                };
            }
            match waited {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() != Some(libc::ETIME) => return Err(e),
                _ => {}
            }
            if Instant::now() >= deadline {
                if let Some(b) = buf.take() {
                    self.orphans.insert(id, b);
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the driver did not answer {} within {COMMAND_TIMEOUT:?}",
                        name(op)
                    ),
                ));
            }
        }
    }

    fn simple(&mut self, op: u32, dev_id: u32, data0: u64) -> io::Result<()> {
        let c = CtrlCmd {
            dev_id,
            data0,
            ..CtrlCmd::default()
        };
        self.command(op, c, None).map(|_| ())
    }

    /// Sends `op` for `dev_id` with `bytes` as its buffer; the buffer as
    /// the driver left it.
    fn with_buf(&mut self, op: u32, dev_id: u32, bytes: &[u8]) -> io::Result<Box<[u8]>> {
        let c = CtrlCmd {
            dev_id,
            ..CtrlCmd::default()
        };
        let (_, b) = self.command(op, c, Some(bytes.into()))?;
        b.ok_or_else(|| io::Error::other("control buffer lost"))
    }

    /// The driver's feature flags.
    ///
    /// # Errors
    /// The driver's (EOPNOTSUPP on kernels before 6.5).
    pub fn features(&mut self) -> io::Result<u64> {
        let b = self.with_buf(sys::cmd::GET_FEATURES, 0, &[0u8; 8])?;
        let mut f = [0u8; 8];
        f.copy_from_slice(&b[..8]);
        Ok(u64::from_le_bytes(f))
    }

    /// Adds a device; the driver's view of it comes back (its queue count
    /// is capped at the CPUs, its buffer size rounded to pages).
    ///
    /// # Errors
    /// EEXIST for an id in use, EINVAL for a bad depth or count.
    pub fn add_dev(&mut self, info: &DevInfo) -> io::Result<DevInfo> {
        let b = self.with_buf(sys::cmd::ADD_DEV, info.dev_id, &info.encode())?;
        Ok(DevInfo::decode(&fixed(&b)))
    }

    /// A device's information.
    ///
    /// # Errors
    /// ENODEV for an unknown device.
    pub fn dev_info(&mut self, dev_id: u32) -> io::Result<DevInfo> {
        let b = self.with_buf(sys::cmd::GET_DEV_INFO, dev_id, &[0u8; sys::DEV_INFO_LEN])?;
        Ok(DevInfo::decode(&fixed(&b)))
    }

    /// Sets a device's parameters.
    ///
    /// # Errors
    /// EINVAL for parameters the driver refuses.
    pub fn set_params(&mut self, dev_id: u32, p: &Params) -> io::Result<()> {
        self.with_buf(sys::cmd::SET_PARAMS, dev_id, &p.encode())
            .map(|_| ())
    }

    /// A device's parameters.
    ///
    /// # Errors
    /// ENODEV for an unknown device.
    pub fn params(&mut self, dev_id: u32) -> io::Result<Params> {
        let mut b = [0u8; sys::PARAMS_LEN];
        b[..4].copy_from_slice(&(sys::PARAMS_LEN as u32).to_le_bytes());
        let b = self.with_buf(sys::cmd::GET_PARAMS, dev_id, &b)?;
        Ok(Params::decode(&fixed(&b)))
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

    /// Deletes a device: without waiting for the last user of its block
    /// device where the driver can (DEL_DEV_ASYNC, Linux 6.9+), else
    /// waiting (DEL_DEV).
    ///
    /// # Errors
    /// The driver's.
    pub fn del_dev(&mut self, dev_id: u32) -> io::Result<()> {
        match self.simple(sys::cmd::DEL_DEV_ASYNC, dev_id, 0) {
            // 524: the kernel's ENOTSUPP, which older drivers answer.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | 524)) => {
                self.simple(sys::cmd::DEL_DEV, dev_id, 0)
            }
            r => r,
        }
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

/// The first `N` bytes of a buffer the driver filled (zeros past its end).
fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = b.len().min(N);
    a[..n].copy_from_slice(&b[..n]);
    a
}
