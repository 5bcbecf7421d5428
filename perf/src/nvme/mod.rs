//! `nvme-perf`: the counterpart of SPDK's `spdk_nvme_perf`, straight on
//! `nvme-driver`.
//!
//! ```text
//!  args.rs    command line (SPDK short options) -> Config
//!  run.rs     controllers, namespaces, one pinned thread per core, progress
//!  engine.rs  Worker: one queue pair, its slots, the poll loop
//! ```

pub mod args;
pub mod engine;
pub mod run;
