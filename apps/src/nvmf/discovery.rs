//! The discovery log page (log id 0x70) a discovery controller returns: a
//! 1024-byte header (generation counter, record count, format) and one
//! 1024-byte entry per listener of each subsystem the host may reach,
//! laid out as libnvme reads it. Every listener also answers for the
//! discovery subsystem.

use std::sync::atomic::Ordering;

use super::cmd::{put_cstr, put16, put64};
use super::{GENERATION, target};

/// Transport type code of TCP.
const TRTYPE_TCP: u8 = 3;
/// Subsystem type: an NVM subsystem.
const SUBTYPE_NVME: u8 = 2;

/// The whole page for host `hostnqn`.
pub fn log_page(hostnqn: &str) -> Vec<u8> {
    let t = target();
    let mut entries = Vec::new();
    for s in t.subsystems.iter().filter(|s| s.host_allowed(hostnqn)) {
        for (portid, l) in s.listeners.iter().enumerate() {
            let mut e = vec![0u8; 1024];
            e[0] = TRTYPE_TCP;
            e[1] = l.addr.adrfam.code();
            e[2] = SUBTYPE_NVME;
            e[3] = 0; // TREQ: secure channel not specified
            put16(&mut e, 4, portid as u16);
            put16(&mut e, 6, 0xFFFF); // dynamic controller model
            put16(&mut e, 8, 32); // ASQSZ
            put_cstr(&mut e[32..64], &l.addr.trsvcid);
            put_cstr(&mut e[256..512], &s.nqn);
            put_cstr(&mut e[512..768], &l.addr.traddr);
            // TSAS: security type none.
            entries.push(e);
        }
    }
    let mut b = vec![0u8; 1024];
    put64(&mut b, 0, GENERATION.load(Ordering::Acquire));
    put64(&mut b, 8, entries.len() as u64);
    for e in entries {
        b.extend_from_slice(&e);
    }
    b
}
