//! libFuzzer target: the NBD request, option and info parsers never panic;
//! a parsed request encodes back to the same bytes and plans within the
//! device.
#![no_main]

use apps::nbd::proto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; 28];
    let n = data.len().min(28);
    b[..n].copy_from_slice(&data[..n]);
    if let Ok(r) = proto::parse_request(&b) {
        assert_eq!(proto::encode_request(&r), b);
        if let proto::Plan::Io {
            offset_blocks,
            num_blocks,
        } = proto::plan(&r, 1 << 30, 512, true, false)
        {
            assert!((offset_blocks + num_blocks) * 512 <= 1 << 30);
        }
    }
    let mut h = [0u8; 16];
    let n = data.len().min(16);
    h[..n].copy_from_slice(&data[..n]);
    let _ = proto::parse_option_header(&h);
    let _ = proto::parse_info_request(data);
});
