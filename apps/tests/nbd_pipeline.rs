//! NBD requests in flight together on one connection: a raw client that
//! negotiates structured replies writes many requests before reading any
//! reply, and sees a fast request (FLUSH) answered before slow ones (reads
//! and writes behind a delay bdev of 300 ms); read data comes back in
//! OFFSET_DATA chunks, errors in ERROR chunks with a message; DF is
//! accepted; a disconnect is served only after every earlier reply. Then
//! `qemu-io` with 32 AIO writes and 32 AIO reads in flight verifies its
//! patterns through the same delay bdev.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command as Proc;
use std::time::Duration;

use apps::nbd::proto::{self, Command, Request};
use common::{Appliance, TempDir, tool};
use serde_json::json;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Sends an option and reads its replies up to the final one; returns the
/// reply types.
fn option(s: &mut UnixStream, opt: u32, data: &[u8]) -> Vec<u32> {
    let mut h = Vec::new();
    h.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&opt.to_be_bytes());
    h.extend_from_slice(&(data.len() as u32).to_be_bytes());
    h.extend_from_slice(data);
    s.write_all(&h).unwrap();
    let mut types = Vec::new();
    loop {
        let mut r = [0u8; 20];
        s.read_exact(&mut r).unwrap();
        assert_eq!(be64(&r), proto::REPLY_MAGIC);
        assert_eq!(be32(&r[8..]), opt);
        let ty = be32(&r[12..]);
        let mut d = vec![0u8; be32(&r[16..]) as usize];
        s.read_exact(&mut d).unwrap();
        types.push(ty);
        if ty != proto::REP_INFO && ty != proto::REP_SERVER {
            return types;
        }
    }
}

/// One reply as the client sees it.
#[derive(Debug)]
enum Reply {
    Simple {
        handle: u64,
        error: u32,
    },
    Data {
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Error {
        handle: u64,
        error: u32,
        message: String,
    },
    None {
        handle: u64,
    },
}

impl Reply {
    fn handle(&self) -> u64 {
        match self {
            Reply::Simple { handle, .. }
            | Reply::Data { handle, .. }
            | Reply::Error { handle, .. }
            | Reply::None { handle } => *handle,
        }
    }
}

fn read_reply(s: &mut UnixStream) -> Reply {
    let mut m = [0u8; 4];
    s.read_exact(&mut m).unwrap();
    match be32(&m) {
        proto::SIMPLE_REPLY_MAGIC => {
            let mut r = [0u8; 12];
            s.read_exact(&mut r).unwrap();
            Reply::Simple {
                error: be32(&r),
                handle: be64(&r[4..]),
            }
        }
        proto::STRUCTURED_REPLY_MAGIC => {
            let mut r = [0u8; 16];
            s.read_exact(&mut r).unwrap();
            let flags = u16::from_be_bytes([r[0], r[1]]);
            let ty = u16::from_be_bytes([r[2], r[3]]);
            let handle = be64(&r[4..]);
            let mut p = vec![0u8; be32(&r[12..]) as usize];
            s.read_exact(&mut p).unwrap();
            assert_eq!(flags, proto::REPLY_FLAG_DONE, "one chunk per reply");
            match ty {
                proto::REPLY_TYPE_OFFSET_DATA => Reply::Data {
                    handle,
                    offset: be64(&p),
                    data: p[8..].to_vec(),
                },
                proto::REPLY_TYPE_ERROR => {
                    let n = u16::from_be_bytes([p[4], p[5]]) as usize;
                    Reply::Error {
                        handle,
                        error: be32(&p),
                        message: String::from_utf8_lossy(&p[6..6 + n]).into_owned(),
                    }
                }
                proto::REPLY_TYPE_NONE => Reply::None { handle },
                other => panic!("unexpected chunk type {other}"),
            }
        }
        other => panic!("bad reply magic {other:#x}"),
    }
}

fn request(s: &mut UnixStream, command: Command, flags: u16, handle: u64, offset: u64, len: u32) {
    let r = Request {
        flags,
        command,
        handle,
        offset,
        length: len,
    };
    s.write_all(&proto::encode_request(&r)).unwrap();
}

#[test]
fn requests_in_flight_together() {
    tool("qemu-io", "QEMU_IO");
    let dir = TempDir::new("nbdpipe");
    let a = Appliance::start(&dir, "a", &["-m", "0x1"]);
    a.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 32768, "block_size": 512}),
    )
    .unwrap();
    a.call(
        "bdev_delay_create",
        json!({"base_bdev_name": "M0", "name": "D0",
               "avg_read_latency": 300000, "p99_read_latency": 300000,
               "avg_write_latency": 300000, "p99_write_latency": 300000}),
    )
    .unwrap();
    let sock = dir.join("d0.nbd");
    a.call(
        "nbd_start_disk",
        json!({"bdev_name": "D0", "nbd_device": sock.to_str().unwrap()}),
    )
    .unwrap();

    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(be64(&g), proto::NBDMAGIC);
    let cflags = u32::from(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
    s.write_all(&cflags.to_be_bytes()).unwrap();
    // Structured replies: data with the option is malformed, none is fine.
    assert_eq!(
        option(&mut s, proto::OPT_STRUCTURED_REPLY, b"x"),
        [proto::REP_ERR_INVALID]
    );
    assert_eq!(
        option(&mut s, proto::OPT_STRUCTURED_REPLY, &[]),
        [proto::REP_ACK]
    );
    let mut go = Vec::new();
    go.extend_from_slice(&2u32.to_be_bytes());
    go.extend_from_slice(b"D0");
    go.extend_from_slice(&0u16.to_be_bytes());
    let types = option(&mut s, proto::OPT_GO, &go);
    assert_eq!(types.last(), Some(&proto::REP_ACK), "{types:?}");

    // Ten 4 KiB writes of distinct bytes, written in one go with the
    // requests; then a flush, which the delay bdev does not hold.
    let mut burst = Vec::new();
    for i in 0..10u64 {
        let r = Request {
            flags: 0,
            command: Command::Write,
            handle: 100 + i,
            offset: i * 4096,
            length: 4096,
        };
        burst.extend_from_slice(&proto::encode_request(&r));
        burst.extend_from_slice(&[i as u8 + 1; 4096]);
    }
    s.write_all(&burst).unwrap();
    request(&mut s, Command::Flush, 0, 999, 0, 0);
    let mut order = Vec::new();
    for _ in 0..11 {
        match read_reply(&mut s) {
            Reply::Simple { handle, error } => {
                assert_eq!(error, 0, "handle {handle}");
                order.push(handle);
            }
            other => panic!("writes and flushes get simple replies: {other:?}"),
        }
    }
    assert_eq!(
        order[0], 999,
        "the flush overtook the ten delayed writes: {order:?}"
    );
    order.sort_unstable();
    assert_eq!(
        order,
        [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 999]
    );

    // Ten reads (one with DF), an error, an empty read, all at once.
    for i in 0..10u64 {
        let flags = if i == 3 { proto::CMD_FLAG_DF } else { 0 };
        request(&mut s, Command::Read, flags, 200 + i, i * 4096, 4096);
    }
    request(&mut s, Command::Read, 0, 300, 32768 * 512, 4096);
    request(&mut s, Command::Read, 0, 301, 0, 0);
    let mut seen = Vec::new();
    for k in 0..12 {
        let r = read_reply(&mut s);
        seen.push(r.handle());
        match r {
            Reply::Data {
                handle,
                offset,
                data,
            } => {
                let i = handle - 200;
                assert_eq!(offset, i * 4096);
                assert_eq!(data, vec![i as u8 + 1; 4096], "read {i}");
            }
            Reply::Error {
                handle,
                error,
                message,
            } => {
                assert_eq!(handle, 300);
                assert_eq!(error, proto::errno::EINVAL);
                assert!(!message.is_empty());
                assert!(k < 2, "the failed read is answered at once: {k}");
            }
            Reply::None { handle } => {
                assert_eq!(handle, 301);
                assert!(k < 2, "the empty read is answered at once: {k}");
            }
            other => panic!("{other:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (200..210).chain([300, 301]).collect::<Vec<_>>());

    // Disconnect with reads in flight: their replies come first.
    for i in 0..4u64 {
        request(&mut s, Command::Read, 0, 400 + i, i * 4096, 4096);
    }
    request(&mut s, Command::Disc, 0, 500, 0, 0);
    let mut last = Vec::new();
    for _ in 0..4 {
        last.push(read_reply(&mut s).handle());
    }
    last.sort_unstable();
    assert_eq!(last, [400, 401, 402, 403]);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after DISC");

    // qemu-io with 32 AIO writes, then 32 AIO reads, in flight together.
    let uri = format!("nbd+unix:///D0?socket={}", sock.display());
    let mut cmds: Vec<String> = Vec::new();
    for i in 0..32 {
        cmds.push(format!("aio_write -P {} {} 64k", 0x40 + i, i * 65536));
    }
    cmds.push("aio_flush".into());
    for i in 0..32 {
        cmds.push(format!("aio_read -P {} {} 64k", 0x40 + i, i * 65536));
    }
    cmds.push("aio_flush".into());
    let mut c = Proc::new(tool("qemu-io", "QEMU_IO"));
    c.args(["-f", "raw", &uri]);
    for x in &cmds {
        c.args(["-c", x]);
    }
    let o = c.output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
        assert!(!out.contains(bad), "{out}");
    }
    assert_eq!(out.matches("read 65536/65536").count(), 32, "{out}");
    assert_eq!(out.matches("wrote 65536/65536").count(), 32, "{out}");
}
