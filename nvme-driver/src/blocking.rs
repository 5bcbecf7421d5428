//! Waiting versions of the controller's operations, for threads that are
//! not reactors: tests, the perf tool's set-up, examples. Each one drives
//! the polled operation itself, sleeping briefly between polls. This is
//! the only file of the driver that sleeps; reactor code (the bdev module)
//! never uses it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use dma::DmaMemory;

use crate::ctrlr::{Controller, ControllerOptions, NsEvent};
use crate::error::NvmeError;
use crate::pci::Bdf;
use crate::qpair::IoQpair;
use crate::regs::RegisterIo;
use crate::shared::CtrlrState;
use crate::spec::{ErrorLogEntry, SmartLog};

fn nap(spins: &mut u32) {
    *spins += 1;
    if *spins < 100 {
        std::hint::spin_loop();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Runs `f` to completion on this thread, polling the controller's admin
/// queue in between (no admin poller runs here).
fn wait<F: Future>(c: &mut Controller, f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    let mut spins = 0;
    loop {
        if let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
            return r;
        }
        let _ = c.poll_admin();
        nap(&mut spins);
    }
}

/// The waiting operations of [`Controller`].
pub trait BlockingController: Sized {
    /// Opens the PCIe controller at `bdf` and brings it up, waiting.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    fn open(bdf: Bdf, mem: &DmaMemory, opts: ControllerOptions) -> Result<Self, NvmeError>;

    /// Brings up the controller reached through `regs`, waiting.
    ///
    /// # Errors
    /// [`NvmeError`] naming the controller and the step that failed.
    fn with_registers(
        name: String,
        regs: std::sync::Arc<dyn RegisterIo>,
        mem: &DmaMemory,
        opts: ControllerOptions,
    ) -> Result<Self, NvmeError>;

    /// Creates an I/O queue pair and waits until it exists on the
    /// controller.
    ///
    /// # Errors
    /// As [`Controller::create_io_qpair`], or the controller's refusal.
    fn connect_io_qpair<C>(&self, depth: u32) -> Result<IoQpair<C>, NvmeError>;

    /// Resets the controller and waits for the end.
    ///
    /// # Errors
    /// The step that failed.
    fn reset(&mut self) -> Result<(), NvmeError>;

    /// Reads `out.len()` bytes of log page `lid` for namespace `nsid`.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    fn get_log_page(&mut self, lid: u8, nsid: u32, out: &mut [u8]) -> Result<(), NvmeError>;

    /// SMART / Health Information.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    fn smart_log(&mut self) -> Result<SmartLog, NvmeError>;

    /// The Error Information log entries in use.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    fn error_log(&mut self) -> Result<Vec<ErrorLogEntry>, NvmeError>;

    /// Get Features.
    ///
    /// # Errors
    /// The failing command.
    fn get_feature(&mut self, fid: u8, nsid: u32) -> Result<u32, NvmeError>;

    /// Set Features.
    ///
    /// # Errors
    /// The failing command.
    fn set_feature(&mut self, fid: u8, value: u32) -> Result<u32, NvmeError>;

    /// Abort; whether the controller aborted the command.
    ///
    /// # Errors
    /// The failing command.
    fn abort(&mut self, qid: u16, cid: u16) -> Result<bool, NvmeError>;

    /// Formats namespace `nsid` with LBA format `lbaf`, then re-reads the
    /// namespaces.
    ///
    /// # Errors
    /// [`NvmeError::Unsupported`] without Format NVM, or the failing command.
    fn format_nvm(&mut self, nsid: u32, lbaf: u8) -> Result<Vec<NsEvent>, NvmeError>;

    /// Re-reads the namespaces and delivers what changed.
    ///
    /// # Errors
    /// The failing Identify command.
    fn rescan_namespaces(&mut self) -> Result<Vec<NsEvent>, NvmeError>;

    /// Orderly shutdown, waiting (bounded by CAP.TO).
    fn shutdown(&mut self);
}

fn bring_up(mut s: crate::ctrlr::Starting) -> Result<Controller, NvmeError> {
    let mut spins = 0;
    loop {
        if let Poll::Ready(r) = s.poll() {
            return r;
        }
        nap(&mut spins);
    }
}

impl BlockingController for Controller {
    fn open(bdf: Bdf, mem: &DmaMemory, opts: ControllerOptions) -> Result<Self, NvmeError> {
        bring_up(Controller::open_start(bdf, mem, opts)?)
    }

    fn with_registers(
        name: String,
        regs: std::sync::Arc<dyn RegisterIo>,
        mem: &DmaMemory,
        opts: ControllerOptions,
    ) -> Result<Self, NvmeError> {
        bring_up(Controller::start(name, regs, mem, opts)?)
    }

    fn connect_io_qpair<C>(&self, depth: u32) -> Result<IoQpair<C>, NvmeError> {
        let deadline = Instant::now() + self.shared().admin_timeout() * 2;
        let mut spins = 0;
        // A queue id a dropped queue pair held comes back once the
        // controller deleted that queue.
        let mut qp = loop {
            match self.create_io_qpair(depth) {
                Err(NvmeError::NoFreeQueue { .. })
                    if self.shared().retiring() && Instant::now() < deadline =>
                {
                    nap(&mut spins)
                }
                r => break r?,
            }
        };
        loop {
            qp.process_completions(0, |_, _| {});
            if qp.is_connected() {
                return Ok(qp);
            }
            if self.state() == CtrlrState::Removed {
                return Err(NvmeError::Removed {
                    ctrlr: self.name().to_owned(),
                });
            }
            if qp.connect_refused() || Instant::now() > deadline {
                return Err(NvmeError::NotReady {
                    ctrlr: self.name().to_owned(),
                    state: "queue creation refused",
                });
            }
            nap(&mut spins);
        }
    }

    fn reset(&mut self) -> Result<(), NvmeError> {
        self.start_reset()?;
        let target = self.resets();
        let mut spins = 0;
        while self.resets_done() < target {
            if let Err(e) = self.poll_admin() {
                if self.resets_done() >= target {
                    return Err(e);
                }
                if matches!(e, NvmeError::Removed { .. }) {
                    return Err(e);
                }
            }
            nap(&mut spins);
        }
        match self.state() {
            CtrlrState::Ready => Ok(()),
            s => Err(NvmeError::NotReady {
                ctrlr: self.name().to_owned(),
                state: s.name(),
            }),
        }
    }

    fn get_log_page(&mut self, lid: u8, nsid: u32, out: &mut [u8]) -> Result<(), NvmeError> {
        let a = self.admin();
        let b = wait(self, a.get_log_page(lid, nsid, out.len()))?;
        out.copy_from_slice(&b);
        Ok(())
    }

    fn smart_log(&mut self) -> Result<SmartLog, NvmeError> {
        let a = self.admin();
        wait(self, a.smart_log())
    }

    fn error_log(&mut self) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let a = self.admin();
        let n = self.identify().elpe as usize + 1;
        wait(self, a.error_log(n))
    }

    fn get_feature(&mut self, fid: u8, nsid: u32) -> Result<u32, NvmeError> {
        let a = self.admin();
        wait(self, a.get_feature(fid, nsid))
    }

    fn set_feature(&mut self, fid: u8, value: u32) -> Result<u32, NvmeError> {
        let a = self.admin();
        wait(self, a.set_feature(fid, value))
    }

    fn abort(&mut self, qid: u16, cid: u16) -> Result<bool, NvmeError> {
        let a = self.admin();
        wait(self, a.abort(qid, cid))
    }

    fn format_nvm(&mut self, nsid: u32, lbaf: u8) -> Result<Vec<NsEvent>, NvmeError> {
        if !self.identify().supports_format() {
            return Err(NvmeError::Unsupported {
                ctrlr: self.name().to_owned(),
                what: "Format NVM (OACS bit 1)".into(),
            });
        }
        let a = self.admin();
        wait(
            self,
            a.command(
                crate::cmd::admin::format_nvm(nsid, lbaf),
                None,
                "Format NVM",
            ),
        )?;
        self.rescan_namespaces()
    }

    fn rescan_namespaces(&mut self) -> Result<Vec<NsEvent>, NvmeError> {
        let a = self.admin();
        let list = wait(self, a.identify_namespaces())?;
        Ok(self.update_namespaces(list))
    }

    fn shutdown(&mut self) {
        self.start_shutdown();
        finish_shutdown(self);
    }
}

/// Waits for a shutdown to end (starting it if needed), bounded by CAP.TO.
pub(crate) fn finish_shutdown(c: &mut Controller) {
    c.start_shutdown();
    let mut spins = 0;
    while c.poll_shutdown().is_pending() {
        nap(&mut spins);
    }
}
