//! Hugepage pools per NUMA node and page size, and where to reserve them.
//!
//! Reservations are 2 MiB pages, written per node under
//! `/sys/devices/system/node/nodeN/hugepages/hugepages-2048kB/nr_hugepages`,
//! or, on kernels without node directories, globally under
//! `/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` (or
//! `/proc/sys/vm/nr_hugepages`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys::{self, Sys};

/// The page size this tool reserves, in KiB.
pub const PAGE_KB: u64 = 2048;

/// Where sysfs lists NUMA nodes.
pub const NODES: &str = "/sys/devices/system/node";

/// The global pools.
pub const GLOBAL: &str = "/sys/kernel/mm/hugepages";

/// The default-size global pool's count in procfs.
pub const PROC_NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Where hugetlbfs is mounted when no mount exists.
pub const DEFAULT_MOUNT: &str = "/dev/hugepages";

/// One pool: a page size on a node (or globally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The NUMA node; `None` for the global pool.
    pub node: Option<u32>,
    /// Page size in KiB.
    pub size_kb: u64,
    /// Pages reserved (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`).
    pub free: u64,
}

/// The NUMA nodes with a directory in sysfs, in order.
///
/// # Errors
/// `/sys/devices/system/node` exists but cannot be listed.
pub fn nodes(sys: &dyn Sys) -> Result<Vec<u32>> {
    let mut nodes: Vec<u32> = sys::list_opt(sys, Path::new(NODES))?
        .iter()
        .filter_map(|name| name.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    Ok(nodes)
}

fn node_pools_dir(node: u32) -> PathBuf {
    Path::new(NODES)
        .join(format!("node{node}"))
        .join("hugepages")
}

fn size_dir_name(size_kb: u64) -> String {
    format!("hugepages-{size_kb}kB")
}

fn parse_size_dir(name: &str) -> Option<u64> {
    name.strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()
}

fn read_count(sys: &dyn Sys, path: &Path) -> Result<u64> {
    let text = sys::read(sys, path)?;
    sys::parse_num(path, &text, "a page count")
}

fn read_pools(sys: &dyn Sys, dir: &Path, node: Option<u32>) -> Result<Vec<Pool>> {
    let mut pools = Vec::new();
    for name in sys::list_opt(sys, dir)? {
        let Some(size_kb) = parse_size_dir(&name) else {
            continue;
        };
        let pool_dir = dir.join(&name);
        pools.push(Pool {
            node,
            size_kb,
            total: read_count(sys, &pool_dir.join("nr_hugepages"))?,
            free: read_count(sys, &pool_dir.join("free_hugepages"))?,
        });
    }
    pools.sort_by_key(|p| p.size_kb);
    Ok(pools)
}

/// Every pool: per node when the kernel has node directories with
/// hugepages, else the global pools.
///
/// # Errors
/// A pool's counts are unreadable or malformed.
pub fn pools(sys: &dyn Sys) -> Result<Vec<Pool>> {
    let mut pools = Vec::new();
    for node in nodes(sys)? {
        pools.extend(read_pools(sys, &node_pools_dir(node), Some(node))?);
    }
    if pools.is_empty() {
        pools = read_pools(sys, Path::new(GLOBAL), None)?;
    }
    Ok(pools)
}

/// A file to write a 2 MiB page count to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node; `None` for the global pool.
    pub node: Option<u32>,
    /// The `nr_hugepages` file.
    pub path: PathBuf,
    /// Pages reserved now.
    pub current: u64,
}

/// Where 2 MiB pages can be reserved: one target per node that has a
/// 2048kB pool, else the global pool.
///
/// # Errors
/// [`Error::NoHugepageSize`] when there is none; unreadable counts.
pub fn targets(sys: &dyn Sys) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for node in nodes(sys)? {
        let path = node_pools_dir(node)
            .join(size_dir_name(PAGE_KB))
            .join("nr_hugepages");
        if sys.exists(&path) {
            targets.push(Target {
                node: Some(node),
                current: read_count(sys, &path)?,
                path,
            });
        }
    }
    if !targets.is_empty() {
        return Ok(targets);
    }
    for path in [
        Path::new(GLOBAL)
            .join(size_dir_name(PAGE_KB))
            .join("nr_hugepages"),
        PathBuf::from(PROC_NR_HUGEPAGES),
    ] {
        if sys.exists(&path) {
            return Ok(vec![Target {
                node: None,
                current: read_count(sys, &path)?,
                path,
            }]);
        }
    }
    Err(Error::NoHugepageSize { size_kb: PAGE_KB })
}

/// 2 MiB pages needed for `mib` MiB (rounded up).
pub fn pages_for_mib(mib: u64) -> u64 {
    mib.div_ceil(PAGE_KB / 1024)
}

/// Splits `pages` over `parts` as evenly as possible, the first parts
/// taking the remainder.
pub fn split(pages: u64, parts: usize) -> Vec<u64> {
    if parts == 0 {
        return Vec::new();
    }
    let n = parts as u64;
    (0..n)
        .map(|i| pages / n + u64::from(i < pages % n))
        .collect()
}

/// The hugetlbfs mount points.
pub fn hugetlbfs_mounts(mounts: &[crate::inuse::Mount]) -> Vec<String> {
    let mut points: Vec<String> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "hugetlbfs") {
        if !points.contains(&m.mountpoint) {
            points.push(m.mountpoint.clone());
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_with_the_remainder_first() {
        assert_eq!(split(300, 1), [300]);
        assert_eq!(split(301, 2), [151, 150]);
        assert_eq!(split(5, 4), [2, 1, 1, 1]);
        assert_eq!(split(0, 2), [0, 0]);
        assert!(split(3, 0).is_empty());
    }

    #[test]
    fn rounds_mib_up_to_pages() {
        assert_eq!(pages_for_mib(2048), 1024);
        assert_eq!(pages_for_mib(601), 301);
        assert_eq!(pages_for_mib(0), 0);
    }
}
