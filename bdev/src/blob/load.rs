//! Reading a store's metadata from a bdev (the first half of SPDK's
//! `spdk_bs_load`): the super block from page 0, the metadata region, and
//! then either the masks and the blobs they name (a clean store) or every
//! metadata page scanned and the masks rebuilt (a dirty one: SPDK's
//! replay); SPDK's invariants checked on the result. Read-only: nothing is
//! written (marking the store dirty while open, writing the rebuilt masks
//! are the store's, not built yet).
//!
//! The metadata region is read whole into memory (`md.len` pages of
//! 4 KiB: SPDK's default reserves one page per cluster, so 4 MiB per GiB
//! of store with 1 MiB clusters).

use dma::DmaBuf;

use super::mask::{Mask, MaskType};
use super::metadata::Metadata;
use super::super_block::{Region, SuperBlock};
use super::{FormatError, PAGE_SIZE};
use crate::{BdevChannel, BdevError, Desc, IoStatus, IoType};

/// Why a store did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Reading the device failed.
    #[error("reading {what} from the device: {why}")]
    Io {
        /// What was being read.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// The device is not what the super block describes.
    #[error("{0}")]
    Device(String),
    /// The bytes are not SPDK's format.
    #[error("{0}")]
    Format(#[from] FormatError),
}

/// A store's metadata as loaded.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The super block.
    pub sb: SuperBlock,
    /// Every blob.
    pub metadata: Metadata,
    /// The masks: as on disk (clean), or rebuilt (dirty).
    pub used_pages: Vec<bool>,
    /// Used clusters.
    pub used_clusters: Vec<bool>,
    /// Used blob ids.
    pub used_blobids: Vec<bool>,
    /// The store was not unloaded cleanly: found by scanning.
    pub recovered: bool,
    /// Metadata pages that did not parse during a scan (torn or never
    /// written; unused either way).
    pub unreadable_pages: u32,
    /// What SPDK's invariants found wrong (empty: consistent).
    pub problems: Vec<String>,
}

async fn read_pages(ch: &BdevChannel, r: Region, what: &str) -> Result<Vec<u8>, LoadError> {
    let bs = u64::from(ch.block_size());
    let io = |why: String| LoadError::Io {
        what: what.to_owned(),
        why,
    };
    let total = r.len as usize * PAGE_SIZE;
    let mut out = vec![0u8; total];
    const CHUNK: usize = 1 << 20;
    let mut done = 0usize;
    while done < total {
        let n = CHUNK.min(total - done);
        let buf: DmaBuf = ch.alloc_buf(n).map_err(|e| io(e.to_string()))?;
        let lba = (u64::from(r.start) * PAGE_SIZE as u64 + done as u64) / bs;
        let (st, buf) = ch
            .io(IoType::Read, Some(buf), lba, n as u64 / bs, false)
            .await
            .map_err(|e: BdevError| io(e.to_string()))?;
        if let Some(b) = buf {
            b.read_at(0, &mut out[done..done + n]);
            ch.free_buf(b);
        }
        if st != IoStatus::Success {
            return Err(io(format!("{st:?}")));
        }
        done += n;
    }
    Ok(out)
}

/// Loads the metadata of the store on the bdev `desc` opened (read
/// through this core's channel).
///
/// # Errors
/// [`LoadError`]: the device unreadable, smaller than the store or with
/// another block size than the store's I/O unit, or metadata that is not
/// SPDK's format (naming the page and the field).
pub async fn load(desc: &Desc) -> Result<Loaded, LoadError> {
    let ch = desc.get_io_channel().map_err(|e| LoadError::Io {
        what: "the device".into(),
        why: e.to_string(),
    })?;
    load_via(&ch).await
}

/// [`load`] through a channel already had.
///
/// # Errors
/// As [`load`].
pub async fn load_via(ch: &crate::BdevChannel) -> Result<Loaded, LoadError> {
    let bs = ch.block_size();
    if bs as usize > PAGE_SIZE || !PAGE_SIZE.is_multiple_of(bs as usize) {
        return Err(LoadError::Device(format!(
            "{bs}-byte blocks: a blob store needs blocks dividing 4 KiB"
        )));
    }
    let page0 = read_pages(ch, Region { start: 0, len: 1 }, "the super block").await?;
    let sb = SuperBlock::parse(&page0)?;
    if sb.io_unit_size != bs {
        return Err(LoadError::Device(format!(
            "the store's I/O unit is {} bytes, the device's blocks {bs}",
            sb.io_unit_size
        )));
    }
    let dev_bytes = ch.num_blocks() * u64::from(bs);
    if sb.size > dev_bytes {
        return Err(LoadError::Device(format!(
            "the store is {} bytes, the device {dev_bytes}",
            sb.size
        )));
    }
    let md = read_pages(ch, sb.md, "the metadata pages").await?;
    let mut reader = |p: u32| -> Result<Vec<u8>, FormatError> {
        let at = p as usize * PAGE_SIZE;
        md.get(at..at + PAGE_SIZE)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| FormatError::Field {
                what: format!("metadata page {p}"),
                why: format!("past the {} metadata pages", sb.md.len),
            })
    };
    if sb.clean {
        let mut masks = Vec::new();
        for (kind, r, what) in [
            (MaskType::UsedPages, sb.used_page_mask, "the used-page mask"),
            (
                MaskType::UsedClusters,
                sb.used_cluster_mask,
                "the used-cluster mask",
            ),
            (
                MaskType::UsedBlobIds,
                sb.used_blobid_mask,
                "the used-blobid mask",
            ),
        ] {
            let bytes = read_pages(ch, r, what).await?;
            masks.push(Mask::parse(kind, &bytes)?.bits);
        }
        let starts: Vec<u32> = masks[2]
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i as u32)
            .collect();
        let metadata = Metadata::read(&sb, starts, &mut reader)?;
        let problems = metadata.check(&sb, Some([&masks[0], &masks[1], &masks[2]]));
        let used_blobids = masks.pop().unwrap_or_default();
        let used_clusters = masks.pop().unwrap_or_default();
        let used_pages = masks.pop().unwrap_or_default();
        return Ok(Loaded {
            sb,
            metadata,
            used_pages,
            used_clusters,
            used_blobids,
            recovered: false,
            unreadable_pages: 0,
            problems,
        });
    }
    let (metadata, unreadable_pages) = Metadata::scan(&sb, &mut reader)?;
    let problems = metadata.check(&sb, None);
    let (used_pages, used_clusters, used_blobids) = metadata.masks(&sb);
    Ok(Loaded {
        sb,
        metadata,
        used_pages,
        used_clusters,
        used_blobids,
        recovered: true,
        unreadable_pages,
        problems,
    })
}
