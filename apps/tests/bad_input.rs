//! Bad input, with the appliance still serving and no bdev lost afterwards:
//! malformed JSON, a request over the size limit, invalid requests, wrong
//! parameter types, unknown methods, batches and notifications, clients
//! that leave mid-request; NBD requests beyond the device end, unaligned,
//! unknown or with a bad magic, and broken handshakes. Also: the RPC
//! socket is owner-only.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use apps::nbd::proto::{self, Command, Request};
use common::{Appliance, RpcConn, TempDir};
use serde_json::{Value, json};

fn setup(dir: &TempDir) -> Appliance {
    let a = Appliance::start(dir, "a", &[]);
    a.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    a.call(
        "bdev_null_create",
        json!({"name": "N0", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    a
}

fn still_serving(a: &mut Appliance) {
    assert!(a.alive(), "the appliance died:\n{}", a.log_text());
    assert!(a.call("spdk_get_version", Value::Null).is_ok());
    assert_eq!(a.bdev_names(), ["M0", "N0"], "no bdev lost");
}

fn error_of(v: &Value) -> (i64, Value) {
    (v["error"]["code"].as_i64().unwrap(), v["id"].clone())
}

#[test]
fn bad_json_rpc_input() {
    let dir = TempDir::new("bad");
    let mut a = setup(&dir);

    // Owner-only socket.
    let mode = std::fs::metadata(&a.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "RPC socket mode {mode:o}");

    // Malformed JSON: -32700 with a null id, then the connection closes.
    for garbage in [
        &b"{\"jsonrpc\":\"2.0\",\"method\":}"[..],
        b"{\"a\":\"\xff\xfe\"}",
        b"nonsense",
        b"{]",
    ] {
        let mut c = RpcConn::connect(&a.sock);
        c.send_raw(garbage).unwrap();
        c.send_raw(b"\n").unwrap();
        let r = c.recv().expect("a parse error answer");
        assert_eq!(error_of(&r), (-32700, Value::Null), "{r}");
        assert!(c.closed());
    }
    still_serving(&mut a);

    // Invalid requests: -32600, the connection goes on.
    let mut c = RpcConn::connect(&a.sock);
    for (req, id) in [
        (
            json!({"jsonrpc": "1.0", "method": "spdk_get_version", "id": 5}),
            json!(5),
        ),
        (
            json!({"jsonrpc": "2.0", "method": 7, "id": "x"}),
            json!("x"),
        ),
        (
            json!({"jsonrpc": "2.0", "method": "m", "params": 3, "id": 6}),
            json!(6),
        ),
        (
            json!({"jsonrpc": "2.0", "method": "m", "id": [1]}),
            Value::Null,
        ),
        (json!([]), Value::Null),
        (json!(42), Value::Null),
    ] {
        c.send_raw(serde_json::to_string(&req).unwrap().as_bytes())
            .unwrap();
        c.send_raw(b" ").unwrap();
        let r = c.recv().unwrap();
        assert_eq!(error_of(&r), (-32600, id), "{req} -> {r}");
    }

    // Unknown methods.
    let e = c.call("no_such_method", json!({})).unwrap_err();
    assert_eq!(e.0, -32601);
    // Wrong parameter types, unknown and missing parameters.
    for p in [
        json!({"name": "X", "num_blocks": "ten", "block_size": 512}),
        json!({"name": "X", "num_blocks": -1, "block_size": 512}),
        json!({"name": "X", "num_blocks": 1.5, "block_size": 512}),
        json!({"name": 3, "num_blocks": 8, "block_size": 512}),
        json!({"name": "X", "num_blocks": 8, "block_size": 512, "bogus": 1}),
        json!({"name": "X", "block_size": 512}),
        json!(["X", 8, 512]),
        json!({"name": "X", "num_blocks": 8, "block_size": 512, "md_size": 8}),
    ] {
        let e = c.call("bdev_malloc_create", p.clone()).unwrap_err();
        assert_eq!(e.0, -32602, "{p}: {e:?}");
    }
    let e = c
        .call("bdev_get_bdevs", json!({"name": "M0", "timeout": "soon"}))
        .unwrap_err();
    assert_eq!(e.0, -32602);
    // Out-of-range values are domain errors.
    let e = c
        .call(
            "bdev_malloc_create",
            json!({"name": "X", "num_blocks": 8, "block_size": 513}),
        )
        .unwrap_err();
    assert_eq!(e, (-22, "Invalid argument".into()));

    // A batch: answers for the calls, none for the notification.
    c.send_raw(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},
             {"jsonrpc":"2.0","method":"spdk_get_version"},
             {"jsonrpc":"2.0","method":"nope","id":2},
             {"foo":1},
             {"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":"M0"},"id":"three"}]"#,
    )
    .unwrap();
    let r = c.recv().unwrap();
    let r = r.as_array().expect("a batch answer");
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r[0]["result"]["version"].is_string());
    assert_eq!(error_of(&r[1]), (-32601, json!(2)));
    assert_eq!(error_of(&r[2]), (-32600, Value::Null));
    assert_eq!(r[3]["result"][0]["name"], "M0");
    // A notification gets no answer: the next answer is the next call's.
    c.send_raw(br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs"}"#)
        .unwrap();
    assert!(c.call("spdk_get_version", Value::Null).is_ok());
    // Several requests in one write, split anywhere.
    let two = br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":10}{"jsonrpc":"2.0","method":"spdk_get_version","id":11}"#;
    c.send_raw(&two[..30]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&two[30..]).unwrap();
    assert_eq!(c.recv().unwrap()["id"], 10);
    assert_eq!(c.recv().unwrap()["id"], 11);
    drop(c);

    // Over the size limit: -32600, then the connection closes.
    let mut c = RpcConn::connect(&a.sock);
    let mut s = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = s.write_all(br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":""#);
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..6 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let r = c.recv().expect("an answer to the oversized request");
    assert_eq!(error_of(&r), (-32600, Value::Null), "{r}");
    assert!(c.closed());
    writer.join().unwrap();
    still_serving(&mut a);

    // Clients that leave mid-request, or at once.
    for cut in [1, 10, 40] {
        let mut s = UnixStream::connect(&a.sock).unwrap();
        s.write_all(
            &br#"{"jsonrpc":"2.0","method":"bdev_malloc_delete","params":{"name":"M0"},"id":1}"#
                [..cut],
        )
        .unwrap();
        drop(s);
    }
    for _ in 0..20 {
        drop(UnixStream::connect(&a.sock).unwrap());
    }
    // A client that sends a slow request and leaves before the answer.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":"late","timeout":300},"id":1}"#)
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(400));
    still_serving(&mut a);
}

/// A raw NBD client.
struct Nbd {
    s: UnixStream,
}

impl Nbd {
    fn connect(path: &Path) -> Nbd {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Nbd { s }
    }

    fn read_n(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).ok()?;
        Some(b)
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }

    fn greeting(&mut self) {
        let g = self.read_n(18).unwrap();
        assert_eq!(&g[..], &proto::server_greeting()[..]);
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// (option, reply type, data) of the next option reply.
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read_n(20).expect("an option reply");
        assert_eq!(&h[..8], &proto::REPLY_MAGIC.to_be_bytes());
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        (opt, ty, self.read_n(len as usize).unwrap())
    }

    fn go_data(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        d
    }

    /// Handshake to transmission with GO; returns the export size.
    fn go(path: &Path, name: &str) -> (Nbd, u64) {
        let mut n = Nbd::connect(path);
        n.greeting();
        n.s.write_all(&3u32.to_be_bytes()).unwrap();
        n.option(proto::OPT_GO, &Nbd::go_data(name));
        let mut size = 0;
        loop {
            let (_, ty, d) = n.reply();
            match ty {
                proto::REP_INFO if d[..2] == proto::INFO_EXPORT.to_be_bytes() => {
                    size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                }
                proto::REP_INFO => {}
                proto::REP_ACK => break,
                other => panic!("GO answered {other:#x}"),
            }
        }
        (n, size)
    }

    /// Sends a request; returns the reply's error and read data.
    fn cmd(
        &mut self,
        command: Command,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        let r = Request {
            flags: 0,
            command,
            handle: 0xfeed,
            offset,
            length,
        };
        self.s.write_all(&proto::encode_request(&r)).unwrap();
        self.s.write_all(payload).unwrap();
        let h = self.read_n(16).expect("a reply");
        assert_eq!(&h[..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&h[8..16], &0xfeedu64.to_be_bytes());
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let data = if command == Command::Read && err == 0 {
            self.read_n(length as usize).unwrap()
        } else {
            Vec::new()
        };
        (err, data)
    }
}

#[test]
fn bad_nbd_input() {
    let dir = TempDir::new("badnbd");
    let mut a = setup(&dir);
    let sock = dir.join("m0.nbd");
    a.call(
        "nbd_start_disk",
        json!({"bdev_name": "M0", "nbd_device": sock.to_str().unwrap()}),
    )
    .unwrap();

    // Broken handshakes: each costs only its own connection.
    drop(Nbd::connect(&sock));
    let mut n = Nbd::connect(&sock);
    n.greeting();
    n.s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    assert!(n.closed(), "unknown client flags close the connection");
    let mut n = Nbd::connect(&sock);
    n.greeting();
    n.s.write_all(&1u32.to_be_bytes()).unwrap();
    n.s.write_all(&[0x42; 16]).unwrap();
    assert!(n.closed(), "a bad option magic closes the connection");
    let mut n = Nbd::connect(&sock);
    n.greeting();
    n.s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut h = proto::IHAVEOPT.to_be_bytes().to_vec();
    h.extend_from_slice(&proto::OPT_GO.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    n.s.write_all(&h).unwrap();
    assert!(n.closed(), "an oversized option closes the connection");
    let mut n = Nbd::connect(&sock);
    n.greeting();
    n.s.write_all(&1u32.to_be_bytes()).unwrap();
    n.s.write_all(&proto::IHAVEOPT.to_be_bytes()[..5]).unwrap();
    drop(n); // gone mid-option

    // Options: unsupported, list, bad info data, unknown export, abort.
    let mut n = Nbd::connect(&sock);
    n.greeting();
    n.s.write_all(&3u32.to_be_bytes()).unwrap();
    n.option(99, b"xyz");
    assert_eq!(n.reply().1, proto::REP_ERR_UNSUP);
    n.option(proto::OPT_STARTTLS, &[]);
    assert_eq!(n.reply().1, proto::REP_ERR_UNSUP);
    n.option(proto::OPT_LIST, &[]);
    let (_, ty, d) = n.reply();
    assert_eq!(ty, proto::REP_SERVER);
    assert_eq!(&d[4..], b"M0");
    assert_eq!(n.reply().1, proto::REP_ACK);
    n.option(proto::OPT_INFO, &[0, 0, 0, 9, b'a']);
    assert_eq!(n.reply().1, proto::REP_ERR_INVALID);
    n.option(proto::OPT_GO, &Nbd::go_data("nope"));
    assert_eq!(n.reply().1, proto::REP_ERR_UNKNOWN);
    n.option(proto::OPT_ABORT, &[]);
    assert_eq!(n.reply().1, proto::REP_ACK);
    assert!(n.closed());

    // Transmission: requests beyond the end, unaligned or unknown get an
    // error and the connection goes on.
    let (mut n, size) = Nbd::go(&sock, "M0");
    assert_eq!(size, 2048 * 512);
    assert_eq!(n.cmd(Command::Write, 0, 512, &[0x5a; 512]).0, 0);
    assert_eq!(
        n.cmd(Command::Read, size - 512, 1024, &[]).0,
        proto::errno::EINVAL
    );
    assert_eq!(
        n.cmd(Command::Read, u64::MAX - 10, 512, &[]).0,
        proto::errno::EINVAL
    );
    assert_eq!(
        n.cmd(Command::Write, size, 512, &[1; 512]).0,
        proto::errno::ENOSPC
    );
    assert_eq!(
        n.cmd(Command::WriteZeroes, size - 512, 4096, &[]).0,
        proto::errno::ENOSPC
    );
    assert_eq!(n.cmd(Command::Trim, size, 512, &[]).0, proto::errno::EINVAL);
    assert_eq!(n.cmd(Command::Read, 3, 512, &[]).0, proto::errno::EINVAL);
    assert_eq!(
        n.cmd(Command::Unknown(99), 0, 0, &[]).0,
        proto::errno::EINVAL
    );
    assert_eq!(
        n.cmd(Command::BlockStatus, 0, 512, &[]).0,
        proto::errno::EINVAL
    );
    let (e, d) = n.cmd(Command::Read, 0, 512, &[]);
    assert_eq!((e, d), (0, vec![0x5a; 512]), "the connection still works");
    assert_eq!(n.cmd(Command::Flush, 0, 0, &[]).0, 0);
    // A bad request magic closes the connection.
    n.s.write_all(&[0u8; 28]).unwrap();
    assert!(n.closed());
    // A client that leaves in the middle of a write's payload.
    let (mut n, _) = Nbd::go(&sock, "");
    let r = Request {
        flags: 0,
        command: Command::Write,
        handle: 1,
        offset: 0,
        length: 4096,
    };
    n.s.write_all(&proto::encode_request(&r)).unwrap();
    n.s.write_all(&[7; 100]).unwrap();
    drop(n);
    // A write too large to take closes the connection.
    let (mut n, _) = Nbd::go(&sock, "M0");
    let r = Request {
        length: proto::MAX_PAYLOAD + 512,
        ..r
    };
    n.s.write_all(&proto::encode_request(&r)).unwrap();
    assert!(n.closed());

    // Still serving, nothing lost, the export still works.
    still_serving(&mut a);
    let (mut n, _) = Nbd::go(&sock, "M0");
    assert_eq!(n.cmd(Command::Read, 0, 512, &[]).1, vec![0x5a; 512]);
    drop(n);
    let disks = a.call("nbd_get_disks", json!({})).unwrap();
    assert_eq!(disks.as_array().unwrap().len(), 1);
    assert_eq!(
        a.call(
            "nbd_stop_disk",
            json!({"nbd_device": sock.to_str().unwrap()})
        )
        .unwrap(),
        json!(true)
    );
}
