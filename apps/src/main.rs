//! `appliance`: the storage appliance binary. See `apps/src/args.rs` for the
//! options and the crate documentation for the shape.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use apps::args::{self, Args, Command};
use apps::methods::{Ctx, Stop};
use apps::{config, logger, server};
use dma::{Backing, DmaConfig, DmaMemory, PageSize};

/// The signals that stop the appliance, blocked in every thread and taken
/// by a dedicated thread with `sigwait`.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in SIGNALS {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

fn signal_name(s: libc::c_int) -> &'static str {
    match s {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}

fn memory(a: &Args) -> Result<DmaMemory, String> {
    let limit = a.mem_size_mib << 20;
    let cfg = if a.no_huge {
        DmaConfig {
            grow_step: 8 << 20,
            ..DmaConfig::anonymous(limit)
        }
    } else {
        DmaConfig {
            backing: Backing::Hugepages {
                page: PageSize::Huge2M,
                dir: a.huge_dir.clone(),
            },
            grow_step: 8 << 20,
            ..DmaConfig::anonymous(limit)
        }
    };
    let mem = DmaMemory::new(cfg).map_err(|e| format!("DMA memory: {e}"))?;
    // Fail now, with a clear reason, rather than at the first bdev.
    mem.alloc(4096, 4096).map_err(|e| {
        if a.no_huge {
            format!("DMA memory: {e}")
        } else {
            format!(
                "no hugepage memory ({e}): reserve 2 MiB hugepages (hugepage-setup) or run with --no-huge"
            )
        }
    })?;
    Ok(mem)
}

fn run(a: Args) -> Result<(), String> {
    logger::init(a.log_level);
    let set = signal_set();
    // SAFETY: blocks the stop signals in this thread before any other
    // thread exists, so every thread inherits the mask and only the
    // sigwait thread below takes them.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    bdev::set_memory(memory(&a)?);
    let cores: reactor::CpuSet = a
        .cpumask
        .parse()
        .map_err(|e| format!("-m {}: {e}", a.cpumask))?;
    let rt = reactor::Runtime::builder(cores)
        .pin(a.pin)
        .idle(a.idle.strategy())
        .start()
        .map_err(|e| format!("reactors: {e}"))?;
    bdev::set_runtime(rt.handle());
    bdev::modules::init().map_err(|e| format!("bdev modules: {e}"))?;
    log::info!(
        "appliance {} on cores {:?}, {} MiB of {} memory",
        env!("CARGO_PKG_VERSION"),
        rt.cores(),
        a.mem_size_mib,
        if a.no_huge { "anonymous" } else { "hugepage" }
    );

    let (tx, rx) = mpsc::channel::<Stop>();
    let ctx = Ctx::new(rt.handle(), tx, !a.wait_for_rpc);
    let sig_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid signal set and `sig` a valid out
                // pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    log::info!("{} received: shutting down", signal_name(sig));
                    sig_ctx.request_stop(Stop::Signal(signal_name(sig).into()));
                }
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;

    let mut failure = None;
    let mut pending_json = a.json.clone();
    if !a.wait_for_rpc
        && let Some(path) = pending_json.take()
        && let Err(e) = config::load(&ctx, &path, a.json_ignore_init_errors)
    {
        failure = Some(e.to_string());
    }
    let srv = if failure.is_none() {
        match server::start(&a.rpc_socket, ctx.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                failure = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    if failure.is_none() {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(why) => {
                    log::info!("stopping: {why:?}");
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if ctx.initialized.load(Ordering::Acquire)
                && let Some(path) = pending_json.take()
                && let Err(e) = config::load(&ctx, &path, a.json_ignore_init_errors)
            {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(s) = srv {
        s.stop();
    }
    apps::teardown(&ctx);
    drop(ctx);
    if let Err(e) = rt.shutdown() {
        log::error!("reactors: {e}");
        failure.get_or_insert_with(|| format!("reactors: {e}"));
    }
    log::logger().flush();
    match failure {
        Some(f) => Err(f),
        None => {
            log::info!("appliance stopped");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&argv) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("appliance {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(a)) => match run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("appliance: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("appliance: {e}\n\n{}", args::USAGE);
            ExitCode::from(2)
        }
    }
}
