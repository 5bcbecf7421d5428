//! System set-up, the counterpart of SPDK's `scripts/setup.sh`: reserve
//! hugepages, mount hugetlbfs, load vfio-pci, bind NVMe controllers to it
//! and give them back to the kernel.
//!
//! Owns: sysfs and procfs writes that prepare a machine.
//!
//! Must not: unbind a controller that holds a mounted filesystem, swap, a
//! device-mapper/MD/LVM holder or an open block device.
//!
//! # The tool
//!
//! ```text
//! hugepage-setup config [--hugemem MIB] [--node N] [--allow BDF...] [--block BDF...] [--dry-run]
//! hugepage-setup status [--allow BDF...] [--block BDF...]
//! hugepage-setup reset  [--allow BDF...] [--block BDF...] [--dry-run]
//! ```
//!
//! - `config` sets the 2 MiB hugepage pools to exactly `--hugemem` MiB
//!   (default 2048), split evenly over the NUMA nodes or all on `--node`;
//!   mounts hugetlbfs on `/dev/hugepages` when no hugetlbfs is mounted;
//!   loads vfio-pci (and vfio_iommu_type1) when its driver is not there
//!   yet; and binds every selected NVMe controller (class `0x010802`) to
//!   vfio-pci: `driver_override` ← `vfio-pci` (kept, so a rescan does not
//!   hand it back to nvme), `driver/unbind` ← BDF, `drivers_probe` ← BDF,
//!   then the `driver` link is checked. It ends with memlock advice when
//!   `RLIMIT_MEMLOCK` is below the hugepage memory.
//! - `reset` moves the controllers back to nvme the same way, then clears
//!   `driver_override` (writes `"\n"`).
//! - `status` prints the pools per node and size (total/free), the
//!   hugetlbfs mounts, the memlock limit, and per controller its BDF,
//!   `vendor:device`, NUMA node, IOMMU group, driver, disks and mounts.
//! - `--dry-run` prints the [`plan::Plan`] (the actions, what is left as
//!   it is, what is refused and why) and changes nothing; it works without
//!   root, though it cannot see other users' open files then.
//!
//! # Refusals
//!
//! [`plan::config`] never unbinds a controller one of whose disks or
//! partitions is mounted (by device number too: the root filesystem shows
//! as `/dev/root`), is active swap, has a holder (LVM, device-mapper, MD)
//! or is open by a process (`/proc/*/fd`); nor one whose IOMMU group holds
//! another device bound to a driver other than vfio-pci/pci-stub (bridges
//! excepted). [`plan::reset`] refuses a controller whose VFIO group or
//! device is open: unbinding would block until that process exits. Refused
//! controllers are named with every reason; the others are still handled.
//!
//! # Exit status
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | an operation failed: a write, a bind that did not take, a malformed sysfs/procfs file |
//! | 2 | usage error (also `--node`/`--allow` naming nothing on this machine) |
//! | 3 | a controller was refused (the others were still handled) |
//! | 4 | no IOMMU: no groups, or a controller without one |
//! | 5 | not root (checked before anything is touched), or permission denied |
//! | 6 | a kernel module is missing and cannot be loaded (nothing was changed) |
//! | 7 | the kernel reserved fewer hugepages than asked (everything else was done) |
//!
//! When several apply, a failed operation (1 or 5) wins, then 3, then 7.
//! `--dry-run` exits 3 when the real run would refuse a controller, and with
//! the plan's error (2, 4, 1) when planning fails.
//!
//! Module loading runs `modprobe`; when it is absent or fails but the
//! driver directory (`/sys/bus/pci/drivers/vfio-pci`) exists, the module
//! counts as loaded (the QEMU guest tier loads modules with `insmod`).
//!
//! # Structure
//!
//! Every file and syscall goes through [`sys::Sys`]; [`sys::HostSys`]
//! resolves paths under a root directory, so the host tests run the whole
//! tool against fixture trees. Reading: [`pci`], [`blockdev`], [`inuse`],
//! [`hugepages`]; deciding: [`plan`]; acting: [`exec`]; printing:
//! [`status`]; the command line: [`cli`].

pub mod bdf;
pub mod blockdev;
pub mod cli;
pub mod error;
pub mod exec;
pub mod hugepages;
pub mod inuse;
pub mod pci;
pub mod plan;
pub mod status;
pub mod sys;

use std::io::Write;

pub use bdf::Bdf;
pub use cli::{Cli, Command, Options};
pub use error::{Error, Exit, Result};
pub use sys::{HostSys, Sys};

fn report(err: &mut dyn Write, e: &Error) -> Exit {
    let _ = writeln!(err, "hugepage-setup: error: {e}");
    e.exit()
}

fn print_plan(plan: &plan::Plan, dry_run: bool, out: &mut dyn Write, err: &mut dyn Write) {
    if dry_run {
        let _ = writeln!(
            out,
            "dry run: nothing is changed; {} would:",
            plan.command.name()
        );
        if plan.actions.is_empty() {
            let _ = writeln!(out, "  (nothing)");
        }
        for action in &plan.actions {
            let _ = writeln!(out, "  {action}");
        }
    }
    for line in &plan.unchanged {
        let _ = writeln!(out, "{line}");
    }
    for refused in &plan.refused {
        let _ = writeln!(err, "hugepage-setup: refusing {refused}");
    }
    for note in &plan.notes {
        let _ = writeln!(err, "hugepage-setup: note: {note}");
    }
}

fn memlock_advice(sys: &dyn Sys, mib: u64, out: &mut dyn Write) {
    if let Ok(Some(limit)) = sys.memlock_limit()
        && limit < mib.saturating_mul(1 << 20)
    {
        let _ = writeln!(
            out,
            "note: the memlock limit is {} KiB, below the {mib} MiB of hugepages: a process \
                 that maps them for DMA needs more (`ulimit -l unlimited`, a memlock line in \
                 /etc/security/limits.conf, or LimitMEMLOCK=infinity for a systemd service)",
            limit / 1024
        );
    }
}

/// Runs a parsed command against `sys`, printing to `out` (results) and
/// `err` (errors, refusals, warnings), and returns the exit status.
pub fn run(sys: &dyn Sys, cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let options = &cli.options;
    match cli.command {
        Command::Help => {
            let _ = out.write_all(cli::HELP.as_bytes());
            Exit::Ok
        }
        Command::Status => match status::render(sys, options) {
            Ok(text) => {
                let _ = out.write_all(text.as_bytes());
                Exit::Ok
            }
            Err(e) => report(err, &e),
        },
        Command::Config | Command::Reset => {
            if !options.dry_run && !sys.is_root() {
                return report(
                    err,
                    &Error::NotRoot {
                        what: cli.command.name(),
                    },
                );
            }
            let planned = if cli.command == Command::Config {
                plan::config(sys, options)
            } else {
                plan::reset(sys, options)
            };
            let plan = match planned {
                Ok(plan) => plan,
                Err(e) => return report(err, &e),
            };
            print_plan(&plan, options.dry_run, out, err);
            let exit = if options.dry_run {
                plan.exit()
            } else {
                match exec::execute(sys, &plan, out, err) {
                    Ok(outcome) => outcome.exit(&plan),
                    Err(e) => return report(err, &e),
                }
            };
            if cli.command == Command::Config {
                memlock_advice(sys, options.hugemem(), out);
            }
            exit
        }
    }
}

/// Parses `args` (without the program name) and runs them: what the binary
/// does. A usage error is printed with a pointer to `--help`.
pub fn main_with<I, S>(sys: &dyn Sys, args: I, out: &mut dyn Write, err: &mut dyn Write) -> Exit
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    match cli::parse(args) {
        Ok(cli) => run(sys, &cli, out, err),
        Err(e) => {
            let _ = writeln!(
                err,
                "hugepage-setup: error: {e} (see hugepage-setup --help)"
            );
            e.exit()
        }
    }
}
