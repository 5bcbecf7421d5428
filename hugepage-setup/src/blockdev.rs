//! The block devices (namespaces and their partitions) the kernel's nvme
//! driver made for a controller.
//!
//! A namespace's disk is found from `/sys/block/nvme*`: its `device` link
//! leads either to the controller under the PCI device (the disk belongs to
//! the controller when the resolved path passes through its address) or,
//! with native NVMe multipath, to an `nvme-subsystem` device whose
//! `subsysnqn` matches the controller's (as SPDK's `setup.sh` does). Hidden
//! per-path disks (`hidden` = 1) are left out.

use std::path::{Path, PathBuf};

use crate::bdf::Bdf;
use crate::error::Result;
use crate::pci;
use crate::sys::{self, Sys};

/// Where sysfs lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";

/// A disk or partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`nvme0n1`, `nvme0n1p2`); the device node is `/dev/<name>`.
    pub name: String,
    /// `major:minor`, when sysfs gives it.
    pub devno: Option<(u32, u32)>,
    /// Its sysfs directory (for `holders/`).
    pub sysfs: PathBuf,
    /// A disk's partitions (empty for a partition).
    pub partitions: Vec<BlockDev>,
}

impl BlockDev {
    /// `/dev/<name>`.
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// The disk followed by its partitions.
    pub fn with_partitions(&self) -> impl Iterator<Item = &BlockDev> {
        std::iter::once(self).chain(self.partitions.iter())
    }
}

fn read_devno(sys: &dyn Sys, dir: &Path) -> Result<Option<(u32, u32)>> {
    let path = dir.join("dev");
    match sys::read_opt(sys, &path)? {
        None => Ok(None),
        Some(text) => match sys::parse_devno(&text) {
            Some(devno) => Ok(Some(devno)),
            None => Err(crate::Error::Malformed {
                path,
                text,
                expected: "a device number like 259:0",
            }),
        },
    }
}

/// The subsystem NQNs of the NVMe controllers (`nvme/nvmeN`) under a PCI
/// device; empty when the kernel's nvme driver does not own it.
fn controller_nqns(sys: &dyn Sys, bdf: Bdf) -> Result<Vec<String>> {
    let dir = pci::device_dir(bdf).join("nvme");
    let mut nqns = Vec::new();
    for ctrl in sys::list_opt(sys, &dir)? {
        if let Some(nqn) = sys::read_opt(sys, &dir.join(&ctrl).join("subsysnqn"))?
            && !nqn.is_empty()
        {
            nqns.push(nqn);
        }
    }
    Ok(nqns)
}

/// A disk's partitions: the subdirectories that hold a `partition` file.
fn partitions(sys: &dyn Sys, disk_dir: &Path) -> Result<Vec<BlockDev>> {
    let mut parts = Vec::new();
    for name in sys::list_opt(sys, disk_dir)? {
        let dir = disk_dir.join(&name);
        if sys.exists(&dir.join("partition")) {
            parts.push(BlockDev {
                devno: read_devno(sys, &dir)?,
                name,
                sysfs: dir,
                partitions: Vec::new(),
            });
        }
    }
    Ok(parts)
}

/// The NVMe disks of the controller at `bdf` with their partitions, in name
/// order; empty when it is not on the kernel's nvme driver.
///
/// # Errors
/// `/sys/block` cannot be listed, or a disk's `dev` file is malformed.
pub fn nvme_block_devices(sys: &dyn Sys, bdf: Bdf) -> Result<Vec<BlockDev>> {
    let nqns = controller_nqns(sys, bdf)?;
    let address = bdf.to_string();
    let mut disks = Vec::new();
    for name in sys::list_opt(sys, Path::new(SYS_BLOCK))? {
        if !name.starts_with("nvme") {
            continue;
        }
        let dir = Path::new(SYS_BLOCK).join(&name);
        if sys::read_opt(sys, &dir.join("hidden"))?.as_deref() == Some("1") {
            continue;
        }
        // A disk without a resolvable parent device belongs to nobody we
        // can name: skip it rather than fail the whole listing.
        let Ok(parent) = sys.canonicalize(&dir.join("device")) else {
            continue;
        };
        let under_controller = parent
            .components()
            .any(|c| c.as_os_str() == address.as_str());
        let same_subsystem = !under_controller
            && !nqns.is_empty()
            && sys::read_opt(sys, &parent.join("subsysnqn"))?
                .is_some_and(|nqn| nqns.contains(&nqn));
        if under_controller || same_subsystem {
            disks.push(BlockDev {
                devno: read_devno(sys, &dir)?,
                partitions: partitions(sys, &dir)?,
                name,
                sysfs: dir,
            });
        }
    }
    Ok(disks)
}
