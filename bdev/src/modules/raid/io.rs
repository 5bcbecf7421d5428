//! The RAID bdev's I/O path: its geometry (fixed while online), each
//! core's channel (its own channel to every member, updated by the control
//! path through `for_each_channel`), and the dispatch by level. raid0 and
//! concat set the strip as the bdev's optimal I/O boundary, so the layer
//! hands them reads, writes, unmaps and write-zeroes within one strip:
//! one member each, remapped; FLUSH and RESET go to every member at once
//! (fan-out). raid1 is in [`super::raid1`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

use crate::{BdevChannel, Child, ChildData, FanChild, FanData, IoHandle, IoStatus, IoType};

use super::error::RaidError;
use super::superblock::Level;
use super::volume::{Ctl, Raid, member_channels, members_support};
use super::{concat, raid0, raid1};

/// What the I/O path needs to place a block: fixed while the bdev is
/// registered (a resize changes only the sizes, which the I/O path of the
/// levels that resize does not read).
#[derive(Clone)]
pub(crate) struct Geometry {
    pub level: Level,
    /// log2 of the strip in blocks (raid0, concat).
    pub shift: Option<u32>,
    /// Member slots.
    pub n: usize,
    /// Blocks of RAID data on each member (raid0, raid1: all the same).
    pub member_blocks: u64,
    /// concat: each member's data blocks, in slot order.
    pub sizes: Vec<u64>,
    /// The RAID's size in blocks.
    pub num_blocks: u64,
    /// The I/O types every member supports (bit per `IoType as u32`).
    supported: u64,
}

fn bit(ty: IoType) -> u64 {
    1u64 << (ty as u32)
}

impl Geometry {
    /// Works out the sizes from the attached members (SPDK's rules): raid0
    /// every member's data area cut to the smallest, in whole strips;
    /// concat each member's in whole strips, one after another; raid1 the
    /// smallest. Each slot's `data_size` is set to what it holds.
    pub fn compute(raid: &Raid, c: &mut Ctl) -> Result<Geometry, RaidError> {
        let bs = c.block_size.max(1);
        let n = c.slots.len();
        let shift = match raid.level {
            Level::Raid1 => None,
            _ => {
                let strip = u64::from(raid.strip_size_kb) * 1024 / u64::from(bs);
                if strip == 0 {
                    return Err(RaidError::Invalid(format!(
                        "strip size {} KiB is smaller than the {bs}-byte block",
                        raid.strip_size_kb
                    )));
                }
                if !strip.is_power_of_two() {
                    return Err(RaidError::Invalid(format!(
                        "strip size {} KiB is not a power-of-two number of {bs}-byte blocks",
                        raid.strip_size_kb
                    )));
                }
                Some(strip.trailing_zeros())
            }
        };
        let present: Vec<usize> = (0..n).filter(|&i| c.slots[i].configured()).collect();
        let min = present
            .iter()
            .map(|&i| c.slots[i].data_size)
            .min()
            .unwrap_or(0);
        let (member_blocks, sizes, num_blocks) = match raid.level {
            Level::Raid0 => {
                let s = shift.unwrap_or(0);
                let m = (min >> s) << s;
                (m, Vec::new(), m * n as u64)
            }
            Level::Concat => {
                let s = shift.unwrap_or(0);
                let sizes: Vec<u64> = c
                    .slots
                    .iter()
                    .map(|x| concat::member_size(x.data_size, s))
                    .collect();
                let total = sizes.iter().sum();
                (0, sizes, total)
            }
            Level::Raid1 => (min, Vec::new(), min),
            Level::Raid5f => {
                return Err(RaidError::Invalid("raid5f is not supported yet".to_owned()));
            }
        };
        if num_blocks == 0 {
            return Err(RaidError::Invalid(format!(
                "RAID {}: its members leave no whole strip of data",
                raid.name
            )));
        }
        // A superblock RAID assembled from its members keeps the size its
        // superblock records.
        if let Some(sb) = &c.sb
            && sb.raid_size != num_blocks
        {
            return Err(RaidError::Invalid(format!(
                "RAID {}: its superblock says {} blocks, its members give {num_blocks}",
                raid.name, sb.raid_size
            )));
        }
        for (i, s) in c.slots.iter_mut().enumerate() {
            if !s.configured() {
                continue;
            }
            s.data_size = match raid.level {
                Level::Concat => sizes[i],
                _ => member_blocks,
            };
        }
        let mut supported = bit(IoType::Read) | bit(IoType::Write);
        for ty in [
            IoType::Flush,
            IoType::Unmap,
            IoType::Reset,
            IoType::WriteZeroes,
        ] {
            if members_support(c, ty) {
                supported |= bit(ty);
            }
        }
        Ok(Geometry {
            level: raid.level,
            shift,
            n,
            member_blocks,
            sizes,
            num_blocks,
            supported,
        })
    }

    /// The strip in blocks (raid0, concat).
    pub fn strip_blocks(&self) -> u64 {
        self.shift.map_or(0, |s| 1u64 << s)
    }

    /// Where RAID block `block` lives: (slot, block in its data area).
    pub fn map(&self, block: u64) -> Option<(usize, u64)> {
        match self.level {
            Level::Raid0 => Some(raid0::map_block(block, self.shift?, self.n as u64)),
            Level::Concat => concat::map_block(block, &self.sizes),
            _ => None,
        }
    }

    /// `offset..offset + num` as one range per slot.
    pub fn ranges(&self, offset: u64, num: u64, out: &mut [Option<(u64, u64)>]) {
        match self.level {
            Level::Raid0 => {
                raid0::member_ranges(offset, num, self.shift.unwrap_or(0), self.n as u64, out)
            }
            Level::Concat => concat::member_ranges(offset, num, &self.sizes, out),
            _ => {
                for o in out.iter_mut().take(self.n) {
                    *o = Some((offset, num));
                }
            }
        }
    }
}

/// A core's channel to one member.
pub(crate) struct SlotChannel {
    pub ch: BdevChannel,
    /// Where the RAID's data starts on the member.
    pub offset: u64,
    /// Reads may go to it (false for a rebuild's target).
    pub readable: bool,
}

/// A core's channel of the RAID bdev.
pub(crate) struct RaidChannel {
    pub raid: Arc<Raid>,
    pub slots: RefCell<Vec<Option<SlotChannel>>>,
    /// raid1: reads in flight per slot (reads go to the least busy); one
    /// per possible member.
    pub outstanding: [Cell<u32>; crate::MAX_FAN_OUT],
}

impl RaidChannel {
    /// Replaces slot `slot`'s member channel, or adds the slot after the
    /// last (a raid1 grown) (control path).
    pub fn set_slot(&self, slot: usize, ch: Option<SlotChannel>) {
        let mut slots = self.slots.borrow_mut();
        if slot == slots.len() {
            slots.push(ch);
        } else if let Some(s) = slots.get_mut(slot) {
            *s = ch;
        }
    }

    /// Makes slot `slot` readable (a rebuild done).
    pub fn set_readable(&self, slot: usize) {
        if let Some(Some(s)) = self.slots.borrow_mut().get_mut(slot) {
            s.readable = true;
        }
    }
}

/// The RAID bdev's function table.
pub(crate) struct RaidBdev {
    pub raid: Arc<Raid>,
    pub geometry: Arc<Geometry>,
}

impl crate::BdevOps for RaidBdev {
    type Channel = Rc<RaidChannel>;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<Rc<RaidChannel>, String> {
        let slots = member_channels(&self.raid.ctl())?;
        Ok(Rc::new(RaidChannel {
            raid: self.raid.clone(),
            outstanding: std::array::from_fn(|_| Cell::new(0)),
            slots: RefCell::new(slots),
        }))
    }

    fn submit(&self, ch: &Rc<RaidChannel>, io: IoHandle) {
        match self.geometry.level {
            Level::Raid1 => raid1::submit(ch, io),
            _ => submit_striped(&self.geometry, ch, io),
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        self.geometry.supported & bit(ty) != 0
    }

    fn dump_info_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("uuid".into(), Value::String(self.raid.uuid_string()));
        m.extend(self.raid.info_json());
        serde_json::json!({ "raid": m })
    }

    fn write_config_json(&self) -> Option<Value> {
        self.raid.config_json()
    }

    fn destruct_async(&self) -> Option<crate::ModuleTask> {
        // Unregistered by someone else (the layer's fini, a user of
        // `unregister`): the RAID goes with it, its members released.
        let raid = self.raid.clone();
        if raid.ctl().unregistering {
            return None;
        }
        Some(Box::new(move || {
            Box::pin(async move {
                {
                    let mut c = raid.ctl();
                    c.bdev = None;
                    if let Some(p) = &mut c.process {
                        p.cancel = true;
                    }
                }
                super::rebuild::wait_stopped(&raid).await;
                super::volume::free_raid(&raid);
            })
        }))
    }
}

/// raid0 and concat: a data I/O (within one strip) to its member; FLUSH
/// and RESET to every member.
fn submit_striped(g: &Geometry, ch: &RaidChannel, io: IoHandle) {
    let ty = io.io().io_type();
    match ty {
        IoType::Flush | IoType::Reset => {
            let mut ranges = [None; crate::MAX_FAN_OUT];
            let n = g.n.min(crate::MAX_FAN_OUT);
            if ty == IoType::Flush {
                g.ranges(
                    io.io().offset_blocks(),
                    io.io().num_blocks(),
                    &mut ranges[..n],
                );
            } else {
                ranges[..n].fill(Some((0, 0)));
            }
            let slots = ch.slots.borrow();
            if slots.iter().take(n).any(Option::is_none) {
                drop(slots);
                io.complete(IoStatus::Failed);
                return;
            }
            let kids = slots.iter().zip(ranges.iter()).filter_map(|(s, r)| {
                let s = s.as_ref()?;
                let (off, num) = (*r)?;
                Some((
                    &s.ch,
                    FanChild {
                        ty,
                        offset_blocks: if ty == IoType::Reset {
                            0
                        } else {
                            s.offset + off
                        },
                        num_blocks: num,
                        fua: false,
                        data: FanData::None,
                    },
                ))
            });
            if let Err(r) = io.fan_out(kids, |parent, res| parent.complete(res.all())) {
                r.fail_parent();
            }
        }
        _ => {
            let p = io.io();
            let Some((slot, at)) = g.map(p.offset_blocks()) else {
                io.complete(IoStatus::Failed);
                return;
            };
            let slots = ch.slots.borrow();
            let Some(Some(s)) = slots.get(slot) else {
                drop(slots);
                io.complete(IoStatus::Failed);
                return;
            };
            let child = Child {
                ty,
                offset_blocks: s.offset + at,
                num_blocks: p.num_blocks(),
                fua: p.fua(),
                src_offset_blocks: 0,
                data: if ty.has_data() {
                    ChildData::Parent
                } else {
                    ChildData::None
                },
            };
            if let Err(r) = io.submit_child(&s.ch, child, crate::complete_parent) {
                r.fail_parent();
            }
        }
    }
}
