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
