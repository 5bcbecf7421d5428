//! The crate's one error type and the exit statuses the binary maps it to.

use std::io;
use std::path::PathBuf;

use crate::bdf::Bdf;

/// How `hugepage-setup` exits. The numbers are part of its interface: scripts
/// may rely on them (they are listed in the crate docs and in `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// Everything asked for was done (or, with `--dry-run`, would be).
    Ok = 0,
    /// An operation failed: a sysfs write, a bind that did not take, a
    /// malformed sysfs/procfs file.
    Failed = 1,
    /// Malformed command line: unknown option, bad number, malformed BDF,
    /// a `--node` or `--allow` that names nothing on this machine.
    Usage = 2,
    /// At least one controller was refused because it is in use (mounted
    /// filesystem, swap, holder, open block device, open VFIO group) or
    /// shares its IOMMU group with a device that cannot follow it. The
    /// other controllers were still handled.
    Refused = 3,
    /// No IOMMU: `/sys/kernel/iommu_groups` is empty or a controller has no
    /// `iommu_group`.
    NoIommu = 4,
    /// Not root, or the kernel denied a write.
    Permission = 5,
    /// A kernel module (vfio-pci, nvme) is not loaded and cannot be loaded.
    MissingModule = 6,
    /// Everything else was done, but the kernel reserved fewer hugepages
    /// than asked (memory too fragmented or too small).
    ShortHugepages = 7,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// What failed and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed command line; the text says what is wrong.
    #[error("{0}")]
    Usage(String),

    /// A PCI address that is not `DDDD:BB:DD.F` or `BB:DD.F`.
    #[error("malformed PCI address {text:?}: expected DDDD:BB:DD.F or BB:DD.F (hex)")]
    InvalidBdf {
        /// The text as given.
        text: String,
    },

    /// Reading a sysfs/procfs file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Listing a directory failed.
    #[error("cannot list {}: {source}", path.display())]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Reading a symbolic link failed.
    #[error("cannot read link {}: {source}", path.display())]
    ReadLink {
        /// The link.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Writing a sysfs/procfs file failed.
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A file (or link, or directory entry) did not hold what the kernel
    /// writes there.
    #[error("{}: malformed contents {text:?}: expected {expected}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held.
        text: String,
        /// What it should hold.
        expected: &'static str,
    },

    /// The controller has no IOMMU group: vfio-pci cannot take it.
    #[error(
        "no IOMMU group for {bdf}: enable VT-d/AMD-Vi and boot with intel_iommu=on (or amd_iommu=on)"
    )]
    NoIommu {
        /// The controller.
        bdf: Bdf,
    },

    /// The command changes the system and the process is not root.
    #[error("{what} needs root: run it as root, or add --dry-run to see what it would do")]
    NotRoot {
        /// The command.
        what: &'static str,
    },

    /// A kernel module is not loaded and could not be loaded.
    #[error("kernel module {module} is missing: {why}")]
    MissingModule {
        /// The module.
        module: &'static str,
        /// Why loading it failed.
        why: String,
    },

    /// Mounting hugetlbfs failed.
    #[error("cannot mount hugetlbfs on {}: {source}", target.display())]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// After the unbind/probe sequence the controller is not on the driver
    /// it was bound to.
    #[error(
        "{bdf}: bound to {} instead of {expected} after drivers_probe (see dmesg)",
        actual.as_deref().unwrap_or("no driver")
    )]
    BindFailed {
        /// The controller.
        bdf: Bdf,
        /// The driver it should be on.
        expected: &'static str,
        /// The driver it is on.
        actual: Option<String>,
    },

    /// The machine has no hugepages of the size this tool reserves.
    #[error("no {size_kb}kB hugepages on this system (neither per-node nor global pools in sysfs)")]
    NoHugepageSize {
        /// The page size in KiB.
        size_kb: u64,
    },

    /// `getrlimit(RLIMIT_MEMLOCK)` failed.
    #[error("cannot read the memlock limit: {0}")]
    Rlimit(#[source] io::Error),
}

impl Error {
    /// The exit status this error ends the tool with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) | Error::InvalidBdf { .. } => Exit::Usage,
            Error::NoIommu { .. } => Exit::NoIommu,
            Error::NotRoot { .. } => Exit::Permission,
            Error::MissingModule { .. } => Exit::MissingModule,
            Error::Read { source, .. }
            | Error::ListDir { source, .. }
            | Error::ReadLink { source, .. }
            | Error::Write { source, .. }
            | Error::Mount { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Exit::Permission
            }
            _ => Exit::Failed,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
