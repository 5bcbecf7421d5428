//! Rebuilding a raid1 member: the RAID's blocks copied onto it window by
//! window (`process_window_size_kb`), each window quiesced on the RAID
//! bdev while it is copied (new I/O to it waits, I/O in flight to it
//! drains), so a write can never race the copy; I/O elsewhere keeps
//! flowing, and writes already reach the target everywhere (it is in every
//! core's write fan-out from the start), so what is copied stays right.
//! Reads go to the target only once every block is copied. Progress shows
//! in `bdev_raid_get_bdevs`; `process_max_bandwidth_mb_sec` paces it.

use std::sync::Arc;
use std::time::Duration;

use crate::{BdevChannel, IoStatus, IoType};

use super::io::RaidChannel;
use super::superblock::RaidState;
use super::volume::{Raid, member_failed, write_superblock};
use super::{MODULE, options};

/// Starts rebuilding slot `target` (its `Process` is set) on this core.
pub(crate) fn start(raid: Arc<Raid>, target: usize) {
    super::spawn(async move {
        run(raid, target).await;
    });
}

/// Waits until no rebuild touches the RAID's I/O any more (one cancelled
/// stops at its window's end). Not under the op lock: windows take it.
pub(crate) async fn wait_stopped(raid: &Raid) {
    while raid.ctl().process.as_ref().is_some_and(|p| p.running) {
        reactor::sleep(Duration::from_micros(500)).await;
    }
}

/// This core's channels to the target and to a source (a readable member
/// other than the target, after those in `skip`).
fn channels(
    raid: &Raid,
    target: usize,
    skip: u64,
) -> Option<(BdevChannel, u64, BdevChannel, u64, usize)> {
    let c = raid.ctl();
    let t = &c.slots[target];
    let tch = t.desc.as_ref()?.get_io_channel().ok()?;
    let (src, s) =
        c.slots.iter().enumerate().find(|(i, s)| {
            *i != target && s.configured() && !s.rebuilding && skip & (1 << i) == 0
        })?;
    let sch = s.desc.as_ref()?.get_io_channel().ok()?;
    Some((tch, t.data_offset, sch, s.data_offset, src))
}

enum Copy {
    Done,
    SourceFailed,
    TargetFailed,
    NoSource,
}

async fn copy_window(raid: &Raid, target: usize, off: u64, n: u64) -> Copy {
    let mut skip = 0u64;
    loop {
        let Some((tch, toff, sch, soff, src)) = channels(raid, target, skip) else {
            return if skip == 0 {
                Copy::NoSource
            } else {
                Copy::SourceFailed
            };
        };
        let len = (n * u64::from(sch.block_size())) as usize;
        let Ok(buf) = sch.alloc_buf(len) else {
            return Copy::NoSource;
        };
        match sch.io(IoType::Read, Some(buf), soff + off, n, false).await {
            Ok((IoStatus::Success, Some(buf))) => {
                let r = tch.io(IoType::Write, Some(buf), toff + off, n, false).await;
                return match r {
                    Ok((IoStatus::Success, b)) => {
                        if let Some(b) = b {
                            tch.free_buf(b);
                        }
                        Copy::Done
                    }
                    Ok((_, b)) => {
                        if let Some(b) = b {
                            tch.free_buf(b);
                        }
                        Copy::TargetFailed
                    }
                    Err(_) => Copy::TargetFailed,
                };
            }
            Ok((_, b)) => {
                if let Some(b) = b {
                    sch.free_buf(b);
                }
                skip |= 1 << src;
            }
            Err(_) => skip |= 1 << src,
        }
    }
}

async fn run(raid: Arc<Raid>, target: usize) {
    let (window_kb, max_mbps) = {
        let o = options();
        (o.process_window_size_kb, o.process_max_bandwidth_mb_sec)
    };
    let Some(bdev) = raid.ctl().bdev.clone() else {
        stopped(&raid);
        return;
    };
    let bs = u64::from(bdev.block_size());
    let window = (u64::from(window_kb) * 1024 / bs).max(1);
    let size = bdev.num_blocks();
    let started = reactor::now();
    log::info!(
        "raid {}: rebuilding slot {target}, {size} blocks in windows of {window}",
        raid.name
    );
    // How it ended: copied every block, cancelled (the target left, the
    // RAID went), or failed (the target is then taken out, as SPDK does).
    let mut completed = false;
    let mut failed = false;
    loop {
        // Each window under the op lock: no member's removal, growth or
        // the RAID's delete runs while a window is quiesced and copied.
        let op = raid.op.lock().await;
        let off = {
            let c = raid.ctl();
            match &c.process {
                Some(p) if !p.cancel && !c.gone && c.bdev.is_some() => p.offset,
                _ => break,
            }
        };
        if off >= size {
            completed = true;
            drop(op);
            break;
        }
        let n = window.min(size - off);
        // (Nothing else quiesces the RAID meanwhile: every other
        // operation that does holds the op lock.)
        if let Err(e) = bdev.quiesce_range(MODULE, off, n).await {
            log::warn!("raid {}: rebuild stopped: quiesce: {e}", raid.name);
            failed = true;
            break;
        }
        let r = copy_window(&raid, target, off, n).await;
        if let Err(e) = bdev.unquiesce_range(MODULE, off, n).await {
            log::warn!("raid {}: rebuild: unquiesce: {e}", raid.name);
        }
        match r {
            Copy::Done => {}
            Copy::TargetFailed => {
                log::warn!("raid {}: rebuild: writing the target failed", raid.name);
                failed = true;
                break;
            }
            Copy::SourceFailed | Copy::NoSource => {
                log::warn!(
                    "raid {}: rebuild stopped: no member could be read at block {off}",
                    raid.name
                );
                failed = true;
                break;
            }
        }
        if let Some(p) = &mut raid.ctl().process {
            p.offset = off + n;
        }
        drop(op);
        if max_mbps > 0 {
            // Paced: this window's bytes at the set rate.
            let us = n * bs / u64::from(max_mbps);
            reactor::sleep(Duration::from_micros(us)).await;
        }
    }
    stopped(&raid);
    if !completed {
        raid.ctl().process = None;
        if failed {
            member_failed(&raid, target);
        }
        return;
    }
    let _op = raid.op.lock().await;
    let ok = {
        let c = raid.ctl();
        !c.gone && c.slots[target].rebuilding && c.slots[target].configured()
    };
    if !ok {
        raid.ctl().process = None;
        return;
    }
    // In sync: channels made from now on read from it, then every
    // existing one is told.
    {
        let mut c = raid.ctl();
        c.slots[target].rebuilding = false;
        c.process = None;
    }
    let r = bdev
        .for_each_channel::<std::rc::Rc<RaidChannel>>(move |_, ch| {
            if let Some(ch) = ch {
                ch.set_readable(target);
            }
        })
        .await;
    if let Err(e) = r {
        log::warn!("raid {}: rebuild end: {e}", raid.name);
    }
    if raid.superblock
        && let Err(e) = write_superblock(&raid, RaidState::Online, size).await
    {
        log::warn!("raid {}: superblock after rebuild: {e}", raid.name);
    }
    log::info!(
        "raid {}: rebuild of slot {target} done in {:?}",
        raid.name,
        reactor::now().saturating_sub(started)
    );
}

/// The rebuild touches no I/O any more.
fn stopped(raid: &Raid) {
    if let Some(p) = &mut raid.ctl().process {
        p.running = false;
    }
}
