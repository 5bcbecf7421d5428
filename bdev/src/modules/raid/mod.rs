//! RAID bdevs as SPDK makes them: raid0 (striping), concat (members one
//! after another) and raid1 (mirroring), over any bdevs, with SPDK's
//! on-disk superblock so a RAID assembles from its members by itself (here
//! or in SPDK), SPDK's methods, states and reports.
//!
//! ```text
//!   bdev_raid_create ─> Raid (configuring) ─ every member attached: opened,
//!        │              claimed, block 0 checked (another RAID's
//!        │              superblock refuses it), placed (data offset 1 MiB
//!        │              with a superblock)
//!        └─ all there ─> configure: sizes, superblock written to every
//!                        member, the bdev registered (online) ─> answer
//!   a new bdev ─> examine: a member a configuring RAID names, or a
//!                 superblock ─> the RAID (made from it if new) takes it;
//!                 online once complete (bdev_wait_for_examine waits)
//!   member removed / failed I/O ─> raid1: out, degraded (superblock
//!                 records it); raid0, concat: offline
//!   bdev_raid_add_base_bdev on a degraded raid1 ─> rebuild (windows
//!                 quiesced, copied, I/O flowing)
//! ```
//!
//! Files: [`superblock`] (the format), [`sb_io`] (reading and writing it
//! on a member), `volume.rs` (a RAID's control state and operations),
//! `io.rs` (the bdev, its channels, raid0 and concat I/O over [`raid0`]
//! and [`concat`]'s layouts), `raid1.rs`, `rebuild.rs`, `examine.rs`,
//! [`rpc`]. raid5f has its number and name but no I/O yet.

pub mod concat;
mod error;
mod examine;
mod io;
pub mod raid0;
mod raid1;
mod rebuild;
pub mod rpc;
pub mod sb_io;
pub mod superblock;
mod volume;

pub use error::RaidError;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::{BdevModule, ModuleTask};

use superblock::{Level, RaidState};
use volume::{Raid, Slot};

/// The module's name (claims, `bdev_get_bdevs`' product is "Raid Volume").
pub const MODULE: &str = "raid";

static RAIDS: Mutex<Vec<Arc<Raid>>> = Mutex::new(Vec::new());

fn raids() -> MutexGuard<'static, Vec<Arc<Raid>>> {
    RAIDS.lock().unwrap_or_else(|p| p.into_inner())
}

fn find(name: &str) -> Option<Arc<Raid>> {
    raids().iter().find(|r| r.name == name).cloned()
}

/// `bdev_raid_set_options`' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Blocks a rebuild copies per window, in KiB (default 1024).
    pub process_window_size_kb: u32,
    /// A rebuild's most MB/s (0: unpaced).
    pub process_max_bandwidth_mb_sec: u32,
}

static OPTIONS: Mutex<Options> = Mutex::new(Options {
    process_window_size_kb: 1024,
    process_max_bandwidth_mb_sec: 0,
});

/// The options in force.
pub fn options() -> Options {
    *OPTIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the options (rebuilds started afterwards use them).
///
/// # Errors
/// [`RaidError::Invalid`] for a zero window.
pub fn set_options(o: Options) -> Result<(), RaidError> {
    if o.process_window_size_kb == 0 {
        return Err(RaidError::Invalid(
            "process_window_size_kb must be at least 1".to_owned(),
        ));
    }
    *OPTIONS.lock().unwrap_or_else(|p| p.into_inner()) = o;
    Ok(())
}

/// Runs a control task on this reactor, or on the runtime's first core.
fn spawn(f: impl std::future::Future<Output = ()> + 'static) {
    if reactor::current_core().is_some() {
        drop(reactor::spawn(f));
    } else {
        log::error!("raid: a control task outside a reactor was dropped");
    }
}

/// A UUID's 16 bytes from its text.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(b)
}

/// What `bdev_raid_create` asks for.
#[derive(Clone, Debug)]
pub struct CreateParams {
    /// The RAID bdev's name.
    pub name: String,
    /// Its level.
    pub level: Level,
    /// The strip in KiB (raid0, concat: a power of two; raid1: 0).
    pub strip_size_kb: u32,
    /// Member bdevs, in slot order (those missing join when they appear).
    pub base_bdevs: Vec<String>,
    /// Its UUID (a new one when absent).
    pub uuid: Option<String>,
    /// Keep a superblock on every member.
    pub superblock: bool,
}

/// Creates a RAID. Returns once it is online (its bdev registered and
/// openable, the superblock on every member) or, with members missing,
/// configuring.
///
/// # Errors
/// [`RaidError`]: the name taken, a bad level, strip or member list, a
/// member that cannot be claimed, holds another RAID's superblock, or has
/// another block size; superblock I/O. Nothing is left behind.
pub async fn create(p: CreateParams) -> Result<(), RaidError> {
    if find(&p.name).is_some() || crate::get(&p.name).is_some() {
        return Err(RaidError::Exists(p.name));
    }
    if p.name.is_empty() {
        return Err(RaidError::Invalid("the RAID's name is empty".to_owned()));
    }
    match p.level {
        Level::Raid5f => {
            return Err(RaidError::Invalid("raid5f is not supported yet".to_owned()));
        }
        Level::Raid1 if p.strip_size_kb != 0 => {
            return Err(RaidError::Invalid(
                "strip size is not supported by raid1".to_owned(),
            ));
        }
        Level::Raid0 | Level::Concat if !p.strip_size_kb.is_power_of_two() => {
            return Err(RaidError::Invalid(format!(
                "invalid strip size {} KiB (a power of two is needed)",
                p.strip_size_kb
            )));
        }
        _ => {}
    }
    let n = p.base_bdevs.len();
    let min = volume::min_members(p.level);
    if n < min {
        return Err(RaidError::Invalid(format!(
            "at least {min} base bdevs are needed for {}",
            p.level.name()
        )));
    }
    if n > crate::MAX_FAN_OUT {
        // A flush, reset or raid1 write goes to every member at once, in
        // one fan-out.
        return Err(RaidError::Invalid(format!(
            "{n} base bdevs ({} at most)",
            crate::MAX_FAN_OUT
        )));
    }
    for (i, b) in p.base_bdevs.iter().enumerate() {
        if b.is_empty() {
            return Err(RaidError::Invalid("a base bdev name is empty".to_owned()));
        }
        if p.base_bdevs[..i].contains(b) {
            return Err(RaidError::Invalid(format!("base bdev {b} is named twice")));
        }
    }
    let uuid_text = match &p.uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let uuid = parse_uuid(&uuid_text)
        .ok_or_else(|| RaidError::Invalid(format!("{uuid_text:?} is not a UUID")))?;
    if raids().iter().any(|r| r.uuid == uuid) {
        return Err(RaidError::Exists(uuid_text));
    }
    let slots = p
        .base_bdevs
        .iter()
        .map(|b| Slot {
            name: Some(b.clone()),
            operational: true,
            ..Slot::default()
        })
        .collect();
    let r = Raid::new(&p.name, uuid, p.level, p.strip_size_kb, p.superblock, slots);
    {
        // Checked again and added under one hold of the list.
        let mut all = raids();
        if all.iter().any(|x| x.name == p.name) {
            return Err(RaidError::Exists(p.name));
        }
        if all.iter().any(|x| x.uuid == uuid) {
            return Err(RaidError::Exists(uuid_text));
        }
        all.push(r.clone());
    }
    let op = r.op.lock().await;
    let result = async {
        for (i, b) in p.base_bdevs.iter().enumerate() {
            if crate::get(b).is_some() {
                volume::attach_new(&r, i, b).await?;
            }
        }
        if volume::ready(&r) {
            volume::configure(&r).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        log::error!("raid {}: create failed: {e}", p.name);
        volume::free_raid(&r);
    }
    drop(op);
    result
}

/// Deletes RAID `name` (online, configuring or offline); `clear_sb`
/// wipes the superblocks off its members (else it assembles again when
/// they appear again, as in SPDK).
///
/// # Errors
/// [`RaidError::NotFound`]; the layer's error unregistering its bdev.
pub async fn delete(name: &str, clear_sb: bool) -> Result<(), RaidError> {
    let r = find(name).ok_or_else(|| RaidError::NotFound(name.to_owned()))?;
    volume::delete(&r, clear_sb).await
}

/// Adds bdev `base` to RAID `raid` (`bdev_raid_add_base_bdev`).
///
/// # Errors
/// [`RaidError`]: no such RAID, no free slot, the member refused, a level
/// without redundancy that is online.
pub async fn add_base_bdev(raid: &str, base: &str) -> Result<(), RaidError> {
    let r = find(raid).ok_or_else(|| RaidError::NotFound(raid.to_owned()))?;
    if crate::get(base).is_none() {
        return Err(RaidError::Bdev(crate::BdevError::NotFound(base.to_owned())));
    }
    volume::add_member(&r, base).await
}

/// Adds bdev `base` to online raid1 `raid` as a member that is already in
/// sync (Longhorn's `bdev_raid_grow_base_bdev`: its caller copied the data
/// beforehand): into a free slot, or a new slot after the last; no
/// rebuild. A bdev already a member of it is a success.
///
/// # Errors
/// [`RaidError`]: no such RAID or bdev, not online (-EINVAL), not raid1
/// (-EPERM), a rebuild in progress (-EBUSY), the member refused.
pub async fn grow_base_bdev(raid: &str, base: &str) -> Result<(), RaidError> {
    let r = find(raid).ok_or_else(|| RaidError::NotFound(raid.to_owned()))?;
    if crate::get(base).is_none() {
        return Err(RaidError::Bdev(crate::BdevError::NotFound(base.to_owned())));
    }
    volume::grow_member(&r, base).await
}

/// Takes member bdev `base` out of its RAID (`bdev_raid_remove_base_bdev`).
///
/// # Errors
/// [`RaidError::NotMember`] when no RAID has it.
pub async fn remove_base_bdev(base: &str) -> Result<(), RaidError> {
    let r = raids()
        .iter()
        .find(|r| {
            r.ctl()
                .slots
                .iter()
                .any(|s| s.configured() && s.name.as_deref() == Some(base))
        })
        .cloned()
        .ok_or_else(|| RaidError::NotMember(base.to_owned()))?;
    let _op = r.op.lock().await;
    volume::remove_member(&r, base, superblock::MemberState::Missing).await
}

/// Every RAID in `state` (all with `None`), as `bdev_raid_get_bdevs`
/// lists them.
pub fn list(state: Option<RaidState>) -> Vec<Value> {
    let all: Vec<Arc<Raid>> = raids().clone();
    all.iter()
        .filter(|r| state.is_none_or(|s| r.ctl().state == s))
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("name".into(), json!(r.name));
            m.insert("uuid".into(), json!(r.uuid_string()));
            m.extend(r.info_json());
            Value::Object(m)
        })
        .collect()
}

/// The RAID module: examines every new bdev (a member a configuring RAID
/// waits for, or a RAID superblock), and writes its options to
/// `save_config`.
pub struct RaidModule;

impl BdevModule for RaidModule {
    fn name(&self) -> &str {
        MODULE
    }

    fn examine_disk(&self, bdev: &str) -> Option<ModuleTask> {
        let name = bdev.to_owned();
        Some(Box::new(move || Box::pin(examine::examine(name))))
    }

    fn fini(&self) -> Option<ModuleTask> {
        let all: Vec<Arc<Raid>> = raids().clone();
        for r in &all {
            volume::free_raid(r);
        }
        None
    }

    fn config_json(&self) -> Vec<Value> {
        let o = options();
        vec![json!({
            "method": "bdev_raid_set_options",
            "params": {
                "process_window_size_kb": o.process_window_size_kb,
                "process_max_bandwidth_mb_sec": o.process_max_bandwidth_mb_sec,
            }
        })]
    }
}

/// Registers the RAID module with the layer (once; the appliance and
/// tests call it at start).
///
/// # Errors
/// The layer's refusal.
pub fn register() -> Result<(), crate::BdevError> {
    crate::register_module(Arc::new(RaidModule))
}
