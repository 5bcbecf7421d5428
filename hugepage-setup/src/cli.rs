//! The command line, parsed by hand.

use crate::bdf::Bdf;
use crate::error::{Error, Result};

/// Hugepage memory `config` reserves without `--hugemem`, in MiB (SPDK's
/// `HUGEMEM` default).
pub const DEFAULT_HUGEMEM_MIB: u64 = 2048;

/// The largest `--hugemem` accepted: 1 PiB, far beyond any machine, but
/// small enough that no page arithmetic overflows.
const MAX_HUGEMEM_MIB: u64 = 1 << 30;

/// `--help`.
pub const HELP: &str = "\
usage: hugepage-setup COMMAND [OPTIONS]

Prepares a machine for the user-space NVMe driver, like SPDK's scripts/setup.sh.

commands:
  config   reserve hugepages, mount hugetlbfs (on /dev/hugepages if none is
           mounted), load vfio-pci and bind NVMe controllers to it (with
           driver_override); controllers in use are refused, the others bound
  status   hugepages per NUMA node and page size; per NVMe controller its
           address, ids, NUMA node, IOMMU group, driver, disks and mounts
  reset    give NVMe controllers back to the kernel's nvme driver (hugepages
           stay reserved)
  help     this text

options:
  --hugemem MIB     (config) hugepage memory in MiB, reserved as 2 MiB pages
                    and split evenly over the NUMA nodes (default 2048);
                    the pools are set to exactly this
  --node N          (config) reserve it all on NUMA node N (the other nodes
                    are left as they are)
  --allow BDF...    only these controllers (repeatable; also comma lists)
  --block BDF...    never these controllers (wins over --allow)
  --dry-run         (config, reset) print the plan, change nothing; works
                    without root
  -h, --help        this text
BDFs are written 0000:00:04.0 or 00:04.0.

A controller is refused (never unbound) when one of its disks or partitions
is mounted (the root disk included), is swap, is held by LVM, MD or
device-mapper, or is open by a process; or when its IOMMU group holds
another device that is bound to a driver and not being bound itself. reset
refuses a controller whose VFIO group is open.

exit status:
  0  done
  1  an operation failed (a write, a bind that did not take, a malformed
     sysfs or procfs file)
  2  usage error
  3  a controller was refused (the others were still handled)
  4  no IOMMU (no IOMMU groups, or a controller without one)
  5  not root, or permission denied
  6  a kernel module is missing (vfio-pci, nvme) and cannot be loaded
  7  the kernel reserved fewer hugepages than asked (all else done)
When several apply: 1 or 5 (an operation failed), then 3, then 7.
";

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Reserve hugepages and bind controllers to vfio-pci.
    Config,
    /// Print the status table.
    Status,
    /// Give controllers back to the nvme driver.
    Reset,
    /// Print the help text.
    Help,
}

impl Command {
    /// The command's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Command::Config => "config",
            Command::Status => "status",
            Command::Reset => "reset",
            Command::Help => "help",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Command::Config,
            Command::Status,
            Command::Reset,
            Command::Help,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// The options, whatever the command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Hugepage memory in MiB (`config`); `None` for the default.
    pub hugemem_mib: Option<u64>,
    /// Reserve on this node only (`config`).
    pub node: Option<u32>,
    /// Only these controllers (all when empty).
    pub allow: Vec<Bdf>,
    /// Never these controllers.
    pub block: Vec<Bdf>,
}

impl Options {
    /// Whether a controller passes `--allow` and `--block`.
    pub fn selects(&self, bdf: Bdf) -> bool {
        (self.allow.is_empty() || self.allow.contains(&bdf)) && !self.block.contains(&bdf)
    }

    /// The hugepage memory to reserve, in MiB.
    pub fn hugemem(&self) -> u64 {
        self.hugemem_mib.unwrap_or(DEFAULT_HUGEMEM_MIB)
    }
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cli {
    /// The command.
    pub command: Command,
    /// Its options.
    pub options: Options,
}

fn usage(message: String) -> Error {
    Error::Usage(message)
}

fn push_bdfs(option: &str, value: &str, into: &mut Vec<Bdf>) -> Result<()> {
    let mut any = false;
    for piece in value.split(|c: char| c == ',' || c.is_whitespace()) {
        if piece.is_empty() {
            continue;
        }
        let bdf: Bdf = piece.parse().map_err(|e| usage(format!("{option}: {e}")))?;
        if !into.contains(&bdf) {
            into.push(bdf);
        }
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err(usage(format!("{option} needs a PCI address")))
    }
}

/// Parses the arguments (without the program name). Options may come
/// before or after the command.
///
/// # Errors
/// [`Error::Usage`] naming what is wrong: an unknown option or command, a
/// missing or malformed value (a malformed BDF is named), an option the
/// command does not take.
pub fn parse<I, S>(args: I) -> Result<Cli>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut command: Option<Command> = None;
    let mut options = Options::default();
    let mut help = false;
    let mut seen: Vec<&'static str> = Vec::new();
    let mut args = args.into_iter().map(Into::into).peekable();

    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => Ok(v),
                None => Err(usage(format!("{name} needs a value"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => help = true,
            "--dry-run" => {
                options.dry_run = true;
                seen.push("--dry-run");
            }
            "--hugemem" => {
                let v = value("--hugemem")?;
                let mib = v
                    .parse::<u64>()
                    .ok()
                    .filter(|m| *m <= MAX_HUGEMEM_MIB)
                    .ok_or_else(|| usage(format!("--hugemem {v}: expected MiB, a whole number")))?;
                options.hugemem_mib = Some(mib);
                seen.push("--hugemem");
            }
            "--node" => {
                let v = value("--node")?;
                let node = v
                    .parse::<u32>()
                    .map_err(|_| usage(format!("--node {v}: expected a NUMA node number")))?;
                options.node = Some(node);
                seen.push("--node");
            }
            "--allow" | "--block" => {
                let name = if flag == "--allow" {
                    "--allow"
                } else {
                    "--block"
                };
                let first = value(name)?;
                let into = if name == "--allow" {
                    &mut options.allow
                } else {
                    &mut options.block
                };
                push_bdfs(name, &first, into)?;
                // More addresses may follow, up to the next option or
                // command name.
                if inline.is_none() {
                    while let Some(next) =
                        args.next_if(|a| !a.starts_with('-') && Command::from_name(a).is_none())
                    {
                        push_bdfs(name, &next, into)?;
                    }
                }
            }
            _ if flag.starts_with('-') => {
                return Err(usage(format!("unknown option {arg}")));
            }
            _ => match (Command::from_name(&arg), command) {
                (Some(c), None) => command = Some(c),
                (Some(c), Some(first)) => {
                    return Err(usage(format!(
                        "two commands: {} and {}",
                        first.name(),
                        c.name()
                    )));
                }
                (None, _) => {
                    return Err(usage(format!(
                        "unknown command or argument {arg:?} (commands: config, status, reset, help)"
                    )));
                }
            },
        }
    }

    if help {
        return Ok(Cli {
            command: Command::Help,
            options,
        });
    }
    let command = command
        .ok_or_else(|| usage("no command given (config, status, reset or help)".to_owned()))?;
    let allowed: &[&str] = match command {
        Command::Config => &["--dry-run", "--hugemem", "--node"],
        Command::Reset => &["--dry-run"],
        Command::Status | Command::Help => &[],
    };
    if let Some(bad) = seen.iter().find(|s| !allowed.contains(s)) {
        return Err(usage(format!(
            "{bad} is not an option of {}",
            command.name()
        )));
    }
    Ok(Cli { command, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn err(args: &[&str]) -> String {
        let e = parse(args.iter().copied()).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        e.to_string()
    }

    #[test]
    fn parses_config_with_everything() {
        let cli = parse([
            "config",
            "--hugemem",
            "600",
            "--node=1",
            "--allow",
            "00:01.0",
            "0000:00:02.0,00:03.0",
            "--block",
            "00:03.0",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(cli.command, Command::Config);
        let o = &cli.options;
        assert!(o.dry_run);
        assert_eq!(o.hugemem(), 600);
        assert_eq!(o.node, Some(1));
        assert_eq!(o.allow, [bdf("00:01.0"), bdf("00:02.0"), bdf("00:03.0")]);
        assert!(o.selects(bdf("00:01.0")));
        assert!(!o.selects(bdf("00:03.0")), "--block wins");
        assert!(!o.selects(bdf("00:04.0")), "not allowed");
    }

    #[test]
    fn options_may_precede_the_command() {
        let cli = parse(["--dry-run", "reset"]).unwrap();
        assert_eq!(cli.command, Command::Reset);
        assert!(cli.options.dry_run);
        let cli = parse(["--allow", "00:01.0", "status"]).unwrap();
        assert_eq!(cli.command, Command::Status);
        assert_eq!(cli.options.allow, [bdf("00:01.0")]);
        assert_eq!(parse(["config"]).unwrap().options.hugemem(), 2048);
    }

    #[test]
    fn help_wins() {
        assert_eq!(parse(["config", "--help"]).unwrap().command, Command::Help);
        assert_eq!(parse(["help"]).unwrap().command, Command::Help);
        assert_eq!(parse(["-h"]).unwrap().command, Command::Help);
    }

    #[test]
    fn usage_errors_name_the_problem() {
        assert!(err(&[]).contains("no command"));
        assert!(err(&["frobnicate"]).contains("frobnicate"));
        assert!(err(&["config", "--frob"]).contains("--frob"));
        assert!(err(&["config", "--hugemem"]).contains("needs a value"));
        assert!(err(&["config", "--hugemem", "1G"]).contains("1G"));
        assert!(err(&["config", "--node", "-1"]).contains("--node -1"));
        assert!(err(&["config", "--allow", "00:04.9"]).contains("\"00:04.9\""));
        assert!(err(&["config", "--allow", "00:01.0", "zz"]).contains("\"zz\""));
        assert!(err(&["config", "--block"]).contains("needs a value"));
        assert!(err(&["config", "--allow", ","]).contains("needs a PCI address"));
        assert!(err(&["reset", "--hugemem", "2"]).contains("not an option of reset"));
        assert!(err(&["status", "--dry-run"]).contains("not an option of status"));
        assert!(err(&["config", "reset"]).contains("two commands"));
    }
}
