//! Descriptors: an open handle on a bdev, for reading or writing, with the
//! opener's event callback, and the claims taken through it (`claim.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reactor::CoreId;

use crate::bdev::{Bdev, State};
use crate::channel::BdevChannel;
use crate::claim::{ClaimType, Opener};
use crate::error::BdevError;
use crate::types::BdevEvent;

/// The callback an opener gets events through: (bdev name, event).
pub type EventCallback = Arc<dyn Fn(&str, BdevEvent) + Send + Sync>;

pub(crate) struct DescInner {
    /// Unique among descriptors (claims name their descriptor by it).
    pub id: u64,
    /// Opened for writing, or promoted by a claim that writes.
    pub write: AtomicBool,
    pub callback: EventCallback,
    /// The core that opened it; events are delivered there by message.
    pub core: Option<CoreId>,
    pub closed: AtomicBool,
}

impl DescInner {
    #[inline]
    pub fn writable(&self) -> bool {
        self.write.load(Ordering::Relaxed)
    }

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
    claimed: bool,
}

impl std::fmt::Debug for Desc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desc")
            .field("bdev", &self.bdev.name())
            .field("write", &self.inner.writable())
            .finish()
    }
}

/// Opens bdev `name` (or alias) for reading, or reading and writing. Events
/// (Resize, Remove) go to `event_cb`, on the opening core when opened on a
/// reactor. A claimed bdev cannot be opened for writing (the claimants
/// write through their own descriptors).
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
    if write {
        bdev.inner.claims().check_open_write(bdev.name())?;
    }
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let inner = Arc::new(DescInner {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        write: AtomicBool::new(write),
        callback: Arc::new(event_cb),
        core: reactor::current_core(),
        closed: AtomicBool::new(false),
    });
    bdev.inner.descs().push(Arc::downgrade(&inner));
    Ok(Desc {
        bdev,
        inner,
        claimed: false,
    })
}

impl Desc {
    /// The bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// Whether it was opened for writing.
    pub fn writable(&self) -> bool {
        self.inner.writable()
    }

    /// Claims the bdev for exclusive write by `module` (a vbdev claims its
    /// base; SPDK's v1 claim); the descriptor becomes a writer.
    ///
    /// # Errors
    /// As [`Desc::claim_as`].
    pub fn claim(&mut self, module: &str) -> Result<(), BdevError> {
        self.claim_as(module, ClaimType::ExclusiveWrite, 0)
    }

    /// Claims the bdev with this descriptor for `module` (SPDK's
    /// `spdk_bdev_module_claim_bdev_desc`); `shared_key` is the key of a
    /// read-many-write-shared claim (0 for the other types). A claim that
    /// writes makes the descriptor a writer; closing the descriptor
    /// releases the claim.
    ///
    /// # Errors
    /// [`BdevError::Claimed`] (-EPERM) naming the holder and why, when the
    /// claims already held or the descriptors open forbid it;
    /// [`BdevError::Invalid`] for a writable descriptor with a
    /// read-many-write-none claim, or a key where none goes (or none where
    /// one must).
    pub fn claim_as(
        &mut self,
        module: &str,
        ty: ClaimType,
        shared_key: u64,
    ) -> Result<(), BdevError> {
        self.claim_for(module, None, ty, shared_key)
    }

    /// [`Desc::claim_as`] on behalf of the bdev `owner` that stands on
    /// this one (a vbdev over its base): `save_config` writes `owner`
    /// after this bdev, whatever its parameters are called.
    ///
    /// # Errors
    /// As [`Desc::claim_as`].
    pub fn claim_for(
        &mut self,
        module: &str,
        owner: Option<&str>,
        ty: ClaimType,
        shared_key: u64,
    ) -> Result<(), BdevError> {
        let open: Vec<Opener> = self
            .bdev
            .inner
            .live_descs()
            .iter()
            .filter(|d| !d.closed.load(Ordering::Acquire))
            .map(|d| Opener {
                id: d.id,
                write: d.writable(),
            })
            .collect();
        let me = Opener {
            id: self.inner.id,
            write: self.inner.writable(),
        };
        self.bdev.inner.claims().take(
            self.bdev.name(),
            module,
            owner,
            ty,
            shared_key,
            &me,
            &open,
        )?;
        if ty != ClaimType::ReadManyWriteNone {
            // A claim that writes makes its descriptor a writer (as SPDK).
            self.inner.write.store(true, Ordering::Relaxed);
        }
        self.claimed = true;
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
        if self.claimed {
            self.bdev.inner.claims().release(self.inner.id);
        }
        let me = Arc::as_ptr(&self.inner);
        self.bdev
            .inner
            .descs()
            .retain(|w| w.as_ptr() != me && w.strong_count() > 0);
    }
}
