//! I/O commands on an I/O queue: Read, Write (in-capsule or through R2T),
//! Flush, Write Zeroes, Dataset Management (deallocate), Compare — each
//! through the connection core's channel of its namespace, with a buffer
//! from that core's DMA cache; and their completions.

use std::sync::atomic::Ordering;

use bdev::{BdevError, IoStatus, IoType};

use super::STATS;
use super::cmd::{self, DataPlan, Reply, Sqe, Status};
use super::conn::{Conn, Req, Stage};
use super::subsystem::AnaState;
use crate::completions::{Completions, io_done};

/// I/O opcodes.
pub mod opc {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// The NVMe status for a bdev I/O's end.
pub fn status_of(s: IoStatus) -> Status {
    match s {
        IoStatus::Success => Status::OK,
        IoStatus::NotSupported => Status::INVALID_OPCODE,
        IoStatus::Miscompare => Status::MISCOMPARE,
        IoStatus::Aborted => Status::ABORTED,
        IoStatus::NoMem | IoStatus::Failed => Status::INTERNAL,
    }
}

fn submit_status(e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange { .. } => Status::LBA_RANGE,
        BdevError::ReadOnly(_) => Status::READ_ONLY,
        BdevError::Removing(_) => Status::NS_NOT_READY,
        BdevError::Invalid { .. } => Status::INVALID_FIELD,
        _ => Status::INTERNAL,
    }
}

impl Conn {
    /// Takes in I/O command `sqe` with in-capsule `data` (a slot is free).
    pub(super) fn io_command(&mut self, sqe: &Sqe, data: &[u8]) {
        let cid = sqe.cid();
        let plan = match cmd::data_plan(sqe, data.len()) {
            Ok(p) => p,
            Err(s) => return self.complete(cid, &Reply::err(s)),
        };
        let Some(ns) = self.ns.iter().find(|e| e.ns.nsid == sqe.nsid()).cloned() else {
            return self.complete(cid, &Reply::err(Status::INVALID_NS));
        };
        if ns.ana == AnaState::Inaccessible {
            return self.complete(cid, &Reply::err(Status::ANA_INACCESSIBLE));
        }
        let op = sqe.opcode();
        let slba = u64::from(sqe.dw(10)) | (u64::from(sqe.dw(11)) << 32);
        let nlb = u64::from(sqe.dw(12) & 0xFFFF) + 1;
        let bs = ns.block_size as usize;
        let (len, host_data, device_data) = match op {
            opc::READ => (nlb as usize * bs, false, true),
            opc::WRITE | opc::COMPARE => (nlb as usize * bs, true, false),
            opc::FLUSH | opc::WRITE_ZEROES => (0, false, false),
            opc::DSM => (((sqe.dw(10) & 0xFF) as usize + 1) * 16, true, false),
            _ => return self.complete(cid, &Reply::err(Status::INVALID_OPCODE)),
        };
        if matches!(
            op,
            opc::READ | opc::WRITE | opc::COMPARE | opc::WRITE_ZEROES
        ) {
            if slba.checked_add(nlb).is_none_or(|end| end > ns.num_blocks) {
                return self.complete(cid, &Reply::err(Status::LBA_RANGE));
            }
            if op != opc::WRITE_ZEROES && len > self.max_io_bytes() {
                return self.complete(cid, &Reply::err(Status::INVALID_FIELD));
            }
        }
        // The SGL must describe exactly the data the command moves.
        let planned = match plan {
            DataPlan::None => 0,
            DataPlan::InCapsule(n) | DataPlan::Transport(n) => n,
        };
        if planned != len
            || (host_data && len > 0 && plan == DataPlan::None)
            || (device_data && !matches!(plan, DataPlan::Transport(_)))
        {
            return self.complete(cid, &Reply::err(Status::SGL_LENGTH));
        }
        let Some(slot) = self.free.pop() else {
            return self.complete(cid, &Reply::err(Status::INTERNAL));
        };
        let buf = if len > 0 {
            match ns.ch.alloc_buf(len) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.free.push(slot);
                    log::warn!("nvmf: no {len}-byte buffer: {e}");
                    return self.complete(cid, &Reply::err(Status::INTERNAL));
                }
            }
        } else {
            None
        };
        let mut req = Req {
            cid,
            opcode: op,
            ns,
            slba,
            nlb,
            len,
            fua: sqe.dw(12) & (1 << 30) != 0,
            dw11: sqe.dw(11),
            buf,
            received: 0,
            stage: Stage::Queued,
            pending: 0,
            status: Status::OK,
        };
        match plan {
            DataPlan::InCapsule(_) => {
                if let Some(b) = req.buf.as_mut() {
                    b.write_at(0, data);
                }
                req.received = len;
            }
            DataPlan::Transport(_) if host_data => {
                req.stage = Stage::AwaitData;
            }
            _ => {}
        }
        let stage = req.stage;
        self.slots[slot as usize] = Some(req);
        if stage == Stage::AwaitData {
            self.r2t(slot, cid, len);
        } else {
            self.to_submit.push_back(slot);
        }
    }

    /// Submits queued commands while the channels have room; true on
    /// progress.
    pub(super) fn submit_queued(&mut self) -> bool {
        let mut progress = false;
        while let Some(&i) = self.to_submit.front() {
            let Some(req) = self.slots.get(i as usize).and_then(Option::as_ref) else {
                self.to_submit.pop_front();
                continue;
            };
            let ch = &req.ns.ch;
            // A deallocation of more ranges than the channel has I/O
            // objects waits for an idle channel, and what does not fit
            // fails the command (never waits for ever).
            let ranges = if req.opcode == opc::DSM {
                self.dsm_ranges(i)
            } else {
                Vec::new()
            };
            let need = ranges.len().clamp(1, ch.pool_size());
            if ch.outstanding() + need > ch.pool_size() {
                break;
            }
            self.to_submit.pop_front();
            progress = true;
            self.submit(i, ranges);
        }
        progress
    }

    /// The (start, blocks) ranges of DSM command in slot `i`, deallocate
    /// only (other attributes are hints: nothing to do).
    fn dsm_ranges(&self, i: u16) -> Vec<(u64, u64)> {
        let Some(req) = self.slots.get(i as usize).and_then(Option::as_ref) else {
            return Vec::new();
        };
        if req.dw11 & (1 << 2) == 0 {
            return Vec::new();
        }
        let Some(b) = req.buf.as_ref() else {
            return Vec::new();
        };
        let mut raw = vec![0u8; req.len];
        b.read_at(0, &mut raw);
        raw.chunks_exact(16)
            .filter_map(|r| {
                let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
                let mut s = [0u8; 8];
                s.copy_from_slice(&r[8..16]);
                (nlb > 0).then_some((u64::from_le_bytes(s), nlb))
            })
            .collect()
    }

    /// Submits the command in slot `i` (`ranges`: a DSM's deallocations).
    fn submit(&mut self, i: u16, ranges: Vec<(u64, u64)>) {
        let stats = STATS.get(self.core_index());
        let done = &self.done;
        let Some(req) = self.slots[i as usize].as_mut() else {
            return;
        };
        req.stage = Stage::Submitted;
        let ns = req.ns.clone();
        let ch = &ns.ch;
        if req.opcode == opc::DSM {
            // One unmap per range, where the bdev unmaps.
            let mut submitted = 0u32;
            if ns.unmap {
                for (start, n) in ranges {
                    if start.checked_add(n).is_none_or(|e| e > ns.num_blocks) {
                        req.status = Status::LBA_RANGE;
                        break;
                    }
                    let ctx = done.ctx(i);
                    match ch.submit_nodata(IoType::Unmap, start, n, io_done, ctx) {
                        Ok(()) => submitted += 1,
                        Err(e) => {
                            // SAFETY: `ctx` is this I/O's word; it was not
                            // started.
                            unsafe { Completions::not_started(ctx) };
                            req.status = submit_status(&e);
                            break;
                        }
                    }
                }
            }
            req.pending = submitted;
            self.in_flight += submitted as usize;
            if let Some(s) = stats {
                s.pending_bdev_io
                    .fetch_add(u64::from(submitted), Ordering::Relaxed);
            }
            if submitted == 0 {
                let st = req.status;
                self.finish(i, st);
            }
            return;
        }
        let ctx = done.ctx(i);
        let res: Result<(), BdevError> = match req.opcode {
            opc::FLUSH => ch.submit_nodata(IoType::Flush, 0, ns.num_blocks, io_done, ctx),
            opc::WRITE_ZEROES => {
                ch.submit_nodata(IoType::WriteZeroes, req.slba, req.nlb, io_done, ctx)
            }
            op => match req.buf.take() {
                Some(b) => match op {
                    opc::READ => ch.read(b, req.slba, req.nlb, io_done, ctx),
                    opc::WRITE => ch.write(b, req.slba, req.nlb, req.fua, io_done, ctx),
                    _ => ch.compare(b, req.slba, req.nlb, io_done, ctx),
                }
                .map_err(|(e, b)| {
                    req.buf = Some(b);
                    e
                }),
                None => Err(BdevError::NoBuffer {
                    len: req.len,
                    reason: "lost".into(),
                }),
            },
        };
        match res {
            Ok(()) => {
                req.pending = 1;
                self.in_flight += 1;
                if let Some(s) = stats {
                    s.pending_bdev_io.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                // SAFETY: `ctx` is this I/O's word; it was not started.
                unsafe { Completions::not_started(ctx) };
                let st = submit_status(&e);
                self.finish(i, st);
            }
        }
    }

    /// Ends the command in slot `i` with `status`: its data (a read's),
    /// its completion, its buffer back to the cache, the slot free.
    pub(super) fn finish(&mut self, i: u16, status: Status) {
        let Some(mut req) = self.slots.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        let buf = req.buf.take();
        if req.opcode == opc::READ && status == Status::OK {
            if let Some(b) = buf {
                let success = self.success_flag();
                self.c2h_buf(req.cid, b, req.len, success, req.ns.clone());
                if !success {
                    self.complete(req.cid, &Reply::ok(0));
                } else if let Some(s) = STATS.get(self.core_index()) {
                    s.completed_nvme_io.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.complete(req.cid, &Reply::err(Status::INTERNAL));
            }
            return;
        }
        self.complete(req.cid, &Reply::err(status));
        if let Some(b) = buf {
            req.ns.ch.free_buf(b);
        }
    }
}
