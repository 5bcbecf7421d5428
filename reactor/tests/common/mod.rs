//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use reactor::{CpuSet, Error, Runtime};

/// Two reactors on cores 0 and 1: pinned when this process may run on both
/// (as on CI's 2-core machine), unpinned otherwise.
pub fn two_cores(ring: usize) -> Runtime {
    let b = Runtime::builder(CpuSet::parse("0x3").unwrap()).ring_capacity(ring);
    match b.clone().start() {
        Ok(rt) => rt,
        Err(Error::CoreUnavailable { .. }) => b.pin(false).start().expect("start unpinned"),
        Err(e) => panic!("start two reactors: {e}"),
    }
}

/// Waits (sleeping) until `cond` holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}
