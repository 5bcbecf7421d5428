//! Linux native AIO (`io_setup`, `io_submit`, `io_getevents`,
//! `io_destroy`) without libaio: the kernel ABI of `linux/aio_abi.h`, and
//! completions reaped from the context's ring in user space (as libaio and
//! SPDK do) so that polling costs no system call; `io_getevents` with a
//! zero timeout where the ring's layout is not the known one.

use std::sync::atomic::{AtomicU32, Ordering};

/// `IOCB_CMD_FDSYNC`.
pub const CMD_FDSYNC: u16 = 3;
/// `IOCB_CMD_PREADV`.
pub const CMD_PREADV: u16 = 7;
/// `IOCB_CMD_PWRITEV`.
pub const CMD_PWRITEV: u16 = 8;
/// `RWF_DSYNC`: this write is durable when it completes (FUA).
pub const RWF_DSYNC: u32 = 0x2;

/// `struct iocb` (64 bytes, little-endian field order).
#[repr(C)]
#[derive(Default)]
pub struct Iocb {
    pub data: u64,
    pub key: u32,
    pub rw_flags: u32,
    pub lio_opcode: u16,
    pub reqprio: i16,
    pub fildes: u32,
    pub buf: u64,
    pub nbytes: u64,
    pub offset: i64,
    pub reserved2: u64,
    pub flags: u32,
    pub resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IoEvent {
    /// The submitter's `data`.
    pub data: u64,
    pub obj: u64,
    /// Bytes done, or a negative errno.
    pub res: i64,
    pub res2: i64,
}

/// The head of the completion ring the kernel maps at the context's
/// address (`struct aio_ring`), events after it.
#[repr(C)]
struct Ring {
    id: u32,
    nr: u32,
    head: AtomicU32,
    tail: AtomicU32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}

const RING_MAGIC: u32 = 0xa10a_10a1;

/// An AIO context, destroyed on drop (the kernel waits for what is still
/// in flight).
pub struct Context {
    id: libc::c_ulong,
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Context {
    /// A context for `depth` I/Os in flight.
    pub fn new(depth: u32) -> Result<Context, i32> {
        let mut id: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id into `id`, which lives
        // across the call.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, depth, &mut id as *mut libc::c_ulong) };
        if r < 0 {
            return Err(errno());
        }
        Ok(Context { id })
    }

    /// Submits one request; Err(errno) when the kernel refused it
    /// (EAGAIN: the context is full).
    pub fn submit(&self, cb: &mut Iocb) -> Result<(), i32> {
        let mut list = [cb as *mut Iocb];
        // SAFETY: `list` holds one valid iocb for the call; the kernel
        // copies it (and any iovec array it names) during the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.id,
                1 as libc::c_long,
                list.as_mut_ptr(),
            )
        };
        match r {
            1 => Ok(()),
            r if r < 0 => Err(errno()),
            _ => Err(libc::EAGAIN),
        }
    }

    /// Reaps up to `out.len()` completions without blocking; returns how
    /// many.
    pub fn reap(&self, out: &mut [IoEvent]) -> usize {
        if out.is_empty() {
            return 0;
        }
        let ring = self.id as *const Ring;
        // SAFETY: the context id is the address of the ring the kernel
        // mapped for it (readable while the context exists); its header is
        // checked before the layout is trusted.
        let known = unsafe { (*ring).magic == RING_MAGIC && (*ring).incompat_features == 0 };
        if !known {
            return self.getevents(out);
        }
        // SAFETY: as above; `nr` is fixed at setup.
        let nr = unsafe { (*ring).nr };
        // The events follow the header (as libaio reads them).
        let hdr = std::mem::size_of::<Ring>();
        // SAFETY: head and tail are atomics the kernel updates.
        let (head, tail) = unsafe {
            (
                (*ring).head.load(Ordering::Relaxed),
                (*ring).tail.load(Ordering::Acquire),
            )
        };
        let mut h = head;
        let mut n = 0;
        while h != tail && n < out.len() {
            // SAFETY: events follow the header; index `h` < `nr` is inside
            // the ring the kernel filled up to `tail` (read with Acquire).
            out[n] = unsafe {
                let ev = (ring as *const u8).add(hdr) as *const IoEvent;
                std::ptr::read_volatile(ev.add(h as usize))
            };
            n += 1;
            h = (h + 1) % nr.max(1);
        }
        if n > 0 {
            // SAFETY: head is ours to advance once the events are copied.
            unsafe { (*ring).head.store(h, Ordering::Release) };
        }
        n
    }

    fn getevents(&self, out: &mut [IoEvent]) -> usize {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `out` has room for `out.len()` events; a zero timeout
        // never blocks.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.id,
                0 as libc::c_long,
                out.len() as libc::c_long,
                out.as_mut_ptr(),
                &mut ts as *mut libc::timespec,
            )
        };
        if r < 0 { 0 } else { r as usize }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the id came from io_setup and is destroyed once.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.id) };
    }
}
