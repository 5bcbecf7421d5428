//! A RAID's control state and the operations on it: create (members
//! attached and checked, the superblock written to every member, the bdev
//! registered, all before it returns), configure when the last member
//! appears, a member's removal or failure (degraded raid1, offline raid0
//! and concat), adding a member (a rebuild onto it), delete. Every
//! operation runs under the RAID's [`OpLock`]; the I/O path reads none of
//! this (each core's channel has its own copy, updated through
//! `for_each_channel`).

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::{Bdev, BdevChannel, BdevEvent, BdevProps, ClaimType, Desc, IoType};

use super::error::RaidError;
use super::io::{Geometry, RaidBdev, RaidChannel, SlotChannel};
use super::superblock::{Level, Member, MemberState, RaidState, Superblock, data_offset_blocks};
use super::{MODULE, parse_uuid, raids, rebuild, sb_io};
use crate::oplock::OpLock;
use crate::registry::format_uuid;

/// One member slot.
#[derive(Default)]
pub(crate) struct Slot {
    /// The member bdev's name (known before it exists, for members named
    /// at create).
    pub name: Option<String>,
    /// The member's UUID (from the bdev, or from the superblock).
    pub uuid: Option<[u8; 16]>,
    /// Open and claimed while the member is part of the RAID.
    pub desc: Option<Desc>,
    /// Where the RAID's data starts on it (blocks).
    pub data_offset: u64,
    /// Blocks of RAID data on it.
    pub data_size: u64,
    /// Expected to be there (counted in `num_base_bdevs_operational`);
    /// false once removed or failed.
    pub operational: bool,
    /// The target of a rebuild in progress (written, not read).
    pub rebuilding: bool,
    /// Taken out for failed I/O (recorded so in the superblock).
    pub failed: bool,
}

impl Slot {
    /// Whether the member is attached (counted in
    /// `num_base_bdevs_discovered`).
    pub fn configured(&self) -> bool {
        self.desc.is_some()
    }
}

/// A rebuild in progress.
pub(crate) struct Process {
    /// The slot rebuilt.
    pub target: usize,
    /// Blocks done.
    pub offset: u64,
    /// Set to stop it.
    pub cancel: bool,
    /// Its task still copies (reads or writes members).
    pub running: bool,
}

/// What changes under the RAID's operations.
pub(crate) struct Ctl {
    pub state: RaidState,
    pub block_size: u32,
    pub slots: Vec<Slot>,
    /// The superblock as last written or read (superblock RAIDs).
    pub sb: Option<Superblock>,
    /// The registered bdev while online.
    pub bdev: Option<Bdev>,
    pub geometry: Option<Arc<Geometry>>,
    pub process: Option<Process>,
    /// Set while this module unregisters the bdev itself (offline, delete):
    /// its destruct then leaves the members alone.
    pub unregistering: bool,
    /// Gone from the registry (deleted or freed).
    pub gone: bool,
}

/// A RAID, online or not.
pub(crate) struct Raid {
    pub name: String,
    pub uuid: [u8; 16],
    pub level: Level,
    pub strip_size_kb: u32,
    pub superblock: bool,
    pub op: OpLock,
    ctl: Mutex<Ctl>,
}

/// The fewest members a level is created with (SPDK's `base_bdevs_min`).
pub(crate) fn min_members(level: Level) -> usize {
    match level {
        Level::Raid1 => 2,
        Level::Raid5f => 3,
        Level::Raid0 | Level::Concat => 1,
    }
}

impl Raid {
    pub fn new(
        name: &str,
        uuid: [u8; 16],
        level: Level,
        strip_size_kb: u32,
        superblock: bool,
        slots: Vec<Slot>,
    ) -> Arc<Raid> {
        Arc::new(Raid {
            name: name.to_owned(),
            uuid,
            level,
            strip_size_kb,
            superblock,
            op: OpLock::default(),
            ctl: Mutex::new(Ctl {
                state: RaidState::Configuring,
                block_size: 0,
                slots,
                sb: None,
                bdev: None,
                geometry: None,
                process: None,
                unregistering: false,
                gone: false,
            }),
        })
    }

    pub fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }

    /// The fewest operational members that keep it serving.
    fn min_operational(&self, n: usize) -> usize {
        match self.level {
            Level::Raid1 => 1,
            Level::Raid5f => n.saturating_sub(1),
            Level::Raid0 | Level::Concat => n,
        }
    }

    /// `bdev_raid_get_bdevs`' fields after name and uuid (also
    /// `driver_specific.raid` with the uuid first).
    pub fn info_json(&self) -> serde_json::Map<String, Value> {
        let c = self.ctl();
        let mut m = serde_json::Map::new();
        m.insert("strip_size_kb".into(), json!(self.strip_size_kb));
        m.insert("state".into(), json!(c.state.name()));
        m.insert("raid_level".into(), json!(self.level.name()));
        m.insert("superblock".into(), json!(self.superblock));
        m.insert("num_base_bdevs".into(), json!(c.slots.len()));
        m.insert(
            "num_base_bdevs_discovered".into(),
            json!(c.slots.iter().filter(|s| s.configured()).count()),
        );
        m.insert(
            "num_base_bdevs_operational".into(),
            json!(c.slots.iter().filter(|s| s.operational).count()),
        );
        if let (Some(p), Some(b)) = (&c.process, &c.bdev) {
            let total = b.num_blocks().max(1);
            m.insert(
                "process".into(),
                json!({
                    "type": "rebuild",
                    "target": c.slots[p.target].name,
                    "progress": {
                        "blocks": p.offset,
                        "percent": (p.offset * 100 / total) as u32,
                    }
                }),
            );
        }
        let list: Vec<Value> = c
            .slots
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "uuid": format_uuid(&s.uuid.unwrap_or_default()),
                    "is_configured": s.configured(),
                    "data_offset": s.data_offset,
                    "data_size": s.data_size,
                })
            })
            .collect();
        m.insert("base_bdevs_list".into(), Value::Array(list));
        m
    }

    /// The `bdev_raid_create` call that re-creates it (`save_config`):
    /// none for superblock RAIDs, which examine assembles (as SPDK).
    pub fn config_json(&self) -> Option<Value> {
        if self.superblock {
            return None;
        }
        let c = self.ctl();
        Some(json!({
            "method": "bdev_raid_create",
            "params": {
                "name": self.name,
                "uuid": self.uuid_string(),
                "strip_size_kb": self.strip_size_kb,
                "raid_level": self.level.name(),
                "base_bdevs": c.slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            }
        }))
    }
}

/// The event callback of a member's descriptor: a removed member leaves
/// the RAID; a grown one is noted (`bdev_raid_grow_base_bdev` uses it).
fn member_event(raid: &str, member: &str, ev: BdevEvent) {
    if let BdevEvent::Resize { .. } = ev {
        let raid = raid.to_owned();
        super::spawn(async move {
            if let Some(r) = super::find(&raid) {
                let _op = r.op.lock().await;
                if r.ctl().gone {
                    return;
                }
                if let Err(e) = resize(&r).await {
                    log::warn!("raid {raid}: following a member's resize: {e}");
                }
            }
        });
    }
    if let BdevEvent::Remove = ev {
        let (raid, member) = (raid.to_owned(), member.to_owned());
        super::spawn(async move {
            if let Some(r) = super::find(&raid) {
                let _op = r.op.lock().await;
                if r.ctl().gone {
                    return;
                }
                if let Err(e) = remove_member(&r, &member, MemberState::Missing).await {
                    log::warn!("raid {raid}: removing member {member}: {e}");
                }
            }
        });
    }
}

/// Grows an online raid0 or raid1 once every member has grown (called
/// under the op lock on a member's Resize): each member's data area is
/// what the smallest now holds (raid0: in whole strips), the superblock
/// records it, then the bdev's new size is announced. Shrinking members
/// and concat (whose layout would move) are left as they are.
async fn resize(raid: &Arc<Raid>) -> Result<(), RaidError> {
    let (bdev, new_member, new_size) = {
        let c = raid.ctl();
        let (Some(b), Some(g)) = (c.bdev.clone(), c.geometry.clone()) else {
            return Ok(());
        };
        if !matches!(raid.level, Level::Raid0 | Level::Raid1) {
            return Ok(());
        }
        let Some(min) = c
            .slots
            .iter()
            .filter_map(|s| {
                let d = s.desc.as_ref()?;
                Some(d.bdev().num_blocks().saturating_sub(s.data_offset))
            })
            .min()
        else {
            return Ok(());
        };
        let member = match g.shift {
            Some(sh) => (min >> sh) << sh,
            None => min,
        };
        if member <= g.member_blocks {
            return Ok(());
        }
        let size = match raid.level {
            Level::Raid0 => member * g.n as u64,
            _ => member,
        };
        (b, member, size)
    };
    {
        let mut c = raid.ctl();
        for s in c.slots.iter_mut().filter(|s| s.configured()) {
            s.data_size = new_member;
        }
        if let Some(g) = &c.geometry {
            let mut ng = g.as_ref().clone();
            ng.member_blocks = new_member;
            ng.num_blocks = new_size;
            c.geometry = Some(Arc::new(ng));
        }
    }
    if raid.superblock {
        write_superblock(raid, RaidState::Online, new_size).await?;
    }
    log::info!("raid {}: grown to {new_size} blocks", raid.name);
    bdev.notify_blockcnt_change(new_size);
    Ok(())
}

/// Opens and claims `bdev` for `raid`, reads its block 0: a superblock of
/// another RAID refuses it; the caller checks one of this RAID. Returns the
/// descriptor and the superblock found.
pub(crate) async fn open_member(
    raid: &Raid,
    bdev: &str,
) -> Result<(Desc, Option<Superblock>), RaidError> {
    let (rname, mname) = (raid.name.clone(), bdev.to_owned());
    let mut desc = crate::open(bdev, false, move |_, ev| member_event(&rname, &mname, ev))?;
    desc.claim_for(MODULE, Some(&raid.name), ClaimType::ExclusiveWrite, 0)?;
    let ch = desc.get_io_channel()?;
    let sb = sb_io::load(&ch)
        .await
        .map_err(|source| RaidError::Superblock {
            bdev: bdev.to_owned(),
            source,
        })?;
    drop(ch);
    if let Some(sb) = &sb
        && sb.uuid != raid.uuid
    {
        return Err(RaidError::ForeignSuperblock {
            bdev: bdev.to_owned(),
            raid: sb.name.clone(),
            uuid: sb.uuid_string(),
        });
    }
    Ok((desc, sb))
}

/// Checks a new member's block size against the RAID's (setting it for the
/// first) and works out its data area.
fn place_member(raid: &Raid, c: &mut Ctl, desc: &Desc) -> Result<(u64, u64), RaidError> {
    let b = desc.bdev();
    if c.block_size == 0 {
        c.block_size = b.block_size();
    } else if b.block_size() != c.block_size {
        return Err(RaidError::BlockSize {
            raid: raid.name.clone(),
            bdev: b.name().to_owned(),
            want: c.block_size,
            got: b.block_size(),
        });
    }
    let offset = if raid.superblock {
        let boundary = b.props().optimal_io_boundary.unwrap_or(0);
        data_offset_blocks(b.block_size(), u32::try_from(boundary).unwrap_or(0))
    } else {
        0
    };
    if b.num_blocks() <= offset {
        return Err(RaidError::TooSmall {
            raid: raid.name.clone(),
            bdev: b.name().to_owned(),
            why: format!(
                "{} blocks, the superblock's area alone takes {offset}",
                b.num_blocks()
            ),
        });
    }
    Ok((offset, b.num_blocks() - offset))
}

/// Attaches the existing bdev `bdev` to slot `slot` of a RAID being
/// created or configuring (a member named at create that appeared).
pub(crate) async fn attach_new(raid: &Arc<Raid>, slot: usize, bdev: &str) -> Result<(), RaidError> {
    let (desc, _sb) = open_member(raid, bdev).await?;
    let mut c = raid.ctl();
    let (offset, size) = place_member(raid, &mut c, &desc)?;
    let uuid = parse_uuid(desc.bdev().uuid());
    let s = &mut c.slots[slot];
    s.name = Some(bdev.to_owned());
    s.uuid = uuid;
    s.data_offset = offset;
    s.data_size = size;
    s.operational = true;
    s.desc = Some(desc);
    Ok(())
}

/// Whether every expected member is there: then it can go online.
pub(crate) fn ready(raid: &Raid) -> bool {
    let c = raid.ctl();
    let n = c.slots.len();
    let operational = c.slots.iter().filter(|s| s.operational).count();
    let discovered = c.slots.iter().filter(|s| s.configured()).count();
    c.state == RaidState::Configuring
        && discovered == operational
        && operational >= raid.min_operational(n)
}

/// Brings a configuring RAID whose members are all there online: sizes
/// worked out, the superblock written to every member, the bdev
/// registered (openable when this returns).
pub(crate) async fn configure(raid: &Arc<Raid>) -> Result<(), RaidError> {
    let (geometry, props) = {
        let mut c = raid.ctl();
        let geometry = Arc::new(Geometry::compute(raid, &mut c)?);
        let mut props =
            BdevProps::new(&raid.name, "Raid Volume", c.block_size, geometry.num_blocks);
        props.uuid = Some(raid.uuid_string());
        if geometry.shift.is_some() {
            props.optimal_io_boundary = Some(geometry.strip_blocks());
        }
        props.write_cache = c
            .slots
            .iter()
            .filter_map(|s| s.desc.as_ref())
            .any(|d| d.bdev().props().write_cache);
        (geometry, props)
    };
    if raid.superblock {
        write_superblock(raid, RaidState::Online, geometry.num_blocks).await?;
    }
    let bdev = crate::register(
        MODULE,
        props,
        RaidBdev {
            raid: raid.clone(),
            geometry: geometry.clone(),
        },
    )?;
    let mut c = raid.ctl();
    c.geometry = Some(geometry);
    c.bdev = Some(bdev);
    c.state = RaidState::Online;
    log::info!("raid {}: online", raid.name);
    Ok(())
}

/// Writes the superblock (sequence number bumped) to every attached
/// member, recording each slot's state.
pub(crate) async fn write_superblock(
    raid: &Raid,
    state: RaidState,
    raid_size: u64,
) -> Result<(), RaidError> {
    let (sb, targets) = {
        let mut c = raid.ctl();
        let seq = c.sb.as_ref().map_or(0, |s| s.seq_number) + 1;
        let prev =
            c.sb.as_ref()
                .map(|sb| sb.members.clone())
                .unwrap_or_default();
        let members = c
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let before = prev.iter().find(|m| usize::from(m.slot) == i);
                if s.configured() && !s.rebuilding {
                    Some(Member {
                        uuid: s.uuid.unwrap_or_default(),
                        data_offset: s.data_offset,
                        data_size: s.data_size,
                        state: MemberState::Configured,
                        flags: 0,
                        slot: i as u8,
                    })
                } else if let Some(m) = before {
                    // Gone (or being rebuilt): its old entry, marked.
                    let state = match m.state {
                        MemberState::Configured if s.failed => MemberState::Failed,
                        MemberState::Configured => MemberState::Missing,
                        other => other,
                    };
                    Some(Member { state, ..m.clone() })
                } else {
                    s.uuid.map(|uuid| Member {
                        uuid,
                        data_offset: s.data_offset,
                        data_size: s.data_size,
                        state: MemberState::Missing,
                        flags: 0,
                        slot: i as u8,
                    })
                }
            })
            .collect();
        let sb = Superblock {
            version_minor: 0,
            flags: 0,
            uuid: raid.uuid,
            name: raid.name.clone(),
            raid_size,
            block_size: c.block_size,
            level: raid.level,
            strip_size: match raid.level {
                Level::Raid1 => 0,
                _ => (u64::from(raid.strip_size_kb) * 1024 / u64::from(c.block_size.max(1))) as u32,
            },
            state,
            seq_number: seq,
            num_base_bdevs: c.slots.len() as u8,
            members,
        };
        let targets = attached_channels(&c)?;
        c.sb = Some(sb.clone());
        (sb, targets)
    };
    for (name, ch) in targets {
        sb_io::store(&ch, &sb)
            .await
            .map_err(|source| RaidError::Superblock { bdev: name, source })?;
    }
    Ok(())
}

/// Marks the member that failed I/O (raid1) failed: it leaves the RAID,
/// which stays online degraded; the superblock records it.
pub(crate) fn member_failed(raid: &Arc<Raid>, slot: usize) {
    let raid = raid.clone();
    super::spawn(async move {
        let _op = raid.op.lock().await;
        if raid.ctl().gone {
            return;
        }
        let name = raid
            .ctl()
            .slots
            .get(slot)
            .and_then(|s| s.configured().then(|| s.name.clone()).flatten());
        if let Some(name) = name {
            log::warn!(
                "raid {}: member {name} failed I/O: taking it out",
                raid.name
            );
            if let Err(e) = remove_member(&raid, &name, MemberState::Failed).await {
                log::warn!("raid {}: failing member {name}: {e}", raid.name);
            }
        }
    });
}

/// Takes member `member` out (called under the op lock): removed
/// (`Missing`) or failed (`Failed`). A raid1 with a member left stays
/// online (degraded) and records it in its superblock; a RAID that cannot
/// serve without it goes offline (its bdev unregistered); an offline RAID
/// left with no member at all is freed (a configuring one waits on).
pub(crate) async fn remove_member(
    raid: &Arc<Raid>,
    member: &str,
    why: MemberState,
) -> Result<(), RaidError> {
    let (slot, online, keeps_serving) = {
        let c = raid.ctl();
        let Some(slot) = c
            .slots
            .iter()
            .position(|s| s.configured() && s.name.as_deref() == Some(member))
        else {
            return Err(RaidError::NotMember(member.to_owned()));
        };
        let n = c.slots.len();
        let left = c
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != slot && s.configured() && !s.rebuilding)
            .count();
        let online = c.state == RaidState::Online;
        (slot, online, left >= raid.min_operational(n) && left > 0)
    };
    if online && keeps_serving {
        // Degraded: no new I/O reaches the member once every core's
        // channel has dropped it; quiesced meanwhile so nothing is in
        // flight to it. Its descriptor leaves the slot first (a channel
        // made meanwhile does not reach it), and is closed last. Whatever
        // fails here, the member is let go: its own unregister may be
        // waiting for this RAID to close it.
        let (bdev, desc) = {
            let mut c = raid.ctl();
            let d = c.slots[slot].desc.take();
            (c.bdev.clone(), d)
        };
        if let Some(b) = &bdev {
            let quiesced = b.quiesce(MODULE).await;
            if let Err(e) = &quiesced {
                log::warn!("raid {}: quiescing to drop {member}: {e}", raid.name);
            }
            let r = b
                .for_each_channel::<std::rc::Rc<RaidChannel>>(move |_, ch| {
                    if let Some(ch) = ch {
                        ch.set_slot(slot, None);
                    }
                })
                .await;
            if quiesced.is_ok()
                && let Err(e) = b.unquiesce(MODULE).await
            {
                log::warn!("raid {}: unquiescing: {e}", raid.name);
            }
            if let Err(e) = r {
                log::warn!("raid {}: dropping {member}'s channels: {e}", raid.name);
            }
        }
        let raid_size = {
            let mut c = raid.ctl();
            if let Some(p) = &mut c.process
                && p.target == slot
            {
                p.cancel = true;
            }
            let s = &mut c.slots[slot];
            s.operational = false;
            s.rebuilding = false;
            s.failed = why == MemberState::Failed;
            s.name = None;
            s.uuid = None;
            s.data_offset = 0;
            c.geometry.as_ref().map_or(0, |g| g.num_blocks)
        };
        drop(desc);
        if raid.superblock {
            write_superblock(raid, RaidState::Online, raid_size).await?;
        }
        log::warn!("raid {}: member {member} out, degraded", raid.name);
        return Ok(());
    }
    if online {
        // As SPDK: the member leaves the operational count, which drops
        // below what the level needs.
        raid.ctl().slots[slot].operational = false;
        go_offline(raid).await;
    }
    let free = {
        let mut c = raid.ctl();
        c.slots[slot].desc = None;
        c.state == RaidState::Offline && c.slots.iter().all(|s| !s.configured())
    };
    if free && !raid.ctl().gone {
        log::info!("raid {}: no member left, freed", raid.name);
        free_raid(raid);
    }
    Ok(())
}

/// Unregisters the RAID bdev and marks the RAID offline (members stay
/// attached until they go or the RAID is deleted).
async fn go_offline(raid: &Arc<Raid>) {
    raid.ctl().state = RaidState::Offline;
    let bdev = take_bdev(raid);
    if let Some(b) = bdev
        && let Err(e) = crate::unregister(b.name()).await
    {
        log::warn!("raid {}: unregistering: {e}", raid.name);
    }
    let mut c = raid.ctl();
    c.unregistering = false;
    c.geometry = None;
    log::warn!("raid {}: offline", raid.name);
}

/// The RAID's bdev, taken to be unregistered by this module (its destruct
/// then leaves the members alone), a rebuild told to stop.
fn take_bdev(raid: &Raid) -> Option<Bdev> {
    let mut c = raid.ctl();
    c.unregistering = true;
    if let Some(p) = &mut c.process {
        p.cancel = true;
    }
    c.bdev.take()
}

/// This core's channel to every attached member, with its name.
fn attached_channels(c: &Ctl) -> Result<Vec<(String, BdevChannel)>, RaidError> {
    c.slots
        .iter()
        .filter_map(|s| s.desc.as_ref())
        .map(|d| Ok((d.bdev().name().to_owned(), d.get_io_channel()?)))
        .collect()
}

/// Brings the RAID online if every member it expects is there (a failure
/// is logged: it stays configuring).
pub(crate) async fn configure_if_ready(raid: &Arc<Raid>) {
    if ready(raid)
        && let Err(e) = configure(raid).await
    {
        log::error!("raid {}: going online failed: {e}", raid.name);
    }
}

/// Drops the RAID from the registry and closes every member.
pub(crate) fn free_raid(raid: &Arc<Raid>) {
    let descs: Vec<Desc> = {
        let mut c = raid.ctl();
        c.gone = true;
        c.slots.iter_mut().filter_map(|s| s.desc.take()).collect()
    };
    drop(descs);
    raids().retain(|r| !Arc::ptr_eq(r, raid));
}

/// Deletes the RAID: its bdev unregistered (after every user closed it),
/// a rebuild stopped, its members released. Superblocks stay on the
/// members (as SPDK), so the RAID assembles again when they appear again,
/// unless `clear_sb`: then they are wiped first.
pub(crate) async fn delete(raid: &Arc<Raid>, clear_sb: bool) -> Result<(), RaidError> {
    let _op = raid.op.lock().await;
    if raid.ctl().gone {
        return Err(RaidError::NotFound(raid.name.clone()));
    }
    let bdev = take_bdev(raid);
    if let Some(b) = bdev
        && let Err(e) = crate::unregister(b.name()).await
    {
        // Unregistered by someone else meanwhile: the RAID goes anyway.
        log::warn!("raid {}: unregistering its bdev: {e}", raid.name);
    }
    // A rebuild copies only under the op lock, held here: it sees the
    // cancel at its next window and stops without touching a member.
    if clear_sb && raid.superblock {
        let (len, members) = {
            let c = raid.ctl();
            let len =
                c.sb.as_ref()
                    .map_or(super::superblock::HEADER_LEN, |s| s.len());
            (len, attached_channels(&c))
        };
        let members = match members {
            Ok(m) => m,
            Err(e) => {
                log::error!("raid {}: clearing the superblocks: {e}", raid.name);
                Vec::new()
            }
        };
        for (name, ch) in members {
            if let Err(source) = sb_io::wipe(&ch, len).await {
                // The RAID is gone either way; the member keeps a stale
                // superblock, said here.
                log::error!(
                    "raid {}: clearing the superblock of {name}: {source}",
                    raid.name
                );
            }
        }
    }
    free_raid(raid);
    log::info!("raid {}: deleted", raid.name);
    Ok(())
}

/// Adds `bdev` to the RAID (`bdev_raid_add_base_bdev`): into a configuring
/// RAID's free slot (online once complete), or onto a degraded raid1 as the
/// target of a rebuild. Returns once it is attached (and the rebuild
/// started).
pub(crate) async fn add_member(raid: &Arc<Raid>, bdev: &str) -> Result<(), RaidError> {
    let _op = raid.op.lock().await;
    if raid.ctl().gone {
        return Err(RaidError::NotFound(raid.name.clone()));
    }
    let state = raid.ctl().state;
    match state {
        RaidState::Configuring => {
            let slot = {
                let c = raid.ctl();
                let uuid = crate::get(bdev).and_then(|b| parse_uuid(b.uuid()));
                if c.sb.is_some() {
                    // Assembled from superblocks: only a member they name
                    // (examine takes it with its recorded data area).
                    return Err(RaidError::Invalid(format!(
                        "RAID {} waits for the members its superblock names; {bdev} is not one \
                         it is missing",
                        raid.name
                    )));
                }
                c.slots
                    .iter()
                    .position(|s| !s.configured() && s.name.as_deref() == Some(bdev))
                    .or_else(|| {
                        c.slots.iter().position(|s| {
                            !s.configured()
                                && s.name.is_none()
                                && (s.uuid.is_none() || s.uuid == uuid)
                        })
                    })
                    .ok_or_else(|| RaidError::NoSlot(raid.name.clone()))?
            };
            attach_new(raid, slot, bdev).await?;
            if ready(raid) {
                configure(raid).await?;
            }
            Ok(())
        }
        RaidState::Online if raid.level == Level::Raid1 => {
            let slot = {
                let c = raid.ctl();
                if c.process.is_some() {
                    return Err(RaidError::State(format!(
                        "RAID {} is rebuilding already",
                        raid.name
                    )));
                }
                c.slots
                    .iter()
                    .position(|s| !s.configured())
                    .ok_or_else(|| RaidError::NoSlot(raid.name.clone()))?
            };
            let (desc, _) = open_member(raid, bdev).await?;
            rebuild_onto(raid, slot, desc).await
        }
        RaidState::Online => Err(RaidError::State(format!(
            "RAID {} ({}) has no redundancy to rebuild a member into",
            raid.name,
            raid.level.name()
        ))),
        RaidState::Offline => Err(RaidError::State(format!("RAID {} is offline", raid.name))),
    }
}

/// Adds `bdev` to an online raid1 in sync, no rebuild (see
/// [`super::grow_base_bdev`]).
pub(crate) async fn grow_member(raid: &Arc<Raid>, bdev: &str) -> Result<(), RaidError> {
    let _op = raid.op.lock().await;
    {
        let c = raid.ctl();
        if c.gone {
            return Err(RaidError::NotFound(raid.name.clone()));
        }
        if c.slots
            .iter()
            .any(|s| s.configured() && s.name.as_deref() == Some(bdev))
        {
            log::warn!("raid {}: {bdev} is a member already", raid.name);
            return Ok(());
        }
        if c.state != RaidState::Online {
            return Err(RaidError::Invalid(format!(
                "raid bdev {} must be online to grow",
                raid.name
            )));
        }
        if raid.level != Level::Raid1 {
            return Err(RaidError::State(format!(
                "{} RAIDs do not grow by a member",
                raid.level.name()
            )));
        }
        if c.process.is_some() {
            return Err(RaidError::Busy(format!("RAID {} is rebuilding", raid.name)));
        }
        if c.slots.iter().all(|s| s.configured()) && c.slots.len() >= crate::MAX_FAN_OUT {
            return Err(RaidError::NoSlot(raid.name.clone()));
        }
    }
    let (desc, _) = open_member(raid, bdev).await?;
    let (slot, offset) = {
        let mut c = raid.ctl();
        let (offset, size) = place_member(raid, &mut c, &desc)?;
        let need = c.geometry.as_ref().map_or(0, |g| g.member_blocks);
        if size < need {
            return Err(RaidError::TooSmall {
                raid: raid.name.clone(),
                bdev: bdev.to_owned(),
                why: format!("{size} data blocks, the RAID needs {need}"),
            });
        }
        let slot = match c.slots.iter().position(|s| !s.configured()) {
            Some(i) => i,
            None => {
                c.slots.push(Slot::default());
                c.slots.len() - 1
            }
        };
        let s = &mut c.slots[slot];
        s.name = Some(bdev.to_owned());
        s.uuid = parse_uuid(desc.bdev().uuid());
        s.data_offset = offset;
        s.data_size = need;
        s.operational = true;
        s.rebuilding = false;
        s.failed = false;
        s.desc = Some(desc);
        (slot, offset)
    };
    let Some(b) = raid.ctl().bdev.clone() else {
        return Err(RaidError::State(format!(
            "RAID {} is not online",
            raid.name
        )));
    };
    b.quiesce(MODULE).await?;
    let r2 = raid.clone();
    let r = b
        .for_each_channel::<std::rc::Rc<RaidChannel>>(move |_, ch| {
            if let Some(ch) = ch {
                let c = r2.ctl();
                let new = c.slots[slot]
                    .desc
                    .as_ref()
                    .and_then(|d| d.get_io_channel().ok())
                    .map(|bc| SlotChannel {
                        ch: bc,
                        offset,
                        readable: true,
                    });
                drop(c);
                ch.set_slot(slot, new);
            }
        })
        .await;
    b.unquiesce(MODULE).await?;
    r?;
    if raid.superblock {
        let size = b.num_blocks();
        write_superblock(raid, RaidState::Online, size).await?;
    }
    log::info!("raid {}: grown by {bdev} in slot {slot}", raid.name);
    Ok(())
}

/// Puts `desc` into free slot `slot` of an online raid1 and starts
/// rebuilding it (called under the op lock): written from now on, read
/// once the rebuild has copied every block.
pub(crate) async fn rebuild_onto(
    raid: &Arc<Raid>,
    slot: usize,
    desc: Desc,
) -> Result<(), RaidError> {
    let bdev = {
        let mut c = raid.ctl();
        if c.gone || c.bdev.is_none() {
            return Err(RaidError::State(format!(
                "RAID {} is not online",
                raid.name
            )));
        }
        let (offset, size) = place_member(raid, &mut c, &desc)?;
        let need = c.geometry.as_ref().map_or(0, |g| g.member_blocks);
        if size < need {
            return Err(RaidError::TooSmall {
                raid: raid.name.clone(),
                bdev: desc.bdev().name().to_owned(),
                why: format!("{size} data blocks, the RAID needs {need}"),
            });
        }
        let s = &mut c.slots[slot];
        s.name = Some(desc.bdev().name().to_owned());
        s.uuid = parse_uuid(desc.bdev().uuid());
        s.data_offset = offset;
        s.data_size = need;
        s.operational = true;
        s.rebuilding = true;
        s.failed = false;
        s.desc = Some(desc);
        c.process = Some(Process {
            target: slot,
            offset: 0,
            cancel: false,
            running: true,
        });
        c.bdev.clone()
    };
    let Some(b) = bdev else {
        return Err(RaidError::State(format!(
            "RAID {} is not online",
            raid.name
        )));
    };
    let r2 = raid.clone();
    let r = b
        .for_each_channel::<std::rc::Rc<RaidChannel>>(move |_, ch| {
            if let Some(ch) = ch {
                let c = r2.ctl();
                let s = &c.slots[slot];
                let new = s
                    .desc
                    .as_ref()
                    .and_then(|d| d.get_io_channel().ok())
                    .map(|bc| SlotChannel {
                        ch: bc,
                        offset: s.data_offset,
                        readable: false,
                    });
                drop(c);
                ch.set_slot(slot, new);
            }
        })
        .await;
    if let Err(e) = r {
        let mut c = raid.ctl();
        c.process = None;
        let s = &mut c.slots[slot];
        s.desc = None;
        s.rebuilding = false;
        s.operational = false;
        s.name = None;
        return Err(e.into());
    }
    rebuild::start(raid.clone(), slot);
    Ok(())
}

/// Whether `ty` is supported by every attached member.
pub(crate) fn members_support(c: &Ctl, ty: IoType) -> bool {
    c.slots
        .iter()
        .filter_map(|s| s.desc.as_ref())
        .all(|d| d.bdev().io_type_supported(ty))
}

/// This core's channels to the attached members, in slot order.
pub(crate) fn member_channels(c: &Ctl) -> Result<Vec<Option<SlotChannel>>, String> {
    c.slots
        .iter()
        .map(|s| match &s.desc {
            Some(d) => d
                .get_io_channel()
                .map(|ch| {
                    Some(SlotChannel {
                        ch,
                        offset: s.data_offset,
                        readable: !s.rebuilding,
                    })
                })
                .map_err(|e| e.to_string()),
            None => Ok(None),
        })
        .collect()
}
