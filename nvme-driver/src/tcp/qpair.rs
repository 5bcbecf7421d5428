//! An NVMe/TCP I/O queue pair, owned by one core: its own connection
//! (connected by its polls once the controller is up), the NVM commands
//! of [`crate::IoQpair`] with data described by pointer segments, and the
//! same recovery contract: after a reset (or a lost connection) every
//! outstanding command completes once as aborted by the reset, and the
//! queue connects again to the new association; once the controller is
//! shut down everything fails as removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{HostConn, SubmitRefusal};
use super::ctrlr::TcpShared;
use crate::cmd::io as iocmd;
use crate::error::{SubmitError, SubmitErrorKind, check_blocks};
use crate::qpair::QpairStats;
use crate::shared::CtrlrState;
use crate::spec::Sqe;
use crate::status::CommandError;

/// How often outstanding commands are checked against the I/O timeout.
const SCAN_PERIOD: Duration = Duration::from_millis(100);

/// A data segment of a command: memory of this process the connection
/// reads (writes) or fills (reads).
pub type Seg = (*mut u8, usize);

/// An NVMe/TCP I/O queue pair whose commands carry a context `C`.
pub struct TcpQpair<C> {
    sh: Arc<TcpShared>,
    qid: u16,
    depth: u16,
    conn: Option<HostConn<C>>,
    generation: u64,
    last_scan: Instant,
    stats: QpairStats,
}

impl<C> std::fmt::Debug for TcpQpair<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpQpair")
            .field("ctrlr", &self.sh.name)
            .field("qid", &self.qid)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl<C> TcpQpair<C> {
    pub(crate) fn new(sh: Arc<TcpShared>, qid: u16, depth: u16) -> TcpQpair<C> {
        TcpQpair {
            generation: sh.generation(),
            sh,
            qid,
            depth,
            conn: None,
            last_scan: Instant::now(),
            stats: QpairStats::default(),
        }
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries.
    pub fn depth(&self) -> usize {
        usize::from(self.depth)
    }

    /// Commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.conn.as_ref().map_or(0, HostConn::outstanding)
    }

    /// Counters.
    pub fn stats(&self) -> QpairStats {
        self.stats
    }

    /// Whether the queue's connection is up (submissions accepted).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(HostConn::is_live) && self.generation == self.sh.generation()
    }

    /// Digests negotiated on the current connection (header, data).
    pub fn digests(&self) -> Option<(bool, bool)> {
        self.conn
            .as_ref()
            .filter(|c| c.is_live())
            .map(HostConn::digests)
    }

    fn refused(&self, why: SubmitRefusal) -> SubmitErrorKind {
        match why {
            SubmitRefusal::Full => SubmitErrorKind::QueueFull,
            SubmitRefusal::TooManySegments => {
                SubmitErrorKind::TooManySegments(super::conn::MAX_SEGS)
            }
            SubmitRefusal::NotLive => match self.sh.state() {
                CtrlrState::Removed => SubmitErrorKind::Removed,
                CtrlrState::Failed => SubmitErrorKind::Failed,
                _ => SubmitErrorKind::Resetting,
            },
        }
    }

    fn submit(
        &mut self,
        sqe: Sqe,
        segs: &[Seg],
        to_ctrl: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let Some(c) = self
            .conn
            .as_mut()
            .filter(|_| self.generation == self.sh.generation())
        else {
            let kind = self.refused(SubmitRefusal::NotLive);
            return Err(SubmitError { kind, ctx });
        };
        // SAFETY: the public submitters' contract: the segments stay valid
        // and untouched until the command completes.
        match unsafe { c.submit(sqe, segs, to_ctrl, ctx) } {
            Ok(_) => {
                self.stats.submitted += 1;
                Ok(())
            }
            Err((why, ctx)) => {
                if why == SubmitRefusal::Full {
                    self.stats.queue_full += 1;
                }
                let kind = self.refused(why);
                Err(SubmitError { kind, ctx })
            }
        }
    }

    /// Reads `blocks` blocks at `lba` of namespace `nsid` into `segs`.
    ///
    /// # Safety
    /// The segments must stay valid for writes, and not be used otherwise,
    /// until the command completes (its context comes back).
    ///
    /// # Errors
    /// Not connected (resetting, failed, removed), queue full, a block
    /// count outside 1..=65536, too many segments.
    pub unsafe fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[Seg],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let (n, ctx) = check_blocks(blocks, ctx)?;
        self.submit(iocmd::read(nsid, lba, n), segs, false, ctx)
    }

    /// Writes `blocks` blocks at `lba` of namespace `nsid` from `segs`
    /// (with Force Unit Access if `fua`).
    ///
    /// # Safety
    /// The segments must stay valid for reads until the command completes.
    ///
    /// # Errors
    /// As [`TcpQpair::read`].
    pub unsafe fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[Seg],
        fua: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let (n, ctx) = check_blocks(blocks, ctx)?;
        self.submit(iocmd::write(nsid, lba, n, fua), segs, true, ctx)
    }

    /// Compares `blocks` blocks at `lba` with `segs`.
    ///
    /// # Safety
    /// As [`TcpQpair::write`].
    ///
    /// # Errors
    /// As [`TcpQpair::read`].
    pub unsafe fn compare(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segs: &[Seg],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let (n, ctx) = check_blocks(blocks, ctx)?;
        self.submit(iocmd::compare(nsid, lba, n), segs, true, ctx)
    }

    /// Flushes namespace `nsid`.
    ///
    /// # Errors
    /// Not connected, queue full.
    pub fn flush(&mut self, nsid: u32, ctx: C) -> Result<(), SubmitError<C>> {
        self.submit(iocmd::flush(nsid), &[], false, ctx)
    }

    /// Write Zeroes over `blocks` blocks at `lba`.
    ///
    /// # Errors
    /// As [`TcpQpair::read`].
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        deallocate: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let (n, ctx) = check_blocks(blocks, ctx)?;
        self.submit(
            iocmd::write_zeroes(nsid, lba, n, deallocate),
            &[],
            false,
            ctx,
        )
    }

    /// Dataset Management (deallocate) over `ranges` (start, blocks): the
    /// range list goes with the command (the queue keeps it until then).
    ///
    /// # Errors
    /// As [`TcpQpair::flush`]; 0 or more than 256 ranges.
    pub fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[(u64, u32)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(SubmitError {
                kind: SubmitErrorKind::BadRangeCount(ranges.len()),
                ctx,
            });
        }
        let mut list = [0u8; 256 * 16];
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let r = &mut list[i * 16..i * 16 + 16];
            r[4..8].copy_from_slice(&nlb.to_le_bytes());
            r[8..16].copy_from_slice(&slba.to_le_bytes());
        }
        let sqe = iocmd::deallocate(nsid, ranges.len() as u32);
        let Some(c) = self
            .conn
            .as_mut()
            .filter(|_| self.generation == self.sh.generation())
        else {
            let kind = self.refused(SubmitRefusal::NotLive);
            return Err(SubmitError { kind, ctx });
        };
        match c.submit_copy(sqe, &list[..ranges.len() * 16], ctx) {
            Ok(_) => {
                self.stats.submitted += 1;
                Ok(())
            }
            Err((why, ctx)) => {
                let kind = self.refused(why);
                Err(SubmitError { kind, ctx })
            }
        }
    }

    /// Advances the queue: connects it when the controller is up, sends
    /// and receives, hands completions to `on_complete(ctx, result)` (DW0,
    /// or why the command failed); returns how many completed. After a
    /// reset or a lost connection the outstanding commands complete here
    /// as aborted by the reset (as removed once the controller is shut
    /// down).
    pub fn process_completions(
        &mut self,
        _max: usize,
        mut on_complete: impl FnMut(C, Result<u32, CommandError>),
    ) -> usize {
        let stats = &mut self.stats;
        let mut n = 0;
        let gen_now = self.sh.generation();
        let stale = gen_now != self.generation;
        if let Some(c) = self.conn.as_mut()
            && (stale || c.is_dead())
        {
            if !stale {
                // This queue's connection failed while the controller
                // stands: the whole association is reset (SPDK does the
                // same), and every queue connects again.
                let why = c.why().unwrap_or("closed").to_owned();
                self.sh.request_reset(&format!(
                    "I/O queue {} lost its connection ({why})",
                    self.qid
                ));
            }
            c.close("controller reset");
            let removed = self.sh.state() == CtrlrState::Removed;
            n += c.fail_all(|ctx, _| {
                stats.failed += 1;
                on_complete(
                    ctx,
                    Err(if removed {
                        CommandError::ControllerRemoved
                    } else {
                        CommandError::AbortedByReset
                    }),
                )
            });
            self.conn = None;
        }
        if self.conn.is_none() {
            if self.sh.state() != CtrlrState::Ready {
                return n;
            }
            self.generation = gen_now;
            match HostConn::start(self.sh.conn_params(self.qid, self.depth)) {
                Ok(c) => {
                    if stale {
                        stats.reconnects += 1;
                    }
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.sh
                        .request_reset(&format!("I/O queue {} cannot connect: {e}", self.qid));
                    return n;
                }
            }
        }
        let Some(c) = self.conn.as_mut() else {
            return n;
        };
        stats.polls += 1;
        let k = c.poll(|ctx, r| {
            match r {
                Ok(_) => stats.completed += 1,
                Err(_) => stats.failed += 1,
            }
            on_complete(ctx, r.map(|d| d[0]))
        });
        if k == 0 {
            stats.empty_polls += 1;
        }
        n += k;
        if let Some(t) = self.sh.io_timeout()
            && c.outstanding() > 0
        {
            let now = Instant::now();
            if now.duration_since(self.last_scan) >= SCAN_PERIOD {
                self.last_scan = now;
                if let Some(age) = c.oldest(now)
                    && age > t
                {
                    c.close(format!(
                        "a command outstanding for {} ms (timeout {} ms)",
                        age.as_millis(),
                        t.as_millis()
                    ));
                }
            }
        }
        n
    }
}

impl<C> Drop for TcpQpair<C> {
    fn drop(&mut self) {
        // Commands still outstanding are dropped with their contexts (the
        // owner fails them: a context's own drop does); the connection
        // closes; the queue id is free for another queue pair.
        if let Some(c) = self.conn.as_mut() {
            c.close("queue pair deleted");
        }
        self.sh.free_qid(self.qid);
    }
}
