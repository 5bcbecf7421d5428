//! Fixture trees laid out like `/sys`, `/proc` and `/dev`, and a fake
//! kernel that plays sysfs's part when the tool writes to it.

#![allow(dead_code)] // each test target uses part of it

use std::cell::RefCell;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hugepage_setup::{Exit, HostSys, Sys};

/// A directory tree in the temporary directory, removed on drop.
pub struct Fixture {
    pub root: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub const QEMU_IDS: (&str, &str) = ("0x1b36", "0x0010");

impl Fixture {
    /// An empty machine: PCI bus with the nvme and vfio-pci drivers, IOMMU
    /// groups directory, one NUMA node with an empty 2 MiB pool, hugetlbfs
    /// mounted, no swap.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "hugepage-setup-test-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let fx = Self { root };
        for dir in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers/nvme",
            "sys/bus/pci/drivers/vfio-pci",
            "sys/kernel/iommu_groups",
            "sys/block",
            "sys/module/vfio_iommu_type1",
            "proc/self",
            "dev",
        ] {
            fs::create_dir_all(fx.path(dir)).unwrap();
        }
        fx.write("sys/bus/pci/drivers_probe", "");
        fx.write(
            "proc/mounts",
            "proc /proc proc rw 0 0\nnodev /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n",
        );
        fx.write(
            "proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        );
        fx.hugepages(0, 2048, 0, 0);
        fx
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    pub fn append(&self, rel: &str, line: &str) {
        let path = self.path(rel);
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn symlink(&self, link: &str, target: &str) {
        let path = self.path(link);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&path);
        symlink(target, path).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        let path = self.path(rel);
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(path).unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }

    /// The driver a device's `driver` link names.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        fs::read_link(self.path(&format!("sys/bus/pci/devices/{bdf}/driver")))
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    pub fn hugepages(&self, node: u32, size_kb: u64, total: u64, free: u64) {
        let dir = format!("sys/devices/system/node/node{node}/hugepages/hugepages-{size_kb}kB");
        self.write(&format!("{dir}/nr_hugepages"), &format!("{total}\n"));
        self.write(&format!("{dir}/free_hugepages"), &format!("{free}\n"));
    }

    /// A PCI device with the sysfs layout: the real directory under
    /// /sys/devices, the bus link, the IOMMU group, the driver link.
    pub fn pci(&self, bdf: &str, class: &str, group: Option<u32>, driver: Option<&str>) {
        let dev = format!("sys/devices/pci0000:00/{bdf}");
        self.write(&format!("{dev}/class"), &format!("{class}\n"));
        self.write(&format!("{dev}/vendor"), &format!("{}\n", QEMU_IDS.0));
        self.write(&format!("{dev}/device"), &format!("{}\n", QEMU_IDS.1));
        self.write(&format!("{dev}/numa_node"), "-1\n");
        self.write(&format!("{dev}/driver_override"), "(null)\n");
        self.symlink(
            &format!("sys/bus/pci/devices/{bdf}"),
            &format!("../../../devices/pci0000:00/{bdf}"),
        );
        if let Some(group) = group {
            self.symlink(
                &format!("{dev}/iommu_group"),
                &format!("../../../kernel/iommu_groups/{group}"),
            );
            self.symlink(
                &format!("sys/kernel/iommu_groups/{group}/devices/{bdf}"),
                &format!("../../../../devices/pci0000:00/{bdf}"),
            );
        }
        if let Some(driver) = driver {
            fs::create_dir_all(self.path(&format!("sys/bus/pci/drivers/{driver}"))).unwrap();
            self.symlink(
                &format!("{dev}/driver"),
                &format!("../../../bus/pci/drivers/{driver}"),
            );
        }
    }

    /// An NVMe controller (class 0x010802).
    pub fn nvme(&self, bdf: &str, group: Option<u32>, driver: Option<&str>) {
        self.pci(bdf, "0x010802", group, driver);
    }

    fn block_dir(&self, dir: &str, devno: &str, parts: &[(&str, &str)]) {
        self.write(&format!("{dir}/dev"), &format!("{devno}\n"));
        fs::create_dir_all(self.path(&format!("{dir}/holders"))).unwrap();
        for (i, (part, devno)) in parts.iter().enumerate() {
            self.write(&format!("{dir}/{part}/dev"), &format!("{devno}\n"));
            self.write(&format!("{dir}/{part}/partition"), &format!("{}\n", i + 1));
            fs::create_dir_all(self.path(&format!("{dir}/{part}/holders"))).unwrap();
        }
    }

    /// A namespace disk under its controller (no native multipath):
    /// /sys/block/<disk> -> ../devices/.../<bdf>/nvme/<ctrl>/<disk>, whose
    /// `device` link leads to the controller.
    pub fn namespace(
        &self,
        bdf: &str,
        ctrl: &str,
        disk: &str,
        devno: &str,
        parts: &[(&str, &str)],
    ) {
        let ctrl_dir = format!("sys/devices/pci0000:00/{bdf}/nvme/{ctrl}");
        self.write(
            &format!("{ctrl_dir}/subsysnqn"),
            &format!("nqn.test:{ctrl}\n"),
        );
        let dir = format!("{ctrl_dir}/{disk}");
        self.block_dir(&dir, devno, parts);
        self.symlink(&format!("{dir}/device"), &format!("../../{ctrl}"));
        self.symlink(
            &format!("sys/block/{disk}"),
            &format!("../devices/pci0000:00/{bdf}/nvme/{ctrl}/{disk}"),
        );
    }

    /// A namespace disk with native NVMe multipath: the disk hangs off the
    /// nvme-subsystem device (matched by subsysnqn); the controller holds a
    /// hidden per-path disk.
    pub fn multipath_namespace(
        &self,
        bdf: &str,
        ctrl: &str,
        subsys: &str,
        disk: &str,
        path_disk: &str,
        devno: &str,
    ) {
        let nqn = format!("nqn.test:{subsys}");
        let ctrl_dir = format!("sys/devices/pci0000:00/{bdf}/nvme/{ctrl}");
        self.write(&format!("{ctrl_dir}/subsysnqn"), &format!("{nqn}\n"));
        let sub_dir = format!("sys/devices/virtual/nvme-subsystem/{subsys}");
        self.write(&format!("{sub_dir}/subsysnqn"), &format!("{nqn}\n"));
        let dir = format!("{sub_dir}/{disk}");
        self.block_dir(&dir, devno, &[]);
        self.symlink(&format!("{dir}/device"), &format!("../../{subsys}"));
        self.symlink(
            &format!("sys/block/{disk}"),
            &format!("../devices/virtual/nvme-subsystem/{subsys}/{disk}"),
        );
        // The hidden per-path disk nvmeXcYnZ.
        let hidden = format!("{ctrl_dir}/{path_disk}");
        self.block_dir(&hidden, "259:99", &[]);
        self.write(&format!("{hidden}/hidden"), "1\n");
        self.symlink(&format!("{hidden}/device"), &format!("../../{ctrl}"));
        self.symlink(
            &format!("sys/block/{path_disk}"),
            &format!("../devices/pci0000:00/{bdf}/nvme/{ctrl}/{path_disk}"),
        );
    }

    /// `holder` (dm-N or mdN) is built on `dev` (`nvme0n1` or
    /// `nvme0n1/nvme0n1p1`).
    pub fn holder(&self, dev: &str, holder: &str, dm_uuid: Option<&str>) {
        self.symlink(
            &format!("sys/block/{dev}/holders/{holder}"),
            &format!("../../../../virtual/block/{holder}"),
        );
        if let Some(uuid) = dm_uuid {
            self.write(&format!("sys/block/{holder}/dm/uuid"), &format!("{uuid}\n"));
            self.write(&format!("sys/block/{holder}/dm/name"), "vg0-root\n");
        } else if holder.starts_with("md") {
            fs::create_dir_all(self.path(&format!("sys/block/{holder}/md"))).unwrap();
        }
    }

    /// Process `pid` holds `target` open on fd `fd`.
    pub fn open_fd(&self, pid: u32, comm: &str, fd: u32, target: &str) {
        self.write(&format!("proc/{pid}/comm"), &format!("{comm}\n"));
        self.symlink(&format!("proc/{pid}/fd/{fd}"), target);
    }
}

/// The kernel's part, played on a fixture: unbind removes the `driver`
/// link, drivers_probe binds to `driver_override` (or nvme by class), the
/// hugepage pool gives at most `max_pages`. Every write is logged.
pub struct FakeKernel {
    pub host: HostSys,
    pub root: bool,
    pub memlock: Option<u64>,
    pub max_pages: Option<u64>,
    /// Controllers that no driver will take.
    pub unbindable: Vec<String>,
    /// Modules modprobe can load.
    pub loadable: Vec<String>,
    pub log: RefCell<Vec<String>>,
}

impl FakeKernel {
    pub fn new(fx: &Fixture) -> Self {
        Self {
            host: HostSys::with_root(&fx.root),
            root: true,
            memlock: None,
            max_pages: None,
            unbindable: Vec::new(),
            loadable: Vec::new(),
            log: RefCell::new(Vec::new()),
        }
    }

    pub fn unprivileged(fx: &Fixture) -> Self {
        Self {
            root: false,
            ..Self::new(fx)
        }
    }

    /// Writes and other changes, in order.
    pub fn changes(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    fn link_name(&self, path: &Path) -> Option<String> {
        self.host
            .read_link(path)
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// Runs the tool with `args`; returns (exit, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (Exit, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let exit = hugepage_setup::main_with(self, args.iter().copied(), &mut out, &mut err);
        (
            exit,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }
}

impl Sys for FakeKernel {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.host.read_to_string(path)
    }

    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        self.log
            .borrow_mut()
            .push(format!("{} <- {contents:?}", path.display()));
        let text = path.to_str().unwrap();
        if let Some(dev) = text.strip_suffix("/driver/unbind") {
            let dev = Path::new(dev);
            assert_eq!(
                dev.file_name().unwrap().to_str().unwrap(),
                contents,
                "unbind names the device"
            );
            return fs::remove_file(self.host.resolve(&dev.join("driver")));
        }
        if text == "/sys/bus/pci/drivers_probe" {
            let dev = Path::new("/sys/bus/pci/devices").join(contents);
            if !self.host.exists(&dev) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            if self.link_name(&dev.join("driver")).is_some()
                || self.unbindable.iter().any(|b| b == contents)
            {
                return Ok(());
            }
            let over = self.host.read_to_string(&dev.join("driver_override"))?;
            let over = over.trim();
            let class = self.host.read_to_string(&dev.join("class"))?;
            let driver = if !over.is_empty() && over != "(null)" {
                over.to_owned()
            } else if class.trim() == "0x010802" {
                "nvme".to_owned()
            } else {
                return Ok(());
            };
            if self
                .host
                .exists(&Path::new("/sys/bus/pci/drivers").join(&driver))
            {
                symlink(
                    format!("../../../bus/pci/drivers/{driver}"),
                    self.host.resolve(&dev.join("driver")),
                )?;
            }
            return Ok(());
        }
        if text.ends_with("/nr_hugepages") {
            let want: u64 = contents
                .trim()
                .parse()
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let got = self.max_pages.map_or(want, |m| want.min(m));
            return self.host.write(path, &format!("{got}\n"));
        }
        if text.ends_with("/driver_override") {
            let value = if contents == "\n" {
                "(null)\n"
            } else {
                contents
            };
            return self.host.write(path, value);
        }
        self.host.write(path, contents)
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.host.read_link(path)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.host.canonicalize(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.host.read_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.host.exists(path)
    }

    fn mount_hugetlbfs(&self, target: &Path) -> io::Result<()> {
        self.log
            .borrow_mut()
            .push(format!("mount hugetlbfs on {}", target.display()));
        let mounts = self.host.resolve(Path::new("/proc/mounts"));
        let mut text = fs::read_to_string(&mounts)?;
        text.push_str(&format!("nodev {} hugetlbfs rw 0 0\n", target.display()));
        fs::write(mounts, text)
    }

    fn modprobe(&self, module: &str) -> Result<(), String> {
        self.log.borrow_mut().push(format!("modprobe {module}"));
        if self.loadable.iter().any(|m| m == module) {
            let dir = self
                .host
                .resolve(&Path::new("/sys/bus/pci/drivers").join(module));
            fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            Ok(())
        } else {
            Err(format!("modprobe: FATAL: Module {module} not found"))
        }
    }

    fn is_root(&self) -> bool {
        self.root
    }

    fn memlock_limit(&self) -> io::Result<Option<u64>> {
        Ok(self.memlock)
    }

    fn sleep(&self, _: Duration) {}
}
