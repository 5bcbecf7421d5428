//! Benchmark tools: `nvme-perf` straight on the NVMe driver (the counterpart of
//! `spdk_nvme_perf`) and `bdevperf` on the bdev layer, with latency histograms
//! and human and JSON reports.
//!
//! Owns: workload generation, measurement and reporting.
//!
//! Must not: report a figure it did not measure, or put anything on the
//! measured path that the stack itself would not do.
