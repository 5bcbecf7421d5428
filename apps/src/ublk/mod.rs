//! The ublk export: bdevs as kernel block devices `/dev/ublkbN`, served
//! through the kernel's ublk driver (`ublk_drv`, Linux 6.0+; recovery 6.4+)
//! by io_uring `URING_CMD`s on the reactors, one ublk queue per core.
//!
//! ```text
//!  ublk_create_target ──> /dev/ublk-control opened (ctrl), cores chosen
//!  ublk_start_disk ─┬─ ADD_DEV, SET_PARAMS        (RPC thread, ctrl ring)
//!                   ├─ open /dev/ublkcN; per queue on its core: ring, mmap
//!                   │  of the descriptors, bdev channel, FETCH every tag,
//!                   │  poller (queue.rs)
//!                   └─ START_DEV ──> /dev/ublkbN (partitions read through
//!                                     the queues meanwhile)
//!  ublk_stop_disk ──> STOP_DEV (in-flight I/O served) → the driver aborts
//!                     every fetch → queues close → DEL_DEV
//!  SIGKILL ──> the driver quiesces the device (USER_RECOVERY): /dev/ublkbN
//!              stays, its I/O waits
//!  ublk_recover_disk ──> START_USER_RECOVERY (retried while the driver is
//!                        still quiescing) → queues as above →
//!                        END_USER_RECOVERY: the waiting I/O is reissued
//! ```
//!
//! Control commands run on the RPC connection's thread (the driver runs
//! them in an io_uring worker; START_DEV and STOP_DEV wait for I/O the
//! queues serve meanwhile), one at a time.

pub mod ctrl;
pub mod queue;
pub mod sys;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bdev::{BdevEvent, Desc, IoType};
use reactor::CoreId;

use self::ctrl::Control;
use self::sys::{DevInfo, Params};

/// Queues a disk may have at most (SPDK's limit).
pub const MAX_QUEUES: u32 = 32;
/// Tags a queue may have at most (SPDK's limit).
pub const MAX_QUEUE_DEPTH: u32 = 1024;
/// The default queue count (SPDK's).
pub const DEFAULT_QUEUES: u32 = 1;
/// The default depth (SPDK's).
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;
/// The largest request the driver sends (it splits bigger ones): the size
/// the core's DMA buffer cache serves without allocating.
pub const MAX_IO_BYTES: u32 = 128 << 10;
/// How long the driver may take to quiesce a device whose server died
/// (it notices within seconds) before `ublk_recover_disk` gives up.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How long the queues may take to close after STOP_DEV.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// A failed ublk operation: the errno SPDK answers with and what went
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UblkError {
    /// A positive errno.
    pub errno: i32,
    /// What failed and why.
    pub message: String,
}

fn err(errno: i32, message: impl Into<String>) -> UblkError {
    UblkError {
        errno,
        message: message.into(),
    }
}

fn io_err(what: impl std::fmt::Display, e: &std::io::Error) -> UblkError {
    err(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

/// The target: the open control device and the cores that serve queues.
struct Target {
    /// Set (under the disk registry's lock) by `destroy_target`: no disk
    /// starts any more.
    destroying: AtomicBool,
    cores: Vec<CoreId>,
    cpumask: Option<String>,
    ctrl: Mutex<Control>,
}

impl Target {
    fn ctrl(&self) -> MutexGuard<'_, Control> {
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A disk as the registry keeps it.
struct Disk {
    bdev_name: String,
    num_queues: u32,
    queue_depth: u32,
    /// Set once it serves (start or recovery done).
    running: Option<Running>,
    /// A stop is under way.
    stopping: bool,
}

/// What a serving disk holds.
struct Running {
    queues: Vec<Arc<queue::Shared>>,
    _desc: Arc<Desc>,
}

static TARGET: Mutex<Option<Arc<Target>>> = Mutex::new(None);
static DISKS: Mutex<BTreeMap<u32, Disk>> = Mutex::new(BTreeMap::new());

fn target() -> MutexGuard<'static, Option<Arc<Target>>> {
    TARGET.lock().unwrap_or_else(|p| p.into_inner())
}

fn disks() -> MutexGuard<'static, BTreeMap<u32, Disk>> {
    DISKS.lock().unwrap_or_else(|p| p.into_inner())
}

fn current_target() -> Result<Arc<Target>, UblkError> {
    target().clone().ok_or_else(|| {
        err(
            libc::ENODEV,
            "No such device: there is no ublk target (create it with ublk_create_target)",
        )
    })
}

/// Creates the target: opens `/dev/ublk-control` and picks the cores that
/// serve queues (`cpumask`, SPDK syntax; all reactor cores without it).
///
/// # Errors
/// EBUSY when a target exists, EINVAL for a mask that does not parse or
/// names a core the appliance does not run, ENOENT where the kernel has no
/// ublk driver.
pub fn create_target(all_cores: &[CoreId], cpumask: Option<&str>) -> Result<(), UblkError> {
    let mut t = target();
    if t.is_some() {
        return Err(err(
            libc::EBUSY,
            "Device or resource busy: the ublk target exists already",
        ));
    }
    let cores = match cpumask {
        None => all_cores.to_vec(),
        Some(m) => {
            let set = reactor::CpuSet::parse(m)
                .map_err(|e| err(libc::EINVAL, format!("Invalid argument: cpumask {m}: {e}")))?;
            if let Some(c) = set.cores().iter().find(|c| !all_cores.contains(c)) {
                return Err(err(
                    libc::EINVAL,
                    format!(
                        "Invalid argument: cpumask {m}: core {c} is not one of the appliance's ({all_cores:?})"
                    ),
                ));
            }
            set.cores().to_vec()
        }
    };
    let mut ctrl = Control::open().map_err(|e| {
        io_err(
            format_args!("cannot open {} (is ublk_drv loaded?)", sys::CONTROL_PATH),
            &e,
        )
    })?;
    match ctrl.features() {
        Ok(f) if f & sys::flags::USER_RECOVERY == 0 => {
            log::warn!("ublk: the driver cannot recover disks (features {f:#x})")
        }
        Ok(f) => log::debug!("ublk: driver features {f:#x}"),
        Err(e) => log::warn!("ublk: the driver does not list its features: {e}"),
    }
    *t = Some(Arc::new(Target {
        destroying: AtomicBool::new(false),
        cores,
        cpumask: cpumask.map(str::to_owned),
        ctrl: Mutex::new(ctrl),
    }));
    log::info!("ublk: target created");
    Ok(())
}

/// Stops every disk, then closes the control device.
///
/// # Errors
/// ENOENT when there is no target.
pub fn destroy_target() -> Result<(), UblkError> {
    let Some(t) = target().clone() else {
        return Err(err(
            libc::ENOENT,
            "No such file or directory: there is no ublk target",
        ));
    };
    let ids: Vec<u32> = {
        let d = disks();
        if t.destroying.swap(true, Ordering::AcqRel) {
            return Err(err(
                libc::EBUSY,
                "Device or resource busy: the ublk target is being destroyed",
            ));
        }
        d.keys().copied().collect()
    };
    for id in ids {
        // A start or recovery under way is waited for.
        stop_waiting(id);
    }
    *target() = None;
    log::info!("ublk: target destroyed");
    Ok(())
}

/// Stops every disk and the target (shutdown; errors logged).
pub fn stop_all() {
    if target().is_some()
        && let Err(e) = destroy_target()
    {
        log::warn!("ublk: {e}");
    }
}

/// What `ublk_get_disks` lists of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// The device number.
    pub id: u32,
    /// The exported bdev.
    pub bdev_name: String,
    /// Queues.
    pub num_queues: u32,
    /// Tags per queue.
    pub queue_depth: u32,
}

/// The disks that serve (or one).
pub fn list(id: Option<u32>) -> Vec<DiskInfo> {
    disks()
        .iter()
        .filter(|(i, d)| id.is_none_or(|x| x == **i) && d.running.is_some())
        .map(|(i, d)| DiskInfo {
            id: *i,
            bdev_name: d.bdev_name.clone(),
            num_queues: d.num_queues,
            queue_depth: d.queue_depth,
        })
        .collect()
}

/// The target's cpumask when it was given one (`None`: no target).
pub fn target_cpumask() -> Option<Option<String>> {
    target().as_ref().map(|t| t.cpumask.clone())
}

/// Holds an id in the registry while a start or recovery is under way;
/// removes it again unless [`Claim::keep`] was called.
struct Claim {
    id: u32,
    kept: bool,
}

impl Claim {
    fn new(
        t: &Target,
        id: u32,
        bdev_name: &str,
        num_queues: u32,
        queue_depth: u32,
    ) -> Result<Claim, UblkError> {
        let mut d = disks();
        if t.destroying.load(Ordering::Acquire) {
            return Err(err(
                libc::ENODEV,
                "No such device: the ublk target is being destroyed",
            ));
        }
        if d.contains_key(&id) {
            return Err(err(
                libc::EBUSY,
                format!("Device or resource busy: ublk {id} exists already"),
            ));
        }
        d.insert(
            id,
            Disk {
                bdev_name: bdev_name.to_owned(),
                num_queues,
                queue_depth,
                running: None,
                stopping: false,
            },
        );
        Ok(Claim { id, kept: false })
    }

    /// Keeps the id: the disk serves with `queues` over `desc`, as the
    /// driver described it in `info`.
    fn keep(mut self, queues: Queues, desc: Arc<Desc>, info: &DevInfo) {
        if let Some(d) = disks().get_mut(&self.id) {
            d.running = Some(Running {
                queues,
                _desc: desc,
            });
            d.num_queues = u32::from(info.nr_hw_queues);
            d.queue_depth = u32::from(info.queue_depth);
        }
        self.kept = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.kept {
            disks().remove(&self.id);
        }
    }
}

fn open_bdev(handle: &reactor::Handle, bdev_name: &str, id: u32) -> Result<Arc<Desc>, UblkError> {
    let name = bdev_name.to_owned();
    let core = handle.cores()[0];
    let opened = crate::methods::block_on(handle.spawn_on(core, move || async move {
        bdev::open(&name, true, move |n, ev| {
            if ev == BdevEvent::Remove {
                log::info!("ublk {id}: bdev {n} is going away: stopping the disk");
                stop_in_background(id);
            }
        })
    }))
    .map_err(|e| err(libc::EIO, format!("opening bdev {bdev_name}: {e}")))?;
    opened.map(Arc::new).map_err(|e| {
        err(
            libc::ENODEV,
            format!("No such device: bdev {bdev_name}: {e}"),
        )
    })
}

/// Stops disk `id` from a thread of its own (not a reactor: the stop
/// waits for the driver) because its bdev goes away (the bdev waits for
/// the disk's descriptor) or a queue failed; a start or recovery under way
/// is waited for.
pub(crate) fn stop_in_background(id: u32) {
    let _ = std::thread::Builder::new()
        .name(format!("ublk{id}-stop"))
        .spawn(move || stop_waiting(id));
}

/// Stops disk `id`, waiting (up to `RECOVERY_WAIT` and `CLOSE_WAIT`) for a
/// start or recovery of it to end first; errors logged.
fn stop_waiting(id: u32) {
    let deadline = Instant::now() + RECOVERY_WAIT + CLOSE_WAIT;
    loop {
        match stop_disk(id) {
            Ok(()) => return,
            Err(e) if e.errno == libc::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.errno == libc::ENODEV => return,
            Err(e) => {
                log::warn!("ublk {id}: stop: {e}");
                return;
            }
        }
    }
}

/// The driver parameters that describe `desc`'s bdev.
fn params_for(desc: &Desc) -> Params {
    let b = desc.bdev();
    let bs = b.block_size();
    let shift = bs.trailing_zeros() as u8;
    let mut attrs = 0;
    if b.io_type_supported(IoType::Flush) {
        attrs |= sys::attr::VOLATILE_CACHE | sys::attr::FUA;
    }
    let sectors = (b.num_blocks() * u64::from(bs)) >> 9;
    let most = u32::try_from(sectors).unwrap_or(u32::MAX).min(1 << 22);
    let (granularity, discard, zeroes) = (
        if b.io_type_supported(IoType::Unmap) || b.io_type_supported(IoType::WriteZeroes) {
            bs
        } else {
            0
        },
        if b.io_type_supported(IoType::Unmap) {
            most
        } else {
            0
        },
        if b.io_type_supported(IoType::WriteZeroes) {
            most
        } else {
            0
        },
    );
    Params {
        attrs,
        logical_bs_shift: shift,
        physical_bs_shift: shift.max(12),
        io_opt_shift: shift.max(12),
        io_min_shift: shift,
        max_sectors: MAX_IO_BYTES >> 9,
        dev_sectors: sectors,
        discard_granularity: granularity,
        max_discard_sectors: discard,
        max_write_zeroes_sectors: zeroes,
    }
}

/// Opens `/dev/ublkcN` (devtmpfs makes it as ADD_DEV returns; a moment's
/// grace for a slow udev).
fn open_cdev(id: u32) -> Result<OwnedFd, UblkError> {
    let path = format!("/dev/ublkc{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err(format_args!("opening {path}"), &e)),
        }
    }
}

/// The queues of a disk, as its owner watches them.
type Queues = Vec<Arc<queue::Shared>>;

/// Starts a queue per `q` on the target's cores, each fetching every tag.
/// Queues are dealt round-robin over the cores across disks (SPDK's way),
/// so single-queue disks spread too.
fn start_queues(
    handle: &reactor::Handle,
    t: &Target,
    id: u32,
    info: &DevInfo,
    cdev: &Arc<OwnedFd>,
    desc: &Arc<Desc>,
) -> Result<Queues, (UblkError, Queues)> {
    static NEXT_CORE: AtomicUsize = AtomicUsize::new(0);
    let first = NEXT_CORE.fetch_add(usize::from(info.nr_hw_queues), Ordering::Relaxed);
    let mut queues = Vec::new();
    for q in 0..info.nr_hw_queues {
        let shared = Arc::new(queue::Shared::default());
        let setup = queue::Setup {
            dev_id: id,
            q_id: q,
            depth: info.queue_depth,
            cdev: cdev.clone(),
            desc: desc.clone(),
            shared: shared.clone(),
        };
        let core = t.cores[(first + usize::from(q)) % t.cores.len()];
        let r = crate::methods::block_on(
            handle.spawn_on(core, move || async move { queue::start(setup) }),
        );
        match r {
            Ok(Ok(())) => queues.push(shared),
            Ok(Err((errno, why))) => return Err((err(errno, format!("ublk {id}: {why}")), queues)),
            Err(e) => {
                return Err((
                    err(libc::EIO, format!("ublk {id}: queue {q}: its reactor: {e}")),
                    queues,
                ));
            }
        }
    }
    Ok(queues)
}

/// Waits until every queue has closed (after the driver aborted their
/// fetches; told to quit after `CLOSE_WAIT`). False when one still holds
/// bdev I/O that never ended, `CLOSE_WAIT` after that: the device is then
/// left as it is (deleting it would wait for the queue's char device).
fn wait_closed(id: u32, queues: &[Arc<queue::Shared>]) -> bool {
    let mut deadline = Instant::now() + CLOSE_WAIT;
    let mut told = false;
    while !queues.iter().all(|q| q.closed()) {
        if Instant::now() > deadline {
            if told {
                log::error!(
                    "ublk {id}: a queue still has bdev I/O outstanding {CLOSE_WAIT:?} after it was told to close; the device is left in place"
                );
                return false;
            }
            log::warn!("ublk {id}: queues still open {CLOSE_WAIT:?} after the stop: closing them");
            for q in queues {
                q.quit.store(true, Ordering::Release);
            }
            told = true;
            deadline = Instant::now() + CLOSE_WAIT;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Undoes a start that failed after ADD_DEV: queues closed, device deleted.
fn abandon(t: &Target, id: u32, queues: Vec<Arc<queue::Shared>>, cdev: Option<Arc<OwnedFd>>) {
    for q in &queues {
        q.quit.store(true, Ordering::Release);
    }
    if !wait_closed(id, &queues) {
        return;
    }
    drop(cdev);
    if let Err(e) = t.ctrl().del_dev(id) {
        log::warn!("ublk {id}: deleting after a failed start: {e}");
    }
}

/// Exports `bdev_name` as `/dev/ublkb{id}` with `num_queues` queues of
/// `queue_depth` tags. Not on a reactor: it waits for the driver.
///
/// # Errors
/// ENODEV without a target or bdev, EBUSY for an id in use, EINVAL for a
/// count or depth out of range, the driver's errors otherwise.
pub fn start_disk(
    handle: &reactor::Handle,
    bdev_name: &str,
    id: u32,
    num_queues: u32,
    queue_depth: u32,
) -> Result<u32, UblkError> {
    let t = current_target()?;
    if num_queues == 0 || queue_depth == 0 {
        return Err(err(
            libc::EINVAL,
            format!(
                "Invalid argument: num_queues {num_queues}, queue_depth {queue_depth}: neither may be 0"
            ),
        ));
    }
    // As SPDK: above the limits is lowered to them, with a warning.
    if num_queues > MAX_QUEUES {
        log::warn!("ublk {id}: num_queues {num_queues} lowered to {MAX_QUEUES}");
    }
    if queue_depth > MAX_QUEUE_DEPTH {
        log::warn!("ublk {id}: queue_depth {queue_depth} lowered to {MAX_QUEUE_DEPTH}");
    }
    let num_queues = num_queues.min(MAX_QUEUES);
    let queue_depth = queue_depth.min(MAX_QUEUE_DEPTH);
    if id >= 1 << 20 {
        return Err(err(
            libc::EINVAL,
            format!("Invalid argument: ublk_id {id} is beyond the driver's range"),
        ));
    }
    let claim = Claim::new(&t, id, bdev_name, num_queues, queue_depth)?;
    let desc = open_bdev(handle, bdev_name, id)?;
    let params = params_for(&desc);
    let want = DevInfo {
        nr_hw_queues: num_queues as u16,
        queue_depth: queue_depth as u16,
        max_io_buf_bytes: MAX_IO_BYTES,
        dev_id: id,
        flags: sys::flags::NEED_GET_DATA
            | sys::flags::USER_RECOVERY
            | sys::flags::USER_RECOVERY_REISSUE
            | sys::flags::CMD_IOCTL_ENCODE,
        ..DevInfo::default()
    };
    let info = t.ctrl().add_dev(&want).map_err(|e| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            err(
                libc::EEXIST,
                format!(
                    "File exists: ublk {id} exists in the kernel already (left by an appliance that died? take it over with ublk_recover_disk)"
                ),
            )
        } else {
            io_err(format_args!("ublk {id}: adding the device"), &e)
        }
    })?;
    if u32::from(info.nr_hw_queues) < num_queues {
        log::warn!(
            "ublk {id}: the driver gives {} queues (one per CPU at most), not {num_queues}",
            info.nr_hw_queues
        );
    }
    if let Err(e) = t.ctrl().set_params(id, &params) {
        abandon(&t, id, Vec::new(), None);
        return Err(io_err(
            format_args!("ublk {id}: setting its parameters {params:?}"),
            &e,
        ));
    }
    let cdev = match open_cdev(id) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            abandon(&t, id, Vec::new(), None);
            return Err(e);
        }
    };
    let queues = match start_queues(handle, &t, id, &info, &cdev, &desc) {
        Ok(q) => q,
        Err((e, started)) => {
            abandon(&t, id, started, Some(cdev));
            return Err(e);
        }
    };
    drop(cdev);
    if let Err(e) = t.ctrl().start_dev(id, std::process::id()) {
        abandon(&t, id, queues, None);
        return Err(io_err(format_args!("ublk {id}: starting the device"), &e));
    }
    claim.keep(queues, desc, &info);
    log::info!(
        "ublk: /dev/ublkb{id} exports {bdev_name} ({} queues of {})",
        info.nr_hw_queues,
        info.queue_depth
    );
    Ok(id)
}

/// Stops and deletes `/dev/ublkb{id}`: I/O in flight is served, then the
/// device goes away. Not on a reactor.
///
/// # Errors
/// ENODEV for an unknown id, EBUSY when a start, stop or recovery of it is
/// under way.
pub fn stop_disk(id: u32) -> Result<(), UblkError> {
    let t = current_target()?;
    let running = {
        let mut d = disks();
        let disk = d
            .get_mut(&id)
            .ok_or_else(|| err(libc::ENODEV, format!("No such device: no ublk {id}")))?;
        if disk.stopping || disk.running.is_none() {
            return Err(err(
                libc::EBUSY,
                format!(
                    "Device or resource busy: ublk {id} is being started, stopped or recovered"
                ),
            ));
        }
        disk.stopping = true;
        disk.running.take()
    };
    let Some(running) = running else {
        return Ok(());
    };
    let stopped = t.ctrl().stop_dev(id);
    if let Err(e) = &stopped {
        log::warn!("ublk {id}: STOP_DEV: {e}; closing its queues");
        for q in &running.queues {
            q.quit.store(true, Ordering::Release);
        }
    }
    if !wait_closed(id, &running.queues) {
        // Kept in the registry, marked stopping: the id stays taken.
        return Err(err(
            libc::ETIMEDOUT,
            format!(
                "Connection timed out: ublk {id}: its bdev I/O did not end; the device is left in place"
            ),
        ));
    }
    let deleted = t.ctrl().del_dev(id);
    disks().remove(&id);
    drop(running);
    stopped.map_err(|e| io_err(format_args!("ublk {id}: stopping"), &e))?;
    deleted.map_err(|e| io_err(format_args!("ublk {id}: deleting"), &e))?;
    log::info!("ublk: /dev/ublkb{id} stopped");
    Ok(())
}

/// Takes over `/dev/ublkb{id}`, left by a server that died, serving it
/// from `bdev_name`: the block device never went away, and the I/O that
/// waited meanwhile is reissued. Not on a reactor.
///
/// # Errors
/// ENODEV without a target or such a device or bdev, EBUSY for an id in
/// use here, EINVAL for a device made without recovery or whose size
/// differs from the bdev's, ETIMEDOUT when the driver does not let go of
/// the old server in time.
pub fn recover_disk(handle: &reactor::Handle, bdev_name: &str, id: u32) -> Result<u32, UblkError> {
    let t = current_target()?;
    let claim = Claim::new(&t, id, bdev_name, 0, 0)?;
    let info = t
        .ctrl()
        .dev_info(id)
        .map_err(|e| io_err(format_args!("ublk {id}: reading its state"), &e))?;
    if info.flags & sys::flags::USER_RECOVERY == 0 {
        return Err(err(
            libc::EINVAL,
            format!("Invalid argument: ublk {id} was not made recoverable"),
        ));
    }
    // Served here: data fetched with NEED_GET_DATA, copied by the driver
    // (a device made by SPDK with user copy, or with zero copy, is not).
    if info.flags & (sys::flags::USER_COPY | sys::flags::SUPPORT_ZERO_COPY) != 0
        || info.flags & sys::flags::NEED_GET_DATA == 0
    {
        return Err(err(
            libc::EINVAL,
            format!(
                "Invalid argument: ublk {id} moves data in a way this server does not serve (flags {:#x}: user copy or zero copy, or no NEED_GET_DATA)",
                info.flags
            ),
        ));
    }
    if info.state == sys::state::DEAD {
        return Err(err(
            libc::EINVAL,
            format!(
                "Invalid argument: ublk {id} is not started (nothing to recover; use ublk_start_disk)"
            ),
        ));
    }
    let desc = open_bdev(handle, bdev_name, id)?;
    let have = params_for(&desc);
    let was = t
        .ctrl()
        .params(id)
        .map_err(|e| io_err(format_args!("ublk {id}: reading its parameters"), &e))?;
    if was.dev_sectors != have.dev_sectors || was.logical_bs_shift != have.logical_bs_shift {
        return Err(err(
            libc::EINVAL,
            format!(
                "Invalid argument: ublk {id} has {} sectors of {} bytes, bdev {bdev_name} {} of {}",
                was.dev_sectors,
                1u32 << was.logical_bs_shift,
                have.dev_sectors,
                1u32 << have.logical_bs_shift
            ),
        ));
    }
    // The driver lets go of the dead server within seconds.
    let deadline = Instant::now() + RECOVERY_WAIT;
    loop {
        match t.ctrl().start_recovery(id) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(io_err(
                    format_args!(
                        "ublk {id}: starting recovery (state {}: 2 is quiesced)",
                        info.state
                    ),
                    &e,
                ));
            }
        }
    }
    let cdev = Arc::new(open_cdev(id)?);
    let queues = match start_queues(handle, &t, id, &info, &cdev, &desc) {
        Ok(q) => q,
        Err((e, started)) => {
            for q in &started {
                q.quit.store(true, Ordering::Release);
            }
            wait_closed(id, &started);
            return Err(UblkError {
                message: format!(
                    "{}; the device is left mid-recovery (ublk_recover_disk may be tried again)",
                    e.message
                ),
                ..e
            });
        }
    };
    drop(cdev);
    if let Err(e) = t.ctrl().end_recovery(id, std::process::id()) {
        for q in &queues {
            q.quit.store(true, Ordering::Release);
        }
        wait_closed(id, &queues);
        return Err(io_err(
            format_args!(
                "ublk {id}: ending recovery (the device is left mid-recovery; ublk_recover_disk may be tried again)"
            ),
            &e,
        ));
    }
    claim.keep(queues, desc, &info);
    log::info!("ublk: /dev/ublkb{id} recovered, served from {bdev_name}");
    Ok(id)
}
