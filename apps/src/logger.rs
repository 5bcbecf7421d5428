//! A small `log` backend: one line per record on standard error, with the
//! time since start, the level, the thread and the module.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

struct Logger {
    start: Instant,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        let th = std::thread::current();
        let line = format!(
            "[{:>5}.{:06}] {:<5} {} {}: {}\n",
            t.as_secs(),
            t.subsec_micros(),
            r.level(),
            th.name().unwrap_or("-"),
            r.target(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger at `level` (once; later calls only change the
/// level).
pub fn init(level: log::LevelFilter) {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    let l = LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
    });
    let _ = log::set_logger(l);
    log::set_max_level(level);
}
