//! The admin queue: one synchronous command at a time (control path) plus
//! the Asynchronous Event Requests kept outstanding.

use std::time::{Duration, Instant};

use crate::cmd::admin as cmd;
use crate::qcore::QueueCore;
use crate::spec::Sqe;
use crate::status::{CommandError, NvmeStatus};

#[derive(Debug)]
pub(crate) enum AdminSlot {
    /// The synchronous command in flight.
    Sync,
    /// An Asynchronous Event Request.
    Aer,
}

/// Why an admin command could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartError {
    /// A synchronous command is still in flight (it timed out earlier: the
    /// controller needs a reset).
    Busy,
    /// No free slot.
    Full,
    /// Bad data buffer.
    Prp(crate::prp::PrpError),
}

/// What the admin queue can report besides the result of a command.
pub(crate) enum AdminOutcome {
    /// Not finished yet.
    Pending,
    /// Finished: DW0 or the error.
    Done(Result<u32, CommandError>),
}

pub(crate) struct AdminQueue {
    pub core: QueueCore<AdminSlot>,
    result: Option<Result<u32, CommandError>>,
    in_flight: bool,
    /// DW0 of completed AERs, waiting to be handled.
    pub events: Vec<u32>,
    pub aers_outstanding: usize,
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
            result: None,
            in_flight: false,
            events: Vec::new(),
            aers_outstanding: 0,
        }
    }

    /// Starts `sqe` with data `segments`. One synchronous command at a time.
    pub fn start(&mut self, sqe: Sqe, segments: &[(u64, usize)]) -> Result<(), StartError> {
        if self.in_flight {
            return Err(StartError::Busy);
        }
        self.result = None;
        self.core
            .submit(sqe, segments, AdminSlot::Sync)
            .map_err(|(e, _)| match e {
                Some(p) => StartError::Prp(p),
                None => StartError::Full,
            })?;
        self.in_flight = true;
        self.core.ring();
        Ok(())
    }

    /// Reaps admin completions; AER completions are queued in `events`.
    pub fn poll(&mut self) -> AdminOutcome {
        let (result, events, aers) = (
            &mut self.result,
            &mut self.events,
            &mut self.aers_outstanding,
        );
        self.core.reap(64, |slot, cqe| match slot {
            AdminSlot::Sync => *result = Some(outcome(cqe)),
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
        match self.result.take() {
            Some(r) => {
                self.in_flight = false;
                AdminOutcome::Done(r)
            }
            None => AdminOutcome::Pending,
        }
    }

    /// Whether a synchronous command is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Runs `sqe` to completion, polling until `timeout`. Returns `None` on
    /// timeout (the command stays in flight; the caller resets).
    pub fn execute(
        &mut self,
        sqe: Sqe,
        segments: &[(u64, usize)],
        timeout: Duration,
    ) -> Result<Option<Result<u32, CommandError>>, StartError> {
        self.start(sqe, segments)?;
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            if let AdminOutcome::Done(r) = self.poll() {
                return Ok(Some(r));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            spins += 1;
            if spins > 64 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
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

    /// Forgets everything outstanding (the controller was disabled).
    pub fn reset(&mut self) {
        self.core.fail_all(|_| {});
        self.core.reset_rings();
        self.in_flight = false;
        self.result = None;
        self.aers_outstanding = 0;
    }
}
