//! Fabrics commands (opcode 0x7F): Connect — an admin queue makes a
//! controller (dynamic controller id within the subsystem's range, host
//! NQN checked), an I/O queue joins one — and Property Get/Set (CAP, VS,
//! CC, CSTS) on the admin queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cmd::{Reply, Sqe, Status, get_cstr};
use super::ctrlr::{Controller, QpairInfo};
use super::nqn::DISCOVERY_NQN;
use super::{ListenAddr, bump, target};

/// The fabrics opcode.
pub const OPCODE: u8 = 0x7F;
/// Fabrics command types.
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// Connect's data length.
pub const CONNECT_DATA_LEN: usize = 1024;

/// CATTR bit: the host disabled SQ flow control.
const CATTR_NO_SQFLOW: u8 = 0x04;

/// A queue a Connect set up.
#[derive(Debug)]
pub struct Connected {
    /// Its controller.
    pub ctrlr: Arc<Controller>,
    /// Queue id.
    pub qid: u16,
    /// Queue size (entries; Connect's SQSIZE + 1).
    pub depth: u16,
    /// SQ flow control disabled by the host (SQHD not needed; C2HData may
    /// carry SUCCESS).
    pub no_sqflow: bool,
}

/// Connect invalid parameters: dword 0 carries IATTR (1: the offset is
/// in the data) and IPO (the offset).
fn invalid_param(in_data: bool, offset: u16) -> Reply {
    let mut r = Reply::err(Status::CONNECT_INVALID);
    r.dw0 = (u32::from(in_data) << 16) | u32::from(offset);
    r
}

/// Runs Connect `sqe` with `data` (its 1024 bytes), arriving through
/// `listen` on connection `conn` (peer `peer`) on core `core`.
///
/// # Errors
/// The Connect's failure completion: an unknown format, subsystem, host,
/// controller or queue id, a queue size out of range, no free controller
/// id.
pub fn connect(
    sqe: &Sqe,
    data: &[u8],
    listen: &ListenAddr,
    conn: u64,
    peer: &str,
    core: u32,
) -> Result<Connected, Reply> {
    if data.len() != CONNECT_DATA_LEN {
        return Err(Reply::err(Status::SGL_LENGTH));
    }
    let recfmt = sqe.dw(10) as u16;
    if recfmt != 0 {
        return Err(Reply::err(Status::CONNECT_FORMAT));
    }
    let qid = (sqe.dw(10) >> 16) as u16;
    let sqsize = sqe.dw(11) as u16;
    let cattr = (sqe.dw(11) >> 16) as u8;
    let kato = sqe.dw(12);
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[0..16]);
    let cntlid = u16::from_le_bytes([data[16], data[17]]);
    let Some(subnqn) = get_cstr(&data[256..512]) else {
        return Err(invalid_param(true, 256));
    };
    let Some(hostnqn) = get_cstr(&data[512..768]) else {
        return Err(invalid_param(true, 512));
    };
    let mut t = target();
    let Some(opts) = t.transport.clone() else {
        return Err(Reply::err(Status::INTERNAL));
    };
    let info = QpairInfo {
        qid,
        core,
        peer: peer.to_owned(),
        conn,
    };
    let no_sqflow = cattr & CATTR_NO_SQFLOW != 0;
    if qid == 0 {
        if sqsize == 0 || u32::from(sqsize) >= opts.max_aq_depth {
            return Err(invalid_param(false, 44));
        }
        if cntlid != 0xFFFF && cntlid != 0xFFFE {
            return Err(invalid_param(true, 16));
        }
        if subnqn == DISCOVERY_NQN {
            let c = Arc::new(Controller::new(
                next_discovery_cntlid(),
                DISCOVERY_NQN,
                &hostnqn,
                hostid,
                listen.clone(),
                true,
                kato,
                0,
            ));
            c.qpairs().push(info);
            return Ok(Connected {
                ctrlr: c,
                qid,
                depth: sqsize + 1,
                no_sqflow,
            });
        }
        let Some(s) = t.subsystems.iter_mut().find(|s| s.nqn == subnqn) else {
            log::info!("nvmf: connect from {hostnqn} to unknown subsystem {subnqn}");
            return Err(invalid_param(true, 256));
        };
        if !s.host_allowed(&hostnqn) {
            log::info!("nvmf: host {hostnqn} is not allowed on {subnqn}");
            return Err(Reply::err(Status::CONNECT_HOST));
        }
        if s.listener(listen).is_none() {
            log::info!(
                "nvmf: {subnqn} does not listen on {}:{}",
                listen.traddr,
                listen.trsvcid
            );
            return Err(invalid_param(true, 256));
        }
        let Some(id) = s.alloc_cntlid() else {
            return Err(Reply::err(Status::CONNECT_BUSY));
        };
        let c = Arc::new(Controller::new(
            id,
            &subnqn,
            &hostnqn,
            hostid,
            listen.clone(),
            false,
            kato,
            opts.max_io_qpairs_per_ctrlr,
        ));
        c.qpairs().push(info);
        s.controllers.push(c.clone());
        drop(t);
        bump();
        log::info!("nvmf: controller {id} of {subnqn} for {hostnqn} ({peer})");
        return Ok(Connected {
            ctrlr: c,
            qid,
            depth: sqsize + 1,
            no_sqflow,
        });
    }
    let Some(s) = t.subsystems.iter().find(|s| s.nqn == subnqn) else {
        return Err(invalid_param(true, 256));
    };
    let Some(c) = s
        .controllers
        .iter()
        .find(|c| c.cntlid == cntlid && !c.is_dead())
        .cloned()
    else {
        return Err(invalid_param(true, 16));
    };
    drop(t);
    if c.hostnqn != hostnqn || c.hostid != hostid {
        return Err(invalid_param(true, 512));
    }
    if c.cc.load(Ordering::Acquire) & 1 == 0 {
        // I/O queues join an enabled controller only.
        return Err(Reply::err(Status::SEQUENCE));
    }
    if qid > c.io_queues.load(Ordering::Acquire) {
        return Err(invalid_param(false, 42));
    }
    if sqsize == 0 || sqsize >= opts.max_queue_depth {
        return Err(invalid_param(false, 44));
    }
    {
        let mut q = c.qpairs();
        if q.iter().any(|x| x.qid == qid) {
            return Err(invalid_param(false, 42));
        }
        q.push(info);
    }
    Ok(Connected {
        ctrlr: c,
        qid,
        depth: sqsize + 1,
        no_sqflow,
    })
}

fn next_discovery_cntlid() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let v = NEXT.fetch_add(1, Ordering::Relaxed);
    (v % 0xFFEF).max(1)
}

/// Property offsets.
mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// CAP: MQES (0's based), CQR, TO 7.5 s, NVM command set, 4 KiB pages.
fn cap(max_queue_depth: u16) -> u64 {
    u64::from(max_queue_depth - 1) | (1 << 16) | (0x0F << 24) | (1u64 << 37)
}

/// Property Get/Set on `ctrl`.
pub fn property(ctrl: &Controller, sqe: &Sqe) -> Reply {
    let size8 = sqe.dw(10) & 7 == 1;
    let offset = sqe.dw(11);
    let depth = target()
        .transport
        .as_ref()
        .map_or(128, |t| t.max_queue_depth);
    match sqe.fctype() {
        fctype::PROPERTY_GET => {
            let v: u64 = match (offset, size8) {
                (prop::CAP, _) => cap(depth),
                (prop::VS, false) => u64::from(super::admin::VERSION),
                (prop::CC, false) => u64::from(ctrl.cc.load(Ordering::Acquire)),
                (prop::CSTS, false) => u64::from(ctrl.csts.load(Ordering::Acquire)),
                _ => return Reply::err(Status::INVALID_FIELD),
            };
            let v = if size8 { v } else { v & 0xFFFF_FFFF };
            let mut r = Reply::ok(v as u32);
            r.dw1 = (v >> 32) as u32;
            r
        }
        fctype::PROPERTY_SET => {
            let value = u64::from(sqe.dw(12)) | (u64::from(sqe.dw(13)) << 32);
            if offset != prop::CC || size8 {
                return Reply::err(Status::INVALID_FIELD);
            }
            set_cc(ctrl, value as u32);
            Reply::ok(0)
        }
        _ => Reply::err(Status::INVALID_OPCODE),
    }
}

/// A write of CC: enable sets CSTS.RDY, disable clears it; a shutdown
/// notification completes at once (nothing is cached here that the bdevs
/// do not already hold) and sets CSTS.SHST to complete.
fn set_cc(ctrl: &Controller, cc: u32) {
    let old = ctrl.cc.swap(cc, Ordering::AcqRel);
    let mut csts = ctrl.csts.load(Ordering::Acquire);
    if cc & 1 != 0 && old & 1 == 0 {
        csts |= 1;
    } else if cc & 1 == 0 && old & 1 != 0 {
        csts &= !1;
    }
    if (cc >> 14) & 3 != 0 {
        csts = (csts & !0xC) | (2 << 2);
    } else {
        csts &= !0xC;
    }
    ctrl.csts.store(csts, Ordering::Release);
}
