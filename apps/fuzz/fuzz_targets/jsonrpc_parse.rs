//! libFuzzer target: the JSON-RPC parser and the stream framer never panic,
//! and the framer hands over every non-whitespace byte it was given.
#![no_main]

use apps::jsonrpc::{Frame, Framer, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let mut f = Framer::new(1 << 20);
    let mut taken = 0;
    for chunk in data.chunks(7) {
        f.push(chunk);
        while let Frame::Value(v) = f.next_frame() {
            let _ = parse_request(&v);
            taken += v.len();
        }
    }
    assert!(taken + f.buffered() <= data.len());
});
