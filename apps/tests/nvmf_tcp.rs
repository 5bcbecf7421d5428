//! The NVMe/TCP target on the wire, driven by a host written here from the
//! specification (the PDUs from `nvme_driver::tcp::pdu`, everything else
//! by hand): ICReq/ICResp with and without digests, Connect, properties,
//! Identify, features, log pages, discovery, reads and writes in-capsule
//! and through R2T/H2CData, flush, write zeroes, deallocate, AENs, the
//! keep-alive timeout, Connect refusals, and bad PDUs answered with a
//! C2HTermReq naming the field.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Appliance, TempDir, add_tcp_listener, free_port, random};
use nvme_driver::crc32c;
use nvme_driver::tcp::pdu::{
    self, CommonHeader, DataHeader, FLAG_LAST_PDU, FLAG_SUCCESS, IcReq, IcResp, Layout, Limits,
    PduType,
};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-0908-0706-050403020100";

/// A target with a 512-byte-block malloc namespace (1) and a
/// 4096-byte-block one (2).
fn target(dir: &TempDir, extra_transport: &[&str]) -> (Appliance, String) {
    let a = Appliance::start(dir, "tgt", &[]);
    a.ok(&["bdev_malloc_create", "-b", "M512", "16", "512"]);
    a.ok(&["bdev_malloc_create", "-b", "M4K", "16", "4096"]);
    let mut t = vec!["nvmf_create_transport", "-t", "tcp"];
    t.extend_from_slice(extra_transport);
    a.ok(&t);
    a.ok(&["nvmf_create_subsystem", NQN, "-a", "-s", "SN1234"]);
    a.ok(&["nvmf_subsystem_add_ns", NQN, "M512"]);
    a.ok(&["nvmf_subsystem_add_ns", NQN, "M4K"]);
    let port = free_port();
    add_tcp_listener(&a, NQN, &port, &[]);
    (a, port)
}

/// A completion.
#[derive(Debug, Clone, Copy)]
struct Cqe {
    dw0: u32,
    dw1: u32,
    cid: u16,
    status: u16,
}

impl Cqe {
    fn parse(b: &[u8]) -> Cqe {
        Cqe {
            dw0: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            dw1: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            cid: u16::from_le_bytes(b[12..14].try_into().unwrap()),
            status: u16::from_le_bytes(b[14..16].try_into().unwrap()) >> 1,
        }
    }
}

/// A PDU as received.
#[derive(Debug)]
struct Pdu {
    t: PduType,
    flags: u8,
    header: Vec<u8>,
    data: Vec<u8>,
}

/// One queue of the host.
struct Host {
    s: TcpStream,
    lim: Limits,
    maxh2c: u32,
    cid: u16,
}

impl Host {
    fn connect(port: &str, hdgst: bool, ddgst: bool) -> Host {
        let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        };
        s.write_all(&req.encode()).unwrap();
        let mut b = [0u8; 128];
        s.read_exact(&mut b).unwrap();
        let ch = CommonHeader::parse(b[..8].try_into().unwrap());
        assert_eq!((ch.pdu_type, ch.plen), (PduType::IcResp as u8, 128));
        let resp = IcResp::parse(&b).unwrap();
        assert_eq!((resp.hdgst, resp.ddgst, resp.cpda), (hdgst, ddgst, 0));
        Host {
            s,
            lim: Limits {
                hdgst,
                ddgst,
                pda: 0,
                max_data: 1 << 22,
                controller: false,
            },
            maxh2c: resp.maxh2cdata,
            cid: 0,
        }
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Sends a command capsule with `data` in it.
    fn send(&mut self, sqe: &[u8; 64], data: &[u8]) {
        let mut h = [0u8; 80];
        let n = pdu::capsule_cmd(&mut h, sqe, data.len(), self.lim.hdgst, self.lim.ddgst);
        let mut out = h[..n].to_vec();
        out.extend_from_slice(data);
        if self.lim.ddgst && !data.is_empty() {
            out.extend_from_slice(&crc32c::checksum(data).to_le_bytes());
        }
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Pdu {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch).unwrap();
        let c = CommonHeader::parse(&ch);
        let l = Layout::of(&c, &self.lim).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        let mut rest = vec![0u8; l.total - 8];
        self.s.read_exact(&mut rest).unwrap();
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        if l.hdgst {
            pdu::check_header_digest(&all, l.hlen).unwrap();
        }
        let data = all[l.data_off..l.data_off + l.data_len].to_vec();
        if l.ddgst {
            let at = l.data_off + l.data_len;
            let d = u32::from_le_bytes(all[at..at + 4].try_into().unwrap());
            assert_eq!(d, crc32c::checksum(&data), "data digest");
        }
        Pdu {
            t: l.pdu_type,
            flags: l.flags,
            header: all[..l.hlen].to_vec(),
            data,
        }
    }

    /// Runs a command (data for the host comes back as C2HData; `out`
    /// goes in the capsule, or through R2T when `r2t`).
    fn run(&mut self, mut sqe: [u8; 64], out: &[u8], r2t: bool) -> (Cqe, Vec<u8>) {
        let cid = self.next_cid();
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        sqe[1] = 0x40; // PSDT: SGL
        if !out.is_empty() && !r2t {
            sqe[39] = 0x01;
            sqe[32..36].copy_from_slice(&(out.len() as u32).to_le_bytes());
            self.send(&sqe, out);
        } else {
            sqe[39] = 0x5A;
            if sqe[32..36] == [0; 4] {
                sqe[32..36].copy_from_slice(&(out.len() as u32).to_le_bytes());
            }
            self.send(&sqe, &[]);
        }
        let mut data = Vec::new();
        loop {
            let p = self.recv();
            match p.t {
                PduType::C2HData => {
                    let h = DataHeader::parse(&p.header);
                    assert_eq!(h.cccid, cid);
                    assert_eq!(h.offset as usize, data.len());
                    data.extend_from_slice(&p.data);
                    if p.flags & FLAG_SUCCESS != 0 {
                        return (
                            Cqe {
                                dw0: 0,
                                dw1: 0,
                                cid,
                                status: 0,
                            },
                            data,
                        );
                    }
                }
                PduType::R2T => {
                    let h = DataHeader::parse(&p.header);
                    assert_eq!(h.cccid, cid);
                    self.h2c(
                        h.ttag,
                        cid,
                        &out[h.offset as usize..(h.offset + h.length) as usize],
                        h.offset,
                    );
                }
                PduType::CapsuleResp => {
                    let c = Cqe::parse(&p.header[8..24]);
                    assert_eq!(c.cid, cid);
                    return (c, data);
                }
                t => panic!("unexpected {t:?}"),
            }
        }
    }

    /// Sends `data` for R2T `ttag` in MAXH2CDATA pieces.
    fn h2c(&mut self, ttag: u16, cid: u16, data: &[u8], base: u32) {
        let chunks: Vec<&[u8]> = data.chunks(self.maxh2c.min(16384) as usize).collect();
        let mut off = base;
        for (i, c) in chunks.iter().enumerate() {
            let h = DataHeader {
                cccid: cid,
                ttag,
                offset: off,
                length: c.len() as u32,
            };
            let last = if i + 1 == chunks.len() {
                FLAG_LAST_PDU
            } else {
                0
            };
            let mut hb = [0u8; 32];
            let n = pdu::data_pdu_header(
                &mut hb,
                PduType::H2CData,
                &h,
                last,
                self.lim.hdgst,
                self.lim.ddgst,
            );
            let mut out = hb[..n].to_vec();
            out.extend_from_slice(c);
            if self.lim.ddgst {
                out.extend_from_slice(&crc32c::checksum(c).to_le_bytes());
            }
            self.s.write_all(&out).unwrap();
            off += c.len() as u32;
        }
    }
}

fn sqe(opcode: u8, nsid: u32, cdw: &[(usize, u32)]) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[0] = opcode;
    s[4..8].copy_from_slice(&nsid.to_le_bytes());
    for &(i, v) in cdw {
        s[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    s
}

fn connect_sqe(qid: u16, sqsize: u16, kato: u32) -> [u8; 64] {
    let mut s = sqe(
        0x7F,
        0,
        &[
            (10, u32::from(qid) << 16),
            (11, u32::from(sqsize)),
            (12, kato),
        ],
    );
    s[4] = 0x01;
    s
}

fn connect_data(subnqn: &str, hostnqn: &str, cntlid: u16) -> Vec<u8> {
    let mut d = vec![0u8; 1024];
    d[0..16].copy_from_slice(&[7u8; 16]);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
    d
}

fn prop_get(h: &mut Host, offset: u32, size8: bool) -> u64 {
    let mut s = sqe(0x7F, 0, &[(10, u32::from(size8)), (11, offset)]);
    s[4] = 0x04;
    let (c, _) = h.run(s, &[], false);
    assert_eq!(c.status, 0);
    u64::from(c.dw0) | (u64::from(c.dw1) << 32)
}

fn prop_set(h: &mut Host, offset: u32, v: u32) {
    let mut s = sqe(0x7F, 0, &[(11, offset), (12, v)]);
    s[4] = 0x00;
    let (c, _) = h.run(s, &[], false);
    assert_eq!(c.status, 0);
}

/// Admin queue: connect and enable; returns the host and the cntlid.
fn admin(port: &str, subnqn: &str, hd: bool, dd: bool, kato: u32) -> (Host, u16) {
    let mut h = Host::connect(port, hd, dd);
    let (c, _) = h.run(
        connect_sqe(0, 31, kato),
        &connect_data(subnqn, HOSTNQN, 0xFFFF),
        false,
    );
    assert_eq!(c.status, 0, "connect: {c:?}");
    let cntlid = c.dw0 as u16;
    assert_eq!(c.dw0 >> 16, 0);
    let cap = prop_get(&mut h, 0, true);
    assert_eq!(cap & 0xFFFF, 127, "MQES");
    assert_ne!(cap & (1 << 37), 0, "CSS NVM");
    prop_set(&mut h, 0x14, 0x0046_0000);
    assert_eq!(prop_get(&mut h, 0x14, false), 0x0046_0000);
    prop_set(&mut h, 0x14, 0x0046_0001);
    assert_eq!(prop_get(&mut h, 0x1C, false) & 1, 1, "CSTS.RDY");
    assert_eq!(prop_get(&mut h, 0x08, false), 0x0001_0300);
    (h, cntlid)
}

fn identify(h: &mut Host, cns: u32, nsid: u32) -> (Cqe, Vec<u8>) {
    let mut s = sqe(0x06, nsid, &[(10, cns)]);
    s[32..36].copy_from_slice(&4096u32.to_le_bytes());
    h.run(s, &[], false)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn io_queue(port: &str, cntlid: u16, qid: u16, hd: bool, dd: bool) -> Host {
    let mut q = Host::connect(port, hd, dd);
    let (c, _) = q.run(
        connect_sqe(qid, 127, 0),
        &connect_data(NQN, HOSTNQN, cntlid),
        false,
    );
    assert_eq!(c.status, 0, "I/O connect: {c:?}");
    q
}

fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32, len: usize) -> [u8; 64] {
    let mut s = sqe(
        opcode,
        nsid,
        &[(10, slba as u32), (11, (slba >> 32) as u32), (12, nlb - 1)],
    );
    s[32..36].copy_from_slice(&(len as u32).to_le_bytes());
    s
}

fn data_path(hd: bool, dd: bool) {
    let dir = TempDir::new("nvmf-wire");
    let (_a, port) = target(&dir, &[]);
    let (mut h, cntlid) = admin(&port, NQN, hd, dd, 0);

    let (c, id) = identify(&mut h, 1, 0);
    assert_eq!(c.status, 0);
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), cntlid);
    assert_eq!(&id[4..10], b"SN1234");
    assert_eq!(String::from_utf8_lossy(&id[24..44]), "SPDK bdev Controller");
    assert_eq!(id[111], 1, "CNTRLTYPE");
    assert_ne!(u16::from_le_bytes([id[320], id[321]]), 0, "KAS");
    assert_ne!(u32_at(&id, 536) & 3, 0, "SGLS");
    assert_eq!(u32_at(&id, 1792), (64 + 4096) / 16, "IOCCSZ");
    assert_eq!(u32_at(&id, 1796), 1, "IORCSZ");
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(id[768 + NQN.len()], 0);
    let (_, list) = identify(&mut h, 2, 0);
    assert_eq!(
        (u32_at(&list, 0), u32_at(&list, 4), u32_at(&list, 8)),
        (1, 2, 0)
    );
    let (_, ns1) = identify(&mut h, 0, 1);
    assert_eq!(u64::from_le_bytes(ns1[0..8].try_into().unwrap()), 16 * 2048);
    assert_eq!(ns1[130], 9, "LBADS");
    let (_, ns2) = identify(&mut h, 0, 2);
    assert_eq!(ns2[130], 12);
    let (_, desc) = identify(&mut h, 3, 1);
    assert_eq!((desc[0], desc[1]), (2, 16), "NGUID descriptor");
    assert_eq!((desc[20], desc[21]), (3, 16), "UUID descriptor");
    let (c, _) = identify(&mut h, 0, 99);
    assert_eq!(c.status & 0xFF, 0x0B, "invalid namespace");
    // Number of queues: two asked, two granted (0's based).
    let (c, _) = h.run(sqe(0x09, 0, &[(10, 0x07), (11, 0x0001_0001)]), &[], false);
    assert_eq!((c.status, c.dw0), (0, 0x0001_0001));
    // SMART log.
    let mut s = sqe(0x02, u32::MAX, &[(10, 0x02 | (127 << 16))]);
    s[32..36].copy_from_slice(&512u32.to_le_bytes());
    let (c, smart) = h.run(s, &[], false);
    assert_eq!((c.status, smart.len(), smart[3]), (0, 512, 100));
    // An unknown log page.
    let mut s = sqe(0x02, 0, &[(10, 0x42 | (127 << 16))]);
    s[32..36].copy_from_slice(&512u32.to_le_bytes());
    let (c, _) = h.run(s, &[], false);
    assert_eq!(c.status, 0x4109, "invalid log page");

    let mut q = io_queue(&port, cntlid, 1, hd, dd);
    // In-capsule write (4 KiB, 512-byte blocks), R2T write (64 KiB).
    let small = random(4096, 1);
    let (c, _) = q.run(rw(0x01, 1, 8, 8, 4096), &small, false);
    assert_eq!(c.status, 0);
    let big = random(65536, 2);
    let (c, _) = q.run(rw(0x01, 1, 100, 128, 65536), &big, true);
    assert_eq!(c.status, 0);
    let (c, back) = q.run(rw(0x02, 1, 8, 8, 4096), &[], false);
    assert_eq!((c.status, back == small), (0, true));
    let (c, back) = q.run(rw(0x02, 1, 100, 128, 65536), &[], false);
    assert_eq!((c.status, back.len()), (0, 65536));
    assert!(back == big, "64 KiB read back differs");
    // 4 KiB namespace: 128 KiB through R2T, read back.
    let huge = random(131072, 3);
    let (c, _) = q.run(rw(0x01, 2, 4, 32, 131072), &huge, true);
    assert_eq!(c.status, 0);
    let (c, back) = q.run(rw(0x02, 2, 4, 32, 131072), &[], false);
    assert_eq!(c.status, 0);
    assert!(back == huge);
    // Flush, write zeroes, deallocate.
    let (c, _) = q.run(sqe(0x00, 1, &[]), &[], false);
    assert_eq!(c.status, 0);
    let (c, _) = q.run(rw(0x08, 1, 8, 8, 0), &[], false);
    assert_eq!(c.status, 0);
    let (_, back) = q.run(rw(0x02, 1, 8, 8, 4096), &[], false);
    assert!(back.iter().all(|&b| b == 0));
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&16u32.to_le_bytes());
    range[8..16].copy_from_slice(&200u64.to_le_bytes());
    let (c, _) = q.run(sqe(0x09, 1, &[(10, 0), (11, 1 << 2)]), &range, false);
    assert_eq!(c.status, 0);
    // Past the end: LBA out of range; an unknown namespace; a length that
    // does not match the blocks.
    let (c, _) = q.run(rw(0x02, 1, 16 * 2048 - 1, 2, 1024), &[], false);
    assert_eq!(c.status & 0xFF, 0x80);
    let (c, _) = q.run(rw(0x02, 7, 0, 1, 512), &[], false);
    assert_eq!(c.status & 0xFF, 0x0B);
    let (c, _) = q.run(rw(0x02, 1, 0, 2, 512), &[], false);
    assert_eq!(c.status & 0xFF, 0x0F);
    // Many commands in flight on one queue, completed in any order.
    let blocks: Vec<Vec<u8>> = (0..32).map(|i| random(512, 100 + i)).collect();
    for (i, b) in blocks.iter().enumerate() {
        let cid = 1000 + i as u16;
        let mut s = rw(0x01, 1, 1000 + i as u64, 1, 512);
        s[1] = 0x40;
        s[2..4].copy_from_slice(&cid.to_le_bytes());
        s[39] = 0x01;
        q.send(&s, b);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 32 {
        let p = q.recv();
        assert_eq!(p.t, PduType::CapsuleResp);
        let c = Cqe::parse(&p.header[8..24]);
        assert_eq!(c.status, 0);
        assert!(seen.insert(c.cid));
    }
    for (i, b) in blocks.iter().enumerate() {
        let (_, back) = q.run(rw(0x02, 1, 1000 + i as u64, 1, 512), &[], false);
        assert!(&back == b, "block {i}");
    }
}

#[test]
fn a_host_moves_data_without_digests() {
    data_path(false, false);
}

#[test]
fn a_host_moves_data_with_header_and_data_digests() {
    data_path(true, true);
}

#[test]
fn discovery_lists_every_listener() {
    let dir = TempDir::new("nvmf-disc");
    let (a, port) = target(&dir, &[]);
    let (mut h, _) = admin(
        &port,
        "nqn.2014-08.org.nvmexpress.discovery",
        false,
        false,
        0,
    );
    let (_, id) = identify(&mut h, 1, 0);
    assert_eq!(id[111], 2, "CNTRLTYPE discovery");
    let log = |h: &mut Host, len: u32, off: u64| {
        let numd = len / 4 - 1;
        let mut s = sqe(
            0x02,
            0,
            &[
                (10, 0x70 | (numd << 16)),
                (12, off as u32),
                (13, (off >> 32) as u32),
            ],
        );
        s[32..36].copy_from_slice(&len.to_le_bytes());
        let (c, d) = h.run(s, &[], false);
        assert_eq!(c.status, 0);
        d
    };
    let head = log(&mut h, 1024, 0);
    let numrec = u64::from_le_bytes(head[8..16].try_into().unwrap());
    assert_eq!(numrec, 1);
    let entry = log(&mut h, 1024, 1024);
    assert_eq!((entry[0], entry[1], entry[2]), (3, 1, 2));
    assert_eq!(&entry[32..32 + port.len()], port.as_bytes());
    assert_eq!(&entry[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(&entry[512..521], b"127.0.0.1");
    // A second listener shows up too.
    let port2 = free_port();
    add_tcp_listener(&a, NQN, &port2, &[]);
    let head = log(&mut h, 1024, 0);
    assert_eq!(u64::from_le_bytes(head[8..16].try_into().unwrap()), 2);
    // A port for discovery alone: it discovers, and does not serve the
    // subsystem.
    let port3 = free_port();
    add_tcp_listener(&a, "discovery", &port3, &[]);
    let subs = a.json(&["nvmf_get_subsystems"]);
    assert_eq!(subs[0]["listen_addresses"][0]["trsvcid"], port3.as_str());
    let (mut d, _) = admin(
        &port3,
        "nqn.2014-08.org.nvmexpress.discovery",
        false,
        false,
        0,
    );
    let head = log(&mut d, 1024, 0);
    assert_eq!(u64::from_le_bytes(head[8..16].try_into().unwrap()), 2);
    let mut x = Host::connect(&port3, false, false);
    let (c, _) = x.run(
        connect_sqe(0, 31, 0),
        &connect_data(NQN, HOSTNQN, 0xFFFF),
        false,
    );
    assert_eq!((c.status, c.dw0), (0x4182, 0x0001_0100));
    a.ok(&[
        "nvmf_subsystem_remove_listener",
        "discovery",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port3,
    ]);
}

#[test]
fn connect_refusals_and_keep_alive() {
    let dir = TempDir::new("nvmf-refuse");
    let (a, port) = target(&dir, &[]);
    // Unknown subsystem: invalid parameters, data offset 256.
    let mut h = Host::connect(&port, false, false);
    let (c, _) = h.run(
        connect_sqe(0, 31, 0),
        &connect_data("nqn.2016-06.io.spdk:none", HOSTNQN, 0xFFFF),
        false,
    );
    assert_eq!((c.status, c.dw0), (0x4182, 0x0001_0100));
    // A host not on the list.
    a.ok(&["nvmf_create_subsystem", "nqn.2016-06.io.spdk:closed"]);
    add_tcp_listener(&a, "nqn.2016-06.io.spdk:closed", &port, &[]);
    let mut h = Host::connect(&port, false, false);
    let (c, _) = h.run(
        connect_sqe(0, 31, 0),
        &connect_data("nqn.2016-06.io.spdk:closed", HOSTNQN, 0xFFFF),
        false,
    );
    assert_eq!(c.status, 0x4184);
    // An I/O queue for a controller that does not exist.
    let mut h = Host::connect(&port, false, false);
    let (c, _) = h.run(
        connect_sqe(1, 31, 0),
        &connect_data(NQN, HOSTNQN, 4242),
        false,
    );
    assert_eq!((c.status, c.dw0), (0x4182, 0x0001_0010));
    // Keep-alive: 1 s without one tears the controller down.
    let (mut h, cntlid) = admin(&port, NQN, false, false, 1000);
    let ctrls = a.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls[0]["cntlid"], cntlid);
    assert_eq!(ctrls[0]["hostnqn"], HOSTNQN);
    let (c, _) = h.run(sqe(0x18, 0, &[]), &[], false);
    assert_eq!(c.status, 0);
    let start = Instant::now();
    let mut b = [0u8; 1];
    h.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = h.s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the target closes the connection");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let ctrls = a.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls, serde_json::json!([]));
}

#[test]
fn namespace_changes_raise_an_event() {
    let dir = TempDir::new("nvmf-aen");
    let (a, port) = target(&dir, &[]);
    let (mut h, _) = admin(&port, NQN, false, false, 0);
    let (c, _) = h.run(sqe(0x09, 0, &[(10, 0x0B), (11, 0x100)]), &[], false);
    assert_eq!(c.status, 0);
    // An AER, outstanding.
    let mut s = sqe(0x0C, 0, &[]);
    s[1] = 0x40;
    s[2..4].copy_from_slice(&777u16.to_le_bytes());
    s[39] = 0x5A;
    h.send(&s, &[]);
    a.ok(&["bdev_malloc_create", "-b", "M3", "8", "512"]);
    a.ok(&["nvmf_subsystem_add_ns", NQN, "M3", "-n", "3"]);
    let p = h.recv();
    let c = Cqe::parse(&p.header[8..24]);
    assert_eq!((c.cid, c.status, c.dw0), (777, 0, 0x0004_0002));
    // The changed list names it.
    let mut s = sqe(0x02, u32::MAX, &[(10, 0x04 | (1023 << 16))]);
    s[32..36].copy_from_slice(&4096u32.to_le_bytes());
    let (_, list) = h.run(s, &[], false);
    assert_eq!((u32_at(&list, 0), u32_at(&list, 4)), (3, 0));
}

/// Sends raw bytes and expects a C2HTermReq with `fes` (and `fei`), then
/// the connection closed.
fn expect_term(h: &mut Host, raw: &[u8], fes: u16, fei: Option<u32>) {
    h.s.write_all(raw).unwrap();
    let p = h.recv();
    assert_eq!(p.t, PduType::C2HTermReq);
    let (f, i) = pdu::parse_term_req(&p.header);
    assert_eq!(f, fes, "FES");
    if let Some(fei) = fei {
        assert_eq!(i, fei, "FEI");
    }
    let mut b = [0u8; 16];
    assert_eq!(
        h.s.read(&mut b).unwrap_or(0),
        0,
        "closed after the termination"
    );
}

#[test]
fn bad_pdus_end_the_connection_with_a_termination_request() {
    let dir = TempDir::new("nvmf-bad");
    let (_a, port) = target(&dir, &[]);
    // An unknown PDU type.
    let mut h = Host::connect(&port, false, false);
    expect_term(&mut h, &[0x42, 0, 24, 0, 24, 0, 0, 0], 1, Some(0));
    // A wrong header length for a command capsule.
    let mut h = Host::connect(&port, false, false);
    let mut raw = vec![0u8; 24];
    raw[..8].copy_from_slice(&[4, 0, 24, 0, 24, 0, 0, 0]);
    expect_term(&mut h, &raw, 1, Some(2));
    // A header digest that does not match.
    let mut h = Host::connect(&port, true, false);
    let mut b = [0u8; 80];
    let n = pdu::capsule_cmd(&mut b, &connect_sqe(0, 31, 0), 0, true, false);
    b[n - 1] ^= 0xFF;
    expect_term(&mut h, &b[..n], 3, None);
    // H2CData nobody asked for.
    let (mut h, _) = admin(&port, NQN, false, false, 0);
    let mut hb = [0u8; 32];
    let d = DataHeader {
        cccid: 1,
        ttag: 5,
        offset: 0,
        length: 512,
    };
    let n = pdu::data_pdu_header(&mut hb, PduType::H2CData, &d, FLAG_LAST_PDU, false, false);
    let mut raw = hb[..n].to_vec();
    raw.extend_from_slice(&[0u8; 512]);
    expect_term(&mut h, &raw, 1, None);
    // Data beyond what the R2T asked for.
    let (h0, cntlid) = admin(&port, NQN, false, false, 0);
    let mut q = io_queue(&port, cntlid, 1, false, false);
    let mut s = rw(0x01, 1, 0, 8, 4096);
    s[1] = 0x40;
    s[2..4].copy_from_slice(&9u16.to_le_bytes());
    s[39] = 0x5A;
    q.send(&s, &[]);
    let p = q.recv();
    assert_eq!(p.t, PduType::R2T);
    let r = DataHeader::parse(&p.header);
    let d = DataHeader {
        cccid: 9,
        ttag: r.ttag,
        offset: 0,
        length: 8192,
    };
    let n = pdu::data_pdu_header(&mut hb, PduType::H2CData, &d, FLAG_LAST_PDU, false, false);
    let mut raw = hb[..n].to_vec();
    raw.extend_from_slice(&[0u8; 8192]);
    expect_term(&mut q, &raw, 4, Some(16));
    drop(h0);
    // Nothing above stopped the target: a new host still connects.
    let _ = admin(&port, NQN, false, false, 0);
}

/// Mutated PDUs (bit flips, truncation, random lengths and types) sent to
/// a live target after a real ICReq and Connect: whatever each connection
/// gets (an answer, a termination request, a close), the target lives on
/// and serves the next host.
#[test]
fn mutated_pdus_never_bring_the_target_down() {
    let dir = TempDir::new("nvmf-fuzz");
    let (mut a, port) = target(&dir, &[]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut cases = 0;
    while Instant::now() < deadline {
        let (hd, dd) = (next() % 2 == 0, next() % 2 == 0);
        let (mut h, cntlid) = if next() % 3 == 0 {
            (Host::connect(&port, hd, dd), 0)
        } else {
            admin(&port, NQN, hd, dd, 0)
        };
        let mut pdus: Vec<Vec<u8>> = Vec::new();
        let mut b = [0u8; 80];
        let mut s = rw(0x01, 1, next() % 64, 8, 4096);
        s[1] = 0x40;
        s[39] = if next() % 2 == 0 { 0x01 } else { 0x5A };
        let n = pdu::capsule_cmd(&mut b, &s, 512, hd, dd);
        let mut p = b[..n].to_vec();
        p.extend(std::iter::repeat_n(0x11, 512 + if dd { 4 } else { 0 }));
        pdus.push(p);
        let n = pdu::capsule_cmd(&mut b, &connect_sqe(1, 31, 0), 1024, hd, dd);
        let mut p = b[..n].to_vec();
        p.extend(connect_data(NQN, HOSTNQN, cntlid));
        if dd {
            p.extend([0u8; 4]);
        }
        pdus.push(p);
        let d = DataHeader {
            cccid: 1,
            ttag: (next() % 4) as u16,
            offset: 0,
            length: 512,
        };
        let mut hb = [0u8; 32];
        let n = pdu::data_pdu_header(&mut hb, PduType::H2CData, &d, FLAG_LAST_PDU, hd, dd);
        let mut p = hb[..n].to_vec();
        p.extend(std::iter::repeat_n(0x22, 512 + if dd { 4 } else { 0 }));
        pdus.push(p);
        let mut p = pdus[(next() % pdus.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            if p.len() < 8 {
                p.resize(8, 0);
            }
            let len = p.len() as u64;
            match next() % 5 {
                0 => {
                    let i = (next() % len) as usize;
                    p[i] ^= 1 << (next() % 8);
                }
                1 => p.truncate((next() % len) as usize),
                2 => {
                    let i = (next() % 8) as usize;
                    p[i] = next() as u8;
                }
                3 => p.extend((0..next() % 64).map(|_| next() as u8)),
                _ => {
                    let plen = (next() % 300_000) as u32;
                    p[4..8].copy_from_slice(&plen.to_le_bytes());
                }
            }
        }
        h.s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = h.s.write_all(&p);
        let mut sink = [0u8; 4096];
        while matches!(h.s.read(&mut sink), Ok(n) if n > 0) {}
        cases += 1;
    }
    assert!(a.alive(), "the target died (seed {seed})\n{}", a.log_text());
    // A host still gets served.
    let (mut h, _) = admin(&port, NQN, false, false, 0);
    let (c, _) = identify(&mut h, 1, 0);
    assert_eq!(c.status, 0, "seed {seed}");
    println!("{cases} mutated PDUs (seed {seed})");
}
