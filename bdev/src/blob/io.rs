//! A blob's I/O: offsets and lengths in I/O units (the device's blocks),
//! cut at cluster boundaries, each piece sent to the device cluster the
//! blob's map names, without a lock on the way.
//!
//! - Read: an unallocated cluster reads from the first ancestor that has
//!   it, else from the external snapshot at the chain's end (zeros past
//!   its end; an error while it is missing), else zeros.
//! - Write (and write-zeroes over a cluster an ancestor has): the first
//!   write to an unallocated cluster of a thin blob allocates one, fills
//!   it with zeros or with the parent's data, flushes, and records it in
//!   the metadata — all before the write itself is sent, so no reader,
//!   snapshot, close or restart ever sees what the cluster held before.
//! - Write-zeroes and unmap: zeros where the blob has clusters (the
//!   device's write-zeroes); nothing where it has none and no ancestor
//!   does (those read zeros already).
//! - Flush: every write acknowledged before it, and the metadata that
//!   finds it (written before the write was sent), made durable by a FLUSH
//!   of the device.
//!
//! A piece that lies in one cluster uses the caller's buffer; a request
//! over several clusters is carried piece by piece through buffers of its
//! own.

use std::sync::Arc;

use dma::DmaBuf;

use super::error::BlobError;
use super::handle::{Blob, BlobState, EsnapDev, Src};
use super::store::{BlobChannel, Blobstore};
use crate::{BdevChannel, IoStatus, IoType};

async fn dev_io(
    ch: &BdevChannel,
    ty: IoType,
    buf: Option<DmaBuf>,
    lba: u64,
    n: u64,
    id: u64,
) -> Result<Option<DmaBuf>, BlobError> {
    let what = || format!("blob {id:#x}: {ty:?} of {n} units at device block {lba}");
    let (st, buf) = ch
        .io(ty, buf, lba, n, false)
        .await
        .map_err(|e| BlobError::io(what(), e))?;
    if st != IoStatus::Success {
        return Err(BlobError::io(what(), format!("{st:?}")));
    }
    Ok(buf)
}

fn missing(id: u64, i: u64, name: &str) -> BlobError {
    BlobError::io(
        format!("blob {id:#x} cluster {i}"),
        format!("its external snapshot {name} is missing (the blob is degraded)"),
    )
}

/// Reads `len` bytes at byte `from` of external snapshot `d` into `buf`:
/// zeros past its end.
pub(crate) async fn read_esnap(
    d: &EsnapDev,
    from: u64,
    len: usize,
    mut buf: DmaBuf,
) -> Result<DmaBuf, BlobError> {
    let what = || format!("reading external snapshot {}", d.desc.bdev().name());
    let inside = d.bytes.saturating_sub(from).min(len as u64) as usize;
    if inside < len {
        buf.fill(0);
    }
    if inside == 0 {
        return Ok(buf);
    }
    let ch = d
        .desc
        .get_io_channel()
        .map_err(|e| BlobError::io(what(), e))?;
    let bs = u64::from(d.block_size);
    if inside == len {
        let (st, b) = ch
            .io(IoType::Read, Some(buf), from / bs, len as u64 / bs, false)
            .await
            .map_err(|e| BlobError::io(what(), e))?;
        if st != IoStatus::Success {
            return Err(BlobError::io(what(), format!("{st:?}")));
        }
        return b.ok_or_else(|| BlobError::io(what(), "the buffer did not come back"));
    }
    // Its last blocks: through a buffer of their own.
    let tmp = ch.alloc_buf(inside).map_err(|e| BlobError::io(what(), e))?;
    let (st, tmp) = ch
        .io(
            IoType::Read,
            Some(tmp),
            from / bs,
            inside as u64 / bs,
            false,
        )
        .await
        .map_err(|e| BlobError::io(what(), e))?;
    let tmp = tmp.ok_or_else(|| BlobError::io(what(), "the buffer did not come back"))?;
    if st != IoStatus::Success {
        ch.free_buf(tmp);
        return Err(BlobError::io(what(), format!("{st:?}")));
    }
    let mut v = vec![0u8; inside];
    tmp.read_at(0, &mut v);
    ch.free_buf(tmp);
    buf.write_at(0, &v);
    Ok(buf)
}

impl Blobstore {
    /// Allocates blob cluster `i` of `st` if it has none (see
    /// [`Blobstore::cluster_for_write`]).
    pub(crate) async fn allocate_cluster(
        &self,
        ch: &BdevChannel,
        st: &Arc<BlobState>,
        i: u64,
    ) -> Result<u32, BlobError> {
        self.cluster_for_write(ch, st, i).await
    }

    /// The device cluster blob cluster `i` of `st` writes to: allocated
    /// (zeroed or copied from the parent, flushed, recorded) if it has
    /// none.
    async fn cluster_for_write(
        &self,
        ch: &BdevChannel,
        st: &Arc<BlobState>,
        i: u64,
    ) -> Result<u32, BlobError> {
        let c = st.map.get(i);
        if c != 0 {
            return Ok(c);
        }
        let _l = st.lock.lock().await;
        let c = st.map.get(i);
        if c != 0 {
            return Ok(c);
        }
        if i >= st.num_clusters.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BlobError::invalid(
                format!("blob {:#x} cluster {i}", st.id),
                "past the blob's end (it shrank)",
            ));
        }
        let c = self.state().claim_cluster()?;
        let res = async {
            let upc = self.units_per_cluster();
            let lba = u64::from(c) * upc;
            match st.resolve(i) {
                Src::Dev(src) => self.copy_into(ch, CopySrc::Dev(src), i, c).await?,
                Src::Esnap(d) => self.copy_into(ch, CopySrc::Esnap(&d), i, c).await?,
                Src::Missing(name) => return Err(missing(st.id, i, &name)),
                Src::Zeros => {
                    dev_io(ch, IoType::WriteZeroes, None, lba, upc, st.id).await?;
                }
            }
            dev_io(ch, IoType::Flush, None, 0, self.dev_blocks(), st.id).await?;
            let mut md = st.md().clone();
            if let Some(e) = md.clusters.get_mut(i as usize) {
                *e = c;
            }
            self.persist(st, md, false).await
        }
        .await;
        if let Err(e) = res {
            self.state().release_cluster(c);
            return Err(e);
        }
        st.map.set(i, c);
        Ok(c)
    }

    /// Fills device cluster `dst` from `src` (a device cluster or an
    /// external snapshot's bytes for blob cluster `i`), 128 KiB at a time.
    async fn copy_into(
        &self,
        ch: &BdevChannel,
        src: CopySrc<'_>,
        i: u64,
        dst: u32,
    ) -> Result<(), BlobError> {
        let upc = self.units_per_cluster();
        let unit = u64::from(self.io_unit_size());
        let step = ((128 << 10) / unit).clamp(1, upc);
        let mut at = 0;
        while at < upc {
            let n = step.min(upc - at);
            let buf = ch
                .alloc_buf((n * unit) as usize)
                .map_err(|e| BlobError::io("a copy buffer", e))?;
            let buf = match src {
                CopySrc::Dev(c) => {
                    let lba = u64::from(c) * upc + at;
                    dev_io(ch, IoType::Read, Some(buf), lba, n, 0).await?
                }
                CopySrc::Esnap(d) => {
                    let from = i * u64::from(self.cluster_size()) + at * unit;
                    Some(read_esnap(d, from, (n * unit) as usize, buf).await?)
                }
            };
            let lba = u64::from(dst) * upc + at;
            if let Some(b) = dev_io(ch, IoType::Write, buf, lba, n, 0).await? {
                ch.free_buf(b);
            }
            at += n;
        }
        Ok(())
    }
}

/// Where a cluster copy reads from.
#[derive(Clone, Copy)]
enum CopySrc<'a> {
    Dev(u32),
    Esnap(&'a EsnapDev),
}

impl Blob {
    fn check_range(&self, offset: u64, n: u64) -> Result<(), BlobError> {
        let size = self.num_io_units();
        if n == 0 || offset.checked_add(n).is_none_or(|e| e > size) {
            return Err(BlobError::invalid(
                "I/O range",
                format!("{n} units at {offset}: the blob has {size}"),
            ));
        }
        Ok(())
    }

    fn pieces(&self, offset: u64, n: u64) -> impl Iterator<Item = (u64, u64, u64)> + use<> {
        // (blob cluster, unit within it, units)
        let upc = self.store.units_per_cluster();
        let end = offset + n;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let c = at / upc;
            let within = at % upc;
            let k = (upc - within).min(end - at);
            at += k;
            Some((c, within, k))
        })
    }

    /// Reads `n` I/O units at unit `offset` into `buf` (at least that
    /// long).
    ///
    /// # Errors
    /// A range past the blob, a buffer too short; device errors.
    pub async fn read(
        &self,
        ch: &BlobChannel,
        offset: u64,
        n: u64,
        buf: DmaBuf,
    ) -> Result<DmaBuf, BlobError> {
        self.data(ch, IoType::Read, offset, n, buf).await
    }

    /// Writes `n` I/O units from `buf` at unit `offset`.
    ///
    /// # Errors
    /// [`BlobError::ReadOnly`]; a bad range; [`BlobError::NoSpace`] when a
    /// thin blob's new cluster cannot be had; device errors.
    pub async fn write(
        &self,
        ch: &BlobChannel,
        offset: u64,
        n: u64,
        buf: DmaBuf,
    ) -> Result<DmaBuf, BlobError> {
        if self.is_read_only() {
            return Err(BlobError::ReadOnly(self.id()));
        }
        self.data(ch, IoType::Write, offset, n, buf).await
    }

    async fn data(
        &self,
        ch: &BdevChannel,
        ty: IoType,
        offset: u64,
        n: u64,
        mut buf: DmaBuf,
    ) -> Result<DmaBuf, BlobError> {
        let unit = u64::from(self.store.io_unit_size());
        if (buf.len() as u64) < n.saturating_mul(unit) {
            return Err(BlobError::invalid(
                "I/O buffer",
                format!("{} bytes for {n} units of {unit}", buf.len()),
            ));
        }
        self.check_range(offset, n)?;
        let _in = self.st.gate.enter().await;
        let upc = self.store.units_per_cluster();
        if offset % upc + n <= upc {
            // One cluster: the caller's buffer, no allocation.
            return self.piece(ch, ty, offset / upc, offset % upc, n, buf).await;
        }
        let mut done = 0usize;
        for (c, within, k) in self.pieces(offset, n) {
            let len = (k * unit) as usize;
            let mut part = ch
                .alloc_buf(len)
                .map_err(|e| BlobError::io("a piece buffer", e))?;
            if ty == IoType::Write {
                let mut tmp = vec![0u8; len];
                buf.read_at(done, &mut tmp);
                part.write_at(0, &tmp);
            }
            let part = self.piece(ch, ty, c, within, k, part).await?;
            if ty == IoType::Read {
                let mut tmp = vec![0u8; len];
                part.read_at(0, &mut tmp);
                buf.write_at(done, &tmp);
            }
            ch.free_buf(part);
            done += len;
        }
        Ok(buf)
    }

    async fn piece(
        &self,
        ch: &BdevChannel,
        ty: IoType,
        c: u64,
        within: u64,
        k: u64,
        mut buf: DmaBuf,
    ) -> Result<DmaBuf, BlobError> {
        let upc = self.store.units_per_cluster();
        let unit = u64::from(self.store.io_unit_size());
        let dev = match ty {
            IoType::Write => self.store.cluster_for_write(ch, &self.st, c).await?,
            _ => match self.st.resolve(c) {
                Src::Dev(d) => d,
                Src::Zeros => {
                    buf.fill(0);
                    return Ok(buf);
                }
                Src::Esnap(d) => {
                    let from = c * u64::from(self.store.cluster_size()) + within * unit;
                    return read_esnap(&d, from, (k * unit) as usize, buf).await;
                }
                Src::Missing(name) => return Err(missing(self.id(), c, &name)),
            },
        };
        let lba = u64::from(dev) * upc + within;
        let id = self.id();
        dev_io(ch, ty, Some(buf), lba, k, id)
            .await?
            .ok_or_else(|| BlobError::io(format!("blob {id:#x}"), "the buffer did not come back"))
    }

    /// Zeroes `n` units at `offset` (reads give zeros afterwards).
    ///
    /// # Errors
    /// As [`Blob::write`].
    pub async fn write_zeroes(
        &self,
        ch: &BlobChannel,
        offset: u64,
        n: u64,
    ) -> Result<(), BlobError> {
        self.zero(ch, offset, n).await
    }

    /// Unmaps `n` units at `offset`: they read zeros afterwards (the
    /// clusters stay allocated).
    ///
    /// # Errors
    /// As [`Blob::write`].
    pub async fn unmap(&self, ch: &BlobChannel, offset: u64, n: u64) -> Result<(), BlobError> {
        self.zero(ch, offset, n).await
    }

    pub(crate) async fn zero(
        &self,
        ch: &BdevChannel,
        offset: u64,
        n: u64,
    ) -> Result<(), BlobError> {
        if self.is_read_only() {
            return Err(BlobError::ReadOnly(self.id()));
        }
        self.check_range(offset, n)?;
        let _in = self.st.gate.enter().await;
        let upc = self.store.units_per_cluster();
        for (c, within, k) in self.pieces(offset, n) {
            let dev = match self.st.map.get(c) {
                0 if matches!(self.st.resolve(c), Src::Zeros) => continue,
                0 => self.store.cluster_for_write(ch, &self.st, c).await?,
                d => d,
            };
            dev_io(
                ch,
                IoType::WriteZeroes,
                None,
                u64::from(dev) * upc + within,
                k,
                self.id(),
            )
            .await?;
        }
        Ok(())
    }

    /// Makes every write acknowledged before it durable (see the module).
    ///
    /// # Errors
    /// Device errors.
    pub async fn flush(&self, ch: &BlobChannel) -> Result<(), BlobError> {
        let _in = self.st.gate.enter().await;
        dev_io(
            ch,
            IoType::Flush,
            None,
            0,
            self.store.dev_blocks(),
            self.id(),
        )
        .await?;
        Ok(())
    }

    /// The first unit at or after `offset` in a cluster the blob has (its
    /// own, as SPDK); the blob's size when none.
    pub fn seek_data(&self, offset: u64) -> u64 {
        self.seek(offset, true)
    }

    /// The first unit at or after `offset` in a cluster the blob does not
    /// have; the blob's size when none.
    pub fn seek_hole(&self, offset: u64) -> u64 {
        self.seek(offset, false)
    }

    fn seek(&self, offset: u64, data: bool) -> u64 {
        let upc = self.store.units_per_cluster();
        let size = self.num_io_units();
        let mut c = offset / upc;
        while c * upc < size {
            if self.is_allocated(c) == data {
                return (c * upc).max(offset);
            }
            c += 1;
        }
        size
    }
}
