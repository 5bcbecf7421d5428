//! Command-line arguments, in SPDK's application spelling where SPDK has
//! one (`-m`, `-s`, `--no-huge`, `-r`, `--json`, `--wait-for-rpc`).

use std::path::PathBuf;
use std::time::Duration;

/// SPDK's default RPC socket, so `spdk-rpc` works without `-s`.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/spdk.sock";

/// The usage text.
pub const USAGE: &str = "\
appliance: the storage appliance (SPDK-compatible JSON-RPC, JSON config, NBD export)

usage: appliance [options]

  -m, --cpumask MASK        reactor cores, SPDK syntax: 0x3 or [0,2-3] (default 0x1)
  -s, --mem-size MIB        DMA memory limit in MiB (default 1024)
      --no-huge             anonymous memory instead of hugepages (no device DMA)
      --huge-dir DIR        hugetlbfs mount to take hugepages from (default: MAP_HUGETLB)
  -r, --rpc-socket PATH     RPC Unix socket (default /var/tmp/spdk.sock)
  -c, --json FILE           JSON config to load at start ({\"subsystems\": [...]})
      --json-ignore-init-errors
                            go on when a call of the start-up config fails
      --wait-for-rpc        wait for framework_start_init before loading --json
      --log-level LEVEL     error, warn, info, debug or trace (default info)
      --idle MODE           what an idle reactor does: spin, yield or sleep (default yield)
      --no-pin              do not pin reactor threads to their cores
  -h, --help                this text
  -v, --version             the version
";

/// What a reactor does with nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Poll at once again (SPDK's behaviour; a core fully used).
    Spin,
    /// Yield the CPU between idle iterations.
    Yield,
    /// Sleep 50 µs between idle iterations.
    Sleep,
}

impl Idle {
    /// The runtime's strategy.
    pub fn strategy(self) -> reactor::IdleStrategy {
        match self {
            Idle::Spin => reactor::IdleStrategy::Spin,
            Idle::Yield => reactor::IdleStrategy::Yield { after: 256 },
            Idle::Sleep => reactor::IdleStrategy::Sleep {
                after: 256,
                duration: Duration::from_micros(50),
            },
        }
    }
}

/// Parsed arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// Core mask or list.
    pub cpumask: String,
    /// DMA memory limit in MiB.
    pub mem_size_mib: usize,
    /// No hugepages.
    pub no_huge: bool,
    /// hugetlbfs mount.
    pub huge_dir: Option<PathBuf>,
    /// RPC socket path.
    pub rpc_socket: PathBuf,
    /// Start-up config.
    pub json: Option<PathBuf>,
    /// Keep going when a start-up config call fails.
    pub json_ignore_init_errors: bool,
    /// Start in the start-up state.
    pub wait_for_rpc: bool,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Idle strategy.
    pub idle: Idle,
    /// Pin reactors.
    pub pin: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            cpumask: "0x1".into(),
            mem_size_mib: 1024,
            no_huge: false,
            huge_dir: None,
            rpc_socket: DEFAULT_RPC_SOCKET.into(),
            json: None,
            json_ignore_init_errors: false,
            wait_for_rpc: false,
            log_level: log::LevelFilter::Info,
            idle: Idle::Yield,
            pin: true,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the appliance.
    Run(Args),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// A command-line mistake, naming the option.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Parses the arguments (without the program name).
///
/// # Errors
/// [`ArgError`] naming the option that is unknown, lacks its value or has
/// a bad one.
pub fn parse(argv: &[String]) -> Result<Command, ArgError> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let raw = &argv[i];
        i += 1;
        let (opt, inline) = match raw.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_owned())),
            _ => (raw.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, ArgError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = argv
                .get(i)
                .cloned()
                .ok_or_else(|| ArgError(format!("{name} needs a value")))?;
            i += 1;
            Ok(v)
        };
        match opt {
            "-h" | "--help" => return Ok(Command::Help),
            "-v" | "--version" => return Ok(Command::Version),
            "-m" | "--cpumask" => {
                let v = value(opt)?;
                reactor::CpuSet::parse(&v).map_err(|e| ArgError(format!("{opt} {v}: {e}")))?;
                a.cpumask = v;
            }
            "-s" | "--mem-size" => {
                let v = value(opt)?;
                let mib: usize = v
                    .trim_end_matches(['M', 'm'])
                    .parse()
                    .map_err(|_| ArgError(format!("{opt} {v}: not a size in MiB")))?;
                if mib < 2 {
                    return Err(ArgError(format!("{opt} {v}: at least 2 MiB")));
                }
                a.mem_size_mib = mib;
            }
            "--no-huge" => a.no_huge = true,
            "--huge-dir" => a.huge_dir = Some(value(opt)?.into()),
            "-r" | "--rpc-socket" => a.rpc_socket = value(opt)?.into(),
            "-c" | "--json" | "--config" => a.json = Some(value(opt)?.into()),
            "--json-ignore-init-errors" => a.json_ignore_init_errors = true,
            "--wait-for-rpc" => a.wait_for_rpc = true,
            "--log-level" => {
                let v = value(opt)?;
                a.log_level = v.parse().map_err(|_| {
                    ArgError(format!("{opt} {v}: error, warn, info, debug or trace"))
                })?;
            }
            "--idle" => {
                let v = value(opt)?;
                a.idle = match v.as_str() {
                    "spin" => Idle::Spin,
                    "yield" => Idle::Yield,
                    "sleep" => Idle::Sleep,
                    _ => return Err(ArgError(format!("{opt} {v}: spin, yield or sleep"))),
                };
            }
            "--no-pin" => a.pin = false,
            other => return Err(ArgError(format!("unknown option {other}"))),
        }
    }
    Ok(Command::Run(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ArgError> {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        parse(&v)
    }

    #[test]
    fn options() {
        let Command::Run(a) =
            p("-m 0x3 -s 256 --no-huge -r /tmp/s.sock --json=c.json --idle sleep").unwrap()
        else {
            panic!()
        };
        assert_eq!(a.cpumask, "0x3");
        assert_eq!(a.mem_size_mib, 256);
        assert!(a.no_huge);
        assert_eq!(a.rpc_socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(a.json, Some(PathBuf::from("c.json")));
        assert_eq!(a.idle, Idle::Sleep);
        assert_eq!(p("").unwrap(), Command::Run(Args::default()));
        assert_eq!(p("--help").unwrap(), Command::Help);
        assert!(p("-m").unwrap_err().0.contains("-m"));
        assert!(p("-m zz").unwrap_err().0.contains("-m zz"));
        assert!(p("--bogus").unwrap_err().0.contains("--bogus"));
        assert!(p("-s x").unwrap_err().0.contains("-s"));
    }
}
