//! Controller bring-up (and re-initialisation after a reset) as a polled
//! state machine: every step either finishes, waits with a deadline, or has
//! one admin command in flight. Nothing spins without a bound.
//!
//! Steps (NVMe base specification 3.5.1): wait for a pending enable to
//! settle, clear CC.EN and wait for CSTS.RDY=0 (bounded by CAP.TO), program
//! the admin queues (AQA/ASQ/ACQ) and CC, set CC.EN and wait for
//! CSTS.RDY=1, Identify Controller, Set Features Number of Queues, the
//! active namespace list, Identify Namespace for each, Asynchronous Event
//! Configuration, then keep Asynchronous Event Requests outstanding.

use std::task::Poll;
use std::time::{Duration, Instant};

use dma::DmaBuf;

use crate::admin::{AdminEnd, StartError};
use crate::cmd::admin as cmd;
use crate::error::NvmeError;
use crate::regs::{Cap, Registers, cc, csts};
use crate::shared::Shared;
use crate::spec::{IdentifyController, IdentifyNamespace, Sqe};

/// The steps of bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    CheckEnabled,
    WaitReadyBeforeDisable,
    WaitDisabled,
    Enable,
    WaitEnabled,
    IdentifyController,
    SetNumQueues,
    ListNamespaces,
    IdentifyNamespaces,
    ConfigureAer,
    Done,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::CheckEnabled => "check-enabled",
            Step::WaitReadyBeforeDisable => "wait-ready-before-disable",
            Step::WaitDisabled => "wait-disabled",
            Step::Enable => "enable",
            Step::WaitEnabled => "wait-enabled",
            Step::IdentifyController => "identify-controller",
            Step::SetNumQueues => "set-number-of-queues",
            Step::ListNamespaces => "active-namespace-list",
            Step::IdentifyNamespaces => "identify-namespace",
            Step::ConfigureAer => "configure-async-events",
            Step::Done => "done",
        }
    }
}

/// What bring-up learned.
#[derive(Debug)]
pub(crate) struct InitResult {
    pub identify: IdentifyController,
    pub namespaces: Vec<(u32, IdentifyNamespace)>,
    pub granted_queues: u16,
}

pub(crate) struct Init {
    step: Step,
    entered: Instant,
    deadline: Instant,
    cap: Cap,
    want_queues: u16,
    /// The admin command of this step, in flight.
    ticket: Option<u64>,
    identify: Option<IdentifyController>,
    nsids: Vec<u32>,
    ns_index: usize,
    namespaces: Vec<(u32, IdentifyNamespace)>,
    granted: u16,
}

impl Init {
    /// A bring-up from scratch (`from_disable`) or, after a reset that
    /// already disabled the controller, from programming the admin queue.
    pub fn new(cap: Cap, want_queues: u16, from_disable: bool) -> Self {
        let now = Instant::now();
        Init {
            step: if from_disable {
                Step::CheckEnabled
            } else {
                Step::Enable
            },
            entered: now,
            deadline: now,
            cap,
            want_queues,
            ticket: None,
            identify: None,
            nsids: Vec::new(),
            ns_index: 0,
            namespaces: Vec::new(),
            granted: 0,
        }
    }

    fn go(&mut self, step: Step, timeout: Duration) {
        self.step = step;
        self.entered = Instant::now();
        self.deadline = self.entered + timeout;
        self.ticket = None;
    }

    fn ready_timeout(&self) -> Duration {
        // CAP.TO, but never less than 500 ms (QEMU under TCG is slow).
        Duration::from_millis(self.cap.timeout_ms().max(500))
    }

    fn timed_out(&self, sh: &Shared, csts: u32) -> NvmeError {
        NvmeError::InitTimeout {
            ctrlr: sh.name.clone(),
            state: self.step.name(),
            waited_ms: self.entered.elapsed().as_millis() as u64,
            csts,
        }
    }

    /// Issues `sqe` (with the scratch page as data if `data`) or, when it is
    /// in flight, checks for its completion.
    fn admin(
        &mut self,
        sh: &Shared,
        sqe: Sqe,
        data: Option<&DmaBuf>,
        command: &'static str,
    ) -> Poll<Result<u32, NvmeError>> {
        let mut admin = sh.admin();
        let ticket = match self.ticket {
            Some(t) => t,
            None => {
                let segs = data.map(|d| [(d.iova(), 4096)]);
                let segs = segs.as_ref().map_or(&[][..], |s| &s[..]);
                // The scratch page belongs to the controller, which outlives
                // the command (a timeout ends in a reset or the removal).
                match admin.start(sqe, segs, None, sh.admin_timeout()) {
                    Ok(t) => {
                        self.ticket = Some(t);
                        t
                    }
                    Err((StartError::Full, _)) => {
                        return Poll::Ready(Err(NvmeError::AdminQueueFull {
                            ctrlr: sh.name.clone(),
                            command,
                        }));
                    }
                    Err((StartError::Prp(source), _)) => {
                        return Poll::Ready(Err(NvmeError::Prp {
                            ctrlr: sh.name.clone(),
                            source,
                        }));
                    }
                }
            }
        };
        admin.expire(Instant::now());
        match admin.check(ticket, None) {
            None => Poll::Pending,
            Some((end, _)) => {
                self.ticket = None;
                drop(admin);
                Poll::Ready(match end {
                    // Bring-up gives up (its caller resets or fails the
                    // attach); no reset request from here.
                    AdminEnd::TimedOut => Err(NvmeError::AdminTimeout {
                        ctrlr: sh.name.clone(),
                        command,
                        ms: sh.admin_timeout().as_millis() as u64,
                    }),
                    end => crate::client::finish(sh, command, end),
                })
            }
        }
    }

    /// Advances as far as possible without waiting.
    pub fn poll(&mut self, sh: &Shared, scratch: &DmaBuf) -> Poll<Result<InitResult, NvmeError>> {
        loop {
            let regs = &*sh.regs;
            let st = regs.read32(Registers::CSTS);
            if st == u32::MAX {
                return Poll::Ready(Err(NvmeError::Removed {
                    ctrlr: sh.name.clone(),
                }));
            }
            match self.step {
                Step::CheckEnabled => {
                    let en = regs.read32(Registers::CC) & cc::EN != 0;
                    let rdy = st & csts::RDY != 0;
                    if en && !rdy {
                        // An enable is in progress: let it finish first.
                        let t = self.ready_timeout();
                        self.go(Step::WaitReadyBeforeDisable, t);
                    } else {
                        if en {
                            regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
                        }
                        let t = self.ready_timeout();
                        self.go(Step::WaitDisabled, t);
                    }
                }
                Step::WaitReadyBeforeDisable => {
                    if st & csts::RDY != 0 || st & csts::CFS != 0 {
                        regs.write32(Registers::CC, regs.read32(Registers::CC) & !cc::EN);
                        let t = self.ready_timeout();
                        self.go(Step::WaitDisabled, t);
                    } else if Instant::now() > self.deadline {
                        return Poll::Ready(Err(self.timed_out(sh, st)));
                    } else {
                        return Poll::Pending;
                    }
                }
                Step::WaitDisabled => {
                    if st & csts::RDY == 0 {
                        self.go(Step::Enable, Duration::ZERO);
                    } else if Instant::now() > self.deadline {
                        return Poll::Ready(Err(self.timed_out(sh, st)));
                    } else {
                        return Poll::Pending;
                    }
                }
                Step::Enable => {
                    let admin = sh.admin();
                    let entries = admin.core.sq.entries() as u32;
                    regs.write32(Registers::AQA, (entries - 1) << 16 | (entries - 1));
                    regs.write64(Registers::ASQ, admin.core.sq.iova());
                    regs.write64(Registers::ACQ, admin.core.cq.iova());
                    drop(admin);
                    regs.write32(Registers::CC, cc::enabled(sh.page_size));
                    let t = self.ready_timeout();
                    self.go(Step::WaitEnabled, t);
                }
                Step::WaitEnabled => {
                    if st & csts::CFS != 0 {
                        return Poll::Ready(Err(NvmeError::Fatal {
                            ctrlr: sh.name.clone(),
                            state: self.step.name(),
                        }));
                    }
                    if st & csts::RDY != 0 {
                        self.go(Step::IdentifyController, sh.admin_timeout());
                    } else if Instant::now() > self.deadline {
                        return Poll::Ready(Err(self.timed_out(sh, st)));
                    } else {
                        return Poll::Pending;
                    }
                }
                Step::IdentifyController => {
                    match self.admin(
                        sh,
                        cmd::identify_controller(),
                        Some(scratch),
                        "Identify Controller",
                    ) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(_)) => {}
                    }
                    let mut b = [0u8; 4096];
                    scratch.read_at(0, &mut b);
                    self.identify = Some(IdentifyController::parse(&b));
                    self.go(Step::SetNumQueues, sh.admin_timeout());
                }
                Step::SetNumQueues => {
                    let want = self.want_queues.max(1);
                    match self.admin(
                        sh,
                        cmd::set_num_queues(want, want),
                        None,
                        "Set Features (Number of Queues)",
                    ) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(dw0)) => {
                            let nsq = (dw0 & 0xffff) + 1;
                            let ncq = (dw0 >> 16) + 1;
                            self.granted =
                                nsq.min(ncq).min(want as u32).min(u16::MAX as u32 - 1) as u16;
                        }
                    }
                    self.nsids.clear();
                    self.go(Step::ListNamespaces, sh.admin_timeout());
                }
                Step::ListNamespaces => {
                    let after = self.nsids.last().copied().unwrap_or(0);
                    match self.admin(
                        sh,
                        cmd::active_namespaces(after),
                        Some(scratch),
                        "Identify (Active Namespace List)",
                    ) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(_)) => {}
                    }
                    let mut b = [0u8; 4096];
                    scratch.read_at(0, &mut b);
                    let n = parse_ns_list(&b, &mut self.nsids);
                    if n == 1024 && self.nsids.len() < 1 << 16 {
                        self.go(Step::ListNamespaces, sh.admin_timeout());
                    } else {
                        self.namespaces.clear();
                        self.ns_index = 0;
                        self.go(Step::IdentifyNamespaces, sh.admin_timeout());
                    }
                }
                Step::IdentifyNamespaces => {
                    let Some(&nsid) = self.nsids.get(self.ns_index) else {
                        self.go(Step::ConfigureAer, sh.admin_timeout());
                        continue;
                    };
                    match self.admin(
                        sh,
                        cmd::identify_namespace(nsid),
                        Some(scratch),
                        "Identify Namespace",
                    ) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(_)) => {}
                    }
                    let mut b = [0u8; 4096];
                    scratch.read_at(0, &mut b);
                    let ns = IdentifyNamespace::parse(&b);
                    if ns.is_active() {
                        self.namespaces.push((nsid, ns));
                    }
                    self.ns_index += 1;
                    self.go(Step::IdentifyNamespaces, sh.admin_timeout());
                }
                Step::ConfigureAer => {
                    match self.admin(
                        sh,
                        cmd::configure_async_events(),
                        None,
                        "Set Features (Asynchronous Event Configuration)",
                    ) {
                        Poll::Pending => return Poll::Pending,
                        // Not every controller takes every notice: run without.
                        Poll::Ready(Err(e)) => {
                            log::info!("{e}; continuing without namespace notices")
                        }
                        Poll::Ready(Ok(_)) => {}
                    }
                    self.go(Step::Done, Duration::ZERO);
                }
                Step::Done => {
                    let Some(identify) = self.identify.take() else {
                        return Poll::Ready(Err(NvmeError::Unsupported {
                            ctrlr: sh.name.clone(),
                            what: "bring-up ended without Identify Controller data".into(),
                        }));
                    };
                    return Poll::Ready(Ok(InitResult {
                        identify,
                        namespaces: std::mem::take(&mut self.namespaces),
                        granted_queues: self.granted,
                    }));
                }
            }
        }
    }
}

/// Appends the ids of an Active Namespace List page to `nsids`; returns how
/// many it held. The list is ascending and ends at the first zero; an id
/// out of order or the broadcast value ends it too (device data is checked,
/// not trusted).
pub(crate) fn parse_ns_list(page: &[u8], nsids: &mut Vec<u32>) -> usize {
    let mut n = 0;
    for chunk in page.chunks_exact(4) {
        let id = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if id == 0 || id <= nsids.last().copied().unwrap_or(0) || id == u32::MAX {
            break;
        }
        nsids.push(id);
        n += 1;
    }
    n
}
