//! The passthrough vbdev: the template for virtual bdevs. It opens and
//! claims its base, opens the base's channel in its own channel
//! constructor, passes every I/O down (a NoMem from the base is queued and
//! retried by the layer), follows the base's Resize, and unregisters itself
//! when the base is removed.

pub mod rpc;

use std::sync::Mutex;

use serde_json::json;

use crate::{Bdev, BdevChannel, BdevError, BdevEvent, BdevOps, BdevProps, Desc, IoHandle, IoType};

/// The base descriptor of a vbdev: taken at creation, dropped at destruct.
pub(crate) struct Base {
    pub desc: Mutex<Option<Desc>>,
    pub bdev: Bdev,
}

impl Base {
    /// Opens `base` for writing, claims it for `module` and routes its
    /// events to the vbdev named `vbdev`: Resize follows, Remove unregisters.
    pub fn open(base: &str, vbdev: &str, module: &str) -> Result<Base, BdevError> {
        let me = vbdev.to_owned();
        let mut desc = crate::open(base, true, move |_base, ev| follow_base(&me, ev))?;
        desc.claim_for(module, Some(vbdev), crate::ClaimType::ExclusiveWrite, 0)?;
        let bdev = desc.bdev().clone();
        Ok(Base {
            desc: Mutex::new(Some(desc)),
            bdev,
        })
    }

    /// This core's channel to the base.
    pub fn channel(&self) -> Result<BdevChannel, String> {
        let d = self.desc.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref()
            .ok_or_else(|| "base bdev closed".to_owned())?
            .get_io_channel()
            .map_err(|e| e.to_string())
    }

    /// Closes the base (from `destruct`).
    pub fn close(&self) {
        self.desc.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// What every vbdev does with its base's events.
pub(crate) fn follow_base(vbdev: &str, ev: BdevEvent) {
    match ev {
        BdevEvent::Resize { new_blocks, .. } => {
            if let Some(b) = crate::get(vbdev) {
                b.notify_blockcnt_change(new_blocks);
            }
        }
        BdevEvent::Remove => {
            let name = vbdev.to_owned();
            let task = move || async move {
                if let Err(e) = crate::unregister(&name).await {
                    log::warn!("vbdev {name}: unregister after base removal: {e}");
                }
            };
            if reactor::current_core().is_some() {
                drop(reactor::spawn(task()));
            } else if let Some(h) = crate::handle() {
                let core = h.cores()[0];
                drop(h.spawn_on(core, task));
            } else {
                log::error!("vbdev {vbdev}: base removed but no runtime to unregister on");
            }
        }
    }
}

/// Passes `io` to `base`, completing it when the base does. The shape every
/// vbdev's pass-through path has.
pub(crate) fn pass_down(base: &BdevChannel, io: IoHandle) {
    io.forward(base, crate::complete_parent);
}

struct Passthru {
    name: String,
    uuid: String,
    base: Base,
}

/// The per-core channel: the base's channel on this core.
pub struct PassthruChannel {
    base: BdevChannel,
}

impl BdevOps for Passthru {
    type Channel = PassthruChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<PassthruChannel, String> {
        Ok(PassthruChannel {
            base: self.base.channel()?,
        })
    }

    fn submit(&self, ch: &PassthruChannel, io: IoHandle) {
        pass_down(&ch.base, io)
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        // Zero-copy windows are not passed through (the window would have
        // to stay open across the base's and this bdev's callbacks).
        ty != IoType::Zcopy && self.base.bdev.io_type_supported(ty)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "passthru": { "name": self.name, "base_bdev_name": self.base.bdev.name() } })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_passthru_create",
            "params": { "base_bdev_name": self.base.bdev.name(), "name": self.name, "uuid": self.uuid }
        }))
    }

    fn destruct(&self) {
        self.base.close();
    }
}

/// Creates passthrough bdev `name` over `base_name`.
///
/// # Errors
/// [`BdevError::NotFound`] for a missing base, [`BdevError::Claimed`] when
/// it is claimed already, [`BdevError::Exists`] for a taken name.
pub fn create(base_name: &str, name: &str, uuid: Option<&str>) -> Result<Bdev, BdevError> {
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let base = Base::open(base_name, name, "passthru")?;
    let b = &base.bdev;
    let mut props = BdevProps::new(name, "passthru", b.block_size(), b.num_blocks());
    props.uuid = Some(uuid.clone());
    props.write_cache = b.props().write_cache;
    crate::register(
        "passthru",
        props,
        Passthru {
            name: name.to_owned(),
            uuid,
            base,
        },
    )
}

/// Deletes passthrough bdev `name` (releasing its base).
///
/// # Errors
/// [`BdevError::NotFound`] when there is no passthrough bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "passthru")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
