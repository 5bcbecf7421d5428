//! `bdevperf`: I/O benchmark on the bdev layer (the counterpart of SPDK's
//! bdevperf). See `bdevperf -h` and `docs/BENCHMARKS.md`.

use std::io::Write;
use std::process::ExitCode;

use perf::bdevperf::args::{self, Parsed, USAGE};
use perf::bdevperf::run::{self, RunError};

/// Warnings (I/O errors, config failures) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "bdevperf: {}: {}",
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
            eprintln!("bdevperf: {e}\n(see bdevperf -h)");
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
    let command = std::iter::once("bdevperf".to_owned())
        .chain(argv.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let report: run::ReportFn = std::sync::Arc::new(move |cfg, outcome| {
        let mut out = std::io::stdout().lock();
        if cfg.json_report {
            let _ = writeln!(out, "{}", outcome.to_json(cfg, &command));
        } else {
            let _ = writeln!(
                out,
                "bdevperf: {} {} B, depth {}, {} s{}\n",
                cfg.workload.name(),
                cfg.io_size,
                cfg.depth,
                cfg.time_s,
                if cfg.workload.is_mixed() {
                    format!(", {}% reads", cfg.read_percent)
                } else {
                    String::new()
                },
            );
            let _ = write!(out, "{}", outcome.table());
        }
        let _ = out.flush();
        if let Some(f) = &outcome.failure {
            eprintln!("bdevperf: FAILED: {f}");
        }
    });
    match run::run(&cfg, &mut log_line, report) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(RunError::Usage(e)) => {
            eprintln!("bdevperf: {e}\n(see bdevperf -h)");
            ExitCode::from(2)
        }
        Err(RunError::Setup(msg)) => {
            eprintln!("bdevperf: {msg}");
            ExitCode::from(1)
        }
    }
}
