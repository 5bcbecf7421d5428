//! The admin queue: commands started without waiting, each with a ticket
//! whose result is collected later (by a future, a state machine step or
//! the admin poller), plus the Asynchronous Event Requests kept
//! outstanding. Nothing here waits: whoever holds the queue reaps what the
//! controller posted, and a command past its deadline is reported as timed
//! out (it keeps its slot until the controller is reset).

use std::task::Waker;
use std::time::{Duration, Instant};

use dma::DmaBuf;

use crate::cmd::admin as cmd;
use crate::qcore::QueueCore;
use crate::spec::Sqe;
use crate::status::{CommandError, NvmeStatus};

#[derive(Debug)]
pub(crate) enum AdminSlot {
    /// A command started with [`AdminQueue::start`], by ticket.
    Cmd(u64),
    /// An Asynchronous Event Request.
    Aer,
}

/// Why an admin command could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartError {
    /// No free slot.
    Full,
    /// Bad data buffer.
    Prp(crate::prp::PrpError),
}

/// How an admin command ended, when it did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminEnd {
    /// The controller completed it: DW0 or its error status (or "aborted
    /// by reset" when the controller was disabled under it).
    Done(Result<u32, CommandError>),
    /// Its deadline passed with no completion.
    TimedOut,
}

struct Pending {
    ticket: u64,
    deadline: Instant,
    end: Option<AdminEnd>,
    waker: Option<Waker>,
    /// The command's data buffer, kept while the controller may still
    /// write it (until it completes or the queue is reset).
    buf: Option<DmaBuf>,
    /// No one waits any more (timed out and reported, or forgotten): the
    /// entry only keeps `buf` alive until the command ends.
    abandoned: bool,
}

pub(crate) struct AdminQueue {
    pub core: QueueCore<AdminSlot>,
    next_ticket: u64,
    pending: Vec<Pending>,
    /// DW0 of completed AERs, waiting to be handled.
    pub events: Vec<u32>,
    pub aers_outstanding: usize,
    /// Commands that timed out since the admin poller last looked.
    pub timed_out: usize,
}

fn outcome(cqe: &crate::spec::Cqe) -> Result<u32, CommandError> {
    let st = NvmeStatus(cqe.status_field());
    if st.is_success() {
        Ok(cqe.dw0)
    } else {
        Err(CommandError::Status(st))
    }
}

impl AdminQueue {
    pub fn new(core: QueueCore<AdminSlot>) -> Self {
        AdminQueue {
            core,
            next_ticket: 1,
            pending: Vec::new(),
            events: Vec::new(),
            aers_outstanding: 0,
            timed_out: 0,
        }
    }

    /// Starts `sqe` with data `segments` (in `buf`, which the queue keeps
    /// until the command ends, or in memory the caller keeps as long); its
    /// result is collected with [`AdminQueue::check`] by the returned
    /// ticket, within `timeout`. `buf` comes back when it cannot start.
    pub fn start(
        &mut self,
        sqe: Sqe,
        segments: &[(u64, usize)],
        buf: Option<DmaBuf>,
        timeout: Duration,
    ) -> Result<u64, (StartError, Option<DmaBuf>)> {
        let ticket = self.next_ticket;
        if let Err((e, _)) = self.core.submit(sqe, segments, AdminSlot::Cmd(ticket)) {
            let e = match e {
                Some(p) => StartError::Prp(p),
                None => StartError::Full,
            };
            return Err((e, buf));
        }
        self.next_ticket += 1;
        self.pending.push(Pending {
            ticket,
            deadline: Instant::now() + timeout,
            end: None,
            waker: None,
            buf,
            abandoned: false,
        });
        self.core.ring();
        Ok(ticket)
    }

    /// Reaps admin completions: results go to their tickets (waking whoever
    /// waits), AER completions are queued in `events`.
    pub fn poll(&mut self) {
        let (pending, events, aers) = (
            &mut self.pending,
            &mut self.events,
            &mut self.aers_outstanding,
        );
        self.core.reap(64, |slot, cqe| match slot {
            AdminSlot::Cmd(t) => {
                let Some(i) = pending.iter().position(|p| p.ticket == t) else {
                    return;
                };
                if pending[i].abandoned {
                    // Timed out and reported, or its waiter went: the
                    // buffer it kept can go now.
                    pending.swap_remove(i);
                    return;
                }
                let p = &mut pending[i];
                if p.end.is_none() {
                    p.end = Some(AdminEnd::Done(outcome(cqe)));
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                }
            }
            AdminSlot::Aer => {
                *aers -= 1;
                match outcome(cqe) {
                    Ok(dw0) => events.push(dw0),
                    // Aborted AERs (e.g. on SQ deletion) are not events.
                    Err(e) => log::debug!("asynchronous event request ended: {e}"),
                }
            }
        });
        // Nothing on the admin queue waits to be submitted after a
        // completion: the completion doorbell goes now.
        self.core.ring();
    }

    /// Ends, as timed out, the commands whose deadline passed; returns how
    /// many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for p in self.pending.iter_mut() {
            if p.end.is_none() && now > p.deadline {
                p.end = Some(AdminEnd::TimedOut);
                n += 1;
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            }
        }
        self.timed_out += n;
        n
    }

    /// Reaps, then collects the end of command `ticket` (with its buffer,
    /// unless it timed out: the controller may still write that one) if it
    /// came; otherwise remembers `waker` to wake when it does. An unknown
    /// ticket reads as aborted by a reset.
    pub fn check(
        &mut self,
        ticket: u64,
        waker: Option<&Waker>,
    ) -> Option<(AdminEnd, Option<DmaBuf>)> {
        self.poll();
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.ticket == ticket && !p.abandoned)
        else {
            return Some((AdminEnd::Done(Err(CommandError::AbortedByReset)), None));
        };
        match self.pending[i].end {
            Some(AdminEnd::TimedOut) => {
                self.pending[i].abandoned = true;
                Some((AdminEnd::TimedOut, None))
            }
            Some(end) => Some((end, self.pending.swap_remove(i).buf)),
            None => {
                if let Some(w) = waker {
                    self.pending[i].waker = Some(w.clone());
                }
                None
            }
        }
    }

    /// Gives up on `ticket` (its waiter went away): a command still in the
    /// controller's hands keeps its buffer until it ends.
    pub fn forget(&mut self, ticket: u64) {
        if let Some(i) = self.pending.iter().position(|p| p.ticket == ticket) {
            if matches!(self.pending[i].end, Some(AdminEnd::Done(_))) {
                self.pending.swap_remove(i);
            } else {
                self.pending[i].abandoned = true;
                self.pending[i].waker = None;
            }
        }
    }

    /// Keeps `want` Asynchronous Event Requests outstanding.
    pub fn post_aers(&mut self, want: usize) {
        while self.aers_outstanding < want {
            if self
                .core
                .submit(cmd::async_event_request(), &[], AdminSlot::Aer)
                .is_err()
            {
                break;
            }
            self.aers_outstanding += 1;
        }
        self.core.ring();
    }

    /// Forgets everything outstanding (the controller was disabled): the
    /// commands waited for end as aborted by the reset.
    pub fn reset(&mut self) {
        self.core.fail_all(|_| {});
        self.core.reset_rings();
        self.pending.retain(|p| !p.abandoned);
        for p in self.pending.iter_mut() {
            if p.end.is_none() {
                p.end = Some(AdminEnd::Done(Err(CommandError::AbortedByReset)));
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            }
        }
        self.aers_outstanding = 0;
    }
}
