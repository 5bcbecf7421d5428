//! The power-cut bdev: a RAM disk that models a device with a volatile
//! write cache, for crash tests. Reads see every write (the cache); a write
//! reaches the durable medium only when a FLUSH completes after it, or at
//! once with FUA. [`cut`] simulates losing power: each write still in the
//! cache is, by a seeded random draw, lost, kept, or torn (some of its
//! atomic units kept, others not: a unit is one block unless the device
//! was created with a larger atomic write unit), then the device refuses
//! every I/O until [`power_on`], when it serves what was durable. The same
//! seed gives the same outcome for the same writes.
//!
//! Counters ([`stats`]) show what reached the device: writes and FLUSHes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::json;

use crate::{Bdev, BdevError, BdevOps, BdevProps, IoHandle, IoStatus, IoType};

#[derive(Default)]
struct State {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Writes in the cache, oldest first: (byte offset, data).
    pending: Vec<(usize, Vec<u8>)>,
    /// Power is off: every I/O fails.
    off: bool,
    /// A cut armed to happen at a later write: (writes to let through
    /// first, seed).
    armed: Option<(u64, u64)>,
    stats: Stats,
}

/// What the device saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes (write, write-zeroes, unmap) completed.
    pub writes: u64,
    /// FLUSHes completed.
    pub flushes: u64,
    /// Writes with FUA.
    pub fua_writes: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// What a power cut did to the writes in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Writes in the cache when power went.
    pub pending: usize,
    /// Of them, lost entirely.
    pub lost: usize,
    /// Kept entirely.
    pub kept: usize,
    /// Torn: some atomic units kept.
    pub torn: usize,
}

struct Shared {
    block_size: u32,
    atomic_unit: usize,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn cut(&mut self, unit: usize, seed: u64) -> CutReport {
        let mut draw = Draw(seed);
        let pending = std::mem::take(&mut self.pending);
        let mut report = CutReport {
            pending: pending.len(),
            ..CutReport::default()
        };
        for (at, data) in pending {
            match draw.next() % 3 {
                0 => report.lost += 1,
                1 => {
                    self.durable[at..at + data.len()].copy_from_slice(&data);
                    report.kept += 1;
                }
                _ => {
                    // Units of the write are kept or lost each on their
                    // own (a unit is cut where the write does not start on
                    // one).
                    let mut i = 0;
                    while i < data.len() {
                        let end = (((at + i) / unit + 1) * unit - at).min(data.len());
                        if draw.next() & 1 == 1 {
                            self.durable[at + i..at + end].copy_from_slice(&data[i..end]);
                        }
                        i = end;
                    }
                    report.torn += 1;
                }
            }
        }
        self.off = true;
        self.armed = None;
        self.stats.cuts += 1;
        report
    }
}

fn devices() -> &'static Mutex<HashMap<String, Arc<Shared>>> {
    static D: OnceLock<Mutex<HashMap<String, Arc<Shared>>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

fn device(name: &str) -> Result<Arc<Shared>, BdevError> {
    devices()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))
}

struct PowerCut {
    name: String,
    shared: Arc<Shared>,
}

impl PowerCut {
    fn run(&self, io: &mut IoHandle) -> IoStatus {
        let bs = self.shared.block_size as usize;
        let r = io.io();
        let off = r.offset_blocks() as usize * bs;
        let len = r.num_blocks() as usize * bs;
        let ty = r.io_type();
        let fua = r.fua();
        let mut s = self.shared.lock();
        if s.off {
            return IoStatus::Failed;
        }
        if off + len > s.current.len() {
            return IoStatus::Failed;
        }
        match ty {
            IoType::Read => {
                io.copy_to_data(0, &s.current[off..off + len]);
                IoStatus::Success
            }
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                if let Some((left, seed)) = s.armed {
                    if left == 0 {
                        s.armed = None;
                        s.cut(self.shared.atomic_unit, seed);
                        return IoStatus::Failed;
                    }
                    s.armed = Some((left - 1, seed));
                }
                let mut data = vec![0u8; len];
                if ty == IoType::Write {
                    io.copy_from_data(0, &mut data);
                }
                s.current[off..off + len].copy_from_slice(&data);
                s.stats.writes += 1;
                if fua {
                    s.stats.fua_writes += 1;
                    s.durable[off..off + len].copy_from_slice(&data);
                } else {
                    s.pending.push((off, data));
                }
                IoStatus::Success
            }
            IoType::Flush => {
                let pending = std::mem::take(&mut s.pending);
                for (at, data) in pending {
                    s.durable[at..at + data.len()].copy_from_slice(&data);
                }
                s.stats.flushes += 1;
                IoStatus::Success
            }
            IoType::Reset => IoStatus::Success,
            _ => IoStatus::NotSupported,
        }
    }
}

impl BdevOps for PowerCut {
    type Channel = ();

    fn create_channel(&self, _core: reactor::CoreId) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, _ch: &(), mut io: IoHandle) {
        let status = self.run(&mut io);
        io.complete(status);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        matches!(
            ty,
            IoType::Read
                | IoType::Write
                | IoType::WriteZeroes
                | IoType::Unmap
                | IoType::Flush
                | IoType::Reset
        )
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "powercut": {
            "name": self.name,
            "atomic_unit": self.shared.atomic_unit,
        } })
    }
}

/// Creates a power-cut bdev of `num_blocks` blocks of `block_size` bytes,
/// zeroed, whose writes tear at `atomic_unit` bytes (a multiple of the
/// block size; `None`: one block).
///
/// # Errors
/// [`BdevError::Invalid`] for a bad geometry; [`BdevError::Exists`] for a
/// taken name.
pub fn create(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    atomic_unit: Option<u32>,
) -> Result<Bdev, BdevError> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{block_size}: a power of two from 512 to 65536"),
        ));
    }
    let unit = atomic_unit.unwrap_or(block_size);
    if unit == 0 || !unit.is_multiple_of(block_size) {
        return Err(BdevError::invalid(
            "atomic_unit",
            format!("{unit}: a multiple of the block size {block_size}"),
        ));
    }
    let bytes = num_blocks
        .checked_mul(u64::from(block_size))
        .and_then(|b| usize::try_from(b).ok())
        .filter(|&b| b > 0 && b <= 1 << 34)
        .ok_or_else(|| BdevError::invalid("num_blocks", format!("{num_blocks}: 1 to 16 GiB")))?;
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let shared = Arc::new(Shared {
        block_size,
        atomic_unit: unit as usize,
        state: Mutex::new(State {
            current: vec![0; bytes],
            durable: vec![0; bytes],
            ..State::default()
        }),
    });
    let props = BdevProps::new(name, "Power-cut disk", block_size, num_blocks);
    let bdev = crate::register(
        "powercut",
        props,
        PowerCut {
            name: name.to_owned(),
            shared: shared.clone(),
        },
    )?;
    devices()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_owned(), shared);
    Ok(bdev)
}

/// A small deterministic generator (SplitMix64) for the cut's draws.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Cuts the power of power-cut bdev `name`: every write not yet flushed is
/// lost, kept or torn as `seed` draws, in the order written; from now on
/// every I/O fails until [`power_on`].
///
/// # Errors
/// [`BdevError::NotFound`] when there is no such device.
pub fn cut(name: &str, seed: u64) -> Result<CutReport, BdevError> {
    let d = device(name)?;
    let unit = d.atomic_unit;
    Ok(d.lock().cut(unit, seed))
}

/// Arms a power cut of power-cut bdev `name` at its write number `after`
/// from now (0: the next write), drawn with `seed` as [`cut`]: that write
/// and everything after it fail until [`power_on`].
///
/// # Errors
/// [`BdevError::NotFound`] when there is no such device.
pub fn arm(name: &str, after: u64, seed: u64) -> Result<(), BdevError> {
    device(name)?.lock().armed = Some((after, seed));
    Ok(())
}

/// Whether power-cut bdev `name` has lost power.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no such device.
pub fn is_off(name: &str) -> Result<bool, BdevError> {
    Ok(device(name)?.lock().off)
}

/// Powers power-cut bdev `name` on again: it serves what was durable.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no such device.
pub fn power_on(name: &str) -> Result<(), BdevError> {
    let d = device(name)?;
    let mut s = d.lock();
    s.current = s.durable.clone();
    s.off = false;
    Ok(())
}

/// What power-cut bdev `name` saw so far.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no such device.
pub fn stats(name: &str) -> Result<Stats, BdevError> {
    Ok(device(name)?.lock().stats)
}

/// Deletes a power-cut bdev.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no power-cut bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "powercut")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await?;
    devices()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    Ok(())
}
