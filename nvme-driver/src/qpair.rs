//! I/O queue pairs: one submission and one completion queue, owned by one
//! core. No locks and no allocation on submit and complete: trackers (with
//! their PRP list pages) are preallocated per command id, the doorbell is
//! rung once per batch, completions are reaped by phase tag with a cap per
//! poll and handed to a closure with the caller's per-command context.
//!
//! # Reset and removal
//! When the controller is reset, commands outstanding on the queue pair are
//! completed with [`CommandError::AbortedByReset`] on its next poll (the
//! controller lost them; they may or may not have taken effect) and the
//! queue is created again on the controller; submissions in between are
//! refused with [`SubmitErrorKind::Resetting`]. When the controller is
//! removed, outstanding commands complete with
//! [`CommandError::ControllerRemoved`] and every submission fails at once.
//! Every command is completed exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd::{admin as acmd, io as iocmd};
use crate::error::{NvmeError, SubmitError, SubmitErrorKind};
use crate::qcore::QueueCore;
use crate::shared::{CtrlrState, Request, Shared};
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
    core: QueueCore<C>,
    shared: Arc<Shared>,
    generation: u64,
    connected: bool,
    timeout: Option<Duration>,
    last_scan: Instant,
    stats: QpairStats,
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
    /// Creates the queue pair on the controller (control path).
    pub(crate) fn create(shared: Arc<Shared>, qid: u16, depth: u16) -> Result<Self, NvmeError> {
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
        let mut qp = IoQpair {
            core,
            shared,
            generation,
            connected: false,
            timeout: None,
            last_scan: Instant::now(),
            stats: QpairStats::default(),
        };
        qp.create_on_controller()?;
        qp.connected = true;
        Ok(qp)
    }

    fn create_on_controller(&mut self) -> Result<(), NvmeError> {
        let sh = &self.shared;
        let entries = self.core.sq.entries();
        let qid = self.core.qid;
        let mut admin = sh.admin();
        let run =
            |admin: &mut crate::admin::AdminQueue, sqe: Sqe, command: &'static str| match admin
                .execute(sqe, &[], sh.admin_timeout)
            {
                Ok(Some(Ok(_))) => Ok(()),
                Ok(Some(Err(source))) => Err(NvmeError::Admin {
                    ctrlr: sh.name.clone(),
                    command,
                    source,
                }),
                Ok(None) => {
                    sh.request(Request::Reset);
                    Err(NvmeError::AdminTimeout {
                        ctrlr: sh.name.clone(),
                        command,
                        ms: sh.admin_timeout.as_millis() as u64,
                    })
                }
                Err(_) => Err(NvmeError::AdminQueueFull {
                    ctrlr: sh.name.clone(),
                    command,
                }),
            };
        run(
            &mut admin,
            acmd::create_io_cq(qid, entries, self.core.cq.iova()),
            "Create I/O Completion Queue",
        )?;
        if let Err(e) = run(
            &mut admin,
            acmd::create_io_sq(qid, entries, self.core.sq.iova(), qid),
            "Create I/O Submission Queue",
        ) {
            let _ = run(
                &mut admin,
                acmd::delete_io_cq(qid),
                "Delete I/O Completion Queue",
            );
            return Err(e);
        }
        Ok(())
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

    /// Enables per-command timeouts: a command outstanding longer than
    /// `timeout` is aborted through the controller's admin poller, and the
    /// controller is reset when it is still outstanding after twice that.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    #[inline]
    fn check_ready(&self) -> Result<(), SubmitErrorKind> {
        if self.connected && self.shared.generation() == self.generation {
            return Ok(());
        }
        match self.shared.state() {
            CtrlrState::Removed => Err(SubmitErrorKind::Removed),
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
        if !(1..=65536).contains(&blocks) {
            return fail(SubmitErrorKind::BadBlockCount(blocks), ctx);
        }
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
        self.submit_ready(sqe_of(blocks as u32), segments, ctx)
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
        if !(1..=65536).contains(&blocks) {
            return Err(SubmitError {
                kind: SubmitErrorKind::BadBlockCount(blocks),
                ctx,
            });
        }
        self.submit_ready(
            iocmd::write_zeroes(nsid, lba, blocks as u32, deallocate),
            &[],
            ctx,
        )
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
        if self.timeout.is_some() {
            // One clock read per poll, not per command: submissions stamp
            // themselves with the time of the last poll.
            self.core.now = Instant::now();
        }
        if !self.connected || self.shared.generation() != self.generation {
            return self.recover(&mut on_complete);
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
        n
    }

    #[cold]
    fn idle_checks(&mut self, on_complete: &mut impl FnMut(C, Result<u32, CommandError>)) {
        let Some(timeout) = self.timeout else {
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
            if t.ctx.is_none() {
                continue;
            }
            let age = now.duration_since(t.submitted);
            if age > timeout * 2 && t.abort_requested {
                log::warn!(
                    "{}: queue {qid} command {cid} (opcode {:#x}) still outstanding after abort; resetting",
                    self.shared.name,
                    t.opcode
                );
                self.shared.request(Request::Reset);
            } else if age > timeout && !t.abort_requested {
                log::warn!(
                    "{}: queue {qid} command {cid} (opcode {:#x}) timed out after {age:?}; aborting",
                    self.shared.name,
                    t.opcode
                );
                t.abort_requested = true;
                self.shared.request(Request::Abort {
                    qid,
                    cid: cid as u16,
                });
            }
        }
    }

    /// Reconnects after a reset, or fails everything after removal.
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
            self.connected = false;
            self.generation = generation;
        }
        if !self.connected && state == CtrlrState::Ready {
            match self.create_on_controller() {
                Ok(()) => {
                    self.connected = true;
                    self.stats.reconnects += 1;
                    log::info!(
                        "{}: queue {} re-created after reset",
                        self.shared.name,
                        self.core.qid
                    );
                }
                Err(e) => log::warn!(
                    "{}: re-creating queue {}: {e}",
                    self.shared.name,
                    self.core.qid
                ),
            }
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
        let sh = &self.shared;
        if self.connected && sh.generation() == self.generation && sh.state() == CtrlrState::Ready {
            let mut admin = sh.admin();
            for sqe in [
                acmd::delete_io_sq(self.core.qid),
                acmd::delete_io_cq(self.core.qid),
            ] {
                match admin.execute(sqe, &[], sh.admin_timeout) {
                    Ok(Some(Ok(_))) => {}
                    other => log::warn!(
                        "{}: deleting queue {}: {:?}",
                        sh.name,
                        self.core.qid,
                        other.map(|o| o.map(|r| r.map_err(|e| e.to_string())))
                    ),
                }
            }
        }
        if self.core.outstanding > 0 {
            log::warn!(
                "{}: queue {} dropped with {} commands outstanding",
                sh.name,
                self.core.qid,
                self.core.outstanding
            );
        }
        sh.free_qids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.core.qid);
    }
}
