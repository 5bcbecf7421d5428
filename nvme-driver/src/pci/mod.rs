//! PCIe transport: finding a controller by its PCI address and reaching its
//! configuration space and BAR0 through VFIO.

mod bdf;
mod vfio;

pub use bdf::{Bdf, BdfError};
pub use vfio::{Bar0, PciError, VfioPci, bound_driver, sysfs_path};

/// The PCI class code (class, subclass, programming interface) of an NVMe
/// controller: mass storage, non-volatile memory, NVM Express.
pub const NVME_CLASS_CODE: u32 = 0x01_08_02;
