//! A volume's bdev and its I/O path.
//!
//! The layer cuts I/O at clusters (the bdev's optimal I/O boundary is one
//! cluster), so each read or write lies in one cluster:
//!
//! - mapped to the volume (the common case): a child I/O to the base at
//!   the device cluster, over the caller's buffers; nothing allocated, no
//!   lock;
//! - a read of a cluster the volume does not have: its ancestor's device
//!   cluster (a child I/O again), zeros (filled in place), or the external
//!   snapshot (read through the blob store);
//! - a write to a cluster a thin volume does not have: the blob store
//!   allocates it (zeroed, or filled from the parent, flushed, recorded,
//!   durably), then the write goes to it as above;
//! - FLUSH: the base's FLUSH (every write acknowledged before it, and the
//!   metadata naming its cluster, is durable after it);
//! - write-zeroes and unmap: through the blob store (zeros where the
//!   volume has clusters, nothing where it reads zeros already);
//! - SEEK_DATA/SEEK_HOLE: from the volume's allocation map.
//!
//! Operations that change where clusters are (snapshot, shrink, set
//! parent, a snapshot merged into this clone) quiesce the bdev first, so
//! no I/O is between its lookup and its completion meanwhile.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Lvol, Lvs, MODULE};
use crate::blob::handle::Src;
use crate::blob::{Blob, Blobstore};
use crate::{
    BdevChannel, BdevError, BdevIo, BdevOps, BdevProps, Child, ChildData, IoHandle, IoStatus,
    IoType,
};

/// The product name SPDK gives a volume's bdev.
pub const PRODUCT_NAME: &str = "Logical Volume";

pub(crate) struct LvolBdev {
    pub lvol: Arc<Lvol>,
    pub blob: Blob,
    store: Blobstore,
    /// Blocks per cluster.
    upc: u64,
}

/// The per-core channel: the base's channel on this core.
pub struct LvolChannel {
    base: BdevChannel,
}

fn child_done(parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    parent.complete(status)
}

/// Sends `io` (a read or write of `n` blocks) to device block `lba`.
fn forward(io: IoHandle, base: &BdevChannel, lba: u64) {
    let (ty, n, fua) = {
        let r = io.io();
        (r.io_type(), r.num_blocks(), r.fua())
    };
    let child = Child {
        ty,
        offset_blocks: lba,
        num_blocks: n,
        fua,
        src_offset_blocks: 0,
        data: ChildData::Parent,
    };
    if let Err(refused) = io.submit_child(base, child, child_done) {
        refused.fail_parent();
    }
}

impl LvolBdev {
    fn slow_write(&self, ch: &LvolChannel, io: IoHandle, cluster: u64, within: u64) {
        let base = ch.base.clone();
        let store = self.store.clone();
        let st = self.blob.st.clone();
        let upc = self.upc;
        drop(reactor::spawn(async move {
            match store.allocate_cluster(&base, &st, cluster).await {
                Ok(d) => forward(io, &base, u64::from(d) * upc + within),
                Err(e) => {
                    log::error!("lvol blob {:#x}: write to cluster {cluster}: {e}", st.id);
                    io.complete(IoStatus::Failed);
                }
            }
        }));
    }

    fn esnap_read(
        &self,
        ch: &LvolChannel,
        mut io: IoHandle,
        d: Arc<crate::blob::handle::EsnapDev>,
        byte: u64,
    ) {
        let base = ch.base.clone();
        let id = self.blob.id();
        let len = io.io().data_len();
        drop(reactor::spawn(async move {
            let buf = match base.alloc_buf(len) {
                Ok(b) => b,
                Err(_) => {
                    io.complete(IoStatus::NoMem);
                    return;
                }
            };
            match crate::blob::io::read_esnap(&d, byte, len, buf).await {
                Ok(buf) => {
                    let mut v = vec![0u8; len];
                    buf.read_at(0, &mut v);
                    base.free_buf(buf);
                    io.copy_to_data(0, &v);
                    io.complete(IoStatus::Success);
                }
                Err(e) => {
                    log::error!("lvol blob {id:#x}: {e}");
                    io.complete(IoStatus::Failed);
                }
            }
        }));
    }

    fn zero(&self, ch: &LvolChannel, io: IoHandle) {
        let base = ch.base.clone();
        // Not counted as open: a deletion is not refused for it.
        let blob = self.blob.view();
        let (off, n) = (io.io().offset_blocks(), io.io().num_blocks());
        drop(reactor::spawn(async move {
            match blob.zero(&base, off, n).await {
                Ok(()) => io.complete(IoStatus::Success),
                Err(e) => {
                    log::error!("lvol: zeroing {n} blocks at {off}: {e}");
                    io.complete(IoStatus::Failed);
                }
            }
        }));
    }
}

impl BdevOps for LvolBdev {
    type Channel = LvolChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<LvolChannel, String> {
        Ok(LvolChannel {
            base: self.store.io_channel().map_err(|e| e.to_string())?.clone(),
        })
    }

    fn submit(&self, ch: &LvolChannel, mut io: IoHandle) {
        let (ty, off, n) = {
            let r = io.io();
            (r.io_type(), r.offset_blocks(), r.num_blocks())
        };
        let st = &self.blob.st;
        match ty {
            IoType::Read | IoType::Write => {
                let (c, within) = (off / self.upc, off % self.upc);
                if within + n > self.upc {
                    // The layer cuts at clusters; anything else is a bug.
                    log::error!("lvol: {n} blocks at {off} cross a cluster");
                    io.complete(IoStatus::Failed);
                    return;
                }
                // Made read-only after this channel was: its writes fail
                // (one atomic load).
                if ty == IoType::Write && self.blob.is_read_only() {
                    io.complete(IoStatus::Failed);
                    return;
                }
                let d = st.map.get(c);
                if d != 0 {
                    return forward(io, &ch.base, u64::from(d) * self.upc + within);
                }
                if ty == IoType::Write {
                    return self.slow_write(ch, io, c, within);
                }
                match st.resolve(c) {
                    Src::Dev(d) => forward(io, &ch.base, u64::from(d) * self.upc + within),
                    Src::Zeros => {
                        io.fill_data(0);
                        io.complete(IoStatus::Success);
                    }
                    Src::Esnap(d) => {
                        let unit = u64::from(self.store.io_unit_size());
                        self.esnap_read(ch, io, d, off * unit)
                    }
                    Src::Missing(name) => {
                        log::error!(
                            "lvol {}: cluster {c} reads from external snapshot {name}, missing",
                            self.lvol.uuid
                        );
                        io.complete(IoStatus::Failed);
                    }
                }
            }
            IoType::Flush => {
                let child = Child {
                    ty: IoType::Flush,
                    offset_blocks: 0,
                    num_blocks: ch.base.num_blocks(),
                    fua: false,
                    src_offset_blocks: 0,
                    data: ChildData::None,
                };
                if let Err(refused) = io.submit_child(&ch.base, child, child_done) {
                    refused.fail_parent();
                }
            }
            IoType::WriteZeroes | IoType::Unmap => self.zero(ch, io),
            IoType::SeekData => {
                let at = self.blob.seek_data(off);
                io.io_mut().set_seek_offset(at);
                io.complete(IoStatus::Success);
            }
            IoType::SeekHole => {
                let at = self.blob.seek_hole(off);
                io.io_mut().set_seek_offset(at);
                io.complete(IoStatus::Success);
            }
            IoType::Reset => io.complete(IoStatus::Success),
            _ => io.complete(IoStatus::NotSupported),
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        match ty {
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => !self.blob.is_read_only(),
            IoType::Read | IoType::Flush | IoType::Reset | IoType::SeekData | IoType::SeekHole => {
                true
            }
            _ => false,
        }
    }

    fn dump_info_json(&self) -> Value {
        json!({ "lvol": info(&self.lvol, &self.blob) })
    }

    fn destruct(&self) {
        // The table may outlive the bdev (a `Bdev` kept somewhere): the
        // blob is closed now, so it can be deleted.
        self.blob.release();
    }
}

/// `driver_specific.lvol` of a volume's bdev (SPDK's fields, and
/// Longhorn's: `xattrs`, `creation_time`).
pub(crate) fn info(lvol: &Lvol, blob: &Blob) -> Value {
    let lvs = lvol.lvs();
    let store = lvs.as_ref().map(|l| &l.store);
    let name_of = |id: u64| -> Option<String> {
        lvs.as_ref()
            .and_then(|l| l.lvol_of_blob(id))
            .map(|v| v.name())
    };
    let clones: Vec<String> = store
        .map(|s| s.clones(blob.id()))
        .unwrap_or_default()
        .into_iter()
        .filter_map(name_of)
        .collect();
    let mut m = serde_json::Map::new();
    m.insert(
        "lvol_store_uuid".into(),
        json!(lvs.as_ref().map(|l| l.uuid.clone()).unwrap_or_default()),
    );
    m.insert(
        "base_bdev".into(),
        json!(lvs.as_ref().map(|l| l.base.clone()).unwrap_or_default()),
    );
    m.insert("thin_provision".into(), json!(blob.is_thin()));
    m.insert("num_clusters".into(), json!(blob.num_clusters()));
    m.insert(
        "num_allocated_clusters".into(),
        json!(blob.allocated_clusters()),
    );
    m.insert("snapshot".into(), json!(blob.is_read_only()));
    m.insert("clone".into(), json!(blob.parent().is_some()));
    if let Some(p) = blob.parent().and_then(name_of) {
        m.insert("base_snapshot".into(), json!(p));
    }
    if blob.is_read_only() {
        m.insert("clones".into(), json!(clones));
    }
    m.insert(
        "esnap_clone".into(),
        json!(blob.external_parent().is_some()),
    );
    if let Some(e) = blob.external_parent() {
        let name = crate::list()
            .into_iter()
            .find(|b| b.uuid() == e || b.name() == e)
            .map(|b| b.name().to_owned())
            .unwrap_or(e);
        m.insert("external_snapshot_name".into(), json!(name));
    }
    Value::Object(m)
}

/// Registers volume `lvol`'s bdev over its open blob.
///
/// # Errors
/// [`BdevError::Exists`] when its UUID or alias names another bdev.
pub(crate) fn register(lvs: &Lvs, lvol: Arc<Lvol>, blob: Blob) -> Result<crate::Bdev, BdevError> {
    let store = lvs.store.clone();
    let unit = store.io_unit_size();
    let mut props = BdevProps::new(lvol.uuid.clone(), PRODUCT_NAME, unit, blob.num_io_units());
    props.aliases = vec![lvol.alias()];
    props.uuid = Some(lvol.uuid.clone());
    props.optimal_io_boundary = Some(store.units_per_cluster());
    props.write_cache = store.bdev().props().write_cache;
    props.creation_time = blob
        .xattr(super::ops::XATTR_CREATION_TIME)
        .map(|v| super::lvs::from_cstr(&v));
    if blob.num_io_units() == 0 {
        return Err(BdevError::invalid(
            "size",
            format!("volume {} has no clusters", lvol.name()),
        ));
    }
    crate::register(
        MODULE,
        props,
        LvolBdev {
            upc: store.units_per_cluster(),
            lvol,
            blob,
            store,
        },
    )
}
