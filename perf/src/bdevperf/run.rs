//! The bdevperf run: bdevs from a config, one job per core per bdev, each
//! keeping `-q` I/Os in flight on its own channel over its share of the LBA
//! space; progress each second; the report at the end. With `-z`, runs
//! happen on `perform_tests` calls over JSON-RPC.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bdev::{BdevChannel, BdevEvent, BdevIo, IoStatus, IoType};
use dma::DmaBuf;

use apps::jsonrpc::RpcError;

use super::args::{self, Config, Source, Workload};
use crate::clock::{Clock, ClockChoice};
use crate::json::{Json, obj};
use crate::latency::{LatencyStats, PERCENTILES};
use crate::pattern;
use crate::report::{Report, Row, WorkerResult};
use crate::rng::{XorShift64, splitmix64};

/// Set (from a signal handler) to end the run early.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Rows (bdev, core) and the total. In the rows, `device` is the bdev
    /// and `nsid` is 0.
    pub report: Report,
    /// Notes (unsupported resets or flushes, first mismatches).
    pub notes: Vec<String>,
    /// Why the run failed (I/O errors, mismatches), if it did.
    pub failure: Option<String>,
}

/// Why a run could not be made.
#[derive(Debug)]
pub enum RunError {
    /// A bad combination of options (exit 2).
    Usage(String),
    /// Setup failed (exit 1).
    Setup(String),
}

struct Slot {
    job: *mut Job,
    start: u64,
    lba: u64,
    /// An I/O of this slot is in the layer's hands: a completion that finds
    /// it clear is a second completion of the same I/O (counted, a
    /// failure of the run).
    in_flight: bool,
}

struct Job {
    ch: *const BdevChannel,
    workload: Workload,
    read_percent: u64,
    blocks_per_io: u64,
    block_size: usize,
    first_unit: u64,
    units: u64,
    next_unit: u64,
    rng: XorShift64,
    clock: Clock,
    /// The layer measures each I/O's latency (`BdevIo::latency_ns`).
    layer_latency: bool,
    tag: u64,
    stop: bool,
    counting: bool,
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    aborted: u64,
    verified: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
    resets: u64,
    resets_unsupported: u64,
    completed_twice: u64,
    latency: LatencyStats,
    progress: Arc<AtomicU64>,
}

impl Job {
    fn next_lba(&mut self) -> u64 {
        let u = if self.workload.is_random() {
            self.rng.below(self.units)
        } else {
            let u = self.next_unit;
            self.next_unit = (u + 1) % self.units;
            u
        };
        (self.first_unit + u) * self.blocks_per_io
    }
}

/// Submits the next I/O of `slot`. Returns false if it could not.
fn submit(slot: &mut Slot, job: &mut Job, buf: Option<DmaBuf>) -> bool {
    // SAFETY: the channel outlives every I/O of the job (the task waits for
    // them before dropping it).
    let ch = unsafe { &*job.ch };
    let lba = job.next_lba();
    slot.lba = lba;
    let ctx = slot as *mut Slot as usize;
    let n = job.blocks_per_io;
    if !job.layer_latency {
        slot.start = job.clock.now();
    }
    let r = match job.workload {
        Workload::Flush => ch
            .submit_nodata(IoType::Flush, lba, n, done, ctx)
            .map_err(|e| e.to_string()),
        w => {
            let mut buf = buf.expect("data workloads carry a buffer");
            let write = match w {
                Workload::Write | Workload::RandWrite | Workload::Verify => true,
                Workload::Rw | Workload::RandRw => job.rng.below(100) >= job.read_percent,
                _ => false,
            };
            if write {
                if w == Workload::Verify {
                    // SAFETY: no I/O is in flight on this buffer.
                    let b = unsafe { buf.as_mut_slice() };
                    pattern::fill(b, job.block_size, lba, job.tag);
                }
                ch.write(buf, lba, n, false, done, ctx)
            } else {
                ch.read(buf, lba, n, done, ctx)
            }
            .map_err(|(e, _)| e.to_string())
        }
    };
    match r {
        Ok(()) => {
            slot.in_flight = true;
            true
        }
        Err(_) => {
            job.errors += 1;
            false
        }
    }
}

fn done(io: &mut BdevIo, st: IoStatus) {
    // SAFETY: ctx is a slot of a live job (the job waits for its I/Os);
    // callbacks run one at a time on the job's core, and the job's task
    // holds no reference across the yields during which they run.
    let slot = unsafe { &mut *(io.ctx() as *mut Slot) };
    // SAFETY: as above.
    let job = unsafe { &mut *slot.job };
    if !slot.in_flight {
        job.completed_twice += 1;
        return;
    }
    slot.in_flight = false;
    let ty = io.io_type();
    let mut buf = io.take_buf();
    if st.is_success() {
        if job.counting {
            // The layer's own measure when it keeps one (one clock read per
            // I/O in all), else this tool's.
            let ns = io.latency_ns().unwrap_or_else(|| {
                job.clock
                    .ticks_to_ns(job.clock.now().saturating_sub(slot.start))
            });
            job.latency.record(ns);
            job.ios += 1;
            // Written by this core alone: a plain store, no locked add.
            let p = &job.progress;
            p.store(p.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            match ty {
                IoType::Read => job.reads += 1,
                IoType::Write => job.writes += 1,
                _ => {}
            }
        }
        if job.workload == Workload::Verify {
            let b = buf.as_mut().expect("verify I/Os carry a buffer");
            if ty == IoType::Write {
                // Read back what was just written, into a scrubbed buffer.
                b.fill(0);
                let b = buf.take().expect("buffer");
                if !job.layer_latency {
                    slot.start = job.clock.now();
                }
                // SAFETY: see above.
                let ch = unsafe { &*job.ch };
                let ctx = slot as *mut Slot as usize;
                if ch.read(b, slot.lba, job.blocks_per_io, done, ctx).is_err() {
                    job.errors += 1;
                } else {
                    slot.in_flight = true;
                }
                return;
            }
            // SAFETY: the read is complete; nothing else touches the buffer.
            let data = unsafe { b.as_slice() };
            job.verified += 1;
            let len = job.blocks_per_io as usize * job.block_size;
            if let Err(m) = pattern::check(&data[..len], job.block_size, slot.lba, job.tag) {
                job.mismatches += 1;
                job.first_mismatch.get_or_insert_with(|| m.to_string());
            }
        }
    } else if st == IoStatus::Aborted && job.workload == Workload::Reset {
        job.aborted += 1;
    } else {
        job.errors += 1;
    }
    if job.stop || STOP.load(Ordering::Relaxed) {
        return;
    }
    submit(slot, job, buf);
}

fn reset_done(_io: &mut BdevIo, st: IoStatus) {
    // SAFETY: ctx is the live job (see `done`).
    let job = unsafe { &mut *(_io.ctx() as *mut Job) };
    match st {
        IoStatus::Success => job.resets += 1,
        IoStatus::NotSupported => job.resets_unsupported += 1,
        _ => job.errors += 1,
    }
}

struct JobOut {
    result: WorkerResult,
    notes: Vec<String>,
}

async fn job(
    name: String,
    core: usize,
    index: u64,
    cores: u64,
    cfg: Config,
    progress: Arc<AtomicU64>,
) -> Result<JobOut, String> {
    let w = cfg.workload;
    let desc = bdev::open(&name, w.writes(), |_: &str, _: BdevEvent| {})
        .map_err(|e| format!("{name}: open: {e}"))?;
    let ch = desc
        .get_io_channel()
        .map_err(|e| format!("{name}: channel: {e}"))?;
    let bd = desc.bdev().clone();
    let bs = bd.block_size() as usize;
    let mut notes = Vec::new();
    if !cfg.io_size.is_multiple_of(bs) {
        return Err(format!(
            "{name}: -o {} is not a multiple of the block size {bs}",
            cfg.io_size
        ));
    }
    let per_io = (cfg.io_size / bs) as u64;
    let total_units = bd.num_blocks() / per_io;
    let share = total_units / cores;
    if share == 0 {
        return Err(format!(
            "{name}: too small for -o {} on {cores} cores",
            cfg.io_size
        ));
    }
    let clock = Clock::choose(ClockChoice::Auto).unwrap_or_else(|_| Clock::os());
    let mut skip = false;
    if w == Workload::Flush && !bd.io_type_supported(IoType::Flush) {
        notes.push(format!(
            "{name} core {core}: flush NOT SUPPORTED: job skipped"
        ));
        skip = true;
    }
    if w == Workload::Reset && !bd.io_type_supported(IoType::Reset) {
        notes.push(format!(
            "{name} core {core}: reset NOT SUPPORTED: reads only"
        ));
    }
    let job = Box::into_raw(Box::new(Job {
        ch: &ch as *const BdevChannel,
        workload: w,
        read_percent: cfg.read_percent as u64,
        blocks_per_io: per_io,
        block_size: bs,
        first_unit: index * share,
        units: share,
        next_unit: 0,
        rng: XorShift64::new(cfg.seed ^ splitmix64(index + 1) ^ (core as u64).rotate_left(17)),
        clock,
        layer_latency: bdev::latency_tracking(),
        tag: splitmix64(cfg.seed) ^ index,
        stop: false,
        counting: true,
        ios: 0,
        reads: 0,
        writes: 0,
        errors: 0,
        aborted: 0,
        verified: 0,
        mismatches: 0,
        first_mismatch: None,
        resets: 0,
        resets_unsupported: 0,
        completed_twice: 0,
        latency: LatencyStats::new(),
        progress,
    }));
    let mut slots: Vec<Box<Slot>> = (0..cfg.depth)
        .map(|_| {
            Box::new(Slot {
                job,
                start: 0,
                lba: 0,
                in_flight: false,
            })
        })
        .collect();
    let mem = bdev::memory();
    let t0 = clock.now();
    let dur = clock.ns_to_ticks((cfg.time_s * 1e9) as u64);
    let sec = clock.ns_to_ticks(1_000_000_000);
    let mut next_reset = t0 + sec;
    if !skip {
        for s in slots.iter_mut() {
            let buf = if w == Workload::Flush {
                None
            } else {
                Some(
                    mem.alloc(cfg.io_size, 4096)
                        .map_err(|e| format!("{name}: buffer: {e}"))?,
                )
            };
            // SAFETY: the job is live; no callback runs during this loop
            // (completions inside a submission are deferred).
            let j = unsafe { &mut *job };
            submit(s, j, buf);
        }
    }
    let end = loop {
        reactor::yield_now().await;
        let now = clock.now();
        if now.saturating_sub(t0) >= dur || STOP.load(Ordering::Relaxed) {
            break now;
        }
        if w == Workload::Reset && now >= next_reset {
            next_reset += sec;
            if bd.io_type_supported(IoType::Reset)
                && ch
                    .submit_nodata(IoType::Reset, 0, 0, reset_done, job as usize)
                    .is_err()
            {
                // SAFETY: as above.
                unsafe { (*job).errors += 1 };
            }
        }
    };
    {
        // SAFETY: as above.
        let j = unsafe { &mut *job };
        j.stop = true;
        j.counting = false;
    }
    while ch.outstanding() > 0 {
        reactor::yield_now().await;
    }
    // SAFETY: no I/O is left, so no callback can reach the job or its slots.
    let j = unsafe { Box::from_raw(job) };
    drop(slots);
    drop(ch);
    drop(desc);
    if let Some(m) = &j.first_mismatch {
        notes.push(format!("{name} core {core}: first mismatch: {m}"));
    }
    if j.completed_twice > 0 {
        return Err(format!(
            "{name} core {core}: {} I/Os completed twice",
            j.completed_twice
        ));
    }
    if w == Workload::Reset {
        notes.push(format!(
            "{name} core {core}: {} resets done, {} NOT SUPPORTED, {} I/Os aborted by them",
            j.resets, j.resets_unsupported, j.aborted
        ));
    }
    Ok(JobOut {
        result: WorkerResult {
            device: name,
            nsid: 0,
            core,
            io_size: cfg.io_size,
            ios: j.ios,
            reads: j.reads,
            writes: j.writes,
            errors: j.errors,
            verified: j.verified,
            mismatches: j.mismatches,
            elapsed_ns: clock.ticks_to_ns(end.saturating_sub(t0)),
            busy_ns: 0,
            batches: 0,
            latency: j.latency.clone(),
            queue: None,
        },
        notes,
    })
}

/// The bdevs a run uses: `-T`, or every bdev nobody claimed.
pub fn targets(cfg: &Config) -> Result<Vec<String>, String> {
    match &cfg.target {
        Some(t) => match bdev::get(t) {
            Some(b) => Ok(vec![b.name().to_owned()]),
            None => Err(format!("-T {t:?}: no such bdev")),
        },
        None => {
            let v: Vec<String> = bdev::list()
                .iter()
                .filter(|b| b.claimed_by().is_none())
                .map(|b| b.name().to_owned())
                .collect();
            if v.is_empty() {
                Err("no bdev to run on".into())
            } else {
                Ok(v)
            }
        }
    }
}

/// Builds the bdevs of `cfg.source` (the runtime must be set up).
///
/// # Errors
/// A description of what failed.
pub fn build_bdevs(cfg: &Config, rt: &reactor::Runtime) -> Result<(), String> {
    match &cfg.source {
        Source::Json(path) => {
            // Reads of null bdevs leave this tool's buffers as they are, as
            // SPDK's null bdev does.
            bdev::modules::null::set_rpc_read_fill(bdev::modules::null::ReadFill::Untouched);
            let (tx, _rx) = std::sync::mpsc::channel();
            let ctx = apps::methods::Ctx::new(rt.handle(), tx, true);
            apps::config::load(&ctx, path, false).map_err(|e| format!("--json: {e}"))?;
            let core = rt.cores()[0];
            rt.block_on(core, || async { bdev::wait_for_examine().await })
                .map_err(|e| format!("examine: {e}"))
        }
        Source::Malloc(mib) => {
            let core = rt.cores()[0];
            let blocks = mib * (1 << 20) / 512;
            rt.block_on(core, move || async move {
                bdev::modules::malloc::create("Malloc0", blocks, 512, None).map(|_| ())
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("--malloc: {e}"))
        }
        Source::Rpc => {
            // Null bdevs made over RPC read as SPDK's: buffers untouched.
            bdev::modules::null::set_rpc_read_fill(bdev::modules::null::ReadFill::Untouched);
            Ok(())
        }
        Source::Null(mib) => {
            let core = rt.cores()[0];
            let blocks = mib * (1 << 20) / 512;
            rt.block_on(core, move || async move {
                bdev::modules::null::create(
                    "Null0",
                    blocks,
                    512,
                    None,
                    bdev::modules::null::ReadFill::Untouched,
                )
                .map(|_| ())
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("--null: {e}"))
        }
    }
}

/// Runs `cfg` on the bdevs that exist (built with [`build_bdevs`]) on
/// `rt`'s cores. `log` gets the progress lines.
///
/// # Errors
/// [`RunError`].
pub fn run_jobs(
    cfg: &Config,
    rt: &reactor::Handle,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome, RunError> {
    let names = targets(cfg).map_err(RunError::Usage)?;
    for n in &names {
        let bs = bdev::get(n).map_or(512, |b| b.block_size() as usize);
        if !cfg.io_size.is_multiple_of(bs) {
            return Err(RunError::Usage(format!(
                "-o {}: not a multiple of the block size {bs} of {n}",
                cfg.io_size
            )));
        }
    }
    let cores: Vec<reactor::CoreId> = rt.cores().to_vec();
    bdev::set_io_pool_size(cfg.depth * 2 + 16);
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    for name in &names {
        for (i, &core) in cores.iter().enumerate() {
            let progress = Arc::new(AtomicU64::new(0));
            counters.push(progress.clone());
            let (n, c) = (name.clone(), cfg.clone());
            let ncores = cores.len() as u64;
            handles.push(rt.spawn_on(core, move || {
                job(n, core as usize, i as u64, ncores, c, progress)
            }));
        }
    }
    let start = Instant::now();
    let mut last = 0u64;
    let mut tick = 1u64;
    let secs = cfg.time_s;
    while start.elapsed().as_secs_f64() < secs && !STOP.load(Ordering::Relaxed) {
        let next = Duration::from_secs(tick);
        let wait = next
            .saturating_sub(start.elapsed())
            .min(Duration::from_secs_f64(
                (secs - start.elapsed().as_secs_f64()).max(0.0),
            ));
        std::thread::sleep(wait.min(Duration::from_millis(100)));
        if start.elapsed() >= next && (tick as f64) <= secs {
            let now: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            if cfg.progress {
                let iops = (now - last) as f64;
                log(&format!(
                    "bdevperf: [{tick:>3} s] {iops:>12.2} IOPS {:>10.2} MiB/s",
                    iops * cfg.io_size as f64 / (1 << 20) as f64
                ));
            }
            last = now;
            tick += 1;
        }
    }
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut failure = None;
    for h in handles {
        match apps::methods::block_on(h) {
            Ok(Ok(o)) => {
                results.push(o.result);
                notes.extend(o.notes);
            }
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| e.clone());
                notes.push(e);
            }
            Err(e) => {
                let e = format!("job: {e}");
                failure.get_or_insert_with(|| e.clone());
                notes.push(e);
            }
        }
    }
    let report = Report::new(&results);
    let t = &report.total;
    if t.mismatches > 0 {
        failure.get_or_insert_with(|| format!("verify: {} mismatches", t.mismatches));
    }
    if t.errors > 0 {
        failure.get_or_insert_with(|| format!("{} I/O errors", t.errors));
    }
    Ok(Outcome {
        report,
        notes,
        failure,
    })
}

fn label(r: &Row) -> String {
    match (&r.device, r.core) {
        (Some(d), Some(c)) => format!("{d:<20} {c:>4}"),
        _ => format!("{:<25}", "Total"),
    }
}

impl Outcome {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{:<20} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Bdev", "core", "IOPS", "MiB/s", "avg(us)", "min(us)", "max(us)"
        );
        for p in PERCENTILES {
            let _ = write!(s, " {:>10}", format!("p{p}"));
        }
        s.push('\n');
        let line = |s: &mut String, r: &Row| {
            let l = &r.latency;
            let _ = write!(
                s,
                "{} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                label(r),
                r.iops,
                r.mib_s,
                l.avg_us,
                l.min_us,
                l.max_us
            );
            for v in l.percentiles_us {
                let _ = write!(s, " {v:>10.2}");
            }
            s.push('\n');
        };
        for r in &self.report.rows {
            line(&mut s, r);
        }
        let _ = writeln!(s, "{}", "=".repeat(25 + 10 * 11));
        line(&mut s, &self.report.total);
        let t = &self.report.total;
        let _ = writeln!(
            s,
            "\nI/Os in {:.2} s: {} ({} reads, {} writes); errors: {}",
            t.elapsed_s, t.ios, t.reads, t.writes, t.errors
        );
        if t.verified > 0 || t.mismatches > 0 {
            let _ = writeln!(
                s,
                "verify: {} reads checked against what was written, {} mismatches",
                t.verified, t.mismatches
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "{n}");
        }
        s
    }

    /// The report as JSON.
    pub fn to_json(&self, cfg: &Config, command: &str) -> Json {
        let (rows, total) = self.report.to_json();
        obj([
            ("tool", "bdevperf".into()),
            ("command", command.into()),
            ("workload", cfg.workload.name().into()),
            ("io_size", cfg.io_size.into()),
            ("queue_depth", cfg.depth.into()),
            ("time_s", cfg.time_s.into()),
            ("jobs", rows),
            ("total", total),
            (
                "notes",
                Json::Arr(self.notes.iter().map(|n| Json::from(n.as_str())).collect()),
            ),
            (
                "failure",
                self.failure
                    .as_deref()
                    .map(Json::from)
                    .unwrap_or(Json::Null),
            ),
        ])
    }
}

/// Where a run's outcome goes (printed by the binary): with `-z`, once per
/// `perform_tests`, from the RPC connection's thread.
pub type ReportFn = Arc<dyn Fn(&Config, &Outcome) + Send + Sync>;

/// `perform_tests`'s parameters over `base` (SPDK's bdevperf.py names).
fn perform_params(base: &Config, mut p: apps::methods::Params) -> Result<Config, RpcError> {
    let mut c = base.clone();
    let bad = |k: &str, why: String| RpcError::invalid_params(format!("{k}: {why}"));
    if let Some(q) = p.opt_u64("queue_depth")? {
        if q == 0 || q > 65536 {
            return Err(bad("queue_depth", format!("{q}: must be 1..=65536")));
        }
        c.depth = q as usize;
        c.unset.retain(|u| *u != "queue_depth");
    }
    if let Some(t) = p.opt_u64("time_in_sec")? {
        if t == 0 {
            return Err(bad("time_in_sec", "must be positive".into()));
        }
        c.time_s = t as f64;
        c.unset.retain(|u| *u != "time_in_sec");
    }
    if let Some(w) = p.opt_str("workload_type")? {
        c.workload = Workload::parse(&w.to_lowercase())
            .ok_or_else(|| bad("workload_type", format!("{w:?}: unknown workload")))?;
        c.unset.retain(|u| *u != "workload_type");
    }
    if let Some(o) = p.opt_str("io_size")? {
        c.io_size = args::parse_size("io_size", &o).map_err(RpcError::invalid_params)?;
        c.unset.retain(|u| *u != "io_size");
    }
    if let Some(m) = p.opt_u64("rw_percentage")? {
        if m > 100 {
            return Err(bad(
                "rw_percentage",
                format!("{m}: a percentage is 0..=100"),
            ));
        }
        c.read_percent = m as u32;
    }
    p.finish()?;
    if !c.unset.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "not set on the command line nor here: {}",
            c.unset.join(", ")
        )));
    }
    Ok(c)
}

/// SPDK's `perform_tests` result: one entry per job, and the core count.
fn perform_result(cfg: &Config, o: &Outcome, cores: usize) -> serde_json::Value {
    let results: Vec<serde_json::Value> = o
        .report
        .rows
        .iter()
        .map(|r| {
            let l = &r.latency;
            serde_json::json!({
                "job": r.device.clone().unwrap_or_default(),
                "core_mask": format!("{:#x}", 1u64 << r.core.unwrap_or(0).min(63)),
                "workload": cfg.workload.name(),
                "status": "finished",
                "queue_depth": cfg.depth,
                "io_size": cfg.io_size,
                "runtime": r.elapsed_s,
                "iops": r.iops,
                "mibps": r.mib_s,
                "io_failed": r.errors,
                "io_timeout": 0,
                "avg_latency_us": l.avg_us,
                "min_latency_us": l.min_us,
                "max_latency_us": l.max_us,
            })
        })
        .collect();
    serde_json::json!({ "results": results, "core_count": cores })
}

/// `-z`: serves `perform_tests` until `spdk_kill_instance` or SIGINT;
/// each call runs the jobs and answers with their results. Ok(true) when
/// every run passed.
fn serve_tests(
    cfg: &Config,
    rt: &reactor::Runtime,
    ctx: &Arc<apps::methods::Ctx>,
    report: &ReportFn,
) -> bool {
    let ok = Arc::new(AtomicBool::new(true));
    let running = Arc::new(std::sync::Mutex::new(()));
    // Parameters given once stay for later calls, as SPDK's bdevperf.
    let base = std::sync::Mutex::new(cfg.clone());
    let handle = rt.handle();
    let (report, ok2) = (report.clone(), ok.clone());
    ctx.add_method(
        "perform_tests",
        Arc::new(move |_ctx, p| {
            let Ok(_one) = running.try_lock() else {
                return Err(RpcError::errno(-16));
            };
            let c = {
                let mut b = base.lock().unwrap_or_else(|p| p.into_inner());
                let c = perform_params(&b, p)?;
                *b = c.clone();
                c
            };
            let mut log = |l: &str| eprintln!("{l}");
            let o = run_jobs(&c, &handle, &mut log).map_err(|e| match e {
                RunError::Usage(m) | RunError::Setup(m) => RpcError::invalid_params(m),
            })?;
            report(&c, &o);
            if let Some(f) = &o.failure {
                ok2.store(false, Ordering::Relaxed);
                return Err(RpcError::internal(format!("bdevperf failed: {f}")));
            }
            Ok(perform_result(&c, &o, handle.cores().len()))
        }),
    );
    eprintln!(
        "bdevperf: waiting for perform_tests on {}",
        cfg.rpc_socket
            .as_deref()
            .unwrap_or(Path::new("?"))
            .display()
    );
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    ok.load(Ordering::Relaxed)
}

/// Starts the reactors of `cfg`, builds the bdevs, runs (once, or with
/// `-z` as often as `perform_tests` asks), hands each outcome to
/// `report`, tears down. Ok(true) when every run passed.
///
/// # Errors
/// [`RunError`].
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str), report: ReportFn) -> Result<bool, RunError> {
    let cores: reactor::CpuSet = cfg
        .cpumask
        .parse()
        .map_err(|e| RunError::Usage(format!("-m {:?}: {e}", cfg.cpumask)))?;
    let rt = reactor::Runtime::builder(cores)
        .idle(reactor::IdleStrategy::Spin)
        .start()
        .map_err(|e| RunError::Setup(format!("reactors: {e}")))?;
    bdev::set_runtime(rt.handle());
    bdev::modules::init().map_err(|e| RunError::Setup(format!("bdev modules: {e}")))?;
    // Hugepage memory (what NVMe bdevs need for DMA) unless --no-huge.
    let mib = cfg.mem_mib.unwrap_or(1024);
    let limit = (mib as usize) << 20;
    let mem_cfg = if cfg.no_huge {
        dma::DmaConfig::anonymous(limit)
    } else {
        dma::DmaConfig::hugepages(limit)
    };
    let mem = dma::DmaMemory::new(dma::DmaConfig {
        grow_step: 8 << 20,
        ..mem_cfg
    })
    .map_err(|e| RunError::Setup(format!("-s {mib}: DMA memory: {e}")))?;
    // Fail now, with the fix, rather than at the first bdev.
    mem.alloc(4096, 4096).map_err(|e| {
        RunError::Setup(if cfg.no_huge {
            format!("DMA memory: {e}")
        } else {
            format!("no hugepage memory ({e}): reserve 2 MiB hugepages (hugepage-setup config) or run with --no-huge")
        })
    })?;
    bdev::set_memory(mem);
    let (tx, rx) = std::sync::mpsc::channel();
    // `spdk_kill_instance` over `-r` ends the run early, as SIGINT does
    // (the waiting thread ends when the context goes).
    std::thread::spawn(move || {
        if rx.recv().is_ok() {
            STOP.store(true, Ordering::Relaxed);
        }
    });
    let ctx = apps::methods::Ctx::new(rt.handle(), tx, true);
    let r = build_bdevs(cfg, &rt)
        .map_err(RunError::Setup)
        .and_then(|()| {
            // The appliance's JSON-RPC, served while the jobs run (`-r`).
            let server = match &cfg.rpc_socket {
                Some(path) => Some(
                    apps::server::start(path, ctx.clone())
                        .map_err(|e| RunError::Setup(format!("-r {}: {e}", path.display())))?,
                ),
                None => None,
            };
            let r = if cfg.wait_for_tests {
                Ok(serve_tests(cfg, &rt, &ctx, &report))
            } else {
                run_jobs(cfg, &rt.handle(), log).map(|o| {
                    report(cfg, &o);
                    o.failure.is_none()
                })
            };
            if let Some(s) = server {
                s.stop();
            }
            r
        });
    apps::teardown(&ctx);
    drop(ctx);
    let _ = rt.shutdown();
    r
}
