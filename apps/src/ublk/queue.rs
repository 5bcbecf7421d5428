//! One ublk queue, served by a poller on one reactor: its own io_uring on
//! the device's `/dev/ublkcN`, the driver's read-only descriptor array
//! mapped in, and this core's channel to the bdev.
//!
//! ```text
//!  FETCH_REQ (every tag) ──> driver completes it with a request ──> iod[tag]
//!    read:  buffer from the core's DMA cache → bdev read → COMMIT_AND_FETCH
//!           (addr = buffer: the driver copies the data out while the
//!           commit is submitted, so the buffer goes back right after)
//!    write: NEED_GET_DATA (addr = buffer) → the driver copies the data in →
//!           bdev write (FUA kept) → COMMIT_AND_FETCH → buffer back
//!    flush / discard / write-zeroes: the bdev's Flush / Unmap / WriteZeroes
//!  STOP_DEV ──> the driver ends every fetch with ABORT ──> queue closes
//! ```
//!
//! The driver copies between the request's pages and the DMA buffer the
//! bdev then uses in place: the one copy the kernel's interface leaves
//! (zero-copy needs kernel 6.15's `UBLK_F_SUPPORT_ZERO_COPY`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bdev::{BdevChannel, BdevError, BdevIo, Desc, IoStatus, IoType};
use dma::DmaBuf;
use io_uring::{IoUring, opcode, types};
use reactor::PollStatus;

use super::sys::{self, IoCmd, IoDesc};

/// What one queue needs to start, from the thread that set the device up.
pub struct Setup {
    /// The device number.
    pub dev_id: u32,
    /// This queue.
    pub q_id: u16,
    /// Tags.
    pub depth: u16,
    /// The open `/dev/ublkcN` (one open per device: the driver refuses a
    /// second).
    pub cdev: Arc<OwnedFd>,
    /// The exported bdev.
    pub desc: Arc<Desc>,
    /// What the queue tells the device's owner.
    pub shared: Arc<Shared>,
}

/// A queue's state, seen from any thread.
#[derive(Default)]
pub struct Shared {
    /// Set to make the queue close now (device never started, or its
    /// stop failed): the ring is dropped with the fetches in it.
    pub quit: AtomicBool,
    /// 0 while it runs, [`CLOSED`] once the queue let go of everything.
    state: AtomicU8,
    /// Why it closed, when not by the driver's abort.
    pub error: Mutex<Option<String>>,
}

/// The queue's ring, mapping and channel are gone.
pub const CLOSED: u8 = 1;

impl Shared {
    /// Whether the queue has closed.
    pub fn closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }
}

/// Where a tag stands.
enum Tag {
    /// Its fetch (or commit-and-fetch) is with the driver.
    Fetching,
    /// A write's NEED_GET_DATA is with the driver (its buffer being
    /// filled).
    GettingData(DmaBuf),
    /// Its request waits for room in the bdev channel.
    Waiting(Option<DmaBuf>),
    /// Its request is with the bdev.
    InBdev,
    /// The driver aborted it: the queue is going away.
    Gone,
}

/// The operations served.
enum Op {
    Read,
    Write,
    Flush,
    Discard,
    Zeroes,
}

/// Completions from the bdev, drained by the poller.
struct Done {
    ready: RefCell<VecDeque<(u16, IoStatus, Option<DmaBuf>)>>,
}

/// The context word of a tag's bdev I/O (one leaked reference per I/O in
/// flight).
struct TagCtx {
    done: Rc<Done>,
    tag: u16,
}

fn io_done(io: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is an `Rc<TagCtx>` leaked by `Queue::submit_bdev` for
    // this I/O; it is rebuilt exactly once, here.
    let t = unsafe { Rc::from_raw(io.ctx() as *const TagCtx) };
    t.done
        .ready
        .borrow_mut()
        .push_back((t.tag, status, io.take_buf()));
}

/// The queue's read-only mapping of the driver's descriptors.
struct DescMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl DescMap {
    fn new(cdev: &OwnedFd, q_id: u16, depth: u16) -> std::io::Result<DescMap> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = sys::desc_map_len(depth, page);
        // SAFETY: a new shared read-only mapping of the char device at the
        // queue's offset; the kernel checks offset and length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                cdev.as_raw_fd(),
                sys::desc_map_offset(q_id, page),
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DescMap { ptr, len })
    }

    fn get(&self, tag: u16) -> IoDesc {
        let at = usize::from(tag) * sys::IO_DESC_LEN;
        let mut b = [0u8; sys::IO_DESC_LEN];
        if at + sys::IO_DESC_LEN <= self.len {
            // SAFETY: in bounds of the live mapping; the driver wrote the
            // descriptor before completing the tag's fetch, which we saw.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (self.ptr as *const u8).add(at),
                    b.as_mut_ptr(),
                    sys::IO_DESC_LEN,
                )
            };
        }
        IoDesc::decode(&b)
    }
}

impl Drop for DescMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// An enter that may be tried again next turn (interrupted, or the kernel
/// short of something for now).
fn later(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// A queue being served (owned by its poller).
struct Queue {
    dev_id: u32,
    q_id: u16,
    name: String,
    ring: IoUring,
    cdev: Arc<OwnedFd>,
    map: DescMap,
    ch: BdevChannel,
    _desc: Arc<Desc>,
    shared: Arc<Shared>,
    tags: Vec<Tag>,
    ctxs: Vec<Rc<TagCtx>>,
    done: Rc<Done>,
    /// Tags whose request waits for the channel.
    waiting: VecDeque<u16>,
    /// SQEs not yet handed to the kernel.
    unsubmitted: Vec<io_uring::squeue::Entry>,
    /// Read buffers the driver copies out of during the next submit.
    after_submit: Vec<DmaBuf>,
    /// The address a read commit names when there is no data (an error):
    /// the driver refuses a read commit without one, and copies nothing
    /// for an error.
    scratch: Box<[u8]>,
    /// The driver's completions of one turn (kept for its capacity).
    cqes: Vec<(u16, i32)>,
    /// I/O with the bdev.
    in_bdev: usize,
    gone: usize,
    block_shift: u32,
    num_blocks: u64,
}

/// Builds the queue on this reactor, hands every tag to the driver and
/// starts its poller.
///
/// # Errors
/// A positive errno and what failed.
pub fn start(s: Setup) -> Result<(), (i32, String)> {
    let name = format!("ublk{}q{}", s.dev_id, s.q_id);
    let sys_err = |what: &str, e: std::io::Error| {
        (
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("queue {}: {what}: {e}", s.q_id),
        )
    };
    // The setup ublk servers use (the kernel's own kublk, ublksrv): one
    // issuer, the driver's completions run as deferred task work when this
    // poller enters the ring (flagged in the SQ flags, so an idle queue
    // costs no system call).
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(u32::from(s.depth).next_power_of_two())
        .map_err(|e| sys_err("io_uring", e))?;
    let map = DescMap::new(&s.cdev, s.q_id, s.depth)
        .map_err(|e| sys_err("mapping its descriptors", e))?;
    let ch = s
        .desc
        .get_io_channel()
        .map_err(|e| (libc::ENOMEM, format!("queue {}: bdev channel: {e}", s.q_id)))?;
    let done = Rc::new(Done {
        ready: RefCell::new(VecDeque::with_capacity(usize::from(s.depth))),
    });
    let bs = ch.block_size();
    let mut q = Queue {
        dev_id: s.dev_id,
        q_id: s.q_id,
        name,
        ring,
        map,
        block_shift: bs.trailing_zeros(),
        num_blocks: s.desc.bdev().num_blocks(),
        ch,
        cdev: s.cdev,
        _desc: s.desc,
        shared: s.shared,
        tags: (0..s.depth).map(|_| Tag::Fetching).collect(),
        ctxs: (0..s.depth)
            .map(|tag| {
                Rc::new(TagCtx {
                    done: done.clone(),
                    tag,
                })
            })
            .collect(),
        done,
        waiting: VecDeque::new(),
        unsubmitted: Vec::with_capacity(usize::from(s.depth)),
        after_submit: Vec::new(),
        scratch: vec![0u8; 4096].into_boxed_slice(),
        cqes: Vec::with_capacity(usize::from(s.depth)),
        in_bdev: 0,
        gone: 0,
    };
    for tag in 0..s.depth {
        q.push(sys::io_cmd::FETCH_REQ, tag, 0, 0);
    }
    q.submit().map_err(|e| sys_err("fetching", e))?;
    let closing = Cell::new(false);
    let mut q = Some(q);
    reactor::register_poller(format!("ublk{}q{}", s.dev_id, s.q_id), move || {
        let Some(queue) = q.as_mut() else {
            return PollStatus::Idle;
        };
        let busy = queue.poll();
        if queue.finished() || closing.get() {
            closing.set(true);
            if queue.in_bdev == 0 {
                if let Some(queue) = q.take() {
                    let failed = queue.failed();
                    let dev_id = queue.dev_id;
                    queue.close();
                    if failed {
                        // The device cannot be served any more: stop it
                        // rather than leave its I/O waiting.
                        super::stop_in_background(dev_id);
                    }
                }
                if let Some(p) = reactor::current_poller() {
                    p.unregister();
                }
            }
        }
        PollStatus::from(busy)
    });
    Ok(())
}

impl Queue {
    fn push(&mut self, op: u32, tag: u16, result: i32, addr: u64) {
        let cmd = IoCmd {
            q_id: self.q_id,
            tag,
            result,
            addr,
        };
        let sqe = opcode::UringCmd16::new(types::Fd(self.cdev.as_raw_fd()), op)
            .cmd(cmd.encode())
            .build()
            .user_data(u64::from(tag));
        self.unsubmitted.push(sqe);
    }

    /// Hands the queued commands to the kernel.
    fn submit(&mut self) -> std::io::Result<()> {
        while !self.unsubmitted.is_empty() {
            {
                let mut sq = self.ring.submission();
                let room = sq.capacity() - sq.len();
                let n = room.min(self.unsubmitted.len());
                // SAFETY: the entries name our char device; the buffers
                // they carry (reads' and NEED_GET_DATA's) stay alive: a
                // read's until this submit returned (the driver copies
                // during it), a write's in the tag until its data came.
                unsafe {
                    sq.push_multiple(&self.unsubmitted[..n])
                        .map_err(|_| std::io::Error::other("submission queue full"))?;
                }
                self.unsubmitted.drain(..n);
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The kernel is short of something: the rest waits for
                // the next turn.
                Err(e) if later(&e) => break,
                Err(e) => return Err(e),
            }
        }
        // Everything pushed is in the kernel only once the SQ is empty.
        if self.ring.submission().is_empty() {
            for b in self.after_submit.drain(..) {
                self.ch.free_buf(b);
            }
        } else if let Err(e) = self.ring.submit()
            && e.raw_os_error() != Some(libc::EINTR)
        {
            return Err(e);
        }
        Ok(())
    }

    /// Whether the queue ended by a failure of its own.
    fn failed(&self) -> bool {
        self.shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn finished(&self) -> bool {
        self.gone == self.tags.len() || self.shared.quit.load(Ordering::Acquire)
    }

    /// One turn: completions from the driver and the bdev, then submits.
    fn poll(&mut self) -> bool {
        let mut busy = false;
        // The driver's completions (copied out first: serving one pushes
        // to the same ring).
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data() as u16, c.result())),
        );
        for &(tag, res) in &cqes {
            busy = true;
            self.driver_done(tag, res);
        }
        cqes.clear();
        self.cqes = cqes;
        // The bdev's.
        loop {
            let next = self.done.ready.borrow_mut().pop_front();
            let Some((tag, status, buf)) = next else {
                break;
            };
            busy = true;
            self.in_bdev -= 1;
            self.bdev_done(tag, status, buf);
        }
        // Requests that waited for the channel.
        while let Some(&tag) = self.waiting.front() {
            if self.ch.outstanding() >= self.ch.pool_size() {
                break;
            }
            self.waiting.pop_front();
            busy = true;
            let buf = match std::mem::replace(&mut self.tags[usize::from(tag)], Tag::InBdev) {
                Tag::Waiting(b) => b,
                other => {
                    self.tags[usize::from(tag)] = other;
                    continue;
                }
            };
            self.submit_bdev(tag, buf);
        }
        // One enter per turn: it hands over what is queued and, when the
        // SQ flags say so, runs the driver's deferred completions (the
        // crate adds GETEVENTS for them); those are reaped next turn.
        let taskrun = self.ring.submission().taskrun();
        if taskrun && self.unsubmitted.is_empty() && self.after_submit.is_empty() {
            busy = true;
            if let Err(e) = self.ring.submit()
                && !later(&e)
            {
                log::error!("{}: running the driver's completions: {e}", self.name);
            }
        } else if !self.unsubmitted.is_empty() || !self.after_submit.is_empty() {
            busy = true;
            if let Err(e) = self.submit() {
                log::error!(
                    "{}: submitting to the driver: {e}; closing the queue",
                    self.name
                );
                *self.shared.error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("submitting to the driver: {e}"));
                self.shared.quit.store(true, Ordering::Release);
            }
        }
        busy
    }

    fn driver_done(&mut self, tag: u16, res: i32) {
        let Some(state) = self.tags.get_mut(usize::from(tag)) else {
            log::warn!("{}: completion for unknown tag {tag}", self.name);
            return;
        };
        match std::mem::replace(state, Tag::Fetching) {
            Tag::GettingData(buf) if res == sys::IO_RES_OK => {
                // The write's data is in.
                self.dispatch(tag, Some(buf));
            }
            Tag::GettingData(buf) => {
                self.ch.free_buf(buf);
                self.driver_error(tag, res);
            }
            Tag::Fetching if res == sys::IO_RES_OK => self.dispatch(tag, None),
            Tag::Fetching if res == sys::IO_RES_NEED_GET_DATA => {
                let d = self.map.get(tag);
                let len = (d.nr_sectors as usize) << 9;
                match self.ch.alloc_buf(len.max(512)) {
                    Ok(buf) => {
                        let addr = buf.as_ptr() as u64;
                        self.tags[usize::from(tag)] = Tag::GettingData(buf);
                        self.push(sys::io_cmd::NEED_GET_DATA, tag, 0, addr);
                    }
                    Err(e) => {
                        log::warn!("{}: tag {tag}: no buffer for a write: {e}", self.name);
                        self.commit(tag, -libc::ENOMEM, 0);
                    }
                }
            }
            Tag::Fetching => self.driver_error(tag, res),
            other => {
                log::warn!("{}: tag {tag}: unexpected completion {res}", self.name);
                self.tags[usize::from(tag)] = other;
            }
        }
    }

    fn driver_error(&mut self, tag: u16, res: i32) {
        if res != sys::IO_RES_ABORT {
            let e = std::io::Error::from_raw_os_error(-res);
            log::error!(
                "{}: tag {tag}: the driver refused a command: {e}",
                self.name
            );
            self.shared
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| format!("tag {tag}: the driver refused a command: {e}"));
        }
        self.tags[usize::from(tag)] = Tag::Gone;
        self.gone += 1;
    }

    /// Serves the request in the tag's descriptor (`buf`: a write's data).
    fn dispatch(&mut self, tag: u16, buf: Option<DmaBuf>) {
        if self.ch.outstanding() >= self.ch.pool_size() {
            self.tags[usize::from(tag)] = Tag::Waiting(buf);
            self.waiting.push_back(tag);
            return;
        }
        self.tags[usize::from(tag)] = Tag::InBdev;
        self.submit_bdev(tag, buf);
    }

    fn submit_bdev(&mut self, tag: u16, buf: Option<DmaBuf>) {
        let d = self.map.get(tag);
        let len = (d.nr_sectors as usize) << 9;
        let shift = self.block_shift;
        let mask = (1u64 << shift) - 1;
        // A flush names no range (the block layer leaves its sector at
        // all ones); the others must fall on the bdev's blocks.
        let (offset, blocks) = if d.op() == sys::op::FLUSH {
            (0, self.num_blocks)
        } else {
            match d.start_sector.checked_mul(512) {
                Some(at) if at & mask == 0 && (len as u64) & mask == 0 => {
                    (at >> shift, (len as u64) >> shift)
                }
                _ => {
                    if let Some(b) = buf {
                        self.ch.free_buf(b);
                    }
                    return self.commit(tag, -libc::EINVAL, 0);
                }
            }
        };
        let op = match d.op() {
            sys::op::READ => Op::Read,
            sys::op::WRITE => Op::Write,
            sys::op::FLUSH => Op::Flush,
            sys::op::DISCARD => Op::Discard,
            sys::op::WRITE_ZEROES => Op::Zeroes,
            _ => {
                if let Some(b) = buf {
                    self.ch.free_buf(b);
                }
                return self.commit(tag, -libc::EOPNOTSUPP, 0);
            }
        };
        let ctx = Rc::into_raw(self.ctxs[usize::from(tag)].clone()) as usize;
        let ch = &self.ch;
        let res: Result<(), BdevError> = match op {
            Op::Read => match ch.alloc_buf(len.max(512)) {
                Ok(b) => ch.read(b, offset, blocks, io_done, ctx).map_err(|(e, b)| {
                    ch.free_buf(b);
                    e
                }),
                Err(e) => Err(e),
            },
            Op::Write => match buf {
                Some(b) => {
                    let fua = d.op_flags & sys::IO_F_FUA != 0;
                    ch.write(b, offset, blocks, fua, io_done, ctx)
                        .map_err(|(e, b)| {
                            ch.free_buf(b);
                            e
                        })
                }
                None => Err(BdevError::NoBuffer {
                    len,
                    reason: "a write came without its data".into(),
                }),
            },
            Op::Flush => ch.submit_nodata(IoType::Flush, offset, blocks, io_done, ctx),
            Op::Discard => ch.submit_nodata(IoType::Unmap, offset, blocks, io_done, ctx),
            Op::Zeroes => ch.submit_nodata(IoType::WriteZeroes, offset, blocks, io_done, ctx),
        };
        match res {
            Ok(()) => self.in_bdev += 1,
            Err(e) => {
                // SAFETY: the I/O did not start: the reference leaked for
                // it is ours again.
                drop(unsafe { Rc::from_raw(ctx as *const TagCtx) });
                let errno = match e {
                    BdevError::OutOfRange { .. } | BdevError::Invalid { .. } => -libc::EINVAL,
                    BdevError::ReadOnly(_) => -libc::EROFS,
                    BdevError::NoMem(_) | BdevError::NoBuffer { .. } => -libc::ENOMEM,
                    _ => -libc::EIO,
                };
                log::debug!("{}: tag {tag}: {e}", self.name);
                self.commit(tag, errno, 0);
            }
        }
    }

    fn bdev_done(&mut self, tag: u16, status: IoStatus, buf: Option<DmaBuf>) {
        let d = self.map.get(tag);
        // The byte count for data (at most the device's largest request);
        // 0 for the others, whose size the driver ignores (a discard's may
        // exceed an i32).
        let done = if matches!(d.op(), sys::op::READ | sys::op::WRITE) {
            i32::try_from(u64::from(d.nr_sectors) << 9).unwrap_or(i32::MAX)
        } else {
            0
        };
        let res = match status {
            IoStatus::Success => done,
            IoStatus::NotSupported => -libc::EOPNOTSUPP,
            IoStatus::NoMem => -libc::ENOMEM,
            _ => -libc::EIO,
        };
        match buf {
            Some(b) if d.op() == sys::op::READ => {
                let addr = b.as_ptr() as u64;
                // The driver copies out of it while the commit is
                // submitted; back to the cache after that.
                self.after_submit.push(b);
                self.commit(tag, res, addr);
            }
            Some(b) => {
                self.ch.free_buf(b);
                self.commit(tag, res, 0);
            }
            None => self.commit(tag, res, 0),
        }
    }

    /// Completes the tag's request with `res` and fetches the next. A
    /// commit always names a buffer: the driver refuses a read's without
    /// one (and would leave the request hanging).
    fn commit(&mut self, tag: u16, res: i32, addr: u64) {
        let addr = if addr == 0 {
            self.scratch.as_ptr() as u64
        } else {
            addr
        };
        self.tags[usize::from(tag)] = Tag::Fetching;
        self.push(sys::io_cmd::COMMIT_AND_FETCH_REQ, tag, res, addr);
    }

    /// Lets go of everything (the bdev has nothing of ours in flight):
    /// the ring (its fetches cancelled with it), the mapping, the channel,
    /// this queue's hold on the char device; then says so.
    fn close(self) {
        let Queue {
            name,
            mut ring,
            map,
            ch,
            cdev,
            shared,
            tags,
            after_submit,
            ..
        } = self;
        let submitted = ring.submission().is_empty();
        for t in tags {
            match t {
                // The driver may still copy into it: never reused.
                Tag::GettingData(b) => std::mem::forget(b),
                Tag::Waiting(Some(b)) => ch.free_buf(b),
                _ => {}
            }
        }
        for b in after_submit {
            if submitted {
                ch.free_buf(b);
            } else {
                std::mem::forget(b);
            }
        }
        drop(ring);
        drop(map);
        drop(ch);
        drop(cdev);
        shared.state.store(CLOSED, Ordering::Release);
        log::debug!("{name}: closed");
    }
}
