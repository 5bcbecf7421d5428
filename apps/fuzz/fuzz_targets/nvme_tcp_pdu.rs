//! libFuzzer target: NVMe/TCP common headers and PDU headers never panic
//! the parser; what a layout accepts adds up to its PLEN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_driver::tcp::pdu::{CommonHeader, IcReq, Layout, Limits};

fuzz_target!(|data: &[u8]| {
    let mut ch = [0u8; 8];
    let n = data.len().min(8);
    ch[..n].copy_from_slice(&data[..n]);
    let c = CommonHeader::parse(&ch);
    let flags = data.get(8).copied().unwrap_or(0);
    let lim = Limits {
        hdgst: flags & 1 != 0,
        ddgst: flags & 2 != 0,
        pda: (flags >> 2) & 3,
        max_data: 1 << ((flags >> 4) & 15),
        controller: flags & 0x80 == 0,
    };
    if let Ok(l) = Layout::of(&c, &lim) {
        let head = l.hlen + if l.hdgst { 4 } else { 0 };
        assert!(head <= l.total);
        if l.data_len > 0 {
            assert_eq!(l.data_off + l.data_len + if l.ddgst { 4 } else { 0 }, l.total);
        }
    }
    if data.len() >= 128 {
        let mut b = [0u8; 128];
        b.copy_from_slice(&data[..128]);
        let _ = IcReq::parse(&b);
    }
});
