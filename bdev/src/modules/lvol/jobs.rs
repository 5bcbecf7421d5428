//! Long volume operations, run on the reactor that started them, each
//! holding its volume's blob busy (deleting it fails with EBUSY
//! meanwhile):
//!
//! - copies ([`start_copy`], in the background, polled by id): SPDK's
//!   shallow copy (the clusters a read-only volume owns, to the same
//!   offsets of another bdev), Longhorn's range shallow copy (the listed
//!   clusters: owned ones copied, the others unmapped on the destination)
//!   and deep copy (every cluster that reads data, ancestors' included);
//! - snapshot checksums ([`checksum`], Longhorn's): CRC-64/ISO (reflected,
//!   as Go's `crc64.ISO`) chained over the clusters a snapshot owns, in
//!   order, kept in its xattr `checksum` (8 bytes, little-endian) until its
//!   clusters change; the range variant also keeps one CRC per cluster;
//!   [`stop_checksum`] interrupts one;
//! - the fragmentation map ([`fragmap`]): a bitmap of the clusters a
//!   volume owns.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};

use super::{Lvol, LvolError, Lvs, lock};
use crate::blob::Blob;
use crate::{Desc, IoStatus, IoType};

/// What a copy copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyKind {
    /// The clusters the (read-only) volume owns (SPDK's shallow copy).
    Shallow,
    /// The listed clusters: those the volume owns copied, the others
    /// unmapped on the destination (Longhorn's range shallow copy).
    Range(Vec<u64>),
    /// Every cluster that reads data (its own, its ancestors', its
    /// external snapshot's); the others left alone (Longhorn's deep copy).
    Deep,
}

/// A copy's progress.
struct Progress {
    deep: bool,
    range: bool,
    done: AtomicU64,
    unmapped: AtomicU64,
    total: u64,
    finished: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Progress {
    /// SPDK's `bdev_lvol_check_shallow_copy` answer (Longhorn's
    /// `unmapped_clusters` for a range copy), or Longhorn's
    /// `bdev_lvol_check_deep_copy` one (`processed_clusters`).
    fn json(&self) -> Value {
        let err = lock(&self.error).clone();
        let state = if !self.finished.load(Ordering::Acquire) {
            "in progress"
        } else if err.is_some() {
            "error"
        } else {
            "complete"
        };
        let counted = if self.deep {
            "processed_clusters"
        } else {
            "copied_clusters"
        };
        let mut v = json!({
            "state": state,
            counted: self.done.load(Ordering::Acquire),
            "total_clusters": self.total,
        });
        if self.range {
            v["unmapped_clusters"] = json!(self.unmapped.load(Ordering::Acquire));
        }
        if let Some(e) = err {
            v["error"] = json!(e);
        }
        v
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);
static COPIES: Mutex<Vec<(u32, Arc<Progress>)>> = Mutex::new(Vec::new());

/// The answer for copy `id`, if it is of the kind asked (deep or not);
/// None: no such operation. A finished copy's answer is given once, then
/// forgotten (as SPDK).
pub fn copy_status(id: u32, deep: bool) -> Option<Value> {
    let mut all = lock(&COPIES);
    let at = all.iter().position(|(i, p)| *i == id && p.deep == deep)?;
    let v = all[at].1.json();
    if all[at].1.finished.load(Ordering::Acquire) {
        all.remove(at);
    }
    Some(v)
}

/// Starts copying `lvol` to bdev `dst` as `kind` says; returns the
/// operation's id (from 1).
///
/// # Errors
/// ENODEV for a missing destination; EPERM for a source that is not
/// read-only; EINVAL for a destination smaller than the volume or with
/// other blocks, an empty range or a cluster out of range, or a range
/// with unowned clusters to a destination without unmap; EBUSY when the
/// destination is claimed.
pub async fn start_copy(
    lvs: &Arc<Lvs>,
    lvol: &Arc<Lvol>,
    dst: &str,
    kind: CopyKind,
) -> Result<u32, LvolError> {
    // Under the store's lock: not while the volume is being deleted or
    // changed; held once this returns.
    let _op = lvs.op.lock().await;
    let blob = lvs.store.open_blob(lvol.blob_id)?;
    if !blob.is_read_only() {
        return Err(LvolError::NotPermitted(format!(
            "lvol {} must be read-only to be copied",
            lvol.alias()
        )));
    }
    let d =
        crate::get(dst).ok_or_else(|| LvolError::NotFound(format!("bdev {dst} does not exist")))?;
    if d.claimed_by().is_some() {
        return Err(LvolError::Busy(format!("bdev {dst} is claimed")));
    }
    let unit = u64::from(lvs.store.io_unit_size());
    if d.block_size() != lvs.store.io_unit_size() {
        return Err(LvolError::Invalid(format!(
            "bdev {dst} has {}-byte blocks; lvol {} has {unit}",
            d.block_size(),
            lvol.alias()
        )));
    }
    let bytes = blob.num_io_units() * unit;
    if d.num_blocks() * unit < bytes {
        return Err(LvolError::Invalid(format!(
            "bdev {dst} ({} bytes) is smaller than lvol {} ({bytes})",
            d.num_blocks() * unit,
            lvol.alias()
        )));
    }
    let n = blob.num_clusters();
    let clusters: Vec<u64> = match &kind {
        CopyKind::Shallow => (0..n).filter(|&c| blob.is_allocated(c)).collect(),
        CopyKind::Range(list) => {
            if list.is_empty() {
                return Err(LvolError::Invalid("clusters: an empty list".into()));
            }
            if let Some(c) = list.iter().find(|&&c| c >= n) {
                return Err(LvolError::Invalid(format!(
                    "cluster {c}: lvol {} has {n}",
                    lvol.alias()
                )));
            }
            if list.iter().any(|&c| !blob.is_allocated(c)) && !d.io_type_supported(IoType::Unmap) {
                return Err(LvolError::Invalid(format!(
                    "bdev {dst} cannot unmap the clusters lvol {} does not own",
                    lvol.alias()
                )));
            }
            list.clone()
        }
        CopyKind::Deep => (0..n).collect(),
    };
    let desc = crate::open(dst, true, |_, _| {})?;
    let hold = lvs.store.hold(lvol.blob_id)?;
    let progress = Arc::new(Progress {
        deep: kind == CopyKind::Deep,
        range: matches!(kind, CopyKind::Range(_)),
        done: AtomicU64::new(0),
        unmapped: AtomicU64::new(0),
        total: clusters.len() as u64,
        finished: AtomicBool::new(false),
        error: Mutex::new(None),
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock(&COPIES).push((id, progress.clone()));
    drop(reactor::spawn(async move {
        let r = copy(&blob, &desc, &clusters, &kind, &progress).await;
        drop(hold);
        if let Err(e) = r {
            log::error!("lvol: copy {id}: {e}");
            *lock(&progress.error) = Some(e);
        }
        progress.finished.store(true, Ordering::Release);
    }));
    Ok(id)
}

/// Bytes moved per I/O of a copy or checksum.
const STEP: u64 = 1 << 20;

async fn dev(
    ch: &crate::BdevChannel,
    ty: IoType,
    lba: u64,
    n: u64,
    what: &str,
) -> Result<(), String> {
    let (st, _) = ch
        .io(ty, None, lba, n, false)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if st != IoStatus::Success {
        return Err(format!("{what}: {st:?}"));
    }
    Ok(())
}

async fn copy(
    blob: &Blob,
    dst: &Desc,
    clusters: &[u64],
    kind: &CopyKind,
    p: &Progress,
) -> Result<(), String> {
    let store = &blob.store;
    let ch = store.io_channel().map_err(|e| e.to_string())?;
    let out = dst.get_io_channel().map_err(|e| e.to_string())?;
    let unit = u64::from(store.io_unit_size());
    let upc = store.units_per_cluster();
    let step = (STEP / unit).clamp(1, upc);
    for &c in clusters {
        let copy_it = match kind {
            CopyKind::Deep => !blob.reads_zeros(c),
            _ => blob.is_allocated(c),
        };
        if copy_it {
            let mut at = 0;
            while at < upc {
                let k = step.min(upc - at);
                let buf = ch
                    .alloc_buf((k * unit) as usize)
                    .map_err(|e| e.to_string())?;
                let buf = blob
                    .read(&ch, c * upc + at, k, buf)
                    .await
                    .map_err(|e| e.to_string())?;
                let (st, buf) = out
                    .io(IoType::Write, Some(buf), c * upc + at, k, false)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(b) = buf {
                    out.free_buf(b);
                }
                if st != IoStatus::Success {
                    return Err(format!("writing cluster {c} to the destination: {st:?}"));
                }
                at += k;
            }
            p.done.fetch_add(1, Ordering::AcqRel);
        } else if matches!(kind, CopyKind::Range(_)) {
            dev(
                &out,
                IoType::Unmap,
                c * upc,
                upc,
                "unmapping the destination",
            )
            .await?;
            p.unmapped.fetch_add(1, Ordering::AcqRel);
        } else {
            // Deep: a cluster that reads zeros is left alone (counted).
            p.done.fetch_add(1, Ordering::AcqRel);
        }
    }
    if dst.bdev().io_type_supported(IoType::Flush) {
        dev(
            &out,
            IoType::Flush,
            0,
            dst.bdev().num_blocks(),
            "flushing the destination",
        )
        .await?;
    }
    Ok(())
}

/// The xattr holding a snapshot's checksum (Longhorn's).
pub const XATTR_CHECKSUM: &str = "checksum";
/// The internal xattrs holding its per-cluster checksums: `RCKSUM.0`,
/// `RCKSUM.1`... (496 little-endian u64s each; the first is the count).
const XATTR_RANGE: &str = "RCKSUM";
const PER_XATTR: usize = 496;

/// CRC-64/ISO, reflected (polynomial x^64 + x^4 + x^3 + x + 1), as Go's
/// `crc64.Update` with `crc64.ISO`: chain by passing the previous value.
pub fn crc64_iso(crc: u64, data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xD800_0000_0000_0000
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = t[((c ^ u64::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Checksums running, by blob, with their stop flags.
static RUNNING: Mutex<Vec<(u64, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

/// Why a checksum did not complete.
#[derive(Debug)]
pub enum ChecksumError {
    /// Stopped by [`stop_checksum`] (EINTR).
    Stopped,
    /// Anything else.
    Lvol(LvolError),
}

impl From<LvolError> for ChecksumError {
    fn from(e: LvolError) -> Self {
        ChecksumError::Lvol(e)
    }
}

impl From<crate::blob::BlobError> for ChecksumError {
    fn from(e: crate::blob::BlobError) -> Self {
        ChecksumError::Lvol(e.into())
    }
}

/// Computes snapshot `lvol`'s checksum (and with `range` its per-cluster
/// ones) and stores it, durably; the blob is busy meanwhile.
///
/// # Errors
/// EPERM for a volume that is not a snapshot; EBUSY while another
/// checksum runs on it; [`ChecksumError::Stopped`]; device errors.
pub async fn checksum(lvs: &Arc<Lvs>, lvol: &Arc<Lvol>, range: bool) -> Result<(), ChecksumError> {
    let blob = lvs.store.open_blob(lvol.blob_id)?;
    if !blob.is_read_only() {
        return Err(
            LvolError::NotPermitted(format!("lvol {} is not a snapshot", lvol.alias())).into(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let op = lvs.op.lock().await;
    {
        let mut r = lock(&RUNNING);
        if r.iter().any(|(id, _)| *id == lvol.blob_id) {
            return Err(
                LvolError::Busy(format!("a checksum of {} is running", lvol.alias())).into(),
            );
        }
        r.push((lvol.blob_id, stop.clone()));
    }
    let _hold = lvs.store.hold(lvol.blob_id);
    drop(op);
    let r = compute(&blob, range, &stop).await;
    lock(&RUNNING).retain(|(id, _)| *id != lvol.blob_id);
    let (sum, per) = r?;
    let _op = lvs.op.lock().await;
    blob.set_xattr(XATTR_CHECKSUM, &sum.to_le_bytes())?;
    if let Some(per) = per {
        let mut words = vec![per.len() as u64];
        words.extend(per);
        for (k, chunk) in words.chunks(PER_XATTR).enumerate() {
            let bytes: Vec<u8> = chunk.iter().flat_map(|w| w.to_le_bytes()).collect();
            blob.set_internal_xattr(&format!("{XATTR_RANGE}.{k}"), &bytes)?;
        }
    }
    blob.sync_md().await?;
    Ok(())
}

async fn compute(
    blob: &Blob,
    range: bool,
    stop: &AtomicBool,
) -> Result<(u64, Option<Vec<u64>>), ChecksumError> {
    let store = &blob.store;
    let ch = store.io_channel()?;
    let unit = u64::from(store.io_unit_size());
    let upc = store.units_per_cluster();
    let step = (STEP / unit).clamp(1, upc);
    let n = blob.num_clusters();
    let mut sum = 0u64;
    let mut per = range.then(|| vec![0u64; n as usize]);
    let mut data = vec![0u8; (step * unit) as usize];
    for c in 0..n {
        if !blob.is_allocated(c) {
            continue;
        }
        let mut own = 0u64;
        let mut at = 0;
        while at < upc {
            if stop.load(Ordering::Acquire) {
                return Err(ChecksumError::Stopped);
            }
            let k = step.min(upc - at);
            let len = (k * unit) as usize;
            let buf = ch.alloc_buf(len).map_err(LvolError::Bdev)?;
            let buf = blob.read(&ch, c * upc + at, k, buf).await?;
            buf.read_at(0, &mut data[..len]);
            ch.free_buf(buf);
            sum = crc64_iso(sum, &data[..len]);
            own = crc64_iso(own, &data[..len]);
            at += k;
        }
        if let Some(p) = per.as_mut() {
            p[c as usize] = own;
        }
    }
    Ok((sum, per))
}

/// Stops the checksum running on `lvol`, if any (it fails with EINTR);
/// whether one was running.
pub fn stop_checksum(lvol: &Lvol) -> bool {
    let r = lock(&RUNNING);
    match r.iter().find(|(id, _)| *id == lvol.blob_id) {
        Some((_, s)) => {
            s.store(true, Ordering::Release);
            true
        }
        None => false,
    }
}

/// The stored checksum of `lvol`.
///
/// # Errors
/// [`LvolError::NotFound`] when none is stored (or it is not 8 bytes).
pub fn get_checksum(lvs: &Lvs, lvol: &Lvol) -> Result<u64, LvolError> {
    let b = lvs.store.open_blob(lvol.blob_id)?;
    let v = b
        .xattr(XATTR_CHECKSUM)
        .ok_or_else(|| LvolError::NotFound(format!("lvol {}: no checksum stored", lvol.alias())))?;
    let a: [u8; 8] = v.as_slice().try_into().map_err(|_| {
        LvolError::NotFound(format!(
            "lvol {}: a checksum of {} bytes",
            lvol.alias(),
            v.len()
        ))
    })?;
    Ok(u64::from_le_bytes(a))
}

/// The stored per-cluster checksums of `lvol`, clusters `start` to
/// `start + count`.
///
/// # Errors
/// ENOENT when none are stored; EINVAL for a range past them.
pub fn get_range_checksums(
    lvs: &Lvs,
    lvol: &Lvol,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, u64)>, LvolError> {
    let b = lvs.store.open_blob(lvol.blob_id)?;
    let mut words = Vec::new();
    for k in 0.. {
        match b.internal_xattr(&format!("{XATTR_RANGE}.{k}")) {
            Some(v) => words.extend(
                v.chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))),
            ),
            None => break,
        }
    }
    let Some((&n, per)) = words.split_first() else {
        return Err(LvolError::Blob(crate::blob::BlobError::NotFound(
            lvol.blob_id,
        )));
    };
    let n = n.min(per.len() as u64);
    if start >= n || start.checked_add(count).is_none_or(|e| e > n) {
        return Err(LvolError::Invalid(format!(
            "clusters {start}..+{count}: {n} checksums are stored"
        )));
    }
    Ok((start..start + count)
        .map(|c| (c, per[c as usize]))
        .collect())
}

/// Drops the checksums stored on blob `b` (its clusters are about to
/// change); whether there were any. The caller syncs the metadata.
pub(crate) fn drop_checksums(b: &Blob) -> bool {
    let mut any = b.remove_xattr(XATTR_CHECKSUM).is_ok();
    for k in 0.. {
        let name = format!("{XATTR_RANGE}.{k}");
        if b.internal_xattr(&name).is_none() {
            break;
        }
        any |= b.remove_internal_xattr(&name).is_ok();
    }
    any
}

/// Longhorn's `bdev_lvol_get_fragmap` answer: which clusters of `lvol`
/// from byte `offset`, `size` bytes (0: to the end), it owns — base64 of
/// a bitmap, bit i (LSB first in byte i / 8) for cluster offset / cluster
/// size + i.
///
/// # Errors
/// EINVAL for a range past the volume or not in whole clusters.
pub fn fragmap(lvs: &Lvs, lvol: &Lvol, offset: u64, size: u64) -> Result<Value, LvolError> {
    let b = lvs.store.open_blob(lvol.blob_id)?;
    let cs = u64::from(lvs.store.cluster_size());
    let total = b.num_clusters() * cs;
    let size = if size == 0 {
        total.saturating_sub(offset)
    } else {
        size
    };
    if offset.checked_add(size).is_none_or(|e| e > total)
        || !offset.is_multiple_of(cs)
        || !size.is_multiple_of(cs)
    {
        return Err(LvolError::Invalid(format!(
            "fragmap of {size} bytes at {offset}: lvol {} has {total} bytes in clusters of {cs}",
            lvol.alias()
        )));
    }
    let (first, n) = (offset / cs, size / cs);
    let mut bits = vec![0u8; n.div_ceil(8) as usize];
    let mut count = 0u64;
    for i in 0..n {
        if b.is_allocated(first + i) {
            bits[(i / 8) as usize] |= 1 << (i % 8);
            count += 1;
        }
    }
    Ok(json!({
        "cluster_size": cs,
        "num_clusters": n,
        "num_allocated_clusters": count,
        "fragmap": base64::engine::general_purpose::STANDARD.encode(&bits),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_iso_check_value() {
        // CRC-64/GO-ISO's check value.
        assert_eq!(crc64_iso(0, b"123456789"), 0xB909_56C7_75A4_1001);
        // Chained equals whole.
        let c = crc64_iso(crc64_iso(0, b"12345"), b"6789");
        assert_eq!(c, 0xB909_56C7_75A4_1001);
    }
}
