//! One NVMe/TCP connection (one queue pair), as a task on its reactor:
//! ICReq/ICResp (digests negotiated, MAXH2CDATA), then PDUs read whole
//! from a receive buffer, checked ([`pdu::Layout::of`], digests) and
//! dispatched — fabrics, admin or I/O commands, H2CData for the writes it
//! asked for with R2T — and completions, C2HData and R2Ts queued for the
//! socket. A bad PDU ends the connection with a C2HTermReq naming the
//! field. The socket is non-blocking and polled; the task sleeps a little
//! longer each time it finds nothing (up to 1 ms), and a completion wakes
//! it at once.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bdev::{BdevChannel, IoStatus};
use dma::DmaBuf;
use nvme_driver::tcp::pdu::{
    self, CH_LEN, CommonHeader, DIGEST_LEN, DataHeader, FLAG_LAST_PDU, FLAG_SUCCESS, IC_LEN, IcReq,
    IcResp, Layout, Limits, PduError, PduType,
};

use super::cmd::{self, DataPlan, Reply, Sqe, Status};
use super::fabrics::{self, Connected};
use super::subsystem::{AnaState, Namespace};
use super::{ListenAddr, STATS, admin, target};
use crate::completions::Completions;

/// In-capsule data allowed on admin queues and for fabrics commands.
pub const ADMIN_ICD: u32 = 8192;
/// MAXH2CDATA: the most data one H2CData PDU may carry.
pub const MAX_H2C_DATA: u32 = 128 * 1024;
/// The receive buffer (holds any whole PDU the limits allow).
const INBUF: usize = 512 * 1024;
/// Unsent bytes queued before the connection stops taking commands.
const MAX_OUT: usize = 4 << 20;
/// Socket reads per turn, so one busy host cannot hold the reactor.
const READS_PER_TURN: usize = 4;
/// How long a connection is polled without sleeping after it last did
/// something.
const ACTIVE_POLL: Duration = Duration::from_millis(1);
/// How long a host may take to send ICReq.
const IC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The host broke the protocol: a termination request goes out.
    Term(PduError, Vec<u8>),
    /// The socket failed or closed.
    Io(io::Error),
    /// The controller, subsystem or listener went away, or the host
    /// disconnected.
    Closed(String),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Io(e)
    }
}

/// A namespace as one connection uses it: its channel on this core.
pub(super) struct NsEntry {
    pub(super) ns: Arc<Namespace>,
    pub(super) ch: BdevChannel,
    pub(super) block_size: u32,
    pub(super) num_blocks: u64,
    pub(super) ana: AnaState,
    pub(super) unmap: bool,
}

/// A read's buffer on its way into the socket.
struct Spliced {
    /// Where in `out` its bytes go.
    at: usize,
    buf: DmaBuf,
    len: usize,
    sent: usize,
    /// The channel the buffer goes back to.
    ns: Rc<NsEntry>,
}

/// The first `len` bytes of `buf`, which this connection owns (its I/O
/// completed).
fn buf_bytes(buf: &DmaBuf, len: usize) -> &[u8] {
    let len = len.min(buf.len());
    // SAFETY: `buf` is a live allocation of at least `buf.len()` bytes;
    // its I/O has completed, so nothing else (no device, no other core)
    // writes it while the shared borrow lives, which `buf`'s borrow bounds.
    unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) }
}

/// What a slot's command waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Its data, through H2CData after an R2T.
    AwaitData,
    /// Submission (queued).
    Queued,
    /// Its I/O.
    Submitted,
}

/// An I/O command being served.
pub(super) struct Req {
    pub(super) cid: u16,
    pub(super) opcode: u8,
    pub(super) ns: Rc<NsEntry>,
    pub(super) slba: u64,
    pub(super) nlb: u64,
    pub(super) len: usize,
    pub(super) fua: bool,
    pub(super) dw11: u32,
    pub(super) buf: Option<DmaBuf>,
    pub(super) received: usize,
    pub(super) stage: Stage,
    /// Child I/O still outstanding (DSM submits one per range).
    pub(super) pending: u32,
    pub(super) status: Status,
}

/// One connection.
pub(super) struct Conn {
    stream: TcpStream,
    listen: ListenAddr,
    id: u64,
    peer: String,
    core: u32,
    core_index: usize,
    pub(super) lim: Limits,
    icd_io: u32,
    pub(super) q: Option<Connected>,
    sqhd: u16,
    c2h_success: bool,
    max_io: u32,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    pub(super) out: Vec<u8>,
    out_off: usize,
    /// Read data sent straight from its DMA buffer: each goes into the
    /// stream at its offset in `out` (between its C2HData header and its
    /// digest), so a read's data is never copied here.
    spliced: VecDeque<Spliced>,
    /// Bytes of `spliced` not yet sent.
    spliced_bytes: usize,
    pub(super) done: Completions,
    pub(super) slots: Vec<Option<Req>>,
    pub(super) free: Vec<u16>,
    pub(super) to_submit: VecDeque<u16>,
    pub(super) in_flight: usize,
    pub(super) ns: Vec<Rc<NsEntry>>,
    ns_gen: u64,
    aers: Vec<u16>,
    leaving: bool,
}

/// Serves the connection `stream`, accepted on `listen`, until it ends.
pub async fn serve(stream: TcpStream, listen: ListenAddr, id: u64) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_nonblocking(true) {
        log::warn!("nvmf: connection from {peer}: {e}");
        return;
    }
    let core = reactor::current_core().unwrap_or(0);
    let core_index = reactor::cores()
        .iter()
        .position(|&c| c == core)
        .unwrap_or(0)
        .min(super::MAX_STAT_CORES - 1);
    let (icd_io, c2h_success, max_io) = {
        let t = target();
        let o = t.transport.clone().unwrap_or_default();
        (o.in_capsule_data_size, o.c2h_success, o.max_io_size)
    };
    let mut c = Conn {
        stream,
        listen,
        id,
        peer,
        core,
        core_index,
        lim: Limits {
            hdgst: false,
            ddgst: false,
            pda: 0,
            max_data: 0,
            controller: true,
        },
        icd_io,
        q: None,
        sqhd: 0,
        c2h_success,
        max_io,
        inbuf: vec![0; INBUF],
        in_start: 0,
        in_end: 0,
        out: Vec::with_capacity(256 << 10),
        out_off: 0,
        spliced: VecDeque::new(),
        spliced_bytes: 0,
        done: Completions::new(0),
        slots: Vec::new(),
        free: Vec::new(),
        to_submit: VecDeque::new(),
        in_flight: 0,
        ns: Vec::new(),
        ns_gen: 0,
        aers: Vec::new(),
        leaving: false,
    };
    let end = match c.initialize().await {
        Ok(()) => c.run().await,
        Err(e) => e,
    };
    match &end {
        End::Term(e, offending) => {
            log::warn!("nvmf: connection from {}: {e}", c.peer);
            let mut b = [0u8; 160];
            let n = pdu::term_req(&mut b, PduType::C2HTermReq, e.fes(), e.fei(), offending);
            c.out.extend_from_slice(&b[..n]);
            let deadline = Instant::now() + Duration::from_millis(500);
            while c.out_off < c.out.len() && Instant::now() < deadline {
                if c.send().is_err() {
                    break;
                }
                reactor::sleep(Duration::from_micros(100)).await;
            }
        }
        End::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            log::debug!("nvmf: connection from {} closed", c.peer);
        }
        End::Io(e) => log::info!("nvmf: connection from {}: {e}", c.peer),
        End::Closed(why) => log::info!("nvmf: connection from {} closed: {why}", c.peer),
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    c.drain().await;
    c.leave();
}

impl Conn {
    /// ICReq in, ICResp out.
    async fn initialize(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + IC_TIMEOUT;
        let mut b = [0u8; IC_LEN];
        let mut got = 0;
        let mut backoff = Duration::from_micros(5);
        while got < IC_LEN {
            match self.stream.read(&mut b[got..]) {
                Ok(0) => return Err(End::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    got += n;
                    if got >= CH_LEN {
                        let ch = CommonHeader::parse(b[..CH_LEN].try_into().unwrap_or(&[0; 8]));
                        let l = Layout::of(&ch, &self.lim)
                            .map_err(|e| End::Term(e, b[..got].to_vec()))?;
                        if l.pdu_type != PduType::IcReq {
                            return Err(End::Term(
                                PduError::Sequence(format!("{:?} before ICReq", l.pdu_type)),
                                b[..got.min(CH_LEN)].to_vec(),
                            ));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(End::Closed("no ICReq within 10 s".into()));
                    }
                    reactor::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        let req = IcReq::parse(&b).map_err(|e| End::Term(e, b.to_vec()))?;
        self.lim.hdgst = req.hdgst;
        self.lim.ddgst = req.ddgst;
        self.lim.max_data = ADMIN_ICD.max(self.icd_io).max(MAX_H2C_DATA);
        let resp = IcResp {
            pfv: pdu::PFV_1_0,
            cpda: 0,
            hdgst: req.hdgst,
            ddgst: req.ddgst,
            maxh2cdata: MAX_H2C_DATA,
        };
        self.out.extend_from_slice(&resp.encode());
        self.send()?;
        Ok(())
    }

    /// The connection's main loop.
    async fn run(&mut self) -> End {
        let mut backoff = Duration::from_micros(5);
        let mut last_progress = Instant::now();
        loop {
            if let Some(c) = self.q.as_ref().map(|q| q.ctrlr.clone()) {
                if c.is_dead() {
                    return End::Closed("controller torn down".into());
                }
                if self.qid() == Some(0) && c.keep_alive_expired(reactor::clock_ns()) {
                    log::warn!(
                        "nvmf: controller {} of {}: keep-alive timeout ({} ms) expired",
                        c.cntlid,
                        c.subnqn,
                        c.kato_ms.load(Ordering::Acquire)
                    );
                    c.kill();
                    return End::Closed("keep-alive timeout".into());
                }
            }
            self.refresh_namespaces();
            let mut progress = self.reap();
            progress |= self.submit_queued();
            progress |= self.deliver_events();
            if !self.leaving {
                match self.receive() {
                    Ok(p) => progress |= p,
                    Err(e) => return e,
                }
                progress |= self.submit_queued();
            }
            match self.send() {
                Ok(p) => progress |= p,
                Err(e) => return End::Io(e),
            }
            if self.leaving && self.out_off == self.out.len() && self.in_flight == 0 {
                return End::Closed("host disconnected".into());
            }
            if progress {
                last_progress = Instant::now();
                backoff = Duration::from_micros(5);
                reactor::yield_now().await;
            } else if last_progress.elapsed() < ACTIVE_POLL {
                reactor::yield_now().await;
            } else {
                self.done.wait(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// The largest I/O in bytes.
    pub(super) fn max_io_bytes(&self) -> usize {
        self.max_io as usize
    }

    /// This connection's core's position among the reactors.
    pub(super) fn core_index(&self) -> usize {
        self.core_index
    }

    pub(super) fn qid(&self) -> Option<u16> {
        self.q.as_ref().map(|q| q.qid)
    }

    /// Writes what is queued (bytes of `out` and spliced buffers, with
    /// one `writev` per turn); true when bytes went out.
    fn send(&mut self) -> io::Result<bool> {
        let mut progress = false;
        while self.backlog() > 0 {
            let mut iov: [std::io::IoSlice<'_>; 16] = [std::io::IoSlice::new(&[]); 16];
            let mut n = 0;
            let mut pos = self.out_off;
            for sp in &self.spliced {
                if n + 2 > iov.len() {
                    break;
                }
                if pos < sp.at {
                    iov[n] = std::io::IoSlice::new(&self.out[pos..sp.at]);
                    n += 1;
                    pos = sp.at;
                }
                iov[n] = std::io::IoSlice::new(&buf_bytes(&sp.buf, sp.len)[sp.sent..]);
                n += 1;
            }
            if n < iov.len() && pos < self.out.len() && self.spliced.len() <= iov.len() / 2 {
                iov[n] = std::io::IoSlice::new(&self.out[pos..]);
                n += 1;
            }
            match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    progress = true;
                    self.advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.backlog() == 0 {
            self.out.clear();
            self.out_off = 0;
        } else if self.out_off > (1 << 20) {
            let cut = self.out_off;
            self.out.drain(..cut);
            self.out_off = 0;
            for sp in &mut self.spliced {
                sp.at -= cut;
            }
        }
        Ok(progress)
    }

    /// Moves the send position `n` bytes on, through `out` and the spliced
    /// buffers in stream order; sent buffers go back to their channel.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.spliced.front_mut() {
                Some(sp) if self.out_off == sp.at => {
                    let take = n.min(sp.len - sp.sent);
                    sp.sent += take;
                    n -= take;
                    self.spliced_bytes -= take;
                    if sp.sent == sp.len
                        && let Some(sp) = self.spliced.pop_front()
                    {
                        sp.ns.ch.free_buf(sp.buf);
                    }
                }
                Some(sp) => {
                    let take = n.min(sp.at - self.out_off);
                    self.out_off += take;
                    n -= take;
                }
                None => {
                    self.out_off += n;
                    n = 0;
                }
            }
        }
        // A buffer whose bytes all went with the last write leaves now too.
        while let Some(sp) = self.spliced.front() {
            if sp.at == self.out_off && sp.sent == sp.len {
                if let Some(sp) = self.spliced.pop_front() {
                    sp.ns.ch.free_buf(sp.buf);
                }
            } else {
                break;
            }
        }
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_off + self.spliced_bytes
    }

    /// Reads and handles whole PDUs; true on progress.
    fn receive(&mut self) -> Result<bool, End> {
        let mut progress = false;
        let mut reads = 0;
        loop {
            // Handle every whole PDU buffered.
            while self.in_end - self.in_start >= CH_LEN && self.backlog() < MAX_OUT {
                let at = self.in_start;
                let ch = CommonHeader::parse(
                    self.inbuf[at..at + CH_LEN]
                        .try_into()
                        .unwrap_or(&[0u8; CH_LEN]),
                );
                let l = Layout::of(&ch, &self.lim)
                    .map_err(|e| End::Term(e, self.inbuf[at..at + CH_LEN].to_vec()))?;
                if self.in_end - at < l.total {
                    break;
                }
                if l.pdu_type == PduType::CapsuleCmd
                    && self.qid().is_some_and(|q| q > 0)
                    && self.free.is_empty()
                {
                    // Every slot busy: the host exceeded the queue size or
                    // waits for completions; take it in once one is free.
                    break;
                }
                let inbuf = std::mem::take(&mut self.inbuf);
                let r = self.pdu(&l, &inbuf[at..at + l.total]);
                self.inbuf = inbuf;
                r?;
                self.in_start += l.total;
                progress = true;
                if self.leaving {
                    return Ok(progress);
                }
            }
            if reads == READS_PER_TURN || self.backlog() >= MAX_OUT {
                return Ok(progress);
            }
            if self.in_start == self.in_end {
                self.in_start = 0;
                self.in_end = 0;
            } else if self.in_start > 0 && self.inbuf.len() - self.in_end < 64 * 1024 {
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            if self.in_end == self.inbuf.len() {
                // A whole PDU is always smaller than the buffer: a full
                // buffer means one is waiting for a free slot.
                return Ok(progress);
            }
            reads += 1;
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(End::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.in_end += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    /// Handles one whole PDU `b` laid out as `l`.
    fn pdu(&mut self, l: &Layout, b: &[u8]) -> Result<(), End> {
        let header = || b[..l.hlen.min(b.len())].to_vec();
        if l.hdgst {
            pdu::check_header_digest(b, l.hlen).map_err(|e| End::Term(e, header()))?;
        }
        let data = &b[l.data_off..l.data_off + l.data_len];
        let digest_ok = !l.ddgst || {
            let at = l.data_off + l.data_len;
            let got = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            got == nvme_driver::crc32c::checksum(data)
        };
        match l.pdu_type {
            PduType::IcReq => Err(End::Term(
                PduError::Sequence("a second ICReq".into()),
                header(),
            )),
            PduType::H2CTermReq => {
                let (fes, fei) = pdu::parse_term_req(b);
                Err(End::Closed(format!(
                    "the host terminated the connection (FES {fes:#x}, FEI {fei:#x})"
                )))
            }
            PduType::CapsuleCmd => {
                let mut sqe = [0u8; 64];
                sqe.copy_from_slice(&b[8..72]);
                let sqe = Sqe(sqe);
                let limit = if sqe.opcode() == fabrics::OPCODE || self.qid().unwrap_or(0) == 0 {
                    ADMIN_ICD
                } else {
                    self.icd_io
                };
                if l.data_len > limit as usize {
                    return Err(End::Term(
                        PduError::LimitExceeded(format!(
                            "{} bytes of in-capsule data (at most {limit})",
                            l.data_len
                        )),
                        header(),
                    ));
                }
                if self.q.is_some() {
                    let depth = self.q.as_ref().map_or(1, |q| q.depth);
                    self.sqhd = (self.sqhd + 1) % depth;
                }
                if !digest_ok {
                    self.complete(sqe.cid(), &Reply::err(Status::TRANSIENT_TRANSPORT));
                    return Ok(());
                }
                self.command(&sqe, data)
            }
            PduType::H2CData => {
                let h = DataHeader::parse(b);
                if h.length as usize != l.data_len {
                    return Err(End::Term(
                        pdu_invalid(
                            16,
                            format!("DATAL {} but {} data bytes", h.length, l.data_len),
                        ),
                        header(),
                    ));
                }
                if l.data_len > MAX_H2C_DATA as usize {
                    return Err(End::Term(
                        PduError::LimitExceeded(format!("{} bytes in one H2CData", l.data_len)),
                        header(),
                    ));
                }
                self.h2c_data(&h, data, l.flags & FLAG_LAST_PDU != 0, digest_ok)
                    .map_err(|e| End::Term(e, header()))
            }
            t => Err(End::Term(
                PduError::Sequence(format!("{t:?} from a host")),
                header(),
            )),
        }
    }

    /// A command capsule.
    fn command(&mut self, sqe: &Sqe, data: &[u8]) -> Result<(), End> {
        let Some(qid) = self.qid() else {
            if sqe.opcode() != fabrics::OPCODE || sqe.fctype() != fabrics::fctype::CONNECT {
                self.complete(sqe.cid(), &Reply::err(Status::SEQUENCE));
                return Ok(());
            }
            return self.connect(sqe, data);
        };
        if sqe.opcode() == fabrics::OPCODE {
            let r = match sqe.fctype() {
                fabrics::fctype::CONNECT => Reply::err(Status::SEQUENCE),
                fabrics::fctype::DISCONNECT => {
                    self.leaving = true;
                    Reply::ok(0)
                }
                fabrics::fctype::PROPERTY_GET | fabrics::fctype::PROPERTY_SET if qid == 0 => {
                    let c = self.q.as_ref().map(|q| q.ctrlr.clone());
                    match c {
                        Some(c) => fabrics::property(&c, sqe),
                        None => Reply::err(Status::INTERNAL),
                    }
                }
                _ => Reply::err(Status::INVALID_OPCODE),
            };
            self.complete(sqe.cid(), &r);
            return Ok(());
        }
        if qid == 0 {
            self.admin(sqe, data);
            return Ok(());
        }
        self.io_command(sqe, data);
        Ok(())
    }

    fn connect(&mut self, sqe: &Sqe, data: &[u8]) -> Result<(), End> {
        let plan = cmd::data_plan(sqe, data.len());
        if plan != Ok(DataPlan::InCapsule(fabrics::CONNECT_DATA_LEN)) {
            self.complete(sqe.cid(), &Reply::err(Status::SGL_LENGTH));
            return Ok(());
        }
        match fabrics::connect(sqe, data, &self.listen, self.id, &self.peer, self.core) {
            Err(r) => {
                log::info!(
                    "nvmf: connect from {} refused: status {:#06x} dw0 {:#x}",
                    self.peer,
                    r.status.word(),
                    r.dw0
                );
                self.complete(sqe.cid(), &r);
                // The host closes; so does this end once the answer is out.
                self.leaving = true;
            }
            Ok(q) => {
                let cntlid = q.ctrlr.cntlid;
                let depth = q.depth as usize;
                let s = &STATS[self.core_index];
                if q.qid == 0 {
                    s.admin_qpairs.fetch_add(1, Ordering::Relaxed);
                    s.current_admin_qpairs.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.io_qpairs.fetch_add(1, Ordering::Relaxed);
                    s.current_io_qpairs.fetch_add(1, Ordering::Relaxed);
                    self.done = Completions::new(depth);
                    self.slots = (0..depth).map(|_| None).collect();
                    self.free = (0..depth as u16).rev().collect();
                }
                self.sqhd = 1 % q.depth;
                self.q = Some(q);
                self.ns_gen = 0;
                self.refresh_namespaces();
                self.complete(sqe.cid(), &Reply::ok(u32::from(cntlid)));
            }
        }
        Ok(())
    }

    fn admin(&mut self, sqe: &Sqe, data: &[u8]) {
        let Some(c) = self.q.as_ref().map(|q| q.ctrlr.clone()) else {
            return;
        };
        if let Err(s) = cmd::data_plan(sqe, data.len()) {
            self.complete(sqe.cid(), &Reply::err(s));
            return;
        }
        if sqe.opcode() == admin::opc::ASYNC_EVENT {
            if self.aers.len() >= admin::MAX_AERS {
                self.complete(sqe.cid(), &Reply::err(Status::AER_LIMIT));
            } else {
                self.aers.push(sqe.cid());
            }
            return;
        }
        let r = admin::execute(&c, sqe);
        self.complete(sqe.cid(), &r);
    }

    /// Answers an AER with each pending event.
    fn deliver_events(&mut self) -> bool {
        if self.aers.is_empty() {
            return false;
        }
        let Some(c) = self.q.as_ref().map(|q| q.ctrlr.clone()) else {
            return false;
        };
        let mut progress = false;
        while !self.aers.is_empty() {
            let Some(ev) = c.events().pending.pop_front() else {
                break;
            };
            let cid = self.aers.remove(0);
            self.complete(cid, &Reply::ok(ev));
            progress = true;
        }
        progress
    }

    /// Queues the completion (and data) of command `cid`.
    pub(super) fn complete(&mut self, cid: u16, r: &Reply) {
        if !r.data.is_empty() && r.status == Status::OK {
            self.c2h(cid, &r.data, false);
        }
        let sqid = self.qid().unwrap_or(0);
        let c = cmd::cqe(r.dw0, r.dw1, self.sqhd, sqid, cid, r.status);
        let mut h = [0u8; 32];
        let n = pdu::capsule_resp(&mut h, &c, self.lim.hdgst);
        self.out.extend_from_slice(&h[..n]);
        if let Some(s) = STATS.get(self.core_index) {
            s.completed_nvme_io.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the header of a C2HData for `cid` carrying `len` bytes (LAST;
    /// SUCCESS when `success`: no response capsule follows); the data and
    /// its digest ([`Conn::c2h_digest`]) go right after it.
    fn c2h_header(&mut self, cid: u16, len: usize, success: bool) {
        let h = DataHeader {
            cccid: cid,
            ttag: 0,
            offset: 0,
            length: len as u32,
        };
        let flags = FLAG_LAST_PDU | if success { FLAG_SUCCESS } else { 0 };
        let mut hb = [0u8; 32];
        let n = pdu::data_pdu_header(
            &mut hb,
            PduType::C2HData,
            &h,
            flags,
            self.lim.hdgst,
            self.lim.ddgst,
        );
        self.out.extend_from_slice(&hb[..n]);
    }

    /// Appends the data digest of the last `len` bytes queued, when on.
    fn c2h_digest(&mut self, len: usize) {
        if self.lim.ddgst {
            let at = self.out.len() - len;
            let d = nvme_driver::crc32c::checksum(&self.out[at..]);
            self.out.extend_from_slice(&d.to_le_bytes());
        }
    }

    /// Queues C2HData for `cid` carrying `data`.
    pub(super) fn c2h(&mut self, cid: u16, data: &[u8], success: bool) {
        self.c2h_header(cid, data.len(), success);
        self.out.extend_from_slice(data);
        self.c2h_digest(data.len());
    }

    /// Queues C2HData for `cid` with `len` bytes of buffer `buf`, sent
    /// from the buffer itself; the buffer goes back to `ns`'s channel once
    /// sent.
    pub(super) fn c2h_buf(
        &mut self,
        cid: u16,
        buf: DmaBuf,
        len: usize,
        success: bool,
        ns: Rc<NsEntry>,
    ) {
        let len = len.min(buf.len());
        self.c2h_header(cid, len, success);
        if self.lim.ddgst {
            let d = nvme_driver::crc32c::checksum(buf_bytes(&buf, len));
            self.spliced.push_back(Spliced {
                at: self.out.len(),
                buf,
                len,
                sent: 0,
                ns,
            });
            self.out.extend_from_slice(&d.to_le_bytes());
        } else {
            self.spliced.push_back(Spliced {
                at: self.out.len(),
                buf,
                len,
                sent: 0,
                ns,
            });
        }
        self.spliced_bytes += len;
    }

    /// Whether reads may end with C2HData's SUCCESS flag.
    pub(super) fn success_flag(&self) -> bool {
        self.c2h_success && self.q.as_ref().is_some_and(|q| q.no_sqflow)
    }

    /// Queues an R2T for slot `slot` (command `cid`) for `len` bytes.
    pub(super) fn r2t(&mut self, slot: u16, cid: u16, len: usize) {
        let h = DataHeader {
            cccid: cid,
            ttag: slot,
            offset: 0,
            length: len as u32,
        };
        let mut b = [0u8; 32];
        let n = pdu::r2t(&mut b, &h, self.lim.hdgst);
        self.out.extend_from_slice(&b[..n]);
    }

    /// H2CData for a write that asked for it.
    fn h2c_data(
        &mut self,
        h: &DataHeader,
        data: &[u8],
        last: bool,
        digest_ok: bool,
    ) -> Result<(), PduError> {
        let slot = h.ttag;
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Err(pdu_invalid(10, format!("TTAG {slot} names no transfer")));
        };
        if req.stage != Stage::AwaitData || req.cid != h.cccid {
            return Err(pdu_invalid(
                8,
                format!("CCCID {:#x} does not own TTAG {slot}", h.cccid),
            ));
        }
        if h.offset as usize != req.received {
            return Err(PduError::OutOfRange {
                offset: 12,
                what: format!("DATAO {} (expected {})", h.offset, req.received),
            });
        }
        if req.received + data.len() > req.len {
            return Err(PduError::OutOfRange {
                offset: 16,
                what: format!(
                    "{} bytes at {} of a {}-byte transfer",
                    data.len(),
                    h.offset,
                    req.len
                ),
            });
        }
        if let Some(b) = req.buf.as_mut() {
            b.write_at(req.received, data);
        }
        req.received += data.len();
        if !digest_ok {
            req.status = Status::TRANSIENT_TRANSPORT;
        }
        let complete = req.received == req.len;
        if complete != last {
            return Err(pdu_invalid(
                1,
                format!(
                    "LAST_PDU {} with {} of {} bytes received",
                    if last { "set" } else { "clear" },
                    req.received,
                    req.len
                ),
            ));
        }
        if complete {
            if req.status != Status::OK {
                let st = req.status;
                self.finish(slot, st);
            } else {
                req.stage = Stage::Queued;
                self.to_submit.push_back(slot);
            }
        }
        Ok(())
    }

    /// Rebuilds the namespace table when the target changed.
    fn refresh_namespaces(&mut self) {
        let g = super::GENERATION.load(Ordering::Acquire);
        if g == self.ns_gen {
            return;
        }
        let Some(q) = self.q.as_ref() else {
            return;
        };
        if q.qid == 0 || q.ctrlr.discovery {
            self.ns_gen = g;
            return;
        }
        let list: Vec<(Arc<Namespace>, AnaState)> = {
            let t = target();
            match t.subsystems.iter().find(|s| s.nqn == q.ctrlr.subnqn) {
                None => Vec::new(),
                Some(s) => s
                    .namespaces
                    .values()
                    .map(|n| {
                        let st = if s.ana_reporting {
                            s.ana_state(&self.listen, n.anagrpid)
                        } else {
                            AnaState::Optimized
                        };
                        (n.clone(), st)
                    })
                    .collect(),
            }
        };
        let mut table = Vec::with_capacity(list.len());
        for (ns, ana) in list {
            if let Some(e) = self.ns.iter().find(|e| Arc::ptr_eq(&e.ns, &ns)) {
                let b = ns.desc.bdev();
                if e.ana == ana && e.num_blocks == b.num_blocks() {
                    table.push(e.clone());
                    continue;
                }
            }
            match ns.desc.get_io_channel() {
                Ok(ch) => {
                    let b = ns.desc.bdev();
                    table.push(Rc::new(NsEntry {
                        block_size: b.block_size(),
                        num_blocks: b.num_blocks(),
                        unmap: b.io_type_supported(bdev::IoType::Unmap),
                        ns: ns.clone(),
                        ch,
                        ana,
                    }));
                }
                Err(e) => log::warn!("nvmf: namespace {} ({}): {e}", ns.nsid, ns.bdev_name),
            }
        }
        self.ns = table;
        self.ns_gen = g;
    }

    /// Completions taken in; true on progress.
    fn reap(&mut self) -> bool {
        let mut progress = false;
        loop {
            let next = self.done.pop();
            let Some((i, status, buf)) = next else { break };
            progress = true;
            self.in_flight -= 1;
            if let Some(s) = STATS.get(self.core_index) {
                s.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
            }
            let Some(req) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
                continue;
            };
            if buf.is_some() {
                req.buf = buf;
            }
            if status != IoStatus::Success && req.status == Status::OK {
                req.status = super::io::status_of(status);
            }
            req.pending = req.pending.saturating_sub(1);
            if req.pending == 0 {
                let st = req.status;
                self.finish(i, st);
            }
        }
        progress
    }

    /// Waits for the I/O in flight and gives its buffers back.
    async fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.in_flight > 0 && Instant::now() < deadline {
            self.done.wait(Duration::from_millis(1)).await;
            loop {
                let next = self.done.pop();
                let Some((i, _, buf)) = next else { break };
                self.in_flight -= 1;
                if let Some(s) = STATS.get(self.core_index) {
                    s.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
                }
                if let (Some(b), Some(Some(req))) = (buf, self.slots.get(i as usize)) {
                    req.ns.ch.free_buf(b);
                }
            }
        }
        for req in self.slots.iter_mut().filter_map(Option::take) {
            if let Some(b) = req.buf {
                req.ns.ch.free_buf(b);
            }
        }
        while let Some(sp) = self.spliced.pop_front() {
            sp.ns.ch.free_buf(sp.buf);
        }
        self.spliced_bytes = 0;
    }

    /// Leaves the controller: an admin queue takes its controller down.
    fn leave(&mut self) {
        let Some(q) = self.q.take() else {
            return;
        };
        let s = &STATS[self.core_index];
        if q.qid == 0 {
            s.current_admin_qpairs.fetch_sub(1, Ordering::Relaxed);
            q.ctrlr.kill();
            let mut t = target();
            if let Some(sub) = t.subsystems.iter_mut().find(|s| s.nqn == q.ctrlr.subnqn) {
                sub.controllers.retain(|c| !Arc::ptr_eq(c, &q.ctrlr));
            }
        } else {
            s.current_io_qpairs.fetch_sub(1, Ordering::Relaxed);
        }
        q.ctrlr.qpairs().retain(|x| x.conn != self.id);
    }
}

fn pdu_invalid(offset: u32, what: String) -> PduError {
    PduError::InvalidField { offset, what }
}

// The header buffers above hold a data header with its digest.
const _: () = assert!(pdu::DATA_HLEN + DIGEST_LEN <= 32);
