//! What `config` and `reset` will do, decided before anything is touched:
//! a [`Plan`] of [`Action`]s, the controllers left as they are and the
//! controllers refused with their reasons. `--dry-run` prints the plan;
//! otherwise [`crate::exec`] carries it out.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::bdf::Bdf;
use crate::blockdev;
use crate::cli::{Command, Options};
use crate::error::{Error, Exit, Result};
use crate::hugepages::{self, Target};
use crate::inuse::{self, InUse, Snapshot};
use crate::pci::{self, NVME_DRIVER, PciDevice, VFIO_DRIVER};
use crate::sys::{self, Sys};

/// Drivers that may hold the other devices of a controller's IOMMU group
/// while vfio-pci owns the controller: none, vfio-pci itself, pci-stub.
/// (Bridges may stay on pcieport.)
const VIABLE_GROUP_DRIVERS: &[&str] = &[VFIO_DRIVER, "pci-stub"];

/// One change to the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Load a kernel module with modprobe.
    LoadModule {
        /// The module.
        module: &'static str,
        /// Whether failing to load it stops the command; an optional
        /// module only gets a warning.
        required: bool,
    },
    /// Set a hugepage pool's `nr_hugepages`.
    ReserveHugepages {
        /// The pool.
        target: Target,
        /// The page count to set.
        pages: u64,
    },
    /// Mount hugetlbfs.
    MountHugetlbfs {
        /// The mount point (created if absent).
        target: PathBuf,
    },
    /// Move a controller to another driver.
    Bind {
        /// The controller.
        bdf: Bdf,
        /// Its `vendor:device`.
        ids: String,
        /// Its driver now.
        from: Option<String>,
        /// The driver to bind it to.
        to: &'static str,
        /// Keep `driver_override` naming `to` afterwards (vfio-pci: a
        /// rescan must not give the controller back to nvme) or clear it
        /// (nvme: matching by id again).
        keep_override: bool,
    },
}

fn pool_name(node: Option<u32>) -> String {
    match node {
        Some(n) => format!("node{n}"),
        None => "the global pool".to_owned(),
    }
}

impl Action {
    /// What it does, in the imperative (`--dry-run` prints this).
    pub fn describe(&self) -> String {
        match self {
            Action::LoadModule { module, .. } => format!("load kernel module {module} (modprobe)"),
            Action::ReserveHugepages { target, pages } => format!(
                "reserve {pages} hugepages of {}kB on {} ({} now): write {pages} to {}",
                hugepages::PAGE_KB,
                pool_name(target.node),
                target.current,
                target.path.display()
            ),
            Action::MountHugetlbfs { target } => {
                format!("mount hugetlbfs on {}", target.display())
            }
            Action::Bind {
                bdf, ids, from, to, ..
            } => format!(
                "bind {bdf} ({ids}) to {to} (now {})",
                from.as_deref().unwrap_or("no driver")
            ),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a controller is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// One of its disks is in use.
    InUse(InUse),
    /// Its IOMMU group holds a device bound to another driver, which
    /// vfio-pci would need too.
    GroupMate {
        /// The group.
        group: u32,
        /// The other device.
        mate: Bdf,
        /// Its class code.
        class: u32,
        /// Its driver.
        driver: String,
    },
    /// Its IOMMU group holds another controller that is refused.
    GroupMateRefused {
        /// The group.
        group: u32,
        /// The refused controller.
        mate: Bdf,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InUse(why) => why.fmt(f),
            Refusal::GroupMate {
                group,
                mate,
                class,
                driver,
            } => write!(
                f,
                "IOMMU group {group} also holds {mate} (class {class:#08x}) on driver {driver}; \
                 vfio-pci needs the whole group (bind it to vfio-pci or unbind it first)"
            ),
            Refusal::GroupMateRefused { group, mate } => {
                write!(f, "IOMMU group {group} also holds {mate}, which is refused")
            }
        }
    }
}

/// A controller that is left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The controller.
    pub bdf: Bdf,
    /// Its `vendor:device`.
    pub ids: String,
    /// Every reason (at least one).
    pub reasons: Vec<Refusal>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): ", self.bdf, self.ids)?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            r.fmt(f)?;
        }
        Ok(())
    }
}

/// Everything a command will do and will not do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `config` or `reset`.
    pub command: Command,
    /// The changes, in order: modules, hugepages, mount, binds.
    pub actions: Vec<Action>,
    /// Things already as asked (`0000:00:02.0 (1b36:0010) is already on vfio-pci`).
    pub unchanged: Vec<String>,
    /// Controllers refused.
    pub refused: Vec<Refused>,
    /// Warnings about what could not be checked.
    pub notes: Vec<String>,
}

impl Plan {
    fn new(command: Command) -> Self {
        Self {
            command,
            actions: Vec::new(),
            unchanged: Vec::new(),
            refused: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The controllers it binds.
    pub fn binds(&self) -> impl Iterator<Item = Bdf> + '_ {
        self.actions.iter().filter_map(|a| match a {
            Action::Bind { bdf, .. } => Some(*bdf),
            _ => None,
        })
    }

    /// The exit status of the plan alone: [`Exit::Refused`] when a
    /// controller is refused.
    pub fn exit(&self) -> Exit {
        if self.refused.is_empty() {
            Exit::Ok
        } else {
            Exit::Refused
        }
    }
}

/// The NVMe controllers that `--allow`/`--block` select.
///
/// # Errors
/// Reading sysfs fails; an `--allow` address is not an NVMe controller of
/// this machine (a usage error: a typo must not quietly bind nothing).
pub fn selected_controllers(sys: &dyn Sys, options: &Options) -> Result<Vec<PciDevice>> {
    let all = pci::nvme_controllers(sys)?;
    for bdf in &options.allow {
        if !all.iter().any(|c| c.bdf == *bdf) {
            return Err(Error::Usage(format!(
                "--allow {bdf}: no NVMe controller at this address"
            )));
        }
    }
    Ok(all.into_iter().filter(|c| options.selects(c.bdf)).collect())
}

fn hugepage_actions(sys: &dyn Sys, options: &Options, plan: &mut Plan) -> Result<()> {
    let targets = hugepages::targets(sys)?;
    let pages = hugepages::pages_for_mib(options.hugemem());
    let wanted: Vec<(Target, u64)> = match options.node {
        Some(node) => {
            let Some(target) = targets.into_iter().find(|t| t.node == Some(node)) else {
                let nodes = hugepages::nodes(sys)?;
                let list = nodes
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::Usage(format!(
                    "--node {node}: no NUMA node {node} with {}kB hugepages (nodes: {})",
                    hugepages::PAGE_KB,
                    if list.is_empty() { "none" } else { &list }
                )));
            };
            vec![(target, pages)]
        }
        None => {
            let split = hugepages::split(pages, targets.len());
            targets.into_iter().zip(split).collect()
        }
    };
    for (target, pages) in wanted {
        if target.current == pages {
            plan.unchanged.push(format!(
                "{} already has {pages} hugepages of {}kB",
                pool_name(target.node),
                hugepages::PAGE_KB
            ));
        } else {
            plan.actions
                .push(Action::ReserveHugepages { target, pages });
        }
    }
    Ok(())
}

/// Whether a module is loaded: its driver (or module) directory exists.
pub fn module_loaded(sys: &dyn Sys, module: &str) -> bool {
    let driver = pci::driver_dir(module);
    let module_dir = Path::new("/sys/module").join(module.replace('-', "_"));
    sys.exists(&driver)
        || (module != VFIO_DRIVER && module != NVME_DRIVER && sys.exists(&module_dir))
}

fn in_use_reasons(sys: &dyn Sys, snapshot: &Snapshot, bdf: Bdf) -> Result<Vec<Refusal>> {
    let mut reasons = Vec::new();
    for disk in blockdev::nvme_block_devices(sys, bdf)? {
        reasons.extend(
            inuse::users(sys, snapshot, &disk)?
                .into_iter()
                .map(Refusal::InUse),
        );
    }
    Ok(reasons)
}

fn unreadable_note(snapshot: &Snapshot, plan: &mut Plan) {
    if snapshot.unreadable_pids > 0 {
        plan.notes.push(format!(
            "the open files of {} processes could not be read (not root): \
             block devices they hold open are not seen",
            snapshot.unreadable_pids
        ));
    }
}

/// Plans `config`: hugepages, the hugetlbfs mount, vfio-pci, and binding
/// every selected controller not on vfio-pci yet.
///
/// # Errors
/// Usage errors (`--allow`, `--node`), [`Error::NoIommu`] when a
/// controller to bind has no IOMMU group, unreadable or malformed sysfs and
/// procfs files.
pub fn config(sys: &dyn Sys, options: &Options) -> Result<Plan> {
    let mut plan = Plan::new(Command::Config);
    let controllers = selected_controllers(sys, options)?;
    let mut pool_plan = Plan::new(Command::Config);
    hugepage_actions(sys, options, &mut pool_plan)?;

    let (on_vfio, to_bind): (Vec<_>, Vec<_>) = controllers
        .into_iter()
        .partition(|c| c.driver.as_deref() == Some(VFIO_DRIVER));
    for c in &on_vfio {
        plan.unchanged.push(format!(
            "{} ({}) is already on {VFIO_DRIVER}",
            c.bdf,
            c.ids()
        ));
    }

    let with_open_files = !to_bind.is_empty();
    let snapshot = Snapshot::take(sys, with_open_files)?;

    // Controllers in use are refused whatever the IOMMU; the others need
    // a group, and every other device in it must be able to follow.
    let mut reasons: Vec<Vec<Refusal>> = Vec::with_capacity(to_bind.len());
    for c in &to_bind {
        reasons.push(in_use_reasons(sys, &snapshot, c.bdf)?);
    }
    let free = || {
        to_bind
            .iter()
            .zip(&reasons)
            .filter(|(_, why)| why.is_empty())
    };
    if let Some((c, _)) = free().next()
        && !pci::iommu_enabled(sys)?
    {
        return Err(Error::NoIommu { bdf: c.bdf });
    }
    if let Some((c, _)) = free().find(|(c, _)| c.iommu_group.is_none()) {
        return Err(Error::NoIommu { bdf: c.bdf });
    }
    for (i, c) in to_bind.iter().enumerate() {
        let Some(group) = c.iommu_group else {
            continue;
        };
        if !reasons[i].is_empty() {
            continue;
        }
        for mate in pci::group_members(sys, group)? {
            if mate == c.bdf
                || to_bind.iter().any(|o| o.bdf == mate)
                || on_vfio.iter().any(|o| o.bdf == mate)
            {
                continue;
            }
            let dev = PciDevice::read(sys, mate)?;
            let viable = match dev.driver.as_deref() {
                None => true,
                Some(d) => VIABLE_GROUP_DRIVERS.contains(&d) || dev.is_bridge(),
            };
            if !viable {
                reasons[i].push(Refusal::GroupMate {
                    group,
                    mate,
                    class: dev.class,
                    driver: dev.driver.unwrap_or_default(),
                });
            }
        }
    }
    // A controller whose group mate is refused cannot go either.
    loop {
        let mut changed = false;
        for i in 0..to_bind.len() {
            if !reasons[i].is_empty() {
                continue;
            }
            let Some(group) = to_bind[i].iommu_group else {
                continue;
            };
            if let Some(j) = (0..to_bind.len()).find(|&j| {
                j != i && to_bind[j].iommu_group == Some(group) && !reasons[j].is_empty()
            }) {
                reasons[i].push(Refusal::GroupMateRefused {
                    group,
                    mate: to_bind[j].bdf,
                });
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    let mut binds = Vec::new();
    for (c, why) in to_bind.into_iter().zip(reasons) {
        if why.is_empty() {
            binds.push(Action::Bind {
                ids: c.ids(),
                bdf: c.bdf,
                from: c.driver,
                to: VFIO_DRIVER,
                keep_override: true,
            });
        } else {
            plan.refused.push(Refused {
                ids: c.ids(),
                bdf: c.bdf,
                reasons: why,
            });
        }
    }

    if !binds.is_empty() {
        if !module_loaded(sys, VFIO_DRIVER) {
            plan.actions.push(Action::LoadModule {
                module: VFIO_DRIVER,
                required: true,
            });
        }
        if !module_loaded(sys, "vfio_iommu_type1") {
            plan.actions.push(Action::LoadModule {
                module: "vfio_iommu_type1",
                required: false,
            });
        }
    }
    plan.actions.append(&mut pool_plan.actions);
    plan.unchanged.splice(0..0, pool_plan.unchanged);
    if hugepages::hugetlbfs_mounts(&snapshot.mounts).is_empty() {
        plan.actions.push(Action::MountHugetlbfs {
            target: PathBuf::from(hugepages::DEFAULT_MOUNT),
        });
    }
    plan.actions.append(&mut binds);
    if with_open_files {
        unreadable_note(&snapshot, &mut plan);
    }
    Ok(plan)
}

/// Plans `reset`: every selected controller not on nvme goes back to it.
/// A controller whose VFIO group (or VFIO device) is open by a process is
/// refused: unbinding would block until that process lets go.
///
/// # Errors
/// A usage error (`--allow`), unreadable or malformed sysfs and procfs
/// files.
pub fn reset(sys: &dyn Sys, options: &Options) -> Result<Plan> {
    let mut plan = Plan::new(Command::Reset);
    let (on_nvme, to_bind): (Vec<_>, Vec<_>) = selected_controllers(sys, options)?
        .into_iter()
        .partition(|c| c.driver.as_deref() == Some(NVME_DRIVER));
    for c in &on_nvme {
        plan.unchanged.push(format!(
            "{} ({}) is already on {NVME_DRIVER}",
            c.bdf,
            c.ids()
        ));
    }
    if to_bind.is_empty() {
        return Ok(plan);
    }
    let snapshot = Snapshot::take(sys, true)?;
    let mut binds = Vec::new();
    for c in to_bind {
        let mut nodes = Vec::new();
        if let Some(group) = c.iommu_group {
            nodes.push(format!("/dev/vfio/{group}"));
        }
        for dev in sys::list_opt(sys, &pci::device_dir(c.bdf).join("vfio-dev"))? {
            nodes.push(format!("/dev/vfio/devices/{dev}"));
        }
        let mut why = Vec::new();
        if c.driver.as_deref() == Some(VFIO_DRIVER) {
            for node in &nodes {
                for f in snapshot.openers(node) {
                    why.push(Refusal::InUse(InUse::Open {
                        path: f.target.clone(),
                        pid: f.pid,
                        comm: f.comm.clone(),
                    }));
                }
            }
        }
        if why.is_empty() {
            binds.push(Action::Bind {
                ids: c.ids(),
                bdf: c.bdf,
                from: c.driver,
                to: NVME_DRIVER,
                keep_override: false,
            });
        } else {
            plan.refused.push(Refused {
                ids: c.ids(),
                bdf: c.bdf,
                reasons: why,
            });
        }
    }
    if !binds.is_empty() && !module_loaded(sys, NVME_DRIVER) {
        plan.actions.push(Action::LoadModule {
            module: NVME_DRIVER,
            required: true,
        });
    }
    plan.actions.append(&mut binds);
    unreadable_note(&snapshot, &mut plan);
    Ok(plan)
}
