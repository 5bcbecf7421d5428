//! Examine: what a new bdev means to the RAIDs. A member a configuring
//! RAID names (created before it existed) joins it; otherwise its block 0
//! is read, and a RAID superblock makes it a member of the RAID it names:
//! the RAID is made from the superblock if it is not known yet, members
//! join in any order, the newest superblock (highest sequence number)
//! decides who belongs, and the RAID comes online once every member it
//! expects is there. A member that was out while its raid1 moved on comes
//! back as a rebuild's target. Counted by `bdev_wait_for_examine`.

use std::sync::Arc;

use crate::BdevEvent;

use super::superblock::{Level, MemberState, RaidState, Superblock};
use super::volume::{self, Raid, Slot};
use super::{parse_uuid, raids, sb_io};

fn nop(_: &str, _: BdevEvent) {}

/// Examines bdev `name`.
pub(crate) async fn examine(name: String) {
    if let Some((r, slot)) = named_slot(&name) {
        let _op = r.op.lock().await;
        let still_free = !r.ctl().gone
            && r.ctl()
                .slots
                .get(slot)
                .is_some_and(|s| !s.configured() && s.name.as_deref() == Some(name.as_str()));
        if !still_free {
            return;
        }
        if let Err(e) = volume::attach_new(&r, slot, &name).await {
            log::error!("raid {}: member {name} refused: {e}", r.name);
            return;
        }
        volume::configure_if_ready(&r).await;
        return;
    }
    let Some(b) = crate::get(&name) else {
        return;
    };
    if b.claimed_by().is_some() {
        return;
    }
    let sb = {
        let Ok(desc) = crate::open(&name, false, nop) else {
            return;
        };
        let Ok(ch) = desc.get_io_channel() else {
            return;
        };
        sb_io::load(&ch).await
    };
    match sb {
        Ok(Some(sb)) => assemble(&name, sb).await,
        Ok(None) => {}
        Err(e) => log::warn!("raid: examining {name}: {e}"),
    }
}

/// A configuring RAID with a free slot named `name`.
fn named_slot(name: &str) -> Option<(Arc<Raid>, usize)> {
    raids().iter().find_map(|r| {
        let c = r.ctl();
        if c.state != RaidState::Configuring {
            return None;
        }
        c.slots
            .iter()
            .position(|s| !s.configured() && s.name.as_deref() == Some(name))
            .map(|i| (r.clone(), i))
    })
}

/// Makes a configuring RAID from a superblock.
fn from_superblock(sb: &Superblock) -> Arc<Raid> {
    let n = usize::from(sb.num_base_bdevs);
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
    for m in &sb.members {
        let Some(s) = slots.get_mut(usize::from(m.slot)) else {
            continue;
        };
        if m.state == MemberState::Configured {
            s.uuid = Some(m.uuid);
        }
        s.data_offset = m.data_offset;
        s.data_size = m.data_size;
        s.operational = m.state == MemberState::Configured;
        s.failed = m.state == MemberState::Failed;
    }
    let strip_kb = (u64::from(sb.strip_size) * u64::from(sb.block_size) / 1024) as u32;
    let r = Raid::new(&sb.name, sb.uuid, sb.level, strip_kb, true, slots);
    {
        let mut c = r.ctl();
        c.block_size = sb.block_size;
        c.sb = Some(sb.clone());
    }
    r
}

/// Puts the member `name` (whose superblock is `sb`) into its RAID.
async fn assemble(name: &str, sb: Superblock) {
    let Some(b) = crate::get(name) else {
        return;
    };
    let Some(uuid) = parse_uuid(b.uuid()) else {
        return;
    };
    let Some(entry) = sb.member(&uuid).cloned() else {
        log::warn!(
            "raid: {name} holds the superblock of RAID {} but is not in its member table",
            sb.name
        );
        return;
    };
    let n = usize::from(sb.num_base_bdevs);
    if n > crate::MAX_FAN_OUT
        || n < volume::min_members(sb.level)
        || entry.slot >= sb.num_base_bdevs
    {
        log::warn!(
            "raid: {name}'s superblock of RAID {} has {n} members (slot {}): not assembled here \
             ({} to {} members)",
            sb.name,
            entry.slot,
            volume::min_members(sb.level),
            crate::MAX_FAN_OUT
        );
        return;
    }
    if sb.level == Level::Raid5f {
        log::warn!(
            "raid: {name} is a member of raid5f RAID {}: not supported yet",
            sb.name
        );
        return;
    }
    if sb.block_size != b.block_size() {
        log::warn!(
            "raid: {name} has {}-byte blocks, its superblock says {}",
            b.block_size(),
            sb.block_size
        );
        return;
    }
    // The RAID: known by its UUID, or made from this superblock (looked
    // up and added under one hold of the list: two cores examining two
    // members make one RAID).
    let r = {
        let mut all = raids();
        match all.iter().find(|r| r.uuid == sb.uuid).cloned() {
            Some(r) => r,
            None => {
                if all.iter().any(|r| r.name == sb.name) || crate::get(&sb.name).is_some() {
                    log::error!(
                        "raid: {name}'s superblock names RAID {} ({}), but that name is taken",
                        sb.name,
                        sb.uuid_string()
                    );
                    return;
                }
                let r = from_superblock(&sb);
                all.push(r.clone());
                log::info!(
                    "raid {}: found on {name} (superblock sequence {})",
                    sb.name,
                    sb.seq_number
                );
                r
            }
        }
    };
    let _op = r.op.lock().await;
    if r.ctl().gone {
        return;
    }
    let (state, have_seq) = {
        let c = r.ctl();
        (c.state, c.sb.as_ref().map_or(0, |s| s.seq_number))
    };
    if sb.seq_number > have_seq {
        if state != RaidState::Configuring {
            log::warn!(
                "raid {}: {name} has a newer superblock ({} > {have_seq}) but the RAID is {}: not added",
                r.name,
                sb.seq_number,
                state.name()
            );
            return;
        }
        // The newer superblock decides: slots as it says; members it no
        // longer counts leave.
        adopt(&r, &sb);
    }
    let (slot, counted) = {
        let c = r.ctl();
        let cur = c.sb.as_ref();
        let in_cur = cur.and_then(|s| s.member(&uuid)).cloned();
        match in_cur {
            Some(m) => (usize::from(m.slot), m.state == MemberState::Configured),
            None => (usize::from(entry.slot), false),
        }
    };
    if counted {
        let area = {
            let c = r.ctl();
            c.slots
                .get(slot)
                .filter(|s| !s.configured())
                .map(|s| (s.data_offset, s.data_size))
        };
        let Some((offset, size)) = area else {
            return;
        };
        // The data area the superblock gives must lie past the superblock
        // and inside the member.
        let sb_blocks = (sb.len() as u64).div_ceil(u64::from(b.block_size()));
        if offset < sb_blocks
            || offset
                .checked_add(size)
                .is_none_or(|end| end > b.num_blocks())
        {
            log::error!(
                "raid {}: {name}'s data area in the superblock ({size} blocks at {offset}) does \
                 not fit its {} blocks past the superblock: not added",
                r.name,
                b.num_blocks()
            );
            return;
        }
        match volume::open_member(&r, name).await {
            Ok((desc, _)) => {
                let mut c = r.ctl();
                let s = &mut c.slots[slot];
                s.name = Some(name.to_owned());
                s.uuid = Some(uuid);
                s.desc = Some(desc);
                s.operational = true;
            }
            Err(e) => {
                log::error!("raid {}: member {name} refused: {e}", r.name);
                return;
            }
        }
        volume::configure_if_ready(&r).await;
        return;
    }
    // Out of the RAID while it moved on: a raid1 that serves takes it back
    // as a rebuild's target.
    let rebuildable = {
        let c = r.ctl();
        c.state == RaidState::Online
            && r.level == Level::Raid1
            && c.process.is_none()
            && c.slots.get(slot).is_some_and(|s| !s.configured())
    };
    if !rebuildable {
        log::warn!(
            "raid {}: {name} was taken out of it (superblock sequence {} < {have_seq}): not added",
            r.name,
            sb.seq_number
        );
        return;
    }
    match volume::open_member(&r, name).await {
        Ok((desc, _)) => {
            log::info!("raid {}: {name} is back: rebuilding it", r.name);
            if let Err(e) = volume::rebuild_onto(&r, slot, desc).await {
                log::error!("raid {}: rebuilding {name}: {e}", r.name);
            }
        }
        Err(e) => log::error!("raid {}: member {name} refused: {e}", r.name),
    }
}

/// A configuring RAID takes a newer superblock's view: slot UUIDs, data
/// areas and who is expected; members it no longer counts are let go.
fn adopt(r: &Raid, sb: &Superblock) {
    let mut c = r.ctl();
    let n = usize::from(sb.num_base_bdevs);
    while c.slots.len() < n {
        c.slots.push(Slot::default());
    }
    for (i, s) in c.slots.iter_mut().enumerate() {
        let m = sb.members.iter().find(|m| usize::from(m.slot) == i);
        let keep = m.is_some_and(|m| m.state == MemberState::Configured && Some(m.uuid) == s.uuid);
        if s.configured() && !keep {
            s.desc = None;
            s.name = None;
        }
        if let Some(m) = m {
            s.uuid = (m.state == MemberState::Configured).then_some(m.uuid);
            s.data_offset = m.data_offset;
            s.data_size = m.data_size;
            s.operational = m.state == MemberState::Configured;
            s.failed = m.state == MemberState::Failed;
        } else {
            s.operational = false;
        }
    }
    c.block_size = sb.block_size;
    c.sb = Some(sb.clone());
}
