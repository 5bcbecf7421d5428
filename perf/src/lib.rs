//! Benchmark tools: `nvme-perf` straight on the NVMe driver (the counterpart of
//! `spdk_nvme_perf`) and `bdevperf` on the bdev layer, with latency histograms
//! and human and JSON reports.
//!
//! Owns: workload generation, measurement and reporting.
//!
//! Must not: report a figure it did not measure, or put anything on the
//! measured path that the stack itself would not do.
//!
//! ```text
//!  nvme/      nvme-perf: arguments, run orchestration, the per-core engine
//!  bdevperf/  bdevperf: arguments, jobs on the bdev layer, RPC mode
//!  cli        the option lexer, usage errors and value parsers both share
//!  clock      TSC (calibrated) or OS clock, with its read cost
//!  latency    HDR histogram + exact count/sum/min/max
//!  report     per-worker rows and totals, table and JSON
//!  pattern    verify-mode block contents
//!  rng, json  xorshift offsets; a small JSON writer/reader
//! ```

pub mod bdevperf;
pub mod cli;
pub mod clock;
pub mod json;
pub mod latency;
pub mod nvme;
pub mod pattern;
pub mod report;
pub mod rng;
