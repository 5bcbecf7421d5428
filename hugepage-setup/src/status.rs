//! `status`: hugepages per node and size, and the NVMe controllers.

use std::path::Path;

use crate::blockdev;
use crate::cli::Options;
use crate::error::Result;
use crate::hugepages;
use crate::inuse::Snapshot;
use crate::pci;
use crate::plan;
use crate::sys::{self, Sys};

/// Lays rows out in columns two spaces apart (the last column unpadded).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// Formats a byte count of memlock limit.
fn memlock(limit: Option<u64>) -> String {
    match limit {
        None => "unlimited".to_owned(),
        Some(bytes) => format!("{} KiB", bytes / 1024),
    }
}

/// The status report.
///
/// # Errors
/// Unreadable or malformed sysfs/procfs files.
pub fn render(sys: &dyn Sys, options: &Options) -> Result<String> {
    let mut text = String::new();

    let mut rows = vec![vec![
        "node".to_owned(),
        "size".to_owned(),
        "total".to_owned(),
        "free".to_owned(),
    ]];
    for pool in hugepages::pools(sys)? {
        rows.push(vec![
            pool.node
                .map_or_else(|| "all".to_owned(), |n| format!("node{n}")),
            format!("{}kB", pool.size_kb),
            pool.total.to_string(),
            pool.free.to_string(),
        ]);
    }
    text.push_str("hugepages:\n");
    text.push_str(&table(&rows));

    let snapshot = Snapshot::take(sys, false)?;
    let mounts = hugepages::hugetlbfs_mounts(&snapshot.mounts);
    text.push_str(&format!(
        "hugetlbfs: {}\n",
        if mounts.is_empty() {
            "not mounted".to_owned()
        } else {
            mounts.join(", ")
        }
    ));
    match sys.memlock_limit() {
        Ok(limit) => text.push_str(&format!("memlock limit: {}\n", memlock(limit))),
        Err(e) => text.push_str(&format!("memlock limit: unknown ({e})\n")),
    }
    let groups = sys::list_opt(sys, Path::new(pci::IOMMU_GROUPS))?.len();
    text.push_str(&if groups == 0 {
        "IOMMU: none (no IOMMU groups: enable VT-d/AMD-Vi and boot with intel_iommu=on)\n"
            .to_owned()
    } else {
        format!("IOMMU: {groups} groups\n")
    });
    text.push_str(&format!(
        "vfio-pci: {}\n",
        if plan::module_loaded(sys, pci::VFIO_DRIVER) {
            "loaded"
        } else {
            "not loaded"
        }
    ));

    let mut rows = vec![
        [
            "BDF",
            "vendor:device",
            "node",
            "iommu group",
            "driver",
            "block devices",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for c in plan::selected_controllers(sys, options)? {
        let mut devices = Vec::new();
        for disk in blockdev::nvme_block_devices(sys, c.bdf)? {
            for dev in disk.with_partitions() {
                let mut entry = dev.name.clone();
                for m in snapshot.mounts_of(dev) {
                    entry.push_str(&format!(" on {}", m.mountpoint));
                }
                if snapshot.is_swap(dev) {
                    entry.push_str(" (swap)");
                }
                devices.push(entry);
            }
        }
        rows.push(vec![
            c.bdf.to_string(),
            c.ids(),
            dash(c.numa_node.map(|n| n.to_string())),
            dash(c.iommu_group.map(|g| g.to_string())),
            dash(c.driver.clone()),
            if devices.is_empty() {
                "-".to_owned()
            } else {
                devices.join(", ")
            },
        ]);
    }
    text.push_str("\nNVMe controllers:\n");
    if rows.len() == 1 {
        text.push_str("none\n");
    } else {
        text.push_str(&table(&rows));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["aaa".to_owned(), "b".to_owned(), "".to_owned()],
        ];
        assert_eq!(table(&rows), "a    bb  c\naaa  b\n");
    }
}
