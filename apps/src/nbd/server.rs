//! One NBD connection, as a task on the export's reactor: the fixed
//! newstyle handshake, then requests served one at a time through the
//! export's bdev channel. The socket is non-blocking and polled by the
//! task, sleeping a little longer each time it finds nothing (up to 1 ms),
//! so an idle connection costs almost nothing and a busy one is served at
//! once.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bdev::{BdevChannel, BdevError, IoStatus, IoType};

use super::Export;
use super::proto::{self, Command, Plan, errno};

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
        if handshake && !negotiate(&mut c).await? {
            return Ok(());
        }
        transmit(&mut c).await
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

/// The transmission flags of this export.
fn transmission_flags(e: &Export) -> u16 {
    let mut f = proto::TF_HAS_FLAGS
        | proto::TF_SEND_FLUSH
        | proto::TF_SEND_FUA
        | proto::TF_SEND_WRITE_ZEROES;
    if e.bdev.io_type_supported(IoType::Unmap) {
        f |= proto::TF_SEND_TRIM;
    }
    f
}

fn size_bytes(e: &Export) -> u64 {
    e.bdev.num_blocks() * e.bdev.block_size() as u64
}

/// The fixed newstyle handshake. True when the client went on to the
/// transmission phase, false when it left.
async fn negotiate(c: &mut Conn) -> io::Result<bool> {
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
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; 16];
        c.read_exact(&mut h, deadline).await?;
        let h = proto::parse_option_header(&h).map_err(proto_err)?;
        let mut data = vec![0u8; h.length as usize];
        c.read_exact(&mut data, deadline).await?;
        let flags = transmission_flags(&c.export);
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
                return Ok(true);
            }
            proto::OPT_ABORT => {
                let _ = c
                    .write_all(&proto::option_reply(h.option, proto::REP_ACK, &[]))
                    .await;
                return Ok(false);
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
                    return Ok(true);
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
        BdevError::NoMem(_) => errno::ENOMEM,
        BdevError::Removing(_) => errno::ESHUTDOWN,
        _ => errno::EIO,
    }
}

/// Runs one I/O: waits for a free I/O object on the channel first (the
/// pool is shared by every connection on this core), then submits.
async fn run_io(
    ch: &BdevChannel,
    ty: IoType,
    buf: Option<dma::DmaBuf>,
    offset_blocks: u64,
    num_blocks: u64,
    fua: bool,
) -> (u32, Option<dma::DmaBuf>) {
    let writes = matches!(ty, IoType::Write | IoType::WriteZeroes | IoType::Unmap);
    while ch.outstanding() >= ch.pool_size() {
        reactor::yield_now().await;
    }
    match ch.io(ty, buf, offset_blocks, num_blocks, fua).await {
        Ok((st, b)) => (status_errno(st), b),
        Err(e) => (submit_errno(&e, writes), None),
    }
}

/// The transmission phase: requests in order, one at a time.
async fn transmit(c: &mut Conn) -> io::Result<()> {
    let ch = c
        .export
        .desc
        .get_io_channel()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let bs = c.export.bdev.block_size();
    let trim = c.export.bdev.io_type_supported(IoType::Unmap);
    let mut payload: Vec<u8> = Vec::new();
    loop {
        // The export stopped (its bdev is going): no further request is
        // served, even while the client keeps the socket busy; closing
        // fails what the client still has outstanding at once.
        if c.export.stop.load(Ordering::Acquire) {
            return Err(closed());
        }
        let mut h = [0u8; 28];
        c.read_exact(&mut h, None).await?;
        let r = proto::parse_request(&h).map_err(proto_err)?;
        let size = size_bytes(&c.export);
        let plan = proto::plan(&r, size, bs, trim);
        if r.command == Command::Write && plan != Plan::Close {
            payload.resize(r.length as usize, 0);
            c.read_exact(&mut payload, None).await?;
        }
        let (offset_blocks, num_blocks) = match plan {
            Plan::Disconnect => return Ok(()),
            Plan::Close => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("write of {} bytes is too large", r.length),
                ));
            }
            Plan::Fail(e) => {
                c.write_all(&proto::simple_reply(e, r.handle)).await?;
                continue;
            }
            Plan::Io {
                offset_blocks,
                num_blocks,
            } => (offset_blocks, num_blocks),
        };
        let fua = r.flags & proto::CMD_FLAG_FUA != 0;
        let len = r.length as usize;
        let (err, data) = match r.command {
            _ if num_blocks == 0 && r.command != Command::Flush => (0, None),
            Command::Read => match bdev::memory().alloc(len, 4096) {
                Ok(b) => run_io(&ch, IoType::Read, Some(b), offset_blocks, num_blocks, false).await,
                Err(_) => (errno::ENOMEM, None),
            },
            Command::Write => match bdev::memory().alloc(len, 4096) {
                Ok(mut b) => {
                    b.write_at(0, &payload);
                    run_io(&ch, IoType::Write, Some(b), offset_blocks, num_blocks, fua).await
                }
                Err(_) => (errno::ENOMEM, None),
            },
            Command::Flush => {
                if c.export.bdev.io_type_supported(IoType::Flush) {
                    let n = c.export.bdev.num_blocks();
                    run_io(&ch, IoType::Flush, None, 0, n, false).await
                } else {
                    // Nothing volatile to flush.
                    (0, None)
                }
            }
            Command::Trim => {
                run_io(&ch, IoType::Unmap, None, offset_blocks, num_blocks, false).await
            }
            Command::WriteZeroes => {
                run_io(
                    &ch,
                    IoType::WriteZeroes,
                    None,
                    offset_blocks,
                    num_blocks,
                    false,
                )
                .await
            }
            _ => (errno::EINVAL, None),
        };
        // FUA on a trim or zeroing: make it durable with a flush.
        let err = if err == 0
            && fua
            && matches!(r.command, Command::Trim | Command::WriteZeroes)
            && c.export.bdev.io_type_supported(IoType::Flush)
        {
            let n = c.export.bdev.num_blocks();
            run_io(&ch, IoType::Flush, None, 0, n, false).await.0
        } else {
            err
        };
        c.write_all(&proto::simple_reply(err, r.handle)).await?;
        if r.command == Command::Read && err == 0 {
            if let Some(b) = data {
                payload.resize(len, 0);
                b.read_at(0, &mut payload);
                c.write_all(&payload).await?;
            } else if num_blocks == 0 {
                // Empty read: nothing follows.
            }
        }
    }
}
