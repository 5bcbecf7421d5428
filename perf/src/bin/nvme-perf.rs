//! `nvme-perf`: NVMe benchmark straight on this project's user-space driver
//! (the counterpart of SPDK's `spdk_nvme_perf`). See `nvme-perf -h` and
//! `docs/BENCHMARKS.md`.

use std::io::Write;
use std::process::ExitCode;

use perf::nvme::args::{self, Parsed, USAGE};
use perf::nvme::run::{self, RunError};

/// Driver warnings (timeouts, resets) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "nvme-perf: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

extern "C" fn on_sigint(_: libc::c_int) {
    run::STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn main() -> ExitCode {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args::parse(argv.iter().cloned()) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nvme-perf: {e}\n(see nvme-perf -h)");
            return ExitCode::from(2);
        }
    };
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; installing it races with nothing (one thread yet).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let mut log_line = |l: &str| eprintln!("{l}");
    let outcome = match run::run(&cfg, &mut log_line) {
        Ok(o) => o,
        Err(RunError::Usage(e)) => {
            eprintln!("nvme-perf: {e}\n(see nvme-perf -h)");
            return ExitCode::from(2);
        }
        Err(RunError::Device(msg)) => {
            eprintln!("nvme-perf: {msg}");
            return ExitCode::from(1);
        }
    };
    let command = std::iter::once("nvme-perf".to_owned())
        .chain(argv.iter().map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = std::io::stdout().lock();
    if cfg.json {
        let _ = writeln!(out, "{}", outcome.to_json(&cfg, &command));
    } else {
        let _ = writeln!(
            out,
            "nvme-perf: {} {} B, depth {}, {} s measured{}; clock {} ({:.0} ns per reading)\n",
            cfg.pattern.name(),
            cfg.io_size,
            cfg.depth,
            cfg.time_s,
            if cfg.pattern.is_mixed() {
                format!(", {}% reads", cfg.read_percent)
            } else {
                String::new()
            },
            outcome.clock.kind().name(),
            outcome.clock_read_ns
        );
        let _ = write!(out, "{}", outcome.report.table());
    }
    let _ = out.flush();
    match outcome.failure {
        Some(f) => {
            eprintln!("nvme-perf: FAILED: {f}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}
