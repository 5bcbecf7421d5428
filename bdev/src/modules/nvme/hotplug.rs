//! PCIe hotplug, as SPDK's `bdev_nvme_set_hotplug`: while enabled, a timed
//! poller scans the PCI bus every `period_us` for NVMe controllers bound to
//! vfio-pci that no controller here drives, and attaches each as
//! `HotInNvme<N>` (its namespaces become bdevs). A controller detached with
//! `bdev_nvme_detach_controller` is skipped until it leaves vfio-pci (it is
//! not attached again behind its user's back). Removal needs no scan: the
//! admin poller of each controller sees its registers read all-ones.
//!
//! The scan reads sysfs (attributes kept in memory by the kernel); the
//! attach it starts is a task whose bring-up is polled like any other.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nvme_driver::ControllerOptions;
use nvme_driver::pci::Bdf;
use reactor::PollStatus;

/// SPDK's default scan period (100 ms), and its upper bound (10 s).
pub const DEFAULT_PERIOD_US: u64 = 100_000;
const MAX_PERIOD_US: u64 = 10_000_000;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PERIOD_US: AtomicU64 = AtomicU64::new(DEFAULT_PERIOD_US);
/// Bumped on every change: a poller of an older setting stops itself.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static NEXT_NAME: AtomicU32 = AtomicU32::new(0);
/// Controllers detached by request, not to be attached again while they
/// stay bound to vfio-pci.
static SKIPPED: Mutex<BTreeSet<Bdf>> = Mutex::new(BTreeSet::new());
/// Attaches in progress (a scan must not start a second one).
static ATTACHING: Mutex<BTreeSet<Bdf>> = Mutex::new(BTreeSet::new());

/// Whether hotplug is on, and its period in microseconds.
pub fn settings() -> (bool, u64) {
    (
        ENABLED.load(Ordering::Acquire),
        PERIOD_US.load(Ordering::Relaxed),
    )
}

/// The NVMe controllers (PCI class 010802h) bound to vfio-pci under
/// `devices` (`/sys/bus/pci/devices`), in address order. Entries that are
/// not PCI addresses or cannot be read are passed over.
pub fn vfio_nvme_controllers(devices: &Path) -> Vec<Bdf> {
    let Ok(dir) = std::fs::read_dir(devices) else {
        return Vec::new();
    };
    let mut found: Vec<Bdf> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let bdf: Bdf = e.file_name().to_str()?.parse().ok()?;
            let p = e.path();
            let class = std::fs::read_to_string(p.join("class")).ok()?;
            let driver = std::fs::read_link(p.join("driver")).ok()?;
            (class.trim() == "0x010802" && driver.file_name().is_some_and(|n| n == "vfio-pci"))
                .then_some(bdf)
        })
        .collect();
    found.sort();
    found
}

/// Remembers that `bdf` was detached by request (hotplug leaves it alone
/// while it stays bound to vfio-pci).
pub fn skip(bdf: Bdf) {
    SKIPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(bdf);
}

/// What one scan should attach: controllers present and not driven, not
/// skipped, not being attached; the skip list forgets controllers that
/// left.
pub fn to_attach(present: &[Bdf], driven: &[Bdf]) -> Vec<Bdf> {
    let mut skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    skipped.retain(|b| present.contains(b));
    let attaching = ATTACHING.lock().unwrap_or_else(|p| p.into_inner());
    present
        .iter()
        .filter(|b| !driven.contains(b) && !skipped.contains(b) && !attaching.contains(b))
        .copied()
        .collect()
}

/// Turns hotplug on (with `period_us`, 0 = SPDK's default of 100 ms, at
/// most 10 s) or off. Must run on a reactor: the scan poller lives there.
pub fn set(enable: bool, period_us: u64) {
    let period = match period_us {
        0 => DEFAULT_PERIOD_US,
        p => p.min(MAX_PERIOD_US),
    };
    PERIOD_US.store(period, Ordering::Relaxed);
    ENABLED.store(enable, Ordering::Release);
    let generation = GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    if !enable {
        return;
    }
    drop(reactor::register_timed_poller(
        "nvme_hotplug",
        Duration::from_micros(period),
        move || {
            if GENERATION.load(Ordering::Acquire) != generation {
                if let Some(p) = reactor::current_poller() {
                    p.unregister();
                }
                return PollStatus::Idle;
            }
            scan();
            PollStatus::Idle
        },
    ));
}

/// Turns hotplug off (shutdown: nothing is attached behind the teardown).
pub fn disable() {
    ENABLED.store(false, Ordering::Release);
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// One scan: attaches what appeared.
fn scan() {
    let present = vfio_nvme_controllers(Path::new("/sys/bus/pci/devices"));
    let driven: Vec<Bdf> = super::controllers_list()
        .iter()
        .filter_map(|c| c.bdf())
        .collect();
    for bdf in to_attach(&present, &driven) {
        ATTACHING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bdf);
        let name = format!("HotInNvme{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed));
        log::info!("nvme hotplug: {bdf} appeared; attaching it as {name}");
        drop(reactor::spawn(async move {
            let r = super::attach_controller(
                &name,
                &bdf.to_string(),
                ControllerOptions::default(),
                None,
            )
            .await;
            match r {
                Ok(bdevs) => log::info!("nvme hotplug: {name}: {}", bdevs.join(", ")),
                Err(e) => {
                    // Not tried again while it stays: a controller that
                    // cannot be brought up would be retried every period.
                    log::warn!("nvme hotplug: {bdf}: {e}");
                    skip(bdf);
                }
            }
            ATTACHING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&bdf);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vfio_nvme_controllers_in_sysfs() {
        let root = std::env::temp_dir().join(format!("hotplug-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devices = root.join("devices");
        let drivers = root.join("drivers");
        for d in ["vfio-pci", "nvme", "ahci"] {
            std::fs::create_dir_all(drivers.join(d)).unwrap();
        }
        for (bdf, class, driver) in [
            ("0000:00:03.0", "0x010802", Some("vfio-pci")),
            ("0000:00:01.0", "0x010802", Some("vfio-pci")),
            ("0000:00:02.0", "0x010802", Some("nvme")),
            ("0000:00:04.0", "0x010601", Some("vfio-pci")),
            ("0000:00:05.0", "0x010802", None),
            ("not-a-bdf", "0x010802", Some("vfio-pci")),
        ] {
            let d = devices.join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            if let Some(drv) = driver {
                std::os::unix::fs::symlink(drivers.join(drv), d.join("driver")).unwrap();
            }
        }
        let found = vfio_nvme_controllers(&devices);
        let want: Vec<Bdf> = ["0000:00:01.0", "0000:00:03.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(found, want);
        assert!(vfio_nvme_controllers(&root.join("nothing")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn skipped_controllers_wait_until_they_leave() {
        let a: Bdf = "0000:10:00.0".parse().unwrap();
        let b: Bdf = "0000:11:00.0".parse().unwrap();
        let c: Bdf = "0000:12:00.0".parse().unwrap();
        skip(b);
        // a is new, b skipped, c driven already.
        assert_eq!(to_attach(&[a, b, c], &[c]), vec![a]);
        // b left vfio-pci: forgotten; when it comes back it is attached.
        assert_eq!(to_attach(&[a, c], &[a, c]), Vec::<Bdf>::new());
        assert_eq!(to_attach(&[a, b, c], &[a, c]), vec![b]);
    }
}
