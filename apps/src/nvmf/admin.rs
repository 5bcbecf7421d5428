//! Admin commands of a connected controller: Identify (controller with
//! the fabrics fields, namespace, active list, descriptors), Get Log Page
//! (error, SMART, firmware, changed namespaces, command effects, ANA, and
//! discovery on a discovery controller), Get/Set Features, Keep Alive,
//! Abort. Asynchronous Event Requests are held by the connection
//! (`conn.rs`) and answered from the controller's events.

use std::sync::atomic::Ordering;

use super::cmd::{Reply, Sqe, Status, put_cstr, put_text, put16, put32, put64};
use super::ctrlr::Controller;
use super::subsystem::Subsystem;
use super::transport::TcpOpts;
use super::{discovery, target};

/// Admin opcodes.
pub mod opc {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVMe version reported (1.3).
pub const VERSION: u32 = 0x0001_0300;
/// Asynchronous event requests outstanding at most (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Firmware revision in Identify.
const FIRMWARE: &str = env!("CARGO_PKG_VERSION");

/// Runs admin command `sqe` (not an AER) of `ctrl` (no admin command
/// served here takes data from the host).
pub fn execute(ctrl: &Controller, sqe: &Sqe) -> Reply {
    match sqe.opcode() {
        opc::IDENTIFY => identify(ctrl, sqe),
        opc::GET_LOG_PAGE => get_log_page(ctrl, sqe),
        opc::SET_FEATURES => set_features(ctrl, sqe),
        opc::GET_FEATURES => get_features(ctrl, sqe),
        opc::KEEP_ALIVE => {
            ctrl.last_keep_alive
                .store(reactor::clock_ns(), Ordering::Release);
            Reply::ok(0)
        }
        // Bit 0 of dword 0 set: the command was not aborted (every command
        // completes on its own; none waits long enough to abort).
        opc::ABORT => Reply::ok(1),
        _ => Reply::err(Status::INVALID_OPCODE),
    }
}

fn transfer_len(sqe: &Sqe) -> usize {
    sqe.sgl_len() as usize
}

/// Identify Controller for `ctrl`, of subsystem `s` (None: discovery).
pub fn identify_controller(ctrl: &Controller, s: Option<&Subsystem>, t: &TcpOpts) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    put_text(&mut b[4..24], s.map_or("", |s| s.serial.as_str()));
    put_text(
        &mut b[24..64],
        s.map_or("SPDK-compatible discovery", |s| s.model.as_str()),
    );
    put_text(&mut b[64..72], FIRMWARE);
    b[72] = 6; // RAB
    let ana = s.is_some_and(|s| s.ana_reporting);
    b[76] = 0x02 | if ana { 0x08 } else { 0 }; // CMIC: multi-controller, ANA
    b[77] = (t.max_io_size / 4096).trailing_zeros() as u8; // MDTS
    put16(&mut b, 78, ctrl.cntlid);
    put32(&mut b, 80, VERSION);
    // OAES: namespace attribute notices, ANA change notices.
    put32(
        &mut b,
        92,
        if s.is_some() {
            0x100 | if ana { 0x800 } else { 0 }
        } else {
            0
        },
    );
    b[111] = if s.is_some() { 1 } else { 2 }; // CNTRLTYPE
    b[258] = 3; // ACL
    b[259] = (MAX_AERS - 1) as u8; // AERL
    b[260] = 0x01; // FRMW: slot 1 read-only
    b[261] = 0x06; // LPA: command effects log, extended data
    b[262] = 0; // ELPE
    put16(&mut b, 266, 0x0157); // WCTEMP
    put16(&mut b, 268, 0x0175); // CCTEMP
    put16(&mut b, 320, 10); // KAS: 1 s granularity
    if let Some(s) = s.filter(|s| s.ana_reporting) {
        b[342] = 10; // ANATT
        b[343] = 0x47; // ANACAP: optimized, non-optimized, inaccessible; group ids non-zero
        put32(&mut b, 344, s.max_namespaces); // ANAGRPMAX
        put32(&mut b, 348, s.max_namespaces); // NANAGRPID
    }
    b[512] = 0x66; // SQES
    b[513] = 0x44; // CQES
    put16(&mut b, 514, t.max_queue_depth); // MAXCMD
    put32(&mut b, 516, s.map_or(0, |s| s.max_namespaces)); // NN
    // ONCS: compare, dataset management, write zeroes.
    put16(
        &mut b,
        520,
        if s.is_some() {
            0x0001 | 0x0004 | 0x0008
        } else {
            0
        },
    );
    b[525] = u8::from(s.is_some()); // VWC present
    put32(&mut b, 536, 0x0010_0001); // SGLS: supported, offsets in-capsule
    put32(
        &mut b,
        540,
        if ana {
            s.map_or(0, |s| s.max_namespaces)
        } else {
            0
        },
    ); // MNAN
    put_cstr(
        &mut b[768..1024],
        s.map_or(super::nqn::DISCOVERY_NQN, |s| s.nqn.as_str()),
    );
    // Fabrics: command capsule size (16-byte units: SQE + in-capsule
    // data), response capsule size, ICDOFF 0, dynamic model, one SGL
    // descriptor.
    let icd = if s.is_some() {
        t.in_capsule_data_size
    } else {
        0
    };
    put32(&mut b, 1792, (64 + icd) / 16);
    put32(&mut b, 1796, 1);
    b[1803] = 1; // MSDBD
    b
}

/// Identify Namespace for `ns` of `s`.
fn identify_namespace(s: &Subsystem, nsid: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let Some(ns) = s.namespaces.get(&nsid) else {
        // An inactive namespace id: all zeros.
        return b;
    };
    let bdev = ns.desc.bdev();
    let blocks = bdev.num_blocks();
    put64(&mut b, 0, blocks); // NSZE
    put64(&mut b, 8, blocks); // NCAP
    put64(&mut b, 16, blocks); // NUSE
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS
    b[30] = 1; // NMIC: may be shared
    if s.ana_reporting {
        put32(&mut b, 92, ns.anagrpid);
    }
    b[104..120].copy_from_slice(&ns.nguid);
    b[120..128].copy_from_slice(&ns.eui64);
    // LBAF0: no metadata, the block size.
    b[130] = bdev.block_size().trailing_zeros() as u8;
    b
}

fn identify(ctrl: &Controller, sqe: &Sqe) -> Reply {
    let cns = sqe.dw(10) as u8;
    let nsid = sqe.nsid();
    let t = target();
    let opts = t.transport.clone().unwrap_or_default();
    let s = t.subsystems.iter().find(|s| s.nqn == ctrl.subnqn);
    if !ctrl.discovery && s.is_none() {
        return Reply::err(Status::INTERNAL);
    }
    let mut data = match (cns, s) {
        (0x01, _) => identify_controller(ctrl, s, &opts),
        (0x00, Some(s)) => {
            if nsid == 0 || (nsid > s.max_namespaces && nsid != u32::MAX) {
                return Reply::err(Status::INVALID_NS);
            }
            identify_namespace(s, nsid)
        }
        (0x02, Some(s)) => {
            if nsid >= 0xFFFF_FFFE {
                return Reply::err(Status::INVALID_NS);
            }
            let mut b = vec![0u8; 4096];
            for (i, id) in s
                .namespaces
                .keys()
                .filter(|&&id| id > nsid)
                .take(1024)
                .enumerate()
            {
                put32(&mut b, i * 4, *id);
            }
            b
        }
        (0x03, Some(s)) => {
            let Some(ns) = s.namespaces.get(&nsid) else {
                return Reply::err(Status::INVALID_NS);
            };
            let mut b = vec![0u8; 4096];
            let mut at = 0;
            let mut desc = |ty: u8, id: &[u8]| {
                b[at] = ty;
                b[at + 1] = id.len() as u8;
                b[at + 4..at + 4 + id.len()].copy_from_slice(id);
                at += 4 + id.len();
            };
            if ns.eui64 != [0; 8] {
                desc(1, &ns.eui64);
            }
            desc(2, &ns.nguid);
            desc(3, &ns.uuid);
            b
        }
        // The NVM command set's controller data: no limits reported.
        (0x06, Some(_)) if sqe.dw(11) >> 24 == 0 => vec![0u8; 4096],
        _ => return Reply::err(Status::INVALID_FIELD),
    };
    data.truncate(transfer_len(sqe).min(4096));
    Reply::data(data)
}

fn get_log_page(ctrl: &Controller, sqe: &Sqe) -> Reply {
    let lid = sqe.dw(10) as u8;
    let lsp = (sqe.dw(10) >> 8) & 0x7F;
    let rae = sqe.dw(10) & (1 << 15) != 0;
    let numd = ((sqe.dw(10) >> 16) | ((sqe.dw(11) & 0xFFFF) << 16)) as u64 + 1;
    let len = (numd * 4) as usize;
    let offset = u64::from(sqe.dw(12)) | (u64::from(sqe.dw(13)) << 32);
    if len > transfer_len(sqe) || offset % 4 != 0 {
        return Reply::err(Status::INVALID_FIELD);
    }
    let page: Vec<u8> = match lid {
        // Error information: no errors recorded.
        0x01 => vec![0u8; 64],
        0x02 => {
            let mut b = vec![0u8; 512];
            put16(&mut b, 1, 0x0141); // composite temperature, 321 K
            b[3] = 100; // available spare
            b[4] = 10; // threshold
            b
        }
        0x03 => {
            let mut b = vec![0u8; 512];
            b[0] = 1; // active slot 1
            put_text(&mut b[8..16], FIRMWARE);
            b
        }
        0x04 if !ctrl.discovery => {
            let mut e = ctrl.events();
            let mut b = vec![0u8; 4096];
            if e.changed_ns.len() > 1024 {
                put32(&mut b, 0, u32::MAX);
            } else {
                for (i, id) in e.changed_ns.iter().enumerate() {
                    put32(&mut b, i * 4, *id);
                }
            }
            if !rae {
                e.changed_ns.clear();
                e.ns_masked = false;
            }
            b
        }
        0x05 if !ctrl.discovery => effects_log(),
        0x0C if !ctrl.discovery => {
            let t = target();
            let Some(s) = t.subsystems.iter().find(|s| s.nqn == ctrl.subnqn) else {
                return Reply::err(Status::INTERNAL);
            };
            if !s.ana_reporting {
                return Reply::err(Status::INVALID_LOG_PAGE);
            }
            let mut e = ctrl.events();
            let b = ana_log(s, ctrl, e.ana_change_count, lsp & 1 != 0);
            if !rae {
                e.ana_masked = false;
            }
            b
        }
        0x70 if ctrl.discovery => discovery::log_page(&ctrl.hostnqn),
        _ => return Reply::err(Status::INVALID_LOG_PAGE),
    };
    let mut out = vec![0u8; len];
    if (offset as usize) < page.len() && offset <= usize::MAX as u64 {
        let from = offset as usize;
        let n = (page.len() - from).min(len);
        out[..n].copy_from_slice(&page[from..from + n]);
    } else if offset > page.len() as u64 {
        return Reply::err(Status::INVALID_FIELD);
    }
    Reply::data(out)
}

fn effects_log() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    // CSUPP (bit 0); LBCC (bit 1) for commands that change blocks.
    for op in [0x02u8, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18] {
        put32(&mut b, usize::from(op) * 4, 1);
    }
    for (op, e) in [
        (0x00u8, 1u32),
        (0x01, 3),
        (0x02, 1),
        (0x05, 1),
        (0x08, 3),
        (0x09, 3),
    ] {
        put32(&mut b, 1024 + usize::from(op) * 4, e);
    }
    b
}

/// The ANA log page: one descriptor per group with namespaces.
fn ana_log(s: &Subsystem, ctrl: &Controller, change_count: u64, groups_only: bool) -> Vec<u8> {
    let mut groups: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for ns in s.namespaces.values() {
        groups.entry(ns.anagrpid).or_default().push(ns.nsid);
    }
    let mut b = vec![0u8; 16];
    put64(&mut b, 0, change_count);
    put16(&mut b, 8, groups.len() as u16);
    for (g, list) in &groups {
        let mut d = vec![0u8; 32];
        put32(&mut d, 0, *g);
        put32(&mut d, 4, if groups_only { 0 } else { list.len() as u32 });
        put64(&mut d, 8, change_count);
        d[16] = s.ana_state(&ctrl.listen, *g).code();
        if !groups_only {
            for id in list {
                d.extend_from_slice(&id.to_le_bytes());
            }
        }
        b.extend_from_slice(&d);
    }
    b
}

/// Feature ids.
mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER: u8 = 0x02;
    pub const TEMPERATURE: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const WRITE_CACHE: u8 = 0x06;
    pub const NUM_QUEUES: u8 = 0x07;
    pub const IRQ_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT: u8 = 0x0B;
    pub const KEEP_ALIVE: u8 = 0x0F;
    pub const HOST_ID: u8 = 0x81;
}

fn set_features(ctrl: &Controller, sqe: &Sqe) -> Reply {
    let f = sqe.dw(10) as u8;
    let v = sqe.dw(11);
    match f {
        fid::NUM_QUEUES if !ctrl.discovery => {
            let max = target()
                .transport
                .as_ref()
                .map_or(127, |t| t.max_io_qpairs_per_ctrlr);
            if v & 0xFFFF == 0xFFFF || v >> 16 == 0xFFFF {
                return Reply::err(Status::INVALID_FIELD);
            }
            // Once granted, the count stays (queues may exist).
            if ctrl.qpairs().iter().any(|q| q.qid > 0) {
                return Reply::err(Status::SEQUENCE);
            }
            let want = ((v & 0xFFFF).min(v >> 16) + 1).min(u32::from(max)) as u16;
            ctrl.io_queues.store(want, Ordering::Release);
            let g = u32::from(want - 1);
            Reply::ok(g | (g << 16))
        }
        fid::ASYNC_EVENT => {
            ctrl.aec.store(v, Ordering::Release);
            Reply::ok(0)
        }
        fid::KEEP_ALIVE => {
            ctrl.kato_ms.store(v, Ordering::Release);
            ctrl.last_keep_alive
                .store(reactor::clock_ns(), Ordering::Release);
            Reply::ok(0)
        }
        fid::WRITE_CACHE
        | fid::ARBITRATION
        | fid::POWER
        | fid::TEMPERATURE
        | fid::ERROR_RECOVERY
        | fid::IRQ_COALESCING
        | fid::WRITE_ATOMICITY => Reply::ok(0),
        _ => Reply::err(Status::INVALID_FIELD),
    }
}

fn get_features(ctrl: &Controller, sqe: &Sqe) -> Reply {
    let f = sqe.dw(10) as u8;
    match f {
        fid::NUM_QUEUES if !ctrl.discovery => {
            let g = u32::from(ctrl.io_queues.load(Ordering::Acquire).max(1) - 1);
            Reply::ok(g | (g << 16))
        }
        fid::ASYNC_EVENT => Reply::ok(ctrl.aec.load(Ordering::Acquire)),
        fid::KEEP_ALIVE => Reply::ok(ctrl.kato_ms.load(Ordering::Acquire)),
        fid::WRITE_CACHE => Reply::ok(1),
        fid::TEMPERATURE => Reply::ok(0x0157),
        fid::ARBITRATION
        | fid::POWER
        | fid::ERROR_RECOVERY
        | fid::IRQ_COALESCING
        | fid::WRITE_ATOMICITY => Reply::ok(0),
        fid::HOST_ID => {
            if sqe.dw(11) & 1 == 0 {
                // 64-bit host identifiers are not kept.
                return Reply::err(Status::INVALID_FIELD);
            }
            let mut r = Reply::data(ctrl.hostid.to_vec());
            r.data.truncate(transfer_len(sqe));
            r
        }
        _ => Reply::err(Status::INVALID_FIELD),
    }
}
