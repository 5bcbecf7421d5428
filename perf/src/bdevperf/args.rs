//! `bdevperf` command-line arguments (SPDK's bdevperf options).

use std::path::PathBuf;

pub use crate::cli::UsageError;
use crate::cli::{Lexer, Spec, int};

/// The usage text.
pub const USAGE: &str = "\
bdevperf: I/O benchmark on the bdev layer (SPDK's bdevperf)

usage: bdevperf (--json FILE | --malloc MIB | --null MIB) -q DEPTH -o SIZE -w WORKLOAD -t SECONDS [options]
       bdevperf -z [-r SOCKET] [--json FILE | ...] [-q ...] [options]

  --json FILE        SPDK-format config ({\"subsystems\": [...]}) that builds the bdevs
  --malloc MIB       shortcut: a malloc bdev Malloc0 of MIB MiB (512 B blocks)
  --null MIB         shortcut: a null bdev Null0 of MIB MiB (512 B blocks)
  -q DEPTH           I/Os in flight per job
  -o SIZE            bytes per I/O (a multiple of the block size; k/K, m/M suffixes)
  -w WORKLOAD        read, write, randread, randwrite, rw, randrw, verify, reset, flush
  -M PERCENT         reads in rw/randrw (default 50)
  -t SECONDS         run time
  -m, -c MASK        core mask (default 0x1): one job per core per bdev
  -T BDEV            run on this bdev only (default: every bdev not claimed)
  -s MIB             DMA memory in MiB (default 1024)
  --seed N           random seed (default 1)
  -r SOCKET          serve SPDK's JSON-RPC on this Unix socket while it runs (the
                     appliance's methods: e.g. bdev_nvme_reset_controller under load;
                     spdk_kill_instance ends the run early, as Ctrl-C does)
  -z                 wait for `perform_tests` over JSON-RPC (SPDK's bdevperf.py perform_tests,
                     which may set queue_depth, io_size, workload_type, time_in_sec,
                     rw_percentage) and run then, as often as asked, on the bdevs there
                     are (made by --json or over RPC); -r defaults to /var/tmp/spdk.sock;
                     -q/-o/-w/-t may come from perform_tests; ends on spdk_kill_instance
                     or SIGINT
  --json-report      print the report as JSON on stdout
  --no-huge          anonymous memory instead of 2 MiB hugepages (no NVMe bdevs then)
  -h, --help         this text

Exit status: 0 on success, 1 on I/O errors, verify mismatches or setup failures,
2 on usage errors.
";

/// The workload of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential mixed reads and writes (`-M`).
    Rw,
    /// Random mixed reads and writes (`-M`).
    RandRw,
    /// Write a pattern to each I/O unit, read it back and compare.
    Verify,
    /// Random reads with a reset every second.
    Reset,
    /// Flushes.
    Flush,
}

impl Workload {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::Reset => "reset",
            Workload::Flush => "flush",
        }
    }

    /// The workload named `s` (as `-w` takes it).
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "reset" => Workload::Reset,
            "flush" => Workload::Flush,
            _ => return None,
        })
    }

    /// Whether offsets are random.
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw | Workload::Reset
        )
    }

    /// Whether the job writes (and so opens its bdevs for writing).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Workload::Write
                | Workload::RandWrite
                | Workload::Rw
                | Workload::RandRw
                | Workload::Verify
                | Workload::Flush
        )
    }

    /// Whether `-M` applies.
    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }
}

/// Where the bdevs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An SPDK-format JSON config.
    Json(PathBuf),
    /// A malloc bdev `Malloc0` of this many MiB.
    Malloc(u64),
    /// A null bdev `Null0` of this many MiB.
    Null(u64),
    /// None at start: made over JSON-RPC (`-z`).
    Rpc,
}

/// A run's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the bdevs come from.
    pub source: Source,
    /// I/Os in flight per job.
    pub depth: usize,
    /// Bytes per I/O.
    pub io_size: usize,
    /// The workload.
    pub workload: Workload,
    /// Reads in percent (mixed workloads).
    pub read_percent: u32,
    /// Run time in seconds.
    pub time_s: f64,
    /// The core mask as given.
    pub cpumask: String,
    /// The one bdev to run on.
    pub target: Option<String>,
    /// DMA memory in MiB (`-s`; default 1024).
    pub mem_mib: Option<u64>,
    /// Anonymous memory instead of hugepages (`--no-huge`).
    pub no_huge: bool,
    /// Random seed.
    pub seed: u64,
    /// JSON report.
    pub json_report: bool,
    /// Print a progress line each second.
    pub progress: bool,
    /// JSON-RPC socket served during the run (`-r`).
    pub rpc_socket: Option<PathBuf>,
    /// Runs happen on `perform_tests` calls (`-z`).
    pub wait_for_tests: bool,
    /// Required options not given (`-z`: `perform_tests` must give them),
    /// by their `perform_tests` names.
    pub unset: Vec<&'static str>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A run.
    Run(Config),
    /// `-h`.
    Help,
}

/// A size with an optional k/K or m/M suffix; `opt` names it in errors.
///
/// # Errors
/// [`UsageError`] naming `opt` and `v`.
pub fn parse_size(opt: &str, v: &str) -> Result<usize, UsageError> {
    crate::cli::size(opt, v)
}

/// Which option a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Help,
    Json,
    Malloc,
    Null,
    Depth,
    Size,
    Workload,
    Mix,
    Time,
    Cores,
    Target,
    Mem,
    Seed,
    JsonReport,
    NoHuge,
    Rpc,
    Wait,
}

/// SPDK's bdevperf options (short ones without long forms, as SPDK's).
const OPTIONS: [Spec<Opt>; 18] = [
    Spec::flag(Some('h'), Some("help"), Opt::Help),
    Spec::value(None, Some("json"), Opt::Json),
    Spec::value(None, Some("malloc"), Opt::Malloc),
    Spec::value(None, Some("null"), Opt::Null),
    Spec::value(Some('q'), None, Opt::Depth),
    Spec::value(Some('o'), None, Opt::Size),
    Spec::value(Some('w'), None, Opt::Workload),
    Spec::value(Some('M'), None, Opt::Mix),
    Spec::value(Some('t'), None, Opt::Time),
    Spec::value(Some('m'), None, Opt::Cores),
    Spec::value(Some('c'), None, Opt::Cores),
    Spec::value(Some('T'), None, Opt::Target),
    Spec::value(Some('s'), None, Opt::Mem),
    Spec::value(None, Some("seed"), Opt::Seed),
    Spec::flag(None, Some("json-report"), Opt::JsonReport),
    Spec::flag(None, Some("no-huge"), Opt::NoHuge),
    Spec::value(Some('r'), None, Opt::Rpc),
    Spec::flag(Some('z'), None, Opt::Wait),
];

/// Parses the arguments (without the program name).
///
/// # Errors
/// [`UsageError`] naming the option and the value at fault.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
    let mut lexer = Lexer::new(args.into_iter().collect::<Vec<String>>());
    let mut source = None;
    let (mut depth, mut io_size, mut workload, mut time_s) = (None, None, None, None);
    let mut read_percent = None;
    let mut cpumask = "0x1".to_owned();
    let mut target = None;
    let mut seed = 1u64;
    let mut mem_mib = None;
    let mut no_huge = false;
    let mut json_report = false;
    let mut rpc_socket = None;
    let mut wait_for_tests = false;
    while let Some(arg) = lexer.next_arg(&OPTIONS) {
        let arg = arg?;
        let (n, v) = (arg.name.as_str(), arg.value.as_str());
        let bad = |why: &str| UsageError::new(n, Some(v), why);
        match arg.opt {
            Opt::Help => return Ok(Parsed::Help),
            Opt::Json => source = Some(Source::Json(PathBuf::from(v))),
            Opt::Malloc => source = Some(Source::Malloc(int(n, v, 1, 1 << 30, "a size in MiB")?)),
            Opt::Null => source = Some(Source::Null(int(n, v, 1, 1 << 30, "a size in MiB")?)),
            Opt::Depth => depth = Some(int(n, v, 1, 65536, "the queue depth")? as usize),
            Opt::Size => io_size = Some(parse_size(n, v)?),
            Opt::Workload => {
                workload = Some(Workload::parse(v).ok_or_else(|| {
                    bad("unknown workload (read, write, randread, randwrite, rw, randrw, verify, reset, flush)")
                })?)
            }
            Opt::Mix => read_percent = Some(int(n, v, 0, 100, "the read percentage")? as u32),
            Opt::Time => {
                let t: f64 = v.parse().map_err(|_| bad("not a number of seconds"))?;
                if !(t > 0.0 && t.is_finite()) {
                    return Err(bad("the run time must be positive"));
                }
                time_s = Some(t);
            }
            Opt::Cores => {
                v.parse::<reactor::CpuSet>()
                    .map_err(|e| bad(&e.to_string()))?;
                cpumask = v.to_owned();
            }
            Opt::Target => target = Some(v.to_owned()),
            Opt::Mem => mem_mib = Some(int(n, v, 16, 1 << 30, "memory in MiB")?),
            Opt::Seed => seed = crate::cli::seed(n, v)?,
            Opt::JsonReport => json_report = true,
            Opt::NoHuge => no_huge = true,
            Opt::Rpc => rpc_socket = Some(PathBuf::from(v)),
            Opt::Wait => wait_for_tests = true,
        }
    }
    let mut unset = Vec::new();
    if wait_for_tests {
        // What is missing must come with `perform_tests`.
        for (missing, name) in [
            (depth.is_none(), "queue_depth"),
            (io_size.is_none(), "io_size"),
            (workload.is_none(), "workload_type"),
            (time_s.is_none(), "time_in_sec"),
        ] {
            if missing {
                unset.push(name);
            }
        }
        rpc_socket.get_or_insert_with(|| PathBuf::from("/var/tmp/spdk.sock"));
    }
    let required =
        |o: &str, what: &str| UsageError::new(o, None, format!("missing: {what} is required"));
    let source = match source {
        Some(s) => s,
        None if wait_for_tests => Source::Rpc,
        None => {
            return Err(required(
                "--json",
                "a config (--json FILE, or --malloc/--null MIB, or -z)",
            ));
        }
    };
    // With -z, placeholders for what perform_tests must give.
    let z = wait_for_tests;
    let depth = depth
        .or(z.then_some(1))
        .ok_or_else(|| required("-q", "the queue depth"))?;
    let io_size = io_size
        .or(z.then_some(4096))
        .ok_or_else(|| required("-o", "the I/O size"))?;
    let workload = workload
        .or(z.then_some(Workload::RandRead))
        .ok_or_else(|| required("-w", "the workload"))?;
    let time_s = time_s
        .or(z.then_some(1.0))
        .ok_or_else(|| required("-t", "the run time"))?;
    if read_percent.is_some() && !workload.is_mixed() && !unset.contains(&"workload_type") {
        return Err(UsageError::new(
            "-M",
            None,
            format!("only for rw and randrw, not -w {}", workload.name()),
        ));
    }
    Ok(Parsed::Run(Config {
        source,
        depth,
        io_size,
        workload,
        read_percent: read_percent.unwrap_or(50),
        time_s,
        cpumask,
        target,
        mem_mib,
        no_huge,
        seed,
        json_report,
        progress: true,
        rpc_socket,
        wait_for_tests,
        unset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Parsed, String> {
        parse(s.split_whitespace().map(str::to_owned)).map_err(|e| e.to_string())
    }

    #[test]
    fn good_and_bad() {
        let Ok(Parsed::Run(c)) = p("--null 64 -q 8 -o 4k -w randrw -M 70 -t 1 -m 0x3") else {
            panic!()
        };
        assert_eq!((c.depth, c.io_size, c.read_percent), (8, 4096, 70));
        assert_eq!(c.workload, Workload::RandRw);
        assert!(
            p("--null 64 -q 0 -o 4k -w read -t 1")
                .unwrap_err()
                .contains("-q '0'")
        );
        assert!(
            p("--null 64 -q 1 -o 4k -w foo -t 1")
                .unwrap_err()
                .contains("-w 'foo'")
        );
        assert!(
            p("--null 64 -q 1 -o x -w read -t 1")
                .unwrap_err()
                .contains("-o 'x'")
        );
        assert!(p("-q 1 -o 4k -w read -t 1").unwrap_err().contains("--json"));
        let Ok(Parsed::Run(c)) = p("-z -q 8") else {
            panic!()
        };
        assert_eq!(c.source, Source::Rpc);
        assert_eq!(c.unset, ["io_size", "workload_type", "time_in_sec"]);
        assert_eq!(c.rpc_socket, Some(PathBuf::from("/var/tmp/spdk.sock")));
        assert!(
            p("--null 64 -q 1 -o 4k -w read -t 1 -M 5")
                .unwrap_err()
                .contains("-M")
        );
    }
}
