//! Module tests on the host: the data test on malloc, and the nvme module
//! over the software controller model (data, namespace resize and removal
//! arriving as bdev events).

mod common;

use std::sync::{Arc, Mutex};

use bdev::modules::{malloc, nvme};
use bdev::{BdevEvent, IoStatus, IoType};
use common::{data_test, on, wait_until};
use dma::{DmaConfig, DmaMemory};
use nvme_driver::sim::{SimConfig, SimController};
use nvme_driver::{Controller, ControllerOptions};

#[test]
fn malloc_passes_the_data_test() {
    common::runtime();
    malloc::create("m_data", 2 * 64 * 2048, 512, None).unwrap();
    data_test("m_data", 42);
    malloc::create("m_data4k", 2 * 16 * 1024, 4096, None).unwrap();
    data_test("m_data4k", 43);
    on(0, || async {
        malloc::delete("m_data").await.unwrap();
        malloc::delete("m_data4k").await.unwrap();
    });
}

#[test]
fn nvme_module_over_the_controller_model() {
    common::runtime();
    let mem = DmaMemory::new(DmaConfig::anonymous(512 << 20)).unwrap();
    bdev::set_memory(mem.clone());
    let sim = Arc::new(SimController::new(
        mem.clone(),
        SimConfig {
            namespaces: vec![(512, 65536), (4096, 8192)],
            mdts: 5,
            ..Default::default()
        },
    ));
    let s2 = sim.clone();
    let names = on(0, move || async move {
        let ctrlr = Controller::with_registers(
            "sim".into(),
            s2,
            &bdev::memory(),
            ControllerOptions::default(),
        )
        .unwrap();
        nvme::attach("Sim0", "0000:00:00.0".parse().unwrap(), ctrlr).unwrap()
    });
    assert_eq!(names, vec!["Sim0n1", "Sim0n2"]);
    let b = bdev::get("Sim0n1").unwrap();
    assert_eq!(
        (b.block_size(), b.num_blocks(), b.module()),
        (512, 65536, "nvme")
    );
    assert!(b.io_type_supported(IoType::Unmap) && b.io_type_supported(IoType::Compare));
    assert!(!b.io_type_supported(IoType::Reset));
    assert_eq!(
        b.props().max_transfer_blocks,
        Some(256),
        "128 KiB MDTS in 512-byte blocks"
    );
    data_test("Sim0n1", 7);
    data_test("Sim0n2", 8);
    // A namespace resize in the controller reaches the bdev and its opener.
    let events: Arc<Mutex<Vec<BdevEvent>>> = Arc::default();
    let e2 = events.clone();
    let desc = on(1, move || async move {
        bdev::open("Sim0n2", false, move |_, e| e2.lock().unwrap().push(e)).unwrap()
    });
    sim.resize_namespace(2, 16384);
    wait_until("the resize event", {
        let events = events.clone();
        move || !events.lock().unwrap().is_empty()
    });
    assert_eq!(
        events.lock().unwrap()[0],
        BdevEvent::Resize {
            old_blocks: 8192,
            new_blocks: 16384
        }
    );
    assert_eq!(bdev::get("Sim0n2").unwrap().num_blocks(), 16384);
    on(1, move || async move {
        let ch = desc.get_io_channel().unwrap();
        let (st, _) = ch
            .io(
                IoType::Read,
                Some(bdev::memory().alloc(4096, 4096).unwrap()),
                16383,
                1,
                false,
            )
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        drop(ch);
        drop(desc);
    });
    // A removed namespace unregisters its bdev.
    sim.remove_namespace(1);
    wait_until("Sim0n1 to go", || bdev::get("Sim0n1").is_none());
    on(0, || async {
        nvme::detach_controller("Sim0").await.unwrap()
    });
    assert!(bdev::get("Sim0n2").is_none());
    assert!(nvme::controllers_list().is_empty());
}
