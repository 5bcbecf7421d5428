//! Guest tier: the whole VFIO path on QEMU's emulated NVMe controllers.
//!
//! Run inside the guest by `ci/guest-tier` (these tests are `#[ignore]`d on
//! the host, where no controller is bound to vfio-pci): for every NVMe
//! controller bound to vfio-pci, open the process's VFIO container and the
//! controller's group, get the device, map BAR0 and read CAP and VS.

use std::fs;
use std::path::Path;

use nvme_driver::pci::{Bdf, NVME_CLASS_CODE, VfioPci};
use nvme_driver::regs::{Cap, Registers, Version};

/// QEMU's emulated NVMe controller (`-device nvme`): Red Hat, Inc. vendor id
/// and the QEMU NVMe device id.
const QEMU_NVME_IDS: (u16, u16) = (0x1b36, 0x0010);

fn read_hex(path: &Path) -> u32 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// Every NVMe controller the guest bound to vfio-pci.
fn vfio_nvme_controllers() -> Vec<Bdf> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/bus/pci/devices").expect("sysfs PCI devices") {
        let path = entry.expect("sysfs entry").path();
        if read_hex(&path.join("class")) != NVME_CLASS_CODE {
            continue;
        }
        let bdf: Bdf = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("PCI address as file name")
            .parse()
            .expect("sysfs PCI address");
        if nvme_driver::pci::bound_driver(bdf).unwrap().as_deref() == Some("vfio-pci") {
            found.push(bdf);
        }
    }
    found.sort();
    found
}

#[test]
#[ignore = "guest tier: needs NVMe controllers bound to vfio-pci (run by ci/guest-tier)"]
fn reads_cap_and_vs_through_vfio() {
    let ctrlrs = vfio_nvme_controllers();
    let expected: usize = std::env::var("GUEST_NVME_CONTROLLERS")
        .expect("GUEST_NVME_CONTROLLERS is set by the guest harness")
        .parse()
        .expect("GUEST_NVME_CONTROLLERS is a number");
    assert!(expected > 0, "the harness must give this test a controller");
    assert_eq!(
        ctrlrs.len(),
        expected,
        "controllers bound to vfio-pci: {ctrlrs:?}"
    );

    // All controllers share the process's one container.
    let container = dma::vfio::container().expect("VFIO container");
    for bdf in ctrlrs {
        let dev = VfioPci::open_in(bdf, container.clone()).expect("open through VFIO");
        assert_eq!(dev.ids().expect("config space"), QEMU_NVME_IDS, "{bdf}");
        dev.enable_bus_master().expect("bus master");

        let bar0 = dev.map_bar0().expect("map BAR0");
        assert!(bar0.len() >= 0x2000, "{bdf}: BAR0 of {} bytes", bar0.len());

        let cap = Cap(bar0.read64(Registers::CAP));
        let vs = Version::from(bar0.read32(Registers::VS));
        println!(
            "{bdf}: VS {vs}, CAP {:#018x}: MQES+1 {}, TO {} ms, DSTRD {} B, MPS {}..{}",
            cap.0,
            cap.max_queue_entries(),
            cap.timeout_ms(),
            cap.doorbell_stride(),
            cap.min_page_size(),
            cap.max_page_size()
        );
        assert_ne!(
            cap.0,
            u64::MAX,
            "{bdf}: registers read all-ones (device gone?)"
        );
        // QEMU 7 and later report NVMe 1.4.0.
        assert!(
            vs >= Version::from(0x0001_0400),
            "{bdf}: VS {vs} below the 1.4 QEMU reports"
        );
        assert!(cap.supports_nvm_command_set(), "{bdf}: CAP.CSS lacks NVM");
        assert!(cap.max_queue_entries() >= 64, "{bdf}: MQES");
        assert!(cap.timeout_ms() > 0, "{bdf}: CAP.TO is zero");
        assert_eq!(cap.min_page_size(), 4096, "{bdf}: MPSMIN");
        assert_eq!(cap.doorbell_stride(), 4, "{bdf}: QEMU uses DSTRD 0");
    }
}
