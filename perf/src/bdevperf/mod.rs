//! `bdevperf`: I/O benchmark on the bdev layer (SPDK's bdevperf): bdevs from
//! an SPDK-format JSON config, one job per core per bdev, the workloads
//! read/write/randread/randwrite/rw/randrw/verify/reset/flush, and the same
//! latency report as nvme-perf.

pub mod args;
pub mod run;
