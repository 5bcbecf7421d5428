//! PCI devices as sysfs shows them: class, ids, NUMA node, IOMMU group,
//! driver; and the sysfs writes that move a device between drivers.

use std::path::{Path, PathBuf};

use crate::bdf::Bdf;
use crate::error::{Error, Result};
use crate::sys::{self, Sys};

/// The PCI class code of an NVMe controller: mass storage (0x01),
/// non-volatile memory (0x08), NVM Express (0x02).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Base class and subclass of a PCI-to-PCI bridge (`class >> 8`).
pub const BRIDGE_CLASS: u32 = 0x06_04;

/// The kernel's NVMe driver.
pub const NVME_DRIVER: &str = "nvme";

/// The VFIO PCI driver.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// Where sysfs lists PCI devices.
pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Where sysfs lists PCI drivers.
pub const PCI_DRIVERS: &str = "/sys/bus/pci/drivers";

/// The file that asks the PCI bus to probe a device for a driver.
pub const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";

/// Where sysfs lists IOMMU groups.
pub const IOMMU_GROUPS: &str = "/sys/kernel/iommu_groups";

/// The sysfs directory of a device.
pub fn device_dir(bdf: Bdf) -> PathBuf {
    Path::new(PCI_DEVICES).join(bdf.to_string())
}

/// The sysfs directory of a driver (present when its module is loaded).
pub fn driver_dir(driver: &str) -> PathBuf {
    Path::new(PCI_DRIVERS).join(driver)
}

/// One PCI device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address.
    pub bdf: Bdf,
    /// The 24-bit class code (`0x010802` for NVMe).
    pub class: u32,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// The NUMA node it is attached to; `None` when the platform does not
    /// say (`-1`) or the kernel has no NUMA.
    pub numa_node: Option<u32>,
    /// Its IOMMU group; `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// The driver bound to it.
    pub driver: Option<String>,
    /// The driver named in `driver_override`, if any.
    pub driver_override: Option<String>,
}

impl PciDevice {
    /// Reads a device's attributes from sysfs.
    ///
    /// # Errors
    /// A missing or malformed `class`, `vendor` or `device` file; a
    /// malformed `numa_node`; an `iommu_group` link not naming a number.
    pub fn read(sys: &dyn Sys, bdf: Bdf) -> Result<Self> {
        let dir = device_dir(bdf);
        let class = read_class(sys, bdf)?;
        let vendor = read_id(sys, &dir.join("vendor"))?;
        let device = read_id(sys, &dir.join("device"))?;
        let numa_path = dir.join("numa_node");
        let numa_node = match sys::read_opt(sys, &numa_path)? {
            None => None,
            Some(text) => {
                let node: i64 = sys::parse_num(&numa_path, &text, "a NUMA node number or -1")?;
                u32::try_from(node).ok()
            }
        };
        let group_path = dir.join("iommu_group");
        let iommu_group = match sys::link_name(sys, &group_path)? {
            None => None,
            Some(name) => Some(sys::parse_num(
                &group_path,
                &name,
                "a link to an IOMMU group number",
            )?),
        };
        let driver = sys::link_name(sys, &dir.join("driver"))?;
        let driver_override = sys::read_opt(sys, &dir.join("driver_override"))?
            .filter(|d| !d.is_empty() && d != "(null)");
        Ok(Self {
            bdf,
            class,
            vendor,
            device,
            numa_node,
            iommu_group,
            driver,
            driver_override,
        })
    }

    /// Whether it is an NVMe controller.
    pub fn is_nvme(&self) -> bool {
        self.class == NVME_CLASS
    }

    /// Whether it is a PCI-to-PCI bridge (vfio accepts those in a group).
    pub fn is_bridge(&self) -> bool {
        self.class >> 8 == BRIDGE_CLASS
    }

    /// `vendor:device` in hex, as `lspci -n` prints it.
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// The driver's name, or `no driver`.
    pub fn driver_name(&self) -> &str {
        self.driver.as_deref().unwrap_or("no driver")
    }
}

fn read_id(sys: &dyn Sys, path: &Path) -> Result<u16> {
    let id = sys::read_hex(sys, path, "a 16-bit id like 0x8086")?;
    u16::try_from(id).map_err(|_| Error::Malformed {
        path: path.to_owned(),
        text: format!("{id:#x}"),
        expected: "a 16-bit id like 0x8086",
    })
}

/// A device's class code.
///
/// # Errors
/// The `class` file is missing or malformed.
pub fn read_class(sys: &dyn Sys, bdf: Bdf) -> Result<u32> {
    sys::read_hex(
        sys,
        &device_dir(bdf).join("class"),
        "a class code like 0x010802",
    )
}

/// Every PCI device, in address order.
///
/// # Errors
/// `/sys/bus/pci/devices` cannot be listed or holds a name that is not a
/// PCI address.
pub fn list(sys: &dyn Sys) -> Result<Vec<Bdf>> {
    let dir = Path::new(PCI_DEVICES);
    let mut bdfs = sys::list(sys, dir)?
        .into_iter()
        .map(|name| parse_bdf_entry(dir, &name))
        .collect::<Result<Vec<_>>>()?;
    bdfs.sort();
    Ok(bdfs)
}

fn parse_bdf_entry(dir: &Path, name: &str) -> Result<Bdf> {
    name.parse().map_err(|_| Error::Malformed {
        path: dir.join(name),
        text: name.to_owned(),
        expected: "a directory named by a PCI address",
    })
}

/// Every NVMe controller, in address order.
///
/// # Errors
/// As [`list`] and [`PciDevice::read`].
pub fn nvme_controllers(sys: &dyn Sys) -> Result<Vec<PciDevice>> {
    let mut found = Vec::new();
    for bdf in list(sys)? {
        if read_class(sys, bdf)? == NVME_CLASS {
            found.push(PciDevice::read(sys, bdf)?);
        }
    }
    Ok(found)
}

/// The driver currently bound to a device.
///
/// # Errors
/// The `driver` link cannot be read.
pub fn current_driver(sys: &dyn Sys, bdf: Bdf) -> Result<Option<String>> {
    sys::link_name(sys, &device_dir(bdf).join("driver"))
}

/// Whether the machine has an IOMMU with groups (`/sys/kernel/iommu_groups`
/// is not empty).
///
/// # Errors
/// The directory exists but cannot be listed.
pub fn iommu_enabled(sys: &dyn Sys) -> Result<bool> {
    Ok(!sys::list_opt(sys, Path::new(IOMMU_GROUPS))?.is_empty())
}

/// The devices of an IOMMU group, in address order.
///
/// # Errors
/// The group's `devices` directory cannot be listed or names something
/// that is not a PCI address.
pub fn group_members(sys: &dyn Sys, group: u32) -> Result<Vec<Bdf>> {
    let dir = Path::new(IOMMU_GROUPS)
        .join(group.to_string())
        .join("devices");
    let mut bdfs = sys::list(sys, &dir)?
        .into_iter()
        .map(|name| parse_bdf_entry(&dir, &name))
        .collect::<Result<Vec<_>>>()?;
    bdfs.sort();
    Ok(bdfs)
}

/// How long a bind may take to show in sysfs: the kernel probes
/// synchronously on `drivers_probe`, so this is only a safety margin.
const BIND_POLLS: u32 = 50;
const BIND_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Moves a device to `driver`: writes `driver_override`, unbinds it from
/// its current driver, asks the bus to probe it and checks the `driver`
/// link. With `keep_override` false the override is cleared afterwards
/// (written `"\n"`), so later probes match by id again.
///
/// # Errors
/// A write fails, or the device ends up on another driver (or none).
pub fn bind(sys: &dyn Sys, bdf: Bdf, driver: &'static str, keep_override: bool) -> Result<()> {
    let dir = device_dir(bdf);
    let address = bdf.to_string();
    sys::write(sys, &dir.join("driver_override"), driver)?;
    if current_driver(sys, bdf)?.is_some() {
        sys::write(sys, &dir.join("driver").join("unbind"), &address)?;
    }
    sys::write(sys, Path::new(DRIVERS_PROBE), &address)?;
    let mut actual = current_driver(sys, bdf)?;
    let mut polls = 0;
    while actual.as_deref() != Some(driver) && polls < BIND_POLLS {
        sys.sleep(BIND_POLL_INTERVAL);
        actual = current_driver(sys, bdf)?;
        polls += 1;
    }
    if actual.as_deref() != Some(driver) {
        return Err(Error::BindFailed {
            bdf,
            expected: driver,
            actual,
        });
    }
    if !keep_override {
        sys::write(sys, &dir.join("driver_override"), "\n")?;
    }
    Ok(())
}
