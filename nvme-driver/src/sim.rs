//! A software model of an NVMe controller, reached through the same
//! [`RegisterIo`] interface as BAR0, doing its "DMA" through the test's
//! [`DmaMemory`]. It lets host tests drive the real driver code (bring-up,
//! queues, PRPs, resets, events, removal) without hardware; the guest tier
//! runs the same code against QEMU's controller.
//!
//! Commands are executed when their doorbell is rung (unless held), so a
//! test sees exactly what the driver wrote.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use dma::DmaMemory;

use crate::regs::{RegisterIo, Registers, cc, csts};
use crate::spec::{Sqe, admin_opcode as aop, io_opcode as iop};
use crate::status::NvmeStatus;

/// Configuration of the model.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// MDTS (maximum transfer = 4 KiB << mdts; 0 = unlimited).
    pub mdts: u8,
    /// I/O queues the controller grants at most.
    pub max_queues: u16,
    /// CAP.MQES + 1.
    pub max_queue_entries: u32,
    /// Namespaces: (block size, blocks), numbered from 1.
    pub namespaces: Vec<(u32, u64)>,
    /// Whether a volatile write cache is reported.
    pub volatile_write_cache: bool,
    /// Whether SGLs (data block descriptors, no alignment rules) are
    /// offered for I/O commands, as QEMU's controller does.
    pub sgl: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            serial: "SIM0001".into(),
            model: "rss simulated controller".into(),
            mdts: 5,
            max_queues: 8,
            max_queue_entries: 1024,
            namespaces: vec![(512, 8192), (4096, 1024)],
            volatile_write_cache: true,
            sgl: true,
        }
    }
}

struct Ns {
    block_size: u32,
    data: Vec<u8>,
}

struct Sq {
    base: u64,
    entries: u16,
    cqid: u16,
    head: u16,
    tail: u16,
}

struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
}

struct State {
    cfg: SimConfig,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: HashMap<u16, Sq>,
    cqs: HashMap<u16, Cq>,
    granted: u16,
    namespaces: BTreeMap<u32, Ns>,
    aers: VecDeque<u16>,
    events: VecDeque<u32>,
    changed: Vec<u32>,
    hold: bool,
    hold_admin: bool,
    refuse_enable: bool,
    zero_lbads: Vec<u32>,
    held: Vec<(u16, Sqe)>,
    removed: bool,
    ignore_abort: bool,
    commands: HashMap<(bool, u8), u64>,
    doorbells: u64,
}

/// The model controller.
pub struct SimController {
    state: Mutex<State>,
    mem: DmaMemory,
}

impl std::fmt::Debug for SimController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimController").finish_non_exhaustive()
    }
}

const PAGE: u64 = 4096;

impl SimController {
    /// A controller doing DMA into `mem`, in its reset state.
    pub fn new(mem: DmaMemory, cfg: SimConfig) -> Self {
        let namespaces = cfg
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, &(bs, blocks))| {
                (
                    i as u32 + 1,
                    Ns {
                        block_size: bs,
                        data: vec![0; (bs as u64 * blocks) as usize],
                    },
                )
            })
            .collect();
        SimController {
            state: Mutex::new(State {
                cfg,
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                sqs: HashMap::new(),
                cqs: HashMap::new(),
                granted: 0,
                namespaces,
                aers: VecDeque::new(),
                events: VecDeque::new(),
                changed: Vec::new(),
                hold: false,
                hold_admin: false,
                refuse_enable: false,
                zero_lbads: Vec::new(),
                held: Vec::new(),
                removed: false,
                ignore_abort: false,
                commands: HashMap::new(),
                doorbells: 0,
            }),
            mem,
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every register read all-ones (surprise removal).
    pub fn set_removed(&self, removed: bool) {
        self.st().removed = removed;
    }

    /// Sets Controller Fatal Status.
    pub fn set_fatal(&self) {
        self.st().csts |= csts::CFS;
    }

    /// While held, I/O commands are accepted but not completed.
    pub fn hold_io(&self, hold: bool) {
        self.st().hold = hold;
    }

    /// While held, admin commands (other than Asynchronous Event
    /// Requests) are accepted but not completed, as a slow controller's.
    pub fn hold_admin(&self, hold: bool) {
        self.st().hold_admin = hold;
    }

    /// While set, enabling the controller ends in Controller Fatal Status
    /// instead of ready (a controller that does not come back from a
    /// reset).
    pub fn refuse_enable(&self, refuse: bool) {
        self.st().refuse_enable = refuse;
    }

    /// Makes Identify Namespace for `nsid` select an LBA format with an
    /// LBA data size of zero (LBADS 0): bad device data the driver must
    /// refuse without a panic.
    pub fn report_zero_lba_size(&self, nsid: u32) {
        self.st().zero_lbads.push(nsid);
    }

    /// Completes every held command.
    pub fn release_held(&self) {
        let mut st = self.st();
        // Drain, keeping the list's capacity (see `reserve_held`).
        let held: Vec<(u16, Sqe)> = st.held.drain(..).collect();
        for (qid, sqe) in held {
            self.execute(&mut st, qid, sqe);
        }
    }

    /// When set, Abort never finds its command (as a hung device would).
    pub fn ignore_abort(&self, ignore: bool) {
        self.st().ignore_abort = ignore;
    }

    /// Reserves room for `n` held commands, so holding allocates nothing.
    pub fn reserve_held(&self, n: usize) {
        self.st().held.reserve(n);
    }

    /// Commands held now.
    pub fn held(&self) -> usize {
        self.st().held.len()
    }

    /// How many commands with `opcode` were executed (admin or I/O).
    pub fn command_count(&self, admin: bool, opcode: u8) -> u64 {
        self.st()
            .commands
            .get(&(admin, opcode))
            .copied()
            .unwrap_or(0)
    }

    /// Submission doorbell writes so far.
    pub fn doorbell_writes(&self) -> u64 {
        self.st().doorbells
    }

    /// Namespace `nsid`'s bytes at `offset` (for checking what was written).
    pub fn read_media(&self, nsid: u32, offset: usize, len: usize) -> Vec<u8> {
        self.st().namespaces[&nsid].data[offset..offset + len].to_vec()
    }

    /// Changes a namespace's size and announces a Namespace Attribute
    /// Changed event.
    pub fn resize_namespace(&self, nsid: u32, blocks: u64) {
        let mut st = self.st();
        let ns = st.namespaces.get_mut(&nsid).expect("namespace exists");
        ns.data.resize((ns.block_size as u64 * blocks) as usize, 0);
        Self::ns_changed(&mut st, nsid);
        self.flush_events(&mut st);
    }

    /// Removes a namespace (announcing it).
    pub fn remove_namespace(&self, nsid: u32) {
        let mut st = self.st();
        st.namespaces.remove(&nsid);
        Self::ns_changed(&mut st, nsid);
        self.flush_events(&mut st);
    }

    fn ns_changed(st: &mut State, nsid: u32) {
        if !st.changed.contains(&nsid) {
            st.changed.push(nsid);
        }
        // Notice, Namespace Attribute Changed, log page 04h.
        let ev = 2 | (0x04 << 16);
        if !st.events.contains(&ev) {
            st.events.push_back(ev);
        }
    }

    fn flush_events(&self, st: &mut State) {
        while !st.events.is_empty() && !st.aers.is_empty() {
            let ev = st.events.pop_front().expect("non-empty");
            let cid = st.aers.pop_front().expect("non-empty");
            self.post(st, 0, cid, NvmeStatus::SUCCESS, ev);
        }
    }

    fn cap(st: &State) -> u64 {
        let mqes = (st.cfg.max_queue_entries - 1) as u64;
        // MQES, CQR, TO = 2 (1 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        mqes | 1 << 16 | 2 << 24 | 1 << 37 | 4 << 52
    }

    fn dma_ptr(&self, iova: u64, len: usize) -> Option<*mut u8> {
        self.mem.iova_to_ptr(iova, len)
    }

    fn read_sqe(&self, iova: u64) -> Option<Sqe> {
        let p = self.dma_ptr(iova, 64)?;
        // SAFETY: `p` points at 64 bytes of a live DMA region (checked by
        // iova_to_ptr); Sqe is plain data; read_unaligned copies it out.
        Some(unsafe { p.cast::<Sqe>().read_unaligned() })
    }

    /// The (IOVA, len) segments a PRP pair describes for `len` bytes.
    fn prp_segments(&self, prp1: u64, prp2: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let mut segs = Vec::new();
        let first = len.min((PAGE - (prp1 % PAGE)) as usize);
        segs.push((prp1, first));
        let mut left = len - first;
        if left == 0 {
            return Some(segs);
        }
        if left <= PAGE as usize {
            segs.push((prp2, left));
            return Some(segs);
        }
        let mut list = prp2;
        let mut idx = 0u64;
        while left > 0 {
            let entries_in_page = (PAGE - (list % PAGE)) / 8;
            if idx == entries_in_page - 1 && left > PAGE as usize {
                // Last entry of a list page chains to the next list page.
                let p = self.dma_ptr(list + idx * 8, 8)?;
                // SAFETY: 8 bytes of a live DMA region.
                list = unsafe { p.cast::<u64>().read_unaligned() };
                idx = 0;
                continue;
            }
            let p = self.dma_ptr(list + idx * 8, 8)?;
            // SAFETY: 8 bytes of a live DMA region.
            let e = unsafe { p.cast::<u64>().read_unaligned() };
            if e % PAGE != 0 {
                return None;
            }
            let n = left.min(PAGE as usize);
            segs.push((e, n));
            left -= n;
            idx += 1;
        }
        Some(segs)
    }

    /// The segment one SGL Data Block descriptor in the data pointer
    /// describes, when it covers `len` bytes (other descriptor types are
    /// refused; whether SGLs were offered is the driver's to respect).
    fn sgl_segments(sqe: &Sqe, len: usize) -> Option<Vec<(u64, usize)>> {
        let kind = (sqe.prp2 >> 56) as u8;
        let dlen = sqe.prp2 as u32 as usize;
        (kind == 0 && dlen == len).then(|| vec![(sqe.prp1, len)])
    }

    /// Copies between `buf` and the memory the PRPs (or the SGL) describe.
    fn transfer(&self, sqe: &Sqe, buf: &mut [u8], to_host: bool) -> bool {
        let segs = if sqe.uses_sgl() {
            Self::sgl_segments(sqe, buf.len())
        } else {
            self.prp_segments(sqe.prp1, sqe.prp2, buf.len())
        };
        let Some(segs) = segs else {
            return false;
        };
        let mut off = 0;
        for (iova, n) in segs {
            let Some(p) = self.dma_ptr(iova, n) else {
                return false;
            };
            // SAFETY: `p..p+n` lies in a live DMA region (checked); `buf` is a
            // distinct Rust buffer.
            unsafe {
                if to_host {
                    std::ptr::copy_nonoverlapping(buf[off..].as_ptr(), p, n);
                } else {
                    std::ptr::copy_nonoverlapping(p, buf[off..].as_mut_ptr(), n);
                }
            }
            off += n;
        }
        true
    }

    fn post(&self, st: &mut State, qid: u16, cid: u16, status: NvmeStatus, dw0: u32) {
        let sq_head = st.sqs.get(&qid).map_or(0, |s| s.head);
        let cqid = st.sqs.get(&qid).map_or(0, |s| s.cqid);
        let Some(cq) = st.cqs.get_mut(&cqid) else {
            return;
        };
        let at = cq.base + cq.tail as u64 * 16;
        let Some(p) = self.dma_ptr(at, 16) else {
            return;
        };
        let dw2 = sq_head as u32 | (qid as u32) << 16;
        let dw3 = cid as u32 | (cq.phase as u32) << 16 | (status.0 as u32) << 17;
        // SAFETY: 16 bytes of a live DMA region; dword-aligned (queues are
        // page aligned, entries 16 bytes). DW3 (with the phase) goes last.
        unsafe {
            let d = p.cast::<u32>();
            d.write_volatile(dw0);
            d.add(1).write_volatile(0);
            d.add(2).write_volatile(dw2);
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            d.add(3).write_volatile(dw3);
        }
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
    }

    fn process_sq(&self, st: &mut State, qid: u16) {
        loop {
            let Some(sq) = st.sqs.get_mut(&qid) else {
                return;
            };
            if sq.head == sq.tail {
                return;
            }
            let at = sq.base + sq.head as u64 * 64;
            sq.head = (sq.head + 1) % sq.entries;
            let Some(sqe) = self.read_sqe(at) else { return };
            if st.hold && qid != 0
                || st.hold_admin && qid == 0 && sqe.opcode() != aop::ASYNC_EVENT_REQUEST
            {
                st.held.push((qid, sqe));
                continue;
            }
            self.execute(st, qid, sqe);
        }
    }

    fn execute(&self, st: &mut State, qid: u16, sqe: Sqe) {
        *st.commands.entry((qid == 0, sqe.opcode())).or_default() += 1;
        let result = if qid == 0 {
            self.admin(st, &sqe)
        } else {
            Some(self.io(st, &sqe))
        };
        if let Some((status, dw0)) = result {
            self.post(st, qid, sqe.cid(), status, dw0);
        }
    }

    fn admin(&self, st: &mut State, c: &Sqe) -> Option<(NvmeStatus, u32)> {
        let ok = Some((NvmeStatus::SUCCESS, 0));
        let invalid_field = Some((NvmeStatus::new(0, 0x02), 0));
        let qid = c.cdw10 as u16;
        let size = (c.cdw10 >> 16) as u16 as u32 + 1;
        match c.opcode() {
            aop::IDENTIFY => {
                let mut b = vec![0u8; 4096];
                match c.cdw10 & 0xff {
                    0x01 => {
                        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        let put = |b: &mut [u8], s: &str| {
                            b.fill(b' ');
                            let n = s.len().min(b.len());
                            b[..n].copy_from_slice(&s.as_bytes()[..n]);
                        };
                        put(&mut b[4..24], &st.cfg.serial);
                        put(&mut b[24..64], &st.cfg.model);
                        put(&mut b[64..72], "1.0");
                        b[77] = st.cfg.mdts;
                        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
                        b[256..258].copy_from_slice(&(1u16 << 1).to_le_bytes());
                        b[258] = 3;
                        b[259] = 3;
                        b[262] = 3;
                        b[512] = 0x66;
                        b[513] = 0x44;
                        b[516..520].copy_from_slice(&32u32.to_le_bytes());
                        b[520..522].copy_from_slice(&0b1101u16.to_le_bytes());
                        b[525] = st.cfg.volatile_write_cache as u8;
                        b[536..540].copy_from_slice(&(st.cfg.sgl as u32).to_le_bytes());
                    }
                    0x00 => {
                        if let Some(ns) = st.namespaces.get(&c.nsid) {
                            let blocks = ns.data.len() as u64 / ns.block_size as u64;
                            for o in [0, 8, 16] {
                                b[o..o + 8].copy_from_slice(&blocks.to_le_bytes());
                            }
                            b[25] = 1; // two formats: 512 and 4096
                            b[33] = 1; // deallocated blocks read as zeroes
                            b[26] = (ns.block_size == 4096) as u8;
                            b[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
                            b[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
                            b[104..108].copy_from_slice(&c.nsid.to_le_bytes());
                            if st.zero_lbads.contains(&c.nsid) {
                                b[25] = 2; // a third format, in use, LBADS 0
                                b[26] = 2;
                                b[136..140].copy_from_slice(&0u32.to_le_bytes());
                            }
                        } else if c.nsid == 0 || c.nsid > 32 {
                            return Some((NvmeStatus::new(0, 0x0b), 0));
                        }
                    }
                    0x02 => {
                        for (i, nsid) in st
                            .namespaces
                            .keys()
                            .filter(|&&n| n > c.nsid)
                            .take(1024)
                            .enumerate()
                        {
                            b[i * 4..i * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
                        }
                    }
                    _ => return invalid_field,
                }
                if !self.transfer(c, &mut b, true) {
                    return Some((NvmeStatus::new(0, 0x04), 0));
                }
                ok
            }
            aop::SET_FEATURES | aop::GET_FEATURES => match c.cdw10 as u8 {
                0x07 => {
                    if c.opcode() == aop::SET_FEATURES && st.granted == 0 {
                        let want = (c.cdw11 as u16).min((c.cdw11 >> 16) as u16) + 1;
                        st.granted = want.min(st.cfg.max_queues);
                    }
                    let n = st.granted.max(1) as u32 - 1;
                    Some((NvmeStatus::SUCCESS, n << 16 | n))
                }
                0x06 | 0x0b => ok,
                _ => invalid_field,
            },
            aop::CREATE_IO_CQ => {
                if qid == 0 || qid > st.granted || st.cqs.contains_key(&qid) {
                    return Some((NvmeStatus::new(1, 0x01), 0));
                }
                if size < 2 || size > st.cfg.max_queue_entries {
                    return Some((NvmeStatus::new(1, 0x02), 0));
                }
                st.cqs.insert(
                    qid,
                    Cq {
                        base: c.prp1,
                        entries: size as u16,
                        tail: 0,
                        phase: true,
                    },
                );
                ok
            }
            aop::CREATE_IO_SQ => {
                let cqid = (c.cdw11 >> 16) as u16;
                if qid == 0 || qid > st.granted || st.sqs.contains_key(&qid) {
                    return Some((NvmeStatus::new(1, 0x01), 0));
                }
                if !st.cqs.contains_key(&cqid) {
                    return Some((NvmeStatus::new(1, 0x00), 0));
                }
                if size < 2 || size > st.cfg.max_queue_entries {
                    return Some((NvmeStatus::new(1, 0x02), 0));
                }
                st.sqs.insert(
                    qid,
                    Sq {
                        base: c.prp1,
                        entries: size as u16,
                        cqid,
                        head: 0,
                        tail: 0,
                    },
                );
                ok
            }
            aop::DELETE_IO_SQ => {
                if st.sqs.remove(&qid).is_none() || qid == 0 {
                    return Some((NvmeStatus::new(1, 0x01), 0));
                }
                st.held.retain(|(q, _)| *q != qid);
                ok
            }
            aop::DELETE_IO_CQ => {
                if st.sqs.values().any(|s| s.cqid == qid) {
                    return Some((NvmeStatus::new(1, 0x0c), 0));
                }
                if st.cqs.remove(&qid).is_none() || qid == 0 {
                    return Some((NvmeStatus::new(1, 0x01), 0));
                }
                ok
            }
            aop::GET_LOG_PAGE => {
                let numd = ((c.cdw10 >> 16) | (c.cdw11 & 0xffff) << 16) as usize + 1;
                let mut b = vec![0u8; numd * 4];
                match c.cdw10 as u8 {
                    0x01 => {}
                    0x02 => {
                        if b.len() >= 512 {
                            b[1..3].copy_from_slice(&300u16.to_le_bytes());
                            b[3] = 100;
                            let reads: u64 =
                                st.commands.get(&(false, iop::READ)).copied().unwrap_or(0);
                            b[64..72].copy_from_slice(&reads.to_le_bytes());
                            b[112..120].copy_from_slice(&1u64.to_le_bytes());
                        }
                    }
                    0x04 => {
                        for (i, nsid) in std::mem::take(&mut st.changed)
                            .iter()
                            .take(b.len() / 4)
                            .enumerate()
                        {
                            b[i * 4..i * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
                        }
                    }
                    _ => return Some((NvmeStatus::new(1, 0x09), 0)),
                }
                if !self.transfer(c, &mut b, true) {
                    return Some((NvmeStatus::new(0, 0x04), 0));
                }
                ok
            }
            aop::ASYNC_EVENT_REQUEST => {
                if st.aers.len() >= 4 {
                    return Some((NvmeStatus::new(1, 0x05), 0));
                }
                st.aers.push_back(c.cid());
                self.flush_events(st);
                None
            }
            aop::ABORT => {
                let (sqid, cid) = (c.cdw10 as u16, (c.cdw10 >> 16) as u16);
                let found = if st.ignore_abort {
                    None
                } else {
                    st.held
                        .iter()
                        .position(|(q, s)| *q == sqid && s.cid() == cid)
                };
                if let Some(i) = found {
                    let (q, s) = st.held.remove(i);
                    self.post(st, q, s.cid(), NvmeStatus::new(0, 0x07), 0);
                    Some((NvmeStatus::SUCCESS, 0))
                } else {
                    Some((NvmeStatus::SUCCESS, 1))
                }
            }
            aop::FORMAT_NVM => {
                let lbaf = c.cdw10 & 0xf;
                let bs = if lbaf == 1 { 4096 } else { 512 };
                for (nsid, ns) in st.namespaces.iter_mut() {
                    if c.nsid == 0xffff_ffff || c.nsid == *nsid {
                        let bytes = ns.data.len();
                        ns.block_size = bs;
                        ns.data = vec![0; bytes];
                    }
                }
                ok
            }
            _ => Some((NvmeStatus::new(0, 0x01), 0)),
        }
    }

    fn io(&self, st: &mut State, c: &Sqe) -> (NvmeStatus, u32) {
        let ok = (NvmeStatus::SUCCESS, 0);
        let Some(ns) = st.namespaces.get_mut(&c.nsid) else {
            return (NvmeStatus::new(0, 0x0b), 0);
        };
        let bs = ns.block_size as usize;
        let blocks = ns.data.len() / bs;
        let slba = c.cdw10 as u64 | (c.cdw11 as u64) << 32;
        let nlb = (c.cdw12 & 0xffff) as usize + 1;
        let range = || -> Option<std::ops::Range<usize>> {
            let end = (slba as usize).checked_add(nlb)?;
            (end <= blocks).then(|| slba as usize * bs..end * bs)
        };
        let out_of_range = (NvmeStatus(0x80 | 1 << 14), 0);
        match c.opcode() {
            iop::FLUSH => ok,
            iop::READ | iop::WRITE | iop::COMPARE => {
                let Some(r) = range() else {
                    return out_of_range;
                };
                if nlb * bs > (PAGE as usize) << st.cfg.mdts && st.cfg.mdts != 0 {
                    return (NvmeStatus::new(0, 0x02), 0);
                }
                let mut buf = vec![0u8; r.len()];
                match c.opcode() {
                    iop::READ => {
                        buf.copy_from_slice(&ns.data[r]);
                        if !self.transfer(c, &mut buf, true) {
                            return (NvmeStatus::new(0, 0x04), 0);
                        }
                    }
                    iop::WRITE => {
                        if !self.transfer(c, &mut buf, false) {
                            return (NvmeStatus::new(0, 0x04), 0);
                        }
                        ns.data[r].copy_from_slice(&buf);
                    }
                    _ => {
                        if !self.transfer(c, &mut buf, false) {
                            return (NvmeStatus::new(0, 0x04), 0);
                        }
                        if ns.data[r] != buf[..] {
                            return (NvmeStatus::new(2, 0x85), 0);
                        }
                    }
                }
                ok
            }
            iop::WRITE_ZEROES => {
                let Some(r) = range() else {
                    return out_of_range;
                };
                ns.data[r].fill(0);
                ok
            }
            iop::DATASET_MANAGEMENT => {
                let n = (c.cdw10 & 0xff) as usize + 1;
                let mut b = vec![0u8; n * 16];
                if !self.transfer(c, &mut b, false) {
                    return (NvmeStatus::new(0, 0x04), 0);
                }
                if c.cdw11 & 4 != 0 {
                    for d in b.chunks_exact(16) {
                        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
                        let lba = u64::from_le_bytes([
                            d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15],
                        ]) as usize;
                        if lba + len > blocks {
                            return out_of_range;
                        }
                        ns.data[lba * bs..(lba + len) * bs].fill(0);
                    }
                }
                ok
            }
            _ => (NvmeStatus::new(0, 0x01), 0),
        }
    }
}

impl RegisterIo for SimController {
    fn read32(&self, offset: usize) -> u32 {
        let st = self.st();
        if st.removed {
            return u32::MAX;
        }
        let cap = Self::cap(&st);
        match offset {
            0x00 => cap as u32,
            0x04 => (cap >> 32) as u32,
            Registers::VS => 0x0001_0400,
            Registers::CC => st.cc,
            Registers::CSTS => st.csts,
            Registers::AQA => st.aqa,
            0x28 => st.asq as u32,
            0x2c => (st.asq >> 32) as u32,
            0x30 => st.acq as u32,
            0x34 => (st.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut st = self.st();
        if st.removed {
            return;
        }
        match offset {
            Registers::CC => {
                let was = st.cc & cc::EN != 0;
                let now = value & cc::EN != 0;
                st.cc = value;
                if value & cc::SHN_MASK != 0 {
                    st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                }
                if was && !now {
                    st.sqs.clear();
                    st.cqs.clear();
                    st.aers.clear();
                    st.held.clear();
                    st.granted = 0;
                    st.csts &= !(csts::RDY | csts::CFS);
                } else if !was && now {
                    let (asq, acq, aqa) = (st.asq, st.acq, st.aqa);
                    st.sqs.insert(
                        0,
                        Sq {
                            base: asq,
                            entries: (aqa & 0xfff) as u16 + 1,
                            cqid: 0,
                            head: 0,
                            tail: 0,
                        },
                    );
                    st.cqs.insert(
                        0,
                        Cq {
                            base: acq,
                            entries: ((aqa >> 16) & 0xfff) as u16 + 1,
                            tail: 0,
                            phase: true,
                        },
                    );
                    if st.refuse_enable {
                        st.csts |= csts::CFS;
                    } else {
                        st.csts |= csts::RDY;
                    }
                }
            }
            Registers::AQA => st.aqa = value,
            0x28 => st.asq = (st.asq & !0xffff_ffff) | value as u64,
            0x2c => st.asq = (st.asq & 0xffff_ffff) | (value as u64) << 32,
            0x30 => st.acq = (st.acq & !0xffff_ffff) | value as u64,
            0x34 => st.acq = (st.acq & 0xffff_ffff) | (value as u64) << 32,
            o if o >= Registers::DOORBELLS => {
                let idx = (o - Registers::DOORBELLS) / 4;
                let qid = (idx / 2) as u16;
                if idx.is_multiple_of(2) {
                    st.doorbells += 1;
                    if let Some(sq) = st.sqs.get_mut(&qid) {
                        sq.tail = value as u16 % sq.entries;
                    }
                    if st.cc & cc::EN != 0 {
                        self.process_sq(&mut st, qid);
                    }
                }
            }
            _ => {}
        }
    }
}
