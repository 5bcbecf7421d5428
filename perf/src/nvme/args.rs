//! `nvme-perf`'s command line, parsed by hand with SPDK's short options
//! (`spdk_nvme_perf -q 32 -o 4096 -w randread -t 10 -r 'trtype:PCIe
//! traddr:0000:00:04.0'`). Every bad value is a [`UsageError`] naming the
//! option and the value.

use nvme_driver::pci::Bdf;

use crate::clock::ClockChoice;

/// The usage text (`-h`).
pub const USAGE: &str = "\
usage: nvme-perf -q DEPTH -o SIZE -w PATTERN -t SECONDS [options]

Drives NVMe controllers bound to vfio-pci straight through this project's
user-space driver (like SPDK's spdk_nvme_perf): one queue pair per core per
namespace, polled, and reports IOPS, MiB/s and latency percentiles.

required:
  -q, --io-depth N          I/Os outstanding per queue pair (1..65535)
  -o, --io-size BYTES       bytes per I/O, a multiple of the block size
                            (suffixes k/K and m/M allowed: 4k, 128K)
  -w, --io-pattern P        read, write, randread, randwrite, rw, randrw
  -t, --time SECONDS        measured time (1..86400)
options:
  -M, --rwmixread PCT       percent of reads for rw and randrw (required
                            with them, refused otherwise)
  -a, --warmup-time SECS    run this long before measuring (default 0)
  -c, --core-mask MASK      cores to run on: hex mask (0x3, 3) or a list
                            ([0,2-3]); default 0x1
  -r, --transport-id TRID   a controller: 'trtype:PCIe traddr:0000:00:04.0'
                            with an optional 'ns:N' (repeatable); default:
                            every NVMe controller bound to vfio-pci
  -n, --nsid N              namespace to use on every controller (default:
                            all active namespaces)
  -s, --mem-size MIB        most hugepage DMA memory to reserve (default:
                            what the run needs)
      --verify              check every read against what this run wrote
                            there (needs -w rw or randrw; random reads aim
                            at blocks already written, and a read with
                            nothing written to check against becomes a
                            write)
      --json                print the report as JSON on stdout
      --seed N              seed of the random offsets (default 1)
      --clock auto|tsc|os   the measuring clock (default auto: the CPU's
                            time-stamp counter when the kernel trusts it)
  -h, --help                this text
for tests:
      --sim                 run against the driver's software controller
                            model (namespaces 1: 512 B x 32768, 2: 4096 B x
                            4096; anonymous memory, no device) instead of
                            PCIe controllers

Each core's namespaces are split among the cores: the core of index k of n
uses the k-th n-th of every namespace. Progress goes to stderr once a
second. Exit status: 0, 1 (device, I/O or verify failure), 2 (usage).
";

/// The access pattern (`-w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential, mixed by `-M`.
    Rw,
    /// Random, mixed by `-M`.
    RandRw,
}

impl Pattern {
    /// Parses the `-w` value.
    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "rw" => Pattern::Rw,
            "randrw" => Pattern::RandRw,
            _ => return None,
        })
    }

    /// The `-w` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::Rw => "rw",
            Pattern::RandRw => "randrw",
        }
    }

    /// Random offsets (else sequential).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw
        )
    }

    /// Reads and writes mixed by `-M`.
    pub fn is_mixed(self) -> bool {
        matches!(self, Pattern::Rw | Pattern::RandRw)
    }
}

/// A controller given with `-r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its PCI address.
    pub bdf: Bdf,
    /// The namespace of `ns:N`, if given.
    pub nsid: Option<u32>,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `-q`.
    pub depth: u32,
    /// `-o`, bytes.
    pub io_size: usize,
    /// `-w`.
    pub pattern: Pattern,
    /// Percent of reads: `-M`, or 100 / 0 for pure patterns.
    pub read_percent: u32,
    /// `-t`.
    pub time_s: u64,
    /// `-a`.
    pub warmup_s: u64,
    /// `-c`, ascending core ids.
    pub cores: Vec<usize>,
    /// `-r`, in order; empty = every controller bound to vfio-pci.
    pub targets: Vec<Target>,
    /// `-n`.
    pub nsid: Option<u32>,
    /// `-s`, MiB.
    pub mem_mib: Option<usize>,
    /// `--json`.
    pub json: bool,
    /// `--verify`.
    pub verify: bool,
    /// `--seed`.
    pub seed: u64,
    /// `--clock`.
    pub clock: ClockChoice,
    /// `--sim`.
    pub sim: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A run.
    Run(Box<Config>),
    /// `-h`.
    Help,
}

pub use crate::cli::UsageError;
use crate::cli::{Lexer, Spec, int};

/// Which option a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Depth,
    Size,
    Pattern,
    Mix,
    Time,
    Warmup,
    Cores,
    Trid,
    Nsid,
    Mem,
    Json,
    Verify,
    Seed,
    Clock,
    Sim,
    Help,
}

const OPTIONS: [Spec<Opt>; 16] = [
    Spec::value(Some('q'), Some("io-depth"), Opt::Depth),
    Spec::value(Some('o'), Some("io-size"), Opt::Size),
    Spec::value(Some('w'), Some("io-pattern"), Opt::Pattern),
    Spec::value(Some('M'), Some("rwmixread"), Opt::Mix),
    Spec::value(Some('t'), Some("time"), Opt::Time),
    Spec::value(Some('a'), Some("warmup-time"), Opt::Warmup),
    Spec::value(Some('c'), Some("core-mask"), Opt::Cores),
    Spec::value(Some('r'), Some("transport-id"), Opt::Trid),
    Spec::value(Some('n'), Some("nsid"), Opt::Nsid),
    Spec::value(Some('s'), Some("mem-size"), Opt::Mem),
    Spec::flag(None, Some("json"), Opt::Json),
    Spec::flag(None, Some("verify"), Opt::Verify),
    Spec::value(None, Some("seed"), Opt::Seed),
    Spec::value(None, Some("clock"), Opt::Clock),
    Spec::flag(None, Some("sim"), Opt::Sim),
    Spec::flag(Some('h'), Some("help"), Opt::Help),
];

/// Bytes, with an optional k/K/m/M suffix (powers of 1024): a multiple of
/// 512 up to 2 MiB.
fn bytes(opt: &str, v: &str) -> Result<usize, UsageError> {
    match crate::cli::size(opt, v) {
        Ok(n) if n % 512 == 0 && n <= 2 << 20 => Ok(n),
        _ => Err(UsageError::new(
            opt,
            Some(v),
            "I/O size must be a positive number of bytes, a multiple of 512 up to 2 MiB (4096, 4k, 128K)",
        )),
    }
}

/// A core mask: hex (`0x3`, `3`) or a list (`[0,2-3]`).
fn cores(opt: &str, v: &str) -> Result<Vec<usize>, UsageError> {
    const MAX_CORE: usize = 1023;
    let bad = |why: &str| UsageError::new(opt, Some(v), why.to_owned());
    let mut set = std::collections::BTreeSet::new();
    if let Some(list) = v.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        for part in list.split(',') {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if a <= b && b <= MAX_CORE => (a, b),
                _ => return Err(bad("core list must be like [0,2-3] (cores 0..1023)")),
            };
            set.extend(a..=b);
        }
    } else {
        let hex = v.strip_prefix("0x").or(v.strip_prefix("0X")).unwrap_or(v);
        if hex.is_empty() || hex.len() > 256 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("core mask must be hex (0x3) or a list ([0,2-3])"));
        }
        for (i, c) in hex.chars().rev().enumerate() {
            let d = c.to_digit(16).expect("hex digit");
            for bit in 0..4 {
                if d & (1 << bit) != 0 {
                    set.insert(i * 4 + bit);
                }
            }
        }
    }
    if set.is_empty() {
        return Err(bad("core mask selects no core"));
    }
    Ok(set.into_iter().collect())
}

/// A transport id: `trtype:PCIe traddr:0000:00:04.0 [ns:N]`.
pub fn transport_id(opt: &str, v: &str) -> Result<Target, UsageError> {
    let bad = |why: String| UsageError::new(opt, Some(v), why);
    let mut bdf = None;
    let mut nsid = None;
    let mut trtype = None;
    for kv in v.split_whitespace() {
        let Some((k, val)) = kv.split_once(':') else {
            return Err(bad(format!("'{kv}' is not key:value")));
        };
        match k.to_ascii_lowercase().as_str() {
            "trtype" => {
                if !val.eq_ignore_ascii_case("pcie") {
                    return Err(bad(format!("trtype {val}: only PCIe is supported")));
                }
                trtype = Some(());
            }
            "traddr" => {
                bdf = Some(
                    val.parse::<Bdf>()
                        .map_err(|e| bad(format!("traddr: {e}")))?,
                );
            }
            "ns" => {
                nsid = Some(
                    val.parse::<u32>()
                        .ok()
                        .filter(|n| (1..0xFFFF_FFFF).contains(n))
                        .ok_or_else(|| bad(format!("ns:{val}: not a namespace id")))?,
                );
            }
            _ => return Err(bad(format!("unknown key '{k}' (trtype, traddr, ns)"))),
        }
    }
    if trtype.is_none() {
        return Err(bad("missing trtype:PCIe".into()));
    }
    let bdf = bdf.ok_or_else(|| bad("missing traddr:<PCI address>".into()))?;
    Ok(Target { bdf, nsid })
}

/// Parses the arguments (without the program name).
///
/// # Errors
/// [`UsageError`] naming the first bad option.
pub fn parse<I, S>(args: I) -> Result<Parsed, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut lexer = Lexer::new(args.into_iter().map(Into::into).collect::<Vec<String>>());
    let mut depth = None;
    let mut io_size = None;
    let mut pattern = None;
    let mut mix: Option<(String, u32)> = None;
    let mut time_s = None;
    let mut c = Config {
        depth: 0,
        io_size: 0,
        pattern: Pattern::Read,
        read_percent: 100,
        time_s: 0,
        warmup_s: 0,
        cores: vec![0],
        targets: Vec::new(),
        nsid: None,
        mem_mib: None,
        json: false,
        verify: false,
        seed: 1,
        clock: ClockChoice::Auto,
        sim: false,
    };
    let mut verify_opt = String::new();
    while let Some(arg) = lexer.next_arg(&OPTIONS) {
        let arg = arg?;
        let (name, opt, value) = (arg.name, arg.opt, arg.value);
        let v = value.as_str();
        let n = name.as_str();
        match opt {
            Opt::Help => return Ok(Parsed::Help),
            Opt::Depth => depth = Some(int(n, v, 1, 65535, "queue depth")? as u32),
            Opt::Size => io_size = Some(bytes(n, v)?),
            Opt::Pattern => {
                pattern = Some(Pattern::parse(v).ok_or_else(|| {
                    UsageError::new(
                        n,
                        Some(v),
                        "pattern must be read, write, randread, randwrite, rw or randrw",
                    )
                })?)
            }
            Opt::Mix => mix = Some((n.to_owned(), int(n, v, 0, 100, "read percentage")? as u32)),
            Opt::Time => time_s = Some(int(n, v, 1, 86_400, "time in seconds")?),
            Opt::Warmup => c.warmup_s = int(n, v, 0, 3_600, "warm-up time in seconds")?,
            Opt::Cores => c.cores = cores(n, v)?,
            Opt::Trid => c.targets.push(transport_id(n, v)?),
            Opt::Nsid => c.nsid = Some(int(n, v, 1, 0xFFFF_FFFE, "namespace id")? as u32),
            Opt::Mem => c.mem_mib = Some(int(n, v, 2, 1 << 20, "memory size in MiB")? as usize),
            Opt::Json => c.json = true,
            Opt::Verify => {
                c.verify = true;
                verify_opt = n.to_owned();
            }
            Opt::Seed => c.seed = crate::cli::seed(n, v)?,
            Opt::Clock => {
                c.clock = match v {
                    "auto" => ClockChoice::Auto,
                    "tsc" => ClockChoice::Tsc,
                    "os" => ClockChoice::Os,
                    _ => return Err(UsageError::new(n, Some(v), "clock must be auto, tsc or os")),
                }
            }
            Opt::Sim => c.sim = true,
        }
    }
    let missing =
        |o: &str, what: &str| UsageError::new(o, None, format!("missing: {what} is required"));
    c.depth = depth.ok_or_else(|| missing("-q", "the queue depth"))?;
    c.io_size = io_size.ok_or_else(|| missing("-o", "the I/O size"))?;
    c.pattern = pattern.ok_or_else(|| missing("-w", "the I/O pattern"))?;
    c.time_s = time_s.ok_or_else(|| missing("-t", "the run time"))?;
    c.read_percent = match (c.pattern, mix) {
        (Pattern::Read | Pattern::RandRead, None) => 100,
        (Pattern::Write | Pattern::RandWrite, None) => 0,
        (p, Some((o, m))) if !p.is_mixed() => {
            return Err(UsageError::new(
                &o,
                Some(&m.to_string()),
                format!("applies to -w rw and randrw only, not {}", p.name()),
            ));
        }
        (p, None) => {
            return Err(UsageError::new(
                "-M",
                None,
                format!("missing: -w {} needs the read percentage", p.name()),
            ));
        }
        (_, Some((_, m))) => m,
    };
    if c.verify && !c.pattern.is_mixed() {
        return Err(UsageError::new(
            &verify_opt,
            None,
            format!(
                "checks reads against this run's writes: use -w rw or randrw (not {})",
                c.pattern.name()
            ),
        ));
    }
    if c.sim && !c.targets.is_empty() {
        return Err(UsageError::new("--sim", None, "cannot be combined with -r"));
    }
    Ok(Parsed::Run(Box::new(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Config, UsageError> {
        let words = split(line);
        match parse(words)? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Help => panic!("help"),
        }
    }

    /// Splits on spaces, keeping '...' together (shell-like, for tests).
    fn split(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for ch in line.chars() {
            match ch {
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    #[test]
    fn spdk_style_command_line() {
        let c = run(
            "-q 32 -o 4096 -w randread -t 10 -c 0x3 -a 2 -r 'trtype:PCIe traddr:0000:00:04.0' \
             -r 'trtype:pcie traddr:00:05.0 ns:2' -n 1 -s 64 --json --seed 0x10 --clock os",
        )
        .unwrap();
        assert_eq!(c.depth, 32);
        assert_eq!(c.io_size, 4096);
        assert_eq!(c.pattern, Pattern::RandRead);
        assert_eq!(c.read_percent, 100);
        assert_eq!((c.time_s, c.warmup_s), (10, 2));
        assert_eq!(c.cores, vec![0, 1]);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].bdf.to_string(), "0000:00:04.0");
        assert_eq!(c.targets[0].nsid, None);
        assert_eq!(c.targets[1].bdf.to_string(), "0000:00:05.0");
        assert_eq!(c.targets[1].nsid, Some(2));
        assert_eq!(c.nsid, Some(1));
        assert_eq!(c.mem_mib, Some(64));
        assert!(c.json && !c.verify && !c.sim);
        assert_eq!(c.seed, 16);
        assert_eq!(c.clock, ClockChoice::Os);
    }

    #[test]
    fn attached_and_long_forms() {
        let c = run("-q128 -o128k -wread -t5 --io-depth=64 --rwmixread=70 --io-pattern randrw --verify --sim")
            .unwrap();
        assert_eq!(c.depth, 64, "the last one wins");
        assert_eq!(c.io_size, 128 << 10);
        assert_eq!(c.pattern, Pattern::RandRw);
        assert_eq!(c.read_percent, 70);
        assert!(c.verify && c.sim);
        assert_eq!(c.cores, vec![0], "default core mask 0x1");
        assert_eq!(run("-q 1 -o 1M -w write -t 1").unwrap().read_percent, 0);
        assert_eq!(run("-q 1 -o 512 -w rw -M 0 -t 1").unwrap().read_percent, 0);
    }

    #[test]
    fn core_masks() {
        let c = |m: &str| run(&format!("-q 1 -o 4096 -w read -t 1 -c {m}")).map(|c| c.cores);
        assert_eq!(c("1").unwrap(), vec![0]);
        assert_eq!(c("0xA").unwrap(), vec![1, 3]);
        assert_eq!(c("F0").unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(c("[0,2-3,7]").unwrap(), vec![0, 2, 3, 7]);
        assert_eq!(c("0x100000000").unwrap(), vec![32]);
        for bad in ["0", "0x", "xyz", "[]", "[3-1]", "[0,a]", "[2000]"] {
            let e = c(bad).unwrap_err();
            assert_eq!(e.option, "-c", "{bad}");
        }
    }

    /// Every bad value names its option (as typed) and the value.
    #[test]
    fn bad_values_name_the_option() {
        let base = "-q 32 -o 4096 -w randread -t 10";
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("-q 0", "-q", Some("0")),
            ("-q 65536", "-q", Some("65536")),
            ("-q x", "-q", Some("x")),
            ("--io-depth=-1", "--io-depth", Some("-1")),
            ("-o 1000", "-o", Some("1000")),
            ("-o 0", "-o", Some("0")),
            ("-o 4M", "-o", Some("4M")),
            ("-o 4q", "-o", Some("4q")),
            ("-w randomread", "-w", Some("randomread")),
            ("-t 0", "-t", Some("0")),
            ("-t 1.5", "-t", Some("1.5")),
            ("-a -1", "-a", Some("-1")),
            ("-M 50", "-M", Some("50")),
            ("-n 0", "-n", Some("0")),
            ("-s 1", "-s", Some("1")),
            (
                "-r 'trtype:RDMA traddr:0000:00:04.0'",
                "-r",
                Some("trtype:RDMA traddr:0000:00:04.0"),
            ),
            (
                "-r 'trtype:PCIe traddr:0000:00:44.0'",
                "-r",
                Some("trtype:PCIe traddr:0000:00:44.0"),
            ),
            (
                "-r 'traddr:0000:00:04.0'",
                "-r",
                Some("traddr:0000:00:04.0"),
            ),
            ("-r 'trtype:PCIe'", "-r", Some("trtype:PCIe")),
            (
                "-r 'trtype:PCIe traddr:0000:00:04.0 ns:x'",
                "-r",
                Some("trtype:PCIe traddr:0000:00:04.0 ns:x"),
            ),
            (
                "-r 'trtype:PCIe subnqn:x traddr:0000:00:04.0'",
                "-r",
                Some("trtype:PCIe subnqn:x traddr:0000:00:04.0"),
            ),
            ("--seed z", "--seed", Some("z")),
            ("--clock hpet", "--clock", Some("hpet")),
            ("--verify", "--verify", None),
            ("--json=1", "--json", Some("1")),
            ("-x 1", "-x", None),
            ("--frobnicate", "--frobnicate", None),
            ("stray", "stray", None),
        ];
        for (extra, option, value) in cases {
            let e = run(&format!("{base} {extra}")).unwrap_err();
            assert_eq!(e.option, *option, "{extra}: {e}");
            assert_eq!(e.value.as_deref(), *value, "{extra}: {e}");
            let text = e.to_string();
            assert!(text.starts_with(option), "{text}");
        }
        let e = run(&format!("{base} -q")).unwrap_err();
        assert_eq!(
            (e.option.as_str(), e.message.as_str()),
            ("-q", "needs a value")
        );
        let e = run("-q 1 -o 4096 -w read -t 1 -o 1000").unwrap_err();
        assert_eq!(
            e.to_string(),
            "-o '1000': I/O size must be a positive number of bytes, a multiple of 512 up to 2 MiB (4096, 4k, 128K)"
        );
    }

    #[test]
    fn required_options_and_combinations() {
        for (line, option) in [
            ("-o 4096 -w read -t 1", "-q"),
            ("-q 1 -w read -t 1", "-o"),
            ("-q 1 -o 4096 -t 1", "-w"),
            ("-q 1 -o 4096 -w read", "-t"),
            ("-q 1 -o 4096 -w randrw -t 1", "-M"),
            ("-q 1 -o 4096 -w write -t 1 -M 10", "-M"),
            ("-q 1 -o 4096 -w randread -t 1 --verify", "--verify"),
            (
                "-q 1 -o 4096 -w read -t 1 --sim -r 'trtype:PCIe traddr:0000:00:04.0'",
                "--sim",
            ),
        ] {
            let e = run(line).unwrap_err();
            assert_eq!(e.option, option, "{line}: {e}");
        }
        assert_eq!(parse(["-h"]).unwrap(), Parsed::Help);
        assert_eq!(parse(["-q", "1", "--help"]).unwrap(), Parsed::Help);
    }
}
