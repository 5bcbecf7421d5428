//! Admin commands as futures: [`AdminClient`] starts a command on the
//! admin queue and resolves when its completion is reaped (by the
//! controller's admin poller, which wakes the future, or by the future's
//! own polls). Nothing waits on a thread; a reactor task awaits them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dma::DmaBuf;

use crate::admin::{AdminEnd, StartError};
use crate::cmd::admin as cmd;
use crate::error::NvmeError;
use crate::shared::{CtrlrState, Request, Shared};
use crate::spec::{ErrorLogEntry, IdentifyNamespace, SmartLog, Sqe, log_page};
use crate::status::CommandError;

/// A handle that issues admin commands to one controller from any core.
/// Cheap to clone; it keeps the controller's shared state alive, not the
/// controller.
#[derive(Clone)]
pub struct AdminClient {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("ctrlr", &self.shared.name)
            .finish()
    }
}

/// One admin command in flight (see [`AdminClient::command`]).
pub struct AdminCommand {
    shared: Arc<Shared>,
    sqe: Sqe,
    data: Option<DmaBuf>,
    data_len: usize,
    command: &'static str,
    ticket: Option<u64>,
}

impl AdminCommand {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sqe: Sqe,
        data: Option<DmaBuf>,
        command: &'static str,
    ) -> Self {
        let data_len = data.as_ref().map_or(0, |d| d.len());
        AdminCommand {
            shared,
            sqe,
            data,
            data_len,
            command,
            ticket: None,
        }
    }
}

impl Future for AdminCommand {
    /// DW0 and the data buffer given.
    type Output = Result<(u32, Option<DmaBuf>), NvmeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sh = this.shared.clone();
        let command = this.command;
        let Some(ticket) = this.ticket else {
            match sh.state() {
                CtrlrState::Ready => {}
                CtrlrState::Removed => {
                    return Poll::Ready(Err(NvmeError::Removed {
                        ctrlr: sh.name.clone(),
                    }));
                }
                s => {
                    return Poll::Ready(Err(NvmeError::NotReady {
                        ctrlr: sh.name.clone(),
                        state: s.name(),
                    }));
                }
            }
            let segs = this.data.as_ref().map(|d| [(d.iova(), this.data_len)]);
            let segs = segs.as_ref().map_or(&[][..], |s| &s[..]);
            let mut admin = sh.admin();
            return match admin.start(this.sqe, segs, this.data.take(), sh.admin_timeout()) {
                Ok(t) => {
                    this.ticket = Some(t);
                    drop(admin);
                    // The controller may have answered already.
                    Pin::new(this).poll(cx)
                }
                Err((StartError::Full, buf)) => {
                    this.data = buf;
                    Poll::Ready(Err(NvmeError::AdminQueueFull {
                        ctrlr: sh.name.clone(),
                        command,
                    }))
                }
                Err((StartError::Prp(source), _)) => Poll::Ready(Err(NvmeError::Prp {
                    ctrlr: sh.name.clone(),
                    source,
                })),
            };
        };
        let end = sh.admin().check(ticket, Some(cx.waker()));
        match end {
            None => Poll::Pending,
            Some((end, buf)) => {
                this.ticket = None;
                Poll::Ready(finish(&sh, command, end).map(|dw0| (dw0, buf)))
            }
        }
    }
}

impl Drop for AdminCommand {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.shared.admin().forget(t);
        }
    }
}

/// The error for an admin command that ended badly (a timeout asks the
/// admin poller for a reset: the command holds its slot until then).
pub(crate) fn finish(sh: &Shared, command: &'static str, end: AdminEnd) -> Result<u32, NvmeError> {
    match end {
        AdminEnd::Done(Ok(dw0)) => Ok(dw0),
        AdminEnd::Done(Err(source)) => Err(NvmeError::Admin {
            ctrlr: sh.name.clone(),
            command,
            source,
        }),
        AdminEnd::TimedOut => {
            sh.request(Request::Reset);
            Err(NvmeError::AdminTimeout {
                ctrlr: sh.name.clone(),
                command,
                ms: sh.admin_timeout().as_millis() as u64,
            })
        }
    }
}

impl AdminClient {
    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Issues `sqe` with `data` (one buffer, its whole length) as the
    /// command's data; resolves to DW0 and the buffer.
    pub fn command(&self, sqe: Sqe, data: Option<DmaBuf>, command: &'static str) -> AdminCommand {
        AdminCommand::new(self.shared.clone(), sqe, data, command)
    }

    fn page(&self, len: usize) -> Result<DmaBuf, NvmeError> {
        self.shared
            .mem
            .alloc(len.div_ceil(4096) * 4096, 4096)
            .map_err(|source| NvmeError::Dma {
                ctrlr: self.shared.name.clone(),
                source,
            })
    }

    /// Reads `len` bytes of log page `lid` for namespace `nsid`
    /// (0xffffffff: controller-wide), 4 KiB per command.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub async fn get_log_page(&self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>, NvmeError> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        let mut buf = self.page(4096)?;
        while done < len {
            let n = (len - done).min(4096);
            let n4 = n.div_ceil(4) * 4;
            let (_, b) = self
                .command(
                    cmd::get_log_page(lid, nsid, n4, done as u64),
                    Some(buf),
                    "Get Log Page",
                )
                .await?;
            buf = b.expect("the buffer comes back with the completion");
            buf.read_at(0, &mut out[done..done + n]);
            done += n;
        }
        Ok(out)
    }

    /// SMART / Health Information, controller-wide.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub async fn smart_log(&self) -> Result<SmartLog, NvmeError> {
        let b = self.get_log_page(log_page::SMART, 0xffff_ffff, 512).await?;
        Ok(SmartLog::parse(&b))
    }

    /// The Error Information log (`entries` of it, ELPE + 1 at most 64),
    /// the entries in use, newest first.
    ///
    /// # Errors
    /// The failing Get Log Page command.
    pub async fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let n = entries.clamp(1, 64);
        let b = self
            .get_log_page(log_page::ERROR, 0xffff_ffff, n * 64)
            .await?;
        Ok(b.chunks_exact(64)
            .map(ErrorLogEntry::parse)
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// Get Features: the current value (DW0) of feature `fid`.
    ///
    /// # Errors
    /// The failing command.
    pub async fn get_feature(&self, fid: u8, nsid: u32) -> Result<u32, NvmeError> {
        Ok(self
            .command(cmd::get_features(fid, nsid), None, "Get Features")
            .await?
            .0)
    }

    /// Set Features: sets feature `fid` to `value` (CDW11); returns DW0.
    ///
    /// # Errors
    /// The failing command.
    pub async fn set_feature(&self, fid: u8, value: u32) -> Result<u32, NvmeError> {
        Ok(self
            .command(cmd::set_features(fid, value), None, "Set Features")
            .await?
            .0)
    }

    /// Asks the controller to abort command `cid` on queue `qid`; whether
    /// the controller says it was aborted (DW0 bit 0 clear).
    ///
    /// # Errors
    /// The failing Abort command.
    pub async fn abort(&self, qid: u16, cid: u16) -> Result<bool, NvmeError> {
        let dw0 = self.command(cmd::abort(qid, cid), None, "Abort").await?.0;
        Ok(dw0 & 1 == 0)
    }

    /// Passes `sqe` through to the controller (an admin command the caller
    /// built, as SPDK's `bdev_nvme_send_cmd`): its data pointers are
    /// replaced by a buffer of this driver's (`data_out` written to it
    /// first, `data_in` bytes read back from it); a device error is a
    /// result (its status), not an error.
    ///
    /// # Errors
    /// The command could not be issued, timed out, or the reset took it.
    pub async fn passthru(
        &self,
        mut sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in: usize,
    ) -> Result<Passthru, NvmeError> {
        // PRPs only, and no pointer of the caller's reaches the device.
        sqe.cdw0 &= !(3 << 14);
        sqe.mptr = 0;
        sqe.prp1 = 0;
        sqe.prp2 = 0;
        let len = data_out.map_or(0, |d| d.len()).max(data_in);
        let buf = if len > 0 {
            let mut b = self.page(len)?;
            if let Some(d) = data_out {
                b.write_at(0, d);
            }
            Some(b)
        } else {
            None
        };
        let read_back = |buf: Option<DmaBuf>| {
            let mut data = vec![0u8; data_in];
            if let Some(b) = buf {
                b.read_at(0, &mut data);
            }
            data
        };
        match self.command(sqe, buf, "passthrough").await {
            Ok((dw0, buf)) => Ok(Passthru {
                dw0,
                status: 0,
                data: read_back(buf),
            }),
            Err(NvmeError::Admin {
                source: CommandError::Status(st),
                ..
            }) => Ok(Passthru {
                dw0: 0,
                status: st.0,
                data: vec![0; data_in],
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads the active namespaces: every id of the Active Namespace List
    /// (1024 per command) with its Identify Namespace data, active ones
    /// only.
    ///
    /// # Errors
    /// The failing Identify command.
    pub async fn identify_namespaces(&self) -> Result<Vec<(u32, IdentifyNamespace)>, NvmeError> {
        let mut nsids: Vec<u32> = Vec::new();
        let mut buf = self.page(4096)?;
        loop {
            let after = nsids.last().copied().unwrap_or(0);
            let (_, b) = self
                .command(
                    cmd::active_namespaces(after),
                    Some(buf),
                    "Identify (Active Namespace List)",
                )
                .await?;
            buf = b.expect("the buffer comes back with the completion");
            let mut page = [0u8; 4096];
            buf.read_at(0, &mut page);
            let n = crate::init::parse_ns_list(&page, &mut nsids);
            if n < 1024 || nsids.len() >= 1 << 16 {
                break;
            }
        }
        let mut out = Vec::new();
        for nsid in nsids {
            let (_, b) = self
                .command(
                    cmd::identify_namespace(nsid),
                    Some(buf),
                    "Identify Namespace",
                )
                .await?;
            buf = b.expect("the buffer comes back with the completion");
            let mut page = [0u8; 4096];
            buf.read_at(0, &mut page);
            let mut id = IdentifyNamespace::parse(&page);
            if !id.is_active() {
                continue;
            }
            // The identifiers (NVMe 1.3 and later; an older controller
            // refuses the CNS, and the namespace goes without them).
            buf.fill(0);
            match self
                .command(
                    cmd::identify_ns_descriptors(nsid),
                    Some(buf),
                    "Identify (Namespace Identification Descriptors)",
                )
                .await
            {
                Ok((_, b)) => {
                    buf = b.expect("the buffer comes back with the completion");
                    buf.read_at(0, &mut page);
                    id.add_descriptors(&page);
                }
                Err(e) => {
                    log::debug!("namespace {nsid}: no identification descriptors: {e}");
                    buf = self.page(4096)?;
                }
            }
            out.push((nsid, id));
        }
        Ok(out)
    }
}

/// What a passed-through admin command returned (see
/// [`AdminClient::passthru`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthru {
    /// Completion DW0.
    pub dw0: u32,
    /// The completion's status field (SCT, SC, CRD, M, DNR; no phase bit);
    /// 0 is success.
    pub status: u16,
    /// The data the controller returned (`data_in` bytes).
    pub data: Vec<u8>,
}

impl Passthru {
    /// The 16-byte completion entry as the specification lays it out (DW0,
    /// then zeroes for DW1, SQ head, SQ id and command id, then the status
    /// field above the phase bit).
    pub fn cqe_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status << 1).to_le_bytes());
        b
    }
}
