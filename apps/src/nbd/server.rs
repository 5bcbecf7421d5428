//! One NBD connection, as a task on the export's reactor: the fixed
//! newstyle handshake (structured replies when the client asks), then
//! requests pipelined through the export's bdev channel: up to 128 in
//! flight, each with a buffer from the core's DMA cache, replies sent as
//! the I/O completes. The socket is non-blocking and polled by the task,
//! which sleeps a little longer each time it finds nothing (up to 1 ms,
//! woken at once by a completion), so an idle connection costs almost
//! nothing and a busy one is served at once.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bdev::{BdevChannel, BdevError, IoStatus, IoType};
use dma::DmaBuf;

use super::Export;
use super::proto::{self, Command, Plan, errno};
use crate::completions::{Completions, io_done};

/// How long a client may take over the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Options one handshake may send at most.
const MAX_OPTIONS: usize = 64;

/// A client's socket.
pub enum Stream {
    /// Unix-domain.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
    /// The kernel's NBD client, through one end of a socket pair.
    Kernel(UnixStream),
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) | Stream::Kernel(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
                s.set_nonblocking(true)
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) | Stream::Kernel(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) | Stream::Kernel(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

/// The socket plus what the task needs to poll it politely.
struct Conn {
    stream: Stream,
    export: Rc<Export>,
    backoff: Duration,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "export stopped")
}

impl Conn {
    async fn idle(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if self.export.stop.load(Ordering::Acquire) {
            return Err(closed());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake timed out",
            ));
        }
        reactor::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(1));
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match self.stream.read(&mut buf[off..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    off += n;
                    self.backoff = Duration::from_micros(5);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.idle(deadline).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match self.stream.write(&buf[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.idle(Some(Instant::now() + HANDSHAKE_TIMEOUT)).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Serves one client until it leaves, breaks the protocol, or the export
/// stops. `handshake` is false for the kernel's client, which starts in
/// the transmission phase.
pub async fn serve(stream: Stream, export: Rc<Export>, handshake: bool) {
    if let Err(e) = stream.set_nonblocking() {
        log::warn!("nbd {}: {e}", export.device);
        return;
    }
    let mut c = Conn {
        stream,
        export,
        backoff: Duration::from_micros(5),
    };
    let result = async {
        let structured = if handshake {
            match negotiate(&mut c).await? {
                Some(structured) => structured,
                None => return Ok(()),
            }
        } else {
            false
        };
        transmit(&mut c, structured).await
    }
    .await;
    match result {
        Ok(()) => log::debug!("nbd {}: client left", c.export.device),
        Err(e) => log::info!("nbd {}: connection closed: {e}", c.export.device),
    }
}

fn proto_err(e: proto::ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The transmission flags of this export (DF once structured replies are
/// on).
fn transmission_flags(e: &Export, structured: bool) -> u16 {
    let mut f = proto::TF_HAS_FLAGS
        | proto::TF_SEND_FLUSH
        | proto::TF_SEND_FUA
        | proto::TF_SEND_WRITE_ZEROES;
    if e.bdev.io_type_supported(IoType::Unmap) {
        f |= proto::TF_SEND_TRIM;
    }
    if structured {
        f |= proto::TF_SEND_DF;
    }
    f
}

fn size_bytes(e: &Export) -> u64 {
    e.bdev.num_blocks() * e.bdev.block_size() as u64
}

/// The fixed newstyle handshake. Some(structured replies on) when the
/// client went on to the transmission phase, None when it left.
async fn negotiate(c: &mut Conn) -> io::Result<Option<bool>> {
    let deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
    c.write_all(&proto::server_greeting()).await?;
    let mut cf = [0u8; 4];
    c.read_exact(&mut cf, deadline).await?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !u32::from(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown client flags {client_flags:#x}"),
        ));
    }
    let no_zeroes = client_flags & u32::from(proto::FLAG_NO_ZEROES) != 0;
    let name = c.export.bdev.name().to_owned();
    let mut structured = false;
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; 16];
        c.read_exact(&mut h, deadline).await?;
        let h = proto::parse_option_header(&h).map_err(proto_err)?;
        let mut data = vec![0u8; h.length as usize];
        c.read_exact(&mut data, deadline).await?;
        let flags = transmission_flags(&c.export, structured);
        match h.option {
            proto::OPT_EXPORT_NAME => {
                let asked = String::from_utf8_lossy(&data);
                if !asked.is_empty() && asked != name {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no export named {asked:?}"),
                    ));
                }
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&size_bytes(&c.export).to_be_bytes());
                b.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                c.write_all(&b).await?;
                return Ok(Some(structured));
            }
            proto::OPT_ABORT => {
                let _ = c
                    .write_all(&proto::option_reply(h.option, proto::REP_ACK, &[]))
                    .await;
                return Ok(None);
            }
            proto::OPT_STRUCTURED_REPLY => {
                let reply = if data.is_empty() {
                    structured = true;
                    proto::REP_ACK
                } else {
                    proto::REP_ERR_INVALID
                };
                c.write_all(&proto::option_reply(h.option, reply, &[]))
                    .await?;
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    c.write_all(&proto::option_reply(h.option, proto::REP_ERR_INVALID, &[]))
                        .await?;
                    continue;
                }
                let mut d = Vec::new();
                d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                d.extend_from_slice(name.as_bytes());
                c.write_all(&proto::option_reply(h.option, proto::REP_SERVER, &d))
                    .await?;
                c.write_all(&proto::option_reply(h.option, proto::REP_ACK, &[]))
                    .await?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let Some((asked, items)) = proto::parse_info_request(&data) else {
                    c.write_all(&proto::option_reply(h.option, proto::REP_ERR_INVALID, &[]))
                        .await?;
                    continue;
                };
                if !asked.is_empty() && asked != name {
                    c.write_all(&proto::option_reply(h.option, proto::REP_ERR_UNKNOWN, &[]))
                        .await?;
                    continue;
                }
                let info = proto::info_export(size_bytes(&c.export), flags);
                c.write_all(&proto::option_reply(h.option, proto::REP_INFO, &info))
                    .await?;
                if items.contains(&proto::INFO_NAME) {
                    let mut d = proto::INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    c.write_all(&proto::option_reply(h.option, proto::REP_INFO, &d))
                        .await?;
                }
                if items.contains(&proto::INFO_BLOCK_SIZE) {
                    let bs = c.export.bdev.block_size();
                    let d = proto::info_block_size(bs, bs.max(4096), proto::MAX_PAYLOAD);
                    c.write_all(&proto::option_reply(h.option, proto::REP_INFO, &d))
                        .await?;
                }
                c.write_all(&proto::option_reply(h.option, proto::REP_ACK, &[]))
                    .await?;
                if h.option == proto::OPT_GO {
                    return Ok(Some(structured));
                }
            }
            _ => {
                c.write_all(&proto::option_reply(h.option, proto::REP_ERR_UNSUP, &[]))
                    .await?;
            }
        }
    }
    let _ = c
        .write_all(&proto::option_reply(0, proto::REP_ERR_TOO_BIG, &[]))
        .await;
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many options",
    ))
}

/// NBD's error number for an I/O's end.
fn status_errno(s: IoStatus) -> u32 {
    match s {
        IoStatus::Success => 0,
        IoStatus::NotSupported => errno::ENOTSUP,
        IoStatus::NoMem => errno::ENOMEM,
        IoStatus::Failed | IoStatus::Aborted | IoStatus::Miscompare => errno::EIO,
    }
}

fn submit_errno(e: &BdevError, writes: bool) -> u32 {
    match e {
        BdevError::OutOfRange { .. } if writes => errno::ENOSPC,
        BdevError::OutOfRange { .. } | BdevError::Invalid { .. } => errno::EINVAL,
        BdevError::ReadOnly(_) => errno::EPERM,
        BdevError::NoMem(_) | BdevError::NoBuffer { .. } => errno::ENOMEM,
        BdevError::Removing(_) => errno::ESHUTDOWN,
        _ => errno::EIO,
    }
}

/// The message of a structured error reply.
fn errno_text(e: u32) -> &'static str {
    match e {
        errno::EPERM => "operation not permitted",
        errno::ENOMEM => "out of memory",
        errno::EINVAL => "invalid request",
        errno::ENOSPC => "beyond the end of the export",
        errno::ENOTSUP => "not supported by the device",
        errno::ESHUTDOWN => "the export is stopping",
        _ => "I/O error",
    }
}

/// Requests one connection keeps in flight at most (the kernel's client
/// queues up to 128 per connection, QEMU's 16); more wait in the socket.
const MAX_IN_FLIGHT: usize = 128;
/// Reply bytes queued for the socket before completions wait for it.
const MAX_OUT: usize = 8 << 20;
/// The receive buffer.
const READ_CHUNK: usize = 256 << 10;
/// How long a connection is polled without sleeping after it last did
/// something; then it sleeps a little longer each time (up to 1 ms).
const ACTIVE_POLL: Duration = Duration::from_millis(1);
/// Socket reads per turn, so one busy client cannot hold the reactor.
const READS_PER_TURN: usize = 4;

/// What a request in a slot still has to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its own I/O.
    Main,
    /// The flush that makes a FUA trim or zeroing durable.
    FlushAfter,
}

/// A request being served.
struct Req {
    handle: u64,
    command: Command,
    offset: u64,
    len: usize,
    offset_blocks: u64,
    num_blocks: u64,
    fua: bool,
    stage: Stage,
    buf: Option<DmaBuf>,
}

/// What the bytes arriving next are.
enum Rx {
    /// A request header.
    Header,
    /// A write's payload, going into its slot's buffer.
    Payload { slot: u16, got: usize },
    /// The payload of a refused write, read and dropped; then its error
    /// reply.
    Discard { left: usize, handle: u64, err: u32 },
}

/// One connection's transmission phase: requests read as they come,
/// submitted at once (up to [`MAX_IN_FLIGHT`]), replies sent as their
/// I/O completes, in any order (NBD matches them by handle).
struct Pipeline {
    export: Rc<Export>,
    ch: BdevChannel,
    done: Completions,
    slots: Vec<Option<Req>>,
    free: Vec<u16>,
    to_submit: VecDeque<u16>,
    /// I/O submitted to the bdev and not yet reaped.
    in_flight: usize,
    rx: Rx,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    out: Vec<u8>,
    out_off: usize,
    structured: bool,
    block_size: u32,
    trim: bool,
    flush: bool,
}

impl Pipeline {
    fn new(export: Rc<Export>, ch: BdevChannel, structured: bool) -> Pipeline {
        Pipeline {
            block_size: export.bdev.block_size(),
            trim: export.bdev.io_type_supported(IoType::Unmap),
            flush: export.bdev.io_type_supported(IoType::Flush),
            export,
            ch,
            done: Completions::new(MAX_IN_FLIGHT),
            slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
            free: (0..MAX_IN_FLIGHT as u16).rev().collect(),
            to_submit: VecDeque::with_capacity(MAX_IN_FLIGHT),
            in_flight: 0,
            rx: Rx::Header,
            inbuf: vec![0; READ_CHUNK],
            in_start: 0,
            in_end: 0,
            out: Vec::with_capacity(64 << 10),
            out_off: 0,
            structured,
        }
    }

    /// Nothing in flight, queued or unsent.
    fn idle(&self) -> bool {
        self.free.len() == MAX_IN_FLIGHT && self.out_off == self.out.len()
    }

    fn reply(&mut self, handle: u64, command: Command, err: u32) {
        if self.structured && command == Command::Read {
            if err == 0 {
                // An empty read: a final chunk with nothing in it.
                self.out.extend_from_slice(&proto::structured_header(
                    proto::REPLY_FLAG_DONE,
                    proto::REPLY_TYPE_NONE,
                    handle,
                    0,
                ));
            } else {
                self.out
                    .extend_from_slice(&proto::structured_error(handle, err, errno_text(err)));
            }
        } else {
            self.out
                .extend_from_slice(&proto::simple_reply(err, handle));
        }
    }

    /// Ends the request in slot `i` with `err`: its reply (with the data
    /// of a read) is queued, its buffer goes back to the core's cache.
    fn finish(&mut self, i: u16, err: u32) {
        let Some(mut req) = self.slots[i as usize].take() else {
            return;
        };
        self.free.push(i);
        let buf = req.buf.take();
        match (req.command, err, &buf) {
            (Command::Read, 0, Some(b)) if req.len > 0 => {
                if self.structured {
                    self.out.extend_from_slice(&proto::structured_data_header(
                        req.handle,
                        req.offset,
                        req.len as u32,
                    ));
                } else {
                    self.out
                        .extend_from_slice(&proto::simple_reply(0, req.handle));
                }
                let at = self.out.len();
                self.out.resize(at + req.len, 0);
                b.read_at(0, &mut self.out[at..]);
            }
            _ => self.reply(req.handle, req.command, err),
        }
        if let Some(b) = buf {
            self.ch.free_buf(b);
        }
    }

    /// Turns completions into replies (or into the flush a FUA trim or
    /// zeroing still needs) while the reply queue has room.
    fn reap(&mut self) -> bool {
        let mut progress = false;
        while self.out.len() - self.out_off < MAX_OUT {
            let next = self.done.pop();
            let Some((i, status, buf)) = next else { break };
            progress = true;
            self.in_flight -= 1;
            let Some(req) = self.slots[i as usize].as_mut() else {
                continue;
            };
            if buf.is_some() {
                req.buf = buf;
            }
            let err = status_errno(status);
            if err == 0
                && req.fua
                && req.stage == Stage::Main
                && matches!(req.command, Command::Trim | Command::WriteZeroes)
                && self.flush
            {
                req.stage = Stage::FlushAfter;
                self.to_submit.push_back(i);
                continue;
            }
            self.finish(i, err);
        }
        progress
    }

    /// Submits queued requests while the channel has I/O objects free (the
    /// pool is shared by every connection on this core).
    fn submit_queued(&mut self) -> bool {
        let mut progress = false;
        while let Some(&i) = self.to_submit.front() {
            if self.ch.outstanding() >= self.ch.pool_size() {
                break;
            }
            self.to_submit.pop_front();
            progress = true;
            let Some(req) = self.slots[i as usize].as_mut() else {
                continue;
            };
            let ctx = self.done.ctx(i);
            let ch = &self.ch;
            let all = self.export.bdev.num_blocks();
            let (ob, nb) = (req.offset_blocks, req.num_blocks);
            let res = match (req.stage, req.command) {
                (Stage::FlushAfter, _) | (Stage::Main, Command::Flush) => {
                    ch.submit_nodata(IoType::Flush, 0, all, io_done, ctx)
                }
                (Stage::Main, Command::Read | Command::Write) => match req.buf.take() {
                    Some(b) if req.command == Command::Read => {
                        ch.read(b, ob, nb, io_done, ctx).map_err(|(e, b)| {
                            req.buf = Some(b);
                            e
                        })
                    }
                    Some(b) => ch
                        .write(b, ob, nb, req.fua, io_done, ctx)
                        .map_err(|(e, b)| {
                            req.buf = Some(b);
                            e
                        }),
                    None => Err(BdevError::NoBuffer {
                        len: req.len,
                        reason: "lost".into(),
                    }),
                },
                (Stage::Main, Command::Trim) => {
                    ch.submit_nodata(IoType::Unmap, ob, nb, io_done, ctx)
                }
                (Stage::Main, _) => ch.submit_nodata(IoType::WriteZeroes, ob, nb, io_done, ctx),
            };
            match res {
                Ok(()) => self.in_flight += 1,
                Err(e) => {
                    // SAFETY: `ctx` is this I/O's word and the I/O was
                    // not started.
                    unsafe { Completions::not_started(ctx) };
                    let writes = req.command != Command::Read;
                    self.finish(i, submit_errno(&e, writes));
                }
            }
        }
        progress
    }

    /// Reads what the socket has (a few reads at most) and takes in the
    /// requests it holds. Ok(true) once the client asked to disconnect.
    fn receive(&mut self, stream: &mut Stream, progress: &mut bool) -> io::Result<bool> {
        let mut reads = 0;
        loop {
            // Take in what is buffered.
            match self.rx {
                Rx::Header => {
                    if self.in_end - self.in_start >= 28 {
                        if self.free.is_empty() {
                            // Every slot busy: the socket waits.
                            return Ok(false);
                        }
                        let mut h = [0u8; 28];
                        h.copy_from_slice(&self.inbuf[self.in_start..self.in_start + 28]);
                        self.in_start += 28;
                        *progress = true;
                        if self.request(&h)? {
                            return Ok(true);
                        }
                        continue;
                    }
                }
                Rx::Payload { slot, got } => {
                    let len = self.slots[slot as usize].as_ref().map_or(0, |r| r.len);
                    let take = (self.in_end - self.in_start).min(len - got);
                    if take > 0 || got == len {
                        if let Some(b) = self.slots[slot as usize]
                            .as_mut()
                            .and_then(|r| r.buf.as_mut())
                        {
                            b.write_at(got, &self.inbuf[self.in_start..self.in_start + take]);
                        }
                        self.in_start += take;
                        *progress = true;
                        self.rx = if got + take == len {
                            self.to_submit.push_back(slot);
                            Rx::Header
                        } else {
                            Rx::Payload {
                                slot,
                                got: got + take,
                            }
                        };
                        continue;
                    }
                }
                Rx::Discard { left, handle, err } => {
                    let take = (self.in_end - self.in_start).min(left);
                    if take > 0 || left == 0 {
                        self.in_start += take;
                        *progress = true;
                        self.rx = if take == left {
                            self.reply(handle, Command::Write, err);
                            Rx::Header
                        } else {
                            Rx::Discard {
                                left: left - take,
                                handle,
                                err,
                            }
                        };
                        continue;
                    }
                }
            }
            // Need more bytes.
            if reads == READS_PER_TURN {
                return Ok(false);
            }
            if self.in_start == self.in_end {
                self.in_start = 0;
                self.in_end = 0;
            } else if self.in_end == self.inbuf.len() {
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            reads += 1;
            match stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.in_end += n;
                    *progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes in one request header (a slot is free). Ok(true) on
    /// disconnect.
    fn request(&mut self, h: &[u8; 28]) -> io::Result<bool> {
        let r = proto::parse_request(h).map_err(proto_err)?;
        let size = size_bytes(&self.export);
        let plan = proto::plan(&r, size, self.block_size, self.trim, self.structured);
        let (offset_blocks, num_blocks) = match plan {
            Plan::Disconnect => return Ok(true),
            Plan::Close => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("write of {} bytes is too large", r.length),
                ));
            }
            Plan::Fail(err) if r.command == Command::Write => {
                self.rx = Rx::Discard {
                    left: r.length as usize,
                    handle: r.handle,
                    err,
                };
                return Ok(false);
            }
            Plan::Fail(err) => {
                self.reply(r.handle, r.command, err);
                return Ok(false);
            }
            Plan::Io {
                offset_blocks,
                num_blocks,
            } => (offset_blocks, num_blocks),
        };
        let len = r.length as usize;
        if num_blocks == 0 && r.command != Command::Flush {
            // An empty request succeeds at once.
            self.reply(r.handle, r.command, 0);
            return Ok(false);
        }
        if r.command == Command::Flush && !self.flush {
            // Nothing volatile to flush.
            self.reply(r.handle, r.command, 0);
            return Ok(false);
        }
        let buf = if matches!(r.command, Command::Read | Command::Write) {
            match self.ch.alloc_buf(len) {
                Ok(b) => Some(b),
                Err(e) => {
                    log::warn!("nbd {}: {e}", self.export.device);
                    if r.command == Command::Write {
                        self.rx = Rx::Discard {
                            left: len,
                            handle: r.handle,
                            err: errno::ENOMEM,
                        };
                    } else {
                        self.reply(r.handle, r.command, errno::ENOMEM);
                    }
                    return Ok(false);
                }
            }
        } else {
            None
        };
        let Some(i) = self.free.pop() else {
            unreachable!("a slot is free before a header is taken in");
        };
        self.slots[i as usize] = Some(Req {
            handle: r.handle,
            command: r.command,
            offset: r.offset,
            len,
            offset_blocks,
            num_blocks,
            fua: r.flags & proto::CMD_FLAG_FUA != 0,
            stage: Stage::Main,
            buf,
        });
        if r.command == Command::Write {
            self.rx = Rx::Payload { slot: i, got: 0 };
        } else {
            self.to_submit.push_back(i);
        }
        Ok(false)
    }

    /// Writes queued replies until the socket is full.
    fn send(&mut self, stream: &mut Stream) -> io::Result<bool> {
        let mut progress = false;
        while self.out_off < self.out.len() {
            match stream.write(&self.out[self.out_off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_off += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_off == self.out.len() {
            self.out.clear();
            self.out_off = 0;
            if self.out.capacity() > 2 * MAX_OUT {
                self.out.shrink_to(MAX_OUT);
            }
        }
        Ok(progress)
    }

    /// Waits for the I/O still in flight (its replies are not sent) and
    /// gives its buffers back.
    async fn drain(&mut self) {
        while self.in_flight > 0 {
            self.done.wait(Duration::from_millis(1)).await;
            loop {
                let next = self.done.pop();
                let Some((_, _, buf)) = next else { break };
                self.in_flight -= 1;
                if let Some(b) = buf {
                    self.ch.free_buf(b);
                }
            }
        }
    }
}

/// The transmission phase: requests pipelined (see [`Pipeline`]) until
/// the client disconnects (after every reply it is owed), breaks the
/// protocol, or the export stops.
async fn transmit(c: &mut Conn, structured: bool) -> io::Result<()> {
    let ch = c
        .export
        .desc
        .get_io_channel()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut p = Pipeline::new(c.export.clone(), ch, structured);
    let mut leaving = false;
    let mut backoff = Duration::from_micros(5);
    let mut last_progress = Instant::now();
    let result = loop {
        // The export stopped (its bdev is going): no further request is
        // served, even while the client keeps the socket busy; closing
        // fails what the client still has outstanding at once.
        if c.export.stop.load(Ordering::Acquire) {
            break Err(closed());
        }
        let mut progress = p.reap();
        progress |= p.submit_queued();
        if !leaving {
            match p.receive(&mut c.stream, &mut progress) {
                Ok(l) => leaving = l,
                Err(e) => break Err(e),
            }
            progress |= p.submit_queued();
        }
        match p.send(&mut c.stream) {
            Ok(sent) => progress |= sent,
            Err(e) => break Err(e),
        }
        if leaving && p.idle() {
            // NBD_CMD_DISC: every earlier request was answered.
            break Ok(());
        }
        if progress {
            last_progress = Instant::now();
            backoff = Duration::from_micros(5);
            reactor::yield_now().await;
        } else if last_progress.elapsed() < ACTIVE_POLL {
            // A client in mid-conversation (its next request follows its
            // last reply within microseconds): poll without sleeping.
            reactor::yield_now().await;
        } else {
            p.done.wait(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1));
        }
    };
    p.drain().await;
    result
}
