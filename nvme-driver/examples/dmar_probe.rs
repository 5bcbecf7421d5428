//! Harness self-test helper (run by `ci/harness-selftest` in the guest): a
//! read into an IO-virtual address that is not mapped in the IOMMU. The
//! NVMe command itself may even succeed; only the guest kernel's DMAR fault
//! log shows the stray DMA, and the harness must fail the run on it.

use dma::{DmaConfig, DmaMemory};
use nvme_driver::blocking::BlockingController;
use nvme_driver::{Controller, ControllerOptions, IoQpair};

fn main() {
    let bdf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0000:00:01.0".into());
    let bdf = match bdf.parse() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dmar_probe: {e}");
            std::process::exit(2);
        }
    };
    let mem = DmaMemory::new(DmaConfig::hugepages(64 << 20)).expect("DMA memory");
    let ctrlr = Controller::open(bdf, &mem, ControllerOptions::default()).expect("controller");
    let ns = ctrlr.namespaces().next().expect("a namespace").clone();
    let mut qp: IoQpair<()> = ctrlr.connect_io_qpair(4).expect("queue pair");
    // 256 GiB: inside the 39-bit IOVA space, far above anything mapped.
    let unmapped = 0x40_0000_0000u64;
    qp.read(ns.nsid, 0, 1, &[(unmapped, ns.block_size as usize)], ())
        .expect("submission");
    let mut result = None;
    while result.is_none() {
        qp.process_completions(1, |_, r| result = Some(r));
    }
    println!(
        "read into unmapped IOVA {unmapped:#x} completed: {:?}",
        result.unwrap()
    );
}
