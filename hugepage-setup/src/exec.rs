//! Carrying out a [`Plan`].
//!
//! Actions run in the plan's order. A required module that will not load
//! stops everything (nothing else has been touched then: modules come
//! first). Any other failed action is reported and the rest still run, so
//! one bad controller does not keep the others from their driver.

use std::io::Write;

use crate::error::{Error, Exit, Result};
use crate::hugepages;
use crate::pci;
use crate::plan::{Action, Plan, module_loaded};
use crate::sys::{self, Sys};

/// How a run went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The first failed action's exit status ([`Exit::Failed`] or
    /// [`Exit::Permission`]).
    pub failure: Option<Exit>,
    /// Pools that got fewer pages than asked: (pool name, asked, got).
    pub short_pools: Vec<(String, u64, u64)>,
    /// Actions done.
    pub done: usize,
}

fn load_module(sys: &dyn Sys, module: &'static str) -> Result<()> {
    let why = match sys.modprobe(module) {
        Ok(()) if module_loaded(sys, module) => return Ok(()),
        Ok(()) => "modprobe succeeded but the kernel shows no such driver".to_owned(),
        Err(why) => why,
    };
    // modprobe may be absent (busybox) while the module was loaded another
    // way in the meantime.
    if module_loaded(sys, module) {
        return Ok(());
    }
    Err(Error::MissingModule { module, why })
}

fn reserve(sys: &dyn Sys, path: &std::path::Path, pages: u64) -> Result<u64> {
    sys::write(sys, path, &pages.to_string())?;
    let text = sys::read(sys, path)?;
    sys::parse_num(path, &text, "a page count")
}

/// Runs the plan's actions, printing what was done to `out` and failures to
/// `err`.
///
/// # Errors
/// Only a required module that cannot be loaded: that ends the run before
/// anything else changes. Every other failure is in the [`Outcome`].
pub fn execute(
    sys: &dyn Sys,
    plan: &Plan,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    for action in &plan.actions {
        let result = match action {
            Action::LoadModule { module, required } => match load_module(sys, module) {
                Ok(()) => {
                    let _ = writeln!(out, "loaded kernel module {module}");
                    Ok(())
                }
                Err(e) if *required => return Err(e),
                Err(e) => {
                    let _ = writeln!(err, "hugepage-setup: warning: {e}");
                    Ok(())
                }
            },
            Action::ReserveHugepages { target, pages } => {
                reserve(sys, &target.path, *pages).map(|got| {
                    let pool = match target.node {
                        Some(n) => format!("node{n}"),
                        None => "the global pool".to_owned(),
                    };
                    if got < *pages {
                        let _ = writeln!(
                            err,
                            "hugepage-setup: {pool}: the kernel reserved only {got} of {pages} \
                             hugepages of {}kB (memory too small or too fragmented; \
                             try again early after boot)",
                            hugepages::PAGE_KB
                        );
                        outcome.short_pools.push((pool, *pages, got));
                    } else {
                        let _ = writeln!(
                            out,
                            "reserved {got} hugepages of {}kB on {pool} (was {})",
                            hugepages::PAGE_KB,
                            target.current
                        );
                    }
                })
            }
            Action::MountHugetlbfs { target } => sys
                .mount_hugetlbfs(target)
                .map_err(|source| Error::Mount {
                    target: target.clone(),
                    source,
                })
                .map(|()| {
                    let _ = writeln!(out, "mounted hugetlbfs on {}", target.display());
                }),
            Action::Bind {
                bdf,
                ids,
                from,
                to,
                keep_override,
            } => pci::bind(sys, *bdf, to, *keep_override).map(|()| {
                let _ = writeln!(
                    out,
                    "bound {bdf} ({ids}) to {to} (was {})",
                    from.as_deref().unwrap_or("no driver")
                );
            }),
        };
        match result {
            Ok(()) => outcome.done += 1,
            Err(e) => {
                let _ = writeln!(err, "hugepage-setup: error: {e}");
                outcome.failure.get_or_insert(e.exit());
            }
        }
    }
    Ok(outcome)
}

impl Outcome {
    /// The exit status of a run of `plan`: a failed action first, then a
    /// refused controller, then a short hugepage reservation.
    pub fn exit(&self, plan: &Plan) -> Exit {
        if let Some(failure) = self.failure {
            failure
        } else if !plan.refused.is_empty() {
            Exit::Refused
        } else if !self.short_pools.is_empty() {
            Exit::ShortHugepages
        } else {
            Exit::Ok
        }
    }
}
