//! I/O queue pairs: one submission and one completion queue, owned by one
//! core. No locks and no allocation on submit and complete: trackers (with
//! their PRP list pages) are preallocated per command id, the doorbell is
//! rung once per batch, completions are reaped by phase tag with a cap per
//! poll and handed to a closure with the caller's per-command context.
//!
//! # Creation, reset and removal
//! A queue pair is created on the controller by its own polls, without
//! waiting: Create I/O Completion Queue, then Create I/O Submission Queue,
//! each started on the admin queue and collected on a later poll (the
//! admin queue's lock is only tried, never waited for, and only while not
//! connected). Submissions before that are refused with
//! [`SubmitErrorKind::Resetting`].
//!
//! When the controller is reset, commands outstanding on the queue pair are
//! completed with [`CommandError::AbortedByReset`] on its next poll (the
//! controller lost them; they may or may not have taken effect) and the
//! queue is created again the same way. When the controller is removed,
//! outstanding commands complete with [`CommandError::ControllerRemoved`]
//! and every submission fails at once. Every command is completed exactly
//! once. A dropped queue pair hands its rings to the controller's admin
//! poller, which deletes the queue and frees them once the controller let
//! go of them.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::AdminEnd;
use crate::cmd::{admin as acmd, io as iocmd};
use crate::error::{NvmeError, SubmitError, SubmitErrorKind, check_blocks};
use crate::qcore::QueueCore;
use crate::shared::{CtrlrState, Request, Retired, Shared, TimeoutAction};
use crate::spec::{DsmRange, Sqe};
use crate::status::{CommandError, NvmeStatus};

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QpairStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Commands completed successfully.
    pub completed: u64,
    /// Commands completed with an error (device status, reset, removal).
    pub failed: u64,
    /// Submissions refused because the queue was full.
    pub queue_full: u64,
    /// Times the queue was re-created after a controller reset.
    pub reconnects: u64,
    /// Submission doorbell writes (MMIO): one per ring with new commands.
    pub sq_doorbells: u64,
    /// Completion doorbell writes (MMIO): one per ring after reaping.
    pub cq_doorbells: u64,
    /// Calls of [`IoQpair::process_completions`].
    pub polls: u64,
    /// Polls that found no completion.
    pub empty_polls: u64,
}

/// An I/O queue pair whose commands carry a context of type `C` (the
/// caller's per-I/O state, handed back on completion).
pub struct IoQpair<C> {
    /// Taken only by `Drop`, which hands the rings to the admin poller.
    core: ManuallyDrop<QueueCore<C>>,
    shared: Arc<Shared>,
    generation: u64,
    connected: bool,
    connect: Connect,
    timeout: Option<(Duration, TimeoutAction)>,
    last_scan: Instant,
    stats: QpairStats,
    /// Commands outstanding, published after each poll for a drained
    /// reset (an uncontended store, no read-modify-write).
    load: Arc<std::sync::atomic::AtomicU32>,
}

/// Where creating the queue on the controller stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connect {
    /// Nothing sent yet (or the controller was reset since).
    Start,
    /// Create I/O Completion Queue in flight.
    Cq(u64),
    /// Create I/O Submission Queue in flight.
    Sq(u64),
    /// Connected.
    Done,
    /// The controller refused: submissions fail until the next reset.
    Refused,
}

impl<C> std::fmt::Debug for IoQpair<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQpair")
            .field("ctrlr", &self.shared.name)
            .field("qid", &self.core.qid)
            .field("depth", &self.core.depth())
            .field("outstanding", &self.core.outstanding)
            .finish()
    }
}

fn result_of(cqe: &crate::spec::Cqe) -> Result<u32, CommandError> {
    let st = NvmeStatus(cqe.status_field());
    if st.is_success() {
        Ok(cqe.dw0)
    } else {
        Err(CommandError::Status(st))
    }
}

impl<C> IoQpair<C> {
    /// A queue pair for queue `qid`, not yet created on the controller
    /// (its polls do that).
    pub(crate) fn new(shared: Arc<Shared>, qid: u16, depth: u16) -> Result<Self, NvmeError> {
        let mut core = QueueCore::new(
            qid,
            depth,
            &shared.mem,
            shared.regs.clone(),
            shared.stride,
            shared.page_size,
        )
        .map_err(|source| NvmeError::Dma {
            ctrlr: shared.name.clone(),
            source,
        })?;
        core.sgl_align = shared.sgl_align.load(std::sync::atomic::Ordering::Relaxed);
        let generation = shared.generation();
        let load = shared.register_load();
        Ok(IoQpair {
            core: ManuallyDrop::new(core),
            load,
            shared,
            generation,
            connected: false,
            connect: Connect::Start,
            timeout: None,
            last_scan: Instant::now(),
            stats: QpairStats::default(),
        })
    }

    /// Whether the controller refused to create the queue (it is tried
    /// again after the next reset).
    pub fn connect_refused(&self) -> bool {
        self.connect == Connect::Refused
    }

    /// Whether the queue exists on the controller (submissions accepted).
    pub fn is_connected(&self) -> bool {
        self.connected && self.shared.generation() == self.generation
    }

    /// Advances creating the queue on the controller without waiting;
    /// returns whether it is connected now.
    fn advance_connect(&mut self) -> bool {
        if self.shared.state() != CtrlrState::Ready {
            return false;
        }
        // Never wait for the admin queue: another core holds it for a
        // moment at most; the next poll tries again.
        let sh = self.shared.clone();
        let mut admin = match sh.admin.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let qid = self.core.qid;
        let entries = self.core.sq.entries();
        let timeout = sh.admin_timeout();
        loop {
            match self.connect {
                Connect::Done => return true,
                Connect::Refused => return false,
                Connect::Start => {
                    match admin.start(
                        acmd::create_io_cq(qid, entries, self.core.cq.iova()),
                        &[],
                        None,
                        timeout,
                    ) {
                        Ok(t) => self.connect = Connect::Cq(t),
                        Err(_) => return false,
                    }
                }
                Connect::Cq(t) => match admin.check(t, None) {
                    None => return false,
                    Some((AdminEnd::Done(Ok(_)), _)) => {
                        match admin.start(
                            acmd::create_io_sq(qid, entries, self.core.sq.iova(), qid),
                            &[],
                            None,
                            timeout,
                        ) {
                            Ok(t) => self.connect = Connect::Sq(t),
                            Err(_) => return false,
                        }
                    }
                    Some((end, _)) => {
                        self.refused(end, "Create I/O Completion Queue");
                        return false;
                    }
                },
                Connect::Sq(t) => match admin.check(t, None) {
                    None => return false,
                    Some((AdminEnd::Done(Ok(_)), _)) => {
                        self.connect = Connect::Done;
                        self.connected = true;
                        return true;
                    }
                    Some((end, _)) => {
                        // The completion queue exists: delete it (nothing
                        // waits for the answer; a reset forgets it anyway).
                        let _ = admin.start(acmd::delete_io_cq(qid), &[], None, timeout);
                        self.refused(end, "Create I/O Submission Queue");
                        return false;
                    }
                },
            }
        }
    }

    fn refused(&mut self, end: AdminEnd, command: &'static str) {
        let e = match end {
            AdminEnd::TimedOut => {
                // The controller stopped answering: the reset brings the
                // queue back.
                self.shared.request(Request::Reset);
                self.connect = Connect::Start;
                return;
            }
            AdminEnd::Done(Err(crate::status::CommandError::AbortedByReset)) => {
                self.connect = Connect::Start;
                return;
            }
            AdminEnd::Done(r) => r.err(),
        };
        log::warn!(
            "{}: {command} for queue {}: {}",
            self.shared.name,
            self.core.qid,
            e.map_or_else(String::new, |e| e.to_string())
        );
        self.connect = Connect::Refused;
    }

    /// The queue identifier.
    pub fn qid(&self) -> u16 {
        self.core.qid
    }

    /// Commands that can be outstanding at once.
    pub fn depth(&self) -> usize {
        self.core.depth()
    }

    /// Commands outstanding now.
    pub fn outstanding(&self) -> usize {
        self.core.outstanding
    }

    /// Counters.
    pub fn stats(&self) -> QpairStats {
        QpairStats {
            sq_doorbells: self.core.sq_doorbells,
            cq_doorbells: self.core.cq_doorbells,
            ..self.stats
        }
    }

    /// Sets this queue pair's command timeout and what to do about a
    /// command that outlives it (None: the controller's setting, see
    /// [`crate::Controller::set_io_timeout`]). Each timed-out command gets
    /// the action once: `Abort` has the admin poller abort it (and reset
    /// the controller if the abort fails or finds nothing), `Reset` resets
    /// the controller, `None` logs it.
    pub fn set_timeout(&mut self, timeout: Option<(Duration, TimeoutAction)>) {
        self.timeout = timeout;
    }

    #[inline]
    fn effective_timeout(&self) -> Option<(Duration, TimeoutAction)> {
        self.timeout.or_else(|| {
            self.shared
                .io_timeout()
                .map(|t| (t, self.shared.timeout_action()))
        })
    }

    #[inline]
    fn check_ready(&self) -> Result<(), SubmitErrorKind> {
        if self.connected
            && self.shared.generation() == self.generation
            && self.shared.state() == CtrlrState::Ready
        {
            return Ok(());
        }
        match self.shared.state() {
            CtrlrState::Removed => Err(SubmitErrorKind::Removed),
            CtrlrState::Failed => Err(SubmitErrorKind::Failed),
            _ if self.connect == Connect::Refused => Err(SubmitErrorKind::Failed),
            _ => Err(SubmitErrorKind::Resetting),
        }
    }

    #[inline]
    fn check_namespace(&self, nsid: u32) -> Result<(), SubmitErrorKind> {
        self.check_ready()?;
        if self.shared.block_size(nsid) == 0 {
            return Err(SubmitErrorKind::InvalidNamespace(nsid));
        }
        Ok(())
    }

    /// Submits a prepared command with data `segments`. The building blocks
    /// below ([`IoQpair::read`] and friends) check lengths first; this one
    /// only checks the queue state and PRP rules.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    #[inline]
    pub fn submit_raw(
        &mut self,
        sqe: Sqe,
        segments: &[(u64, usize)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        if let Err(kind) = self.check_ready() {
            return Err(SubmitError { kind, ctx });
        }
        self.submit_ready(sqe, segments, ctx)
    }

    /// [`IoQpair::submit_raw`] once the queue state has been checked.
    #[inline]
    fn submit_ready(
        &mut self,
        sqe: Sqe,
        segments: &[(u64, usize)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        match self.core.submit(sqe, segments, ctx) {
            Ok(_) => {
                self.stats.submitted += 1;
                Ok(())
            }
            Err((None, ctx)) => {
                self.stats.queue_full += 1;
                Err(SubmitError {
                    kind: SubmitErrorKind::QueueFull,
                    ctx,
                })
            }
            Err((Some(e), ctx)) => Err(SubmitError {
                kind: SubmitErrorKind::Prp(e),
                ctx,
            }),
        }
    }

    #[inline]
    fn data_command(
        &mut self,
        sqe_of: impl FnOnce(u32) -> Sqe,
        nsid: u32,
        blocks: u64,
        segments: &[(u64, usize)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        let fail = |kind, ctx| Err(SubmitError { kind, ctx });
        if let Err(kind) = self.check_namespace(nsid) {
            return fail(kind, ctx);
        }
        let bs = self.shared.block_size(nsid);
        let (n, ctx) = check_blocks(blocks, ctx)?;
        let expected = blocks as usize * bs as usize;
        let got: usize = segments.iter().map(|s| s.1).sum();
        if got != expected {
            return fail(SubmitErrorKind::LengthMismatch { expected, got }, ctx);
        }
        let max = self
            .shared
            .max_transfer
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if expected > max {
            return fail(
                SubmitErrorKind::TooLarge {
                    bytes: expected,
                    max,
                },
                ctx,
            );
        }
        self.submit_ready(sqe_of(n), segments, ctx)
    }

    /// Reads `blocks` logical blocks at `lba` into `segments` (IOVA, length),
    /// whose lengths add up to `blocks` x the block size.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    #[inline]
    pub fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segments: &[(u64, usize)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data_command(|b| iocmd::read(nsid, lba, b), nsid, blocks, segments, ctx)
    }

    /// Writes `blocks` logical blocks at `lba` from `segments`, with Force
    /// Unit Access if `fua`.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    #[inline]
    pub fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segments: &[(u64, usize)],
        fua: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data_command(
            |b| iocmd::write(nsid, lba, b, fua),
            nsid,
            blocks,
            segments,
            ctx,
        )
    }

    /// Compares `blocks` logical blocks at `lba` with `segments`; a mismatch
    /// completes with the Compare Failure status.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    pub fn compare(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        segments: &[(u64, usize)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        self.data_command(
            |b| iocmd::compare(nsid, lba, b),
            nsid,
            blocks,
            segments,
            ctx,
        )
    }

    /// Flushes the namespace's volatile write cache.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    pub fn flush(&mut self, nsid: u32, ctx: C) -> Result<(), SubmitError<C>> {
        if let Err(kind) = self.check_namespace(nsid) {
            return Err(SubmitError { kind, ctx });
        }
        self.submit_ready(iocmd::flush(nsid), &[], ctx)
    }

    /// Writes zeroes over `blocks` logical blocks at `lba` (deallocating them
    /// if `deallocate` and the controller chooses to).
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        deallocate: bool,
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        if let Err(kind) = self.check_namespace(nsid) {
            return Err(SubmitError { kind, ctx });
        }
        let (n, ctx) = check_blocks(blocks, ctx)?;
        self.submit_ready(iocmd::write_zeroes(nsid, lba, n, deallocate), &[], ctx)
    }

    /// Deallocates (trims) the given (LBA, block count) ranges, 1 to 256 of
    /// them, with one Dataset Management command.
    ///
    /// # Errors
    /// [`SubmitError`] with the context given back.
    pub fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[(u64, u32)],
        ctx: C,
    ) -> Result<(), SubmitError<C>> {
        if let Err(kind) = self.check_namespace(nsid) {
            return Err(SubmitError { kind, ctx });
        }
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(SubmitError {
                kind: SubmitErrorKind::BadRangeCount(ranges.len()),
                ctx,
            });
        }
        let sqe = iocmd::deallocate(nsid, ranges.len() as u32);
        let fill = |page: &mut dma::DmaBuf| {
            for (i, &(slba, nlb)) in ranges.iter().enumerate() {
                page.write_volatile::<DsmRange>(
                    i * 16,
                    DsmRange {
                        attributes: 0,
                        nlb,
                        slba,
                    },
                );
            }
        };
        match self.core.submit_with_page(sqe, fill, ctx) {
            Ok(_) => {
                self.stats.submitted += 1;
                Ok(())
            }
            Err(ctx) => {
                self.stats.queue_full += 1;
                Err(SubmitError {
                    kind: SubmitErrorKind::QueueFull,
                    ctx,
                })
            }
        }
    }

    /// Rings the submission doorbell for everything submitted since the last
    /// ring, then the completion doorbell for what was reaped since.
    /// [`IoQpair::process_completions`] does it too.
    #[inline]
    pub fn ring_doorbell(&mut self) {
        self.core.ring();
        self.publish_load();
    }

    /// Completions the controller has posted that no poll has reaped yet
    /// (a look at the completion queue; nothing is consumed). A test that
    /// must reset a controller with nothing left in the device's hands
    /// waits for this to reach [`IoQpair::outstanding`].
    pub fn posted_completions(&self) -> usize {
        self.core.posted()
    }

    /// Rings the doorbells for pending submissions and for what the last
    /// poll reaped, then reaps up to `max` completions, calling
    /// `on_complete(ctx, result)` for each (DW0 of the completion, or why
    /// the command failed). Returns how many completed. The completion
    /// doorbell for them is written by the next [`IoQpair::ring_doorbell`]
    /// or poll, after the submission doorbell for what the caller submits
    /// in between (the order that keeps the controller busy: see
    /// `QueueCore::ring`). Also handles controller resets (see the module
    /// docs) and timeouts.
    #[inline]
    pub fn process_completions(
        &mut self,
        max: usize,
        mut on_complete: impl FnMut(C, Result<u32, CommandError>),
    ) -> usize {
        if self.timeout.is_some() || self.shared.io_timeout().is_some() {
            // One clock read per poll, not per command: submissions stamp
            // themselves with the time of the last poll.
            self.core.now = Instant::now();
        }
        if !self.connected || self.shared.generation() != self.generation {
            let n = self.recover(&mut on_complete);
            self.publish_load();
            return n;
        }
        self.core.ring();
        let stats = &mut self.stats;
        stats.polls += 1;
        let n = self.core.reap(max, |ctx, cqe| {
            let r = result_of(cqe);
            if r.is_ok() {
                stats.completed += 1;
            } else {
                stats.failed += 1;
            }
            on_complete(ctx, r)
        });
        if n == 0 {
            self.stats.empty_polls += 1;
            if self.core.outstanding > 0 {
                self.idle_checks(&mut on_complete);
            }
        }
        self.publish_load();
        n
    }

    #[inline]
    fn publish_load(&self) {
        let n = self.core.outstanding as u32;
        if self.load.load(std::sync::atomic::Ordering::Relaxed) != n {
            self.load.store(n, std::sync::atomic::Ordering::Release);
        }
    }

    #[cold]
    fn idle_checks(&mut self, on_complete: &mut impl FnMut(C, Result<u32, CommandError>)) {
        let Some((timeout, action)) = self.effective_timeout() else {
            // Without timeouts, a vanished device is still noticed.
            if self.shared.state() == CtrlrState::Removed {
                self.recover(on_complete);
            }
            return;
        };
        let now = Instant::now();
        self.core.now = now;
        if now.duration_since(self.last_scan) < timeout.min(Duration::from_millis(100)) {
            return;
        }
        self.last_scan = now;
        if self.shared.registers_gone() {
            self.shared.set_state(CtrlrState::Removed);
            self.recover(on_complete);
            return;
        }
        let qid = self.core.qid;
        for (cid, t) in self.core.trackers.iter_mut().enumerate() {
            if t.ctx.is_none() || t.abort_requested {
                continue;
            }
            let age = now.duration_since(t.submitted);
            if age <= timeout {
                continue;
            }
            // Each command gets the action once (as SPDK's timeout
            // callback).
            t.abort_requested = true;
            log::warn!(
                "{}: queue {qid} command {cid} (opcode {:#x}) timed out after {age:?}; action: {}",
                self.shared.name,
                t.opcode,
                action.name()
            );
            match action {
                TimeoutAction::None => {}
                TimeoutAction::Abort => self.shared.request(Request::Abort {
                    qid,
                    cid: cid as u16,
                }),
                TimeoutAction::Reset => self.shared.request(Request::Reset),
            }
        }
    }

    /// Reconnects after a reset (or connects the first time), or fails
    /// everything after removal; never waits.
    #[cold]
    fn recover(&mut self, on_complete: &mut impl FnMut(C, Result<u32, CommandError>)) -> usize {
        let state = self.shared.state();
        let generation = self.shared.generation();
        let mut n = 0;
        if state == CtrlrState::Removed {
            n += self.fail_outstanding(CommandError::ControllerRemoved, on_complete);
            self.connected = false;
            return n;
        }
        if generation != self.generation {
            // The controller was disabled: it will never complete these.
            n += self.fail_outstanding(CommandError::AbortedByReset, on_complete);
            self.core.reset_rings();
            if self.connected {
                self.stats.reconnects += 1;
            }
            self.connected = false;
            self.connect = Connect::Start;
            self.generation = generation;
        }
        if !self.connected && self.advance_connect() && self.stats.reconnects > 0 {
            log::info!(
                "{}: queue {} re-created after reset",
                self.shared.name,
                self.core.qid
            );
        }
        n
    }

    fn fail_outstanding(
        &mut self,
        err: CommandError,
        on_complete: &mut impl FnMut(C, Result<u32, CommandError>),
    ) -> usize {
        let stats = &mut self.stats;
        self.core.fail_all(|ctx| {
            stats.failed += 1;
            on_complete(ctx, Err(err))
        })
    }
}

impl<C> Drop for IoQpair<C> {
    fn drop(&mut self) {
        let sh = self.shared.clone();
        if self.core.outstanding > 0 {
            log::warn!(
                "{}: queue {} dropped with {} commands outstanding",
                sh.name,
                self.core.qid,
                self.core.outstanding
            );
        }
        // SAFETY: `core` is taken once, here, and not used after.
        let core = unsafe { ManuallyDrop::take(&mut self.core) };
        let qid = core.qid;
        if let Connect::Cq(t) | Connect::Sq(t) = self.connect {
            sh.admin().forget(t);
        }
        let created = !matches!(self.connect, Connect::Start | Connect::Refused)
            && sh.generation() == self.generation
            && sh.state() != CtrlrState::Removed;
        if !created {
            sh.free_qid(qid);
            return;
        }
        // The controller may still use the rings: the admin poller deletes
        // the queue (SQ, then CQ) and frees them after.
        let (sq, cq) = core.into_rings();
        sh.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Retired {
                qid,
                _rings: (sq, cq),
                generation: self.generation,
                step: None,
                sq_deleted: false,
                stuck: false,
            });
    }
}
