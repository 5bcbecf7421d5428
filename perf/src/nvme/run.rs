//! One `nvme-perf` run: open the controllers, build one worker per core per
//! namespace, start the pinned core threads together, print progress once a
//! second, and gather the report.
//!
//! ```text
//!  main thread: open controllers ─ build workers ─┬─ barrier ─ progress/s ─ join ─ report
//!  core thread (pinned), per core in -c:          └─ barrier ─ poll workers until done
//! ```

use nvme_driver::blocking::BlockingController;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dma::{DmaConfig, DmaMemory};
use nvme_driver::pci::{Bdf, NVME_CLASS_CODE};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::{Controller, ControllerOptions, NvmeError};

use crate::clock::Clock;
use crate::json::{Json, obj};
use crate::nvme::args::{Config, UsageError};
use crate::nvme::engine::{Progress, Window, Worker, WorkerParams};
use crate::report::{Report, WorkerResult};

/// Set (by a SIGINT handler, say) to end the run early; what was measured
/// until then is reported.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// The namespaces of the `--sim` model: (block size, blocks).
pub const SIM_NAMESPACES: [(u32, u64); 2] = [(512, 32768), (4096, 4096)];

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An argument that does not fit the devices (exit status 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A controller could not be opened or set up (exit status 1).
    #[error("{0}")]
    Device(String),
}

/// A namespace under test.
#[derive(Clone, Debug)]
pub struct NsInfo {
    /// Controller name (PCI address).
    pub device: String,
    /// Model number.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Namespace id.
    pub nsid: u32,
    /// Block size.
    pub block_size: u32,
    /// Blocks.
    pub blocks: u64,
    /// The controller's largest transfer.
    pub max_transfer: usize,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The figures.
    pub report: Report,
    /// The namespaces measured.
    pub namespaces: Vec<NsInfo>,
    /// The clock used.
    pub clock: Clock,
    /// Its cost per reading, ns.
    pub clock_read_ns: f64,
    /// Why the run failed (I/O errors, verify mismatches, a worker that
    /// gave up), if it did: exit status 1.
    pub failure: Option<String>,
}

/// Every PCI function of the NVMe class bound to vfio-pci, in address order.
pub fn vfio_controllers() -> Vec<Bdf> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return v;
    };
    for e in dir.flatten() {
        let p = e.path();
        let class = std::fs::read_to_string(p.join("class")).unwrap_or_default();
        let class = u32::from_str_radix(class.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        if class != NVME_CLASS_CODE {
            continue;
        }
        let driver = std::fs::read_link(p.join("driver"))
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            continue;
        }
        if let Some(bdf) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.parse::<Bdf>().ok())
        {
            v.push(bdf);
        }
    }
    v.sort();
    v
}

fn usage(option: &str, value: Option<&str>, msg: String) -> RunError {
    RunError::Usage(UsageError::new(option, value, msg))
}

/// DMA memory the run needs, with room for the controllers' own queues.
fn needed_bytes(cfg: &Config, queue_pairs: usize) -> usize {
    let per_slot = cfg.io_size.next_multiple_of(4096) + 4096; // buffer + PRP page
    let per_qp = cfg.depth as usize * per_slot + 2 * ((cfg.depth as usize + 1) * 64 + 4096);
    (queue_pairs * per_qp + (16 << 20)).next_multiple_of(2 << 20)
}

/// Runs the benchmark `cfg` describes; `log` gets the set-up and progress
/// lines (stderr in the binary).
///
/// # Errors
/// [`RunError`]: a usage error discovered against the devices, or a device
/// that cannot be opened.
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str)) -> Result<Outcome, RunError> {
    let clock =
        Clock::choose(cfg.clock).map_err(|e| usage("--clock", Some("tsc"), e.to_string()))?;
    let clock_read_ns = clock.read_cost_ns(20_000);

    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for &c in &cfg.cores {
        if !available.contains(&c) {
            return Err(usage(
                "-c",
                None,
                format!("core {c} is not available to this process (cores {available:?})"),
            ));
        }
    }

    // Memory: a generous limit, reserved on demand (the -s value, else
    // 2 GiB of hugepages at most).
    let limit = cfg.mem_mib.map_or(2 << 30, |m| m << 20);
    let mem = if cfg.sim {
        DmaMemory::new(DmaConfig::anonymous(limit))
    } else {
        DmaMemory::new(DmaConfig::hugepages(limit))
    }
    .map_err(|e| RunError::Device(format!("DMA memory: {e}")))?;

    // Controllers.
    let queues = (cfg.cores.len() * 8).clamp(16, 1024) as u16;
    let opts = ControllerOptions {
        io_queues: queues,
        ..ControllerOptions::default()
    };
    let mut ctrlrs: Vec<(Controller, Option<u32>, String)> = Vec::new();
    if cfg.sim {
        let sim = Arc::new(SimController::new(
            mem.clone(),
            SimConfig {
                namespaces: SIM_NAMESPACES.to_vec(),
                max_queues: 64,
                ..SimConfig::default()
            },
        ));
        let c = Controller::with_registers("sim0".into(), sim, &mem, opts)
            .map_err(|e| RunError::Device(e.to_string()))?;
        ctrlrs.push((c, None, "--sim".into()));
    } else {
        let targets: Vec<(Bdf, Option<u32>, String)> = if cfg.targets.is_empty() {
            let found = vfio_controllers();
            if found.is_empty() {
                return Err(RunError::Device(
                    "no NVMe controller bound to vfio-pci was found; bind one (hugepage-setup) or name it with -r"
                        .into(),
                ));
            }
            found
                .into_iter()
                .map(|b| (b, None, "-n".to_owned()))
                .collect()
        } else {
            cfg.targets
                .iter()
                .map(|t| (t.bdf, t.nsid, "-r".to_owned()))
                .collect()
        };
        for (bdf, nsid, opt) in targets {
            log(&format!("Attaching to NVMe controller at {bdf}"));
            let c = Controller::open(bdf, &mem, opts.clone())
                .map_err(|e| RunError::Device(format!("cannot open {bdf}: {e}")))?;
            ctrlrs.push((c, nsid, opt));
        }
    }

    // Namespaces, checked against the arguments.
    let ncores = cfg.cores.len() as u64;
    let mut namespaces = Vec::new();
    for (ci, (c, trid_ns, opt)) in ctrlrs.iter().enumerate() {
        let wanted: Vec<u32> = match trid_ns.or(cfg.nsid) {
            Some(n) => {
                if c.namespace(n).is_none() {
                    let o = if trid_ns.is_some() { "-r" } else { "-n" };
                    return Err(usage(
                        o,
                        Some(&n.to_string()),
                        format!("{} has no active namespace {n}", c.name()),
                    ));
                }
                vec![n]
            }
            None => c.namespaces().map(|n| n.nsid).collect(),
        };
        if wanted.is_empty() {
            return Err(RunError::Device(format!(
                "{} has no active namespace ({opt})",
                c.name()
            )));
        }
        let id = c.identify();
        for n in wanted {
            let ns = c.namespace(n).expect("checked above");
            let bs = ns.block_size as usize;
            let o = Some(cfg.io_size.to_string());
            if !cfg.io_size.is_multiple_of(bs) {
                return Err(usage(
                    "-o",
                    o.as_deref(),
                    format!(
                        "not a multiple of {} namespace {n}'s block size {bs}",
                        c.name()
                    ),
                ));
            }
            if cfg.io_size > c.max_transfer() {
                return Err(usage(
                    "-o",
                    o.as_deref(),
                    format!(
                        "above {}'s largest transfer of {} bytes (MDTS)",
                        c.name(),
                        c.max_transfer()
                    ),
                ));
            }
            let units = ns.size_bytes() / cfg.io_size as u64 / ncores;
            if units == 0 || (cfg.verify && units <= cfg.depth as u64) {
                return Err(usage(
                    "-o",
                    o.as_deref(),
                    format!(
                        "{} namespace {n} ({} bytes) holds {units} I/Os of this size per core{}",
                        c.name(),
                        ns.size_bytes(),
                        if cfg.verify {
                            format!(", --verify needs more than -q {}", cfg.depth)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            log(&format!(
                "  {} ({} {}): namespace {n}: {} blocks of {bs} B ({} MiB), largest transfer {} KiB",
                c.name(),
                id.model,
                id.serial,
                ns.blocks,
                ns.size_bytes() >> 20,
                c.max_transfer() >> 10
            ));
            namespaces.push((
                ci,
                NsInfo {
                    device: c.name().to_owned(),
                    model: id.model.clone(),
                    serial: id.serial.clone(),
                    nsid: n,
                    block_size: ns.block_size,
                    blocks: ns.blocks,
                    max_transfer: c.max_transfer(),
                },
                units,
            ));
        }
    }

    // With -s, check the limit holds the run (buffers are all allocated
    // before the run starts: nothing grows mid-run).
    let qps = namespaces.len() * cfg.cores.len();
    if let Some(m) = cfg.mem_mib {
        let need = needed_bytes(cfg, qps);
        if need > m << 20 {
            return Err(usage(
                "-s",
                Some(&m.to_string()),
                format!("the run needs about {} MiB", need >> 20),
            ));
        }
    }

    // Workers: per core, one queue pair per namespace.
    let run_nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut per_core: Vec<Vec<Worker>> = Vec::new();
    let mut progress: Vec<Arc<Progress>> = Vec::new();
    for (k, &core) in cfg.cores.iter().enumerate() {
        let mut ws = Vec::new();
        for (ci, ns, units) in &namespaces {
            let c = &ctrlrs[*ci].0;
            let qp = c.connect_io_qpair::<u32>(cfg.depth).map_err(|e| match e {
                NvmeError::InvalidDepth { max, .. } => usage(
                    "-q",
                    Some(&cfg.depth.to_string()),
                    format!("above {}'s largest queue depth {max}", c.name()),
                ),
                NvmeError::NoFreeQueue { granted, .. } => usage(
                    "-c",
                    None,
                    format!(
                        "{} granted {granted} I/O queues: too few for {} cores x its namespaces",
                        c.name(),
                        cfg.cores.len()
                    ),
                ),
                e => RunError::Device(format!("creating an I/O queue pair: {e}")),
            })?;
            let params = WorkerParams {
                nsid: ns.nsid,
                block_size: ns.block_size,
                io_size: cfg.io_size,
                depth: cfg.depth,
                read_percent: cfg.read_percent,
                random: cfg.pattern.is_random(),
                verify: cfg.verify,
                first_unit: k as u64 * units,
                units: *units,
                seed: crate::rng::splitmix64(cfg.seed ^ ((k as u64) << 32) ^ ns.nsid as u64),
                io_limit: None,
            };
            let w = Worker::new(qp, &mem, ns.device.clone(), core, params, clock, run_nonce)
                .map_err(|e| {
                    RunError::Device(format!(
                        "{} namespace {}: {e}{}",
                        ns.device,
                        ns.nsid,
                        if cfg.mem_mib.is_some() {
                            " (raise -s)"
                        } else {
                            " (reserve more hugepages, or lower -q / -o)"
                        }
                    ))
                })?;
            progress.push(w.progress());
            ws.push(w);
        }
        per_core.push(ws);
    }

    log(&format!(
        "Running {} {} B I/Os at depth {} on {} queue pair(s), core(s) {:?}: {} s{}",
        cfg.pattern.name(),
        cfg.io_size,
        cfg.depth,
        qps,
        cfg.cores,
        cfg.time_s,
        if cfg.warmup_s > 0 {
            format!(" after {} s of warm-up", cfg.warmup_s)
        } else {
            String::new()
        }
    ));

    // Core threads.
    let barrier = Arc::new(Barrier::new(cfg.cores.len() + 1));
    let finished = Arc::new(AtomicUsize::new(0));
    let warmup = clock.ns_to_ticks(cfg.warmup_s * 1_000_000_000);
    let measure = clock.ns_to_ticks(cfg.time_s * 1_000_000_000);
    let mut handles = Vec::new();
    let main_thread = std::thread::current();
    for (workers, &core) in per_core.into_iter().zip(&cfg.cores) {
        let barrier = barrier.clone();
        let finished = finished.clone();
        let main_thread = main_thread.clone();
        let h = std::thread::Builder::new()
            .name(format!("nvme-perf-{core}"))
            .spawn(move || {
                let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                barrier.wait();
                let out = core_loop(workers, &clock, warmup, measure);
                finished.fetch_add(1, Ordering::Release);
                main_thread.unpark();
                (pinned, out)
            })
            .map_err(|e| RunError::Device(format!("starting the thread of core {core}: {e}")))?;
        handles.push((core, h));
    }
    barrier.wait();

    // Progress once a second, on stderr. The main thread wakes once a
    // second (or when a core finishes, which unparks it) and no more: it
    // may share a CPU with a worker.
    let t0 = Instant::now();
    let total_s = cfg.warmup_s + cfg.time_s;
    let mut last = (t0, 0u64);
    let mut tick = 1u64;
    loop {
        let all_done = finished.load(Ordering::Acquire) == handles.len();
        let next = t0 + Duration::from_secs(tick);
        let now = Instant::now();
        if now < next && !all_done {
            std::thread::park_timeout(next - now);
            continue;
        }
        if all_done && tick > total_s {
            break;
        }
        let done: u64 = progress
            .iter()
            .map(|p| p.completed.load(Ordering::Relaxed))
            .sum();
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-6);
        let iops = (done - last.1) as f64 / dt;
        if tick <= total_s {
            log(&format!(
                "[{tick:>3}/{total_s} s]{} {iops:>12.2} IOPS {:>10.2} MiB/s",
                if tick <= cfg.warmup_s {
                    " (warm-up)"
                } else {
                    "          "
                },
                iops * cfg.io_size as f64 / (1u64 << 20) as f64
            ));
        }
        last = (now, done);
        tick += 1;
        if all_done {
            // The last (possibly short) second has been reported.
            break;
        }
        for (c, _, _) in ctrlrs.iter_mut() {
            if let Err(e) = c.poll_admin() {
                log(&format!("{}: admin poll: {e}", c.name()));
            }
        }
    }

    let mut results: Vec<WorkerResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (core, h) in handles {
        match h.join() {
            Ok((pinned, out)) => {
                if !pinned {
                    log(&format!("warning: could not pin the thread of core {core}"));
                }
                for (r, fatal) in out {
                    if let Some(f) = fatal {
                        failures.push(f);
                    }
                    results.push(r);
                }
            }
            Err(_) => failures.push(format!("the thread of core {core} panicked")),
        }
    }
    drop(ctrlrs);
    let report = Report::new(&results);
    let t = &report.total;
    if t.errors > 0 {
        failures.push(format!("{} I/O errors", t.errors));
    }
    if t.mismatches > 0 {
        failures.push(format!(
            "verify: {} reads differed from what was written",
            t.mismatches
        ));
    }
    Ok(Outcome {
        report,
        namespaces: namespaces.into_iter().map(|(_, n, _)| n).collect(),
        clock,
        clock_read_ns,
        failure: (!failures.is_empty()).then(|| failures.join("; ")),
    })
}

/// The loop of one core: start every worker, poll them all until each is
/// done, return their results.
fn core_loop(
    mut workers: Vec<Worker>,
    clock: &Clock,
    warmup: u64,
    measure: u64,
) -> Vec<(WorkerResult, Option<String>)> {
    let t0 = clock.now();
    let window = Window {
        start: t0 + warmup,
        end: t0 + warmup + measure,
    };
    for w in &mut workers {
        w.start(window);
    }
    let mut running = vec![true; workers.len()];
    let mut left = workers.len();
    while left > 0 {
        for (w, r) in workers.iter_mut().zip(running.iter_mut()) {
            if *r && !w.poll(&STOP) {
                *r = false;
                left -= 1;
            }
        }
    }
    workers.into_iter().map(Worker::into_result).collect()
}

impl Outcome {
    /// The whole run as one JSON document.
    pub fn to_json(&self, cfg: &Config, command: &str) -> Json {
        let (rows, total) = self.report.to_json();
        obj([
            ("tool", "nvme-perf".into()),
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("command", command.into()),
            (
                "config",
                obj([
                    ("io_depth", cfg.depth.into()),
                    ("io_size", cfg.io_size.into()),
                    ("pattern", cfg.pattern.name().into()),
                    ("read_percent", cfg.read_percent.into()),
                    ("time_s", cfg.time_s.into()),
                    ("warmup_s", cfg.warmup_s.into()),
                    (
                        "cores",
                        Json::Arr(cfg.cores.iter().map(|&c| c.into()).collect()),
                    ),
                    ("verify", cfg.verify.into()),
                    ("seed", cfg.seed.into()),
                ]),
            ),
            (
                "clock",
                obj([
                    ("kind", self.clock.kind().name().into()),
                    ("ticks_per_s", self.clock.ticks_per_sec().into()),
                    ("read_ns", self.clock_read_ns.into()),
                ]),
            ),
            (
                "namespaces",
                Json::Arr(
                    self.namespaces
                        .iter()
                        .map(|n| {
                            obj([
                                ("device", n.device.as_str().into()),
                                ("model", n.model.as_str().into()),
                                ("serial", n.serial.as_str().into()),
                                ("nsid", n.nsid.into()),
                                ("block_size", n.block_size.into()),
                                ("blocks", n.blocks.into()),
                                ("max_transfer", n.max_transfer.into()),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("workers", rows),
            ("total", total),
            (
                "status",
                match &self.failure {
                    None => "ok".into(),
                    Some(f) => f.as_str().into(),
                },
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimate_covers_buffers_and_queues() {
        let cfg =
            match crate::nvme::args::parse(["-q", "128", "-o", "128k", "-w", "read", "-t", "1"])
                .unwrap()
            {
                crate::nvme::args::Parsed::Run(c) => c,
                _ => unreachable!(),
            };
        let need = needed_bytes(&cfg, 2);
        assert!(need >= 2 * 128 * (128 << 10));
        assert_eq!(need % (2 << 20), 0);
    }
}
