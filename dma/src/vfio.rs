//! The process's one VFIO container: one IOMMU domain shared by every device
//! this process drives, so one DMA mapping serves them all.

use std::sync::{Arc, Mutex};

pub use vfio_ioctls::VfioContainer;

/// Why the VFIO container could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `/dev/vfio/vfio` could not be opened or does not speak type1 v2.
    #[error(
        "cannot open the VFIO container /dev/vfio/vfio (is the vfio module loaded and an IOMMU \
         enabled? run `hugepage-setup config`): {0}"
    )]
    Open(#[source] vfio_ioctls::VfioError),
}

static CONTAINER: Mutex<Option<Arc<VfioContainer>>> = Mutex::new(None);

/// The process's VFIO container, opened on first use. Every device group is
/// attached to this container; the first group attached selects the type1 v2
/// IOMMU.
///
/// # Errors
/// [`ContainerError::Open`] when `/dev/vfio/vfio` cannot be opened or lacks
/// type1 v2 IOMMU support.
pub fn container() -> Result<Arc<VfioContainer>, ContainerError> {
    let mut slot = CONTAINER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = slot.as_ref() {
        return Ok(Arc::clone(c));
    }
    let c = Arc::new(VfioContainer::new(None).map_err(ContainerError::Open)?);
    *slot = Some(Arc::clone(&c));
    Ok(c)
}

static DEVICES: Mutex<usize> = Mutex::new(0);

/// Held by every device open in the process's container, from before its
/// group is attached until after it is closed. When the last device goes the
/// kernel dissolves the container's IOMMU domain and every DMA mapping with
/// it, so the lease detaches the memory; the next device maps it again.
#[derive(Debug)]
pub struct DeviceLease {
    mem: crate::DmaMemory,
}

impl DeviceLease {
    /// Takes a lease for a device about to be opened with DMA into `mem`.
    pub fn new(mem: &crate::DmaMemory) -> Self {
        *DEVICES.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        DeviceLease { mem: mem.clone() }
    }
}

impl Drop for DeviceLease {
    fn drop(&mut self) {
        let mut n = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.mem.detach();
        }
    }
}
