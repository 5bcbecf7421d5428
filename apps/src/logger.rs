//! A small `log` backend: one line per record on standard error, with the
//! time since start, the level, the thread and the module; its thresholds
//! and debug flags change at run time (SPDK's `log_*` methods).
//!
//! SPDK keeps two thresholds, the log level (its syslog) and the print
//! level (the console); this appliance has one destination, standard
//! error, which gets a record that passes either. SPDK's levels map onto
//! the `log` crate's: ERROR → error, WARNING → warn, NOTICE and INFO →
//! info, DEBUG → debug and trace. As in SPDK, a debug record of a
//! component that has a flag (`log_get_flags`) is written only while that
//! flag is set.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;

/// SPDK's log levels, least verbose first.
pub const LEVELS: [&str; 5] = ["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];

/// The components with a debug flag: SPDK's flag name and the module
/// paths (log targets) it covers.
const FLAGS: &[(&str, &[&str])] = &[
    ("bdev", &["bdev::"]),
    ("bdev_malloc", &["bdev::modules::malloc"]),
    ("bdev_null", &["bdev::modules::null"]),
    ("bdev_delay", &["bdev::modules::delay"]),
    ("bdev_error", &["bdev::modules::error"]),
    ("vbdev_passthru", &["bdev::modules::passthru"]),
    ("vbdev_crypto", &["bdev::modules::crypto"]),
    ("bdev_nvme", &["bdev::modules::nvme"]),
    ("nvme", &["nvme_driver"]),
    ("nbd", &["apps::nbd"]),
    ("rpc", &["apps::server", "apps::methods", "bdev::rpc"]),
    ("reactor", &["reactor"]),
    ("dma", &["dma"]),
];

struct Logger {
    start: Instant,
    /// Index into [`LEVELS`].
    log_level: AtomicU8,
    print_level: AtomicU8,
    flags: Vec<AtomicBool>,
}

fn filter(level: u8) -> log::LevelFilter {
    match level {
        0 => log::LevelFilter::Error,
        1 => log::LevelFilter::Warn,
        2 | 3 => log::LevelFilter::Info,
        _ => log::LevelFilter::Trace,
    }
}

impl Logger {
    fn threshold(&self) -> log::LevelFilter {
        filter(
            self.log_level
                .load(Ordering::Relaxed)
                .max(self.print_level.load(Ordering::Relaxed)),
        )
    }

    /// The flag covering `target` (the longest matching prefix), if any.
    fn flag_of(&self, target: &str) -> Option<usize> {
        FLAGS
            .iter()
            .enumerate()
            .flat_map(|(i, (_, prefixes))| prefixes.iter().map(move |p| (i, *p)))
            .filter(|(_, p)| target.starts_with(p) || target == p.trim_end_matches(':'))
            .max_by_key(|(_, p)| p.len())
            .map(|(i, _)| i)
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        if m.level() > self.threshold() {
            return false;
        }
        if m.level() >= log::Level::Debug {
            // A component with a flag logs debug records only while set.
            return self
                .flag_of(m.target())
                .is_none_or(|i| self.flags[i].load(Ordering::Relaxed));
        }
        true
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

fn logger() -> &'static Logger {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
        log_level: AtomicU8::new(2),
        print_level: AtomicU8::new(2),
        flags: FLAGS.iter().map(|_| AtomicBool::new(false)).collect(),
    })
}

fn apply() {
    log::set_max_level(logger().threshold());
}

/// Installs the logger with both thresholds at `level` (once; later calls
/// only change the thresholds).
pub fn init(level: log::LevelFilter) {
    let l = logger();
    let _ = log::set_logger(l);
    let i = match level {
        log::LevelFilter::Off | log::LevelFilter::Error => 0,
        log::LevelFilter::Warn => 1,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug | log::LevelFilter::Trace => 4,
    };
    l.log_level.store(i, Ordering::Relaxed);
    l.print_level.store(i, Ordering::Relaxed);
    apply();
}

fn parse_level(name: &str) -> Option<u8> {
    LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

/// Sets the log level (`log_set_level`) by SPDK's name, any case; false
/// for a name that is not one.
pub fn set_level(name: &str) -> bool {
    parse_level(name).is_some_and(|i| {
        logger().log_level.store(i, Ordering::Relaxed);
        apply();
        true
    })
}

/// Sets the print level (`log_set_print_level`); false for a bad name.
pub fn set_print_level(name: &str) -> bool {
    parse_level(name).is_some_and(|i| {
        logger().print_level.store(i, Ordering::Relaxed);
        apply();
        true
    })
}

/// The log level's SPDK name.
pub fn level() -> &'static str {
    LEVELS[logger().log_level.load(Ordering::Relaxed) as usize]
}

/// The print level's SPDK name.
pub fn print_level() -> &'static str {
    LEVELS[logger().print_level.load(Ordering::Relaxed) as usize]
}

/// Sets or clears debug flag `name`; false for a flag that does not exist.
pub fn set_flag(name: &str, on: bool) -> bool {
    match FLAGS.iter().position(|(n, _)| *n == name) {
        Some(i) => {
            logger().flags[i].store(on, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Every flag with whether it is set, in name order.
pub fn flags() -> Vec<(&'static str, bool)> {
    let l = logger();
    let mut v: Vec<(&'static str, bool)> = FLAGS
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, l.flags[i].load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_cover_their_modules_by_the_longest_prefix() {
        let l = logger();
        let name = |t: &str| l.flag_of(t).map(|i| FLAGS[i].0);
        assert_eq!(name("bdev::modules::nvme::rpc"), Some("bdev_nvme"));
        assert_eq!(name("bdev::registry"), Some("bdev"));
        assert_eq!(name("nvme_driver::qpair"), Some("nvme"));
        assert_eq!(name("apps::server"), Some("rpc"));
        assert_eq!(name("bdev::rpc"), Some("rpc"));
        assert_eq!(name("appliance"), None);
        assert!(!set_flag("no_such_flag", true));
        assert!(!set_level("LOUD"));
        assert_eq!(parse_level("warning"), Some(1));
    }
}
