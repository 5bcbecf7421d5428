//! The registry of bdevs (by name and alias) and of modules; registration,
//! examine and `wait_for_examine`, unregistration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::bdev::{Bdev, BdevInner, BdevProps};
use crate::channel::Chan;
use crate::error::BdevError;
use crate::module::{BdevModule, ModuleTask};
use crate::ops::{BdevOps, Erased};
use crate::types::BdevEvent;

#[derive(Default)]
struct Registry {
    bdevs: BTreeMap<String, Bdev>,
    aliases: BTreeMap<String, String>,
    modules: Vec<Arc<dyn BdevModule>>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static EXAMINING: AtomicUsize = AtomicUsize::new(0);

fn reg() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = reg();
    f(g.get_or_insert_with(Registry::default))
}

/// A version 4 UUID from the system's random source.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < 16 {
        // SAFETY: writes at most `16 - filled` bytes into `b[filled..]`.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), 16 - filled, 0) };
        if n <= 0 {
            // No random source: time and a counter are unique enough.
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let x = t ^ (SEQ.fetch_add(1, Ordering::Relaxed) as u128) << 64;
            b = x.to_le_bytes();
            break;
        }
        filled += n as usize;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

/// 16 bytes in the UUID text form (8-4-4-4-12 lowercase hex digits).
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Registers a bdev of `module` with `ops` as its function table. Every
/// registered module then examines it (asynchronous examines run on the
/// runtime; [`wait_for_examine`] waits for them).
///
/// # Errors
/// [`BdevError::Exists`] when the name or an alias is taken;
/// [`BdevError::Invalid`] for a zero block size or count.
pub fn register<O: BdevOps>(module: &str, props: BdevProps, ops: O) -> Result<Bdev, BdevError> {
    if props.name.is_empty() {
        return Err(BdevError::invalid("name", "empty"));
    }
    if props.block_size == 0 || !props.block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{} is not a power of two", props.block_size),
        ));
    }
    if props.num_blocks == 0 {
        return Err(BdevError::invalid("num_blocks", "zero"));
    }
    let uuid = props.uuid.clone().unwrap_or_else(new_uuid);
    let name = props.name.clone();
    let bdev = with(|r| {
        for n in std::iter::once(&props.name).chain(props.aliases.iter()) {
            if r.bdevs.contains_key(n) || r.aliases.contains_key(n) {
                return Err(BdevError::Exists(n.clone()));
            }
        }
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<BdevInner>| {
            let w = weak.clone();
            let io_device = reactor::register_io_device(format!("bdev_{name}"), move |core| {
                let b = w.upgrade().expect("a bdev outlives its channels' creation");
                Chan::new(b, core)
            });
            BdevInner::new(
                props.clone(),
                uuid,
                module.to_owned(),
                Box::new(Erased(ops)),
                io_device,
            )
        });
        let bdev = Bdev { inner };
        r.bdevs.insert(name.clone(), bdev.clone());
        for a in &props.aliases {
            r.aliases.insert(a.clone(), name.clone());
        }
        Ok(bdev)
    })?;
    log::info!(
        "bdev {name} registered ({} blocks of {} bytes)",
        bdev.num_blocks(),
        bdev.block_size()
    );
    examine(&name);
    Ok(bdev)
}

/// Runs `task` on a reactor, counted as an examine in flight.
fn spawn_examine(bdev: &str, module: &str, task: ModuleTask) {
    let Some(h) = crate::env::handle() else {
        log::error!("bdev {bdev}: module {module} examines asynchronously but no runtime is set");
        return;
    };
    EXAMINING.fetch_add(1, Ordering::AcqRel);
    let core = reactor::current_core().unwrap_or_else(|| h.cores()[0]);
    let counted = move || async move {
        task().await;
        EXAMINING.fetch_sub(1, Ordering::AcqRel);
    };
    let spawned = h.spawn_on(core, counted);
    drop(spawned);
}

/// Both examine steps of every module for a new bdev: every module's
/// `examine_config`, then every module's `examine_disk`.
fn examine(name: &str) {
    let modules = with(|r| r.modules.clone());
    for m in &modules {
        m.examine_config(name);
    }
    for m in &modules {
        if let Some(task) = m.examine_disk(name) {
            spawn_examine(name, m.name(), task);
        }
    }
}

/// Registers a module: its `init` runs, then it examines every bdev that
/// exists (both steps) and every bdev registered from now on. Registering
/// a module of a name already registered does nothing.
///
/// # Errors
/// The module's `init` error (it is then not registered).
pub fn register_module(m: Arc<dyn BdevModule>) -> Result<(), BdevError> {
    if with(|r| r.modules.iter().any(|x| x.name() == m.name())) {
        return Ok(());
    }
    m.init()?;
    let existing: Vec<String> = with(|r| {
        r.modules.push(m.clone());
        r.bdevs.keys().cloned().collect()
    });
    for name in &existing {
        m.examine_config(name);
    }
    for name in &existing {
        if let Some(task) = m.examine_disk(name) {
            spawn_examine(name, m.name(), task);
        }
    }
    Ok(())
}

/// Unregisters every bdev (those nothing stands on first) and then runs
/// every module's `fini`, in the reverse order of registration, waiting
/// for the asynchronous ones; the modules are then gone. Call on a reactor
/// at shutdown.
pub async fn fini() {
    for _ in 0..1000 {
        let tops: Vec<String> = list()
            .iter()
            .filter(|b| b.claimed_for().is_empty() && b.claimed_by().is_none() && !b.is_removing())
            .map(|b| b.name().to_owned())
            .collect();
        if tops.is_empty() {
            break;
        }
        for n in tops {
            if let Err(e) = unregister(&n).await {
                log::warn!("fini: unregistering {n}: {e}");
            }
        }
    }
    let modules: Vec<Arc<dyn BdevModule>> = with(|r| std::mem::take(&mut r.modules));
    for m in modules.iter().rev() {
        if let Some(task) = m.fini() {
            task().await;
        }
        log::debug!("bdev module {} finished", m.name());
    }
}

/// The calls `save_config` writes for the bdev subsystem: every module's
/// own configuration (registration order), then every bdev's creating
/// call, each after every bdev it stands on (from the claims: a vbdev
/// claims its bases), then `bdev_wait_for_examine`.
pub fn config_calls() -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = with(|r| r.modules.clone())
        .iter()
        .flat_map(|m| m.config_json())
        .collect();
    let bdevs: Vec<Bdev> = list().into_iter().filter(|b| !b.is_removing()).collect();
    // deps[name]: the bdevs `name` stands on.
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in &bdevs {
        for owner in b.claimed_for() {
            deps.entry(owner).or_default().push(b.name().to_owned());
        }
    }
    let mut done: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut pending: Vec<&Bdev> = bdevs.iter().collect();
    while !pending.is_empty() {
        let (ready, rest): (Vec<&Bdev>, Vec<&Bdev>) = pending.into_iter().partition(|b| {
            deps.get(b.name())
                .is_none_or(|d| d.iter().all(|x| done.contains(x)))
        });
        if ready.is_empty() {
            // Only a cycle could do this, and claims cannot make one.
            log::error!(
                "save_config: bdevs standing on each other: {:?}",
                rest.iter().map(|b| b.name()).collect::<Vec<_>>()
            );
            out.extend(rest.iter().filter_map(|b| b.write_config_json()));
            break;
        }
        for b in ready {
            done.insert(b.name().to_owned());
            if let Some(c) = b.write_config_json() {
                out.push(c);
                out.extend(qos_config(b));
            }
        }
        pending = rest;
    }
    // The QoS of bdevs made by their module's own configuration (NVMe
    // namespaces): once every bdev is there.
    out.extend(
        bdevs
            .iter()
            .filter(|b| b.write_config_json().is_none())
            .filter_map(qos_config),
    );
    out.push(serde_json::json!({ "method": "bdev_wait_for_examine" }));
    out
}

/// `bdev_set_qos_limit` for a bdev with limits (only the limits set, as
/// SPDK writes it).
fn qos_config(b: &Bdev) -> Option<serde_json::Value> {
    let l = b.qos_limits();
    if !l.any() {
        return None;
    }
    let mut params = serde_json::Map::new();
    params.insert("name".into(), b.name().into());
    for (k, v) in l.named() {
        if v > 0 {
            params.insert(k.into(), v.into());
        }
    }
    Some(serde_json::json!({ "method": "bdev_set_qos_limit", "params": params }))
}

/// The registered modules' names.
pub fn modules() -> Vec<String> {
    with(|r| r.modules.iter().map(|m| m.name().to_owned()).collect())
}

/// Examines in flight (asynchronous `examine_disk` steps not finished).
pub fn examines_in_flight() -> usize {
    EXAMINING.load(Ordering::Acquire)
}

/// Completes when every examine in flight (including asynchronous ones such
/// as superblock reads) has finished, with the bdevs they create registered.
pub async fn wait_for_examine() {
    while EXAMINING.load(Ordering::Acquire) > 0 {
        reactor::sleep(Duration::from_micros(200)).await;
    }
}

/// Replaces alias `old` of bdev `name` with `new` (SPDK's
/// `spdk_bdev_alias_del` then `_add`: a volume renamed); `old` None only
/// adds.
///
/// # Errors
/// [`BdevError::NotFound`] for no such bdev; [`BdevError::Exists`] when
/// `new` names another bdev or alias (nothing changed).
pub fn set_alias(name: &str, old: Option<&str>, new: &str) -> Result<(), BdevError> {
    with(|r| {
        let b = r
            .bdevs
            .get(name)
            .cloned()
            .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
        if r.bdevs.contains_key(new) || r.aliases.get(new).is_some_and(|n| n != name) {
            return Err(BdevError::Exists(new.to_owned()));
        }
        let mut al = b.inner.aliases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = old {
            al.retain(|a| a != o);
            if r.aliases.get(o).is_some_and(|n| n == name) {
                r.aliases.remove(o);
            }
        }
        if !al.iter().any(|a| a == new) {
            al.push(new.to_owned());
        }
        r.aliases.insert(new.to_owned(), name.to_owned());
        Ok(())
    })
}

/// The bdev named `name` (or with that alias).
pub fn get(name: &str) -> Option<Bdev> {
    with(|r| {
        r.bdevs
            .get(name)
            .or_else(|| r.aliases.get(name).and_then(|n| r.bdevs.get(n)))
            .cloned()
    })
}

/// Every registered bdev, by name.
pub fn list() -> Vec<Bdev> {
    with(|r| r.bdevs.values().cloned().collect())
}

/// Unregisters bdev `name`: refuses new opens, sends Remove to every open
/// descriptor, waits until they are all closed and every channel is gone,
/// then lets the module destruct it. Completes when the bdev is gone.
///
/// # Errors
/// [`BdevError::NotFound`]; [`BdevError::Removing`] if already under way.
pub async fn unregister(name: &str) -> Result<(), BdevError> {
    let bdev = get(name).ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    if !bdev.inner.set_removing() {
        return Err(BdevError::Removing(name.to_owned()));
    }
    let name = bdev.name().to_owned();
    bdev.inner.deliver(BdevEvent::Remove);
    let mut waited = Duration::ZERO;
    while !bdev.inner.live_descs().is_empty() {
        reactor::sleep(Duration::from_micros(500)).await;
        waited += Duration::from_micros(500);
        if waited.as_millis().is_multiple_of(5000) {
            log::warn!(
                "bdev {name}: waiting for {} descriptors to close",
                bdev.inner.live_descs().len()
            );
        }
    }
    if let Err(e) = bdev.inner.io_device.unregister_async().await {
        log::warn!("bdev {name}: channel teardown: {e}");
    }
    bdev.inner.ops.destruct();
    if let Some(task) = bdev.inner.ops.destruct_async() {
        task().await;
    }
    with(|r| {
        r.bdevs.remove(&name);
        r.aliases.retain(|_, n| *n != name);
    });
    log::info!("bdev {name} unregistered");
    Ok(())
}
