//! System set-up, the counterpart of SPDK's `scripts/setup.sh`: reserve
//! hugepages, mount hugetlbfs, load vfio-pci, bind NVMe controllers to it
//! and give them back to the kernel.
//!
//! Owns: sysfs and procfs writes that prepare a machine.
//!
//! Must not: unbind a controller that holds a mounted filesystem, swap, a
//! device-mapper/MD/LVM holder or an open block device.
