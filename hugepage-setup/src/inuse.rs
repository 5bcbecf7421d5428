//! Whether a block device is in use: mounted, swap, held by device-mapper /
//! LVM / MD, or open by a process. A controller whose disks are in use is
//! never unbound (a storage appliance must not unbind its own root disk).
//!
//! The sources, read once into a [`Snapshot`]:
//! - `/proc/self/mountinfo` (by device number, which catches a root
//!   filesystem shown as `/dev/root`) and `/proc/mounts` (by source name);
//! - `/proc/swaps`;
//! - `/sys/block/<disk>[/<part>]/holders/`;
//! - `/proc/<pid>/fd/*` links to `/dev/...` (only the caller's own processes
//!   are visible unless root).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::blockdev::BlockDev;
use crate::error::{Error, Result};
use crate::sys::{self, Sys};

/// One mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted (`/dev/nvme0n1p1`, `/dev/root`, `nodev`).
    pub source: String,
    /// Where.
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
    /// The device number, from `mountinfo`.
    pub devno: Option<(u32, u32)>,
}

/// A file a process holds open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// The process.
    pub pid: u32,
    /// Its name (`/proc/<pid>/comm`).
    pub comm: String,
    /// The path the fd link names (`/dev/nvme0n1`).
    pub target: String,
}

/// The system's mounts, swaps and open files at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Mounted filesystems (mountinfo and /proc/mounts merged).
    pub mounts: Vec<Mount>,
    /// Active swap areas (`/proc/swaps` file names).
    pub swaps: Vec<String>,
    /// Open files under `/dev`.
    pub open: Vec<OpenFile>,
    /// Processes whose fds could not be read (not root): their open
    /// devices are unknown.
    pub unreadable_pids: usize,
}

impl Snapshot {
    /// Reads mounts and swaps, and open files when `with_open_files`
    /// (walking every process's fds costs more than the rest).
    ///
    /// # Errors
    /// `/proc/mounts` cannot be read (without it nothing can be proven
    /// unused), or a mount or swap table is malformed.
    pub fn take(sys: &dyn Sys, with_open_files: bool) -> Result<Self> {
        let mut snapshot = Self {
            mounts: read_mounts(sys)?,
            swaps: read_swaps(sys)?,
            ..Self::default()
        };
        if with_open_files {
            snapshot.read_open_files(sys)?;
        }
        Ok(snapshot)
    }

    fn read_open_files(&mut self, sys: &dyn Sys) -> Result<()> {
        for pid in sys::list(sys, Path::new("/proc"))? {
            let Ok(pid_num) = pid.parse::<u32>() else {
                continue;
            };
            let fd_dir = Path::new("/proc").join(&pid).join("fd");
            // Processes come and go, and other users' fds are private:
            // neither is an error.
            let fds = match sys.read_dir(&fd_dir) {
                Ok(fds) => fds,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    self.unreadable_pids += 1;
                    continue;
                }
                Err(_) => continue,
            };
            let mut comm = None;
            for fd in fds {
                let Ok(target) = sys.read_link(&fd_dir.join(&fd)) else {
                    continue;
                };
                let Some(target) = target.to_str().filter(|t| t.starts_with("/dev/")) else {
                    continue;
                };
                let comm = comm
                    .get_or_insert_with(|| {
                        sys::read_opt(sys, &Path::new("/proc").join(&pid).join("comm"))
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| "?".to_owned())
                    })
                    .clone();
                self.open.push(OpenFile {
                    pid: pid_num,
                    comm,
                    target: target.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The mount points of a device (by device number or by `/dev/` name).
    pub fn mounts_of(&self, dev: &BlockDev) -> Vec<&Mount> {
        let path = dev.dev_path();
        let mut found: Vec<&Mount> = Vec::new();
        for m in &self.mounts {
            let same = (dev.devno.is_some() && m.devno == dev.devno) || m.source == path;
            if same && !found.iter().any(|f| f.mountpoint == m.mountpoint) {
                found.push(m);
            }
        }
        found
    }

    /// Whether a device is an active swap area.
    pub fn is_swap(&self, dev: &BlockDev) -> bool {
        let path = dev.dev_path();
        self.swaps.contains(&path)
    }

    /// The processes holding `path` open (one entry per process).
    pub fn openers(&self, path: &str) -> Vec<&OpenFile> {
        let mut found: Vec<&OpenFile> = Vec::new();
        for f in &self.open {
            if f.target == path && !found.iter().any(|o| o.pid == f.pid) {
                found.push(f);
            }
        }
        found
    }
}

/// What a holder device is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderKind {
    /// An LVM logical volume (device-mapper uuid `LVM-...`), with its name.
    Lvm(String),
    /// Another device-mapper target (dm-crypt, multipath...), with its name.
    DeviceMapper(String),
    /// An MD (software RAID) array.
    Md,
    /// Something else (bcache, ...).
    Other,
}

/// Why a block device cannot be taken from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InUse {
    /// A filesystem on it is mounted.
    Mounted {
        /// The device.
        dev: String,
        /// Where.
        mountpoint: String,
    },
    /// It is an active swap area.
    Swap {
        /// The device.
        dev: String,
    },
    /// Another block device is built on it.
    Holder {
        /// The device.
        dev: String,
        /// The holder (`dm-0`, `md127`).
        holder: String,
        /// What the holder is.
        kind: HolderKind,
    },
    /// A process holds it open.
    Open {
        /// The device node.
        path: String,
        /// The process.
        pid: u32,
        /// Its name.
        comm: String,
    },
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::Mounted { dev, mountpoint } if mountpoint == "/" => {
                write!(f, "{dev} is mounted on / (the root filesystem)")
            }
            InUse::Mounted { dev, mountpoint } => write!(f, "{dev} is mounted on {mountpoint}"),
            InUse::Swap { dev } => write!(f, "{dev} is an active swap area"),
            InUse::Holder { dev, holder, kind } => match kind {
                HolderKind::Lvm(name) => {
                    write!(f, "{dev} is held by {holder} (LVM logical volume {name})")
                }
                HolderKind::DeviceMapper(name) => {
                    write!(f, "{dev} is held by {holder} (device-mapper {name})")
                }
                HolderKind::Md => write!(f, "{dev} is held by {holder} (MD RAID array)"),
                HolderKind::Other => write!(f, "{dev} is held by {holder}"),
            },
            InUse::Open { path, pid, comm } => write!(f, "{path} is open by pid {pid} ({comm})"),
        }
    }
}

fn holder_kind(sys: &dyn Sys, holder: &str) -> Result<HolderKind> {
    let dir = Path::new("/sys/block").join(holder);
    if holder.starts_with("dm-") || sys.exists(&dir.join("dm")) {
        let name = sys::read_opt(sys, &dir.join("dm").join("name"))?.unwrap_or_default();
        let uuid = sys::read_opt(sys, &dir.join("dm").join("uuid"))?.unwrap_or_default();
        return Ok(if uuid.starts_with("LVM-") {
            HolderKind::Lvm(name)
        } else {
            HolderKind::DeviceMapper(name)
        });
    }
    if holder.starts_with("md") || sys.exists(&dir.join("md")) {
        return Ok(HolderKind::Md);
    }
    Ok(HolderKind::Other)
}

/// Every reason a disk (or one of its partitions) is in use.
///
/// # Errors
/// A `holders` directory exists but cannot be listed.
pub fn users(sys: &dyn Sys, snapshot: &Snapshot, disk: &BlockDev) -> Result<Vec<InUse>> {
    let mut reasons = Vec::new();
    for dev in disk.with_partitions() {
        for m in snapshot.mounts_of(dev) {
            reasons.push(InUse::Mounted {
                dev: dev.name.clone(),
                mountpoint: m.mountpoint.clone(),
            });
        }
        if snapshot.is_swap(dev) {
            reasons.push(InUse::Swap {
                dev: dev.name.clone(),
            });
        }
        for holder in sys::list_opt(sys, &dev.sysfs.join("holders"))? {
            reasons.push(InUse::Holder {
                dev: dev.name.clone(),
                kind: holder_kind(sys, &holder)?,
                holder,
            });
        }
        for f in snapshot.openers(&dev.dev_path()) {
            reasons.push(InUse::Open {
                path: f.target.clone(),
                pid: f.pid,
                comm: f.comm.clone(),
            });
        }
    }
    Ok(reasons)
}

/// Undoes the kernel's octal escapes in mount tables (`\040` for a space).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn malformed(path: &Path, line: &str, expected: &'static str) -> Error {
    Error::Malformed {
        path: path.to_owned(),
        text: line.to_owned(),
        expected,
    }
}

/// Parses `/proc/self/mountinfo`.
///
/// # Errors
/// A line without the fields the kernel always writes.
pub fn parse_mountinfo(path: &Path, text: &str) -> Result<Vec<Mount>> {
    const EXPECTED: &str =
        "mountinfo lines: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE OPTIONS";
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sep = fields.iter().position(|f| *f == "-");
        let (Some(sep), true) = (sep, fields.len() >= 5) else {
            return Err(malformed(path, line, EXPECTED));
        };
        let (Some(fstype), Some(source)) = (fields.get(sep + 1), fields.get(sep + 2)) else {
            return Err(malformed(path, line, EXPECTED));
        };
        let Some(devno) = sys::parse_devno(fields[2]) else {
            return Err(malformed(path, line, EXPECTED));
        };
        mounts.push(Mount {
            source: unescape(source),
            mountpoint: unescape(fields[4]),
            fstype: unescape(fstype),
            devno: Some(devno),
        });
    }
    Ok(mounts)
}

/// Parses `/proc/mounts` (`SOURCE MOUNTPOINT FSTYPE OPTIONS FREQ PASSNO`).
///
/// # Errors
/// A line with fewer than three fields.
pub fn parse_mounts(path: &Path, text: &str) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(malformed(
                path,
                line,
                "mount lines: SOURCE MOUNTPOINT FSTYPE OPTIONS 0 0",
            ));
        }
        mounts.push(Mount {
            source: unescape(fields[0]),
            mountpoint: unescape(fields[1]),
            fstype: unescape(fields[2]),
            devno: None,
        });
    }
    Ok(mounts)
}

/// Parses `/proc/swaps` (a header, then `FILENAME TYPE SIZE USED PRIORITY`).
///
/// # Errors
/// A line with fewer than five fields.
pub fn parse_swaps(path: &Path, text: &str) -> Result<Vec<String>> {
    let mut swaps = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            return Err(malformed(
                path,
                line,
                "swap lines: FILENAME TYPE SIZE USED PRIORITY",
            ));
        }
        swaps.push(unescape(fields[0]));
    }
    Ok(swaps)
}

/// Where the mount tables are.
const MOUNTINFO: &str = "/proc/self/mountinfo";
const MOUNTS: &str = "/proc/mounts";
const SWAPS: &str = "/proc/swaps";

/// Every mount, from mountinfo (with device numbers) and /proc/mounts.
///
/// # Errors
/// `/proc/mounts` is unreadable or a table is malformed.
pub fn read_mounts(sys: &dyn Sys) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    let info = PathBuf::from(MOUNTINFO);
    if let Some(text) = sys::read_raw_opt(sys, &info)? {
        mounts.extend(parse_mountinfo(&info, &text)?);
    }
    let path = PathBuf::from(MOUNTS);
    let text = sys.read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    mounts.extend(parse_mounts(&path, &text)?);
    Ok(mounts)
}

/// Active swap areas (none when the kernel has no `/proc/swaps`).
///
/// # Errors
/// `/proc/swaps` is unreadable or malformed.
pub fn read_swaps(sys: &dyn Sys) -> Result<Vec<String>> {
    let path = PathBuf::from(SWAPS);
    match sys::read_raw_opt(sys, &path)? {
        Some(text) => parse_swaps(&path, &text),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape(r"a\134b"), r"a\b");
        assert_eq!(unescape(r"end\04"), r"end\04");
        assert_eq!(unescape(r"\777x"), r"\777x");
    }

    #[test]
    fn parses_mount_tables() {
        let p = Path::new("/proc/self/mountinfo");
        let info = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
                    30 22 0:40 / /dev/hugepages rw - hugetlbfs nodev rw,pagesize=2M\n";
        let m = parse_mountinfo(p, info).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].devno, Some((259, 2)));
        assert_eq!(m[0].mountpoint, "/");
        assert_eq!(m[1].fstype, "hugetlbfs");
        assert!(parse_mountinfo(p, "22 1 259:2 / / rw\n").is_err());
        assert!(parse_mountinfo(p, "22 1 x / / rw - ext4 /dev/x rw\n").is_err());

        let p = Path::new("/proc/mounts");
        let m = parse_mounts(p, "/dev/nvme0n1p1 /mnt/a\\040b ext4 rw 0 0\n").unwrap();
        assert_eq!(m[0].mountpoint, "/mnt/a b");
        let err = parse_mounts(p, "garbage\n").unwrap_err();
        assert!(err.to_string().contains("/proc/mounts"), "{err}");

        let p = Path::new("/proc/swaps");
        let s = parse_swaps(
            p,
            "Filename Type Size Used Priority\n/dev/nvme0n1p3 partition 1024 0 -2\n",
        )
        .unwrap();
        assert_eq!(s, ["/dev/nvme0n1p3"]);
        assert!(parse_swaps(p, "Filename\n/dev/x partition\n").is_err());
    }
}
