//! The storage appliance: a JSON-RPC 2.0 server on a Unix socket speaking
//! SPDK's method names, parameters and result shapes; SPDK-format JSON config
//! load and save; volume exports (NBD); signals and orderly shutdown.
//!
//! Owns: the control plane seen from outside the process.
//!
//! Must not: touch the I/O path itself (it drives the bdev layer through its
//! control-path API), or trust any byte that arrives on a socket or in a file.
