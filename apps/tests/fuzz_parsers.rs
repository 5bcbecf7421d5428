//! Stable-Rust fuzzing of the parsers that face the outside, run by
//! `cargo test`: a seeded mutational loop (bit flips, byte insertions and
//! deletions, splices, JSON tokens) over seed inputs, bounded in count and
//! time, for the JSON-RPC parser and framer, the NBD request, option
//! and info parsers, the NVMe/TCP PDU parser (common header, layout,
//! ICReq, data headers), and the blob store's on-disk metadata (super block,
//! metadata pages and their descriptors, masks, a scanned metadata
//! region: corrupt metadata is an error naming the page, never a panic). Each case checks "no panic" and the parsers' own
//! invariants (round trips, frames conserving bytes, plans within bounds).
//!
//! The seed is printed on failure; `APPS_FUZZ_SEED=N` replays a run and
//! `APPS_FUZZ_SECS=S` makes it longer. The coverage-guided libFuzzer
//! targets for the same functions are in `apps/fuzz/` (nightly only).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use apps::jsonrpc::{Frame, Framer, Incoming, parse_request};
use apps::nbd::proto;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn seed() -> u64 {
    std::env::var("APPS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("APPS_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    )
}

const TOKENS: [&[u8]; 14] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"null",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\"jsonrpc\":\"2.0\"",
    b"\xff",
];

fn mutate(r: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + r.below(4) {
        let len = input.len();
        match r.below(7) {
            0 if len > 0 => {
                let i = r.below(len);
                input[i] ^= 1 << r.below(8);
            }
            1 => {
                let i = r.below(len + 1);
                input.insert(i, r.next() as u8);
            }
            2 if len > 0 => {
                let i = r.below(len);
                let n = 1 + r.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 => {
                let t = TOKENS[r.below(TOKENS.len())];
                let i = r.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => input.truncate(r.below(len)),
            5 => {
                let other = &corpus[r.below(corpus.len())];
                if !other.is_empty() {
                    let a = r.below(other.len());
                    let b = a + r.below(other.len() - a + 1);
                    let i = r.below(len + 1);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ => {
                // Deep nesting.
                let n = r.below(300);
                let mut v = vec![b'['; n];
                v.extend(std::iter::repeat_n(b']', r.below(n + 1)));
                let i = r.below(len + 1);
                input.splice(i..i, v);
            }
        }
    }
}

/// Runs `check` on mutated inputs until the budget is spent; on a panic,
/// reports the seed, the case and the input.
fn fuzz(name: &str, corpus: Vec<Vec<u8>>, check: impl Fn(&[u8], &mut Rng)) {
    let s = seed();
    let mut r = Rng(s);
    let deadline = Instant::now() + budget();
    let mut cases = 0u64;
    for c in &corpus {
        check(c, &mut r);
    }
    while Instant::now() < deadline && cases < 2_000_000 {
        let mut input = corpus[r.below(corpus.len())].clone();
        mutate(&mut r, &mut input, &corpus);
        let mut r2 = Rng(r.next() | 1);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&input, &mut r2))) {
            eprintln!(
                "{name}: case {cases} failed (APPS_FUZZ_SEED={s}); input ({} bytes): {:?}",
                input.len(),
                String::from_utf8_lossy(&input)
            );
            std::panic::resume_unwind(p);
        }
        cases += 1;
    }
    eprintln!("{name}: {cases} cases, seed {s}");
}

fn json_corpus() -> Vec<Vec<u8>> {
    [
        r#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#,
        r#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"name":"M0","num_blocks":16384,"block_size":512},"id":"a"}"#,
        r#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},{"jsonrpc":"2.0","method":"x"}]"#,
        r#"{"jsonrpc":"2.0","method":"m","params":["a\"}\\",1.5e3,null,true,{"k":[{}]}],"id":null}"#,
        "  {\"jsonrpc\":\"2.0\",\"method\":\"\\u00e9t\\u00e9\",\"id\":-7}\n",
        "[]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn fuzz_jsonrpc_parser_and_framer() {
    fuzz("jsonrpc", json_corpus(), |input, r| {
        let parsed = parse_request(input);
        if let Ok(Incoming::Batch(calls)) = &parsed {
            assert!(!calls.is_empty());
        }
        // The framer, fed in random chunks, never loses or invents bytes
        // beyond whitespace, and a single valid value comes out whole.
        let mut f = Framer::new(1 << 20);
        let mut out: Vec<u8> = Vec::new();
        let mut frames = 0;
        let mut i = 0;
        while i < input.len() {
            let n = 1 + r.below(input.len() - i);
            f.push(&input[i..i + n]);
            i += n;
            loop {
                match f.next_frame() {
                    Frame::Value(v) => {
                        frames += 1;
                        let _ = parse_request(&v);
                        out.extend_from_slice(&v);
                    }
                    Frame::Incomplete => break,
                    Frame::TooLarge => panic!("1 MiB limit on a small input"),
                }
            }
        }
        let strip = |b: &[u8]| -> Vec<u8> {
            b.iter()
                .copied()
                .filter(|c| !c.is_ascii_whitespace())
                .collect()
        };
        let rest = input.len() - out.len();
        assert!(f.buffered() <= rest, "framer invented bytes");
        // JSON's whitespace (RFC 8259): space, tab, LF, CR — not the form
        // feed and vertical tab that `trim_ascii` would also take.
        let json_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
        let start = input
            .iter()
            .position(|c| !json_ws(c))
            .unwrap_or(input.len());
        let end = input
            .iter()
            .rposition(|c| !json_ws(c))
            .map_or(start, |e| e + 1);
        let trimmed = &input[start..end];
        let single = matches!(trimmed.first(), Some(b'{' | b'['))
            && serde_json::from_slice::<serde_json::Value>(trimmed).is_ok();
        if single {
            assert_eq!(frames, 1, "a valid value is one frame");
            assert_eq!(strip(&out), strip(trimmed));
            assert!(parsed.is_ok());
        }
    });
}

fn nbd_corpus() -> Vec<Vec<u8>> {
    let req = |command, flags, offset, length| {
        proto::encode_request(&proto::Request {
            flags,
            command,
            handle: 0x0102_0304_0506_0708,
            offset,
            length,
        })
        .to_vec()
    };
    let mut info = 2u32.to_be_bytes().to_vec();
    info.extend_from_slice(b"M0");
    info.extend_from_slice(&2u16.to_be_bytes());
    info.extend_from_slice(&[0, 3, 0, 1]);
    let mut opt = proto::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&proto::OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(info.len() as u32).to_be_bytes());
    vec![
        req(proto::Command::Read, 0, 0, 4096),
        req(proto::Command::Write, proto::CMD_FLAG_FUA, 1 << 20, 512),
        req(proto::Command::WriteZeroes, 2, u64::MAX - 511, 512),
        req(proto::Command::Trim, 0, 4096, u32::MAX),
        req(proto::Command::Flush, 0, 0, 0),
        req(proto::Command::Disc, 0, 0, 0),
        opt,
        info,
    ]
}

#[test]
fn fuzz_nbd_parsers() {
    fuzz("nbd", nbd_corpus(), |input, r| {
        let mut b = [0u8; 28];
        let n = input.len().min(28);
        b[..n].copy_from_slice(&input[..n]);
        if let Ok(req) = proto::parse_request(&b) {
            assert_eq!(proto::encode_request(&req), b, "round trip");
            let bs = 512u32 << r.below(4);
            let size = (r.next() % (1 << 40)) / bs as u64 * bs as u64;
            match proto::plan(&req, size, bs, r.below(2) == 0, r.below(2) == 0) {
                proto::Plan::Io {
                    offset_blocks,
                    num_blocks,
                } => {
                    let end = (offset_blocks + num_blocks) * bs as u64;
                    assert!(end <= size, "plan beyond the end");
                    assert_eq!(
                        num_blocks * bs as u64,
                        req.length as u64 * (req.command != proto::Command::Flush) as u64
                    );
                }
                proto::Plan::Fail(e) => assert!(e != 0),
                proto::Plan::Close | proto::Plan::Disconnect => {}
            }
        }
        let mut h = [0u8; 16];
        let n = input.len().min(16);
        h[..n].copy_from_slice(&input[..n]);
        if let Ok(o) = proto::parse_option_header(&h) {
            assert!(o.length <= proto::MAX_OPTION_DATA);
        }
        if let Some((name, items)) = proto::parse_info_request(input) {
            assert_eq!(4 + name.len() + 2 + 2 * items.len(), input.len());
        }
    });
}

/// NVMe/TCP PDUs: an ICReq, command capsules with and without data and
/// digests, H2CData, a termination request.
fn pdu_corpus() -> Vec<Vec<u8>> {
    use nvme_driver::tcp::pdu::{self, DataHeader, IcReq, PduType};
    let mut v = vec![
        IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: true,
            maxr2t: 0,
        }
        .encode()
        .to_vec(),
    ];
    for (len, hd, dd) in [(0, false, false), (512, true, true), (1024, false, true)] {
        let mut b = [0u8; 80];
        let n = pdu::capsule_cmd(&mut b, &[0x5Au8; 64], len, hd, dd);
        let mut p = b[..n].to_vec();
        p.extend(std::iter::repeat_n(
            0xA5,
            len + if dd && len > 0 { 4 } else { 0 },
        ));
        v.push(p);
    }
    let mut b = [0u8; 32];
    let h = DataHeader {
        cccid: 3,
        ttag: 1,
        offset: 4096,
        length: 256,
    };
    let n = pdu::data_pdu_header(
        &mut b,
        PduType::H2CData,
        &h,
        pdu::FLAG_LAST_PDU,
        true,
        false,
    );
    let mut p = b[..n].to_vec();
    p.extend_from_slice(&[7u8; 256]);
    v.push(p);
    let mut t = [0u8; 160];
    let n = pdu::term_req(
        &mut t,
        PduType::H2CTermReq,
        pdu::Fes::SequenceError,
        0,
        &[1u8; 40],
    );
    v.push(t[..n].to_vec());
    v
}

#[test]
fn fuzz_nvme_tcp_pdu_parsers() {
    use nvme_driver::tcp::pdu::{self, CommonHeader, DataHeader, IcReq, Layout, Limits};
    fuzz("nvme-tcp", pdu_corpus(), |input, r| {
        let mut ch = [0u8; 8];
        let n = input.len().min(8);
        ch[..n].copy_from_slice(&input[..n]);
        let c = CommonHeader::parse(&ch);
        let lim = Limits {
            hdgst: r.below(2) == 0,
            ddgst: r.below(2) == 0,
            pda: r.below(4) as u8,
            max_data: 1 << r.below(18),
            controller: r.below(4) != 0,
        };
        if let Ok(l) = Layout::of(&c, &lim) {
            // What the layout says fits in what PLEN says.
            let head = l.hlen + if l.hdgst { 4 } else { 0 };
            assert_eq!(l.hlen, l.pdu_type.hlen());
            assert!(head <= l.total);
            assert!(l.data_len <= lim.max_data as usize || l.pdu_type.hlen() == 24);
            if l.data_len > 0 {
                assert!(l.data_off >= head);
                assert_eq!(
                    l.data_off + l.data_len + if l.ddgst { 4 } else { 0 },
                    l.total
                );
                assert_eq!(l.padding(), l.data_off - head);
            } else {
                assert_eq!(l.total, head);
            }
            assert_eq!(l.rest_of_header() + 8, head);
            if input.len() >= head {
                let _ = pdu::check_header_digest(input, l.hlen);
            }
        } else if let Err(e) = Layout::of(&c, &lim) {
            // Every refusal maps to a termination request.
            let _ = (e.fes(), e.fei(), e.to_string());
        }
        if input.len() >= 128 {
            let mut b = [0u8; 128];
            b.copy_from_slice(&input[..128]);
            if let Ok(req) = IcReq::parse(&b) {
                let back = IcReq::parse(&req.encode()).unwrap();
                assert_eq!(back, req);
            }
        }
        if input.len() >= 24 {
            let d = DataHeader::parse(input);
            let mut out = [0u8; 32];
            let n = pdu::r2t(&mut out, &d, false);
            assert_eq!(DataHeader::parse(&out[..n]), d);
        }
    });
}

/// Pages of SPDK's lvstore fixture: its super block, masks and every
/// metadata page in use.
fn blob_corpus() -> Vec<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bdev/tests/fixtures/blob/spdk-v24.09-lvs0/store.img.gz");
    let o = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&p)
        .output()
        .expect("gzip");
    assert!(o.status.success(), "gzip -dc {}", p.display());
    let img = o.stdout;
    let sb = bdev::blob::super_block::SuperBlock::parse(&img).unwrap();
    let mut pages: Vec<Vec<u8>> = (0..sb.md.end() as usize)
        .map(|p| img[p * 4096..(p + 1) * 4096].to_vec())
        .filter(|pg| pg.iter().any(|&b| b != 0))
        .collect();
    pages.push(vec![0; 4096]);
    pages
}

#[test]
fn fuzz_blob_metadata_parsers() {
    use bdev::blob::mask::{Mask, MaskType};
    use bdev::blob::md_page::MdPage;
    use bdev::blob::metadata::Metadata;
    use bdev::blob::super_block::{Region, SuperBlock};
    fuzz("blob", blob_corpus(), |input, r| {
        let mut page = input.to_vec();
        page.resize(4096, 0);
        // Half the cases with the CRC made right, to reach the fields.
        if r.below(2) == 0 {
            let crc = bdev::crc32c::checksum(&page[..4092]);
            page[4092..].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(sb) = SuperBlock::parse(&page) {
            assert_eq!(SuperBlock::parse(&sb.encode()).unwrap(), sb);
        }
        let n = r.below(1000) as u32;
        match MdPage::parse(n, &page) {
            Ok(p) => {
                if let Ok(b) = p.encode() {
                    assert_eq!(MdPage::parse(n, &b).unwrap(), p);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("metadata page {n}")), "{msg}");
            }
        }
        let _ = Mask::parse(MaskType::UsedClusters, &page);
        let _ = Mask::parse(MaskType::UsedPages, input);
        // A metadata region of eight pages, each the input with its id's
        // low byte and the next pointer varied.
        let sb = SuperBlock {
            version: 3,
            clean: false,
            super_blob: u64::MAX,
            cluster_size: 1 << 20,
            used_page_mask: Region { start: 1, len: 1 },
            used_cluster_mask: Region { start: 2, len: 1 },
            md: Region { start: 4, len: 8 },
            bstype: [0; 16],
            used_blobid_mask: Region { start: 3, len: 1 },
            size: 64 << 20,
            io_unit_size: 512,
        };
        let twist = r.next();
        let mut read = |p: u32| {
            let mut pg = page.clone();
            pg[0] = p as u8;
            if twist & (1 << p) != 0 {
                pg[4088..4092].copy_from_slice(&((twist >> 16) as u32 % 9).to_le_bytes());
            }
            let crc = bdev::crc32c::checksum(&pg[..4092]);
            pg[4092..].copy_from_slice(&crc.to_le_bytes());
            Ok(pg)
        };
        match Metadata::scan(&sb, &mut read) {
            Ok((m, _)) => {
                let _ = m.check(&sb, None);
                let _ = m.masks(&sb);
            }
            Err(e) => assert!(e.to_string().contains("page"), "{e}"),
        }
    });
}
