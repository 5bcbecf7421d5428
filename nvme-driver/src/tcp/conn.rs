//! One NVMe/TCP queue seen from the host: a non-blocking socket, the
//! connection's own bring-up (TCP connect, ICReq/ICResp, Fabrics Connect),
//! command capsules out, responses, C2HData and R2Ts in. Polled, never
//! waiting; everything the controller sends is checked (the PDU module's
//! layout checks, then the command id, the direction, the data's offset
//! and length against the command), and a bad PDU ends the connection with
//! an H2CTermReq: every command outstanding on it completes as aborted by
//! a reset, never with another command's data.
//!
//! Data is described by segments of the caller's memory (pointer and
//! length), like the PCIe queue pair's DMA segments: the caller keeps them
//! valid, and does not touch them, until the command completes. Write data
//! is copied into the send buffer (in the capsule when it fits the
//! controller's in-capsule size, else in H2CData PDUs as R2Ts ask); read
//! data goes from the socket straight into the segments (`readv`) once a
//! C2HData's header is in, small remainders through the receive buffer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::pdu::{
    self, CH_LEN, CommonHeader, DATA_HLEN, DIGEST_LEN, DataHeader, FLAG_LAST_PDU, FLAG_SUCCESS,
    IcReq, IcResp, Layout, Limits, PduError, PduType,
};
use super::sock;
use crate::crc32c;
use crate::spec::Sqe;
use crate::status::{CommandError, NvmeStatus};

/// The fabrics opcode.
pub(crate) const FABRICS: u8 = 0x7F;
/// Fabrics Connect.
const FCTYPE_CONNECT: u8 = 0x01;
/// Connect's data length.
const CONNECT_DATA_LEN: usize = 1024;
/// SGL descriptor type byte: Data Block, Offset (in-capsule data).
const SGL_IN_CAPSULE: u8 = 0x01;
/// SGL descriptor type byte: Transport Data Block (data by R2T/C2HData).
const SGL_TRANSPORT: u8 = 0x5A;
/// Segments one command may carry.
pub const MAX_SEGS: usize = 64;
/// Bytes read from the socket at a time.
const RX_BUF: usize = 64 * 1024;
/// Payload left in a C2HData from which it is read straight into place.
const DIRECT_MIN: usize = 2048;

/// A command's result as the connection reports it: CQE dwords 0 and 1,
/// or why it failed.
pub type CqeResult = Result<[u32; 2], CommandError>;

/// What a connection is asked to be.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// The controller's address.
    pub addr: SocketAddr,
    /// Queue id (0: the admin queue).
    pub qid: u16,
    /// Queue entries (Connect's SQSIZE + 1).
    pub depth: u16,
    /// Controller id to join (0xFFFF for an admin queue: any).
    pub cntlid: u16,
    /// Keep Alive Timeout in milliseconds (admin queue only).
    pub kato_ms: u32,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Ask for header digests.
    pub hdgst: bool,
    /// Ask for data digests.
    pub ddgst: bool,
    /// How long the bring-up (TCP, ICReq, Connect) may take.
    pub connect_timeout: Duration,
    /// The most write data sent in the capsule itself (the rest goes by
    /// R2T): 8 KiB on the admin queue, what IOCCSZ allows on I/O queues.
    pub in_capsule: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// TCP connect in progress.
    Socket,
    /// ICReq sent, waiting for ICResp.
    Ic,
    /// Fabrics Connect sent.
    Connect,
    /// Commands may be submitted.
    Live,
    /// Closed; see `why`.
    Dead,
}

/// Where the receiver is within the current PDU.
#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Collecting the common header.
    Ch,
    /// Collecting the rest of the header (and padding, or a termination
    /// request's data) up to `need` bytes.
    Header { lay: Layout, need: usize },
    /// C2HData payload for command `cid`, placed at `at`, `left` to go.
    Data {
        lay: Layout,
        cid: u16,
        at: usize,
        left: usize,
        crc: u32,
    },
    /// The data digest of a C2HData whose data ended at `end`.
    Ddgst {
        lay: Layout,
        cid: u16,
        crc: u32,
        end: usize,
    },
}

struct Slot<C> {
    ctx: Option<C>,
    segs: Vec<(*mut u8, usize)>,
    len: usize,
    to_ctrl: bool,
    /// C2HData bytes placed (in order).
    got: usize,
    since: Instant,
    /// Data the queue copied for the command (a DSM range list).
    scratch: Vec<u8>,
}

/// One host-side NVMe/TCP connection carrying commands with a context of
/// type `C`.
pub struct HostConn<C> {
    sock: TcpStream,
    p: ConnParams,
    phase: Phase,
    why: Option<String>,
    started: Instant,
    lim: Limits,
    maxh2cdata: usize,
    in_capsule: usize,
    cntlid: u16,
    slots: Vec<Slot<C>>,
    free: Vec<u16>,
    outstanding: usize,
    tx: Vec<u8>,
    tx_off: usize,
    rx: Box<[u8]>,
    hdr: [u8; 512],
    have: usize,
    state: Rx,
    /// A Connect refusal's status, kept for the error text.
    refused: Option<NvmeStatus>,
    /// The TCP connection was made (whatever happened after).
    reached: bool,
}

// SAFETY: the raw pointers in the slots are buffers the submitter promised
// to keep valid and untouched until the command completes (the same
// contract as DMA memory handed to a device); the connection is used by
// one thread at a time (owned, or behind a lock) and the pointers are only
// dereferenced by that thread.
unsafe impl<C: Send> Send for HostConn<C> {}

impl<C> std::fmt::Debug for HostConn<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConn")
            .field("addr", &self.p.addr)
            .field("qid", &self.p.qid)
            .field("phase", &self.phase)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

/// The 64 bytes of `sqe` as the wire carries them.
pub(crate) fn sqe_bytes(s: &Sqe) -> [u8; 64] {
    let mut b = [0u8; 64];
    let dw = [
        s.cdw0,
        s.nsid,
        s.cdw2,
        s.cdw3,
        s.mptr as u32,
        (s.mptr >> 32) as u32,
        s.prp1 as u32,
        (s.prp1 >> 32) as u32,
        s.prp2 as u32,
        (s.prp2 >> 32) as u32,
        s.cdw10,
        s.cdw11,
        s.cdw12,
        s.cdw13,
        s.cdw14,
        s.cdw15,
    ];
    for (i, d) in dw.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&d.to_le_bytes());
    }
    b
}

/// Describes the data as one SGL descriptor of type `ty` (offset 0,
/// `len` bytes) and sets PSDT to SGL.
fn set_sgl(s: &mut Sqe, ty: u8, len: u32) {
    s.cdw0 = (s.cdw0 & !(0b11 << 14)) | (0b01 << 14);
    s.prp1 = 0;
    s.prp2 = u64::from(len) | u64::from(ty) << 56;
}

impl<C> HostConn<C> {
    /// Starts connecting: the TCP connect is begun; ICReq and the Fabrics
    /// Connect follow from [`HostConn::poll`].
    ///
    /// # Errors
    /// The socket could not be made or the connect failed at once.
    pub fn start(p: ConnParams) -> io::Result<HostConn<C>> {
        let sock = sock::connect_start(&p.addr)?;
        let depth = usize::from(p.depth.max(1));
        let slots = (0..depth)
            .map(|_| Slot {
                ctx: None,
                segs: Vec::with_capacity(MAX_SEGS),
                len: 0,
                to_ctrl: false,
                got: 0,
                since: Instant::now(),
                scratch: Vec::new(),
            })
            .collect();
        Ok(HostConn {
            sock,
            phase: Phase::Socket,
            why: None,
            started: Instant::now(),
            lim: Limits {
                hdgst: false,
                ddgst: false,
                pda: 0,
                max_data: u32::MAX,
                controller: false,
            },
            maxh2cdata: 4096,
            in_capsule: p.in_capsule,
            cntlid: 0,
            slots,
            free: (0..depth as u16).rev().collect(),
            outstanding: 0,
            tx: Vec::with_capacity(64 * 1024),
            tx_off: 0,
            rx: vec![0u8; RX_BUF].into_boxed_slice(),
            hdr: [0u8; 512],
            have: 0,
            state: Rx::Ch,
            refused: None,
            reached: false,
            p,
        })
    }

    /// Commands may be submitted.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// The connection is closed; [`HostConn::why`] says why.
    pub fn is_dead(&self) -> bool {
        self.phase == Phase::Dead
    }

    /// Why the connection closed.
    pub fn why(&self) -> Option<&str> {
        self.why.as_deref()
    }

    /// Whether the TCP connection was made: false for a connection that
    /// died while connecting (refused, unreachable, timed out).
    pub fn reached(&self) -> bool {
        self.reached
    }

    /// The controller id the Connect answered with.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.p.qid
    }

    /// Digests as negotiated (header, data).
    pub fn digests(&self) -> (bool, bool) {
        (self.lim.hdgst, self.lim.ddgst)
    }

    /// The oldest command's age, when any is outstanding.
    pub fn oldest(&self, now: Instant) -> Option<Duration> {
        self.slots
            .iter()
            .filter(|s| s.ctx.is_some())
            .map(|s| now.saturating_duration_since(s.since))
            .max()
    }

    /// Closes the connection (if open) with `why`; outstanding commands
    /// are handed back by the next [`HostConn::poll`] or
    /// [`HostConn::fail_all`].
    pub fn close(&mut self, why: impl Into<String>) {
        if self.phase != Phase::Dead {
            let why = why.into();
            log::info!(
                "nvme/tcp {} qid {}: connection closed: {why}",
                self.p.addr,
                self.p.qid
            );
            self.why = Some(why);
            self.phase = Phase::Dead;
            let _ = self.sock.shutdown(Shutdown::Both);
        }
    }

    /// Completes every outstanding command as aborted by a reset (the
    /// connection is gone: each may or may not have taken effect).
    pub fn fail_all(&mut self, mut done: impl FnMut(C, CqeResult)) -> usize {
        let mut n = 0;
        for cid in 0..self.slots.len() {
            if let Some(ctx) = self.slots[cid].ctx.take() {
                self.free.push(cid as u16);
                self.outstanding -= 1;
                n += 1;
                done(ctx, Err(CommandError::AbortedByReset));
            }
        }
        n
    }

    /// Submits `sqe` with data in `segs` (to the controller when
    /// `to_ctrl`, else from it); returns the command id.
    ///
    /// # Safety
    /// Every segment must stay valid for reads (to the controller) or
    /// writes (from it) of its length, and not be used otherwise, until
    /// the command completes (its context comes back).
    ///
    /// # Errors
    /// The connection is not live (`Err(Some(ctx))` with `live` false),
    /// no command id is free, or more than [`MAX_SEGS`] segments.
    pub unsafe fn submit(
        &mut self,
        mut sqe: Sqe,
        segs: &[(*mut u8, usize)],
        to_ctrl: bool,
        ctx: C,
    ) -> Result<u16, (SubmitRefusal, C)> {
        if self.phase != Phase::Live {
            return Err((SubmitRefusal::NotLive, ctx));
        }
        if segs.len() > MAX_SEGS {
            return Err((SubmitRefusal::TooManySegments, ctx));
        }
        let Some(cid) = self.free.pop() else {
            return Err((SubmitRefusal::Full, ctx));
        };
        let len: usize = segs.iter().map(|s| s.1).sum();
        sqe.set_cid(cid);
        let in_capsule = to_ctrl && len > 0 && len <= self.in_capsule;
        if in_capsule {
            set_sgl(&mut sqe, SGL_IN_CAPSULE, len as u32);
        } else {
            set_sgl(&mut sqe, SGL_TRANSPORT, len as u32);
        }
        let icd = if in_capsule { len } else { 0 };
        self.put_capsule(&sqe, icd, |out| {
            if !in_capsule {
                return;
            }
            let mut at = 0;
            for &(p, l) in segs {
                // SAFETY: the caller promised each segment readable for
                // its length until completion.
                let src = unsafe { std::slice::from_raw_parts(p, l) };
                out[at..at + l].copy_from_slice(src);
                at += l;
            }
        });
        let s = &mut self.slots[usize::from(cid)];
        s.ctx = Some(ctx);
        s.segs.clear();
        s.segs.extend_from_slice(segs);
        s.len = len;
        s.to_ctrl = to_ctrl;
        s.got = 0;
        s.since = Instant::now();
        self.outstanding += 1;
        Ok(cid)
    }

    /// Submits `sqe` with `data` to the controller, copied first into the
    /// command's own buffer (kept until it completes); returns the
    /// command id.
    ///
    /// # Errors
    /// As [`HostConn::submit`].
    pub fn submit_copy(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        ctx: C,
    ) -> Result<u16, (SubmitRefusal, C)> {
        if self.phase != Phase::Live {
            return Err((SubmitRefusal::NotLive, ctx));
        }
        // `submit` takes the last free id: fill that slot's buffer.
        let Some(&cid) = self.free.last() else {
            return Err((SubmitRefusal::Full, ctx));
        };
        let s = &mut self.slots[usize::from(cid)];
        s.scratch.clear();
        s.scratch.extend_from_slice(data);
        let seg = [(s.scratch.as_mut_ptr(), s.scratch.len())];
        // SAFETY: the buffer belongs to the slot the command takes and is
        // only touched again when that slot is reused, after completion.
        unsafe { self.submit(sqe, &seg, true, ctx) }
    }

    /// Appends a command capsule with `icd` bytes of in-capsule data
    /// (written by `fill`) to the send buffer.
    fn put_capsule(&mut self, sqe: &Sqe, icd: usize, fill: impl FnOnce(&mut [u8])) {
        let (hd, dd) = (self.lim.hdgst, self.lim.ddgst);
        let start = self.tx.len();
        let head = pdu::CMD_HLEN + if hd { DIGEST_LEN } else { 0 };
        let tail = if dd && icd > 0 { DIGEST_LEN } else { 0 };
        self.tx.resize(start + head + icd + tail, 0);
        let out = &mut self.tx[start..];
        let h = pdu::capsule_cmd(out, &sqe_bytes(sqe), icd, hd, dd);
        debug_assert_eq!(h, head);
        fill(&mut out[head..head + icd]);
        if tail > 0 {
            let d = crc32c::checksum(&out[head..head + icd]);
            out[head + icd..head + icd + 4].copy_from_slice(&d.to_le_bytes());
        }
    }

    /// Advances the connection: the connect and ICReq/Connect exchange,
    /// sending what is queued, receiving and handling what arrived.
    /// `done(ctx, result)` for each command completed; returns how many.
    /// A connection that died hands back its outstanding commands here (as
    /// aborted by a reset).
    pub fn poll(&mut self, mut done: impl FnMut(C, CqeResult)) -> usize {
        if self.phase == Phase::Socket {
            match sock::connect_poll(&self.sock) {
                Poll::Pending => {
                    self.check_connect_time();
                    return self.fail_if_dead(&mut done);
                }
                Poll::Ready(Err(e)) => self.close(format!("connect to {}: {e}", self.p.addr)),
                Poll::Ready(Ok(())) => {
                    self.reached = true;
                    let ic = IcReq {
                        pfv: pdu::PFV_1_0,
                        hpda: 0,
                        hdgst: self.p.hdgst,
                        ddgst: self.p.ddgst,
                        maxr2t: 0,
                    };
                    self.tx.extend_from_slice(&ic.encode());
                    self.phase = Phase::Ic;
                }
            }
        }
        let mut n = 0;
        if self.phase != Phase::Dead {
            self.flush();
            n += self.receive(&mut done);
            self.flush();
            if self.phase != Phase::Live {
                self.check_connect_time();
            }
        }
        n + self.fail_if_dead(&mut done)
    }

    fn check_connect_time(&mut self) {
        if self.phase != Phase::Live
            && self.phase != Phase::Dead
            && self.started.elapsed() > self.p.connect_timeout
        {
            let at = match self.phase {
                Phase::Socket => "TCP connect",
                Phase::Ic => "ICResp",
                _ => "Connect response",
            };
            self.close(format!(
                "no {at} from {} within {} ms",
                self.p.addr,
                self.p.connect_timeout.as_millis()
            ));
        }
    }

    fn fail_if_dead(&mut self, done: &mut impl FnMut(C, CqeResult)) -> usize {
        if self.phase == Phase::Dead && self.outstanding > 0 {
            self.fail_all(done)
        } else {
            0
        }
    }

    /// Writes what the send buffer holds, as far as the socket takes it.
    fn flush(&mut self) {
        while self.tx_off < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_off..]) {
                Ok(0) => {
                    self.close("the socket took no data");
                    return;
                }
                Ok(k) => self.tx_off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(format!("send: {e}"));
                    return;
                }
            }
        }
        self.tx.clear();
        self.tx_off = 0;
    }

    /// Reads what arrived (a bounded number of reads per poll) and handles
    /// it.
    fn receive(&mut self, done: &mut impl FnMut(C, CqeResult)) -> usize {
        let mut n = 0;
        let mut rx = std::mem::take(&mut self.rx);
        for _ in 0..8 {
            if self.phase == Phase::Dead {
                break;
            }
            // Large payloads go from the socket into place directly (the
            // receive buffer is empty between reads: `feed` takes all).
            if let Rx::Data {
                lay,
                cid,
                at,
                left,
                crc,
            } = self.state
                && left >= DIRECT_MIN
            {
                match self.read_direct(cid, at, left) {
                    Ok(0) => {
                        self.close("the controller closed the connection");
                        break;
                    }
                    Ok(k) => {
                        let crc = if lay.ddgst {
                            self.crc_of_placed(cid, at, k, crc)
                        } else {
                            crc
                        };
                        n += self.data_advanced(lay, cid, at + k, left - k, crc, done);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.close(format!("receive: {e}"));
                        break;
                    }
                }
            }
            let k = match self.sock.read(&mut rx) {
                Ok(0) => {
                    self.close("the controller closed the connection");
                    break;
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(format!("receive: {e}"));
                    break;
                }
            };
            match self.feed(&rx[..k], done) {
                Ok(c) => n += c,
                Err(e) => {
                    self.terminate(&e);
                    break;
                }
            }
            if k < rx.len() {
                break;
            }
        }
        self.rx = rx;
        n
    }

    /// Answers a bad PDU: an H2CTermReq carrying its header, then the
    /// connection closes.
    fn terminate(&mut self, e: &PduError) {
        let mut out = [0u8; pdu::TERM_HLEN + pdu::TERM_MAX_DATA];
        let have = self.have.min(pdu::TERM_MAX_DATA);
        let offending = self.hdr[..have].to_vec();
        let k = pdu::term_req(&mut out, PduType::H2CTermReq, e.fes(), e.fei(), &offending);
        self.tx.extend_from_slice(&out[..k]);
        self.flush();
        self.close(format!("bad PDU from the controller: {e}"));
    }

    /// Handles received bytes; returns the commands completed.
    fn feed(
        &mut self,
        mut b: &[u8],
        done: &mut impl FnMut(C, CqeResult),
    ) -> Result<usize, PduError> {
        let mut n = 0;
        while !b.is_empty() && self.phase != Phase::Dead {
            match self.state {
                Rx::Ch => {
                    let k = (CH_LEN - self.have).min(b.len());
                    self.hdr[self.have..self.have + k].copy_from_slice(&b[..k]);
                    self.have += k;
                    b = &b[k..];
                    if self.have == CH_LEN {
                        let mut chb = [0u8; CH_LEN];
                        chb.copy_from_slice(&self.hdr[..CH_LEN]);
                        let ch = CommonHeader::parse(&chb);
                        let lay = Layout::of(&ch, &self.lim)?;
                        let mut need = CH_LEN + lay.rest_of_header() + lay.padding();
                        if matches!(lay.pdu_type, PduType::C2HTermReq) {
                            need += lay.data_len;
                        }
                        self.state = Rx::Header { lay, need };
                        if need == CH_LEN {
                            n += self.header_done(lay, done)?;
                        }
                    }
                }
                Rx::Header { lay, need } => {
                    let k = (need - self.have).min(b.len());
                    self.hdr[self.have..self.have + k].copy_from_slice(&b[..k]);
                    self.have += k;
                    b = &b[k..];
                    if self.have == need {
                        n += self.header_done(lay, done)?;
                    }
                }
                Rx::Data {
                    lay,
                    cid,
                    at,
                    left,
                    crc,
                } => {
                    let k = left.min(b.len());
                    let chunk = &b[..k];
                    self.place(cid, at, chunk);
                    let crc = if lay.ddgst {
                        crc32c::update(crc, chunk)
                    } else {
                        crc
                    };
                    b = &b[k..];
                    n += self.data_advanced(lay, cid, at + k, left - k, crc, done);
                }
                Rx::Ddgst { lay, cid, crc, end } => {
                    let k = (DIGEST_LEN - self.have).min(b.len());
                    self.hdr[self.have..self.have + k].copy_from_slice(&b[..k]);
                    self.have += k;
                    b = &b[k..];
                    if self.have == DIGEST_LEN {
                        let got = pdu::get32(&self.hdr, 0);
                        let computed = !crc;
                        if got != computed {
                            // Not a PDU format error: the data is bad. The
                            // connection cannot be trusted; close it (the
                            // command goes again after the reconnect).
                            self.close(format!(
                                "data digest mismatch on command {cid}: PDU says {got:#010x}, data is {computed:#010x}"
                            ));
                            return Ok(n);
                        }
                        n += self.data_done(lay, cid, end, done);
                    }
                }
            }
        }
        Ok(n)
    }
}

impl<C> HostConn<C> {
    /// A whole header (with its digest, padding or termination data) is
    /// in `hdr`: check and act on it.
    fn header_done(
        &mut self,
        lay: Layout,
        done: &mut impl FnMut(C, CqeResult),
    ) -> Result<usize, PduError> {
        if lay.hdgst {
            pdu::check_header_digest(&self.hdr[..self.have], lay.hlen)?;
        }
        let h = &self.hdr;
        let mut n = 0;
        let mut next = Rx::Ch;
        match lay.pdu_type {
            PduType::IcResp => {
                if self.phase != Phase::Ic {
                    return Err(PduError::Sequence(
                        "ICResp after the connection was set up".into(),
                    ));
                }
                let mut b = [0u8; pdu::IC_LEN];
                b.copy_from_slice(&h[..pdu::IC_LEN]);
                let r = IcResp::parse(&b)?;
                if (r.hdgst && !self.p.hdgst) || (r.ddgst && !self.p.ddgst) {
                    return Err(PduError::InvalidField {
                        offset: 11,
                        what: "ICResp turns on a digest the host did not ask for".into(),
                    });
                }
                if r.cpda != 0 {
                    return Err(PduError::Unsupported {
                        offset: 10,
                        what: format!(
                            "CPDA {} (this host places data right after headers)",
                            r.cpda
                        ),
                    });
                }
                self.lim.hdgst = r.hdgst;
                self.lim.ddgst = r.ddgst;
                self.maxh2cdata = r.maxh2cdata as usize;
                self.send_connect();
                self.phase = Phase::Connect;
            }
            PduType::CapsuleResp => {
                let dw0 = pdu::get32(h, 8);
                let dw1 = pdu::get32(h, 12);
                let cid = pdu::get16(h, 20);
                let status = NvmeStatus(pdu::get16(h, 22) >> 1);
                if self.phase == Phase::Connect {
                    if cid != 0 {
                        return Err(PduError::Sequence(format!(
                            "response for command id {cid} before the Connect's"
                        )));
                    }
                    if status.is_success() {
                        self.cntlid = dw0 as u16;
                        self.phase = Phase::Live;
                    } else {
                        self.refused = Some(status);
                        self.close(format!(
                            "Connect (qid {}, subsystem {}) refused: {status} (IATTR/IPO {dw0:#x})",
                            self.p.qid, self.p.subnqn
                        ));
                    }
                } else {
                    if self.phase != Phase::Live {
                        return Err(PduError::Sequence("a response before ICResp".into()));
                    }
                    let s = self.slot_of(cid, 20)?;
                    if status.is_success() && !s.to_ctrl && s.got != s.len {
                        return Err(PduError::Sequence(format!(
                            "success for command {cid} after {} of its {} data bytes",
                            s.got, s.len
                        )));
                    }
                    let r = if status.is_success() {
                        Ok([dw0, dw1])
                    } else {
                        Err(CommandError::Status(status))
                    };
                    self.complete(cid, r, done);
                    n = 1;
                }
            }
            PduType::C2HData => {
                let d = DataHeader::parse(h);
                let s = self.slot_of(d.cccid, 8)?;
                if s.to_ctrl {
                    return Err(PduError::Sequence(format!(
                        "C2HData for command {} which writes",
                        d.cccid
                    )));
                }
                if d.length as usize != lay.data_len {
                    return Err(PduError::InvalidField {
                        offset: 16,
                        what: format!("DATAL {} but the PDU carries {}", d.length, lay.data_len),
                    });
                }
                let (off, len) = (d.offset as usize, d.length as usize);
                if off != s.got || off + len > s.len {
                    return Err(PduError::OutOfRange {
                        offset: 12,
                        what: format!(
                            "DATAO {off} + DATAL {len} for command {} ({} of {} bytes received)",
                            d.cccid, s.got, s.len
                        ),
                    });
                }
                if lay.flags & FLAG_SUCCESS != 0
                    && (lay.flags & FLAG_LAST_PDU == 0 || off + len != s.len)
                {
                    return Err(PduError::InvalidField {
                        offset: 1,
                        what: "SUCCESS on a C2HData that does not end the data".into(),
                    });
                }
                next = Rx::Data {
                    lay,
                    cid: d.cccid,
                    at: off,
                    left: len,
                    crc: !0,
                };
            }
            PduType::R2T => {
                let d = DataHeader::parse(h);
                let s = self.slot_of(d.cccid, 8)?;
                let (off, len) = (d.offset as usize, d.length as usize);
                if !s.to_ctrl {
                    return Err(PduError::Sequence(format!(
                        "R2T for command {} which reads",
                        d.cccid
                    )));
                }
                if len == 0 || off + len > s.len {
                    return Err(PduError::OutOfRange {
                        offset: 12,
                        what: format!(
                            "R2TO {off} + R2TL {len} for command {} of {} bytes",
                            d.cccid, s.len
                        ),
                    });
                }
                self.send_h2c(d, off, len);
            }
            PduType::C2HTermReq => {
                let (fes, fei) = pdu::parse_term_req(h);
                self.close(format!(
                    "the controller terminated the connection (C2HTermReq FES {fes:#x}, FEI {fei})"
                ));
            }
            t => {
                return Err(PduError::Sequence(format!(
                    "{t:?} is not expected by a host"
                )));
            }
        }
        self.have = 0;
        self.state = next;
        Ok(n)
    }

    /// The outstanding command `cid` (FEI `at` when it is not).
    fn slot_of(&self, cid: u16, at: u32) -> Result<&Slot<C>, PduError> {
        match self.slots.get(usize::from(cid)) {
            Some(s) if s.ctx.is_some() => Ok(s),
            _ => Err(PduError::InvalidField {
                offset: at,
                what: format!("command id {cid} is not outstanding"),
            }),
        }
    }

    /// `k` more payload bytes of a C2HData are in place (now at `at`,
    /// `left` to go): on to the digest, the end of the PDU, or more data.
    fn data_advanced(
        &mut self,
        lay: Layout,
        cid: u16,
        at: usize,
        left: usize,
        crc: u32,
        done: &mut impl FnMut(C, CqeResult),
    ) -> usize {
        if left > 0 {
            self.state = Rx::Data {
                lay,
                cid,
                at,
                left,
                crc,
            };
            0
        } else if lay.ddgst {
            self.have = 0;
            self.state = Rx::Ddgst {
                lay,
                cid,
                crc,
                end: at,
            };
            0
        } else {
            self.data_done(lay, cid, at, done)
        }
    }

    /// Reads the current C2HData's payload from the socket straight into
    /// the command's segments (no copy through the receive buffer); the
    /// bytes read.
    fn read_direct(&mut self, cid: u16, at: usize, left: usize) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_SEGS];
        let (mut skip, mut want, mut n) = (at, left, 0);
        for &(p, l) in &self.slots[usize::from(cid)].segs {
            if want == 0 {
                break;
            }
            if skip >= l {
                skip -= l;
                continue;
            }
            let k = (l - skip).min(want);
            // SAFETY: `skip + k <= l`: inside the segment.
            let base = unsafe { p.add(skip) };
            iov[n] = libc::iovec {
                iov_base: base.cast(),
                iov_len: k,
            };
            n += 1;
            want -= k;
            skip = 0;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: each iovec lies inside a segment the submitter promised
        // writable until the command completes; `n <= MAX_SEGS` entries.
        let r = unsafe { libc::readv(self.sock.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// CRC32C carried over `len` placed bytes of command `cid` from `at`.
    fn crc_of_placed(&self, cid: u16, mut at: usize, mut len: usize, mut crc: u32) -> u32 {
        for &(p, l) in &self.slots[usize::from(cid)].segs {
            if len == 0 {
                break;
            }
            if at >= l {
                at -= l;
                continue;
            }
            let k = (l - at).min(len);
            // SAFETY: inside the segment, which the last read just filled.
            crc = crc32c::update(crc, unsafe { std::slice::from_raw_parts(p.add(at), k) });
            len -= k;
            at = 0;
        }
        crc
    }

    /// A C2HData's payload ended at `end`: complete the command if the PDU
    /// carried SUCCESS.
    fn data_done(
        &mut self,
        lay: Layout,
        cid: u16,
        end: usize,
        done: &mut impl FnMut(C, CqeResult),
    ) -> usize {
        self.slots[usize::from(cid)].got = end;
        self.have = 0;
        self.state = Rx::Ch;
        if lay.flags & FLAG_SUCCESS != 0 {
            self.complete(cid, Ok([0, 0]), done);
            1
        } else {
            0
        }
    }

    fn complete(&mut self, cid: u16, r: CqeResult, done: &mut impl FnMut(C, CqeResult)) {
        if let Some(ctx) = self.slots[usize::from(cid)].ctx.take() {
            self.free.push(cid);
            self.outstanding -= 1;
            done(ctx, r);
        }
    }

    /// Copies `chunk` into command `cid`'s segments at byte `at`.
    fn place(&mut self, cid: u16, mut at: usize, mut chunk: &[u8]) {
        for &(p, l) in &self.slots[usize::from(cid)].segs {
            if chunk.is_empty() {
                break;
            }
            if at >= l {
                at -= l;
                continue;
            }
            let k = (l - at).min(chunk.len());
            // SAFETY: the submitter promised the segment writable for its
            // length until completion; `at + k <= l`.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), p.add(at), k) };
            chunk = &chunk[k..];
            at = 0;
        }
    }

    /// Queues H2CData PDUs answering an R2T for `len` bytes at `off`.
    fn send_h2c(&mut self, r2t: DataHeader, off: usize, len: usize) {
        let (hd, dd) = (self.lim.hdgst, self.lim.ddgst);
        let mut at = off;
        let end = off + len;
        while at < end {
            let k = (end - at).min(self.maxh2cdata);
            let h = DataHeader {
                cccid: r2t.cccid,
                ttag: r2t.ttag,
                offset: at as u32,
                length: k as u32,
            };
            let flags = if at + k == end { FLAG_LAST_PDU } else { 0 };
            let head = DATA_HLEN + if hd { DIGEST_LEN } else { 0 };
            let start = self.tx.len();
            self.tx
                .resize(start + head + k + if dd { DIGEST_LEN } else { 0 }, 0);
            let out = &mut self.tx[start..];
            pdu::data_pdu_header(out, PduType::H2CData, &h, flags, hd, dd);
            // Gather the data from the command's segments.
            let (mut skip, mut w) = (at, 0);
            for &(p, l) in &self.slots[usize::from(r2t.cccid)].segs {
                if w == k {
                    break;
                }
                if skip >= l {
                    skip -= l;
                    continue;
                }
                let c = (l - skip).min(k - w);
                // SAFETY: the submitter promised the segment readable for
                // its length until completion; `skip + c <= l`.
                let src = unsafe { std::slice::from_raw_parts(p.add(skip), c) };
                out[head + w..head + w + c].copy_from_slice(src);
                w += c;
                skip = 0;
            }
            if dd {
                let d = crc32c::checksum(&out[head..head + k]);
                out[head + k..head + k + 4].copy_from_slice(&d.to_le_bytes());
            }
            at += k;
        }
    }

    /// Queues the Fabrics Connect for this queue (command id 0, its 1024
    /// bytes of data in the capsule).
    fn send_connect(&mut self) {
        let mut sqe = Sqe::new(FABRICS, u32::from(FCTYPE_CONNECT));
        sqe.set_cid(0);
        sqe.cdw10 = u32::from(self.p.qid) << 16;
        sqe.cdw11 = u32::from(self.p.depth.saturating_sub(1));
        sqe.cdw12 = if self.p.qid == 0 { self.p.kato_ms } else { 0 };
        set_sgl(&mut sqe, SGL_IN_CAPSULE, CONNECT_DATA_LEN as u32);
        let mut data = [0u8; CONNECT_DATA_LEN];
        data[..16].copy_from_slice(&self.p.hostid);
        data[16..18].copy_from_slice(&self.p.cntlid.to_le_bytes());
        let sub = self.p.subnqn.as_bytes();
        let host = self.p.hostnqn.as_bytes();
        data[256..256 + sub.len().min(255)].copy_from_slice(&sub[..sub.len().min(255)]);
        data[512..512 + host.len().min(255)].copy_from_slice(&host[..host.len().min(255)]);
        self.put_capsule(&sqe, CONNECT_DATA_LEN, |out| out.copy_from_slice(&data));
    }

    /// The status a refused Connect answered with.
    pub fn refused(&self) -> Option<NvmeStatus> {
        self.refused
    }
}

/// Why [`HostConn::submit`] refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitRefusal {
    /// The connection is not (or no longer) live.
    NotLive,
    /// Every command id is in use.
    Full,
    /// More than [`MAX_SEGS`] segments.
    TooManySegments,
}

#[cfg(test)]
mod tests {
    //! A fake controller on a loopback socket feeds the host well-formed
    //! and bad PDUs: the good ones complete commands with the right data,
    //! every bad one ends the connection with an H2CTermReq naming the
    //! field, the outstanding command completes as aborted by a reset,
    //! and nothing panics (also for randomly mutated streams).
    use super::*;
    use crate::tcp::pdu::{Fes, IC_LEN};
    use std::net::TcpListener;

    fn params(addr: SocketAddr) -> ConnParams {
        ConnParams {
            addr,
            qid: 1,
            depth: 8,
            cntlid: 1,
            kato_ms: 0,
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:0".into(),
            hostid: [0; 16],
            hdgst: false,
            ddgst: false,
            connect_timeout: Duration::from_secs(5),
            in_capsule: 0,
        }
    }

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    fn resp(cid: u16, status: u16) -> Vec<u8> {
        let mut cqe = [0u8; 16];
        cqe[12..14].copy_from_slice(&cid.to_le_bytes());
        cqe[14..16].copy_from_slice(&(status << 1).to_le_bytes());
        let mut out = [0u8; 28];
        let k = pdu::capsule_resp(&mut out, &cqe, false);
        out[..k].to_vec()
    }

    fn c2h(cid: u16, offset: u32, data: &[u8], flags: u8) -> Vec<u8> {
        let h = DataHeader {
            cccid: cid,
            ttag: 0,
            offset,
            length: data.len() as u32,
        };
        let mut out = vec![0u8; 28];
        let k = pdu::data_pdu_header(&mut out, PduType::C2HData, &h, flags, false, false);
        out.truncate(k);
        out.extend_from_slice(data);
        out
    }

    /// Accepts one host, answers ICReq and Connect, then runs `then` with
    /// the command capsule the host sent next.
    fn fake(
        then: impl FnOnce(&mut TcpStream, [u8; 72]) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ic = read_n(&mut s, IC_LEN);
            let r = IcResp {
                pfv: 0,
                cpda: 0,
                hdgst: false,
                ddgst: false,
                maxh2cdata: 131072,
            };
            s.write_all(&r.encode()).unwrap();
            let _connect = read_n(&mut s, 72 + 1024);
            let mut ok = resp(0, 0);
            ok[8] = 1; // cntlid 1 in DW0
            s.write_all(&ok).unwrap();
            let mut cmd = [0u8; 72];
            cmd.copy_from_slice(&read_n(&mut s, 72));
            then(&mut s, cmd);
            // Whatever the host sends back (a termination request).
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            rest
        });
        (addr, t)
    }

    /// Connects, submits a 4 KiB read into `buf`, polls until the
    /// command completes or the connection dies; the result.
    fn read_through(addr: SocketAddr, buf: &mut [u8]) -> (Option<CqeResult>, HostConn<u32>) {
        let mut c: HostConn<u32> = HostConn::start(params(addr)).unwrap();
        let start = Instant::now();
        while !c.is_live() {
            c.poll(|_, _| {});
            assert!(!c.is_dead(), "connect: {:?}", c.why());
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        let seg = [(buf.as_mut_ptr(), buf.len())];
        // SAFETY: `buf` outlives the command: this function polls until
        // it completes (or fails) before returning.
        unsafe { c.submit(crate::cmd::io::read(1, 0, 8), &seg, false, 7) }.unwrap();
        let mut got = None;
        while got.is_none() {
            c.poll(|ctx, r| {
                assert_eq!(ctx, 7);
                got = Some(r);
            });
            assert!(start.elapsed() < Duration::from_secs(5), "hangs");
        }
        (got, c)
    }

    #[test]
    fn a_read_completes_with_its_data() {
        let (addr, t) = fake(|s, cmd| {
            let cid = u16::from_le_bytes([cmd[10], cmd[11]]);
            // Two PDUs, the last with SUCCESS (no response capsule).
            s.write_all(&c2h(cid, 0, &[0xAB; 1024], 0)).unwrap();
            s.write_all(&c2h(cid, 1024, &[0xCD; 3072], FLAG_LAST_PDU | FLAG_SUCCESS))
                .unwrap();
        });
        let mut buf = vec![0u8; 4096];
        let (r, c) = read_through(addr, &mut buf);
        assert_eq!(r, Some(Ok([0, 0])));
        assert!(buf[..1024].iter().all(|&b| b == 0xAB));
        assert!(buf[1024..].iter().all(|&b| b == 0xCD));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn a_write_goes_by_r2t() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = read_n(&mut s, IC_LEN);
            let r = IcResp {
                pfv: 0,
                cpda: 0,
                hdgst: false,
                ddgst: false,
                maxh2cdata: 4096,
            };
            s.write_all(&r.encode()).unwrap();
            let _ = read_n(&mut s, 72 + 1024);
            s.write_all(&resp(0, 0)).unwrap();
            let cmd = read_n(&mut s, 72);
            assert_eq!(
                cmd[72 - 64 + 39],
                0x5A,
                "a transport SGL (no in-capsule data)"
            );
            let cid = u16::from_le_bytes([cmd[10], cmd[11]]);
            let h = DataHeader {
                cccid: cid,
                ttag: 3,
                offset: 0,
                length: 8192,
            };
            let mut out = [0u8; 28];
            let k = pdu::r2t(&mut out, &h, false);
            s.write_all(&out[..k]).unwrap();
            // MAXH2CDATA 4096: two H2CData PDUs, the second LAST.
            let mut data = Vec::new();
            for i in 0..2u32 {
                let hd = read_n(&mut s, 24);
                let d = DataHeader::parse(&hd);
                assert_eq!(
                    (d.cccid, d.ttag, d.offset, d.length),
                    (cid, 3, i * 4096, 4096)
                );
                assert_eq!(hd[1] & FLAG_LAST_PDU != 0, i == 1);
                data.extend(read_n(&mut s, 4096));
            }
            s.write_all(&resp(cid, 0)).unwrap();
            data
        });
        let mut c: HostConn<u32> = HostConn::start(params(addr)).unwrap();
        while !c.is_live() {
            c.poll(|_, _| {});
            assert!(!c.is_dead(), "{:?}", c.why());
        }
        let mut buf: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let seg = [(buf.as_mut_ptr(), buf.len())];
        // SAFETY: `buf` lives until the loop below saw the completion.
        unsafe { c.submit(crate::cmd::io::write(1, 0, 16, false), &seg, true, 1) }.unwrap();
        let mut got = None;
        let start = Instant::now();
        while got.is_none() {
            c.poll(|_, r| got = Some(r));
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(got, Some(Ok([0, 0])));
        assert_eq!(t.join().unwrap(), buf);
    }

    /// A bad PDU from the controller: the command fails as aborted by a
    /// reset, the connection closes naming the problem, and the host sent
    /// an H2CTermReq with `fes`.
    fn refused(bad: impl FnOnce(u16) -> Vec<u8> + Send + 'static, fes: Fes, why: &str) {
        let (addr, t) = fake(move |s, cmd| {
            let cid = u16::from_le_bytes([cmd[10], cmd[11]]);
            s.write_all(&bad(cid)).unwrap();
        });
        let mut buf = vec![0u8; 4096];
        let (r, c) = read_through(addr, &mut buf);
        assert_eq!(r, Some(Err(CommandError::AbortedByReset)));
        assert!(c.is_dead());
        let text = c.why().unwrap().to_owned();
        assert!(text.contains(why), "{text:?} should say {why:?}");
        drop(c);
        let back = t.join().unwrap();
        assert_eq!(back.first(), Some(&(PduType::H2CTermReq as u8)), "{back:?}");
        assert_eq!(pdu::parse_term_req(&back).0, fes as u16);
    }

    #[test]
    fn bad_pdus_end_the_connection_not_the_process() {
        refused(
            |cid| c2h(cid + 1, 0, &[0; 512], 0),
            Fes::InvalidHeaderField,
            "is not outstanding",
        );
        refused(
            |cid| c2h(cid, 512, &[0; 512], 0),
            Fes::DataOutOfRange,
            "DATAO 512",
        );
        refused(
            |cid| c2h(cid, 0, &[0; 8192], 0),
            Fes::DataOutOfRange,
            "DATAL 8192",
        );
        refused(
            |cid| resp(cid, 0),
            Fes::SequenceError,
            "after 0 of its 4096",
        );
        refused(
            |cid| {
                let h = DataHeader {
                    cccid: cid,
                    ttag: 1,
                    offset: 0,
                    length: 4096,
                };
                let mut out = [0u8; 28];
                let k = pdu::r2t(&mut out, &h, false);
                out[..k].to_vec()
            },
            Fes::SequenceError,
            "R2T for command",
        );
        refused(
            |cid| c2h(cid, 0, &[0; 4096], FLAG_SUCCESS),
            Fes::InvalidHeaderField,
            "SUCCESS on a C2HData that does not end the data",
        );
        refused(
            |_| vec![0x42, 0, 8, 0, 8, 0, 0, 0],
            Fes::InvalidHeaderField,
            "unknown PDU type",
        );
    }

    #[test]
    fn mutated_streams_never_panic_nor_complete_with_wrong_data() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..150 {
            let flips: Vec<(usize, u8)> = (0..1 + rnd() % 3)
                .map(|_| ((rnd() % 40) as usize, rnd() as u8))
                .collect();
            let (addr, t) = fake(move |s, cmd| {
                let cid = u16::from_le_bytes([cmd[10], cmd[11]]);
                let mut good = c2h(cid, 0, &[0x5A; 4096], 0);
                good.extend(resp(cid, 0));
                for &(at, x) in &flips {
                    good[at] ^= x | 1;
                }
                let _ = s.write_all(&good);
                // Close: a mutation that asks for more bytes ends there.
                let _ = s.shutdown(Shutdown::Write);
            });
            let mut buf = vec![0u8; 4096];
            let (r, c) = read_through(addr, &mut buf);
            if let Some(Ok(_)) = r {
                // Only a mutation the checks cannot see (data bytes, a
                // reserved field) may still complete: then the data
                // arrived in place.
                assert!(buf.iter().filter(|&&b| b != 0x5A).count() <= 3);
            }
            drop(c);
            let _ = t.join();
        }
    }
}
