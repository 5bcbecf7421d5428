//! bdevperf's library API in-process: build the bdevs, arm an injection
//! through the error module, run the jobs, read the outcome.

use perf::bdevperf::args::{self, Parsed};
use perf::bdevperf::run;

#[test]
fn a_corrupted_read_is_a_mismatch_and_a_failure() {
    let Ok(Parsed::Run(mut cfg)) = args::parse(
        "--no-huge --malloc 8 -q 4 -o 4k -w verify -t 0.5"
            .split_whitespace()
            .map(str::to_owned),
    ) else {
        panic!("arguments")
    };
    cfg.progress = false;
    let rt = reactor::Runtime::builder("0x1".parse().unwrap())
        .idle(reactor::IdleStrategy::Spin)
        .start()
        .unwrap();
    bdev::set_runtime(rt.handle());
    run::build_bdevs(&cfg, &rt).unwrap();
    rt.block_on(0, || async {
        bdev::modules::error::create("Malloc0", None).map(|_| ())
    })
    .unwrap()
    .unwrap();
    rt.block_on(0, || async {
        bdev::modules::error::inject_error("EE_Malloc0", "read", "corrupt_data", 1)
    })
    .unwrap()
    .unwrap();
    let out = run::run_jobs(&cfg, &rt.handle(), &mut |_| {}).unwrap();
    let t = &out.report.total;
    assert_eq!(t.mismatches, 1, "{}", out.table());
    assert!(t.verified > 1);
    assert_eq!(out.report.rows.len(), 1);
    assert_eq!(out.report.rows[0].device.as_deref(), Some("EE_Malloc0"));
    assert!(out.failure.unwrap().contains("mismatch"));
    assert!(out.notes.iter().any(|n| n.contains("first mismatch")));
    rt.block_on(0, || async {
        let _ = bdev::modules::error::delete("EE_Malloc0").await;
        let _ = bdev::modules::malloc::delete("Malloc0").await;
    })
    .unwrap();
    rt.shutdown().unwrap();
}
