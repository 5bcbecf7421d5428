//! One interface over both transports: a controller reached through PCIe
//! (VFIO) or NVMe/TCP, and its I/O queue pairs. The bdev layer drives
//! either through these without knowing which: the same states, the same
//! reset and shutdown state machines, the same completion contract.

use std::task::Poll;
use std::time::Duration;

use crate::client::AdminClient;
use crate::ctrlr::{Controller, Namespace, NsEventHandler};
use crate::error::{NvmeError, SubmitError, SubmitErrorKind};
use crate::qpair::IoQpair;
use crate::shared::{CtrlrState, TimeoutAction};
use crate::spec::IdentifyController;
use crate::status::CommandError;
use crate::tcp::{TcpController, TcpQpair};

/// The most segments a command's data may have through [`AnyQpair`].
pub const MAX_SEGS: usize = crate::tcp::conn::MAX_SEGS;

/// A piece of a command's data: where it is in this process (TCP copies
/// from and to there) and its IO-virtual address (a PCIe device reads and
/// writes there).
#[derive(Clone, Copy, Debug)]
pub struct DataSeg {
    /// Address in this process.
    pub ptr: *mut u8,
    /// IO-virtual address.
    pub iova: u64,
    /// Length in bytes.
    pub len: usize,
}

/// A controller on either transport.
// One per attached controller, made once: the variants' sizes differ by a
// few hundred bytes, not worth a pointer chase on every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyController {
    /// Through VFIO.
    Pcie(Controller),
    /// Over NVMe/TCP.
    Tcp(TcpController),
}

macro_rules! both {
    ($self:expr, $c:ident => $e:expr) => {
        match $self {
            AnyController::Pcie($c) => $e,
            AnyController::Tcp($c) => $e,
        }
    };
}

impl AnyController {
    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        both!(self, c => c.identify())
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        both!(self, c => c.namespaces().cloned().collect())
    }

    /// The largest transfer of one command in bytes.
    pub fn max_transfer(&self) -> usize {
        both!(self, c => c.max_transfer())
    }

    /// Its state.
    pub fn state(&self) -> CtrlrState {
        both!(self, c => c.state())
    }

    /// Resets started.
    pub fn resets(&self) -> u64 {
        both!(self, c => c.resets())
    }

    /// Resets finished.
    pub fn resets_done(&self) -> u64 {
        both!(self, c => c.resets_done())
    }

    /// Why the last reset failed.
    pub fn last_reset_error(&self) -> Option<&str> {
        both!(self, c => c.last_reset_error())
    }

    /// Admin commands by futures (PCIe only: an NVMe/TCP controller's
    /// admin queue carries its own bring-up and keep-alives).
    pub fn admin(&self) -> Option<AdminClient> {
        match self {
            AnyController::Pcie(c) => Some(c.admin()),
            AnyController::Tcp(_) => None,
        }
    }

    /// Where namespace changes go.
    pub fn set_ns_event_handler(&mut self, handler: NsEventHandler) {
        both!(self, c => c.set_ns_event_handler(handler))
    }

    /// The I/O timeout and what it does.
    pub fn set_io_timeout(&self, timeout: Option<Duration>, action: TimeoutAction) {
        both!(self, c => c.set_io_timeout(timeout, action))
    }

    /// The admin timeout.
    pub fn set_admin_timeout(&mut self, timeout: Duration) {
        match self {
            AnyController::Pcie(c) => c.set_admin_timeout(timeout),
            AnyController::Tcp(c) => c.set_admin_timeout(timeout),
        }
    }

    /// A queue pair of `depth` entries; it connects by its own polls.
    ///
    /// # Errors
    /// No free queue, a depth out of range, no DMA memory.
    pub fn create_io_qpair<C>(&self, depth: u32) -> Result<AnyQpair<C>, NvmeError> {
        Ok(match self {
            AnyController::Pcie(c) => AnyQpair::Pcie(c.create_io_qpair(depth)?),
            AnyController::Tcp(c) => AnyQpair::Tcp(c.create_io_qpair(depth)?),
        })
    }

    /// Advances the control path.
    ///
    /// # Errors
    /// As the transport's `poll_admin`.
    pub fn poll_admin(&mut self) -> Result<(), NvmeError> {
        both!(self, c => c.poll_admin())
    }

    /// Starts a reset.
    ///
    /// # Errors
    /// A removed (or shut down) controller.
    pub fn start_reset(&mut self) -> Result<(), NvmeError> {
        both!(self, c => c.start_reset())
    }

    /// Starts a reset that lets commands drain for up to `drain` first
    /// (PCIe; NVMe/TCP resets at once).
    ///
    /// # Errors
    /// As [`AnyController::start_reset`].
    pub fn start_reset_drained(&mut self, drain: Duration) -> Result<(), NvmeError> {
        both!(self, c => c.start_reset_drained(drain))
    }

    /// Starts a shutdown.
    pub fn start_shutdown(&mut self) {
        both!(self, c => c.start_shutdown())
    }

    /// Advances a shutdown.
    pub fn poll_shutdown(&mut self) -> Poll<()> {
        both!(self, c => c.poll_shutdown())
    }
}

/// A queue pair on either transport.
// One per core and controller, made once, used on every I/O: inline, so
// neither transport pays a pointer chase.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyQpair<C> {
    /// A PCIe queue pair.
    Pcie(IoQpair<C>),
    /// An NVMe/TCP queue pair.
    Tcp(TcpQpair<C>),
}

/// `(iova, len)` pairs of `segs` for the PCIe queue pair.
fn iovas(segs: &[DataSeg], out: &mut [(u64, usize); MAX_SEGS]) -> Option<usize> {
    if segs.len() > MAX_SEGS {
        return None;
    }
    for (o, s) in out.iter_mut().zip(segs) {
        *o = (s.iova, s.len);
    }
    Some(segs.len())
}

/// `(ptr, len)` pairs of `segs` for the TCP queue pair.
fn ptrs(segs: &[DataSeg], out: &mut [(*mut u8, usize); MAX_SEGS]) -> Option<usize> {
    if segs.len() > MAX_SEGS {
        return None;
    }
    for (o, s) in out.iter_mut().zip(segs) {
        *o = (s.ptr, s.len);
    }
    Some(segs.len())
}

fn too_many<C>(ctx: C) -> Result<(), SubmitError<C>> {
    Err(SubmitError {
        kind: SubmitErrorKind::TooManySegments(MAX_SEGS),
        ctx,
    })
}

/// Which data command.
#[derive(Clone, Copy)]
enum Data {
    Read,
    Write(bool),
    Compare,
}

impl<C> AnyQpair<C> {
    /// Whether the queue is connected (submissions accepted).
    pub fn is_connected(&self) -> bool {
        match self {
            AnyQpair::Pcie(q) => q.is_connected(),
            AnyQpair::Tcp(q) => q.is_connected(),
        }
    }

    fn data(
        &mut self,
        d: Data,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[DataSeg],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        match self {
            AnyQpair::Pcie(q) => {
                let mut a = [(0u64, 0usize); MAX_SEGS];
                let Some(n) = iovas(segs, &mut a) else {
                    return too_many(ctx);
                };
                match d {
                    Data::Read => q.read(nsid, lba, blocks, &a[..n], ctx),
                    Data::Write(fua) => q.write(nsid, lba, blocks, &a[..n], fua, ctx),
                    Data::Compare => q.compare(nsid, lba, blocks, &a[..n], ctx),
                }
            }
            AnyQpair::Tcp(q) => {
                let mut a = [(std::ptr::null_mut::<u8>(), 0usize); MAX_SEGS];
                let Some(n) = ptrs(segs, &mut a) else {
                    return too_many(ctx);
                };
                // SAFETY: the caller's contract (see `read`): the segments
                // stay valid and untouched until the command completes.
                unsafe {
                    match d {
                        Data::Read => q.read(nsid, lba, blocks, &a[..n], ctx),
                        Data::Write(fua) => q.write(nsid, lba, blocks, &a[..n], fua, ctx),
                        Data::Compare => q.compare(nsid, lba, blocks, &a[..n], ctx),
                    }
                }
            }
        }
    }

    /// Reads `blocks` blocks at `lba` of `nsid` into `segs`.
    ///
    /// # Safety
    /// The segments must stay valid (by address and IO-virtual address)
    /// and not be used otherwise until the command completes.
    ///
    /// # Errors
    /// As the transport's submission.
    pub unsafe fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[DataSeg],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data(Data::Read, nsid, lba, blocks, segs, ctx)
    }

    /// Writes `blocks` blocks at `lba` of `nsid` from `segs`.
    ///
    /// # Safety
    /// As [`AnyQpair::read`].
    ///
    /// # Errors
    /// As the transport's submission.
    pub unsafe fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[DataSeg],
        fua: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data(Data::Write(fua), nsid, lba, blocks, segs, ctx)
    }

    /// Compares `blocks` blocks at `lba` of `nsid` with `segs`.
    ///
    /// # Safety
    /// As [`AnyQpair::read`].
    ///
    /// # Errors
    /// As the transport's submission.
    pub unsafe fn compare(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[DataSeg],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data(Data::Compare, nsid, lba, blocks, segs, ctx)
    }

    /// Flushes `nsid`.
    ///
    /// # Errors
    /// As the transport's submission.
    pub fn flush(&mut self, nsid: u32, ctx: C) -> Result<(), SubmitError<C>> {
        match self {
            AnyQpair::Pcie(q) => q.flush(nsid, ctx),
            AnyQpair::Tcp(q) => q.flush(nsid, ctx),
        }
    }

    /// Write Zeroes.
    ///
    /// # Errors
    /// As the transport's submission.
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        deallocate: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        match self {
            AnyQpair::Pcie(q) => q.write_zeroes(nsid, lba, blocks, deallocate, ctx),
            AnyQpair::Tcp(q) => q.write_zeroes(nsid, lba, blocks, deallocate, ctx),
        }
    }

    /// Dataset Management (deallocate) over `ranges`.
    ///
    /// # Errors
    /// As the transport's submission.
    pub fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[(u64, u32)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        match self {
            AnyQpair::Pcie(q) => q.deallocate(nsid, ranges, ctx),
            AnyQpair::Tcp(q) => q.deallocate(nsid, ranges, ctx),
        }
    }

    /// Reaps completions (see the transports' `process_completions`).
    pub fn process_completions(
        &mut self,
        max: usize,
        on_complete: impl FnMut(C, Result<u32, CommandError>),
    ) -> usize {
        match self {
            AnyQpair::Pcie(q) => q.process_completions(max, on_complete),
            AnyQpair::Tcp(q) => q.process_completions(max, on_complete),
        }
    }
}
