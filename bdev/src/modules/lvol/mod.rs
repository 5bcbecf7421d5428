//! Logical volumes (SPDK's lvol) over the blob store ([`crate::blob`]), in
//! SPDK's on-disk conventions so a store made by either opens in the
//! other:
//!
//! - an lvstore is a blob store of type `LVOLSTORE` on a base bdev (claimed
//!   exclusively); its super blob carries the store's `name` (with its
//!   NUL) and `uuid` (36 characters and a NUL);
//! - every other blob is a volume: xattr `name` (the name NUL-padded to 64
//!   bytes) and `uuid` (with its NUL); snapshots are read-only blobs, clones
//!   thin blobs naming their snapshot, external-snapshot clones name a bdev
//!   (`EXTSNAP`, its UUID).
//!
//! Each volume is a bdev ([`vol`]): named by its UUID, aliased
//! `lvs/lvol`, product "Logical Volume", one block per I/O unit of the
//! store; its I/O is cut at clusters and goes straight to the base where
//! the cluster is mapped, through the blob store where it is not. Stores
//! are found again by examine ([`lvs::examine`]) whenever their bdev
//! appears; volumes are never re-created from configuration.
//!
//! Operations ([`lvs`], [`ops`]) run one at a time per store (its
//! operation lock); long ones (copies, checksums: [`jobs`]) run in the
//! background, holding their blob busy. Three contracts upstream breaks
//! hold here: FLUSH reaches the base; a thin volume's new cluster reads
//! zeros (the blob store zeroes it, durably, before the metadata names it);
//! deleting a busy volume fails with EBUSY and leaves it whole.

pub mod jobs;
pub mod longhorn_rpc;
pub mod lvs;
pub mod ops;
pub mod rpc;
pub mod vol;

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::blob::{BlobError, Blobstore};
use crate::oplock::OpLock;
use crate::{BdevError, BdevModule, ModuleTask};

/// The module's name (claims, `bdev_get_bdevs`).
pub const MODULE: &str = "lvol";

/// The blob store type of an lvstore.
pub const BSTYPE: &str = "LVOLSTORE";

/// SPDK's `SPDK_LVS_NAME_MAX` and `SPDK_LVOL_NAME_MAX`: names are shorter
/// (the stored field keeps a NUL).
pub const NAME_MAX: usize = 64;

/// A volume operation's failure: what failed, with the errno SPDK answers
/// for the same case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LvolError {
    /// No such lvstore, volume or bdev (ENODEV).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (EEXIST).
    #[error("{0}")]
    Exists(String),
    /// A bad argument (EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// In use (EBUSY).
    #[error("{0}")]
    Busy(String),
    /// Not allowed on this volume (EPERM).
    #[error("{0}")]
    NotPermitted(String),
    /// No room (ENOSPC).
    #[error("{0}")]
    NoSpace(String),
    /// The blob store's failure (its errno).
    #[error("{0}")]
    Blob(#[from] BlobError),
    /// The bdev layer's failure (its errno).
    #[error("{0}")]
    Bdev(#[from] BdevError),
}

impl LvolError {
    /// The positive errno of the answer.
    pub fn errno(&self) -> i32 {
        match self {
            LvolError::NotFound(_) => libc::ENODEV,
            LvolError::Exists(_) => libc::EEXIST,
            LvolError::Invalid(_) => libc::EINVAL,
            LvolError::Busy(_) => libc::EBUSY,
            LvolError::NotPermitted(_) => libc::EPERM,
            LvolError::NoSpace(_) => libc::ENOSPC,
            LvolError::Blob(e) => e.errno(),
            LvolError::Bdev(e) => e.errno().abs(),
        }
    }
}

/// An lvstore in memory.
pub struct Lvs {
    /// Its UUID (lower case).
    pub uuid: String,
    name: Mutex<String>,
    /// The base bdev's name.
    pub base: String,
    /// The blob store.
    pub store: Blobstore,
    /// The super blob (its name and UUID).
    pub super_blob: u64,
    lvols: Mutex<Vec<Arc<Lvol>>>,
    /// One metadata operation at a time.
    pub(crate) op: OpLock,
}

impl std::fmt::Debug for Lvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lvs")
            .field("name", &self.name())
            .field("uuid", &self.uuid)
            .finish()
    }
}

impl Lvs {
    /// Its name.
    pub fn name(&self) -> String {
        lock(&self.name).clone()
    }

    /// Its volumes.
    pub fn lvols(&self) -> Vec<Arc<Lvol>> {
        lock(&self.lvols).clone()
    }

    /// Its volume `name`.
    pub fn lvol_named(&self, name: &str) -> Option<Arc<Lvol>> {
        lock(&self.lvols).iter().find(|l| l.name() == name).cloned()
    }

    /// Its volume with blob `id`.
    pub fn lvol_of_blob(&self, id: u64) -> Option<Arc<Lvol>> {
        lock(&self.lvols).iter().find(|l| l.blob_id == id).cloned()
    }

    pub(crate) fn add_lvol(&self, l: Arc<Lvol>) {
        lock(&self.lvols).push(l);
    }

    pub(crate) fn remove_lvol(&self, id: u64) {
        lock(&self.lvols).retain(|l| l.blob_id != id);
    }
}

/// A volume in memory.
pub struct Lvol {
    lvs: Weak<Lvs>,
    /// Its blob.
    pub blob_id: u64,
    /// Its UUID, and its bdev's name.
    pub uuid: String,
    name: Mutex<String>,
    /// How its clusters are cleared when it is deleted.
    pub(crate) clear: Mutex<crate::blob::ClearMethod>,
}

impl std::fmt::Debug for Lvol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lvol")
            .field("name", &self.name())
            .field("uuid", &self.uuid)
            .finish()
    }
}

impl Lvol {
    /// Its name within the store.
    pub fn name(&self) -> String {
        lock(&self.name).clone()
    }

    pub(crate) fn set_name(&self, n: &str) {
        *lock(&self.name) = n.to_owned();
    }

    /// Its store (None once the store is gone).
    pub fn lvs(&self) -> Option<Arc<Lvs>> {
        self.lvs.upgrade()
    }

    /// Its bdev's name (its UUID).
    pub fn bdev_name(&self) -> &str {
        &self.uuid
    }

    /// `lvs/lvol`.
    pub fn alias(&self) -> String {
        format!(
            "{}/{}",
            self.lvs().map(|l| l.name()).unwrap_or_default(),
            self.name()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static STORES: Mutex<Vec<Arc<Lvs>>> = Mutex::new(Vec::new());

/// Every lvstore loaded.
pub fn stores() -> Vec<Arc<Lvs>> {
    lock(&STORES).clone()
}

pub(crate) fn add_store(l: Arc<Lvs>) {
    lock(&STORES).push(l);
}

pub(crate) fn remove_store(uuid: &str) {
    lock(&STORES).retain(|l| l.uuid != uuid);
}

/// The lvstore named by exactly one of `uuid` and `name` (SPDK's
/// `vbdev_get_lvol_store_by_uuid_xor_name`).
///
/// # Errors
/// [`LvolError::Invalid`] for both or neither; [`LvolError::NotFound`].
pub fn lvs_by(uuid: Option<&str>, name: Option<&str>) -> Result<Arc<Lvs>, LvolError> {
    match (uuid, name) {
        (Some(_), Some(_)) | (None, None) => Err(LvolError::Invalid(
            "exactly one of uuid and lvs_name must be given".into(),
        )),
        (Some(u), None) => stores()
            .into_iter()
            .find(|l| l.uuid.eq_ignore_ascii_case(u))
            .ok_or_else(|| LvolError::NotFound(format!("no lvstore with UUID {u}"))),
        (None, Some(n)) => stores()
            .into_iter()
            .find(|l| l.name() == n)
            .ok_or_else(|| LvolError::NotFound(format!("no lvstore named {n}"))),
    }
}

/// The volume whose bdev is `name` (its name, UUID or `lvs/lvol` alias).
///
/// # Errors
/// [`LvolError::NotFound`] when no such bdev is a volume.
pub fn lvol_by_bdev(name: &str) -> Result<(Arc<Lvs>, Arc<Lvol>), LvolError> {
    let not = || LvolError::NotFound(format!("no logical volume {name}"));
    // Its bdev's name; else (a volume without a bdev: no clusters, or its
    // registration refused) its UUID or alias, as SPDK finds degraded ones.
    let key = match crate::get(name) {
        Some(b) if b.module() == MODULE => b.name().to_owned(),
        Some(_) => return Err(not()),
        None => name.to_owned(),
    };
    for s in stores() {
        let found = lock(&s.lvols)
            .iter()
            .find(|l| l.uuid == key || l.alias() == key)
            .cloned();
        if let Some(l) = found {
            return Ok((s, l));
        }
    }
    Err(not())
}

/// Checks a store or volume name as SPDK does.
///
/// # Errors
/// [`LvolError::Invalid`] for an empty name or one of 64 bytes or more.
pub fn check_name(what: &str, name: &str) -> Result<(), LvolError> {
    if name.is_empty() {
        return Err(LvolError::Invalid(format!("{what}: no name specified")));
    }
    if name.len() >= NAME_MAX {
        return Err(LvolError::Invalid(format!(
            "{what} {name:?}: {} bytes; names are shorter than {NAME_MAX}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(LvolError::Invalid(format!(
            "{what} {name:?}: contains a NUL"
        )));
    }
    Ok(())
}

/// The lvol module: examines every new bdev for an lvstore (and reopens
/// the external snapshots that were missing), unloads every store at
/// shutdown.
pub struct LvolModule;

impl BdevModule for LvolModule {
    fn name(&self) -> &str {
        MODULE
    }

    fn examine_disk(&self, bdev: &str) -> Option<ModuleTask> {
        let name = bdev.to_owned();
        Some(Box::new(move || Box::pin(lvs::examine(name))))
    }

    fn fini(&self) -> Option<ModuleTask> {
        Some(Box::new(|| Box::pin(lvs::unload_all())))
    }
}

/// Registers the lvol module with the layer (once, at start).
///
/// # Errors
/// The layer's refusal.
pub fn register() -> Result<(), BdevError> {
    crate::register_module(Arc::new(LvolModule))
}
