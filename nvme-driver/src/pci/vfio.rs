//! A PCI function owned through VFIO: configuration space access, bus
//! mastering, and BAR0 mapped into this process for register access.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice};

use super::Bdf;

const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// Offset of the command register in PCI configuration space.
const PCI_COMMAND: u64 = 0x04;
/// Command register: respond to memory space accesses.
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the function may master the bus (issue DMA).
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Why a PCI function could not be opened or accessed through VFIO.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// No such PCI function in sysfs.
    #[error("PCI device {bdf} does not exist ({path} is missing)")]
    NoSuchDevice {
        /// The address asked for.
        bdf: Bdf,
        /// The sysfs path that was looked for.
        path: PathBuf,
    },
    /// The function is bound to another driver (or none).
    #[error(
        "PCI device {bdf} is bound to {driver}, not vfio-pci; bind it with \
         `hugepage-setup config --allow {bdf}`"
    )]
    NotBoundToVfio {
        /// The address asked for.
        bdf: Bdf,
        /// The driver it is bound to, or "no driver".
        driver: String,
    },
    /// The process's VFIO container could not be opened.
    #[error("PCI device {bdf}: {source}")]
    Container {
        /// The address asked for.
        bdf: Bdf,
        /// What the container reported.
        #[source]
        source: dma::vfio::ContainerError,
    },
    /// VFIO refused the group or device (group not viable, permissions...).
    #[error("PCI device {bdf}: VFIO refused the device: {source}")]
    Device {
        /// The address asked for.
        bdf: Bdf,
        /// What VFIO reported.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// BAR0 cannot be mapped (absent, too small or not mmap-able).
    #[error("PCI device {bdf}: BAR0 is not usable: {reason}")]
    Bar0 {
        /// The address asked for.
        bdf: Bdf,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call on the device file failed.
    #[error("PCI device {bdf}: {what} failed: {source}")]
    Io {
        /// The address asked for.
        bdf: Bdf,
        /// The operation that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A PCI function opened through the process's VFIO container.
pub struct VfioPci {
    bdf: Bdf,
    device: VfioDevice,
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci").field("bdf", &self.bdf).finish()
    }
}

/// The sysfs directory of a PCI function.
pub fn sysfs_path(bdf: Bdf) -> PathBuf {
    Path::new(SYSFS_PCI_DEVICES).join(bdf.to_string())
}

/// The name of the driver a PCI function is bound to, if any.
///
/// # Errors
/// [`PciError::NoSuchDevice`] when sysfs has no such function.
pub fn bound_driver(bdf: Bdf) -> Result<Option<String>, PciError> {
    let path = sysfs_path(bdf);
    if !path.exists() {
        return Err(PciError::NoSuchDevice { bdf, path });
    }
    Ok(fs::read_link(path.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())))
}

impl VfioPci {
    /// Opens the function at `bdf`, which must be bound to vfio-pci, in the
    /// process's VFIO container (see [`dma::vfio::container`]).
    ///
    /// # Errors
    /// [`PciError`] naming the device and what failed.
    pub fn open(bdf: Bdf) -> Result<Self, PciError> {
        let container =
            dma::vfio::container().map_err(|source| PciError::Container { bdf, source })?;
        Self::open_in(bdf, container)
    }

    /// Opens the function at `bdf` in a given VFIO container.
    ///
    /// # Errors
    /// [`PciError`] naming the device and what failed.
    pub fn open_in(bdf: Bdf, container: Arc<VfioContainer>) -> Result<Self, PciError> {
        match bound_driver(bdf)? {
            Some(d) if d == "vfio-pci" => {}
            other => {
                return Err(PciError::NotBoundToVfio {
                    bdf,
                    driver: other.unwrap_or_else(|| "no driver".to_owned()),
                });
            }
        }
        let device = VfioDevice::new(&sysfs_path(bdf), container, false)
            .map_err(|source| PciError::Device { bdf, source })?;
        Ok(VfioPci { bdf, device })
    }

    /// The PCI address of this function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Reads `buf.len()` bytes of configuration space at `offset`.
    ///
    /// # Errors
    /// [`PciError::Io`] when the read fails or comes back short.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let base = self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
        let fd = self.device.as_raw_fd();
        // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes and `fd`
        // is the open VFIO device file owned by `self.device`.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                (base + offset) as libc::off_t,
            )
        };
        self.check_io(n, buf.len(), "configuration space read")
    }

    /// Writes `buf` into configuration space at `offset`.
    ///
    /// # Errors
    /// [`PciError::Io`] when the write fails or is short.
    pub fn config_write(&self, offset: u64, buf: &[u8]) -> Result<(), PciError> {
        let base = self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
        let fd = self.device.as_raw_fd();
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes and `fd`
        // is the open VFIO device file owned by `self.device`.
        let n = unsafe {
            libc::pwrite(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                (base + offset) as libc::off_t,
            )
        };
        self.check_io(n, buf.len(), "configuration space write")
    }

    fn check_io(&self, n: isize, want: usize, what: &'static str) -> Result<(), PciError> {
        if n < 0 {
            return Err(PciError::Io {
                bdf: self.bdf,
                what,
                source: io::Error::last_os_error(),
            });
        }
        if n as usize != want {
            return Err(PciError::Io {
                bdf: self.bdf,
                what,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {want} bytes"),
                ),
            });
        }
        Ok(())
    }

    /// Vendor and device id from configuration space.
    ///
    /// # Errors
    /// [`PciError::Io`] when configuration space cannot be read.
    pub fn ids(&self) -> Result<(u16, u16), PciError> {
        let mut b = [0u8; 4];
        self.config_read(0, &mut b)?;
        Ok((
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ))
    }

    /// Enables memory-space decoding and bus mastering, which the function
    /// needs before it may DMA.
    ///
    /// # Errors
    /// [`PciError::Io`] when configuration space cannot be accessed.
    pub fn enable_bus_master(&self) -> Result<(), PciError> {
        let mut b = [0u8; 2];
        self.config_read(PCI_COMMAND, &mut b)?;
        let cmd = u16::from_le_bytes(b) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.config_write(PCI_COMMAND, &cmd.to_le_bytes())
    }

    /// Maps BAR0 (the NVMe register file) into this process.
    ///
    /// # Errors
    /// [`PciError::Bar0`] when BAR0 is absent or cannot be mmapped,
    /// [`PciError::Io`] when `mmap` fails.
    pub fn map_bar0(&self) -> Result<Bar0, PciError> {
        let idx = VFIO_PCI_BAR0_REGION_INDEX;
        let size = self.device.get_region_size(idx);
        let flags = self.device.get_region_flags(idx);
        let offset = self.device.get_region_offset(idx);
        if size < 0x1000 {
            return Err(PciError::Bar0 {
                bdf: self.bdf,
                reason: format!("region is {size} bytes, an NVMe BAR0 has at least 4096"),
            });
        }
        if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(PciError::Bar0 {
                bdf: self.bdf,
                reason: "VFIO does not allow mmap of this region".to_owned(),
            });
        }
        let len = usize::try_from(size).map_err(|_| PciError::Bar0 {
            bdf: self.bdf,
            reason: format!("region size {size} does not fit the address space"),
        })?;
        // SAFETY: mapping a device region of the open VFIO device file; the
        // kernel validates offset and length. The result is checked below and
        // only ever accessed through volatile reads and writes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(PciError::Io {
                bdf: self.bdf,
                what: "mmap of BAR0",
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| PciError::Bar0 {
            bdf: self.bdf,
            reason: "mmap returned a null address".to_owned(),
        })?;
        Ok(Bar0 { ptr, len })
    }
}

/// BAR0 mapped into this process. Every access is a volatile read or write of
/// an aligned 32-bit register; no Rust reference into it ever exists.
#[derive(Debug)]
pub struct Bar0 {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: Bar0 is a handle to device registers; volatile register access from
// any thread is what the hardware supports, and the mapping lives until drop.
unsafe impl Send for Bar0 {}
// SAFETY: as above; `&Bar0` only offers volatile accesses, which are not data
// races in the Rust sense because no Rust reference to the memory exists.
unsafe impl Sync for Bar0 {}

impl Bar0 {
    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a mapped BAR0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "register offset {offset:#x} is misaligned or beyond BAR0 ({:#x} bytes)",
            self.len
        );
        // SAFETY: offset + 4 <= len was checked above, so the result stays
        // within the mapping.
        unsafe { self.ptr.as_ptr().add(offset).cast::<u32>() }
    }

    /// Reads the 32-bit register at `offset`.
    ///
    /// # Panics
    /// When `offset` is not 4-byte aligned or lies beyond the mapping: register
    /// offsets are constants of the driver, never outside input.
    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `reg` returns an aligned pointer inside the live mapping.
        unsafe { self.reg(offset).read_volatile() }
    }

    /// Writes the 32-bit register at `offset`.
    ///
    /// # Panics
    /// As [`Bar0::read32`].
    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: `reg` returns an aligned pointer inside the live mapping.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    /// Reads a 64-bit register as two 32-bit reads, low half first (the
    /// order the NVMe specification allows for 64-bit registers).
    ///
    /// # Panics
    /// As [`Bar0::read32`].
    pub fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        (hi << 32) | lo
    }
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map_bar0`,
        // and no reference into it can outlive `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
