//! Descriptors: an open handle on a bdev, for reading or writing, with the
//! opener's event callback; and claims (exclusive write by a module).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reactor::CoreId;

use crate::bdev::{Bdev, State};
use crate::channel::BdevChannel;
use crate::error::BdevError;
use crate::types::BdevEvent;

/// The callback an opener gets events through: (bdev name, event).
pub type EventCallback = Arc<dyn Fn(&str, BdevEvent) + Send + Sync>;

pub(crate) struct DescInner {
    pub write: bool,
    pub callback: EventCallback,
    /// The core that opened it; events are delivered there by message.
    pub core: Option<CoreId>,
    pub closed: AtomicBool,
}

impl DescInner {
    pub fn deliver(&self, name: &str, ev: BdevEvent) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let cb = self.callback.clone();
        if let Some(core) = self.core
            && reactor::current_core() != Some(core)
        {
            let owned = name.to_owned();
            let sent = match crate::env::handle() {
                Some(h) => h.send(core, move || cb(&owned, ev)),
                None => Err(reactor::Error::NotOnReactor { what: "deliver" }),
            };
            if let Err(e) = sent {
                log::warn!("bdev {name}: event {ev:?} not delivered to core {core}: {e}");
            }
            return;
        }
        cb(name, ev);
    }
}

/// An open descriptor. Closing: [`Desc::close`] or drop.
pub struct Desc {
    pub(crate) bdev: Bdev,
    pub(crate) inner: Arc<DescInner>,
    claimed: Option<String>,
}

impl std::fmt::Debug for Desc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desc")
            .field("bdev", &self.bdev.name())
            .field("write", &self.inner.write)
            .finish()
    }
}

/// Opens bdev `name` (or alias) for reading, or reading and writing. Events
/// (Resize, Remove) go to `event_cb`, on the opening core when opened on a
/// reactor. A bdev claimed by a module cannot be opened for writing by
/// anyone else.
///
/// # Errors
/// [`BdevError::NotFound`], [`BdevError::Removing`], [`BdevError::Claimed`].
pub fn open(
    name: &str,
    write: bool,
    event_cb: impl Fn(&str, BdevEvent) + Send + Sync + 'static,
) -> Result<Desc, BdevError> {
    let bdev = crate::registry::get(name).ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    if bdev.inner.state() == State::Removing {
        return Err(BdevError::Removing(name.to_owned()));
    }
    if write && let Some(holder) = bdev.claimed_by() {
        return Err(BdevError::Claimed {
            bdev: bdev.name().to_owned(),
            holder,
        });
    }
    let inner = Arc::new(DescInner {
        write,
        callback: Arc::new(event_cb),
        core: reactor::current_core(),
        closed: AtomicBool::new(false),
    });
    bdev.inner.descs().push(Arc::downgrade(&inner));
    Ok(Desc {
        bdev,
        inner,
        claimed: None,
    })
}

impl Desc {
    /// The bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// Whether it was opened for writing.
    pub fn writable(&self) -> bool {
        self.inner.write
    }

    /// Claims the bdev for exclusive write by `module` (a vbdev claims its
    /// base). The descriptor must be writable.
    ///
    /// # Errors
    /// [`BdevError::Claimed`] naming the current holder;
    /// [`BdevError::ReadOnly`] on a read-only descriptor.
    pub fn claim(&mut self, module: &str) -> Result<(), BdevError> {
        if !self.inner.write {
            return Err(BdevError::ReadOnly(self.bdev.name().to_owned()));
        }
        let mut c = self
            .bdev
            .inner
            .claim
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = c.as_ref() {
            return Err(BdevError::Claimed {
                bdev: self.bdev.name().to_owned(),
                holder: holder.clone(),
            });
        }
        // Another writer that is not the claimer keeps its descriptor (as in
        // SPDK); new write opens are refused from now on.
        *c = Some(module.to_owned());
        self.claimed = Some(module.to_owned());
        Ok(())
    }

    /// This core's I/O channel to the bdev.
    ///
    /// # Errors
    /// [`BdevError::NotOnReactor`] off reactor threads; the module's reason
    /// when it cannot make a channel on this core.
    pub fn get_io_channel(&self) -> Result<BdevChannel, BdevError> {
        BdevChannel::get(&self.bdev, self.inner.clone())
    }

    /// Closes the descriptor (releasing its claim).
    pub fn close(self) {}
}

impl Drop for Desc {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        if self.claimed.is_some() {
            *self
                .bdev
                .inner
                .claim
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        let me = Arc::as_ptr(&self.inner);
        self.bdev
            .inner
            .descs()
            .retain(|w| w.as_ptr() != me && w.strong_count() > 0);
    }
}
