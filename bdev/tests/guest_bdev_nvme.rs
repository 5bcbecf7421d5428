//! Guest tier: the nvme bdev module over QEMU's emulated controller passes
//! the same data test as malloc, on two cores, through VFIO and the
//! emulated IOMMU (a DMAR fault fails the run).

mod common;

use bdev::modules::nvme;
use common::{data_test, on};
use dma::{DmaConfig, DmaMemory};
use nvme_driver::ControllerOptions;

fn first_vfio_controller() -> String {
    bdev::modules::nvme::hotplug::vfio_nvme_controllers(std::path::Path::new(
        "/sys/bus/pci/devices",
    ))
    .first()
    .expect("an NVMe controller bound to vfio-pci")
    .to_string()
}

#[test]
#[ignore = "guest tier: needs QEMU NVMe controllers bound to vfio-pci (ci/guest-tier)"]
fn nvme_bdevs_pass_the_data_test() {
    common::runtime();
    bdev::set_memory(
        DmaMemory::new(DmaConfig {
            grow_step: 32 << 20,
            ..DmaConfig::hugepages(384 << 20)
        })
        .unwrap(),
    );
    let traddr = first_vfio_controller();
    let names = on(0, move || async move {
        nvme::attach_controller("Nvme0", &traddr, ControllerOptions::default(), None)
            .await
            .unwrap()
    });
    println!("attached: {names:?}");
    assert_eq!(names, vec!["Nvme0n1", "Nvme0n2"]);
    for (i, n) in names.iter().enumerate() {
        let b = bdev::get(n).unwrap();
        println!(
            "{n}: {} blocks of {} bytes, max transfer {:?} blocks",
            b.num_blocks(),
            b.block_size(),
            b.props().max_transfer_blocks
        );
        data_test(n, 1000 + i as u64);
        let s = b.stats();
        println!("{n}: {:?}", s.of(bdev::IoType::Write));
    }
    on(0, || async {
        nvme::detach_controller("Nvme0").await.unwrap()
    });
    assert!(bdev::get("Nvme0n1").is_none());
}
